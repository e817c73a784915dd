"""What a plan will do before it runs: the content of the preview every front door shows.

``claudecluster run "GOAL"`` prints it and asks; the MCP server's ``preview_plan`` tool
and the gateway's ``POST /plans/preview`` return it without starting anything. All three
build it here, from the plan and the run's settings, so they cannot tell a user different
things: the tasks and their order, the overlaps the driver predicts (tasks that name the
same files, and whether it orders them or only warns), the limits and the budget that
apply, and an estimate of time on the pool and of cost from the tasks' sizes
(:mod:`claudecluster.domain.estimate`). Pure: no I/O, no clock.
"""

from __future__ import annotations

from typing import Annotated

import msgspec

from claudecluster.domain.estimate import SIZE_COST_USD, SIZE_MINUTES, Size, estimate_plan
from claudecluster.domain.graph import predict_conflicts
from claudecluster.domain.limits import with_default_limits
from claudecluster.events.model import RunPolicy, TaskLimits
from claudecluster.events.plan import PlanFile, plan_to_specs

__all__ = [
    "PlanPreview",
    "PreviewEstimate",
    "PreviewOverlap",
    "PreviewTask",
    "SizeFigures",
    "plan_preview",
]


class PreviewTask(msgspec.Struct, frozen=True, kw_only=True):
    """One task as the preview shows it."""

    task_id: str
    title: str
    size: Size
    depends_on: tuple[str, ...] = ()
    model: Annotated[str, msgspec.Meta(description="Its own model; empty: the run's.")] = ""
    limits: TaskLimits = TaskLimits()
    mcp_servers: Annotated[
        tuple[str, ...], msgspec.Meta(description="The names of the MCP servers it gets.")
    ] = ()


class PreviewOverlap(msgspec.Struct, frozen=True, kw_only=True):
    """Two tasks that name the same files, and what the driver does about it."""

    first: str
    second: str
    files: tuple[str, ...]
    serialized: Annotated[
        bool,
        msgspec.Meta(
            description="True: the second waits for the first; false: both run and their "
            "merges may conflict."
        ),
    ]


class SizeFigures(msgspec.Struct, frozen=True, kw_only=True):
    """The typical minutes and cost one task size stands for (not measurements)."""

    size: Size
    minutes: float
    cost_usd: float


class PreviewEstimate(msgspec.Struct, frozen=True, kw_only=True):
    """The plan scheduled on the pool, from its tasks' sizes."""

    workers: int
    minutes: Annotated[float, msgspec.Meta(description="Wall time with that many agents.")]
    sequential_minutes: Annotated[float, msgspec.Meta(description="One task after another.")]
    cost_usd: float
    critical_path: tuple[str, ...]
    typical: Annotated[
        tuple[SizeFigures, ...],
        msgspec.Meta(description="What each size stands for: typical figures, not measured."),
    ]


class PlanPreview(msgspec.Struct, frozen=True, kw_only=True):
    """Everything a person needs to say go: what :func:`plan_preview` returns."""

    goal: str
    tasks: tuple[PreviewTask, ...]
    overlaps: tuple[PreviewOverlap, ...]
    max_attempts: Annotated[int, msgspec.Meta(description="Attempts each task gets.")]
    budget_usd: Annotated[
        float | None, msgspec.Meta(description="The run stops starting tasks past it.")
    ]
    estimate: PreviewEstimate
    plan: Annotated[
        PlanFile, msgspec.Meta(description="The plan itself, to save, edit and submit.")
    ]


def plan_preview(
    plan: PlanFile,
    goal: str,
    *,
    workers: int,
    budget_usd: float | None,
    policy: RunPolicy,
) -> PlanPreview:
    """The preview of ``plan`` run toward ``goal`` on ``workers`` agents.

    The plan is assumed valid (its graph checked); the overlaps are predicted as the
    driver will (``policy.file_overlap``), and the estimate is made on the graph it will
    run, with the waits the overlaps add.
    """
    specs = plan_to_specs(plan)
    tasks = tuple(
        PreviewTask(
            task_id=task.id,
            title=spec.title,
            size=task.size,
            depends_on=task.depends_on,
            model=task.model,
            # What it really gets: its own limits, the run's defaults for the rest.
            limits=with_default_limits(spec, policy.task_limits).limits,
            mcp_servers=tuple(sorted(task.mcp_servers)),
        )
        for task, spec in zip(plan.tasks, specs, strict=True)
    )
    ordered, conflicts = predict_conflicts(
        list(specs), serialize=policy.file_overlap == "serialize"
    )
    sizes = {task.id: task.size for task in plan.tasks}
    estimate = estimate_plan(
        [(t.task_id, t.depends_on, sizes[t.task_id]) for t in ordered], workers
    )
    return PlanPreview(
        goal=goal,
        tasks=tasks,
        overlaps=tuple(
            PreviewOverlap(
                first=c.first, second=c.second, files=tuple(c.files), serialized=c.serialized
            )
            for c in conflicts
        ),
        max_attempts=policy.max_attempts,
        budget_usd=budget_usd,
        estimate=PreviewEstimate(
            workers=workers,
            minutes=estimate.minutes,
            sequential_minutes=estimate.sequential_minutes,
            cost_usd=estimate.cost_usd,
            critical_path=estimate.critical_path,
            typical=tuple(
                SizeFigures(size=size, minutes=SIZE_MINUTES[size], cost_usd=SIZE_COST_USD[size])
                for size in SIZE_MINUTES
            ),
        ),
        plan=plan,
    )
