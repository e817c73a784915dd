"""The live worker registry: one KV entry per worker, refreshed every heartbeat, expiring.

Workers :meth:`~WorkerRegistry.put` their :class:`WorkerLiveness` every ``heartbeat_s``;
the bucket's TTL (``cc_workers``, 30 s, one revision per key) removes an entry whose
worker stopped refreshing it. The driver :meth:`~WorkerRegistry.watch`\\es the bucket to
know who is alive (it still records ``worker.lost`` in the log when one goes silent);
``workers list`` and the front doors read :meth:`~WorkerRegistry.current` to show load.

Two implementations pass the same contract tests (tests/transport/test_liveness.py):
:class:`JetStreamWorkerRegistry` and :class:`MemoryWorkerRegistry`.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import asynccontextmanager
from typing import Final, Protocol

import anyio
import nats.errors
import nats.js.errors
from anyio.streams.memory import MemoryObjectSendStream
from nats.js import JetStreamContext
from nats.js.kv import KV_DEL, KV_PURGE, KeyValue

from claudecluster.errors import EventDecodeError, EventStoreError
from claudecluster.events.liveness import WorkerLiveness, decode_liveness, encode_liveness
from claudecluster.observability.logging import get_logger

__all__ = [
    "REGISTRY_BUCKET",
    "JetStreamWorkerRegistry",
    "MemoryWorkerRegistry",
    "WorkerRegistry",
]

REGISTRY_BUCKET: Final = "cc_workers"
_WATCH_RETRY_S: Final = 1.0
#: A watch that has seen nothing for this long is made again. Every live worker writes its
#: entry every 5 s, so a silent watch is either a pool with no worker (and making it again
#: costs one request) or one the server stopped feeding: seen after a partition healed, a
#: watch made while the driver's server had no quorum stayed silent for good, the driver
#: took every worker for lost and requeued each attempt the moment it was assigned.
WATCH_QUIET_S: Final = 15.0
_log = get_logger(__name__)


class WorkerRegistry(Protocol):
    """Who is alive now (not history: entries expire, nothing is kept)."""

    async def put(self, record: WorkerLiveness) -> None:
        """Say ``record.worker_id`` is alive (replaces its previous entry).

        Raises:
            EventStoreError: the registry could not be written in time.
        """
        ...

    async def delete(self, worker_id: str) -> None:
        """Remove a worker's entry (it left).

        Raises:
            EventStoreError: the registry could not be written in time.
        """
        ...

    async def current(self) -> dict[str, WorkerLiveness]:
        """Every live entry, by worker id (undecodable entries are skipped, logged).

        Raises:
            EventStoreError: the registry could not be read in time.
        """
        ...

    def watch(self) -> AsyncGenerator[WorkerLiveness, None]:
        """Every entry now in the registry, then each new one as it is written, forever.

        Deletes are not reported: a worker that stops refreshing is found out by time, by
        whoever watches (the driver's liveness timer), not by the entry going away.
        """
        ...


class MemoryWorkerRegistry:
    """The in-memory twin: a dict and the watchers' streams (no expiry: tests drive time)."""

    def __init__(self) -> None:
        self._entries: dict[str, WorkerLiveness] = {}
        self._watchers: list[MemoryObjectSendStream[WorkerLiveness]] = []

    async def put(self, record: WorkerLiveness) -> None:
        """See :meth:`WorkerRegistry.put`."""
        self._entries[record.worker_id] = record
        for watcher in list(self._watchers):
            try:
                watcher.send_nowait(record)
            except anyio.BrokenResourceError:
                self._watchers.remove(watcher)

    async def delete(self, worker_id: str) -> None:
        """See :meth:`WorkerRegistry.delete`."""
        self._entries.pop(worker_id, None)

    async def current(self) -> dict[str, WorkerLiveness]:
        """See :meth:`WorkerRegistry.current`."""
        return dict(self._entries)

    async def watch(self) -> AsyncGenerator[WorkerLiveness, None]:
        """See :meth:`WorkerRegistry.watch`."""
        send, receive = anyio.create_memory_object_stream[WorkerLiveness](float("inf"))
        for record in list(self._entries.values()):
            send.send_nowait(record)
        self._watchers.append(send)
        try:
            async with receive:
                async for record in receive:
                    yield record
        finally:
            if send in self._watchers:
                self._watchers.remove(send)
            send.close()


class JetStreamWorkerRegistry:
    """The registry in the JetStream KV bucket ``cc_workers``.

    Args:
        js: a JetStream context with the topology applied.
        bucket: the KV bucket.
        timeout_s: how long one read or write may take.
    """

    def __init__(
        self, js: JetStreamContext, bucket: str = REGISTRY_BUCKET, *, timeout_s: float = 5.0
    ) -> None:
        self._js = js
        self._bucket = bucket
        self._timeout_s = timeout_s
        self._kv: KeyValue | None = None

    async def _store(self) -> KeyValue:
        if self._kv is None:
            self._kv = await self._js.key_value(self._bucket)
        return self._kv

    async def put(self, record: WorkerLiveness) -> None:
        """See :meth:`WorkerRegistry.put`."""
        try:
            with anyio.fail_after(self._timeout_s):
                await (await self._store()).put(record.worker_id, encode_liveness(record))
        except (nats.errors.Error, TimeoutError) as exc:
            raise EventStoreError(f"worker registry {self._bucket}: put failed: {exc!r}") from exc

    async def delete(self, worker_id: str) -> None:
        """See :meth:`WorkerRegistry.delete`."""
        try:
            with anyio.fail_after(self._timeout_s):
                await (await self._store()).delete(worker_id)
        except (nats.errors.Error, TimeoutError) as exc:
            raise EventStoreError(
                f"worker registry {self._bucket}: delete failed: {exc!r}"
            ) from exc

    async def current(self) -> dict[str, WorkerLiveness]:
        """See :meth:`WorkerRegistry.current`."""
        entries: dict[str, WorkerLiveness] = {}
        try:
            with anyio.fail_after(self._timeout_s):
                async with self._watching() as updates:
                    async for entry in updates:
                        if entry is None:  # the initial values are all in
                            break
                        record = self._decoded(entry)
                        if record is not None:
                            entries[record.worker_id] = record
        except (nats.errors.Error, TimeoutError) as exc:
            raise EventStoreError(f"worker registry {self._bucket}: read failed: {exc!r}") from exc
        return entries

    async def watch(self) -> AsyncGenerator[WorkerLiveness, None]:
        """See :meth:`WorkerRegistry.watch`; survives a failing server by watching again."""
        while True:
            try:
                async with self._watching() as updates:
                    entries = aiter(updates)
                    while True:
                        try:
                            with anyio.move_on_after(WATCH_QUIET_S) as quiet:
                                entry = await anext(entries)
                        except StopAsyncIteration:
                            break  # the watcher ended: watch again
                        if quiet.cancelled_caught:
                            _log.info("worker registry quiet; watching again",
                                      quiet_s=WATCH_QUIET_S)  # fmt: skip
                            break
                        if entry is None:
                            continue
                        record = self._decoded(entry)
                        if record is not None:
                            yield record
            except (nats.errors.Error, TimeoutError) as exc:
                _log.warning("worker registry watch failed; watching again", error=repr(exc))
                self._kv = None
                await anyio.sleep(_WATCH_RETRY_S)

    @asynccontextmanager
    async def _watching(self) -> AsyncIterator[AsyncIterator[KeyValue.Entry | None]]:
        watcher = await (await self._store()).watchall(ignore_deletes=True)
        try:
            # The watcher yields the entries there are, None once they are all in, then
            # each new entry as it is written.
            yield watcher
        finally:
            with anyio.CancelScope(shield=True):
                try:
                    await watcher.stop()  # type: ignore[no-untyped-call]
                except (nats.errors.Error, nats.js.errors.Error) as exc:
                    _log.warning("worker registry watch not stopped cleanly", error=repr(exc))

    def _decoded(self, entry: KeyValue.Entry) -> WorkerLiveness | None:
        if entry.operation in (KV_DEL, KV_PURGE) or not entry.value:
            return None
        try:
            return decode_liveness(entry.value)
        except EventDecodeError as exc:
            # An entry of another layout (an older worker) or not from a worker: it says
            # nothing we can trust about liveness. Named, skipped, never fatal.
            _log.warning("worker registry entry skipped", key=entry.key, error=str(exc))
            return None
