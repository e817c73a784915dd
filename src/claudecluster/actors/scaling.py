"""When to start and stop local workers: the embedded default's autoscaling, decided
without I/O from the cluster view.

Scale up when attempts wait on the queue with no free slot to take them; scale down a
worker that has been idle for a while when nothing waits. Stay between a minimum and a
maximum, and let a change settle before the next one, so a burst of short tasks does not
make the pool flap.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime

from claudecluster.domain.lifecycle import HELD_TASK_STATES, OPEN_RUN_STATES, TaskState
from claudecluster.projections.cluster import ClusterView

__all__ = ["ScaleDecision", "ScalePolicy", "decide_scale"]


@dataclass(frozen=True, slots=True)
class ScalePolicy:
    """Bounds and tempo of the local pool.

    Attributes:
        min_workers: always keep this many.
        max_workers: never run more.
        idle_after_s: a worker with nothing to do this long may be stopped.
        settle_s: wait this long after a change before the next.
    """

    min_workers: int = 1
    max_workers: int = 4
    idle_after_s: float = 30.0
    settle_s: float = 2.0


@dataclass(frozen=True, slots=True)
class ScaleDecision:
    """Start ``start`` workers, or stop the workers in ``stop``; ``reason`` says why."""

    start: int = 0
    stop: tuple[str, ...] = ()
    reason: str = ""


def decide_scale(
    view: ClusterView,
    pool: str,
    mine: Mapping[str, datetime | None],
    policy: ScalePolicy,
    now: datetime,
    last_change: datetime | None,
) -> ScaleDecision | None:
    """What to change in the local pool, or None.

    Args:
        view: the cluster view.
        pool: the pool the local workers serve.
        mine: the local workers by id, each with the time it became idle (None if busy).
        policy: bounds and tempo.
        now: the current time.
        last_change: when the pool last changed.
    """
    if last_change is not None and (now - last_change).total_seconds() < policy.settle_s:
        return None
    if len(mine) < policy.min_workers:
        return ScaleDecision(
            start=policy.min_workers - len(mine),
            reason=f"keeping the minimum of {policy.min_workers} worker(s)",
        )
    waiting = _waiting(view, pool)
    free = _free_slots(view, pool)
    if waiting > free and len(mine) < policy.max_workers:
        start = min(waiting - free, policy.max_workers - len(mine))
        return ScaleDecision(
            start=start,
            reason=f"{waiting} task(s) waiting for a worker and {free} free slot(s)",
        )
    if waiting == 0 and len(mine) > policy.min_workers:
        idle = sorted(
            worker_id
            for worker_id, since in mine.items()
            if since is not None and (now - since).total_seconds() >= policy.idle_after_s
        )
        surplus = idle[: len(mine) - policy.min_workers]
        if surplus:
            return ScaleDecision(
                stop=tuple(surplus),
                reason=f"idle for {policy.idle_after_s:g}s with no task waiting",
            )
    return None


def _free_slots(view: ClusterView, pool: str) -> int:
    """Slots of the pool's active workers not holding an attempt.

    What a worker holds is in the log (``task.assigned`` until the attempt ends); its
    liveness, and so its own count of free slots, is not. A heartbeat event of an older
    worker that reported fewer free slots still counts.
    """
    active = {
        w.worker_id: w for w in view.workers.values() if w.pool == pool and w.state == "active"
    }
    held = dict.fromkeys(active, 0)
    for run in view.runs.values():
        if run.state not in OPEN_RUN_STATES:
            continue
        for task in view.tasks_of(run.run_id):
            if task.state in HELD_TASK_STATES and task.worker_id in held:
                held[task.worker_id] += 1
    return sum(
        max(0, min(worker.slots_free, worker.slots - held[worker_id]))
        for worker_id, worker in active.items()
    )


def _waiting(view: ClusterView, pool: str) -> int:
    """Attempts queued and not yet taken by any worker, in open runs."""
    return sum(
        1
        for run in view.runs.values()
        if run.state in OPEN_RUN_STATES
        for task in view.tasks_of(run.run_id)
        if task.state is TaskState.QUEUED and task.pool == pool
    )
