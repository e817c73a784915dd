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
"""

from __future__ import annotations

from typing import Final, Literal

import msgspec

from claudecluster.domain.lifecycle import TaskState
from claudecluster.domain.network import allowance_problem
from claudecluster.domain.outcome import Outcome
from claudecluster.events.envelope import EventEnvelope
from claudecluster.events.model import (
    ArtifactRef,
    TaskEvent,
    TaskFailed,
    TaskPreempted,
    TaskSucceeded,
)
from claudecluster.events.signing import verify_envelope
from claudecluster.events.work import WorkItem
from claudecluster.projections.views import TaskView

__all__ = [
    "DEFAULT_PERMISSION_MODES",
    "Admission",
    "admit",
    "finished_event",
    "item_problem",
    "only_forgeries",
]

#: Claude Code permission modes a worker accepts unless configured otherwise. Not
#: ``bypassPermissions``: a work item must not be able to switch Claude Code's checks off.
DEFAULT_PERMISSION_MODES: Final = ("default", "acceptEdits", "plan")

_RUNNING_STATES: Final = frozenset({TaskState.ASSIGNED, TaskState.RUNNING})


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
    if task.state in _RUNNING_STATES:
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
