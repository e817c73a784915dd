"""``claudecluster run``: reach a goal with many Claude Code agents in parallel."""

from __future__ import annotations

import os
import signal
import sys
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal, TypeVar

import anyio
import msgspec
import yaml
from rich.console import Console
from rich.prompt import Prompt
from rich.text import Text

from claudecluster.cli.app import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK, flag_settings, log_quietly
from claudecluster.cli.follow import Renderer, RunEnd, follow_run, renderer_for, submit_only
from claudecluster.cli.preview import preview_lines
from claudecluster.cli.pull_request import (
    PullRequest,
    github_token,
    open_pull_request,
    pull_request_body,
    repository_of,
)
from claudecluster.cli.render import merge_warning_lines, preemption_lines
from claudecluster.cli.result_push import check_remote, push_branch, refuse_git_url
from claudecluster.domain.branches import integration_branch
from claudecluster.errors import ConfigError
from claudecluster.events.model import (
    CancelRun,
    FanoutSpec,
    RunCompleted,
    RunPolicy,
    RunSubmitted,
    SubmitRun,
    TaskKind,
    TaskLimits,
)
from claudecluster.events.plan import PlanFile, PlanPolicy, plan_to_specs
from claudecluster.executors.claude_code import ClaudeCodeExecutor
from claudecluster.observability.redaction import redact_url
from claudecluster.runtime.connection import Connection, open_configured_cluster
from claudecluster.runtime.front_door import new_run_id, submit_run_command
from claudecluster.runtime.local_cluster import open_local_services
from claudecluster.runtime.planners import ClaudeCodePlanner, load_plan_file
from claudecluster.runtime.sandboxing import confinement_for
from claudecluster.settings import Settings
from claudecluster.transport.commands import publish_command
from claudecluster.workspace.git import git, git_status, snapshot_worktree, uncommitted_paths

__all__ = ["print_summary", "run"]


def run(
    goal: str,
    *,
    plan: Path | None = None,
    fanout: str | None = None,
    prompt: str | None = None,
    kind: TaskKind = "refactor",
    claude_planner: bool = False,
    workers: int = 3,
    repo: Path = Path(),
    run_id: str | None = None,
    budget: float | None = None,
    max_parallel: int | None = None,
    on_conflict: Literal["resolve", "stop"] = "resolve",
    on_collision: Literal["let_both", "restart_later"] = "let_both",
    verify: str | None = None,
    nats: str | None = None,
    detach: bool = False,
    json: bool = False,
    no_sandbox: bool = False,
    config: Path | None = None,
    include_uncommitted: bool = False,
    model: str | None = None,
    max_attempts: int | None = None,
    on_task_failure: Literal["skip_dependents", "fail_run"] | None = None,
    rollback_on_failure: bool | None = None,
    yes: bool = False,
    dry_run: bool = False,
    push: bool | str = False,
    pr: bool = False,
) -> int:
    """Split a goal into tasks, run them in parallel with Claude Code, merge the results.

    Give the tasks as a plan file, as a fan-out over files, or let a read-only Claude Code
    planner make them. With none of these, Claude Code plans here first and the plan is
    shown (tasks, order, overlaps, limits, budget, an estimate of time and cost): go, save
    it to edit, or stop (--yes goes without asking; --dry-run shows it and stops).
    Without a NATS URL this starts the embedded nats-server, a driver and N local
    workers; with --nats it submits to the driver and workers already running there.
    The result is the branch claudecluster/RUN in the repository; your checkout is never
    touched. --push [REMOTE] pushes that branch to the remote (origin unless named) once
    every task merged.

    Ctrl-C asks whether to cancel the run or detach from it (on the embedded cluster a
    detached run pauses and goes on the next time a driver and workers run).

    Exit codes: 0 every task merged; 1 the run failed or some task did not merge; 2 a
    usage or configuration error; 130 interrupted.

    Examples:
        claudecluster run "Add type hints to every module"
        claudecluster run "Add type hints" --plan plan.yaml
        claudecluster run "Add docstrings" --fanout "src/**/*.py" --prompt "Document {path}"
        claudecluster run "Split the monolith" --claude-planner --workers 5
        claudecluster run "Port the endpoints" --plan plan.yaml --nats nats://10.0.0.5:4222
        claudecluster run "Add type hints" --plan plan.yaml --yes --push origin

    Args:
        goal: What the run should achieve, in a sentence.
        plan: A plan file (YAML or JSON; see docs/driver.md).
        fanout: One task per file of the repository matching this glob.
        prompt: The fan-out's prompt template; may use {path}, {stem} and {goal}.
        kind: The fan-out tasks' kind.
        claude_planner: Let a read-only Claude Code agent plan the tasks.
        workers: Local workers to start (embedded cluster only).
        repo: The git repository to work on.
        run_id: The run's id (default: run-YYYYmmdd-HHMMSS).
        budget: Stop starting tasks once the run has cost this many USD.
        max_parallel: Tasks of this run running at once (default: the fleet's cap).
        on_conflict: resolve: a resolution attempt merges conflicting changes; stop: fail.
        on_collision: Two running tasks that touched the same file: let_both finish (the
            second merges through a resolution), or restart_later: stop the later one and
            run it again on top of the first one's merge (see docs/driver.md).
        verify: A shell command run on the merged result after each task (e.g. "make test").
        nats: NATS URL of a running cluster (default: nats.url, else the embedded server).
        detach: Submit, wait until the driver took the run, and return (needs --nats).
        json: Print every event of the run as JSON Lines instead of progress.
        no_sandbox: Run the local workers' agents, shell tasks, setup and verify commands
            unconfined, as this user (sandbox.enabled: false; see docs/security.md).
        config: A claudecluster.yaml to read instead of the one in the repository.
        include_uncommitted: Take the checkout's uncommitted changes (untracked files
            included, ignored ones not) as the base, committed on top of HEAD under
            refs/claudecluster/snapshots/RUN. Without it, a checkout with uncommitted
            changes is refused.
        model: The Claude model of the tasks that name none (default: claude.model, else
            Claude Code's own); a plan's "model:" and a task's win over it.
        max_attempts: Attempts a task gets before it fails for good (default 3, or the
            plan's policy).
        on_task_failure: skip_dependents: a failed task's dependents are skipped and the
            rest goes on; fail_run: the run stops (default: the plan's, else skip).
        rollback_on_failure: A failed run resets its branch to the base (default: off).
        yes: Run the previewed plan without asking (needed without a terminal).
        dry_run: Show the plan (planned here, or the --plan file) and stop.
        push: Push the branch claudecluster/RUN, under the same name, when the run ends
            with every task merged: to origin, or to the remote (name or URL) given after
            it; checked before the run.
        pr: With --push, open a GitHub pull request of the pushed branch (token from
            GH_TOKEN or GITHUB_TOKEN; github.api_url, github.repository, github.base).
    """
    refuse_git_url(repo)
    # --push alone is origin; --push NAME (or URL) that remote; without it, no push.
    remote = "origin" if push is True else (push or None)
    if pr and remote is None:
        raise ConfigError("pr", "flag --pr", "needs --push: the branch must be pushed")
    token = github_token(os.environ) if pr else None
    repo = repo.resolve()
    settings = flag_settings(config, nats=nats, no_sandbox=no_sandbox, project_dir=repo)
    log_quietly(settings)
    run_id = run_id or new_run_id(datetime.now(UTC))
    # The flag, else the configured default (limits.budget_usd; null: none).
    budget = budget if budget is not None else settings.limits.budget_usd
    console = Console(highlight=False, stderr=json)
    if not (plan or fanout or claude_planner) or dry_run:
        failure = _FailureFlags(max_attempts, on_task_failure, rollback_on_failure)
        chosen = _preview(settings, repo, goal, run_id, plan, workers, budget, console,
                          yes=yes, dry_run=dry_run, failure=failure,
                          on_conflict=on_conflict)  # fmt: skip
        if chosen is None:
            return EXIT_OK
        plan = chosen
    command = _submit_command(
        goal, repo=repo, plan=plan, fanout=fanout, prompt=prompt, kind=kind,
        claude_planner=claude_planner, run_id=run_id, budget=budget,
        max_parallel=max_parallel, on_conflict=on_conflict, on_collision=on_collision,
        verify=verify,
        max_tasks=settings.driver.max_tasks,
        failure=_FailureFlags(max_attempts, on_task_failure, rollback_on_failure),
        model=model,
        default_model=settings.claude.model or "",
        task_limits=settings.limits.task_limits(),
    )  # fmt: skip
    if workers < 1:
        raise ConfigError("workers", "flag --workers", "must be at least 1")
    if detach and not settings.nats.url:
        raise ConfigError(
            "detach", "flag --detach",
            "the embedded cluster stops with this command; give --nats URL of a cluster "
            "that keeps running, or leave --detach out",
        )  # fmt: skip
    try:
        end: RunEnd = anyio.run(
            _run,
            settings,
            command,
            repo,
            workers,
            json,
            console,
            detach,
            include_uncommitted,
            remote,
        )
    except Detached as left:
        console.print(f"run {left.run_id} goes on without this command; follow it with "
                      f"'claudecluster status {left.run_id}' or 'claudecluster logs "
                      f"{left.run_id}/TASK -f'", markup=False)  # fmt: skip
        if left.interrupted:
            return EXIT_INTERRUPTED
        return EXIT_OK
    print_summary(console, end)
    code = _exit_code(end)
    if remote is not None and code == EXIT_OK:
        code = _push(console, repo, remote, end)
        if token is not None and code == EXIT_OK:
            code = _pull_request(console, settings, repo, remote, token, end)
        return code
    if remote is not None:
        console.print(f"not pushed to {remote}: not every task merged", markup=False)
    return code


def _pull_request(
    console: Console, settings: Settings, repo: Path, remote: str, token: str, end: RunEnd
) -> int:
    """Open the pull request of the pushed branch; a refusal is exit 1, the push stays."""
    assert isinstance(end.event, RunCompleted)  # only a fully merged run is pushed
    run = end.view.runs.get(end.event.run_id)
    branch = run.integration_branch if run is not None else integration_branch(end.event.run_id)
    title, body = pull_request_body(end.view, end.event)

    async def open_it() -> PullRequest | str:
        _, url, _ = await git_status(repo, "remote", "get-url", remote)
        repository = repository_of(url or remote, settings.github.repository)
        base = settings.github.base
        if not base:
            code, current, _ = await git_status(repo, "symbolic-ref", "--short", "-q", "HEAD")
            base = current.strip() if code == 0 and current.strip() else "main"
        return await open_pull_request(
            api_url=settings.github.api_url, token=token, repository=repository,
            head=branch, base=base, title=title, body=body,
        )  # fmt: skip

    opened = anyio.run(open_it)
    if isinstance(opened, str):
        console.print(f"pull request not opened: {opened}", markup=False)
        return EXIT_FAILED
    console.print(f"opened pull request #{opened.number}: {opened.url}", markup=False,
                  soft_wrap=True)  # fmt: skip
    return EXIT_OK


def _push(console: Console, repo: Path, remote: str, end: RunEnd) -> int:
    """Push the run's branch to ``remote``; a refused push is exit 1, the branch stays."""
    run = end.view.runs.get(end.event.run_id)
    branch = run.integration_branch if run is not None else integration_branch(end.event.run_id)
    failure = anyio.run(push_branch, repo, remote, branch)
    if failure is not None:
        console.print(f"push of {branch} to {remote} failed: {failure}", markup=False)
        return EXIT_FAILED
    console.print(f"pushed {branch} to {remote}", markup=False, soft_wrap=True)
    return EXIT_OK


def _preview(
    settings: Settings,
    repo: Path,
    goal: str,
    run_id: str,
    plan: Path | None,
    workers: int,
    budget: float | None,
    console: Console,
    *,
    yes: bool,
    dry_run: bool,
    failure: _FailureFlags,
    on_conflict: Literal["resolve", "stop"],
) -> Path | None:
    """Plan here (or read ``plan``), show the preview, and ask; the plan file to run, or
    None when the user stopped (or only looked).

    Raises:
        ConfigError: no terminal to ask on and neither --yes nor --dry-run.
        GraphError: no valid plan.
    """
    if plan is not None:
        plan_file = load_plan_file(plan, max_tasks=settings.driver.max_tasks)
    else:
        if not (repo / ".git").exists():
            raise ConfigError("repo", "flag --repo", f"{repo} is not a git repository")
        if not dry_run and not yes and not sys.stdin.isatty():
            raise ConfigError("yes", "flags", _NO_TERMINAL)
        console.print(f"planning with Claude Code ({sign_in_line(settings)})...", markup=False)
        plan_file = anyio.run(_plan_here, settings, repo, goal, run_id)
    policy = _policy(plan_file, failure, on_conflict=on_conflict, verify=None, model="",
                     task_limits=settings.limits.task_limits())  # fmt: skip
    for line in preview_lines(plan_file, goal, workers=workers, budget_usd=budget,
                              policy=policy):  # fmt: skip
        console.print(line, markup=False, soft_wrap=True)
    if dry_run:
        console.print("dry run: nothing started", markup=False)
        return None
    if plan is not None:
        return plan
    saved = repo / ".claudecluster" / "plans" / f"{run_id}.yaml"
    saved.parent.mkdir(parents=True, exist_ok=True)
    saved.write_text(
        yaml.safe_dump(msgspec.to_builtins(plan_file), sort_keys=False), encoding="utf-8"
    )
    if not yes:
        if not sys.stdin.isatty():
            raise ConfigError("yes", "flags", _NO_TERMINAL)
        # Text, not markup: "[s]" would be rich's strike-through and vanish.
        question = Text("[g]o, [s]ave the plan to edit, or s[t]op?")
        answer = Prompt.ask(question, choices=["g", "s", "t"], default="g", console=console)
        if answer != "g":
            if answer == "s":
                console.print(f"the plan is in {saved}; edit it, then run: claudecluster run "
                              f'"{goal}" --plan {saved}', markup=False, soft_wrap=True)  # fmt: skip
            else:
                console.print("stopped: nothing started", markup=False)
            return None
    return saved


_NO_TERMINAL = (
    "no terminal to ask whether to run the plan: pass --yes to run it, or --dry-run to see "
    "it and stop"
)


async def _plan_here(settings: Settings, repo: Path, goal: str, run_id: str) -> PlanFile:
    """Ask a read-only, confined Claude Code agent for a plan of ``goal`` on HEAD."""
    head = (await git(repo, "rev-parse", "HEAD^{commit}")).strip()
    executor = ClaudeCodeExecutor(confinement=confinement_for(settings))
    planner = ClaudeCodePlanner(
        executor, repo / ".claudecluster" / "preview" / run_id, settings.api_environment()
    )
    submitted = RunSubmitted(run_id=run_id, goal=goal, repo=str(repo), planner="claude")
    return await planner.plan_file(submitted, repo, head)


def _submit_command(
    goal: str,
    *,
    repo: Path,
    plan: Path | None,
    fanout: str | None,
    prompt: str | None,
    kind: TaskKind,
    claude_planner: bool,
    run_id: str | None,
    budget: float | None,
    max_parallel: int | None,
    on_conflict: Literal["resolve", "stop"],
    verify: str | None,
    max_tasks: int,
    failure: _FailureFlags | None = None,
    model: str | None = None,
    default_model: str = "",
    on_collision: Literal["let_both", "restart_later"] = "let_both",
    task_limits: TaskLimits | None = None,
) -> SubmitRun:
    """Check everything that can be checked here, so mistakes fail fast with exit 2."""
    chosen = [name for name, given in
              (("--plan", plan), ("--fanout", fanout), ("--claude-planner", claude_planner))
              if given]  # fmt: skip
    if len(chosen) != 1:
        raise ConfigError(
            "plan", "flags", "give exactly one of --plan FILE, --fanout GLOB --prompt TEXT, "
            f"or --claude-planner (got {', '.join(chosen) or 'none'})",
        )  # fmt: skip
    if not (repo / ".git").exists():
        raise ConfigError("repo", "flag --repo", f"{repo} is not a git repository")
    if fanout is not None and not prompt:
        raise ConfigError("prompt", "flags", "--fanout needs --prompt TEMPLATE")
    if failure is not None and failure.max_attempts is not None and failure.max_attempts < 1:
        raise ConfigError("max_attempts", "flag --max-attempts", "must be at least 1")
    plan_file = load_plan_file(plan, max_tasks=max_tasks) if plan is not None else None
    return submit_run_command(
        goal,
        repo=str(repo),
        plan=plan_to_specs(plan_file) if plan_file is not None else None,
        fanout=FanoutSpec(glob=fanout, prompt_template=prompt, kind=kind)
        if fanout is not None and prompt
        else None,
        claude_planner=claude_planner,
        run_id=run_id or new_run_id(datetime.now(UTC)),
        budget_usd=budget,
        max_parallel=max_parallel,
        policy=_policy(
            plan_file,
            failure or _FailureFlags(),
            on_conflict=on_conflict,
            on_collision=on_collision,
            verify=verify,
            # The flag, else the plan's default, else the configured one.
            model=first_given(model, plan_file.model if plan_file else None, default_model),
            task_limits=task_limits,
        ),
        plan_source=str(plan) if plan is not None else "",
        source="flags",
        now=datetime.now(UTC),
        max_tasks=max_tasks,
    )


_T = TypeVar("_T")


@dataclass(frozen=True, slots=True)
class _FailureFlags:
    """What ``run``'s flags say of failures; None: the plan's policy, else the default."""

    max_attempts: int | None = None
    on_task_failure: Literal["skip_dependents", "fail_run"] | None = None
    rollback_on_failure: bool | None = None


def _policy(
    plan: PlanFile | None,
    flags: _FailureFlags,
    *,
    on_conflict: Literal["resolve", "stop"],
    verify: str | None,
    model: str,
    on_collision: Literal["let_both", "restart_later"] = "let_both",
    task_limits: TaskLimits | None = None,
) -> RunPolicy:
    """The run's policy: the flags, then the plan's ``policy:``, then the defaults.

    ``model`` is the run's, already chosen (the flag, the plan's or the configured one).
    """
    stated = plan.policy if plan is not None else PlanPolicy()
    default = RunPolicy()
    return RunPolicy(
        on_conflict=on_conflict if on_conflict != "resolve" else stated.on_conflict or "resolve",
        on_collision=on_collision
        if on_collision != "let_both"
        else stated.on_collision or "let_both",
        verify_command=verify or "",
        max_attempts=first_given(flags.max_attempts, stated.max_attempts, default.max_attempts),
        on_task_failure=first_given(
            flags.on_task_failure, stated.on_task_failure, default.on_task_failure
        ),
        rollback_on_failure=first_given(
            flags.rollback_on_failure, stated.rollback_on_failure, default.rollback_on_failure
        ),
        model=model,
        task_limits=task_limits or TaskLimits(),
    )


def first_given(*values: _T | None) -> _T:
    """The first of ``values`` that is not None (the last is always given)."""
    for value in values:
        if value is not None:
            return value
    raise ValueError("no value given")  # pragma: no cover - callers pass a default last


async def _base_of_checkout(command: SubmitRun, repo: Path, include: bool) -> SubmitRun:
    """Never leave the user's uncommitted work out silently: refuse it, or take it."""
    if command.base_ref != "HEAD":
        return command
    changed = await uncommitted_paths(repo)
    if not changed:
        return command
    if not include:
        more = f" and {len(changed) - 5} more" if len(changed) > 5 else ""
        shown = ", ".join(changed[:5]) + more
        raise ConfigError(
            "repo", str(repo),
            f"the checkout has uncommitted changes ({shown}) that the run would not see: "
            "commit or stash them, or pass --include-uncommitted to run on them as they are",
        )  # fmt: skip
    snapshot = await snapshot_worktree(
        repo, f"claudecluster: the working tree of {command.run_id}",
        f"refs/claudecluster/snapshots/{command.run_id}",
    )  # fmt: skip
    return msgspec.structs.replace(command, base_ref=snapshot)


class Detached(Exception):  # noqa: N818 - an outcome, not a failure
    """The user left the run to go on without this command (``--detach`` or Ctrl-C)."""

    def __init__(self, run_id: str, *, interrupted: bool) -> None:
        self.run_id = run_id
        self.interrupted = interrupted
        super().__init__(run_id)


async def _run(
    settings: Settings,
    command: SubmitRun,
    repo: Path,
    workers: int,
    json: bool,
    console: Console,
    detach: bool = False,
    include_uncommitted: bool = False,
    push: str | None = None,
) -> RunEnd:
    """Submit and follow; raises :class:`Detached` when the user lets the run go on."""
    code, _, _ = await git_status(repo, "rev-parse", "--verify", "-q", "HEAD^{commit}")
    if code != 0:
        raise ConfigError("repo", str(repo), "the repository has no commit yet")
    if push is not None:
        await check_remote(repo, push)
    command = await _base_of_checkout(command, repo, include_uncommitted)
    async with open_configured_cluster(
        settings, project_dir=repo, name="claudecluster-run"
    ) as conn:
        if not json:
            where = "embedded cluster" if conn.embedded else "cluster"
            console.print(f"{where} at {redact_url(conn.url)}", markup=False)
            if conn.embedded:  # this process's workers: its own sign-in (never the secret)
                console.print(sign_in_line(settings), markup=False)
        if detach:
            await submit_only(conn, command, command_id=f"submit-{command.run_id}")
            raise Detached(command.run_id, interrupted=False)
        renderer = renderer_for(console, command.run_id, json=json)
        if conn.embedded:
            async with open_local_services(conn, settings, workers=workers, project_dir=repo):
                end = await _follow_interruptibly(conn, command, renderer)
        else:
            end = await _follow_interruptibly(conn, command, renderer)
    if end is None:  # raised out here, not through the task groups above
        raise Detached(command.run_id, interrupted=True)
    return end


async def _follow_interruptibly(
    conn: Connection, command: SubmitRun, renderer: Renderer
) -> RunEnd | None:
    """Follow the run; on Ctrl-C ask whether to cancel it or detach (detach if no TTY).

    Returns None when the user detached.
    """
    result: list[RunEnd] = []
    detached = False
    async with anyio.create_task_group() as group:

        async def follow() -> None:
            result.append(
                await follow_run(conn, command, renderer, command_id=f"submit-{command.run_id}")
            )
            group.cancel_scope.cancel()

        group.start_soon(follow)
        with anyio.open_signal_receiver(signal.SIGINT) as interrupts:
            async for _ in interrupts:
                renderer.close()
                if await anyio.to_thread.run_sync(_wants_cancel):
                    await publish_command(
                        conn.client.jetstream(),
                        CancelRun(run_id=command.run_id, reason="cancelled with Ctrl-C"),
                        command_id=f"cancel-{command.run_id}-ctrl-c",
                        now=datetime.now(UTC),
                    )
                    continue  # follow it to its end: cancelled
                detached = True
                group.cancel_scope.cancel()
                break
    return None if detached else result[0]


def _wants_cancel() -> bool:
    if not (sys.stdin.isatty() and sys.stdout.isatty()):
        return False
    answer = Prompt.ask("\ninterrupted: [c]ancel the run or [d]etach from it?",
                        choices=["c", "d"], default="d")  # fmt: skip
    return answer == "c"


def sign_in_line(settings: Settings) -> str:
    """Which way the local agents sign in, in words: the mode, never its secret.

    Raises:
        ConfigError: the chosen mode lacks a variable it needs.
    """
    chosen = settings.sign_in()
    if chosen is not None:
        return f"agents sign in with: {chosen.description}"
    return "agents have no sign-in: Claude Code tasks will fail (see claudecluster doctor)"


def print_summary(console: Console, end: RunEnd) -> None:
    """The run's outcome in a few lines: counts, branch, speedup, spend."""
    event = end.event
    run = end.view.runs.get(event.run_id)
    branch = run.integration_branch if run is not None else integration_branch(event.run_id)
    warnings = merge_warning_lines(end.view, event.run_id)
    if isinstance(event, RunCompleted):
        unchanged = f" ({len(warnings)} without changes)" if warnings else ""
        stopped = (
            f"; {event.preempted_attempts} attempt(s) stopped early for a predicted "
            f"collision and re-run"
            if event.preempted_attempts
            else ""
        )
        console.print(
            f"run {event.run_id} completed: {event.tasks_succeeded} merged{unchanged}, "
            f"{event.tasks_failed} failed, {event.tasks_skipped} skipped{stopped}",
            markup=False,
        )
        for line in warnings:
            console.print(line, markup=False, style="yellow")
        for line in preemption_lines(end.view, event.run_id):
            console.print(line, markup=False)
        from claudecluster.reporting.timing import timing_line

        timing = timing_line(
            wall_time_s=event.wall_time_s,
            task_time_s=event.task_time_s,
            parallelism=event.speedup,
            model_time_s=event.model_time_s,
        )
        console.print(timing, markup=False, soft_wrap=True)
        console.print(f"cost ${event.cost_usd:.4f}", markup=False)
        console.print(
            f"result: branch {branch} at {event.head_commit[:12]}", markup=False, soft_wrap=True
        )
        console.print(f"review it with: git log --stat {branch}", markup=False, soft_wrap=True)
        return
    console.print(f"run {event.run_id} {type(event).__name__.removeprefix('Run').lower()}: "
                  f"{event.reason}", markup=False)  # fmt: skip
    if run is not None and run.head_commit:
        console.print(
            f"what merged is on branch {branch} at {run.head_commit[:12]}",
            markup=False,
            soft_wrap=True,
        )


def _exit_code(end: RunEnd) -> int:
    event = end.event
    if isinstance(event, RunCompleted) and event.tasks_failed == 0 and event.tasks_skipped == 0:
        return EXIT_OK
    return EXIT_FAILED
