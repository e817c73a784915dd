"""Keeping the log bounded: finished runs archived, then removed from the live stream.

A run's events are all on ``cc.evt.<run>.>`` (its own and its tasks'), so a finished run
can leave ``CC_EVENTS`` whole and alone. :func:`archive_run` does it in an order that can
lose nothing:

1. read the run's events from the live stream (the server filters them);
2. write them, as gzipped JSON Lines of stored events (sequence, subject, envelope: the
   format of recorded logs), to the artifacts object store as
   ``_archive/runs/<run>.jsonl.gz``;
3. read the archive back and check it holds exactly those events (sequence and id each);
4. purge the run's subjects from ``CC_EVENTS`` up to the last archived sequence (``purge``
   with a subject filter and a sequence, which the stream allows since it stopped denying
   purges; single messages still cannot be deleted), so an event of the run appended
   meanwhile stays live, and check none of the archived ones is left.

A failure before step 4 leaves the run in the live stream (and maybe an archive to be
overwritten next time); a failure during it leaves what is not purged yet in the live
stream, readable as before. Reads of one run (``status RUN``, ``logs``, ``export``,
``replay --run``) fall back to the archive when the live stream has nothing of the run
(:func:`claudecluster.runtime.reads.read_run`). What stays where is in docs/operations.md.
"""

from __future__ import annotations

import gzip
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Final

import nats.errors
from nats.js import JetStreamContext

from claudecluster.domain.lifecycle import RunState
from claudecluster.errors import EventDecodeError, EventStoreError, UnknownEntityError
from claudecluster.events.codec import decode_stored_event, encode
from claudecluster.events.envelope import StoredEvent
from claudecluster.events.subjects import run_filter
from claudecluster.observability.logging import get_logger
from claudecluster.projections.cluster import ClusterView
from claudecluster.transport.artifacts import ArtifactStore, JetStreamArtifactStore
from claudecluster.transport.base import EventLog, read_all
from claudecluster.transport.streams import EVENTS_STREAM

__all__ = [
    "ARCHIVE_PREFIX",
    "ArchivedRun",
    "archive_name",
    "archive_run",
    "read_archived_run",
    "runs_to_archive",
]

#: Where archived runs are kept in the artifacts object store. Not a run id's prefix:
#: a run's own artifacts are under ``<run>/``.
ARCHIVE_PREFIX: Final = "_archive/runs/"
_FINISHED: Final = frozenset(
    {RunState.COMPLETED, RunState.FAILED, RunState.CANCELLED, RunState.ROLLED_BACK}
)
_log = get_logger(__name__)


@dataclass(frozen=True, slots=True)
class ArchivedRun:
    """One run moved out of the live stream.

    Attributes:
        run_id: the run.
        name: the archive's name in the artifacts object store.
        events: how many events it holds.
        first_seq: the stream sequence of its first event.
        last_seq: the stream sequence of its last event.
        size: the archive's size in bytes (gzipped).
    """

    run_id: str
    name: str
    events: int
    first_seq: int
    last_seq: int
    size: int


def archive_name(run_id: str) -> str:
    """The name of ``run_id``'s archive in the artifacts object store."""
    return f"{ARCHIVE_PREFIX}{run_id}.jsonl.gz"


def runs_to_archive(view: ClusterView, *, now: datetime, older_than: timedelta) -> list[str]:
    """The runs that finished before ``now - older_than``, oldest first.

    A run still open (or one whose end has no time) is never one of them.
    """
    cutoff = now - older_than
    finished = [
        run
        for run in view.runs.values()
        if run.state in _FINISHED and run.finished_at is not None and run.finished_at <= cutoff
    ]
    return [run.run_id for run in sorted(finished, key=lambda r: (r.finished_at, r.run_id))]


def _encode(events: list[StoredEvent]) -> bytes:
    return gzip.compress(b"".join(encode(stored) + b"\n" for stored in events), mtime=0)


def _decode(name: str, data: bytes) -> list[StoredEvent]:
    try:
        text = gzip.decompress(data)
    except (OSError, EOFError) as exc:
        raise EventStoreError(f"archive {name} is not gzip: {exc}") from exc
    events = []
    for number, line in enumerate(text.splitlines(), 1):
        try:
            events.append(decode_stored_event(line))
        except EventDecodeError as exc:
            raise EventStoreError(f"archive {name}, line {number}: {exc}") from exc
    return events


async def read_archived_run(artifacts: ArtifactStore, run_id: str) -> list[StoredEvent] | None:
    """The events of an archived run, in log order, or None if it was never archived.

    Raises:
        EventStoreError: the object store failed, or the archive does not decode.
    """
    name = archive_name(run_id)
    data = await artifacts.read_named(name)
    if data is None:
        return None
    return _decode(name, data)


async def archive_run(
    log: EventLog, js: JetStreamContext, run_id: str, *, stream: str = EVENTS_STREAM
) -> ArchivedRun:
    """Archive ``run_id``'s events, check the archive, then purge them from ``stream``.

    Raises:
        UnknownEntityError: the live stream has no event of the run.
        EventStoreError: the archive could not be written or did not read back whole (the
            run is then still in the live stream), or the purge was refused or left
            events behind (what is left is still readable there).
    """
    events = await read_all(log, subjects=run_filter(run_id))
    if not events:
        raise UnknownEntityError("run", run_id)
    artifacts = JetStreamArtifactStore(js)
    name = archive_name(run_id)
    data = _encode(events)
    await artifacts.put(name, name, data)
    back = await read_archived_run(artifacts, run_id)
    expected = [(e.seq, e.envelope.id) for e in events]
    if back is None or [(e.seq, e.envelope.id) for e in back] != expected:
        raise EventStoreError(f"archive {name} did not read back whole; the run stays live")
    try:
        # Up to, not including, seq: an event of the run recorded after the read stays.
        await js.purge_stream(stream, subject=run_filter(run_id), seq=events[-1].seq + 1)
    except nats.errors.Error as exc:
        detail = getattr(exc, "description", None) or repr(exc)
        raise EventStoreError(
            f"run {run_id} archived as {name}, but {stream} refused to purge it: {detail}"
        ) from exc
    left = [e for e in await read_all(log, subjects=run_filter(run_id)) if e.seq <= events[-1].seq]
    if left:
        raise EventStoreError(f"run {run_id}: {len(left)} events left in {stream} after the purge")
    _log.info("run archived", run=run_id, events=len(events), archive=name, size=len(data))
    return ArchivedRun(
        run_id=run_id, name=name, events=len(events), first_seq=events[0].seq,
        last_seq=events[-1].seq, size=len(data),
    )  # fmt: skip
