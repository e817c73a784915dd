"""Random task graphs for simulations and property tests: one seeded source, one graph."""

from __future__ import annotations

import random

from claudecluster.events.model import TaskSpec

__all__ = ["random_graph"]


def random_graph(
    rng: random.Random, size: int, *, edge_chance: float = 0.15, max_parents: int = 3
) -> tuple[TaskSpec, ...]:
    """A random DAG: each task may depend on a few of the 50 before it."""
    tasks = []
    for i in range(size):
        earlier = list(range(max(0, i - 50), i))
        parents = [p for p in earlier if rng.random() < edge_chance][:max_parents]
        tasks.append(
            TaskSpec(
                task_id=f"t{i}",
                title=f"task {i}",
                prompt=f"do {i}",
                depends_on=tuple(f"t{p}" for p in parents),
                priority=rng.randint(0, 2),
            )
        )
    return tuple(tasks)
