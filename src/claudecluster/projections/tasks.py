"""The tasks projection: one :class:`TaskView` per task, keyed ``run_id/task_id``.

Attempts fence results: only events of the live attempt move a task. A queued event must
open the next attempt (live + 1); any other attempt-bearing event must name the live one.
Everything else is an anomaly: recorded by the caller, and the task is left as it was.
"""

from __future__ import annotations

from datetime import datetime
from typing import Final, get_args

import msgspec
from immutables import Map

from claudecluster.domain.lifecycle import HELD_TASK_STATES, TaskState, next_task_state
from claudecluster.events.envelope import EventEnvelope
from claudecluster.events.model import (
    Event,
    EventBase,
    MergeConflict,
    RunPlanned,
    RunRetried,
    RunRolledBack,
    TaskAssigned,
    TaskCancelled,
    TaskEvent,
    TaskFailed,
    TaskMerged,
    TaskPreempted,
    TaskProgress,
    TaskQueued,
    TaskRateLimited,
    TaskRetryScheduled,
    TaskSkipped,
    TaskStarted,
    TaskSucceeded,
    TokenUsage,
)
from claudecluster.events.signing import verify_envelope
from claudecluster.projections.views import TaskView, task_key

__all__ = [
    "NOT_THE_HOLDER",
    "PROGRESS_PREVIEW_CHARS",
    "TASKS_READS",
    "Tasks",
    "apply_tasks",
    "progress_text",
]

Tasks = Map[str, TaskView]

#: How much of the latest agent output a task view keeps for status displays.
PROGRESS_PREVIEW_CHARS = 200

#: The event types :func:`apply_tasks` folds (plans, rollbacks, retries and every task event); any
#: other leaves the projection as it is, so the cluster fold does not call it for them.
TASKS_READS: Final[frozenset[type[EventBase]]] = frozenset[type[EventBase]](
    {RunPlanned, RunRolledBack, RunRetried}
).union(cls for cls in get_args(Event) if issubclass(cls, TaskEvent))


def progress_text(event: TaskProgress) -> str:
    """What one line of a task's log says of ``event``: the agent's text, or for a usage
    report its tokens (every task log shows it so: CLI, gateway, MCP)."""
    if event.kind == "usage" and event.usage is not None:
        return f"{event.usage.input_tokens} in / {event.usage.output_tokens} out"
    return event.text


def apply_tasks(tasks: Tasks, envelope: EventEnvelope) -> tuple[Tasks, str | None]:
    """Fold one event into the tasks projection.

    Returns:
        The new projection and, if the event did not fit, the reason (then it is unchanged).
    """
    event = envelope.payload
    if isinstance(event, RunPlanned):
        return _plan(tasks, event)
    if isinstance(event, RunRolledBack):
        return _revert(tasks, event), None
    if isinstance(event, RunRetried):
        return _retry(tasks, event)
    if not isinstance(event, TaskEvent):
        return tasks, None
    key = task_key(event.run_id, event.task_id)
    task = tasks.get(key)
    if task is None:
        return tasks, f"task {key!r} is not in any recorded plan"
    problem = _attempt_problem(task, event) or _holder_problem(task, envelope)
    if problem is not None:
        return tasks, problem
    tag = _TAGS[type(event)]
    target = next_task_state(task.state, tag)
    if target is None:
        return tasks, f"task {key!r} cannot take {tag!r} while {task.state.value}"
    return tasks.set(key, _advance(task, event, target, envelope.occurred_at)), None


#: Each task event type's wire tag, looked up once rather than read from the class's
#: struct config on every event.
_TAGS: Final[dict[type[EventBase], str]] = {
    cls: str(cls.__struct_config__.tag) for cls in TASKS_READS
}


def _plan(tasks: Tasks, event: RunPlanned) -> tuple[Tasks, str | None]:
    building = tasks.mutate()
    for spec in event.tasks:
        key = task_key(event.run_id, spec.task_id)
        if key in building:
            return tasks, f"task {key!r} was already planned"
        building[key] = TaskView(
            run_id=event.run_id,
            task_id=spec.task_id,
            title=spec.title,
            kind=spec.kind,
            depends_on=spec.depends_on,
        )
    return building.finish(), None


def _revert(tasks: Tasks, event: RunRolledBack) -> Tasks:
    building = tasks.mutate()
    for task_id in event.reverted_tasks:
        key = task_key(event.run_id, task_id)
        task = building.get(key)
        if task is not None and task.state is TaskState.MERGED:
            building[key] = msgspec.structs.replace(task, state=TaskState.REVERTED)
    return building.finish()


def _retry(tasks: Tasks, event: RunRetried) -> tuple[Tasks, str | None]:
    """The retried tasks are pending again (their attempt numbers go on from where they
    were); one that cannot be retried makes the whole event an anomaly."""
    building = tasks.mutate()
    for task_id in event.task_ids:
        key = task_key(event.run_id, task_id)
        task = building.get(key)
        if task is None:
            return tasks, f"task {key!r} is not in any recorded plan"
        target = next_task_state(task.state, "run.retried")
        if target is None:
            return tasks, f"task {key!r} cannot take 'run.retried' while {task.state.value}"
        building[key] = msgspec.structs.replace(task, state=target, worker_id=None, worker_key="")
    return building.finish(), None


def _attempt_problem(task: TaskView, event: TaskEvent) -> str | None:
    """Why the event belongs to another attempt than the live one, or None if it is live."""
    if isinstance(event, TaskQueued):
        if event.attempt != task.attempt + 1:
            return f"queued attempt {event.attempt}, but the next attempt is {task.attempt + 1}"
        return None
    if isinstance(event, TaskRetryScheduled):
        if event.next_attempt != task.attempt + 1:
            return f"retry as attempt {event.next_attempt}, but the next is {task.attempt + 1}"
        return None
    attempt = getattr(event, "attempt", None)
    if isinstance(event, TaskCancelled) and attempt == 0:
        return None  # cancelled as a whole, whichever attempt is live
    if attempt is not None and attempt != task.attempt:
        return f"event of attempt {attempt}, but the live attempt is {task.attempt}"
    return None


#: The start of the reason given for an event of a held attempt that its holder did not
#: sign: a forgery (or a bug), refused, and not billed.
NOT_THE_HOLDER: Final = "refused: not from the worker holding the attempt"

#: Events that move a held attempt or the driver's decisions, so only its holder may
#: record them. Progress is signed too but not checked: it moves nothing, and there is a
#: lot of it (the check costs an encode and an ed25519 verification per event).
_HOLDER_EVENTS: Final = (TaskStarted, TaskRateLimited, TaskSucceeded, TaskFailed, TaskCancelled)


def _holder_problem(task: TaskView, envelope: EventEnvelope) -> str | None:
    """Why an event of a held attempt is not its holder's, or None.

    An attempt claimed with a key (``task.assigned`` carries it) accepts its results
    only when they are signed with that key; one claimed without (an older worker, an
    older log) is not checked.
    """
    if not task.worker_key or task.state not in HELD_TASK_STATES:
        return None
    if not isinstance(envelope.payload, _HOLDER_EVENTS):
        return None
    why = verify_envelope(envelope, task.worker_key)
    if why is None:
        return None
    return f"{NOT_THE_HOLDER} ({task.worker_id}, attempt {task.attempt}): {why}"


def _advance(task: TaskView, event: TaskEvent, target: TaskState, at: datetime) -> TaskView:
    replace = msgspec.structs.replace
    match event:
        case TaskQueued():
            return replace(
                task,
                state=target,
                attempt=event.attempt,
                pool=event.pool,
                queued_at=at,
                worker_id=None,
                worker_key="",
                started_at=None,
                finished_at=None,
                failure=None,
                failure_class=None,
                retryable=False,
                conflict_files=(),
                usage=TokenUsage(),
            )
        case TaskAssigned():
            return replace(
                task, state=target, worker_id=event.worker_id, worker_key=event.worker_key
            )
        case TaskStarted():
            return replace(
                task,
                state=target,
                worker_id=event.worker_id,
                session_id=event.session_id or task.session_id,
                started_at=at,
            )
        case TaskProgress():
            usage = task.usage + event.usage if event.usage is not None else task.usage
            preview = event.text[:PROGRESS_PREVIEW_CHARS] if event.text else task.last_progress
            return replace(
                task,
                progress_events=task.progress_events + 1,
                last_progress=preview,
                usage=usage,
            )
        case TaskSucceeded():
            return replace(
                task,
                state=target,
                worker_id=event.worker_id,
                finished_at=at,
                turns=event.turns,
                model_time_s=event.model_time_ms / 1000,
                cost_usd=task.cost_usd + event.cost_usd,
                usage=event.usage,
            )
        case TaskFailed():
            return replace(
                task,
                state=target,
                finished_at=at,
                cost_usd=task.cost_usd + event.cost_usd,
                failure=event.reason,
                failure_class=event.failure_class,
                retryable=event.retryable,
            )
        case TaskCancelled():
            return replace(task, state=target, finished_at=at, failure=event.reason or None)
        case TaskPreempted():
            return replace(
                task,
                state=target,
                finished_at=at,
                preemptions=task.preemptions + 1,
                preempted_by=event.other_task_id,
            )
        case TaskSkipped():
            return replace(task, state=target, finished_at=at, failure=event.reason)
        case TaskMerged():
            note = "" if event.brought_changes else event.note or "the merge changed nothing"
            return replace(
                task,
                state=target,
                merged_commit=event.commit,
                conflict_files=(),
                merge_note=note,
            )
        case MergeConflict():
            return replace(task, state=target, conflict_files=event.files)
        case _:
            # TaskRetryScheduled: only the state moves; the next TaskQueued opens the attempt.
            # TaskRateLimited: the attempt goes on; the driver acts on it, not this view.
            return replace(task, state=target)
