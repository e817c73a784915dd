"""Reads that do not grow with history: one run's subjects, or a snapshot and the tail.

One run: the server filters the log to the run's subjects.

A run's events are all on ``cc.evt.<run>.>`` (its own and its tasks'), and the projections
of runs, tasks and costs need nothing else, so ``status RUN``, ``logs RUN/TASK``,
``export RUN`` and ``replay --run`` ask for that filter and cost what the run wrote, not
what the whole log holds (which, a cluster's lifetime on, is mostly other runs).

Every run: :func:`view_from_snapshot` starts from the newest usable snapshot of the cluster
view (``cc_snapshots``, written by the front doors) and applies the events after it.
:func:`runs_from_snapshot`, for the list of every run, starts from the compact index the
front doors write beside it (finished runs as one row each, without their tasks), applies
the tail to the open runs, and reads again, by its own subjects, any finished run the
tail names.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import anyio
import msgspec

from claudecluster.errors import ClusterError, InvalidIdError
from claudecluster.events.envelope import StoredEvent
from claudecluster.events.model import RunEvent, RunSubmitted
from claudecluster.events.subjects import run_filter
from claudecluster.observability.logging import get_logger
from claudecluster.projections.cluster import ClusterView, apply, replay
from claudecluster.projections.snapshots import (
    RUNS_SNAPSHOT,
    VIEW_SNAPSHOT,
    RunRow,
    decode_row,
    decode_runs_snapshot,
    decode_view_snapshot,
    encode_runs_snapshot,
    encode_view_snapshot,
)
from claudecluster.transport.artifacts import ArtifactStore
from claudecluster.transport.base import EventLog, read_all
from claudecluster.transport.snapshots import SnapshotStore

__all__ = [
    "RunsListing",
    "keep_snapshotting",
    "open_view_from_snapshot",
    "read_run",
    "run_of_ref",
    "runs_from_snapshot",
    "view_from_snapshot",
    "write_view_snapshot",
]

_log = get_logger(__name__)


async def read_run(
    log: EventLog,
    run_id: str,
    *,
    until_seq: int | None = None,
    archive: ArtifactStore | None = None,
) -> list[StoredEvent]:
    """Every stored event of run ``run_id`` (up to stream sequence ``until_seq``).

    With ``archive``, a run moved out of the live stream (runtime/archive.py) is read
    from its archive, with any event of it recorded live since.

    Raises:
        InvalidIdError: ``run_id`` cannot be a run id (so no run has it).
        EventStoreError: the log or the archive could not be read.
    """
    stored = await read_all(log, subjects=run_filter(run_id))
    # A live run starts with its submission; only a run without it can be in the archive.
    if archive is not None and (
        not stored or not isinstance(stored[0].envelope.payload, RunSubmitted)
    ):
        from claudecluster.runtime.archive import read_archived_run  # a cycle otherwise

        archived = await read_archived_run(archive, run_id)
        if archived:
            first_live = stored[0].seq if stored else archived[-1].seq + 1
            stored = [e for e in archived if e.seq < first_live] + stored
    if until_seq is not None:
        stored = [event for event in stored if event.seq <= until_seq]
    return stored


async def run_of_ref(
    log: EventLog, ref: str, *, archive: ArtifactStore | None = None
) -> tuple[str, ClusterView, list[StoredEvent]] | None:
    """The run a reference names on its own (``RUN`` or ``RUN/TASK``), its view and events.

    None when the reference does not name a run the log (or, given, the archive) knows: a
    bare task id, whose run only the view of every run can tell, or nothing at all.

    Raises:
        EventStoreError: the log could not be read.
    """
    run_id = ref.partition("/")[0]
    try:
        stored = await read_run(log, run_id, archive=archive)
    except InvalidIdError:
        return None
    view = replay(stored)
    if run_id not in view.runs:
        return None
    return run_id, view, stored


async def _snapshot_view(store: SnapshotStore) -> tuple[ClusterView, str]:
    """The newest usable snapshot's view and last event id (an empty view if none)."""
    try:
        data = await store.get(VIEW_SNAPSHOT)
    except ClusterError as exc:
        _log.warning("snapshot not read; reading the whole log", error=str(exc))
        return ClusterView(), ""
    if data is None:
        return ClusterView(), ""
    snapshot, why = decode_view_snapshot(data)
    if snapshot is None:
        _log.info("snapshot ignored; reading the whole log", reason=why)
        return ClusterView(), ""
    return snapshot.view, snapshot.last_id


@asynccontextmanager
async def open_view_from_snapshot(
    log: EventLog, store: SnapshotStore, *, follow: bool = False
) -> AsyncIterator[tuple[ClusterView, AsyncIterator[StoredEvent]]]:
    """The view of the newest usable snapshot, and the log's events after it.

    The first event read back must be the snapshot's last one (same sequence, same
    envelope id); if the log says otherwise (it was recreated, or trimmed past it) the
    snapshot is dropped and the events come from the start. With ``follow`` the events go
    on as they are appended.

    Raises:
        EventStoreError: the log could not be read.
    """
    view, last_id = await _snapshot_view(store)
    if view.last_seq:
        # The check reads without following: a following reader of a log recreated since
        # the snapshot, and shorter than it, would wait for the snapshot's sequence to be
        # written again, and its reader (a front door opening) would never be ready.
        async with log.open_reader(from_seq=view.last_seq) as checked:
            first = await anext(aiter(checked), None)
        if first is not None and first.seq == view.last_seq and first.envelope.id == last_id:
            async with log.open_reader(from_seq=view.last_seq + 1, follow=follow) as events:
                yield view, events
                return
        _log.info("snapshot does not match the log; reading the whole log", seq=view.last_seq)
    async with log.open_reader(follow=follow) as events:
        yield ClusterView(), events


async def view_from_snapshot(log: EventLog, store: SnapshotStore) -> ClusterView:
    """The cluster view now: the newest usable snapshot plus the tail (see above).

    Raises:
        EventStoreError: the log could not be read.
    """
    async with open_view_from_snapshot(log, store) as (view, events):
        async for stored in events:
            view = apply(view, stored)
    return view


class RunsListing(msgspec.Struct, frozen=True, kw_only=True):
    """Every run, as the list of runs shows them.

    Attributes:
        view: the open runs with their tasks (and any finished run the tail reopened).
        rows: finished runs as rows, oldest submission first: every one, or the newest
            ``newest`` of them.
        older: finished runs left out for ``newest``, older than every row.
    """

    view: ClusterView
    rows: dict[str, RunRow]
    older: int = 0


async def runs_from_snapshot(
    log: EventLog,
    store: SnapshotStore,
    *,
    archive: ArtifactStore | None = None,
    newest: int | None = None,
) -> RunsListing:
    """Every run now: the open runs in a view, the finished ones as rows.

    From the newest usable runs index plus the tail; a finished run an event of the tail
    names (a retry, a late result) is read again by its own subjects and joins the view.
    Without a usable index, the whole view (:func:`view_from_snapshot`) and no rows.
    With ``newest``, only that many finished runs are decoded and listed (the index keeps
    them in order of submission): what a listing costs then does not grow with the runs
    a cluster has finished over its life.

    Raises:
        EventStoreError: the log could not be read.
    """
    try:
        data = await store.get(RUNS_SNAPSHOT)
    except ClusterError as exc:
        _log.warning("runs snapshot not read; reading the view", error=str(exc))
        data = None
    snapshot, why = decode_runs_snapshot(data) if data is not None else (None, "none")
    if snapshot is None:
        _log.info("runs snapshot not used; reading the view", reason=why)
        return RunsListing(view=await view_from_snapshot(log, store), rows={})
    view, encoded = snapshot.open, dict(snapshot.rows)
    reread: set[str] = set()
    matches = False
    async with log.open_reader(from_seq=view.last_seq) as events:
        first = await anext(aiter(events), None)
        matches = first is not None and (first.seq, first.envelope.id) == (
            view.last_seq,
            snapshot.last_id,
        )
        async for stored in events if matches else _nothing():
            event = stored.envelope.payload
            if isinstance(event, RunEvent) and (event.run_id in encoded or event.run_id in reread):
                reread.add(event.run_id)
                encoded.pop(event.run_id, None)
                continue
            view = apply(view, stored)
    if not matches:
        _log.info("runs snapshot does not match the log; reading the view")
        return RunsListing(view=await view_from_snapshot(log, store), rows={})
    for run_id in sorted(reread):
        events_of_run = await read_run(log, run_id, until_seq=view.last_seq, archive=archive)
        of_run = replay(events_of_run)
        view = msgspec.structs.replace(
            view,
            runs=view.runs.update(of_run.runs),
            tasks=view.tasks.update(of_run.tasks),
            costs=view.costs.update(of_run.costs),
        )
    kept = list(encoded.items())
    older = 0 if newest is None else max(len(kept) - max(newest, 0), 0)
    rows = {run_id: decode_row(raw) for run_id, raw in kept[older:]}
    return RunsListing(view=view, rows=rows, older=older)


async def _nothing() -> AsyncIterator[StoredEvent]:
    return
    yield  # an async generator that yields nothing


async def write_view_snapshot(store: SnapshotStore, view: ClusterView, last_id: str) -> None:
    """Write a snapshot of ``view``, and the compact index of its runs beside it, encoding
    them off the event loop's thread.

    The view is immutable, so another thread may encode it while the loop goes on
    applying events to the next one. The index is written after the view: a reader of
    either finds one that matches the log.

    Raises:
        EventStoreError: the store could not be written.
    """
    data = await anyio.to_thread.run_sync(encode_view_snapshot, view, last_id)
    await store.put(VIEW_SNAPSHOT, data)
    index = await anyio.to_thread.run_sync(encode_runs_snapshot, view, last_id)
    await store.put(RUNS_SNAPSHOT, index)


async def keep_snapshotting(
    current: Callable[[], tuple[ClusterView, str]],
    store: SnapshotStore,
    *,
    every_s: float,
    min_events: int,
    wait: Callable[[float], Awaitable[None]] = anyio.sleep,
) -> None:
    """Every ``every_s``, snapshot ``current()`` if ``min_events`` were applied since the
    last snapshot written here; until cancelled. A failed write is logged and tried again
    next time (a snapshot only shortens starts).
    """
    written = 0
    while True:
        await wait(every_s)
        view, last_id = current()
        if not last_id or view.last_seq - written < min_events:
            continue
        try:
            await write_view_snapshot(store, view, last_id)
        except ClusterError as exc:
            _log.warning("snapshot not written; trying again later", error=str(exc))
            continue
        written = view.last_seq
