"""Artifacts (git bundles, diffstats, logs) in the JetStream object store.

A worker on another machine hands its result to the driver this way; the event that
announces the result carries only the :class:`~claudecluster.events.model.ArtifactRef`.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Final

import anyio
import nats.errors
import nats.js.errors
from nats.js import JetStreamContext
from nats.js.object_store import ObjectStore

from claudecluster.errors import EventStoreError
from claudecluster.events.model import ArtifactRef

__all__ = ["ARTIFACTS_BUCKET", "ArtifactStore", "artifact_key"]

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

    async def put_file(self, key: str, path: Path) -> ArtifactRef:
        """Store a file's contents under ``key``, named after the file.

        Raises:
            EventStoreError: the server refused it.
            OSError: the file cannot be read.
        """
        return await self.put(key, path.name, await anyio.Path(path).read_bytes())

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

    async def get_file(self, ref: ArtifactRef, path: Path) -> Path:
        """Write an artifact to ``path`` (verified first); returns ``path``.

        Raises:
            EventStoreError: it is missing or corrupt.
        """
        await anyio.Path(path).write_bytes(await self.get(ref))
        return path
