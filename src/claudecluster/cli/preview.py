"""The plan a run is about to carry out, shown before it starts: ``run "GOAL"``'s preview.

What a user needs to say go: the tasks and their order, which of them would collide
(tasks that name the same files, and what the driver does about it), the limits and the
budget that apply, and an estimate of the time on this pool and the cost. Pure: lines
from the plan and the run's settings.
"""

from __future__ import annotations

from collections.abc import Sequence

from claudecluster.domain.estimate import SIZE_COST_USD, SIZE_MINUTES, estimate_plan
from claudecluster.domain.graph import predict_conflicts
from claudecluster.domain.limits import with_default_limits
from claudecluster.events.model import RunPolicy, TaskLimits
from claudecluster.events.plan import PlanFile, plan_to_specs

__all__ = ["preview_lines"]


def _limits(limits: TaskLimits) -> str:
    parts = []
    if limits.max_turns is not None:
        parts.append(f"{limits.max_turns} turns")
    if limits.wall_time_s is not None:
        parts.append(f"{limits.wall_time_s:g} s")
    if limits.max_cost_usd is not None:
        parts.append(f"${limits.max_cost_usd:g}")
    return ", ".join(parts)


def preview_lines(
    plan: PlanFile,
    goal: str,
    *,
    workers: int,
    budget_usd: float | None,
    policy: RunPolicy,
) -> Sequence[str]:
    """The preview: tasks, overlaps, limits and budget, and the estimate."""
    specs = plan_to_specs(plan)
    width = max(len(task.id) for task in plan.tasks)
    lines = [f'plan for "{goal}": {len(plan.tasks)} tasks']
    for task, spec in zip(plan.tasks, specs, strict=True):
        after = f"  after {', '.join(task.depends_on)}" if task.depends_on else ""
        model = f"  model {task.model}" if task.model else ""
        lines.append(f"  {task.id:<{width}}  [{task.size}] {spec.title}{after}{model}")
    serialize = policy.file_overlap == "serialize"
    ordered, conflicts = predict_conflicts(list(specs), serialize=serialize)
    for conflict in conflicts:
        then = (
            f"{conflict.second} will wait for {conflict.first}"
            if conflict.serialized
            else "their merges may conflict"
        )
        lines.append(
            f"overlap: {conflict.first} and {conflict.second} both change "
            f"{', '.join(conflict.files)}: {then}"
        )
    # What each task really gets: its own limits, the run's defaults for the rest.
    limited = sorted({_limits(with_default_limits(spec, policy.task_limits).limits)
                      for spec in specs} - {""})  # fmt: skip
    lines.append(
        "limits per task: " + ("; ".join(limited) if limited else "none set")
        + f"; attempts per task: {policy.max_attempts}"
        + f"; budget: {f'${budget_usd:g}' if budget_usd is not None else 'none'}"
    )  # fmt: skip
    # On the graph the driver will run: with the overlaps it orders, where it does.
    sizes = {task.id: task.size for task in plan.tasks}
    estimate = estimate_plan([(t.task_id, t.depends_on, sizes[t.task_id]) for t in ordered],
                             workers)  # fmt: skip
    lines.append(
        f"estimate on {workers} workers: about {estimate.minutes:.0f} min "
        f"({estimate.sequential_minutes:.0f} min one after another), "
        f"about ${estimate.cost_usd:.2f}; longest chain: {' > '.join(estimate.critical_path)}"
    )
    typical = ", ".join(
        f"{size} {SIZE_MINUTES[size]:g} min ${SIZE_COST_USD[size]:.2f}" for size in SIZE_MINUTES
    )
    lines.append(f"  (typical figures per task size, not measurements: {typical})")
    return lines
