"""Artifacts (git bundles, diffstats, logs) in the JetStream object store.

A worker on another machine hands its result to the driver this way; the event that
announces the result carries only the :class:`~claudecluster.events.model.ArtifactRef`.

Files move in chunks (:data:`FILE_CHUNK`, 512 KiB; the object store's default is 128 KB),
streamed from and to disk or a pipe, so memory does not grow with an artifact's size, and
each chunk is its own request: heartbeats and events on the same connection go out between
them. ``on_progress`` hears the bytes moved.

``ArtifactStore`` is the seam; ``JetStreamArtifactStore`` the real one and
``MemoryArtifactStore`` its in-memory twin (one contract suite for both,
``tests/transport/test_artifact_store_contract.py``).
"""

from __future__ import annotations

import base64
import hashlib
import io
from collections.abc import Callable
from contextlib import suppress
from pathlib import Path
from typing import Final, Protocol

import anyio
import nats.errors
import nats.js.errors
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy, ObjectMeta, ObjectMetaOptions
from nats.js.object_store import (
    OBJ_CHUNKS_PRE_TEMPLATE,
    OBJ_DIGEST_TYPE,
    OBJ_STREAM_TEMPLATE,
    ObjectStore,
)

from claudecluster.errors import EventStoreError
from claudecluster.events.model import ArtifactRef
from claudecluster.transport.failures import store_failure

__all__ = [
    "ARTIFACTS_BUCKET",
    "ArtifactStore",
    "JetStreamArtifactStore",
    "MemoryArtifactStore",
    "Progress",
    "artifact_key",
]

#: Told the bytes moved so far and the total (0 when unknown), from a worker thread.
Progress = Callable[[int, int], None]

ARTIFACTS_BUCKET: Final = "cc_artifacts"

#: The chunk a file is stored in. Each chunk is one acknowledged publish, so a bigger
#: chunk is fewer round trips (a 200 MB history took 1,600 at 128 KB); it must stay below
#: the server's ``max_payload`` (1 MB unless configured), and the chunk is what one
#: transfer holds in memory at a time.
FILE_CHUNK: Final = 512 * 1024
#: Chunks one read asks for at once (and holds at most): 4 MiB of 512 KiB chunks.
_PULL_BATCH: Final = 8
#: Seconds one batch may take to arrive, and a dead reader's consumer is kept.
_PULL_WAIT_S: Final = 60.0
_PULL_IDLE_S: Final = 120.0


def artifact_key(run_id: str, task_id: str, attempt: int, name: str) -> str:
    """Where one attempt's artifact is stored; attempts never overwrite each other."""
    return f"{run_id}/{task_id}/{attempt}/{name}"


class ArtifactStore(Protocol):
    """Where artifacts live: put by key, read back verified against their SHA-256.

    Every method raises ``EventStoreError`` on a store failure; a read of a missing
    artifact or one whose checksum does not match raises it too.
    """

    async def put(self, key: str, name: str, data: bytes) -> ArtifactRef:
        """Store ``data`` under ``key`` (replacing what was there)."""
        ...

    async def put_file(
        self, key: str, path: Path, *, on_progress: Progress | None = None
    ) -> ArtifactRef:
        """Store a file's contents under ``key``, named after the file."""
        ...

    async def read_named(self, key: str) -> bytes | None:
        """The object stored under ``key``, or None."""
        ...

    async def exists(self, key: str) -> bool:
        """Whether an object is stored under ``key``."""
        ...

    async def names(self, *, prefix: str = "") -> list[str]:
        """The names of the objects stored that start with ``prefix``, sorted."""
        ...

    async def delete(self, key: str) -> None:
        """Remove the object under ``key`` (nothing if there is none)."""
        ...

    async def get(self, ref: ArtifactRef) -> bytes:
        """An artifact's contents, verified against its recorded checksum."""
        ...

    async def get_into(
        self,
        ref: ArtifactRef,
        sink: Callable[[bytes], object],
        *,
        on_progress: Progress | None = None,
    ) -> int:
        """Stream an artifact to ``sink`` (called from a worker thread); returns the size."""
        ...

    async def get_file(
        self, ref: ArtifactRef, path: Path, *, on_progress: Progress | None = None
    ) -> Path:
        """Stream an artifact to ``path`` (removed if it fails the check); returns ``path``."""
        ...


class JetStreamArtifactStore:
    """Puts and gets artifacts in the object store, checking their SHA-256 on the way back.

    Args:
        js: a JetStream context with the topology applied.
        bucket: the object store bucket.
    """

    def __init__(self, js: JetStreamContext, bucket: str = ARTIFACTS_BUCKET) -> None:
        self._js = js
        self._bucket = bucket
        self._store: ObjectStore | None = None

    async def _obs(self) -> ObjectStore:
        if self._store is None:
            self._store = await self._js.object_store(self._bucket)
        return self._store

    async def put(self, key: str, name: str, data: bytes) -> ArtifactRef:
        """Store ``data`` under ``key``.

        Raises:
            EventStoreError: the server refused it.
        """
        try:
            await (await self._obs()).put(key, data)
        except (nats.errors.Error, TimeoutError) as exc:
            raise store_failure(f"cannot store artifact {key}: {exc!r}", exc) from exc
        return ArtifactRef(
            name=name,
            bucket=self._bucket,
            key=key,
            size=len(data),
            sha256=hashlib.sha256(data).hexdigest(),
        )

    async def put_file(
        self, key: str, path: Path, *, on_progress: Progress | None = None
    ) -> ArtifactRef:
        """Store a file's contents under ``key``, named after the file, streamed from disk.

        Raises:
            EventStoreError: the server refused it.
            OSError: the file cannot be read.
        """
        total = (await anyio.Path(path).stat()).st_size
        meta = ObjectMeta(name=key, options=ObjectMetaOptions(max_chunk_size=FILE_CHUNK))
        with path.open("rb") as raw:
            reader = _HashingReader(raw, total, on_progress)
            try:
                await (await self._obs()).put(key, reader, meta=meta)  # type: ignore[arg-type]
            except (nats.errors.Error, TimeoutError) as exc:
                raise store_failure(f"cannot store artifact {key}: {exc!r}", exc) from exc
        return ArtifactRef(
            name=path.name, bucket=self._bucket, key=key, size=reader.size,
            sha256=reader.digest.hexdigest(),
        )  # fmt: skip

    async def read_named(self, key: str) -> bytes | None:
        """The object stored under ``key`` (small ones: it is read into memory), or None.

        Raises:
            EventStoreError: the server failed.
        """
        try:
            result = await (await self._obs()).get(key)
        except (nats.js.errors.ObjectNotFoundError, nats.js.errors.BucketNotFoundError):
            # No bucket yet (a server no writer has set up) holds nothing either.
            return None
        except (nats.errors.Error, TimeoutError) as exc:
            raise store_failure(f"cannot read artifact {key}: {exc!r}", exc) from exc
        return result.data or b""

    async def exists(self, key: str) -> bool:
        """Whether an object is stored under ``key``.

        Raises:
            EventStoreError: the server failed.
        """
        try:
            info = await (await self._obs()).get_info(key)
        except (nats.js.errors.ObjectNotFoundError, nats.js.errors.BucketNotFoundError):
            return False
        except (nats.errors.Error, TimeoutError) as exc:
            raise store_failure(f"cannot look up artifact {key}: {exc!r}", exc) from exc
        return not info.deleted

    async def names(self, *, prefix: str = "") -> list[str]:
        """The names of the objects stored, those starting with ``prefix``.

        Raises:
            EventStoreError: the server failed.
        """
        try:
            listing = await (await self._obs()).list()
        except nats.js.errors.NotFoundError:  # an empty bucket
            return []
        except (nats.errors.Error, TimeoutError) as exc:
            raise store_failure(f"cannot list bucket {self._bucket}: {exc!r}", exc) from exc
        return sorted(
            info.name for info in listing if not info.deleted and info.name.startswith(prefix)
        )

    async def delete(self, key: str) -> None:
        """Remove the object under ``key`` (nothing if there is none).

        Raises:
            EventStoreError: the server failed.
        """
        try:
            await (await self._obs()).delete(key)
        except (nats.js.errors.ObjectNotFoundError, nats.js.errors.BucketNotFoundError):
            return
        except (nats.errors.Error, TimeoutError) as exc:
            raise store_failure(f"cannot delete artifact {key}: {exc!r}", exc) from exc

    async def get(self, ref: ArtifactRef) -> bytes:
        """An artifact's contents, verified against its recorded checksum.

        Raises:
            EventStoreError: it is missing, unreadable, or its checksum does not match.
        """
        try:
            result = await (await self._obs()).get(ref.key)
        except (nats.js.errors.ObjectNotFoundError, nats.js.errors.BucketNotFoundError):
            raise EventStoreError(f"artifact {ref.key} is not in bucket {ref.bucket}") from None
        except (nats.errors.Error, TimeoutError) as exc:
            raise store_failure(f"cannot read artifact {ref.key}: {exc!r}", exc) from exc
        data = result.data or b""
        if ref.sha256 and hashlib.sha256(data).hexdigest() != ref.sha256:
            raise EventStoreError(f"artifact {ref.key} does not match its recorded checksum")
        return data

    async def get_into(
        self,
        ref: ArtifactRef,
        sink: Callable[[bytes], object],
        *,
        on_progress: Progress | None = None,
    ) -> int:
        """Stream an artifact's chunks to ``sink``, in order, and verify its checksum.

        ``sink`` is called from a worker thread (it may block: a pipe to a process that
        reads slower than the network, say), one chunk at a time. It has been given every
        byte when this returns; on an error it may have been given some. Returns the size.

        Raises:
            EventStoreError: it is missing, unreadable, or its checksum does not match
                (the caller must discard what ``sink`` got).
        """
        writer = _HashingWriter(_Sink(sink), ref.size, on_progress)
        await self._pull(ref, writer)
        return writer.size

    async def _pull(self, ref: ArtifactRef, writer: _HashingWriter) -> None:
        """Read an object's chunks through a pull consumer of its own, into ``writer``.

        nats-py's ``ObjectStore.get`` reads through an ordered push consumer, which on this
        project's machine delivered about 25 MB/s where fetching batches of the same
        chunks delivered about 170 MB/s (20 MB: 0.84 s against 0.12 s), and the first task
        on a fresh host waits on exactly this read. At most :data:`_PULL_BATCH` chunks are
        in flight. The object's own digest and the reference's SHA-256 are both checked.

        Raises:
            EventStoreError: as :meth:`get_into`.
        """
        js = self._js
        try:
            info = await (await self._obs()).get_info(ref.key)
        except (nats.js.errors.ObjectNotFoundError, nats.js.errors.BucketNotFoundError):
            raise EventStoreError(f"artifact {ref.key} is not in bucket {ref.bucket}") from None
        except (nats.errors.Error, TimeoutError) as exc:
            raise store_failure(f"cannot read artifact {ref.key}: {exc!r}", exc) from exc
        if info.is_link() or not info.nuid:
            raise EventStoreError(f"artifact {ref.key} is a link or has no chunks to read")
        own = hashlib.sha256()
        stream = OBJ_STREAM_TEMPLATE.format(bucket=self._bucket)
        if info.size:
            try:
                subscription = await js.pull_subscribe(
                    OBJ_CHUNKS_PRE_TEMPLATE.format(bucket=self._bucket, obj=info.nuid),
                    stream=stream,
                    config=ConsumerConfig(
                        ack_policy=AckPolicy.NONE,
                        deliver_policy=DeliverPolicy.ALL,
                        mem_storage=True,
                        inactive_threshold=_PULL_IDLE_S,  # gone if this reader dies
                    ),
                )
            except (nats.errors.Error, TimeoutError) as exc:
                raise store_failure(f"cannot read artifact {ref.key}: {exc!r}", exc) from exc
            try:
                received = 0
                while received < (info.chunks or 0):
                    batch = min(_PULL_BATCH, (info.chunks or 0) - received)
                    messages = await subscription.fetch(batch=batch, timeout=_PULL_WAIT_S)
                    for message in messages:
                        own.update(message.data)
                        await anyio.to_thread.run_sync(writer.write, message.data)
                    received += len(messages)
            except (nats.errors.Error, TimeoutError) as exc:
                raise store_failure(f"cannot read artifact {ref.key}: {exc!r}", exc) from exc
            finally:
                with anyio.CancelScope(shield=True), suppress(nats.errors.Error, TimeoutError):
                    consumer = await subscription.consumer_info()
                    await subscription.unsubscribe()
                    await js.delete_consumer(stream, consumer.name)
        digest = (
            (info.digest or "").replace(OBJ_DIGEST_TYPE, "").replace(OBJ_DIGEST_TYPE.upper(), "")
        )
        if digest and base64.urlsafe_b64decode(digest) != own.digest():
            raise EventStoreError(f"artifact {ref.key} does not match its stored digest")
        if ref.sha256 and writer.digest.hexdigest() != ref.sha256:
            raise EventStoreError(f"artifact {ref.key} does not match its recorded checksum")

    async def get_file(
        self, ref: ArtifactRef, path: Path, *, on_progress: Progress | None = None
    ) -> Path:
        """Stream an artifact to ``path``, verified against its checksum; returns ``path``.

        A file that fails the check is removed.

        Raises:
            EventStoreError: it is missing or corrupt.
        """
        await anyio.Path(path.parent).mkdir(parents=True, exist_ok=True)
        try:
            with path.open("wb") as raw:
                await self._pull(ref, _HashingWriter(raw, ref.size, on_progress))
        except BaseException:
            with anyio.CancelScope(shield=True):
                await anyio.Path(path).unlink(missing_ok=True)
            raise
        return path


class _HashingReader(io.RawIOBase):
    """A file read in chunks by the object store, hashed and counted on the way."""

    def __init__(self, raw: io.BufferedReader, total: int, on_progress: Progress | None):
        self._raw = raw
        self._total = total
        self._on_progress = on_progress
        self.digest = hashlib.sha256()
        self.size = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        n = self._raw.readinto(buffer)
        if n:
            self.digest.update(memoryview(buffer)[:n])
            self.size += n
            if self._on_progress is not None:
                self._on_progress(self.size, self._total)
        return n or 0


class _HashingWriter:
    """The target of a streamed get: writes chunks to a file, hashing and counting."""

    def __init__(
        self, raw: io.BufferedWriter | _Sink, total: int, on_progress: Progress | None
    ) -> None:
        self._raw = raw
        self._total = total
        self._on_progress = on_progress
        self.digest = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes) -> int:
        self._raw.write(data)
        self.digest.update(data)
        self.size += len(data)
        if self._on_progress is not None:
            self._on_progress(self.size, self._total)
        return len(data)


class _Sink:
    """A callable seen as the one method of a file a streamed get uses."""

    def __init__(self, sink: Callable[[bytes], object]) -> None:
        self._sink = sink

    def write(self, data: bytes) -> int:
        self._sink(data)
        return len(data)


class MemoryArtifactStore:
    """Artifacts in a dict: the same contract as :class:`JetStreamArtifactStore`.

    Files are read and written whole (in a worker thread, as the real store streams them),
    and ``on_progress`` hears each :data:`FILE_CHUNK`, so callers see the same calls.

    Args:
        bucket: the bucket name recorded in the references it hands out.
    """

    def __init__(self, bucket: str = ARTIFACTS_BUCKET) -> None:
        self._bucket = bucket
        self._objects: dict[str, bytes] = {}

    def _ref(self, key: str, name: str, data: bytes) -> ArtifactRef:
        return ArtifactRef(
            name=name, bucket=self._bucket, key=key, size=len(data),
            sha256=hashlib.sha256(data).hexdigest(),
        )  # fmt: skip

    async def put(self, key: str, name: str, data: bytes) -> ArtifactRef:
        """Store ``data`` under ``key``."""
        self._objects[key] = bytes(data)
        return self._ref(key, name, data)

    async def put_file(
        self, key: str, path: Path, *, on_progress: Progress | None = None
    ) -> ArtifactRef:
        """Store a file's contents under ``key``, named after the file.

        Raises:
            OSError: the file cannot be read.
        """
        data = await anyio.Path(path).read_bytes()
        _report_chunks(len(data), on_progress)
        self._objects[key] = data
        return self._ref(key, path.name, data)

    async def read_named(self, key: str) -> bytes | None:
        """The object under ``key``, or None."""
        return self._objects.get(key)

    async def exists(self, key: str) -> bool:
        """Whether an object is stored under ``key``."""
        return key in self._objects

    async def names(self, *, prefix: str = "") -> list[str]:
        """The stored names starting with ``prefix``, sorted."""
        return sorted(name for name in self._objects if name.startswith(prefix))

    async def delete(self, key: str) -> None:
        """Remove the object under ``key``."""
        self._objects.pop(key, None)

    async def get(self, ref: ArtifactRef) -> bytes:
        """An artifact's contents, verified.

        Raises:
            EventStoreError: it is missing or its checksum does not match.
        """
        data = self._objects.get(ref.key)
        if data is None:
            raise EventStoreError(f"artifact {ref.key} is not in bucket {ref.bucket}")
        if ref.sha256 and hashlib.sha256(data).hexdigest() != ref.sha256:
            raise EventStoreError(f"artifact {ref.key} does not match its recorded checksum")
        return data

    async def get_into(
        self,
        ref: ArtifactRef,
        sink: Callable[[bytes], object],
        *,
        on_progress: Progress | None = None,
    ) -> int:
        """Hand an artifact to ``sink`` in :data:`FILE_CHUNK` pieces, from a worker thread.

        The checksum is checked before ``sink`` hears anything.

        Raises:
            EventStoreError: it is missing or its checksum does not match.
        """
        data = await self.get(ref)
        writer = _HashingWriter(_Sink(sink), ref.size, on_progress)

        def feed() -> None:
            for start in range(0, len(data), FILE_CHUNK):
                writer.write(data[start : start + FILE_CHUNK])

        await anyio.to_thread.run_sync(feed)
        return writer.size

    async def get_file(
        self, ref: ArtifactRef, path: Path, *, on_progress: Progress | None = None
    ) -> Path:
        """Write an artifact to ``path``, verified; returns ``path``.

        Raises:
            EventStoreError: it is missing or corrupt (nothing is left at ``path``).
        """
        data = await self.get(ref)
        await anyio.Path(path.parent).mkdir(parents=True, exist_ok=True)
        await anyio.Path(path).write_bytes(data)
        _report_chunks(len(data), on_progress)
        return path


def _report_chunks(total: int, on_progress: Progress | None) -> None:
    """Tell ``on_progress`` about each chunk of a whole-file move, as streaming would."""
    if on_progress is None:
        return
    for done in range(FILE_CHUNK, total, FILE_CHUNK):
        on_progress(done, total)
    on_progress(total, total)
