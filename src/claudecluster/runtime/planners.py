"""Planning strategies: turn a submitted run into a validated task graph.

* **plan file / inline**: the tasks came with the run (the CLI read the file).
* **fan-out**: one task per file of the base commit matching a glob, from a template.
* **claude**: a read-only Claude Code task explores the repository and answers with a
  plan as JSON; an answer that does not fit the plan schema or the graph rules is sent
  back with the problem, a few times, then the run fails naming the last problem.

Whatever the strategy, the result is validated (:func:`validate_graph`) before RunPlanned
is recorded, and overlapping declared files are predicted as conflicts.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path, PurePosixPath
from typing import Any, Final, Protocol

import msgspec
import yaml

from claudecluster.domain.graph import predict_conflicts, validate_graph
from claudecluster.domain.kinds import KIND_PROFILES
from claudecluster.domain.outcome import Outcome
from claudecluster.domain.submission import DEFAULT_MAX_TASKS, fill_template
from claudecluster.errors import GraphError
from claudecluster.events.model import (
    FanoutSpec,
    PredictedConflict,
    RunSubmitted,
    TaskLimits,
    TaskProgress,
    TaskRateLimited,
    TaskSpec,
)
from claudecluster.events.plan import PlanFile, plan_from_data, plan_to_specs
from claudecluster.executors.base import AttemptRun, Executor
from claudecluster.observability.logging import get_logger
from claudecluster.workspace.git import git

__all__ = [
    "ClaudeCodePlanner",
    "PlanningAgent",
    "FanoutPlanner",
    "GivenPlan",
    "Planner",
    "extract_json",
    "fanout_tasks",
    "finish_plan",
    "load_plan_file",
    "parse_plan_text",
    "planner_for",
    "task_id_for",
]

_log = get_logger(__name__)
_ID_UNSAFE: Final = re.compile(r"[^A-Za-z0-9_-]+")


def task_id_for(path: str, taken: set[str]) -> str:
    """A task id from a file path: subject-token safe, at most 64 characters, unique."""
    base = _ID_UNSAFE.sub("-", path).strip("-_")[:56] or "file"
    if not base[0].isalnum():
        base = "f" + base
    candidate, n = base, 1
    while candidate in taken:
        n += 1
        candidate = f"{base}-{n}"
    taken.add(candidate)
    return candidate


def _matches(path: str, pattern: str) -> bool:
    pure = PurePosixPath(path)
    if pure.match(pattern):
        return True
    # "**/x" should also match "x" at the top level, as in most glob tools.
    return pattern.startswith("**/") and pure.match(pattern[3:])


async def fanout_tasks(repo: Path, commit: str, fanout: FanoutSpec, goal: str) -> list[TaskSpec]:
    """One task per file of ``commit`` matching the fan-out's glob.

    Raises:
        GraphError: no file matches, more than ``max_tasks`` do, or the template is invalid.
    """
    if not fanout.glob.strip() or not fanout.prompt_template.strip():
        raise GraphError("fan-out: both a glob and a prompt template are needed")
    listing = await git(repo, "ls-tree", "-r", "--name-only", commit)
    paths = sorted(p for p in listing.splitlines() if p and _matches(p, fanout.glob))
    if not paths:
        raise GraphError(f"fan-out: no file of {commit[:12]} matches {fanout.glob!r}")
    if len(paths) > fanout.max_tasks:
        raise GraphError(
            f"fan-out: {len(paths)} files match {fanout.glob!r}, more than the limit of "
            f"{fanout.max_tasks}; narrow the glob or raise max_tasks"
        )
    taken: set[str] = set()
    tasks = []
    for path in paths:
        prompt = fill_template(
            fanout.prompt_template, {"path": path, "stem": PurePosixPath(path).stem, "goal": goal}
        )
        tasks.append(
            TaskSpec(
                task_id=task_id_for(path, taken),
                title=f"{fanout.kind} {path}",
                prompt=prompt,
                kind=fanout.kind,
                files=(path,),
            )
        )
    return tasks


def finish_plan(
    tasks: Sequence[TaskSpec], *, serialize_overlaps: bool
) -> tuple[tuple[TaskSpec, ...], tuple[PredictedConflict, ...]]:
    """Validate a graph and predict its file conflicts (ordering them, per policy).

    Raises:
        GraphError: the graph is invalid.
    """
    validate_graph(tasks)
    return predict_conflicts(tasks, serialize=serialize_overlaps)


_FENCE: Final = re.compile(r"```(?:json)?\s*(\{.*?\})\s*```", re.DOTALL)


def extract_json(text: str) -> Any:
    """The JSON object in an agent's answer: a fenced block, or the outermost braces.

    Raises:
        GraphError: there is no JSON object in the text, or it does not parse.
    """
    fenced = _FENCE.search(text)
    candidate = fenced.group(1) if fenced else None
    if candidate is None:
        start, end = text.find("{"), text.rfind("}")
        if start < 0 or end <= start:
            raise GraphError("the answer holds no JSON object")
        candidate = text[start : end + 1]
    try:
        return json.loads(candidate)
    except json.JSONDecodeError as exc:
        raise GraphError(
            f"the answer's JSON does not parse: {exc.msg} at line {exc.lineno}"
        ) from None


_PLANNER_PROMPT: Final = """\
Plan how several agents working in parallel reach this goal in the repository in your
working directory:

{goal}

Explore the repository (read-only), then answer with only a JSON object of this schema,
in a ```json fenced block:

{schema}

Rules: each task is one agent's work on a separate copy of the repository, merged
afterwards; make tasks independent where you can and name the files each will change in
"files" so overlapping work can be ordered; use depends_on only where a task needs
another's result; ids use letters, digits, '-' and '_'; kinds are generate, refactor,
test or review; size each task small, medium or large by the work it is.
"""


class PlanningAgent:
    """The planning agent in a workspace it is given: asks Claude Code for a plan and
    validates it, feeding problems back. :class:`ClaudeCodePlanner` is the strategy that
    gives it a checkout of the base commit.

    Args:
        executor: runs the planning agent (the same executor workers use).
        scratch: a directory for the agent's private HOME and config.
        api_environment: ANTHROPIC_* settings.
        attempts: how many answers to try before giving up.
        model: the model to plan with (None: Claude Code's default).
    """

    def __init__(
        self,
        executor: Executor,
        scratch: Path,
        api_environment: dict[str, str],
        *,
        attempts: int = 3,
        model: str | None = None,
        limits: TaskLimits | None = None,
    ) -> None:
        self._executor = executor
        self._scratch = scratch
        self._api = api_environment
        self._attempts = attempts
        self._model = model
        self._limits = limits or TaskLimits(max_turns=30, wall_time_s=900)

    async def plan(self, submitted: RunSubmitted, workspace: Path) -> list[TaskSpec]:
        """Run the planning agent in ``workspace`` (a checkout of the base commit).

        Raises:
            GraphError: no valid plan after the configured attempts; names the last problem.
        """
        return list(plan_to_specs(await self.plan_file(submitted, workspace)))

    async def plan_file(self, submitted: RunSubmitted, workspace: Path) -> PlanFile:
        """The agent's valid plan as it wrote it (with its sizes, for a preview).

        Raises:
            GraphError: no valid plan after the configured attempts; names the last problem.
        """
        schema = json.dumps(msgspec.json.schema(PlanFile), separators=(",", ":"))
        prompt = _PLANNER_PROMPT.format(goal=submitted.goal, schema=schema)
        problem = ""
        for attempt in range(1, self._attempts + 1):
            asked = prompt if not problem else (
                f"{prompt}\nYour previous answer was not a valid plan: {problem}\n"
                "Answer again with a corrected JSON plan."
            )  # fmt: skip
            outcome = await self._ask(submitted.run_id, attempt, asked, workspace)
            if not outcome.succeeded:
                problem = f"the planning agent failed: {outcome.reason}"
                if not outcome.retryable:
                    break
                continue
            try:
                answer = outcome.result_text or outcome.summary
                plan = plan_from_data(extract_json(answer), "the plan")
                tasks = list(plan_to_specs(plan))
                _grants_no_network(tasks)
                validate_graph(tasks)
            except GraphError as exc:
                problem = str(exc)
                _log.info("planner answer rejected", run=submitted.run_id, problem=problem)
                continue
            return plan
        raise GraphError(f"the Claude planner gave no valid plan: {problem}")

    async def _ask(self, run_id: str, attempt: int, prompt: str, workspace: Path) -> Outcome:
        profile = KIND_PROFILES["plan"]
        job = AttemptRun(
            run_id=run_id,
            task_id="_plan",
            attempt=attempt,
            prompt=prompt,
            workspace=workspace,
            scratch=self._scratch / f"plan-{attempt}",
            session_id=str(uuid.uuid4()),
            limits=self._limits,
            model=self._model,
            permission_mode="default",
            allowed_tools=profile.allowed_tools,
            append_system_prompt=profile.system_prompt,
            api_environment=self._api,
        )
        ignore: Callable[[TaskProgress | TaskRateLimited], Any] = _ignore
        return await self._executor.run(job, ignore)


def _grants_no_network(tasks: Sequence[TaskSpec]) -> None:
    """A planner's plan may not let its tasks reach the network, nor start MCP servers:
    only a person's may.

    The planning agent reads the repository, which anyone may have written into; a plan
    it makes that opens a way out of the sandbox (or names a program for every agent to
    start) would let a planted instruction do that.

    Raises:
        GraphError: a task of the plan has ``network.allow`` entries or ``mcp_servers``.
    """
    for task in tasks:
        if task.mcp_servers:
            raise GraphError(
                f"task {task.task_id!r}: a planner's plan cannot name MCP servers; leave "
                "mcp_servers out (the person who submits a plan chooses them)"
            )
        if task.network.allow:
            raise GraphError(
                f"task {task.task_id!r}: a planner's plan cannot allow network "
                "destinations; leave network out (the person who submits a plan grants it)"
            )


async def _ignore(_: TaskProgress | TaskRateLimited) -> None:
    """Planning progress is not a task's; the run's events say when planning ends."""


# ----------------------------------------------------------------------------------------
# One interface for the strategies
# ----------------------------------------------------------------------------------------


class Planner(Protocol):
    """A planning strategy: the tasks of a submitted run, before validation."""

    async def tasks(self, submitted: RunSubmitted, repo: Path, base_commit: str) -> list[TaskSpec]:
        """Make the run's tasks from the repository at ``base_commit``.

        Raises:
            GraphError: no plan could be made; the message says why.
            WorkspaceError: git failed.
        """
        ...


class GivenPlan:
    """The tasks came with the run: inline, or read from a plan file by the client."""

    async def tasks(self, submitted: RunSubmitted, repo: Path, base_commit: str) -> list[TaskSpec]:
        """The submitted tasks as they are."""
        del repo, base_commit
        if submitted.plan is None:
            raise GraphError("the run was submitted without tasks")
        return list(submitted.plan)


class FanoutPlanner:
    """One task per matching file of the base commit."""

    async def tasks(self, submitted: RunSubmitted, repo: Path, base_commit: str) -> list[TaskSpec]:
        """See :func:`fanout_tasks`."""
        if submitted.fanout is None:
            raise GraphError("a fan-out run needs a glob and a prompt template")
        return await fanout_tasks(repo, base_commit, submitted.fanout, submitted.goal)


class ClaudeCodePlanner:
    """The Claude planner strategy: the :class:`PlanningAgent` in a throwaway checkout of
    the base commit.

    Args:
        executor: runs the planning agent.
        work_dir: where the checkout and the agent's private HOME go.
        api_environment: ANTHROPIC_* settings.
    """

    def __init__(self, executor: Executor, work_dir: Path, api_environment: dict[str, str]):
        self._executor = executor
        self._work_dir = work_dir
        self._api = api_environment

    async def tasks(self, submitted: RunSubmitted, repo: Path, base_commit: str) -> list[TaskSpec]:
        """Check out the base commit, ask the agent, remove the checkout."""
        return list(plan_to_specs(await self.plan_file(submitted, repo, base_commit)))

    async def plan_file(self, submitted: RunSubmitted, repo: Path, base_commit: str) -> PlanFile:
        """The agent's plan, sizes included (what ``run``'s preview shows).

        Raises:
            GraphError: no valid plan; names the last problem.
            WorkspaceError: git failed.
        """
        workspace = self._work_dir / "planner"
        if not (workspace / ".git").exists():
            await git(repo, "worktree", "add", "--quiet", "--detach", str(workspace), base_commit)
        try:
            planner = PlanningAgent(self._executor, self._work_dir / "planner-scratch", self._api)
            return await planner.plan_file(submitted, workspace)
        finally:
            await git(repo, "worktree", "remove", "--force", str(workspace))


def planner_for(
    submitted: RunSubmitted,
    *,
    executor: Executor | None,
    work_dir: Path,
    api_environment: dict[str, str],
) -> Planner:
    """The strategy the run asked for.

    Raises:
        GraphError: it asked for the Claude planner and this driver has no executor.
    """
    if submitted.plan is not None:
        return GivenPlan()
    if submitted.fanout is not None:
        return FanoutPlanner()
    if executor is None:
        raise GraphError("the Claude planner is not available in this driver")
    return ClaudeCodePlanner(executor, work_dir, api_environment)


def load_plan_file(path: Path, *, max_tasks: int = DEFAULT_MAX_TASKS) -> PlanFile:
    """Read a plan file (YAML, or JSON by its ``.json`` suffix) and check its shape.

    Raises:
        GraphError: the file is missing, does not parse, has YAML anchors or aliases, has
            more than ``max_tasks`` tasks, or does not fit the schema; the message names
            the file and, for a shape problem, the field.
    """
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise GraphError(f"{path}: cannot read the plan file ({exc.strerror})") from None
    return parse_plan_text(text, str(path), json_only=path.suffix == ".json", max_tasks=max_tasks)


class _PlanLoader(yaml.SafeLoader):
    """PyYAML's safe loader without anchors and aliases.

    An alias expands to a copy of what its anchor names, so a few lines of nested aliases
    (the "billion laughs") become billions of nodes. A plan has no use for them: refused,
    naming the line.
    """

    def compose_node(self, parent: yaml.Node | None, index: int) -> yaml.Node | None:
        event = self.peek_event()  # type: ignore[no-untyped-call]
        anchor = getattr(event, "anchor", None)
        if anchor is not None:
            sign = "*" if isinstance(event, yaml.AliasEvent) else "&"
            raise GraphError(
                f"line {event.start_mark.line + 1}: YAML anchors and aliases "
                f"({sign}{anchor}) are not allowed in a plan; write the values out"
            )
        return super().compose_node(parent, index)


def parse_plan_text(
    text: str, source: str, *, json_only: bool = False, max_tasks: int = DEFAULT_MAX_TASKS
) -> PlanFile:
    """A plan from its text (YAML, or JSON, which YAML also reads), checked as it is read.

    Every door that takes a plan's text goes through here: the CLI's plan files and the
    MCP ``submit_plan`` tool. The task count is checked before the tasks are converted.

    Raises:
        GraphError: the text does not parse, nests too deeply, has YAML anchors or
            aliases, has more than ``max_tasks`` tasks, or does not fit the schema.
    """
    try:
        # yaml.load with a SafeLoader subclass: safe_load cannot take our loader.
        data = json.loads(text) if json_only else yaml.load(text, Loader=_PlanLoader)  # noqa: S506
    except json.JSONDecodeError as exc:
        raise GraphError(f"{source}: not valid JSON: {exc.msg} at line {exc.lineno}") from None
    except yaml.YAMLError as exc:
        raise GraphError(f"{source}: not valid YAML: {_yaml_problem(exc)}") from None
    except GraphError as exc:
        raise GraphError(f"{source}: {exc}") from None
    except RecursionError:
        raise GraphError(f"{source}: the plan is nested too deeply to read") from None
    tasks = data.get("tasks") if isinstance(data, dict) else None
    if isinstance(tasks, list) and len(tasks) > max_tasks:
        raise GraphError(
            f"{source}: {len(tasks)} tasks, more than the limit of {max_tasks} per run"
        )
    return plan_from_data(data, source)


def _yaml_problem(exc: yaml.YAMLError) -> str:
    """PyYAML's multi-line message as one line: the problem and where it is."""
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
    if mark is not None:
        return f"{problem} at line {mark.line + 1}, column {mark.column + 1}"
    return str(problem)
