"""One contract, two transcript stores: the JetStream one and its in-memory twin, each
against claude-agent-sdk's own conformance suite and against what ours adds (redaction,
a retried batch loaded once)."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator
from typing import Any

import nats.js.errors
import pytest
from claude_agent_sdk import SessionKey, SessionStore, SessionStoreEntry
from claude_agent_sdk.testing import run_session_store_conformance

from claudecluster.observability.redaction import REDACTED, Redactor
from claudecluster.runtime.connection import open_nats
from claudecluster.transport.topology import apply_topology, load_topology
from claudecluster.transport.transcripts import (
    SESSIONS_STREAM,
    JetStreamTranscriptStore,
    MemoryTranscriptStore,
)


async def test_every_contract_of_the_sdk_conformance_suite_holds(nats_url: str) -> None:
    async with open_nats(nats_url) as client:
        js = client.jetstream()

        async def fresh() -> JetStreamTranscriptStore:
            # Each contract gets empty storage, as the suite requires.
            for name in (SESSIONS_STREAM, "KV_cc_sessions"):
                with contextlib.suppress(nats.js.errors.NotFoundError):
                    await js.delete_stream(name)
            await apply_topology(js, load_topology())
            return JetStreamTranscriptStore(js)

        await run_session_store_conformance(fresh)


async def test_every_contract_of_the_sdk_conformance_suite_holds_in_memory() -> None:
    async def fresh() -> MemoryTranscriptStore:
        return MemoryTranscriptStore()

    await run_session_store_conformance(fresh)


_SECRET = "sk-ant-api03-this-is-the-api-key-0123456789"


@pytest.fixture(params=["memory", "jetstream"])
async def store(request: pytest.FixtureRequest) -> AsyncIterator[SessionStore]:
    """A transcript store that redacts :data:`_SECRET`."""
    if request.param == "memory":
        yield MemoryTranscriptStore(redactor=Redactor([_SECRET]))
        return
    nats_url: str = request.getfixturevalue("nats_url")
    async with open_nats(nats_url) as client:
        js = client.jetstream()
        await apply_topology(js, load_topology())
        yield JetStreamTranscriptStore(js, redactor=Redactor([_SECRET]))


async def test_a_retried_batch_is_loaded_once_and_order_is_kept(store: SessionStore) -> None:
    key: SessionKey = {"project_key": "/tmp/work tree.x", "session_id": str(uuid.uuid4())}
    batch: list[SessionStoreEntry] = [
        {"type": "user", "uuid": "u1"},
        {"type": "assistant", "uuid": "a1"},
    ]
    await store.append(key, batch)
    await store.append(key, batch)  # the SDK retried it after a timeout
    await store.append(key, [{"type": "title"}, {"type": "title"}])  # no uuid: kept
    loaded = await store.load(key)
    assert loaded == [*batch, {"type": "title"}, {"type": "title"}]


async def test_what_is_kept_of_a_transcript_has_its_secrets_redacted(store: SessionStore) -> None:
    project = f"/p-{uuid.uuid4().hex[:8]}"
    key: SessionKey = {"project_key": project, "session_id": str(uuid.uuid4())}
    entry: Any = {"type": "assistant", "uuid": "a1", "text": f"ANTHROPIC_API_KEY={_SECRET}"}
    await store.append(key, [entry])
    assert await store.load(key) == [
        {"type": "assistant", "uuid": "a1", "text": f"ANTHROPIC_API_KEY={REDACTED}"}
    ]
    assert _SECRET not in repr(await store.list_session_summaries(project))


async def test_an_empty_batch_creates_no_transcript(store: SessionStore) -> None:
    key: SessionKey = {"project_key": "/empty", "session_id": str(uuid.uuid4())}
    await store.append(key, [])
    assert await store.load(key) is None


async def test_a_transcript_is_stored_with_every_configured_secret_redacted(
    nats_url: str,
) -> None:
    key_value = "sk-ant-api03-this-is-the-api-key-0123456789"
    async with open_nats(nats_url) as client:
        js = client.jetstream()
        await apply_topology(js, load_topology())
        store = JetStreamTranscriptStore(js, redactor=Redactor([key_value]))
        key: SessionKey = {"project_key": "/p", "session_id": str(uuid.uuid4())}
        echoed = f"env: ANTHROPIC_API_KEY={key_value}"
        entry: Any = {"type": "assistant", "uuid": "a1", "text": echoed}
        await store.append(key, [entry])
        loaded = await store.load(key)
        summaries = await store.list_session_summaries("/p")
        stored = await js.get_last_msg(SESSIONS_STREAM, JetStreamTranscriptStore._subject(key))
    assert loaded == [
        {"type": "assistant", "uuid": "a1", "text": f"env: ANTHROPIC_API_KEY={REDACTED}"}
    ]
    assert key_value.encode() not in (stored.data or b"")
    assert key_value not in repr(summaries)


async def test_a_batch_that_is_not_ours_is_skipped_on_load(nats_url: str) -> None:
    async with open_nats(nats_url) as client:
        js = client.jetstream()
        await apply_topology(js, load_topology())
        store = JetStreamTranscriptStore(js)
        key: SessionKey = {"project_key": "/p", "session_id": str(uuid.uuid4())}
        await store.append(key, [{"type": "user", "uuid": "u1"}])
        subject = JetStreamTranscriptStore._subject(key)
        for poison in (b"[" * 5_000, b"not json", b'{"a": 1}'):
            await js.publish(subject, poison, stream=SESSIONS_STREAM)
        await store.append(key, [{"type": "assistant", "uuid": "a1"}])
        loaded = await store.load(key)
    assert loaded == [{"type": "user", "uuid": "u1"}, {"type": "assistant", "uuid": "a1"}]
