"""The worker's stores, patient through a moment without a store: a call that finds a
store unavailable (:class:`~claudecluster.errors.StoreUnavailableError`: a server lost, a
link cut, a stream's leader being elected) is made again, with a growing pause, until it
succeeds or the patience runs out.

An attempt reads and writes three stores besides the log: the artifacts (its repository's
history, its result bundle), the session transcripts (the mirror, and the one it resumes
from). Their streams fail over like the log's, and an attempt's appends to the log already
wait for that; without the same patience here, every attempt that touched a store during
an election failed as ``infrastructure`` and was retried from scratch, and a task retried
through a few faults in a row ran out of attempts (seen in tests/hosts/test_chaos.py).

Only unavailability is waited for. A refusal, a missing object or a checksum that does
not match fails at once: the same call would fail again. A streamed read
(:meth:`ArtifactStore.get_into`) is not repeated here: its sink may have been given part
of the object, which only the caller can discard (the workspace preparation repeats the
whole fetch of the repository's history, whose sink is made afresh each time).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Final, TypeVar

import anyio

from claudecluster.errors import EventStoreError, StoreUnavailableError
from claudecluster.events.model import ArtifactRef
from claudecluster.observability.logging import get_logger
from claudecluster.transport.artifacts import ArtifactStore, Progress

if TYPE_CHECKING:
    from claude_agent_sdk import (
        SessionKey,
        SessionListSubkeysKey,
        SessionStore,
        SessionStoreEntry,
        SessionStoreListEntry,
        SessionSummaryEntry,
    )

__all__ = ["STORE_PATIENCE_S", "PatientArtifacts", "PatientSessions", "patiently"]

#: How long a worker waits for a failing store: the log (its appends) and the others.
STORE_PATIENCE_S: Final = 60.0
_FIRST_PAUSE_S: Final = 0.25
_MAX_PAUSE_S: Final = 2.0
_log = get_logger(__name__)
T = TypeVar("T")


async def patiently(
    call: Callable[[], Awaitable[T]],
    *,
    what: str,
    patience_s: float,
    retrying: type[EventStoreError] = StoreUnavailableError,
) -> T:
    """``call()``'s result; made again while it raises ``retrying``, for up to
    ``patience_s`` seconds.

    ``retrying`` is wider only for the worker's appends to the log, which are the same
    envelope each time and so safe to repeat whatever failed.

    Raises:
        StoreUnavailableError: the store was still unavailable when the patience ran out.
        EventStoreError: any other failure of the store, at once.
    """
    deadline = anyio.current_time() + patience_s
    pause = _FIRST_PAUSE_S
    while True:
        try:
            return await call()
        except retrying as exc:
            if anyio.current_time() + pause > deadline:
                raise
            _log.warning("store failed; trying again", what=what, error=str(exc),
                         pause_s=pause)  # fmt: skip
            await anyio.sleep(pause)
            pause = min(pause * 2, _MAX_PAUSE_S)


class PatientSessions:
    """A session store whose appends and loads wait out an unavailable store.

    Appending a batch again is safe: a batch stored twice (the first try's acknowledgement
    lost) is read back once (see :func:`~claudecluster.transport.transcripts.
    JetStreamTranscriptStore.load`).
    """

    def __init__(self, inner: SessionStore, *, patience_s: float = STORE_PATIENCE_S) -> None:
        self._inner = inner
        self._patience_s = patience_s

    async def append(self, key: SessionKey, entries: list[SessionStoreEntry]) -> None:
        """Store one batch after the previous ones."""
        await patiently(
            lambda: self._inner.append(key, entries),
            what="session transcript append",
            patience_s=self._patience_s,
        )

    async def load(self, key: SessionKey) -> list[SessionStoreEntry] | None:
        """Every entry of the transcript in append order, or None if it was never written."""
        return await patiently(
            lambda: self._inner.load(key),
            what="session transcript read",
            patience_s=self._patience_s,
        )

    async def list_sessions(self, project_key: str) -> list[SessionStoreListEntry]:
        """As the store lists them."""
        return await self._inner.list_sessions(project_key)

    async def list_session_summaries(self, project_key: str) -> list[SessionSummaryEntry]:
        """As the store lists them."""
        return await self._inner.list_session_summaries(project_key)

    async def list_subkeys(self, key: SessionListSubkeysKey) -> list[str]:
        """As the store lists them."""
        return await self._inner.list_subkeys(key)

    async def delete(self, key: SessionKey) -> None:
        """As the store deletes."""
        await self._inner.delete(key)


class PatientArtifacts:
    """An artifact store whose calls wait out an unavailable store, but a streamed read."""

    def __init__(self, inner: ArtifactStore, *, patience_s: float = STORE_PATIENCE_S) -> None:
        self._inner = inner
        self._patience_s = patience_s

    async def _patiently(self, call: Callable[[], Awaitable[T]], what: str) -> T:
        return await patiently(call, what=what, patience_s=self._patience_s)

    async def put(self, key: str, name: str, data: bytes) -> ArtifactRef:
        """Store ``data`` under ``key`` (replacing what was there: a retry is the same)."""
        return await self._patiently(lambda: self._inner.put(key, name, data), f"storing {key}")

    async def put_file(
        self, key: str, path: Path, *, on_progress: Progress | None = None
    ) -> ArtifactRef:
        """Store a file's contents under ``key``, from the start of the file on each try."""
        return await self._patiently(
            lambda: self._inner.put_file(key, path, on_progress=on_progress), f"storing {key}"
        )

    async def read_named(self, key: str) -> bytes | None:
        """The object stored under ``key``, or None."""
        return await self._patiently(lambda: self._inner.read_named(key), f"reading {key}")

    async def exists(self, key: str) -> bool:
        """Whether an object is stored under ``key``."""
        return await self._patiently(lambda: self._inner.exists(key), f"looking up {key}")

    async def names(self, *, prefix: str = "") -> list[str]:
        """The names of the objects stored that start with ``prefix``, sorted."""
        return await self._patiently(lambda: self._inner.names(prefix=prefix), "listing")

    async def delete(self, key: str) -> None:
        """Remove the object under ``key``."""
        await self._patiently(lambda: self._inner.delete(key), f"deleting {key}")

    async def get(self, ref: ArtifactRef) -> bytes:
        """An artifact's contents, verified against its recorded checksum."""
        return await self._patiently(lambda: self._inner.get(ref), f"reading {ref.key}")

    async def get_into(
        self,
        ref: ArtifactRef,
        sink: Callable[[bytes], object],
        *,
        on_progress: Progress | None = None,
    ) -> int:
        """Stream an artifact to ``sink``: once (see the module's docstring)."""
        return await self._inner.get_into(ref, sink, on_progress=on_progress)

    async def get_file(
        self, ref: ArtifactRef, path: Path, *, on_progress: Progress | None = None
    ) -> Path:
        """Stream an artifact to ``path``; a failed try leaves no file, so the next starts
        afresh."""
        return await self._patiently(
            lambda: self._inner.get_file(ref, path, on_progress=on_progress),
            f"reading {ref.key}",
        )
