"""One contract, two artifact stores: the in-memory one and the JetStream object store."""

from __future__ import annotations

import contextlib
import hashlib
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import msgspec
import nats.js.errors
import pytest
from nats.js.api import ObjectStoreConfig

from claudecluster.errors import EventStoreError
from claudecluster.runtime.connection import open_nats
from claudecluster.transport.artifacts import (
    FILE_CHUNK,
    ArtifactStore,
    JetStreamArtifactStore,
    MemoryArtifactStore,
)


@pytest.fixture(params=["memory", "jetstream"])
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
async def store(kind: str, request: pytest.FixtureRequest) -> AsyncIterator[ArtifactStore]:
    bucket = f"cc_artifacts_test_{uuid.uuid4().hex[:8]}"
    if kind == "memory":
        yield MemoryArtifactStore(bucket)
        return
    nats_url: str = request.getfixturevalue("nats_url")
    async with open_nats(nats_url, name="artifacts-test") as client:
        js = client.jetstream()
        await js.create_object_store(bucket, config=ObjectStoreConfig(bucket=bucket))
        try:
            yield JetStreamArtifactStore(js, bucket)
        finally:
            with contextlib.suppress(nats.js.errors.NotFoundError):
                await js.delete_object_store(bucket)


@pytest.mark.anyio
async def test_what_is_put_is_got_back_with_its_reference(store: ArtifactStore) -> None:
    ref = await store.put("run1/t1/1/diffstat.json", "diffstat.json", b'{"files": 2}')
    assert ref.name == "diffstat.json"
    assert ref.key == "run1/t1/1/diffstat.json"
    assert ref.size == 12
    assert ref.sha256 == hashlib.sha256(b'{"files": 2}').hexdigest()
    assert await store.get(ref) == b'{"files": 2}'
    assert await store.read_named(ref.key) == b'{"files": 2}'
    assert await store.exists(ref.key)


@pytest.mark.anyio
async def test_a_missing_artifact_reads_as_none_and_fails_a_verified_get(
    store: ArtifactStore,
) -> None:
    ref = await store.put("a/b", "b", b"x")
    await store.delete("a/b")
    assert await store.read_named("a/b") is None
    assert not await store.exists("a/b")
    with pytest.raises(EventStoreError, match="not in bucket"):
        await store.get(ref)
    await store.delete("a/b")  # deleting what is not there is not an error


@pytest.mark.anyio
async def test_a_checksum_that_does_not_match_is_refused(
    store: ArtifactStore, tmp_path: Path
) -> None:
    ref = await store.put("a/b", "b", b"the real contents")
    forged = msgspec.structs.replace(ref, sha256=hashlib.sha256(b"other").hexdigest())
    with pytest.raises(EventStoreError, match="checksum"):
        await store.get(forged)
    with pytest.raises(EventStoreError, match="checksum"):
        await store.get_file(forged, tmp_path / "out")
    assert not (tmp_path / "out").exists()


@pytest.mark.anyio
async def test_names_are_listed_sorted_by_prefix(store: ArtifactStore) -> None:
    assert await store.names() == []
    for key in ("run2/t/1/x", "run1/t/2/x", "run1/t/1/x"):
        await store.put(key, "x", key.encode())
    assert await store.names(prefix="run1/") == ["run1/t/1/x", "run1/t/2/x"]
    assert await store.names() == ["run1/t/1/x", "run1/t/2/x", "run2/t/1/x"]


@pytest.mark.anyio
async def test_a_put_replaces_what_was_under_the_key(store: ArtifactStore) -> None:
    await store.put("k", "k", b"first")
    ref = await store.put("k", "k", b"second")
    assert await store.get(ref) == b"second"


@pytest.mark.anyio
async def test_a_file_of_several_chunks_streams_in_and_out_with_progress(
    store: ArtifactStore, tmp_path: Path
) -> None:
    data = bytes(range(256)) * (FILE_CHUNK * 3 // 256 + 7)  # three chunks and a bit
    source = tmp_path / "result.bundle"
    source.write_bytes(data)
    put_progress: list[tuple[int, int]] = []
    ref = await store.put_file(
        "run1/t1/1/result.bundle", source, on_progress=lambda d, t: put_progress.append((d, t))
    )
    assert ref.name == "result.bundle"
    assert ref.size == len(data)
    assert ref.sha256 == hashlib.sha256(data).hexdigest()
    assert put_progress[-1] == (len(data), len(data))

    got_progress: list[tuple[int, int]] = []
    out = await store.get_file(
        ref, tmp_path / "deep" / "copy.bundle", on_progress=lambda d, t: got_progress.append((d, t))
    )
    assert out.read_bytes() == data
    assert got_progress[-1] == (len(data), len(data))

    pieces: list[bytes] = []
    assert await store.get_into(ref, pieces.append) == len(data)
    assert b"".join(pieces) == data
    assert len(pieces) > 1  # streamed, not handed over whole


@pytest.mark.anyio
async def test_an_empty_file_round_trips(store: ArtifactStore, tmp_path: Path) -> None:
    (tmp_path / "empty").write_bytes(b"")
    ref = await store.put_file("e", tmp_path / "empty")
    assert ref.size == 0
    assert (await store.get_file(ref, tmp_path / "back")).read_bytes() == b""
