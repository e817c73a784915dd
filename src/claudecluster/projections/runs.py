"""The runs projection: one :class:`RunView` per run, keyed by run id."""

from __future__ import annotations

from datetime import datetime
from typing import Final

import msgspec
from immutables import Map

from claudecluster.domain.lifecycle import RunState, next_run_state
from claudecluster.events.envelope import EventEnvelope
from claudecluster.events.model import (
    EventBase,
    RunCancelled,
    RunCompleted,
    RunFailed,
    RunPlanned,
    RunRetried,
    RunRolledBack,
    RunSubmitted,
    TaskMerged,
    TaskQueued,
)
from claudecluster.projections.views import RunView

__all__ = ["RUNS_READS", "Runs", "apply_runs"]

Runs = Map[str, RunView]
_RunChange = RunPlanned | RunCompleted | RunFailed | RunCancelled | RunRolledBack | RunRetried

#: The event types :func:`apply_runs` folds; any other leaves the projection as it is, so
#: the cluster fold does not call it for them (property-tested).
RUNS_READS: Final[frozenset[type[EventBase]]] = frozenset(
    {
        RunSubmitted,
        TaskQueued,
        TaskMerged,
        RunPlanned,
        RunCompleted,
        RunFailed,
        RunCancelled,
        RunRolledBack,
        RunRetried,
    }
)


def apply_runs(runs: Runs, envelope: EventEnvelope) -> tuple[Runs, str | None]:
    """Fold one event into the runs projection.

    Returns:
        The new projection and, if the event did not fit, the reason (then it is unchanged).
    """
    event = envelope.payload
    match event:
        case RunSubmitted():
            if event.run_id in runs:
                return runs, f"run {event.run_id!r} was already submitted"
            view = RunView(
                run_id=event.run_id,
                goal=event.goal,
                repo=event.repo,
                submitted_at=envelope.occurred_at,
                budget_usd=event.budget_usd,
            )
            return runs.set(event.run_id, view), None
        case TaskQueued():
            # The first queued task moves a planned run to running (the lifecycle table
            # says so); later ones change nothing. A task queued where the table has no row
            # is not the run's anomaly: the tasks projection reports it, once.
            run = runs.get(event.run_id)
            target = None if run is None else next_run_state(run.state, "task.queued")
            if run is None or target is None or target is run.state:
                return runs, None
            return runs.set(run.run_id, msgspec.structs.replace(run, state=target)), None
        case TaskMerged():
            run = runs.get(event.run_id)
            if run is None or run.state is not RunState.RUNNING:
                return runs, None
            return runs.set(
                run.run_id, msgspec.structs.replace(run, head_commit=event.commit)
            ), None
        case (
            RunPlanned() | RunCompleted() | RunFailed() | RunCancelled() | RunRolledBack()
            | RunRetried()
        ):  # fmt: skip
            run = runs.get(event.run_id)
            if run is None:
                return runs, f"run {event.run_id!r} was never submitted"
            tag = str(type(event).__struct_config__.tag)
            target = next_run_state(run.state, tag)
            if target is None:
                return runs, f"run {run.run_id!r} cannot take {tag!r} while {run.state.value}"
            return runs.set(run.run_id, _advance(run, event, target, envelope.occurred_at)), None
        case _:
            return runs, None


def _advance(run: RunView, event: _RunChange, target: RunState, at: datetime) -> RunView:
    match event:
        case RunPlanned():
            return msgspec.structs.replace(
                run,
                state=target,
                planned_at=at,
                task_ids=tuple(spec.task_id for spec in event.tasks),
                base_commit=event.base_commit,
                head_commit=event.base_commit,
                integration_branch=event.integration_branch,
            )
        case RunCompleted():
            return msgspec.structs.replace(
                run, state=target, finished_at=at, head_commit=event.head_commit
            )
        case RunFailed() | RunCancelled():
            return msgspec.structs.replace(run, state=target, finished_at=at, reason=event.reason)
        case RunRolledBack():
            return msgspec.structs.replace(run, state=target, head_commit=event.to_commit)
        case RunRetried():
            return msgspec.structs.replace(
                run, state=target, finished_at=None, reason="", head_commit=event.head_commit
            )
