"""The ClaudeCluster MCP server: the cluster's front door for Claude Code and other MCP
clients, built with the official ``mcp`` SDK (``MCPServer``).

Every tool is a thin call on the shared :class:`~claudecluster.runtime.front_door.FrontDoor`
(the same service the HTTP gateway uses): reads come from its live projection, changes go
out as commands and wait for the driver's answer. Nothing here keeps cluster state.

Tools: ``run_goal``, ``submit_plan``, ``preview_plan`` (what a plan would do; starts
nothing), ``run_status``, ``task_status``, ``task_logs``,
``cancel``, ``list_workers``, ``rollback``. Resources: ``claudecluster://runs`` (every
run, one line each), ``claudecluster://runs/{run_id}`` (a run's status as JSON) and
``claudecluster://runs/{run_id}/report`` (a run's report in Markdown), each subscribable
(:mod:`claudecluster.mcp_server.run_changes`). Completions of run and task ids and the
prompts ``plan_goal``, ``summarise_run`` and ``why_task_failed``
(:mod:`claudecluster.mcp_server.for_people`). ``run_goal`` and ``submit_plan`` with
``wait`` follow the run and send MCP progress notifications (tasks finished out of tasks
planned) until it ends.

The same server runs over stdio (``claudecluster mcp``) and over streamable HTTP on the
gateway (:mod:`claudecluster.mcp_server.http_endpoint`).
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from importlib.metadata import PackageNotFoundError, version
from typing import Annotated, Any, Final, Protocol, TypeVar, get_args

import anyio
import mcp.types as mcp_types
from mcp.server.context import ServerRequestContext
from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ResourceError, ResourceNotFoundError, ToolError
from mcp.server.mcpserver.prompts.base import Message
from mcp.shared.exceptions import MCPError
from mcp.types.version import MODERN_PROTOCOL_VERSIONS
from pydantic import Field
from starlette.requests import Request

from claudecluster.auth import Principal, Scope, holds_scope
from claudecluster.domain.lifecycle import FINISHED_RUN_STATES, FINISHED_TASK_STATES
from claudecluster.errors import (
    ClusterError,
    GraphError,
    PermissionDeniedError,
    UnknownEntityError,
)
from claudecluster.events.model import (
    FanoutSpec,
    RunCancelled,
    TaskCancelled,
    TaskProgress,
    TaskSpec,
)
from claudecluster.events.plan import plan_to_specs
from claudecluster.events.subjects import run_filter
from claudecluster.mcp_server.for_people import (
    completion_for,
    plan_goal_prompt,
    summarise_run_prompt,
    why_failed_prompt,
)
from claudecluster.mcp_server.models import (
    NO_NUL,
    CancelResult,
    Goal,
    LogLine,
    PlanPreviewResult,
    RepoPath,
    RollbackResult,
    RunId,
    RunStatusResult,
    SubmittedResult,
    TaskLogsResult,
    TaskRef,
    TaskStatusResult,
    WorkersResult,
    preview_result,
    run_result,
    task_result,
    worker_result,
)
from claudecluster.mcp_server.run_changes import RUNS_URI, RunChanges, subscribable_run
from claudecluster.projections.tasks import progress_text
from claudecluster.reporting import render_markdown, run_record
from claudecluster.runtime.front_door import FrontDoor, submit_run_command
from claudecluster.runtime.plan_previews import PlanDrafter, pool_size, preview_submission
from claudecluster.runtime.planners import parse_plan_text
from claudecluster.transport.base import read_all

__all__ = [
    "LOG_LEVELS",
    "PRINCIPAL_STATE_KEY",
    "LogLevelBook",
    "ProcessLogLevel",
    "build_mcp_server",
]

SERVER_NAME: Final = "claudecluster"
LOG_LEVELS: Final[tuple[str, ...]] = get_args(mcp_types.LoggingLevel)
_MAX_WAIT_S: Final = 6 * 3600.0
#: The log lines a why_task_failed prompt carries (the end of the agent's output).
_PROMPT_LOG_LINES: Final = 40
_T = TypeVar("_T")
#: Where an HTTP request's :class:`~claudecluster.auth.Principal` travels to the tools (in
#: the ASGI scope's ``state``); absent on stdio and on an endpoint without tokens.
PRINCIPAL_STATE_KEY: Final = "claudecluster_principal"


def _require(ctx: Context[Any], needed: Scope) -> None:
    """Refuse the call unless the caller's token holds ``needed`` (as the gateway's routes
    do: ``submit`` to start or cancel, ``admin`` to roll back).

    Over stdio there is no token: the client is the user who started the server.
    """
    request = ctx.request_context.request
    state = request.scope.get("state", {}) if isinstance(request, Request) else {}
    principal = state.get(PRINCIPAL_STATE_KEY)
    if isinstance(principal, Principal) and not holds_scope(principal.scopes, needed):
        raise ToolError(str(PermissionDeniedError(needed, principal.scopes)))


def _client(ctx: Context[Any]) -> str:
    """Who calls (the token's subject; empty over stdio), to keep idempotency keys apart."""
    request = ctx.request_context.request
    state = request.scope.get("state", {}) if isinstance(request, Request) else {}
    principal = state.get(PRINCIPAL_STATE_KEY)
    return principal.subject if isinstance(principal, Principal) else ""


IdempotencyKey = Annotated[
    str,
    Field(
        max_length=200,
        pattern=r"^[!-~]*$",
        description="Your key for this submission: a retry with the same key (after a "
        "timeout, say) returns the same run instead of starting a second one.",
    ),
]


class LogLevelBook(Protocol):
    """Where the level a client chose with ``logging/setLevel`` is kept.

    Over stdio there is one client for the life of the process; over HTTP each session
    has its own level, kept with the session in KV so any endpoint honours it.
    """

    async def level(self, ctx: ServerRequestContext[Any, Any]) -> str:
        """The lowest level this request's client wants to receive."""
        ...

    async def set_level(self, ctx: ServerRequestContext[Any, Any], level: str) -> None:
        """Remember ``level`` for this request's client."""
        ...


class ProcessLogLevel:
    """One level for the whole process: the stdio server has exactly one client."""

    def __init__(self, level: str = "info") -> None:
        self._level = level

    async def level(self, ctx: ServerRequestContext[Any, Any]) -> str:
        """The level set last (``info`` until the client sets one)."""
        return self._level

    async def set_level(self, ctx: ServerRequestContext[Any, Any], level: str) -> None:
        """Remember ``level``."""
        self._level = level


async def _answer(call: Callable[[], Awaitable[_T]]) -> _T:
    """Run a front-door call; our own errors become tool errors with their one-line message.

    A ``ToolError`` is what the SDK turns into a result with ``isError: true``, which is
    how MCP tells a model that its call failed and why, so it can correct itself.
    """
    try:
        return await call()
    except ClusterError as exc:
        raise ToolError(str(exc)) from exc


def build_mcp_server(
    door: FrontDoor,
    *,
    default_repo: str,
    log_levels: LogLevelBook | None = None,
    drafter: PlanDrafter | None = None,
) -> MCPServer[Any]:
    """An MCP server whose tools and resources act on the cluster through ``door``.

    Args:
        door: the front door (live projection plus commands) of a connected cluster.
        default_repo: the repository a run works on when a tool call names none (the
            directory the server was started in, usually).
        log_levels: where ``logging/setLevel`` is remembered; one level for the process
            when None.
        drafter: the Claude planner ``preview_plan`` may run for a bare goal (a
            read-only, confined agent on this machine); None: it previews plans and
            fan-outs only.

    Returns:
        The server, ready for ``run_stdio_async`` or the streamable-HTTP endpoint.
    """
    levels = log_levels or ProcessLogLevel()
    changes = RunChanges(door)
    server: MCPServer[Any] = MCPServer(
        SERVER_NAME,
        title="ClaudeCluster",
        version=_version(),
        instructions=(
            "Run many Claude Code agents in parallel on one coding goal. Start a run with "
            "run_goal (a planner splits the goal) or submit_plan (your own task graph), "
            "then follow it with run_status, task_status and task_logs."
        ),
        log_level="WARNING",
        subscriptions=changes,
        lifespan=changes.serve,
    )

    async def log(ctx: Context[Any], level: mcp_types.LoggingLevel, text: str) -> None:
        """Send a log line on this request's stream if the client wants that level.

        Logging is a handshake-era capability (``logging/setLevel`` is gone from the
        2026-07-28 revision), so it is sent only on connections that negotiated one.
        """
        request = ctx.request_context
        if request.protocol_version in MODERN_PROTOCOL_VERSIONS:
            return
        wanted = await levels.level(request)
        if LOG_LEVELS.index(level) < LOG_LEVELS.index(wanted):
            return
        await request.session.send_notification(
            mcp_types.LoggingMessageNotification(
                params=mcp_types.LoggingMessageNotificationParams(
                    level=level, data=text, logger=SERVER_NAME
                )
            ),
            related_request_id=request.request_id,
        )

    async def follow(ctx: Context[Any], run_id: str, timeout_s: float) -> RunStatusResult:
        """Follow a run until it ends, reporting finished tasks as progress."""
        seen: dict[str, str] = {}
        with anyio.move_on_after(timeout_s):
            async with door.open_run_events(run_id) as events:
                async for stored in events:
                    await door.wait_caught_up(stored.seq)
                    run = door.run(run_id)
                    tasks = door.view.tasks_of(run_id)
                    finished = sum(1 for t in tasks if t.state in FINISHED_TASK_STATES)
                    for task in tasks:
                        if seen.get(task.task_id) != task.state.value:
                            seen[task.task_id] = task.state.value
                            await log(ctx, "info", f"{run_id}/{task.task_id}: {task.state.value}")
                    if not isinstance(stored.envelope.payload, TaskProgress):
                        await ctx.report_progress(
                            finished,
                            len(tasks) or None,
                            f"{run_id} {run.state.value}: {finished}/{len(tasks)} tasks finished",
                        )
                    if run.state in FINISHED_RUN_STATES:
                        break
        run = door.run(run_id)
        return run_result(run, door.view.tasks_of(run_id))

    def submission(
        ctx: Context[Any],
        goal: str,
        *,
        repo: str | None,
        source: str,
        budget_usd: float | None,
        max_parallel: int | None,
        idempotency_key: str,
        plan: tuple[TaskSpec, ...] | None = None,
    ) -> Callable[[], Awaitable[str]]:
        """What a submitting tool sends: the run (with ``plan``'s tasks, else for the
        Claude planner), through the front door; it answers with the run's id."""

        async def submit() -> str:
            command = submit_run_command(
                goal,
                repo=repo or default_repo,
                plan=plan,
                claude_planner=plan is None,
                budget_usd=budget_usd,
                max_parallel=max_parallel,
                source=source,
                now=datetime.now(UTC),
                max_tasks=door.max_tasks,
                idempotency_key=idempotency_key,
                client=_client(ctx),
            )
            return (await door.submit_run(command)).run_id

        return submit

    async def start(
        ctx: Context[Any],
        submit: Callable[[], Awaitable[str]],
        wait: bool,
        timeout_s: float,
    ) -> SubmittedResult:
        run_id = await _answer(submit)
        await log(ctx, "info", f"run {run_id} submitted")
        if not wait:
            return SubmittedResult(run_id=run_id, accepted=True)
        status = await _answer(lambda: follow(ctx, run_id, timeout_s))
        return SubmittedResult(run_id=run_id, accepted=True, status=status)

    @server.tool(
        annotations=mcp_types.ToolAnnotations(destructive_hint=False, open_world_hint=False)
    )
    async def run_goal(
        goal: Goal,
        ctx: Context[Any],
        repo: RepoPath | None = None,
        budget_usd: Annotated[float | None, Field(gt=0, description="Stop at this cost.")] = None,
        max_parallel: Annotated[int | None, Field(ge=1, le=1000)] = None,
        wait: Annotated[
            bool, Field(description="Follow the run until it ends, with progress.")
        ] = False,
        timeout_s: Annotated[float, Field(gt=0, le=_MAX_WAIT_S)] = 1800.0,
        idempotency_key: IdempotencyKey = "",
    ) -> SubmittedResult:
        """Start a run toward a goal; a Claude Code planner splits it into parallel tasks.

        Returns the run id at once, or with wait=true follows the run (sending progress
        notifications) and returns its final status.
        """
        _require(ctx, "submit")

        submit = submission(ctx, goal, repo=repo, source="tool run_goal", budget_usd=budget_usd,
                            max_parallel=max_parallel, idempotency_key=idempotency_key)  # fmt: skip
        return await start(ctx, submit, wait, timeout_s)

    @server.tool(
        annotations=mcp_types.ToolAnnotations(destructive_hint=False, open_world_hint=False)
    )
    async def submit_plan(
        plan: Annotated[
            str,
            Field(
                min_length=1,
                pattern=NO_NUL,
                description=(
                    "A plan file's text, YAML or JSON: {goal, network, tasks: [{id, prompt, "
                    "depends_on, files, kind, executor, limits, network}]}; network is "
                    "{allow: [host:port, ...]}, what tasks may reach besides the model API."
                ),
            ),
        ],
        ctx: Context[Any],
        repo: RepoPath | None = None,
        goal: Annotated[str, Field(pattern=NO_NUL, description="Overrides the plan's goal.")] = "",
        budget_usd: Annotated[float | None, Field(gt=0)] = None,
        max_parallel: Annotated[int | None, Field(ge=1, le=1000)] = None,
        wait: bool = False,
        timeout_s: Annotated[float, Field(gt=0, le=_MAX_WAIT_S)] = 1800.0,
        idempotency_key: IdempotencyKey = "",
    ) -> SubmittedResult:
        """Start a run from your own task graph (a plan), without a planner.

        Returns the run id at once, or with wait=true follows the run (sending progress
        notifications) and returns its final status.
        """
        _require(ctx, "submit")
        try:
            # Off the event loop: a large plan takes a while to parse, and every other
            # session of this server waits for the loop meanwhile.
            parsed = await anyio.to_thread.run_sync(
                functools.partial(parse_plan_text, plan, "plan", max_tasks=door.max_tasks)
            )
        except GraphError as exc:
            raise ToolError(str(exc)) from None

        submit = submission(ctx, goal or parsed.goal or "run the plan", repo=repo,
                            source="tool submit_plan", budget_usd=budget_usd,
                            max_parallel=max_parallel, idempotency_key=idempotency_key,
                            plan=plan_to_specs(parsed))  # fmt: skip
        return await start(ctx, submit, wait, timeout_s)

    @server.tool(annotations=mcp_types.ToolAnnotations(read_only_hint=True, open_world_hint=False))
    async def preview_plan(
        ctx: Context[Any],
        goal: Annotated[
            str, Field(max_length=20_000, pattern=NO_NUL, description="What the run is for.")
        ] = "",
        plan: Annotated[
            str,
            Field(
                pattern=NO_NUL,
                description="A plan file's text (YAML or JSON), as submit_plan takes it; "
                "empty: none.",
            ),
        ] = "",
        fanout_glob: Annotated[
            str, Field(max_length=1000, pattern=NO_NUL, description="Files to fan out over.")
        ] = "",
        fanout_prompt: Annotated[
            str,
            Field(
                max_length=20_000,
                pattern=NO_NUL,
                description="The fan-out's prompt template ({path}, {stem}, {goal}).",
            ),
        ] = "",
        claude_planner: Annotated[
            bool, Field(description="Plan the goal with the Claude planner first.")
        ] = False,
        repo: RepoPath | None = None,
        workers: Annotated[
            int | None, Field(ge=1, le=10_000, description="Default: the pool's slots now.")
        ] = None,
        budget_usd: Annotated[float | None, Field(gt=0)] = None,
    ) -> PlanPreviewResult:
        """Show what a run would do, without starting it: tasks, dependencies, predicted
        overlaps, limits and budget, and an estimate of time and cost on the pool.

        Give exactly one of plan, fanout_glob with fanout_prompt, or claude_planner with
        a goal. Submit the result's plan with submit_plan to run it.
        """
        _require(ctx, "submit")  # the planner costs what planning costs
        if bool(fanout_glob) != bool(fanout_prompt):
            raise ToolError("preview_plan: a fan-out needs both fanout_glob and fanout_prompt")
        try:
            parsed = (
                await anyio.to_thread.run_sync(
                    functools.partial(parse_plan_text, plan, "plan", max_tasks=door.max_tasks)
                )
                if plan
                else None
            )
        except GraphError as exc:
            raise ToolError(str(exc)) from None

        async def make() -> PlanPreviewResult:
            preview = await preview_submission(
                goal,
                repo=repo or default_repo,
                plan=parsed,
                fanout=FanoutSpec(glob=fanout_glob, prompt_template=fanout_prompt)
                if fanout_glob
                else None,
                claude_planner=claude_planner,
                drafter=drafter,
                workers=workers or pool_size(door.workers()),
                budget_usd=budget_usd,
                max_tasks=door.max_tasks,
                source="tool preview_plan",
                now=datetime.now(UTC),
            )
            return preview_result(preview)

        return await _answer(make)

    @server.tool(annotations=mcp_types.ToolAnnotations(read_only_hint=True))
    async def run_status(run_id: RunId) -> RunStatusResult:
        """The status of one run: its state, branch and every task."""

        async def read() -> RunStatusResult:
            return run_result(door.run(run_id), door.view.tasks_of(run_id))

        return await _answer(read)

    @server.tool(annotations=mcp_types.ToolAnnotations(read_only_hint=True))
    async def task_status(task: TaskRef) -> TaskStatusResult:
        """The status of one task: state, attempt, worker, cost and failure."""

        async def read() -> TaskStatusResult:
            return task_result(door.task(task))

        return await _answer(read)

    @server.tool(annotations=mcp_types.ToolAnnotations(read_only_hint=True))
    async def task_logs(
        task: TaskRef,
        limit: Annotated[int, Field(ge=1, le=1000, description="At most this many lines.")] = 100,
    ) -> TaskLogsResult:
        """The latest output lines of one task's agent, oldest first."""

        async def read() -> TaskLogsResult:
            found = door.task(task)
            lines = [
                LogLine(
                    seq=stored.seq,
                    attempt=event.attempt,
                    at=stored.envelope.occurred_at,
                    text=f"[{event.kind}] {event.tool + ': ' if event.tool else ''}"
                    f"{progress_text(event)}",
                )
                for stored in await door.task_events(f"{found.run_id}/{found.task_id}")
                if isinstance(event := stored.envelope.payload, TaskProgress)
            ]
            return TaskLogsResult(
                run_id=found.run_id,
                task_id=found.task_id,
                state=found.state.value,
                lines=lines[-limit:],
                truncated=len(lines) > limit,
            )

        return await _answer(read)

    @server.tool(annotations=mcp_types.ToolAnnotations(destructive_hint=True))
    async def cancel(
        target: TaskRef,
        ctx: Context[Any],
        reason: Annotated[str, Field(max_length=2000, pattern=NO_NUL)] = "",
    ) -> CancelResult:
        """Cancel a run (by run id), or one task (RUN/TASK); a task's dependents are skipped."""
        _require(ctx, "submit")

        async def ask() -> CancelResult:
            event = await door.cancel(target, reason=reason)
            outcome = (
                "run.cancelled"
                if isinstance(event, RunCancelled)
                else "task.cancelled"
                if isinstance(event, TaskCancelled)
                else "task.skipped"
            )
            return CancelResult(
                target=target, outcome=outcome, reason=getattr(event, "reason", "") or reason
            )

        return await _answer(ask)

    @server.tool(annotations=mcp_types.ToolAnnotations(read_only_hint=True))
    async def list_workers() -> WorkersResult:
        """Every worker the cluster knows: pool, state, free slots and running tasks."""
        return WorkersResult(workers=[worker_result(w) for w in door.workers()])

    @server.tool(annotations=mcp_types.ToolAnnotations(destructive_hint=True))
    async def rollback(
        run_id: RunId,
        ctx: Context[Any],
        to_task: Annotated[
            str | None, Field(description="Go back to before this task merged.")
        ] = None,
        to_sequence: Annotated[
            int | None, Field(ge=0, description="Go back to this event sequence number.")
        ] = None,
    ) -> RollbackResult:
        """Move a finished run's branch back: before a task merged, to a log sequence, or
        (neither given) to the run's base commit."""
        _require(ctx, "admin")
        if to_task is not None and to_sequence is not None:
            raise ToolError("rollback: give to_task or to_sequence, not both")

        async def ask() -> RollbackResult:
            event = await door.rollback(run_id, to_task=to_task, to_sequence=to_sequence)
            return RollbackResult(
                run_id=run_id, to_commit=event.to_commit, reverted_tasks=list(event.reverted_tasks)
            )

        return await _answer(ask)

    @server.resource(
        "claudecluster://runs",
        name="runs",
        title="Runs",
        description="Every run, one line each: id, state, tasks finished, goal.",
        mime_type="text/plain",
    )
    async def runs() -> str:
        lines = []
        for run in door.runs():
            tasks = door.view.tasks_of(run.run_id)
            done = sum(1 for t in tasks if t.state in FINISHED_TASK_STATES)
            lines.append(f"{run.run_id}\t{run.state.value}\t{done}/{len(tasks)}\t{run.goal}")
        return "\n".join(lines) + "\n" if lines else "no runs yet\n"

    @server.resource(
        "claudecluster://runs/{run_id}/report",
        name="run-report",
        title="Run report",
        description="A run's report in Markdown: tasks, attempts, problems, cost.",
        mime_type="text/markdown",
    )
    async def report(run_id: str) -> str:
        try:
            door.run(run_id)
        except UnknownEntityError as exc:
            raise ResourceNotFoundError(str(exc)) from exc
        except ClusterError as exc:
            raise ResourceError(str(exc)) from exc
        stored = await read_all(door.connection.log, subjects=run_filter(run_id))
        return render_markdown(run_record(door.view, stored, run_id))

    @server.resource(
        "claudecluster://runs/{run_id}",
        name="run",
        title="Run",
        description="A run's status as JSON: state, branch, counts, every task. Subscribe "
        "to it to be told when it changes.",
        mime_type="application/json",
    )
    async def run_resource(run_id: str) -> str:
        try:
            return run_result(door.run(run_id), door.view.tasks_of(run_id)).model_dump_json()
        except UnknownEntityError as exc:
            raise ResourceNotFoundError(str(exc)) from exc
        except ClusterError as exc:
            raise ResourceError(str(exc)) from exc

    def subscribed_uri(uri: str) -> str:
        run_id = subscribable_run(uri)
        if run_id is None:
            raise MCPError(
                mcp_types.INVALID_PARAMS,
                f"{uri} cannot be subscribed to; subscribe to {RUNS_URI}, "
                f"{RUNS_URI}/RUN or {RUNS_URI}/RUN/report",
            )
        if run_id:
            try:
                door.run(run_id)
            except ClusterError as exc:
                raise MCPError(mcp_types.INVALID_PARAMS, str(exc)) from exc
        return uri

    async def subscribe(
        ctx: ServerRequestContext[Any, Any], params: mcp_types.SubscribeRequestParams
    ) -> mcp_types.EmptyResult:
        uri = subscribed_uri(str(params.uri))
        if isinstance(ctx.request, Request):
            # The streamable-HTTP endpoint is stateless: no session outlives this request
            # to carry the updates. A listen stream is the response that carries them.
            raise MCPError(
                mcp_types.INVALID_REQUEST,
                "resources/subscribe needs a session that lasts (stdio); over HTTP, "
                "open subscriptions/listen with resourceSubscriptions (protocol 2026-07-28)",
            )
        changes.add(ctx.session, uri)
        return mcp_types.EmptyResult()

    async def unsubscribe(
        ctx: ServerRequestContext[Any, Any], params: mcp_types.UnsubscribeRequestParams
    ) -> mcp_types.EmptyResult:
        changes.remove(ctx.session, str(params.uri))
        return mcp_types.EmptyResult()

    # The handshake era's resources/subscribe (2026-07-28 clients use subscriptions/listen,
    # which MCPServer serves from ``changes`` as its bus); registering the handler is also
    # what advertises resources.subscribe to handshake clients.
    server._lowlevel_server.add_request_handler(
        "resources/subscribe", mcp_types.SubscribeRequestParams, subscribe
    )
    server._lowlevel_server.add_request_handler(
        "resources/unsubscribe", mcp_types.UnsubscribeRequestParams, unsubscribe
    )

    async def complete(
        ctx: ServerRequestContext[Any, Any], params: mcp_types.CompleteRequestParams
    ) -> mcp_types.CompleteResult:
        given = dict(params.context.arguments or {}) if params.context is not None else {}
        found = completion_for(door, params.argument.name, params.argument.value, given)
        return mcp_types.CompleteResult(completion=found or mcp_types.Completion(values=[]))

    # MCPServer's completion decorator is untyped; the low-level handler is the same
    # registration (and advertises the completions capability).
    server._lowlevel_server.add_request_handler(
        "completion/complete", mcp_types.CompleteRequestParams, complete
    )

    @server.prompt(
        name="plan_goal",
        title="Plan this goal",
        description="Preview a plan for a goal, show it, and start it only when you agree.",
    )
    def plan_goal(
        goal: Annotated[str, Field(min_length=1, max_length=20_000, pattern=NO_NUL)],
    ) -> str:
        return plan_goal_prompt(goal)

    @server.prompt(
        name="summarise_run",
        title="Summarise this run",
        description="Summarise a run from its report: what merged, what failed, the cost.",
    )
    async def summarise_run(run_id: RunId) -> list[Message]:
        try:
            door.run(run_id)
        except ClusterError as exc:
            raise ValueError(str(exc)) from exc
        stored = await read_all(door.connection.log, subjects=run_filter(run_id))
        return summarise_run_prompt(run_id, render_markdown(run_record(door.view, stored, run_id)))

    @server.prompt(
        name="why_task_failed",
        title="Why did this task fail",
        description="Explain a task's failure from its status and its last log lines.",
    )
    async def why_task_failed(task: TaskRef) -> list[Message]:
        try:
            found = door.task(task)
            events = await door.task_events(f"{found.run_id}/{found.task_id}")
        except ClusterError as exc:
            raise ValueError(str(exc)) from exc
        lines = [
            f"[{event.kind}] {event.tool + ': ' if event.tool else ''}{event.text}"
            for stored in events
            if isinstance(event := stored.envelope.payload, TaskProgress)
        ]
        return why_failed_prompt(task_result(found), lines[-_PROMPT_LOG_LINES:])

    async def set_level(
        ctx: ServerRequestContext[Any, Any], params: mcp_types.SetLevelRequestParams
    ) -> mcp_types.EmptyResult:
        await levels.set_level(ctx, params.level)
        return mcp_types.EmptyResult()

    # MCPServer has no decorator for logging/setLevel; the low-level server takes the
    # handler and then advertises the logging capability for handshake-era clients.
    server._lowlevel_server.add_request_handler(
        "logging/setLevel", mcp_types.SetLevelRequestParams, set_level
    )
    return server


def _version() -> str:
    try:
        return version("claudecluster")
    except PackageNotFoundError:  # pragma: no cover - a source tree without metadata
        return "0"
