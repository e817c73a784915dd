"""Leases in a KV bucket: an entry with a TTL, taken and renewed by compare-and-set.

JetStream does the consensus: a key's revision is its stream sequence, an update that
names the wrong last revision is refused atomically (``Nats-Expected-Last-Subject-
Sequence``), and the entry carries a per-message TTL (``Nats-TTL``), so a holder that
stops renewing loses it without anyone deleting it. Nothing here keeps time.

Two implementations of :class:`LeaseStore`: :class:`JetStreamLeaseStore` for the
``cc_leases`` bucket, and :class:`MemoryLeaseStore`, its in-memory twin with a
test-driven clock.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final, Protocol

import anyio
import nats.errors
import nats.js.errors
from nats.js import JetStreamContext
from nats.js.kv import KeyValue

from claudecluster.errors import EventStoreError
from claudecluster.observability.logging import get_logger

__all__ = [
    "LEASES_BUCKET",
    "JetStreamLeaseStore",
    "LeaseEntry",
    "LeaseStore",
    "MemoryLeaseStore",
]

LEASES_BUCKET: Final = "cc_leases"
_WRONG_LAST_SEQUENCE: Final = (10071, 10164)
_log = get_logger(__name__)


@dataclass(frozen=True, slots=True)
class LeaseEntry:
    """The live entry of a key: who wrote it, at which revision."""

    revision: int
    value: bytes


class LeaseStore(Protocol):
    """A bucket of leases. Every method raises ``EventStoreError`` when unreachable."""

    async def current(self, key: str) -> LeaseEntry | None:
        """The live entry of ``key``, or None if there is none (never written, expired,
        deleted)."""
        ...

    async def take(self, key: str, value: bytes, ttl_s: float, *, over: int = 0) -> int | None:
        """Write ``value`` if the key's last revision is ``over`` (0: no live entry).

        Returns the new revision, or None when the key moved on (someone else holds it).
        """
        ...

    async def renew(self, key: str, value: bytes, ttl_s: float, *, last: int) -> int | None:
        """Write ``value`` again if ``last`` is still the key's revision; None if not."""
        ...

    async def release(self, key: str, *, last: int) -> None:
        """Delete the entry if ``last`` is still its revision (a clean hand-over)."""
        ...

    async def wait_change(self, key: str, timeout_s: float) -> None:
        """Return when ``key`` changes, or after ``timeout_s``."""
        ...


class JetStreamLeaseStore:
    """:class:`LeaseStore` on a KV bucket of JetStream (created by the topology).

    The bucket's stream must allow per-message TTLs (``allow_msg_ttl``); the topology
    declares ``cc_leases`` so.
    """

    def __init__(self, js: JetStreamContext, *, bucket: str = LEASES_BUCKET, timeout: float = 5.0):
        self._js = js
        self._bucket = bucket
        self._stream = f"KV_{bucket}"
        self._timeout = timeout
        self._watchers: dict[str, KeyValue.KeyWatcher] = {}

    def _subject(self, key: str) -> str:
        return f"$KV.{self._bucket}.{key}"

    async def _last(self, key: str) -> tuple[int, bytes, bool] | None:
        """(revision, value, live) of the key's last message, or None if it has none."""
        try:
            msg = await self._js.get_last_msg(self._stream, self._subject(key))
        except nats.js.errors.NotFoundError:
            return None
        except (nats.errors.Error, TimeoutError) as exc:
            raise EventStoreError(f"cannot read the lease {key!r}: {exc!r}") from exc
        headers = msg.headers or {}
        # A delete, a purge, or the marker the server leaves when a TTL ran out.
        dead = headers.get("KV-Operation") in ("DEL", "PURGE") or "Nats-Marker-Reason" in headers
        return int(msg.seq or 0), bytes(msg.data or b""), not dead

    async def current(self, key: str) -> LeaseEntry | None:
        """See :class:`LeaseStore`."""
        last = await self._last(key)
        if last is None or not last[2]:
            return None
        return LeaseEntry(revision=last[0], value=last[1])

    async def _write(
        self, key: str, value: bytes, last: int, ttl_s: float | None, headers: dict[str, str]
    ) -> int | None:
        headers = {**headers, "Nats-Expected-Last-Subject-Sequence": str(last)}
        try:
            ack = await self._js.publish(
                self._subject(key), value, timeout=self._timeout, stream=self._stream,
                headers=headers, msg_ttl=None if ttl_s is None else max(1, math.ceil(ttl_s)),
            )  # fmt: skip
        except nats.js.errors.APIError as exc:
            if exc.err_code in _WRONG_LAST_SEQUENCE:
                return None
            raise EventStoreError(f"the lease {key!r} was refused: {exc}") from exc
        except (nats.errors.Error, TimeoutError) as exc:
            raise EventStoreError(f"cannot write the lease {key!r}: {exc!r}") from exc
        return int(ack.seq)

    async def take(self, key: str, value: bytes, ttl_s: float, *, over: int = 0) -> int | None:
        """See :class:`LeaseStore`. A dead last message (deleted, expired) counts as none."""
        last = await self._last(key)
        if last is not None and not last[2]:
            if over not in (0, last[0]):
                return None
            over = last[0]
        elif (last[0] if last is not None else 0) != over:
            return None
        return await self._write(key, value, over, ttl_s, {})

    async def renew(self, key: str, value: bytes, ttl_s: float, *, last: int) -> int | None:
        """See :class:`LeaseStore`."""
        return await self._write(key, value, last, ttl_s, {})

    async def release(self, key: str, *, last: int) -> None:
        """See :class:`LeaseStore`; a lost release is only logged (the TTL ends it)."""
        try:
            await self._write(key, b"", last, None, {"KV-Operation": "DEL"})
        except EventStoreError as exc:
            _log.warning("the lease was not released; it expires by itself", error=str(exc))

    async def wait_change(self, key: str, timeout_s: float) -> None:
        """See :class:`LeaseStore`: a KV watch on the key, opened once and kept."""
        with anyio.move_on_after(timeout_s):
            try:
                watcher = self._watchers.get(key)
                if watcher is None:
                    kv = await self._js.key_value(self._bucket)
                    watcher = await kv.watch(key, include_history=False)
                    self._watchers[key] = watcher
                await watcher.updates(timeout=timeout_s)  # type: ignore[no-untyped-call]
            except TimeoutError:
                return  # nothing changed: time to look again
            except nats.errors.Error as exc:
                # Cannot watch (the server is away): wait out the poll, watch again after.
                _log.debug("cannot watch the lease; polling", key=key, error=str(exc))
                self._watchers.pop(key, None)
                await anyio.sleep(timeout_s)

    async def close(self) -> None:
        """Stop the watches."""
        for watcher in self._watchers.values():
            with anyio.move_on_after(2):
                await watcher.stop()  # type: ignore[no-untyped-call]
        self._watchers.clear()


@dataclass(slots=True)
class _MemoryEntry:
    revision: int
    value: bytes
    expires_at: float


class MemoryLeaseStore:
    """The in-memory twin of :class:`JetStreamLeaseStore`, on a clock the test moves.

    Args:
        clock: the time TTLs are measured on (seconds, monotonic).
    """

    def __init__(self, clock: Callable[[], float]) -> None:
        self._clock = clock
        self._entries: dict[str, _MemoryEntry] = {}
        self._revision = 0
        self._changed = anyio.Event()
        #: raise EventStoreError from every call while True (a partition)
        self.unreachable = False

    def _live(self, key: str) -> _MemoryEntry | None:
        entry = self._entries.get(key)
        if entry is not None and self._clock() >= entry.expires_at:
            return None
        return entry

    def _check(self) -> None:
        if self.unreachable:
            raise EventStoreError("the lease bucket is unreachable (memory twin)")

    def _put(self, key: str, value: bytes, ttl_s: float) -> int:
        self._revision += 1
        self._entries[key] = _MemoryEntry(self._revision, value, self._clock() + ttl_s)
        self._changed.set()
        self._changed = anyio.Event()
        return self._revision

    async def current(self, key: str) -> LeaseEntry | None:
        """See :class:`LeaseStore`."""
        self._check()
        entry = self._live(key)
        return None if entry is None else LeaseEntry(entry.revision, entry.value)

    async def take(self, key: str, value: bytes, ttl_s: float, *, over: int = 0) -> int | None:
        """See :class:`LeaseStore`."""
        self._check()
        entry = self._live(key)
        if (entry.revision if entry is not None else 0) != over:
            return None
        return self._put(key, value, ttl_s)

    async def renew(self, key: str, value: bytes, ttl_s: float, *, last: int) -> int | None:
        """See :class:`LeaseStore`."""
        self._check()
        entry = self._live(key)
        if entry is None or entry.revision != last:
            return None
        return self._put(key, value, ttl_s)

    async def release(self, key: str, *, last: int) -> None:
        """See :class:`LeaseStore`."""
        entry = self._live(key)
        if not self.unreachable and entry is not None and entry.revision == last:
            del self._entries[key]
            self._changed.set()
            self._changed = anyio.Event()

    async def wait_change(self, key: str, timeout_s: float) -> None:
        """See :class:`LeaseStore`."""
        with anyio.move_on_after(timeout_s):
            await self._changed.wait()
