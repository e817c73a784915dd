"""The cluster view: every projection folded together, idempotent by stream sequence.

:func:`apply` is the one fold every reader uses, live or in replay: the CLI's status, the
gateway, the MCP server, the driver's recovery, the simulations. It skips an event whose
stream sequence it has already applied, so at-least-once delivery (a redelivery, a resumed
subscription that overlaps) never counts anything twice.

A view can be snapshotted to plain JSON-compatible data and restored; a restored view
continues exactly as the original would have (property-tested).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Final

import msgspec
from immutables import Map

from claudecluster.errors import AmbiguousTaskError, UnknownEntityError
from claudecluster.events.envelope import StoredEvent
from claudecluster.events.model import TaskEvent
from claudecluster.projections.costs import COSTS_READS, Costs, apply_costs
from claudecluster.projections.runs import RUNS_READS, Runs, apply_runs
from claudecluster.projections.tasks import NOT_THE_HOLDER, TASKS_READS, Tasks, apply_tasks
from claudecluster.projections.views import (
    Anomaly,
    CostView,
    RunView,
    TaskView,
    WorkerView,
    task_key,
)
from claudecluster.projections.workers import WORKERS_READS, Workers, apply_workers

__all__ = [
    "RECENT_ANOMALIES",
    "ClusterView",
    "apply",
    "find_task",
    "from_snapshot",
    "replay",
    "to_snapshot",
]

#: How many of the latest anomalies a view keeps in full (the count covers all of them).
RECENT_ANOMALIES: Final = 50


class ClusterView(msgspec.Struct, frozen=True, kw_only=True):
    """All projections at one point of the log.

    A frozen msgspec Struct rather than a dataclass: a replay makes one per event, and a
    Struct is built about ten times faster than a frozen dataclass, whose ``__init__``
    goes through ``object.__setattr__`` for every field.

    Attributes:
        last_seq: the stream sequence of the last event applied (0 before any).
        runs: run id -> run.
        tasks: ``run_id/task_id`` -> task.
        workers: worker id -> worker.
        costs: run id -> spend.
        anomaly_count: events that did not fit their entity's history, all time.
        recent_anomalies: the latest :data:`RECENT_ANOMALIES` of them, oldest first.
    """

    last_seq: int = 0
    runs: Runs = msgspec.field(default_factory=Map)
    tasks: Tasks = msgspec.field(default_factory=Map)
    workers: Workers = msgspec.field(default_factory=Map)
    costs: Costs = msgspec.field(default_factory=Map)
    anomaly_count: int = 0
    recent_anomalies: tuple[Anomaly, ...] = ()

    def tasks_of(self, run_id: str) -> list[TaskView]:
        """The run's tasks in plan order (empty for an unknown run)."""
        run = self.runs.get(run_id)
        if run is None:
            return []
        return [self.tasks[task_key(run_id, task_id)] for task_id in run.task_ids]


def find_task(view: ClusterView, ref: str) -> TaskView:
    """A task by ``run/task``, or by a task id that only one run has.

    Every front door (CLI, gateway, MCP server) resolves a task reference this way, so a
    reference that works in one works in all.

    Raises:
        UnknownEntityError: no such task.
        AmbiguousTaskError: several runs have a task of that id; the message names them.
    """
    if "/" in ref:
        task = view.tasks.get(ref)
        if task is None:
            raise UnknownEntityError("task", ref)
        return task
    matches = [t for t in view.tasks.values() if t.task_id == ref]
    if len(matches) == 1:
        return matches[0]
    if matches:
        raise AmbiguousTaskError(ref, tuple(sorted(t.run_id for t in matches)))
    raise UnknownEntityError("task", ref)


def apply(view: ClusterView, stored: StoredEvent) -> ClusterView:
    """Fold one stored event into every projection; a sequence already applied is a no-op.

    Total: an event a projection fails on is counted as an anomaly naming the error and
    changes nothing else, so no recorded event can stop a reader (the log keeps it, and
    every reader folds it again at every start).
    """
    if stored.seq <= view.last_seq:
        return view
    try:
        return _apply(view, stored)
    except Exception as exc:  # noqa: BLE001 - recorded as an anomaly with the reason
        return _anomalous(view, stored, f"cannot be applied: {type(exc).__name__}: {exc}")


def _anomalous(view: ClusterView, stored: StoredEvent, reason: str) -> ClusterView:
    anomaly = Anomaly(
        seq=stored.seq,
        event_id=stored.envelope.id,
        type=str(type(stored.envelope.payload).__struct_config__.tag),
        reason=reason,
    )
    return msgspec.structs.replace(
        view,
        last_seq=stored.seq,
        anomaly_count=view.anomaly_count + 1,
        recent_anomalies=(*view.recent_anomalies[-(RECENT_ANOMALIES - 1) :], anomaly),
    )


def _apply(view: ClusterView, stored: StoredEvent) -> ClusterView:
    envelope = stored.envelope
    # Each projection folds a few event types and leaves the rest alone; asking only the
    # ones that read this type is the same fold without most of the calls (a heartbeat
    # concerns one projection of four).
    kind = type(envelope.payload)
    runs, tasks, workers, costs = view.runs, view.tasks, view.workers, view.costs
    run_problem: str | None = None
    task_problem: str | None = None
    worker_problem: str | None = None
    if kind in RUNS_READS:
        runs, run_problem = apply_runs(runs, envelope)
    if kind in TASKS_READS:
        tasks, task_problem = apply_tasks(tasks, envelope)
    if kind in WORKERS_READS:
        workers, worker_problem = apply_workers(workers, envelope)
    if kind in COSTS_READS:
        costs, _ = apply_costs(costs, envelope)
    if run_problem is None and task_problem is None and worker_problem is None:
        # Built directly rather than with a replace: this line runs once per event of
        # every replay.
        return ClusterView(
            last_seq=stored.seq,
            runs=runs,
            tasks=tasks,
            workers=workers,
            costs=costs,
            anomaly_count=view.anomaly_count,
            recent_anomalies=view.recent_anomalies,
        )
    # An event that does not fit changes no projection, so one bad event cannot leave them
    # disagreeing. The one exception is money: a superseded attempt of a known task was
    # paid for all the same, so its reported cost is still counted.
    payload = envelope.payload
    billed = (
        isinstance(payload, TaskEvent)
        and task_key(payload.run_id, payload.task_id) in view.tasks
        # A forged result reports a cost nobody paid.
        and not (task_problem or "").startswith(NOT_THE_HOLDER)
    )
    problems = [p for p in (run_problem, task_problem, worker_problem) if p is not None]
    anomaly = Anomaly(
        seq=stored.seq,
        event_id=envelope.id,
        type=str(type(payload).__struct_config__.tag),
        reason="; ".join(problems),
    )
    return msgspec.structs.replace(
        view,
        last_seq=stored.seq,
        costs=costs if billed else view.costs,
        anomaly_count=view.anomaly_count + 1,
        recent_anomalies=(*view.recent_anomalies[-(RECENT_ANOMALIES - 1) :], anomaly),
    )


def replay(events: Iterable[StoredEvent], view: ClusterView | None = None) -> ClusterView:
    """Fold a sequence of stored events, from an empty view unless one is given."""
    current = view if view is not None else ClusterView()
    for stored in events:
        current = apply(current, stored)
    return current


def to_snapshot(view: ClusterView) -> dict[str, Any]:
    """The view as JSON-compatible builtins, keys sorted, for snapshots and golden files."""
    return {
        "last_seq": view.last_seq,
        "runs": {k: msgspec.to_builtins(v) for k, v in sorted(view.runs.items())},
        "tasks": {k: msgspec.to_builtins(v) for k, v in sorted(view.tasks.items())},
        "workers": {k: msgspec.to_builtins(v) for k, v in sorted(view.workers.items())},
        "costs": {k: msgspec.to_builtins(v) for k, v in sorted(view.costs.items())},
        "anomaly_count": view.anomaly_count,
        "recent_anomalies": [msgspec.to_builtins(a) for a in view.recent_anomalies],
    }


def from_snapshot(data: Any) -> ClusterView:
    """Rebuild a view from :func:`to_snapshot`'s output.

    Raises:
        msgspec.ValidationError: the data is not a snapshot of this version.
    """
    snapshot = msgspec.convert(data, _Snapshot)
    return ClusterView(
        last_seq=snapshot.last_seq,
        runs=Map(snapshot.runs),
        tasks=Map(snapshot.tasks),
        workers=Map(snapshot.workers),
        costs=Map(snapshot.costs),
        anomaly_count=snapshot.anomaly_count,
        recent_anomalies=snapshot.recent_anomalies,
    )


class _Snapshot(msgspec.Struct, kw_only=True):
    last_seq: int
    runs: dict[str, RunView]
    tasks: dict[str, TaskView]
    workers: dict[str, WorkerView]
    costs: dict[str, CostView]
    anomaly_count: int
    recent_anomalies: tuple[Anomaly, ...]
