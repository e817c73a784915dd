"""One contract for both MCP session stores: in memory and in JetStream KV."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime

import msgspec
import pytest

from claudecluster.runtime.connection import Connection
from claudecluster.transport.mcp_sessions import (
    JetStreamMcpSessionStore,
    McpSession,
    McpSessionStore,
    MemoryMcpSessionStore,
)

pytestmark = pytest.mark.nats

SESSION = McpSession(
    session_id="0123456789abcdef0123456789abcdef",
    protocol_version="2025-11-25",
    owner="alice",
    client_name="claude-code",
    created_at=datetime(2026, 1, 1, tzinfo=UTC),
)


@pytest.fixture(params=["memory", "jetstream"])
async def store(
    request: pytest.FixtureRequest, connection: Connection
) -> AsyncIterator[McpSessionStore]:
    if request.param == "memory":
        yield MemoryMcpSessionStore()
    else:
        yield JetStreamMcpSessionStore(connection.client.jetstream())


async def test_a_stored_session_reads_back_equal_and_is_gone_once_deleted(
    store: McpSessionStore,
) -> None:
    await store.put(SESSION)
    assert await store.get(SESSION.session_id) == SESSION
    await store.put(msgspec.structs.replace(SESSION, log_level="debug"))
    found = await store.get(SESSION.session_id)
    assert found is not None
    assert found.log_level == "debug"
    await store.delete(SESSION.session_id)
    assert await store.get(SESSION.session_id) is None
    await store.delete(SESSION.session_id)  # ending it twice is not an error


async def test_an_id_that_is_not_ours_is_unknown(store: McpSessionStore) -> None:
    assert await store.get("0" * 32) is None
    assert await store.get("../../etc") is None
    assert await store.get("") is None


async def test_a_store_refuses_an_id_that_was_not_minted(store: McpSessionStore) -> None:
    with pytest.raises(ValueError, match="32 hex digits"):
        await store.put(msgspec.structs.replace(SESSION, session_id="a.b"))
