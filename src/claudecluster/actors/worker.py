"""The worker's decisions, free of I/O: whether to run a delivered work item, and what a
finished attempt records.

Delivery is at least once, so a worker regularly sees a work item that is no longer
current. The task's recorded history decides:

* the live attempt is the item's and still queued: run it;
* the live attempt is the item's but already assigned or running: the message was
  redelivered because its worker went silent past the ack wait; take over as a new
  attempt, resuming the previous attempt's session, so that a late result of the silent
  worker is fenced off by its attempt number;
* the item's attempt is not recorded yet: the driver's event is still in flight; try later;
* anything else (superseded, finished, cancelled, unknown task): drop the message.

The rest of what a worker decides is here too, each a pure function the shell
(runtime/worker/) carries out, and tests pin down on its own: the events
that claim an admitted attempt (:func:`claim_events`), which session it runs in
(:func:`attempt_session`), which running attempts a command stops (:func:`stops_for`),
and how a failure to carry an attempt out is recorded (:func:`classify_failure`).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Final, Literal

import msgspec

from claudecluster.domain.lifecycle import HELD_TASK_STATES, TaskState
from claudecluster.domain.network import allowance_problem
from claudecluster.domain.outcome import Outcome
from claudecluster.errors import LocalError, WorkspaceSetupError
from claudecluster.events.envelope import EventEnvelope
from claudecluster.events.model import (
    ArtifactRef,
    CancelRun,
    CancelTask,
    Command,
    DrainWorker,
    FailureClass,
    TaskAssigned,
    TaskEvent,
    TaskFailed,
    TaskPreempted,
    TaskQueued,
    TaskSucceeded,
    WorkerLost,
)
from claudecluster.events.signing import verify_envelope
from claudecluster.events.subjects import command_subject
from claudecluster.events.work import WorkItem
from claudecluster.projections.views import TaskView

__all__ = [
    "DEFAULT_PERMISSION_MODES",
    "TAKE_OVER_NOTE",
    "Admission",
    "AttemptFailure",
    "Stops",
    "admit",
    "attempt_session",
    "claim_events",
    "classify_failure",
    "failed_event",
    "finished_event",
    "item_problem",
    "only_forgeries",
    "rejoin_reason",
    "resumable_session",
    "stops_for",
]

#: Claude Code permission modes a worker accepts unless configured otherwise. Not
#: ``bypassPermissions``: a work item must not be able to switch Claude Code's checks off.
DEFAULT_PERMISSION_MODES: Final = ("default", "acceptEdits", "plan")


class Admission(msgspec.Struct, frozen=True, kw_only=True):
    """What to do with a delivered work item.

    Attributes:
        action: ``run`` the item's attempt, ``take_over`` as attempt ``attempt``,
            ``retry_later`` (negative-acknowledge), or ``drop`` (acknowledge, do nothing).
        attempt: the attempt to run.
        resume_session_id: a session to resume when taking over.
        reason: why, for the log.
    """

    action: Literal["run", "take_over", "retry_later", "drop"]
    attempt: int = 0
    resume_session_id: str = ""
    reason: str = ""


def admit(task: TaskView | None, item_attempt: int) -> Admission:
    """Decide about a work item for attempt ``item_attempt`` given the task's history."""
    if task is None:
        return Admission(action="drop", reason="the task is not in any recorded plan")
    if task.attempt < item_attempt:
        return Admission(
            action="retry_later",
            reason=f"attempt {item_attempt} is not recorded yet (live is {task.attempt})",
        )
    if task.attempt > item_attempt:
        return Admission(
            action="drop",
            reason=f"attempt {item_attempt} was superseded by attempt {task.attempt}",
        )
    if task.state is TaskState.QUEUED:
        return Admission(action="run", attempt=item_attempt, reason="queued")
    if task.state in HELD_TASK_STATES:
        return Admission(
            action="take_over",
            attempt=item_attempt + 1,
            resume_session_id=task.session_id,
            reason=f"redelivered while {task.state.value} on {task.worker_id}: taking over",
        )
    return Admission(action="drop", reason=f"attempt {item_attempt} is already {task.state}")


def finished_event(
    *,
    run_id: str,
    task_id: str,
    attempt: int,
    worker_id: str,
    outcome: Outcome,
    artifacts: tuple[ArtifactRef, ...] = (),
) -> TaskSucceeded | TaskFailed:
    """The event that records how an attempt ended."""
    if outcome.succeeded:
        return TaskSucceeded(
            run_id=run_id,
            task_id=task_id,
            attempt=attempt,
            worker_id=worker_id,
            summary=outcome.summary,
            cost_usd=outcome.cost_usd,
            usage=outcome.usage,
            turns=outcome.turns,
            duration_ms=outcome.duration_ms,
            model_time_ms=outcome.model_time_ms,
            artifacts=artifacts,
        )
    return TaskFailed(
        run_id=run_id,
        task_id=task_id,
        attempt=attempt,
        worker_id=worker_id,
        reason=outcome.reason,
        failure_class=outcome.failure_class or "agent_error",
        retryable=outcome.retryable,
        cost_usd=outcome.cost_usd,
        usage=outcome.usage,
    )


def only_forgeries(newer: list[EventEnvelope], attempt: int, public_key: str) -> bool:
    """Whether everything recorded on a held attempt's task since our last append is a
    forgery: events naming our attempt that our key did not sign.

    Readers refuse those, so the attempt goes on (appending after them); anything else
    (a take-over, a cancel, the driver's verdict) means it was superseded. A preemption
    names our attempt unsigned, but only the driver may publish it: it is never a forgery.
    """
    for envelope in newer:
        event = envelope.payload
        if not isinstance(event, TaskEvent) or getattr(event, "attempt", None) != attempt:
            return False
        if isinstance(event, TaskPreempted):
            return False
        if verify_envelope(envelope, public_key) is None:
            return False  # signed by us: not a forgery (and not expected either)
    return bool(newer)


def item_problem(
    item: WorkItem, *, permission_modes: tuple[str, ...], allow_mcp_config: bool
) -> str | None:
    """Why this worker refuses to hand ``item`` to Claude Code as it is, or None.

    Only the driver may publish work items, and this is the second line: whatever the
    item says, the agent runs only with a permission mode the worker's settings allow,
    with MCP servers from the plan only where the worker's settings allow those, and
    with network destinations only as the submission rules allow them.
    """
    if item.permission_mode not in permission_modes:
        allowed = ", ".join(permission_modes) or "none"
        return (
            f"permission mode {item.permission_mode!r} is not allowed on this worker "
            f"(worker.permission_modes: {allowed})"
        )
    if item.mcp_config and not allow_mcp_config:
        return (
            "the item asks for MCP servers (mcp_config), which this worker does not run "
            "(worker.allow_plan_mcp_servers is false)"
        )
    network = allowance_problem(item.spec.network.allow)
    if network is not None:
        return f"the item's network.allow is refused: {network}"
    return None


#: The note of the TaskQueued a take-over records.
TAKE_OVER_NOTE: Final = "taken over after its worker went silent"


def claim_events(
    admission: Admission,
    *,
    run_id: str,
    task_id: str,
    worker_id: str,
    worker_key: str = "",
    pool: str = "default",
    base_commit: str = "",
) -> tuple[TaskQueued | TaskAssigned, ...]:
    """The events that claim an admitted attempt, in the order they must be appended.

    A ``run`` is claimed by its TaskAssigned; a ``take_over`` first records the new
    attempt (TaskQueued, resuming the silent holder's session) and then claims it. Each
    append is conditional on the sequence the previous one left (the first on the
    history the admission was decided on), so a claim that lost a race records nothing
    after the event that lost.

    Raises:
        ValueError: the admission does not run anything (``drop``, ``retry_later``).
    """
    if admission.action not in ("run", "take_over"):
        raise ValueError(f"a {admission.action!r} admission claims nothing")
    attempt = admission.attempt
    assigned = TaskAssigned(
        run_id=run_id, task_id=task_id, attempt=attempt, worker_id=worker_id,
        worker_key=worker_key,
    )  # fmt: skip
    if admission.action == "run":
        return (assigned,)
    queued = TaskQueued(
        run_id=run_id, task_id=task_id, attempt=attempt, pool=pool, base_commit=base_commit,
        resume_session_id=admission.resume_session_id, note=TAKE_OVER_NOTE,
    )  # fmt: skip
    return (queued, assigned)


def attempt_session(
    admission: Admission, item_resume: str, *, restorable: bool, fresh: str
) -> tuple[str, bool]:
    """The session a claimed attempt runs in, and whether it resumes it.

    The session to continue is the silent holder's (a take-over) or the one the driver
    named (a requeue after a lost worker); it is resumed only when its transcript was
    mirrored (``restorable``). Otherwise the attempt starts the new session ``fresh``.
    """
    previous = admission.resume_session_id or item_resume
    if previous and restorable:
        return previous, True
    return fresh, False


def resumable_session(admission: Admission, item_resume: str) -> str:
    """The session whose transcript a claimed attempt looks for, or "" for none."""
    return admission.resume_session_id or item_resume


class Stops(msgspec.Struct, frozen=True, kw_only=True):
    """What a command asks of one worker.

    Attributes:
        attempts: (task key, reason) of each running attempt to stop and record as
            cancelled, in key order.
        drain: stop taking work (the running attempts finish).
    """

    attempts: tuple[tuple[str, str], ...] = ()
    drain: bool = False


#: The commands a worker acts on (:func:`stops_for`): the only ones its feed asks for.
#: Every other command is the driver's, a run's submission among them, whose plan every
#: worker would otherwise receive and decode.
WORKER_COMMAND_SUBJECTS: Final = tuple(
    command_subject(kind) for kind in (CancelTask, CancelRun, DrainWorker)
)


def stops_for(command: Command, running: Iterable[str], worker_id: str) -> Stops:
    """Which of the attempts a worker runs (``run/task`` keys) ``command`` stops.

    A task's cancel stops its attempt; a run's cancel stops every attempt of the run (a
    key is ``run/task`` and ids hold no ``/``, so a run's prefix names only its own);
    a drain addressed to this worker stops it taking work. Anything else is for the
    driver or for other workers.
    """
    keys = sorted(running)
    match command:
        case CancelTask(run_id=run_id, task_id=task_id, reason=reason):
            key = f"{run_id}/{task_id}"
            stopped = [(key, reason or "cancelled on request")] if key in keys else []
            return Stops(attempts=tuple(stopped))
        case CancelRun(run_id=run_id, reason=reason):
            why = reason or f"run {run_id} cancelled"
            return Stops(attempts=tuple((k, why) for k in keys if k.startswith(f"{run_id}/")))
        case DrainWorker(worker_id=drained) if drained == worker_id:
            return Stops(drain=True)
        case _:
            return Stops()


class AttemptFailure(msgspec.Struct, frozen=True, kw_only=True):
    """How a failure to carry an attempt out is recorded.

    Attributes:
        failure_class: ``setup`` or ``configuration`` when the task or the worker's
            configuration caused it, ``infrastructure`` when the machine or the stores did.
        retryable: whether another attempt (on another worker) may succeed.
        reason: what went wrong, naming the thing to fix.
    """

    failure_class: FailureClass
    retryable: bool
    reason: str


def classify_failure(error: Exception) -> AttemptFailure:
    """Whose fault a failure around an attempt is, and so whether it is retried.

    Setting up the workspace as the task and the configuration ask (copying the
    configured files, the setup command, a repository workers can check out) fails the
    same way on every machine: recorded as ``setup`` or ``configuration``, not retried.
    Any other error we raise on purpose for a wrong input or a defect of ours
    (:class:`~claudecluster.errors.LocalError`) would also come back: ``configuration``.
    What the machine or the stores did (the object store unreachable, the disk full,
    git killed: a :class:`~claudecluster.errors.RemoteError` or an ``OSError``) may go
    well elsewhere: ``infrastructure``, retried.
    """
    reason = str(error) or type(error).__name__
    if isinstance(error, WorkspaceSetupError):
        kind: FailureClass = "setup" if error.failure_class == "setup" else "configuration"
        return AttemptFailure(failure_class=kind, retryable=False, reason=reason)
    if isinstance(error, LocalError):
        return AttemptFailure(failure_class="configuration", retryable=False, reason=reason)
    return AttemptFailure(failure_class="infrastructure", retryable=True, reason=reason)


def failed_event(
    *, run_id: str, task_id: str, attempt: int, worker_id: str, failure: AttemptFailure
) -> TaskFailed:
    """The TaskFailed of an attempt that could not be carried out."""
    return TaskFailed(
        run_id=run_id,
        task_id=task_id,
        attempt=attempt,
        worker_id=worker_id,
        reason=failure.reason,
        failure_class=failure.failure_class,
        retryable=failure.retryable,
    )


def rejoin_reason(last: object) -> str | None:
    """Why a worker must join again, given the last event recorded about it; None if not.

    The driver declares a worker lost when its heartbeats stop reaching the registry (a
    cut link, a frozen process, a store failing over). A worker that is in fact alive and
    reaches the log again must say so before it takes more work: the driver re-queues
    every claim a lost worker makes the moment it lands, and a worker that went on
    claiming would spend every attempt of whatever it took (seen on three hosts, one of
    them cut off for 8 s: the same task claimed and re-queued six times, then failed).
    ``worker.joined`` is the lifecycle's one way from lost back to active.
    """
    if isinstance(last, WorkerLost):
        return f"joined again: declared lost ({last.reason})"
    return None
