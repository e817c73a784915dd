"""One contract, two snapshot stores: in memory and in the cc_snapshots KV bucket."""

from __future__ import annotations

import contextlib
import hashlib
import os
import uuid
from collections.abc import AsyncIterator

import msgspec
import nats.js.errors
import pytest
from nats.js.api import KeyValueConfig

from claudecluster.runtime.connection import open_nats
from claudecluster.transport.snapshots import (
    JetStreamSnapshotStore,
    MemorySnapshotStore,
    SnapshotStore,
)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(params=["memory", "jetstream"])
async def store(request: pytest.FixtureRequest) -> AsyncIterator[SnapshotStore]:
    if request.param == "memory":
        yield MemorySnapshotStore()
        return
    nats_url: str = request.getfixturevalue("nats_url")
    bucket = f"cc_snapshots_test_{uuid.uuid4().hex[:8]}"
    async with open_nats(nats_url, name="snapshot-test") as client:
        js = client.jetstream()
        await js.create_key_value(KeyValueConfig(bucket=bucket, history=1))
        try:
            # Small chunks, so a snapshot of a few KiB is written in many.
            yield JetStreamSnapshotStore(js, bucket, chunk_bytes=1000)
        finally:
            with contextlib.suppress(nats.js.errors.NotFoundError):
                await js.delete_key_value(bucket)


async def test_a_snapshot_reads_back_whole_and_the_latest_replaces_it(
    store: SnapshotStore,
) -> None:
    assert await store.get("view") is None
    first = os.urandom(4500)
    await store.put("view", first)
    assert await store.get("view") == first
    second = os.urandom(2100)
    await store.put("view", second)
    assert await store.get("view") == second
    await store.put("other", b"")
    assert await store.get("other") == b""
    assert await store.get("view") == second


async def test_a_missing_or_altered_chunk_means_no_snapshot(nats_url: str) -> None:
    bucket = f"cc_snapshots_test_{uuid.uuid4().hex[:8]}"
    async with open_nats(nats_url, name="snapshot-test") as client:
        js = client.jetstream()
        kv = await js.create_key_value(KeyValueConfig(bucket=bucket, history=1))
        try:
            store = JetStreamSnapshotStore(js, bucket, chunk_bytes=1000)
            await store.put("view", os.urandom(3000))
            chunk = sorted(k for k in await kv.keys() if k != "view")[1]
            await kv.put(chunk, b"tampered")
            assert await store.get("view") is None
            await kv.delete(chunk)
            assert await store.get("view") is None
        finally:
            with contextlib.suppress(nats.js.errors.NotFoundError):
                await js.delete_key_value(bucket)


async def test_a_snapshot_is_stored_compressed_and_an_uncompressed_one_still_reads(
    nats_url: str,
) -> None:
    bucket = f"cc_snapshots_test_{uuid.uuid4().hex[:8]}"
    async with open_nats(nats_url, name="snapshot-test") as client:
        js = client.jetstream()
        kv = await js.create_key_value(KeyValueConfig(bucket=bucket, history=1))
        try:
            store = JetStreamSnapshotStore(js, bucket, chunk_bytes=1000)
            alike = b"run.completed task.merged " * 400
            await store.put("view", alike)
            chunks = [k for k in await kv.keys() if k != "view"]
            stored = b"".join([(await kv.get(k)).value or b"" for k in sorted(chunks)])
            assert len(stored) < len(alike) // 4
            assert await store.get("view") == alike
            # A manifest written before compression names the bytes as they are.
            digest = hashlib.sha256(alike).hexdigest()
            await kv.put("old.0", alike)
            await kv.put(
                "old",
                msgspec.json.encode({"chunks": ["old.0"], "size": len(alike), "sha256": digest}),
            )
            assert await store.get("old") == alike
        finally:
            with contextlib.suppress(nats.js.errors.NotFoundError):
                await js.delete_key_value(bucket)
