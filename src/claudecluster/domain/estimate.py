"""How long and how much a plan will take, before it runs: from its tasks' sizes and the pool.

A planner (or a person) sizes each task small, medium or large. Each size stands for a
typical agent run (its minutes of work and its cost, :data:`SIZE_MINUTES` and
:data:`SIZE_COST_USD`: rough figures for a Claude Code task, said as such in the preview).
The time is that of the plan scheduled on the pool: tasks start as soon as what they
depend on is done and a worker is free, the longest remaining chain first (the driver's
own order, roughly). The one-after-another time, the sum of every task's, is beside it,
so the user sees what parallelism buys. A pure function: the preview and its tests use it
as it is.
"""

from __future__ import annotations

import heapq
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Final, Literal

__all__ = ["SIZE_COST_USD", "SIZE_MINUTES", "Estimate", "Size", "estimate_plan"]

Size = Literal["small", "medium", "large"]

#: Minutes of agent work a task of each size typically takes.
SIZE_MINUTES: Final[Mapping[Size, float]] = {"small": 2.0, "medium": 6.0, "large": 15.0}
#: What a task of each size typically costs in model usage, in USD.
SIZE_COST_USD: Final[Mapping[Size, float]] = {"small": 0.15, "medium": 0.60, "large": 2.00}


@dataclass(frozen=True, slots=True)
class Estimate:
    """A plan's expected wall time on the pool, one-after-another time and cost.

    Attributes:
        minutes: wall time with ``workers`` agents at once.
        sequential_minutes: the tasks one after another.
        cost_usd: the sum of the tasks' typical costs.
        critical_path: the longest chain of dependent tasks, first to last.
    """

    minutes: float
    sequential_minutes: float
    cost_usd: float
    critical_path: tuple[str, ...]


def estimate_plan(tasks: Sequence[tuple[str, Sequence[str], Size]], workers: int) -> Estimate:
    """Schedule ``tasks`` (id, dependencies, size) on ``workers`` and sum their costs.

    The graph is assumed valid (validated before a preview is made); a dependency on an
    unknown id is ignored.
    """
    workers = max(1, workers)
    minutes = {task_id: SIZE_MINUTES[size] for task_id, _, size in tasks}
    deps = {task_id: [d for d in depends if d in minutes] for task_id, depends, _ in tasks}
    dependents: dict[str, list[str]] = {task_id: [] for task_id in minutes}
    for task_id, depends in deps.items():
        for dep in depends:
            dependents[dep].append(task_id)
    # The longest chain from each task to the end: the priority, and the critical path.
    tail: dict[str, float] = {}
    after: dict[str, str | None] = {}
    for task_id in reversed(_topological(minutes, deps)):
        best = max(dependents[task_id], key=lambda d: tail[d], default=None)
        after[task_id] = best
        tail[task_id] = minutes[task_id] + (tail[best] if best is not None else 0.0)
    waiting = {task_id: len(depends) for task_id, depends in deps.items()}
    ready = [(-tail[t], t) for t, n in waiting.items() if n == 0]
    heapq.heapify(ready)
    running: list[tuple[float, str]] = []
    now = 0.0
    while ready or running:
        while ready and len(running) < workers:
            _, task_id = heapq.heappop(ready)
            heapq.heappush(running, (now + minutes[task_id], task_id))
        now, done = heapq.heappop(running)
        for dependent in dependents[done]:
            waiting[dependent] -= 1
            if waiting[dependent] == 0:
                heapq.heappush(ready, (-tail[dependent], dependent))
    path: list[str] = []
    start = max(tail, key=lambda t: (tail[t], -len(deps[t])), default=None)
    while start is not None:
        path.append(start)
        start = after[start]
    return Estimate(
        minutes=now,
        sequential_minutes=sum(minutes.values()),
        cost_usd=sum(SIZE_COST_USD[size] for _, _, size in tasks),
        critical_path=tuple(path),
    )


def _topological(nodes: Mapping[str, float], deps: Mapping[str, Sequence[str]]) -> list[str]:
    """Dependencies before dependents (Kahn's order; a cycle's members are left out)."""
    waiting = {node: len(deps[node]) for node in nodes}
    dependents: dict[str, list[str]] = {node: [] for node in nodes}
    for node in nodes:
        for dep in deps[node]:
            dependents[dep].append(node)
    order = [node for node, count in waiting.items() if count == 0]
    for node in order:  # grows while it is walked
        for dependent in dependents[node]:
            waiting[dependent] -= 1
            if waiting[dependent] == 0:
                order.append(dependent)
    return order
