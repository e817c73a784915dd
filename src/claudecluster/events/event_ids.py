"""Every event id the actors give what they record, in one place.

An event id is also the ``Nats-Msg-Id`` of its append, so it is what makes a retried
effect harmless: the same decision, carried out twice, must give the same id, and two
different decisions must never share one. The driver's ids are therefore built from the
facts they record (run, task, attempt, command), never from a clock or a random source;
a worker's ids carry a nonce the caller draws (the worker's appends are fenced by their
expected sequence instead).

The formats are part of the log's history: a driver restarted on an old log must give
its open decisions the ids they had, so these functions only name formats, they do not
change them.
"""

from __future__ import annotations

__all__ = [
    "budget_reached_id",
    "cancel_task_command_id",
    "collision_predicted_id",
    "collision_settled_id",
    "command_rejected_id",
    "merge_conflict_id",
    "merge_verify_failed_id",
    "pool_scale_id",
    "rolled_back_id",
    "rolled_back_on_failure_id",
    "run_cancelled_id",
    "run_completed_id",
    "run_failed_id",
    "run_planned_id",
    "run_retried_id",
    "run_submitted_id",
    "task_cancelled_id",
    "task_merged_id",
    "task_queued_id",
    "task_retry_id",
    "task_skipped_id",
    "worker_event_id",
    "worker_lost_id",
]


# -- a run ------------------------------------------------------------------------------


def run_submitted_id(run_id: str) -> str:
    """RunSubmitted: one per run."""
    return f"submitted-{run_id}"


def run_planned_id(run_id: str) -> str:
    """RunPlanned: one per run."""
    return f"planned-{run_id}"


def run_completed_id(run_id: str, retries: int = 0) -> str:
    """RunCompleted: one per run (with or without a final verify)."""
    return f"completed-{run_id}{_round(retries)}"


def run_failed_id(run_id: str, retries: int = 0) -> str:
    """RunFailed: one per run, whoever decided it (planning, the core, a final verify)."""
    return f"failed-{run_id}{_round(retries)}"


def run_cancelled_id(run_id: str, retries: int = 0) -> str:
    """RunCancelled: one per run."""
    return f"cancelled-{run_id}{_round(retries)}"


def budget_reached_id(run_id: str) -> str:
    """RunBudgetReached: one per run."""
    return f"budget-{run_id}"


def rolled_back_id(command_id: str) -> str:
    """RunRolledBack asked for by a RollbackRun command: one per command."""
    return f"rolledback-{command_id}"


def rolled_back_on_failure_id(run_id: str) -> str:
    """RunRolledBack of a failed run whose policy rolls back: one per run."""
    return f"rolledback-{run_id}-on-failure"


def run_retried_id(command_id: str) -> str:
    """RunRetried asked for by a RetryRun command: one per command."""
    return f"retried-{command_id}"


def _round(retries: int) -> str:
    """The suffix of an id that is once per run *per round*: a retried run ends (and
    skips or cancels a task) again, and that end must not be taken for a duplicate of the
    first one. Empty for a run never retried, so older logs keep their ids."""
    return f"-retry{retries}" if retries else ""


def command_rejected_id(command_id: str) -> str:
    """CommandRejected: one per refused command."""
    return f"rejected-{command_id}"


def collision_predicted_id(run_id: str, later: str, earlier: str) -> str:
    """CollisionPredicted: a pair is predicted once per run."""
    return f"collision-{run_id}-{later}-{earlier}"


def collision_settled_id(run_id: str, task_id: str, other_task_id: str) -> str:
    """CollisionSettled: a pair is settled once per run."""
    return f"settled-{run_id}-{task_id}-{other_task_id}"


# -- a task -----------------------------------------------------------------------------


def task_queued_id(run_id: str, task_id: str, attempt: int) -> str:
    """TaskQueued by the driver: one per attempt (a republished item keeps it)."""
    return f"queued-{run_id}-{task_id}-{attempt}"


def task_retry_id(run_id: str, task_id: str, next_attempt: int) -> str:
    """TaskRetryScheduled: one per attempt it schedules."""
    return f"retry-{run_id}-{task_id}-{next_attempt}"


def task_skipped_id(run_id: str, task_id: str, retries: int = 0) -> str:
    """TaskSkipped: a task is skipped once."""
    return f"skipped-{run_id}-{task_id}{_round(retries)}"


def task_cancelled_id(run_id: str, task_id: str, retries: int = 0) -> str:
    """TaskCancelled recorded by the driver (a task no worker holds)."""
    return f"cancelled-{run_id}-{task_id}{_round(retries)}"


def task_merged_id(run_id: str, task_id: str, attempt: int) -> str:
    """TaskMerged: one per attempt's result."""
    return f"merged-{run_id}-{task_id}-{attempt}"


def merge_conflict_id(run_id: str, task_id: str, attempt: int) -> str:
    """MergeConflict (git's, or a merge the judge refused): one per attempt's result."""
    return f"conflict-{run_id}-{task_id}-{attempt}"


def merge_verify_failed_id(run_id: str, task_id: str, attempt: int) -> str:
    """TaskFailed of a result the verify command refused after merging."""
    return f"verify-failed-{run_id}-{task_id}-{attempt}"


def cancel_task_command_id(run_id: str, task_id: str, attempt: int) -> str:
    """The CancelTask command the driver sends to stop a failing run's attempt."""
    return f"cancel-{run_id}-{task_id}-{attempt}"


# -- a worker ---------------------------------------------------------------------------


def worker_lost_id(worker_id: str, last_seen_seq: int) -> str:
    """WorkerLost: once per silence (a worker that came back and fell silent again is
    lost again, with a later last-seen sequence)."""
    return f"lost-{worker_id}-{last_seen_seq}"


def worker_event_id(worker_id: str, n: int, nonce: str) -> str:
    """An event a worker records: its id, a counter of its own, and a nonce the caller
    draws (a restarted worker's counter starts again at 1)."""
    return f"{worker_id}-{n}-{nonce}"


# -- the autoscaler ----------------------------------------------------------------------


def pool_scale_id(scaler_id: str, pool: str, n: int, nonce: str) -> str:
    """PoolScaled or PoolScaleFailed: the autoscaler's id, the pool, a counter of its own
    and a nonce drawn at its start (a restarted autoscaler's counter starts again at 1)."""
    return f"scale-{scaler_id}-{pool}-{n}-{nonce}"
