"""How big a pool should be, decided without I/O from the cluster view.

Two deciders. :func:`decide_scale` is the embedded default's: it starts in-process
workers when attempts wait with no free slot and stops one idle for a while.
:func:`decide_pool_size` is the autoscaler's (``claudecluster autoscale``), for pools
whose workers a backend starts: local processes or an operator's command. It sizes the
pool from the work itself: what is queued, what is running, and the shape of what is
left. A long chain needs one worker however many tasks it has; a fan-out needs as many
as its widest layer. So the wanted slots are the widest layer of the remaining graph,
layered along its dependencies (layer 0: queued, running and ready tasks; layer k: tasks
whose deepest unfinished dependency is in layer k - 1). Growing follows at once (after
``settle_s``); shrinking waits until the smaller size has been enough for
``scale_down_after_s``, so a gap between two layers does not stop workers the next layer
needs.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import datetime

from claudecluster.domain.lifecycle import HELD_TASK_STATES, OPEN_RUN_STATES, TaskState
from claudecluster.projections.cluster import ClusterView
from claudecluster.projections.views import TaskView

__all__ = [
    "PoolBounds",
    "PoolDemand",
    "PoolTarget",
    "ScaleDecision",
    "ScalePolicy",
    "ScalerState",
    "decide_pool_size",
    "decide_scale",
    "pool_demand",
]


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


# ----------------------------------------------------------------------------------------
# The autoscaler's sizing (claudecluster autoscale)
# ----------------------------------------------------------------------------------------

#: Tasks that need a worker now: queued for one, or held by one.
_NOW: frozenset[TaskState] = frozenset({TaskState.QUEUED, TaskState.ASSIGNED, TaskState.RUNNING})
#: Tasks that will need a worker: waiting on dependencies, or on a retry's delay.
_LATER: frozenset[TaskState] = frozenset({TaskState.PENDING, TaskState.RETRY_WAIT})


@dataclass(frozen=True, slots=True)
class PoolBounds:
    """What the autoscaler may do with a pool.

    Attributes:
        min_workers: never fewer (0: none while there is no work).
        max_workers: never more.
        slots_per_worker: attempts one worker runs at once (its ``--slots``).
        settle_s: the least time between two changes.
        scale_down_after_s: how long a smaller size must have been enough before the pool
            shrinks to it.
    """

    min_workers: int = 0
    max_workers: int = 4
    slots_per_worker: int = 1
    settle_s: float = 10.0
    scale_down_after_s: float = 60.0

    def problem(self) -> str | None:
        """What is wrong with these bounds, or None."""
        if self.min_workers < 0:
            return "min_workers must be 0 or more"
        if self.max_workers < max(1, self.min_workers):
            return "max_workers must be at least 1 and at least min_workers"
        if self.slots_per_worker < 1:
            return "slots_per_worker must be at least 1"
        if self.settle_s < 0 or self.scale_down_after_s < 0:
            return "settle_s and scale_down_after_s must be 0 or more"
        return None


@dataclass(frozen=True, slots=True)
class PoolDemand:
    """The work a pool has, as the autoscaler sizes it.

    Attributes:
        queued: attempts waiting for a worker.
        running: attempts a worker holds.
        waiting: tasks that will need a worker later (dependencies, retry delays).
        widest_layer: the most tasks of the remaining graph that can run at once.
        layers: how many layers the remaining graph has (its critical path, in tasks).
    """

    queued: int = 0
    running: int = 0
    waiting: int = 0
    widest_layer: int = 0
    layers: int = 0


@dataclass(frozen=True, slots=True)
class PoolTarget:
    """Make the pool ``workers`` big, because ``reason``."""

    workers: int
    reason: str


@dataclass(frozen=True, slots=True)
class ScalerState:
    """What the autoscaler remembers between decisions.

    Attributes:
        last_change: when it last changed the pool.
        smaller_since: since when a smaller size than the current one has been enough.
    """

    last_change: datetime | None = None
    smaller_since: datetime | None = None


def pool_demand(view: ClusterView, pool: str) -> PoolDemand:
    """The pool's work in open runs, layered along dependencies (see the module)."""
    queued = running = waiting = 0
    widths: dict[int, int] = {}
    for run in view.runs.values():
        if run.state not in OPEN_RUN_STATES:
            continue
        tasks = {t.task_id: t for t in view.tasks_of(run.run_id)}
        layers = _layers(tasks)
        for task_id, layer in layers.items():
            task = tasks[task_id]
            if task.pool != pool:
                continue
            widths[layer] = widths.get(layer, 0) + 1
            if task.state is TaskState.QUEUED:
                queued += 1
            elif task.state in HELD_TASK_STATES:
                running += 1
            else:
                waiting += 1
    return PoolDemand(
        queued=queued,
        running=running,
        waiting=waiting,
        widest_layer=max(widths.values(), default=0),
        layers=len(widths),
    )


def _layers(tasks: Mapping[str, TaskView]) -> dict[str, int]:
    """The layer of every task of one run that needs a worker now or later."""
    needing = {k: t for k, t in tasks.items() if t.state in _NOW or t.state in _LATER}
    layers: dict[str, int] = {}

    def layer_of(task_id: str, path: frozenset[str]) -> int:
        if task_id in layers:
            return layers[task_id]
        task = needing[task_id]
        deps = [d for d in task.depends_on if d in needing and d not in path]
        # A dependency cycle cannot be submitted; ``path`` only keeps a broken log finite.
        depth = (
            0
            if task.state in _NOW or not deps
            else 1 + max(layer_of(d, path | {task_id}) for d in deps)
        )
        layers[task_id] = depth
        return depth

    for task_id in sorted(needing):
        layer_of(task_id, frozenset())
    return layers


def decide_pool_size(
    state: ScalerState,
    demand: PoolDemand,
    current: int,
    bounds: PoolBounds,
    now: datetime,
) -> tuple[ScalerState, PoolTarget | None]:
    """The pool's next size, or None to leave it; and what to remember.

    Args:
        state: what the last decisions left.
        demand: the pool's work (:func:`pool_demand`).
        current: the pool's size now, as its backend or the cluster view knows it.
        bounds: what the autoscaler may do.
        now: the current time.
    """
    wanted_slots = max(demand.widest_layer, demand.queued + demand.running)
    wanted = math.ceil(wanted_slots / bounds.slots_per_worker)
    target = min(bounds.max_workers, max(bounds.min_workers, wanted))
    if target >= current:
        state = replace(state, smaller_since=None)
    elif state.smaller_since is None:
        state = replace(state, smaller_since=now)
    if target == current:
        return state, None
    since_change = None if state.last_change is None else now - state.last_change
    if since_change is not None and since_change.total_seconds() < bounds.settle_s:
        return state, None
    if target < current:
        assert state.smaller_since is not None
        if (now - state.smaller_since).total_seconds() < bounds.scale_down_after_s:
            return state, None
    reason = (
        f"{demand.queued} queued, {demand.running} running, {demand.waiting} waiting; "
        f"widest layer {demand.widest_layer} of {demand.layers}: "
        f"{wanted_slots} slot(s) at {bounds.slots_per_worker} per worker"
    )
    if target != wanted:
        bound = "maximum" if target < wanted else "minimum"
        reason += f", held at the {bound} of {target}"
    return ScalerState(last_change=now, smaller_since=None), PoolTarget(target, reason)
