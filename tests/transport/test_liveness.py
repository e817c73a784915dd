"""One contract, two worker registries: the in-memory one and the JetStream KV one."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import anyio
import nats.js.errors
import pytest
from nats.js.api import KeyValueConfig

from claudecluster.errors import EventDecodeError
from claudecluster.events.liveness import WorkerLiveness, decode_liveness, encode_liveness
from claudecluster.runtime.connection import open_nats
from claudecluster.transport import liveness
from claudecluster.transport.liveness import (
    JetStreamWorkerRegistry,
    MemoryWorkerRegistry,
    WorkerRegistry,
)

T0 = datetime(2026, 3, 1, tzinfo=UTC)
_WAIT_S = 10.0


@pytest.fixture(params=["memory", "jetstream"])
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
async def registry(kind: str, request: pytest.FixtureRequest) -> AsyncIterator[WorkerRegistry]:
    if kind == "memory":
        yield MemoryWorkerRegistry()
        return
    nats_url: str = request.getfixturevalue("nats_url")
    bucket = f"cc_workers_test_{uuid.uuid4().hex[:8]}"
    async with open_nats(nats_url, name="registry-test") as client:
        js = client.jetstream()
        await js.create_key_value(KeyValueConfig(bucket=bucket, history=1, ttl=30))
        try:
            yield JetStreamWorkerRegistry(js, bucket)
        finally:
            with contextlib.suppress(nats.js.errors.NotFoundError):
                await js.delete_key_value(bucket)


def beat(worker_id: str, seconds: float, **fields: object) -> WorkerLiveness:
    return WorkerLiveness(worker_id=worker_id, at=T0 + timedelta(seconds=seconds), **fields)  # type: ignore[arg-type]


async def test_the_latest_entry_of_each_worker_is_current(registry: WorkerRegistry) -> None:
    await registry.put(beat("w1", 0))
    await registry.put(beat("w2", 1, slots=2, running_tasks=("r/a",)))
    await registry.put(beat("w1", 5, cpu_percent=12.5))
    current = await registry.current()
    assert current == {
        "w1": beat("w1", 5, cpu_percent=12.5),
        "w2": beat("w2", 1, slots=2, running_tasks=("r/a",)),
    }
    await registry.delete("w2")
    assert set(await registry.current()) == {"w1"}


async def test_a_watch_gives_what_is_there_then_each_new_entry(registry: WorkerRegistry) -> None:
    await registry.put(beat("w1", 0))
    seen: list[WorkerLiveness] = []
    with anyio.fail_after(_WAIT_S):
        watch = registry.watch()
        seen.append(await anext(watch))
        await registry.put(beat("w2", 1))
        await registry.put(beat("w1", 5))
        seen.append(await anext(watch))
        seen.append(await anext(watch))
        await watch.aclose()
    assert seen == [beat("w1", 0), beat("w2", 1), beat("w1", 5)]


async def test_an_empty_registry_reads_as_empty(registry: WorkerRegistry) -> None:
    assert await registry.current() == {}


def test_a_record_round_trips_and_a_foreign_or_newer_one_is_refused_by_name() -> None:
    record = beat("w1", 3, slots=4, slots_free=1, memory_bytes=2**20, load_avg=0.5)
    assert decode_liveness(encode_liveness(record)) == record
    # What the registry held before liveness moved there: no time, so nothing to trust.
    with pytest.raises(EventDecodeError, match="at"):
        decode_liveness(b'{"worker_id": "w1", "pool": "default", "slots": 1, "running": []}')
    with pytest.raises(EventDecodeError, match="version 2"):
        decode_liveness(encode_liveness(beat("w1", 0, version=2)))


async def test_a_quiet_jetstream_watch_is_made_again_and_still_sees_every_worker(
    nats_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A watch that hears nothing for WATCH_QUIET_S is made again (one the server stopped
    feeding after a partition stayed silent for good); the new one gives the current
    entries again, so nothing written meanwhile is missed."""
    monkeypatch.setattr(liveness, "WATCH_QUIET_S", 0.3)
    bucket = f"cc_workers_test_{uuid.uuid4().hex[:8]}"
    async with open_nats(nats_url, name="registry-quiet-test") as client:
        js = client.jetstream()
        await js.create_key_value(KeyValueConfig(bucket=bucket, history=1, ttl=30))
        try:
            registry = JetStreamWorkerRegistry(js, bucket)
            made = 0
            watching = registry._watching

            @contextlib.asynccontextmanager
            async def counted() -> AsyncIterator[Any]:
                nonlocal made
                made += 1
                async with watching() as updates:
                    yield updates

            monkeypatch.setattr(registry, "_watching", counted)
            await registry.put(beat("w1", 0))
            with anyio.fail_after(_WAIT_S):
                watch = registry.watch()
                first = await anext(watch)
                second = await anext(watch)  # after a quiet spell: the watch made again
                await watch.aclose()
        finally:
            with contextlib.suppress(nats.js.errors.NotFoundError):
                await js.delete_key_value(bucket)
    assert first == second == beat("w1", 0)
    assert made == 2
