"""Artifacts (git bundles, diffstats, logs) in the JetStream object store.

A worker on another machine hands its result to the driver this way; the event that
announces the result carries only the :class:`~claudecluster.events.model.ArtifactRef`.

Files move in chunks (the object store's 128 KB), streamed from and to disk, so memory
does not grow with an artifact's size, and each chunk is its own request: heartbeats and
events on the same connection go out between them. ``on_progress`` hears the bytes moved.
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Callable
from pathlib import Path
from typing import Final

import anyio
import nats.errors
import nats.js.errors
from nats.js import JetStreamContext
from nats.js.object_store import ObjectStore

from claudecluster.errors import EventStoreError
from claudecluster.events.model import ArtifactRef

__all__ = ["ARTIFACTS_BUCKET", "ArtifactStore", "Progress", "artifact_key"]

#: Told the bytes moved so far and the total (0 when unknown), from a worker thread.
Progress = Callable[[int, int], None]

ARTIFACTS_BUCKET: Final = "cc_artifacts"


def artifact_key(run_id: str, task_id: str, attempt: int, name: str) -> str:
    """Where one attempt's artifact is stored; attempts never overwrite each other."""
    return f"{run_id}/{task_id}/{attempt}/{name}"


class ArtifactStore:
    """Puts and gets artifacts, checking their SHA-256 on the way back.

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
            raise EventStoreError(f"cannot store artifact {key}: {exc!r}") from exc
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
        with path.open("rb") as raw:
            reader = _HashingReader(raw, total, on_progress)
            try:
                await (await self._obs()).put(key, reader)  # type: ignore[arg-type]
            except (nats.errors.Error, TimeoutError) as exc:
                raise EventStoreError(f"cannot store artifact {key}: {exc!r}") from exc
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
        except nats.js.errors.ObjectNotFoundError:
            return None
        except (nats.errors.Error, TimeoutError) as exc:
            raise EventStoreError(f"cannot read artifact {key}: {exc!r}") from exc
        return result.data or b""

    async def exists(self, key: str) -> bool:
        """Whether an object is stored under ``key``.

        Raises:
            EventStoreError: the server failed.
        """
        try:
            info = await (await self._obs()).get_info(key)
        except nats.js.errors.ObjectNotFoundError:
            return False
        except (nats.errors.Error, TimeoutError) as exc:
            raise EventStoreError(f"cannot look up artifact {key}: {exc!r}") from exc
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
            raise EventStoreError(f"cannot list bucket {self._bucket}: {exc!r}") from exc
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
        except nats.js.errors.ObjectNotFoundError:
            return
        except (nats.errors.Error, TimeoutError) as exc:
            raise EventStoreError(f"cannot delete artifact {key}: {exc!r}") from exc

    async def get(self, ref: ArtifactRef) -> bytes:
        """An artifact's contents, verified against its recorded checksum.

        Raises:
            EventStoreError: it is missing, unreadable, or its checksum does not match.
        """
        try:
            result = await (await self._obs()).get(ref.key)
        except nats.js.errors.ObjectNotFoundError:
            raise EventStoreError(f"artifact {ref.key} is not in bucket {ref.bucket}") from None
        except (nats.errors.Error, TimeoutError) as exc:
            raise EventStoreError(f"cannot read artifact {ref.key}: {exc!r}") from exc
        data = result.data or b""
        if ref.sha256 and hashlib.sha256(data).hexdigest() != ref.sha256:
            raise EventStoreError(f"artifact {ref.key} does not match its recorded checksum")
        return data

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
                writer = _HashingWriter(raw, ref.size, on_progress)
                await (await self._obs()).get(ref.key, writeinto=writer)  # type: ignore[arg-type]
        except nats.js.errors.ObjectNotFoundError:
            await anyio.Path(path).unlink(missing_ok=True)
            raise EventStoreError(f"artifact {ref.key} is not in bucket {ref.bucket}") from None
        except (nats.errors.Error, TimeoutError) as exc:
            await anyio.Path(path).unlink(missing_ok=True)
            raise EventStoreError(f"cannot read artifact {ref.key}: {exc!r}") from exc
        if ref.sha256 and writer.digest.hexdigest() != ref.sha256:
            await anyio.Path(path).unlink(missing_ok=True)
            raise EventStoreError(f"artifact {ref.key} does not match its recorded checksum")
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

    def __init__(self, raw: io.BufferedWriter, total: int, on_progress: Progress | None):
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
