"""The JetStream SessionStore against claude-agent-sdk's own conformance suite."""

from __future__ import annotations

import contextlib
import uuid

import nats.js.errors
from claude_agent_sdk import SessionKey, SessionStoreEntry
from claude_agent_sdk.testing import run_session_store_conformance

from claudecluster.runtime.connection import open_nats
from claudecluster.transport.session_store import SESSIONS_STREAM, JetStreamSessionStore
from claudecluster.transport.topology import apply_topology, load_topology


async def test_every_contract_of_the_sdk_conformance_suite_holds(nats_url: str) -> None:
    async with open_nats(nats_url) as client:
        js = client.jetstream()

        async def fresh() -> JetStreamSessionStore:
            # Each contract gets empty storage, as the suite requires.
            for name in (SESSIONS_STREAM, "KV_cc_sessions"):
                with contextlib.suppress(nats.js.errors.NotFoundError):
                    await js.delete_stream(name)
            await apply_topology(js, load_topology())
            return JetStreamSessionStore(js)

        await run_session_store_conformance(fresh)


async def test_a_retried_batch_is_loaded_once_and_order_is_kept(nats_url: str) -> None:
    async with open_nats(nats_url) as client:
        js = client.jetstream()
        await apply_topology(js, load_topology())
        store = JetStreamSessionStore(js)
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
