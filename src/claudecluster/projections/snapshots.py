"""Snapshots of the cluster view: the state at a stream sequence, so a reader starts there.

A reader that starts from sequence 1 pays for the whole history every time (the CLI's
``status``, each front door). A snapshot records a view with the sequence it covers; a
reader takes the newest usable one and applies the tail of the log after it. The view is
derived data: a snapshot is trusted only if it was written by code that folds events the
same way, so it carries a version, a fingerprint of the view's layout and of every event
type's schema version. A snapshot of another version (or one that does not decode) is
ignored and the view rebuilt from the log, never trusted.

Pure: bytes in, views out. Where snapshots are kept is :mod:`claudecluster.transport.snapshots`.
"""

from __future__ import annotations

import functools
import hashlib
from typing import Final

import msgspec
from immutables import Map

from claudecluster.domain.lifecycle import OPEN_RUN_STATES
from claudecluster.events.codec import EVENT_TYPES
from claudecluster.projections.cluster import ClusterView, _Snapshot
from claudecluster.projections.progress import run_progress
from claudecluster.projections.views import RunView, task_key

__all__ = [
    "RUNS_SNAPSHOT",
    "VIEW_SNAPSHOT",
    "RunRow",
    "RunsSnapshot",
    "ViewSnapshot",
    "decode_row",
    "decode_runs_snapshot",
    "decode_view_snapshot",
    "encode_runs_snapshot",
    "encode_view_snapshot",
    "split_finished",
    "view_from_msgpack",
    "view_to_msgpack",
    "view_version",
]

#: The snapshot's name in the store.
VIEW_SNAPSHOT: Final = "cluster_view"
#: The compact snapshot of every run (``status``'s list): see :func:`encode_runs_snapshot`.
RUNS_SNAPSHOT: Final = "cluster_runs"
#: Bumped by hand when the fold changes meaning without changing the view's layout.
_FOLD_REVISION: Final = 1
_ENCODER: Final = msgspec.msgpack.Encoder()


class _Record(msgspec.Struct, frozen=True, kw_only=True):
    version: str
    seq: int
    #: the envelope id of the event at ``seq``: a reader checks the log still has it there
    #: (a log recreated under the same name must not inherit an old snapshot)
    last_id: str
    state: bytes


class ViewSnapshot(msgspec.Struct, frozen=True, kw_only=True):
    """A usable snapshot: the view, and the id of the event it ends with."""

    view: ClusterView
    last_id: str


@functools.cache
def view_version() -> str:
    """The version a view snapshot must carry to be used by this code.

    The fold's revision, a digest of the view's layout (its JSON Schema) and of every
    event type with its schema version: any change to what a view holds, or to what the
    events it folds say, makes older snapshots unusable.
    """
    layout = msgspec.json.encode(msgspec.json.schema(_Snapshot))
    events = ",".join(
        f"{tag}:{getattr(cls, 'schema_version', 1)}" for tag, cls in sorted(EVENT_TYPES.items())
    )
    digest = hashlib.sha256(layout + b"|" + events.encode()).hexdigest()[:16]
    return f"view-{_FOLD_REVISION}-{digest}"


def view_from_msgpack(data: bytes) -> ClusterView:
    """A view from :func:`view_to_msgpack` (or the msgpack of
    :func:`~claudecluster.projections.cluster.to_snapshot`, which has the same layout).

    Decoded straight into the view's stored layout in one pass: about ten times faster
    than decoding to builtins and converting them, which is most of a restart's cost.

    Raises:
        msgspec.DecodeError: the bytes are not msgpack.
        msgspec.ValidationError: they are not a view of this layout.
    """
    snapshot = msgspec.msgpack.decode(data, type=_Snapshot)
    return ClusterView(
        last_seq=snapshot.last_seq,
        runs=Map(snapshot.runs),
        tasks=Map(snapshot.tasks),
        workers=Map(snapshot.workers),
        costs=Map(snapshot.costs),
        anomaly_count=snapshot.anomaly_count,
        recent_anomalies=snapshot.recent_anomalies,
    )


def view_to_msgpack(view: ClusterView) -> bytes:
    """The view in the layout :func:`view_from_msgpack` reads, encoded in one pass.

    The entities are encoded as the structs they are, not first copied into builtins and
    sorted (:func:`~claudecluster.projections.cluster.to_snapshot`, for golden files):
    at a million events that copy was 3.4 s of every snapshot, paid between decisions.
    """
    return _ENCODER.encode(
        _Snapshot(
            last_seq=view.last_seq,
            runs=dict(view.runs.items()),
            tasks=dict(view.tasks.items()),
            workers=dict(view.workers.items()),
            costs=dict(view.costs.items()),
            anomaly_count=view.anomaly_count,
            recent_anomalies=view.recent_anomalies,
        )
    )


def encode_view_snapshot(view: ClusterView, last_id: str) -> bytes:
    """A snapshot of ``view``, covering the log up to ``view.last_seq`` (msgpack).

    Args:
        view: the view.
        last_id: the envelope id of the event at ``view.last_seq``.
    """
    state = view_to_msgpack(view)
    record = _Record(version=view_version(), seq=view.last_seq, last_id=last_id, state=state)
    return msgspec.msgpack.encode(record)


def decode_view_snapshot(data: bytes) -> tuple[ViewSnapshot | None, str]:
    """The view a snapshot holds, or None and why it cannot be used.

    Never raises for bad data: a snapshot that does not decode, or was written by another
    version, is a reason to rebuild, not an error.
    """
    try:
        record = msgspec.msgpack.decode(data, type=_Record)
    except msgspec.DecodeError as exc:
        return None, f"the snapshot does not decode: {exc}"
    view, why = _checked_view(record.version, view_version(), record.seq, record.state)
    if view is None:
        return None, why
    return ViewSnapshot(view=view, last_id=record.last_id), ""


def _checked_view(
    version: str, current: str, seq: int, state: bytes
) -> tuple[ClusterView | None, str]:
    """The view a snapshot record holds, once its version and the sequence it says it
    covers check out; otherwise None and why (both snapshot kinds check the same way)."""
    if version != current:
        return None, f"the snapshot is of version {version}, this code reads {current}"
    try:
        view = view_from_msgpack(state)
    except msgspec.DecodeError as exc:  # ValidationError included
        return None, f"the snapshot's view does not decode: {exc}"
    if view.last_seq != seq:
        return None, f"the snapshot says it covers {seq} but its view is at {view.last_seq}"
    return view, ""


# ----------------------------------------------------------------------------------------
# The runs index: every run in a line, finished ones without their tasks
# ----------------------------------------------------------------------------------------


class RunRow(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """One finished run as the list of runs shows it: the run, and its progress summed
    up (none of it changes once the run has ended, unless an event of the run comes)."""

    run: RunView
    total: int
    finished: int
    elapsed_s: float
    cost_usd: float


class _RunsRecord(msgspec.Struct, frozen=True, kw_only=True):
    version: str
    seq: int
    last_id: str
    #: the view without the finished runs (their runs, tasks and costs), as view_to_msgpack
    open: bytes
    #: the finished runs' ids, in the order of ``rows``
    run_ids: list[str]
    #: the finished runs, oldest submission first
    rows: list[RunRow]


class _RunsIndex(msgspec.Struct, frozen=True, kw_only=True):
    """:class:`_RunsRecord` as a reader decodes it: the rows left encoded until asked for
    (a months-old cluster has tens of thousands, and a listing shows the newest few)."""

    version: str
    seq: int
    last_id: str
    open: bytes
    run_ids: list[str]
    rows: list[msgspec.Raw]


class RunsSnapshot(msgspec.Struct, frozen=True, kw_only=True):
    """A usable runs index: the open part of the view, the finished runs' rows (still
    encoded: :func:`decode_row` reads one; oldest submission first), and the id of the
    event it ends with."""

    open: ClusterView
    rows: dict[str, msgspec.Raw]
    last_id: str


def decode_row(raw: msgspec.Raw) -> RunRow:
    """One row of a :class:`RunsSnapshot` (checked with the index's version already)."""
    return msgspec.msgpack.decode(raw, type=RunRow)


@functools.cache
def runs_version() -> str:
    """The version a runs index must carry: the view's and the row's layout."""
    layout = msgspec.json.encode(msgspec.json.schema(_RunsRecord))
    return f"runs-{view_version()}-{hashlib.sha256(layout).hexdigest()[:16]}"


def split_finished(view: ClusterView) -> tuple[ClusterView, dict[str, RunRow]]:
    """The view without its finished runs, and a row for each of them.

    A run counts as finished once it ended with an end time (its elapsed time no longer
    grows); the rest stays in the view as it is.
    """
    rows: dict[str, RunRow] = {}
    for run in view.runs.values():
        if run.state in OPEN_RUN_STATES or run.finished_at is None:
            continue
        progress = run_progress(view, run.run_id, run.finished_at)
        assert progress is not None
        rows[run.run_id] = RunRow(
            run=run,
            total=progress.total,
            finished=progress.finished,
            elapsed_s=progress.elapsed_s,
            cost_usd=progress.cost_usd,
        )
    if not rows:
        return view, rows
    runs, tasks, costs = view.runs.mutate(), view.tasks.mutate(), view.costs.mutate()
    for run_id, row in rows.items():
        del runs[run_id]
        costs.pop(run_id, None)
        for task_id in row.run.task_ids:
            tasks.pop(task_key(run_id, task_id), None)
    opened = msgspec.structs.replace(
        view, runs=runs.finish(), tasks=tasks.finish(), costs=costs.finish()
    )
    return opened, rows


def encode_runs_snapshot(view: ClusterView, last_id: str) -> bytes:
    """A compact snapshot of ``view`` for the list of every run (msgpack): the finished
    runs as rows, without their tasks, which a long-lived cluster has by the hundred
    thousand and the list does not show.

    Args:
        view: the view.
        last_id: the envelope id of the event at ``view.last_seq``.
    """
    opened, rows = split_finished(view)
    ordered = sorted(rows.values(), key=lambda row: (row.run.submitted_at, row.run.run_id))
    record = _RunsRecord(
        version=runs_version(),
        seq=view.last_seq,
        last_id=last_id,
        open=view_to_msgpack(opened),
        run_ids=[row.run.run_id for row in ordered],
        rows=ordered,
    )
    return _ENCODER.encode(record)


def decode_runs_snapshot(data: bytes) -> tuple[RunsSnapshot | None, str]:
    """The runs index a snapshot holds, or None and why it cannot be used (never raises
    for bad data: it is a reason to rebuild)."""
    try:
        record = msgspec.msgpack.decode(data, type=_RunsIndex)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        return None, f"the snapshot does not decode: {exc}"
    opened, why = _checked_view(record.version, runs_version(), record.seq, record.open)
    if opened is None:
        return None, why
    if len(record.run_ids) != len(record.rows):
        return None, "the snapshot's run ids and rows differ in number"
    rows = dict(zip(record.run_ids, record.rows, strict=True))
    return RunsSnapshot(open=opened, rows=rows, last_id=record.last_id), ""
