"""The plan a run is about to carry out, shown before it starts: ``run "GOAL"``'s preview.

What a user needs to say go: the tasks and their order, which of them would collide
(tasks that name the same files, and what the driver does about it), the limits and the
budget that apply, and an estimate of the time on this pool and the cost. Pure: lines
from :func:`~claudecluster.domain.preview.plan_preview`, the content the MCP server's
``preview_plan`` tool and the gateway's ``POST /plans/preview`` return as well.
"""

from __future__ import annotations

from collections.abc import Sequence

from claudecluster.domain.preview import PlanPreview, plan_preview
from claudecluster.events.model import RunPolicy, TaskLimits
from claudecluster.events.plan import PlanFile

__all__ = ["preview_lines", "render_preview"]


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
    return render_preview(
        plan_preview(plan, goal, workers=workers, budget_usd=budget_usd, policy=policy)
    )


def render_preview(preview: PlanPreview) -> Sequence[str]:
    """The lines ``run`` prints for ``preview`` (the content every front door shares)."""
    width = max(len(task.task_id) for task in preview.tasks)
    lines = [f'plan for "{preview.goal}": {len(preview.tasks)} tasks']
    for task in preview.tasks:
        after = f"  after {', '.join(task.depends_on)}" if task.depends_on else ""
        model = f"  model {task.model}" if task.model else ""
        lines.append(f"  {task.task_id:<{width}}  [{task.size}] {task.title}{after}{model}")
    for conflict in preview.overlaps:
        then = (
            f"{conflict.second} will wait for {conflict.first}"
            if conflict.serialized
            else "their merges may conflict"
        )
        lines.append(
            f"overlap: {conflict.first} and {conflict.second} both change "
            f"{', '.join(conflict.files)}: {then}"
        )
    limited = sorted({_limits(t.limits) for t in preview.tasks} - {""})
    budget_usd = preview.budget_usd
    lines.append(
        "limits per task: " + ("; ".join(limited) if limited else "none set")
        + f"; attempts per task: {preview.max_attempts}"
        + f"; budget: {f'${budget_usd:g}' if budget_usd is not None else 'none'}"
    )  # fmt: skip
    estimate = preview.estimate
    lines.append(
        f"estimate on {estimate.workers} workers: about {estimate.minutes:.0f} min "
        f"({estimate.sequential_minutes:.0f} min one after another), "
        f"about ${estimate.cost_usd:.2f}; longest chain: {' > '.join(estimate.critical_path)}"
    )
    typical = ", ".join(
        f"{size.size} {size.minutes:g} min ${size.cost_usd:.2f}" for size in estimate.typical
    )
    lines.append(f"  (typical figures per task size, not measurements: {typical})")
    return lines
