"""The task graph: validation, order, critical paths and predicted file conflicts.

Pure functions over a run's :class:`~claudecluster.events.model.TaskSpec` tuple. The
driver validates a graph before it records RunPlanned, so nothing of an invalid graph
ever runs; the scheduler ranks ready tasks by the longest path still ahead of them,
because the run cannot end before that path does.
"""

from __future__ import annotations

import fnmatch
import heapq
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import msgspec

from claudecluster.errors import GraphError
from claudecluster.events.model import PredictedConflict, TaskSpec

_WILDCARDS = re.compile(r"[*?\[]")

__all__ = [
    "TaskGraph",
    "critical_path",
    "find_cycle",
    "patterns_overlap",
    "predict_conflicts",
    "remaining_path",
    "topological_order",
    "validate_graph",
]


@dataclass(frozen=True, slots=True)
class TaskGraph:
    """A validated graph with the lookups the scheduler needs on every decision.

    Attributes:
        specs: the tasks by id, in plan order.
        dependents: for each task, the tasks that depend on it directly.
        rank: the remaining path length of each task (its own weight included).
        order: a topological order (dependencies first, plan order among equals).
        position: each task's index in the plan (the last tie-breaker when scheduling).
    """

    specs: Mapping[str, TaskSpec]
    dependents: Mapping[str, tuple[str, ...]]
    rank: Mapping[str, float]
    order: tuple[str, ...]
    position: Mapping[str, int]

    @classmethod
    def build(
        cls, tasks: Sequence[TaskSpec], weights: Mapping[str, float] | None = None
    ) -> TaskGraph:
        """Validate ``tasks`` and index them.

        Raises:
            GraphError: see :func:`validate_graph`.
        """
        validate_graph(tasks)
        dependents: dict[str, list[str]] = {t.task_id: [] for t in tasks}
        for task in tasks:
            for dep in task.depends_on:
                dependents[dep].append(task.task_id)
        return cls(
            specs={t.task_id: t for t in tasks},
            dependents={k: tuple(v) for k, v in dependents.items()},
            rank=remaining_path(tasks, weights),
            order=tuple(topological_order(tasks)),
            position={t.task_id: i for i, t in enumerate(tasks)},
        )

    def descendants(self, task_id: str) -> list[str]:
        """Every task that depends on ``task_id``, directly or not, in topological order."""
        seen: set[str] = set()
        stack = list(self.dependents.get(task_id, ()))
        while stack:
            current = stack.pop()
            if current not in seen:
                seen.add(current)
                stack.extend(self.dependents.get(current, ()))
        return [t for t in self.order if t in seen]


def validate_graph(tasks: Sequence[TaskSpec]) -> None:
    """Reject a graph that cannot run, naming every problem found.

    Raises:
        GraphError: no tasks, duplicate ids, an empty prompt, a dependency on an unknown
            task or on itself, or a cycle (named task by task).
    """
    if not tasks:
        raise GraphError("the plan has no tasks")
    problems: list[str] = []
    seen: set[str] = set()
    for task in tasks:
        if task.task_id in seen:
            problems.append(f"task id {task.task_id!r} is used twice")
        seen.add(task.task_id)
        if not task.prompt.strip():
            problems.append(f"task {task.task_id!r} has an empty prompt")
    for task in tasks:
        for dep in task.depends_on:
            if dep == task.task_id:
                problems.append(f"task {task.task_id!r} depends on itself")
            elif dep not in seen:
                problems.append(f"task {task.task_id!r} depends on unknown task {dep!r}")
    if not problems:
        cycle = find_cycle(tasks)
        if cycle:
            problems.append("the dependencies form a cycle: " + " -> ".join(cycle))
    if problems:
        raise GraphError("invalid task graph: " + "; ".join(problems))


def find_cycle(tasks: Sequence[TaskSpec]) -> list[str]:
    """One dependency cycle as ``[a, b, ..., a]`` (a depends on b ...), or [] if acyclic."""
    deps = {t.task_id: list(t.depends_on) for t in tasks}
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done
    for root in deps:
        if state.get(root):
            continue
        path: list[str] = []
        stack: list[tuple[str, int]] = [(root, 0)]
        while stack:
            node, index = stack.pop()
            if index == 0:
                state[node] = 1
                path.append(node)
            children = [d for d in deps.get(node, ()) if d in deps]
            if index < len(children):
                stack.append((node, index + 1))
                child = children[index]
                if state.get(child) == 1:
                    return [*path[path.index(child) :], child]
                if not state.get(child):
                    stack.append((child, 0))
            else:
                state[node] = 2
                path.pop()
    return []


def topological_order(tasks: Sequence[TaskSpec]) -> list[str]:
    """Dependencies before dependents; among tasks free at once, plan order.

    Raises:
        GraphError: the graph has a cycle.
    """
    position = {t.task_id: i for i, t in enumerate(tasks)}
    waiting = {t.task_id: len(set(t.depends_on)) for t in tasks}
    dependents: dict[str, list[str]] = {t.task_id: [] for t in tasks}
    for task in tasks:
        for dep in set(task.depends_on):
            dependents.setdefault(dep, []).append(task.task_id)
    ready = [(position[t], t) for t, n in waiting.items() if n == 0]
    heapq.heapify(ready)
    order: list[str] = []
    while ready:
        _, current = heapq.heappop(ready)
        order.append(current)
        for child in dependents.get(current, ()):
            waiting[child] -= 1
            if waiting[child] == 0:
                heapq.heappush(ready, (position[child], child))
    if len(order) != len(tasks):
        raise GraphError("the dependencies form a cycle: " + " -> ".join(find_cycle(tasks)))
    return order


def remaining_path(
    tasks: Sequence[TaskSpec], weights: Mapping[str, float] | None = None
) -> dict[str, float]:
    """For each task, the longest chain of work from its start to the end of the run.

    ``weights`` estimates each task's duration (1 for a task it does not name).
    """
    weight = weights or {}
    dependents: dict[str, list[str]] = {t.task_id: [] for t in tasks}
    for task in tasks:
        for dep in task.depends_on:
            dependents[dep].append(task.task_id)
    rank: dict[str, float] = {}
    for task_id in reversed(topological_order(tasks)):
        after = max((rank[d] for d in dependents[task_id]), default=0.0)
        rank[task_id] = weight.get(task_id, 1.0) + after
    return rank


def critical_path(
    tasks: Sequence[TaskSpec], weights: Mapping[str, float] | None = None
) -> tuple[float, list[str]]:
    """The longest dependency chain: its length (sum of weights) and its tasks in order.

    No schedule on any number of workers can finish sooner; simulations and benchmarks
    report makespan against it.
    """
    rank = remaining_path(tasks, weights)
    dependents: dict[str, list[str]] = {t.task_id: [] for t in tasks}
    for task in tasks:
        for dep in task.depends_on:
            dependents[dep].append(task.task_id)
    roots = [t.task_id for t in tasks if not t.depends_on]
    current = max(roots, key=lambda t: rank[t])
    path = [current]
    while dependents[current]:
        current = max(dependents[current], key=lambda t: rank[t])
        path.append(current)
    return rank[path[0]], path


def patterns_overlap(a: str, b: str) -> bool:
    """Whether two declared paths or globs may name the same file (conservatively)."""
    a, b = a.strip("/"), b.strip("/")
    if a == b or fnmatch.fnmatchcase(a, b) or fnmatch.fnmatchcase(b, a):
        return True
    # A directory covers what is under it.
    if a.startswith(b + "/") or b.startswith(a + "/"):
        return True
    # Two globs may name a common file without matching each other as text
    # ("a/*.py" and "*/b.py"): when their literal prefixes agree, assume they do.
    if _WILDCARDS.search(a) and _WILDCARDS.search(b):
        fixed_a, fixed_b = _WILDCARDS.split(a, 1)[0], _WILDCARDS.split(b, 1)[0]
        return fixed_a.startswith(fixed_b) or fixed_b.startswith(fixed_a)
    return False


def predict_conflicts(
    tasks: Sequence[TaskSpec], *, serialize: bool
) -> tuple[tuple[TaskSpec, ...], tuple[PredictedConflict, ...]]:
    """Find unordered task pairs that declare overlapping files.

    With ``serialize``, the later task of each pair (by critical path, then priority,
    then plan order) is made to depend on the earlier one, so their changes merge one
    on top of the other instead of colliding; a pair already ordered by an edge added
    for an earlier pair is left alone.

    Returns:
        The tasks (with the added dependencies) and the predicted conflicts.
    """
    with_files = [t for t in tasks if t.files]
    if len(with_files) < 2:
        return tuple(tasks), ()
    rank = remaining_path(tasks)
    position = {t.task_id: i for i, t in enumerate(tasks)}
    extra: dict[str, list[str]] = {t.task_id: [] for t in tasks}
    deps = {t.task_id: set(t.depends_on) for t in tasks}

    def reaches(start: str, goal: str) -> bool:
        stack, seen = [start], set()
        while stack:
            node = stack.pop()
            if node == goal:
                return True
            if node not in seen:
                seen.add(node)
                stack.extend(deps[node])
        return False

    def first_key(task: TaskSpec) -> tuple[float, int, int]:
        return (-rank[task.task_id], -task.priority, position[task.task_id])

    conflicts: list[PredictedConflict] = []
    for i, one in enumerate(with_files):
        for other in with_files[i + 1 :]:
            files = sorted(
                {a for a in one.files for b in other.files if patterns_overlap(a, b)}
                | {b for a in one.files for b in other.files if patterns_overlap(a, b)}
            )
            if not files:
                continue
            if reaches(one.task_id, other.task_id) or reaches(other.task_id, one.task_id):
                continue
            first, second = sorted((one, other), key=first_key)
            if serialize:
                deps[second.task_id].add(first.task_id)
                extra[second.task_id].append(first.task_id)
            conflicts.append(
                PredictedConflict(
                    first=first.task_id,
                    second=second.task_id,
                    files=tuple(files),
                    serialized=serialize,
                )
            )
    if not serialize:
        return tuple(tasks), tuple(conflicts)
    return (
        tuple(
            msgspec.structs.replace(t, depends_on=(*t.depends_on, *extra[t.task_id]))
            if extra[t.task_id]
            else t
            for t in tasks
        ),
        tuple(conflicts),
    )
