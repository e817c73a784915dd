"""Progress of one run, aggregated from the projections for status displays.

Counts by state, elapsed time, tokens and cost, and an estimate of the time still needed:
the longest chain of unfinished tasks, each weighted by the mean duration of the tasks
that finished so far. No schedule finishes before that chain does, so the estimate is a
lower bound that sharpens as tasks finish.
"""

from __future__ import annotations

from datetime import datetime

import msgspec

from claudecluster.domain.kinds import KIND_PROFILES, READ_ONLY_TOOLS
from claudecluster.domain.lifecycle import FINISHED_TASK_STATES, TaskState
from claudecluster.events.model import TokenUsage
from claudecluster.projections.cluster import ClusterView

__all__ = ["RunProgress", "merge_warnings", "preemptions", "run_progress"]


class RunProgress(msgspec.Struct, frozen=True, kw_only=True):
    """Where a run stands.

    Attributes:
        counts: tasks per state (only states that occur).
        finished: tasks that reached an end (merged, skipped, cancelled, failed).
        elapsed_s: since submission (until the run ended, if it did).
        remaining_path: unfinished tasks on the longest dependency chain still ahead.
        remaining_s: that chain times the mean task duration so far (None before any
            task finished).
    """

    run_id: str
    state: str
    total: int
    finished: int
    counts: dict[str, int]
    elapsed_s: float
    remaining_path: int
    remaining_s: float | None
    mean_task_s: float | None
    usage: TokenUsage
    cost_usd: float


def run_progress(view: ClusterView, run_id: str, now: datetime) -> RunProgress | None:
    """The run's progress at ``now``, or None for an unknown run."""
    run = view.runs.get(run_id)
    if run is None:
        return None
    tasks = view.tasks_of(run_id)
    counts: dict[str, int] = {}
    for task in tasks:
        counts[task.state.value] = counts.get(task.state.value, 0) + 1
    durations = [
        (t.finished_at - t.started_at).total_seconds()
        for t in tasks
        if t.started_at is not None and t.finished_at is not None
    ]
    mean = sum(durations) / len(durations) if durations else None
    open_ids = {t.task_id for t in tasks if t.state not in FINISHED_TASK_STATES}
    dependents: dict[str, list[str]] = {task_id: [] for task_id in open_ids}
    for task in tasks:
        if task.task_id in open_ids:
            for dep in task.depends_on:
                if dep in open_ids:
                    dependents[dep].append(task.task_id)
    depth: dict[str, int] = {}
    for root in open_ids:
        stack = [root]
        while stack:  # iterative post-order: a chain of thousands must not recurse
            current = stack[-1]
            pending = [d for d in dependents[current] if d not in depth]
            if pending:
                stack.extend(pending)
                continue
            stack.pop()
            depth[current] = 1 + max((depth[d] for d in dependents[current]), default=0)
    remaining = max(depth.values(), default=0)
    end = run.finished_at or now
    cost = view.costs.get(run_id)
    usage = TokenUsage()
    for task in tasks:
        usage = usage + task.usage
    return RunProgress(
        run_id=run_id,
        state=run.state.value,
        total=len(tasks),
        finished=sum(1 for t in tasks if t.state in FINISHED_TASK_STATES),
        counts=counts,
        elapsed_s=max((end - run.submitted_at).total_seconds(), 0.0),
        remaining_path=remaining,
        remaining_s=remaining * mean if mean is not None else None,
        mean_task_s=mean,
        usage=usage,
        cost_usd=cost.cost_usd if cost is not None else 0.0,
    )


def merge_warnings(view: ClusterView, run_id: str) -> list[tuple[str, str]]:
    """(task id, why) for each task of the run counted as merged although its merge
    changed nothing: a task that made no change, or a resolution that kept the
    integration side. Read-only kinds (review, plan) change nothing by design and are left
    out. Every display of a run shows these, so that "merged" never hides a missing change.
    """
    return [
        (task.task_id, task.merge_note)
        for task in view.tasks_of(run_id)
        if task.state is TaskState.MERGED
        and task.merge_note
        and KIND_PROFILES[task.kind].allowed_tools != READ_ONLY_TOOLS
    ]


def preemptions(view: ClusterView, run_id: str) -> list[tuple[str, int, str, str]]:
    """(task id, attempts stopped early, the task it last waited for, its state) for each
    task of the run with an attempt preempted for a predicted collision (the
    ``restart_later`` policy). Displays show them beside the tasks' states: a preemption
    is neither a failure nor a retry, but it is an attempt whose work was dropped.
    """
    return [
        (task.task_id, task.preemptions, task.preempted_by, task.state.value)
        for task in view.tasks_of(run_id)
        if task.preemptions
    ]
