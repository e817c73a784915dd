"""A plan's preview at a front door (MCP's ``preview_plan``, HTTP's ``POST /plans/preview``),
without starting anything.

The content is :func:`~claudecluster.domain.preview.plan_preview`'s, the same the CLI
prints; this shell gets the plan to preview it: a plan given as it is, a fan-out over the
repository's files at HEAD (the door must be able to read the repository), or a goal
drafted by the Claude planner where the door was given one (a :data:`PlanDrafter`: it
runs a read-only, confined Claude Code agent on the door's machine, as ``run "GOAL"``
does). Whatever the plan, it is checked by the rules a submission is checked by, so a
preview that succeeds is a plan that would be accepted.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime
from pathlib import Path

from claudecluster.domain.preview import PlanPreview, plan_preview
from claudecluster.errors import ConfigError
from claudecluster.events.model import FanoutSpec, RunPolicy, RunSubmitted
from claudecluster.events.plan import PlanFile, PlanPolicy, PlanTask, plan_to_specs
from claudecluster.executors.base import Executor
from claudecluster.executors.claude_code import ClaudeCodeExecutor
from claudecluster.projections.views import WorkerView
from claudecluster.runtime.front_door import submit_run_command
from claudecluster.runtime.planners import ClaudeCodePlanner, fanout_tasks
from claudecluster.runtime.sandboxing import confinement_for
from claudecluster.settings import Settings
from claudecluster.workspace.git import resolve_commit

__all__ = [
    "PlanDrafter",
    "claude_drafter",
    "configured_drafter",
    "pool_size",
    "preview_submission",
]

#: Plans ``goal`` on the repository at ``repo`` (its HEAD) with the Claude planner.
PlanDrafter = Callable[[str, Path], Awaitable[PlanFile]]


def claude_drafter(
    executor: Executor, work_dir: Path, api_environment: dict[str, str]
) -> PlanDrafter:
    """A drafter that runs the Claude planner here, as ``run "GOAL"`` does before it asks.

    Each preview gets its own directory under ``work_dir`` (a throwaway checkout of HEAD
    and the agent's private HOME), so previews at once do not share one.

    Args:
        executor: runs the read-only planning agent (confined as the settings say).
        work_dir: where each preview's checkout and scratch go.
        api_environment: the sign-in the agent uses.
    """

    async def draft(goal: str, repo: Path) -> PlanFile:
        head = await resolve_commit(repo, "HEAD")
        preview_id = f"preview-{uuid.uuid4().hex[:12]}"
        planner = ClaudeCodePlanner(executor, work_dir / preview_id, api_environment)
        submitted = RunSubmitted(run_id=preview_id, goal=goal, repo=str(repo), planner="claude")
        return await planner.plan_file(submitted, repo, head)

    return draft


def configured_drafter(settings: Settings, project: Path) -> PlanDrafter:
    """The Claude planner as the settings configure it (sign-in, model, confinement),
    working under the project's ``.claudecluster/preview/``: what ``claudecluster mcp``
    and ``claudecluster gateway serve`` give their preview."""
    executor = ClaudeCodeExecutor(confinement=confinement_for(settings))
    return claude_drafter(
        executor, project / ".claudecluster" / "preview", settings.api_environment()
    )


def pool_size(workers: Sequence[WorkerView]) -> int:
    """The agents the pool runs at once now: the slots of its active workers (at least 1)."""
    return max(1, sum(w.slots for w in workers if w.state == "active"))


def _policy(plan: PlanPolicy, given: RunPolicy | None) -> RunPolicy:
    """The run's policy: the one given, else the plan's ``policy:`` over the defaults."""
    if given is not None:
        return given
    default = RunPolicy()
    return RunPolicy(
        max_attempts=plan.max_attempts or default.max_attempts,
        on_task_failure=plan.on_task_failure or default.on_task_failure,
        rollback_on_failure=plan.rollback_on_failure
        if plan.rollback_on_failure is not None
        else default.rollback_on_failure,
        on_conflict=plan.on_conflict or default.on_conflict,
        on_collision=plan.on_collision or default.on_collision,
    )


async def preview_submission(
    goal: str,
    *,
    repo: str,
    plan: PlanFile | None = None,
    fanout: FanoutSpec | None = None,
    claude_planner: bool = False,
    drafter: PlanDrafter | None = None,
    workers: int,
    budget_usd: float | None = None,
    policy: RunPolicy | None = None,
    max_tasks: int,
    source: str,
    now: datetime,
) -> PlanPreview:
    """The preview of what this submission would run; nothing is started or recorded.

    Args:
        goal: what the run should achieve (a given plan's own goal when empty).
        repo: the repository; read here for a fan-out or the planner.
        plan: the plan as it is.
        fanout: one task per file of HEAD matching a glob.
        claude_planner: plan ``goal`` with ``drafter``.
        drafter: the Claude planner this door may run, or None (then only a plan or a
            fan-out can be previewed).
        workers: the pool's size the estimate assumes.
        budget_usd: the run's budget.
        policy: the run's policy; None: the plan's ``policy:`` over the defaults.
        max_tasks: the configured cap on a run's tasks.
        source: where the values came from, for error messages.
        now: the time (a submission's check needs one; nothing keeps it).

    Raises:
        ConfigError: not exactly one way of planning, a bound broken, a repository this
            door cannot read, or a planner asked of a door that has none.
        GraphError: the plan's graph is invalid, or the planner gave no valid plan.
    """
    chosen = [name for name, given in
              (("plan", plan is not None), ("fanout", fanout is not None),
               ("claude_planner", claude_planner)) if given]  # fmt: skip
    if len(chosen) != 1:
        raise ConfigError(
            "plan", source, "give exactly one of a plan, a fan-out or the claude planner "
            f"(got {', '.join(chosen) or 'none'})",
        )  # fmt: skip
    if plan is None:
        checkout = Path(repo)
        if not checkout.is_absolute() or not (checkout / ".git").exists():
            raise ConfigError(
                "repo", source,
                f"{repo} is not a git repository this server can read; a preview of a "
                "fan-out or of the planner's plan reads it here (give a plan to preview "
                "it without the repository)",
            )  # fmt: skip
        if fanout is not None:
            head = await resolve_commit(checkout, "HEAD")
            specs = await fanout_tasks(checkout, head, fanout, goal)
            plan = PlanFile(
                goal=goal,
                tasks=tuple(
                    PlanTask(id=s.task_id, title=s.title, prompt=s.prompt, kind=s.kind,
                             files=s.files)
                    for s in specs
                ),
            )  # fmt: skip
        elif drafter is None:
            raise ConfigError(
                "claude_planner", source,
                "this server runs no planner of its own; give a plan or a fan-out to "
                "preview, or preview the goal with 'claudecluster run \"GOAL\" --dry-run'",
            )  # fmt: skip
        else:
            plan = await drafter(goal, checkout)
    chosen_policy = _policy(plan.policy, policy)
    # The checks a submission of this plan would get, so the preview promises nothing more.
    submit_run_command(
        goal or plan.goal or "run the plan",
        repo=repo,
        plan=plan_to_specs(plan),
        run_id="preview",
        budget_usd=budget_usd,
        policy=chosen_policy,
        source=source,
        now=now,
        max_tasks=max_tasks,
    )
    return plan_preview(
        plan,
        goal or plan.goal or "run the plan",
        workers=workers,
        budget_usd=budget_usd,
        policy=chosen_policy,
    )
