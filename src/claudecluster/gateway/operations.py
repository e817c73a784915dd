"""The gateway's operations: one table, from which the routes and the OpenAPI document
are both built, so they cannot disagree.

Every HTTP operation is a row of :data:`OPERATIONS` (method, path, the scope it needs,
its request and response types, and the handler that answers). A handler gets the
request, the front door and the decoded body (:class:`Call`), and either answers or
raises a :class:`~claudecluster.gateway.problems.Problem` or an error of ours, which the
wiring (:mod:`claudecluster.gateway.app`) turns into problem details. The gateway holds no
task state: it publishes commands and reads the
:class:`~claudecluster.runtime.front_door.FrontDoor`'s view.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final

from prometheus_client import CollectorRegistry, generate_latest
from starlette.requests import Request
from starlette.responses import Response
from starlette.websockets import WebSocket

from claudecluster.auth import Principal, Scope
from claudecluster.domain.preview import PlanPreview
from claudecluster.events.envelope import StoredEvent
from claudecluster.events.model import ID_PATTERN, TaskProgress, TaskSpec
from claudecluster.events.plan import PlanFile, named_tasks, plan_to_specs
from claudecluster.gateway.problems import JSON, invalid, json_response, query_id
from claudecluster.gateway.schemas import (
    CancelBody,
    CancelledBody,
    HealthBody,
    LogLine,
    LogsBody,
    PreviewPlanBody,
    RollbackBody,
    RolledBackBody,
    RunDetailBody,
    RunsBody,
    SubmissionBody,
    SubmitRunBody,
    SubmitTaskBody,
    WorkersBody,
)
from claudecluster.projections.tasks import progress_text
from claudecluster.projections.views import TaskView
from claudecluster.runtime.front_door import FrontDoor, submit_run_command
from claudecluster.runtime.plan_previews import PlanDrafter, pool_size, preview_submission

__all__ = ["OPERATIONS", "Call", "Handler", "Operation", "Param", "door_of"]


@dataclass(frozen=True, slots=True)
class Param:
    """A path or query parameter of an operation."""

    name: str
    where: str  # "path", "query" or "header"
    schema: dict[str, Any]
    description: str
    required: bool = True


@dataclass(frozen=True, slots=True)
class Call:
    """What a handler gets: the request, the front door and the decoded body."""

    request: Request
    door: FrontDoor
    principal: Principal | None
    body: Any


Handler = Callable[[Call], Awaitable[Response]]


@dataclass(frozen=True, slots=True)
class Operation:
    """One HTTP operation of the gateway (a row of the table the routes and the OpenAPI
    document are built from).

    Attributes:
        method: HTTP method.
        path: starlette path template (``/runs/{run_id}``), also the OpenAPI path.
        operation_id: the OpenAPI operationId.
        summary: one line for the document.
        scope: the least scope needed, or None for no authentication.
        status: the success status.
        response: the success body type (None: see ``media_type``).
        media_type: the success body's media type.
        request: the request body type, if any.
        body_required: whether the request body must be present.
        params: path and query parameters.
        errors: the error statuses the operation can answer.
        handler: the coroutine that answers.
    """

    method: str
    path: str
    operation_id: str
    summary: str
    scope: Scope | None
    status: int
    response: type[Any] | None
    handler: Handler
    media_type: str = JSON
    request: type[Any] | None = None
    body_required: bool = True
    params: tuple[Param, ...] = ()
    errors: tuple[int, ...] = ()


def door_of(request: Request | WebSocket) -> FrontDoor:
    door: FrontDoor = request.app.state.door
    return door


# -- handlers --------------------------------------------------------------------------


async def _health(call: Call) -> Response:
    return json_response(HealthBody(last_seq=call.door.view.last_seq))


async def _openapi(call: Call) -> Response:
    # The document is built from this table (gateway/openapi.py), so the application
    # hands it over (create_app) rather than this module importing what imports it.
    document: dict[str, Any] = call.request.app.state.openapi
    return json_response(document)


def _submitted(request: Request, submission: Any, task_id: str | None = None) -> Response:
    run_id = submission.run_id
    base = str(request.base_url).rstrip("/")
    ws_base = re.sub(r"^http", "ws", base)
    body = SubmissionBody(
        run_id=run_id,
        command_id=submission.command_id,
        command_seq=submission.command_seq,
        task_id=task_id,
        status_url=f"{base}/runs/{run_id}",
        events_url=f"{ws_base}/runs/{run_id}/events",
    )
    return json_response(body, 202, {"Location": f"/runs/{run_id}"})


def _idempotency_key(call: Call) -> str:
    """The ``Idempotency-Key`` header: a retry with the same key is the same run."""
    return call.request.headers.get("idempotency-key", "")


def _client(call: Call) -> str:
    """Who calls (the token's subject), so two clients' idempotency keys never meet."""
    return call.principal.subject if call.principal is not None else ""


async def _submit_run(call: Call) -> Response:
    body: SubmitRunBody = call.body
    # The same field names as a plan file: id or task_id, title optional.
    plan = (plan_to_specs(PlanFile(tasks=named_tasks(body.plan, "plan")))
            if body.plan is not None else None)  # fmt: skip
    command = submit_run_command(
        body.goal, repo=body.repo, plan=plan, fanout=body.fanout,
        claude_planner=body.claude_planner, run_id=body.run_id, budget_usd=body.budget_usd,
        max_parallel=body.max_parallel, policy=body.policy, now=datetime.now(UTC),
        idempotency_key=_idempotency_key(call), client=_client(call),
    )  # fmt: skip
    submission = await call.door.submit_run(command)
    return _submitted(call.request, submission)


async def _preview_plan(call: Call) -> Response:
    body: PreviewPlanBody = call.body
    # The planner the gateway may run for a bare goal (create_app's), if it was given one.
    drafter: PlanDrafter | None = getattr(call.request.app.state, "drafter", None)
    preview = await preview_submission(
        body.goal, repo=body.repo or "", plan=body.plan, fanout=body.fanout,
        claude_planner=body.claude_planner, drafter=drafter,
        workers=body.workers or pool_size(call.door.workers()), budget_usd=body.budget_usd,
        policy=body.policy, max_tasks=call.door.max_tasks, source="request",
        now=datetime.now(UTC),
    )  # fmt: skip
    return json_response(preview)


async def _submit_task(call: Call) -> Response:
    body: SubmitTaskBody = call.body
    spec_fields: dict[str, Any] = {
        "task_id": body.task_id, "title": body.title or body.prompt[:80], "prompt": body.prompt,
        "kind": body.kind, "executor": body.executor,
    }  # fmt: skip
    if body.limits is not None:
        spec_fields["limits"] = body.limits
    command = submit_run_command(
        spec_fields["title"], repo=body.repo, plan=[TaskSpec(**spec_fields)],
        run_id=body.run_id, policy=body.policy, now=datetime.now(UTC),
        idempotency_key=_idempotency_key(call), client=_client(call),
    )  # fmt: skip
    submission = await call.door.submit_run(command)
    return _submitted(call.request, submission, task_id=body.task_id)


async def _list_runs(call: Call) -> Response:
    return json_response(RunsBody(runs=call.door.runs(), last_seq=call.door.view.last_seq))


async def _get_run(call: Call) -> Response:
    door = call.door
    run = door.run(call.request.path_params["run_id"])
    view = door.view
    body = RunDetailBody(run=run, tasks=view.tasks_of(run.run_id),
                         cost=view.costs.get(run.run_id), last_seq=view.last_seq)  # fmt: skip
    return json_response(body)


async def _cancel_run(call: Call) -> Response:
    body: CancelBody = call.body
    event = await call.door.cancel_run(call.request.path_params["run_id"], reason=body.reason)
    return json_response(
        CancelledBody(event="run.cancelled", run_id=event.run_id, reason=event.reason)
    )


async def _rollback_run(call: Call) -> Response:
    body: RollbackBody = call.body
    if body.to_task is not None and body.to_sequence is not None:
        raise invalid("$.to_task", "give to_task or to_sequence, not both")
    event = await call.door.rollback(
        call.request.path_params["run_id"], to_task=body.to_task, to_sequence=body.to_sequence
    )
    return json_response(RolledBackBody(run_id=event.run_id, to_commit=event.to_commit,
                                reverted_tasks=list(event.reverted_tasks)))  # fmt: skip


def _task_ref(request: Request) -> str:
    task_id = request.path_params["task_id"]
    run_id = query_id(request, "run_id")
    return f"{run_id}/{task_id}" if run_id else task_id


async def _get_task(call: Call) -> Response:
    return json_response(call.door.task(_task_ref(call.request)))


async def _task_logs(call: Call) -> Response:
    task = call.door.task(_task_ref(call.request))
    events = await call.door.task_events(f"{task.run_id}/{task.task_id}")
    lines = [_log_line(stored) for stored in events]
    return json_response(LogsBody(run_id=task.run_id, task_id=task.task_id, lines=lines))


async def _cancel_task(call: Call) -> Response:
    body: CancelBody = call.body
    task = call.door.task(_task_ref(call.request))
    event = await call.door.cancel_task(task.run_id, task.task_id, reason=body.reason)
    tag = str(type(event).__struct_config__.tag)
    return json_response(CancelledBody(event=tag, run_id=event.run_id, task_id=event.task_id,
                               reason=event.reason))  # fmt: skip


async def _workers(call: Call) -> Response:
    return json_response(WorkersBody(workers=call.door.workers()))


async def _metrics(call: Call) -> Response:
    registry: CollectorRegistry = call.request.app.state.metrics.registry
    return Response(generate_latest(registry), media_type="text/plain; version=0.0.4")


def _log_line(stored: StoredEvent) -> LogLine:
    """A task event as one line of its log: what the agent said or did, or what happened."""
    event = stored.envelope.payload
    tag = str(type(event).__struct_config__.tag)
    at = stored.envelope.occurred_at.isoformat()
    attempt = getattr(event, "attempt", None)
    if isinstance(event, TaskProgress):
        return LogLine(seq=stored.seq, occurred_at=at, type=tag, attempt=attempt,
                       kind=event.kind, tool=event.tool, text=progress_text(event))  # fmt: skip
    parts = [str(getattr(event, name)) for name in ("reason", "summary", "commit")
             if getattr(event, name, "")]  # fmt: skip
    return LogLine(seq=stored.seq, occurred_at=at, type=tag, attempt=attempt,
                   text="; ".join(parts))  # fmt: skip


# -- the operation table ---------------------------------------------------------------

_RUN_ID = Param("run_id", "path", {"type": "string"}, "The run's id.")
_TASK_ID = Param("task_id", "path", {"type": "string"}, "The task's id (unique, or with run_id).")
_IDEMPOTENCY_KEY = Param(
    "Idempotency-Key", "header", {"type": "string", "maxLength": 200, "pattern": "^[!-~]*$"},
    "Your key for this submission: a retry with the same key is answered with the same run "
    "(printable ASCII, at most 200 characters).", required=False,
)  # fmt: skip
_RUN_QUERY = Param(
    "run_id", "query", {"type": "string", "pattern": ID_PATTERN},
    "The task's run, when several runs have this task id.", required=False,
)  # fmt: skip
_READ_ERRORS = (401, 403, 404)
_COMMAND_ERRORS = (400, 401, 403, 404, 409, 422, 503)

OPERATIONS: Final[tuple[Operation, ...]] = (
    Operation("GET", "/health", "health", "Liveness: the gateway is up and following the log.",
              None, 200, HealthBody, _health),
    Operation("GET", "/openapi.json", "openapi", "This OpenAPI document.", "read", 200, None,
              _openapi, errors=(401, 403)),
    Operation("POST", "/runs", "submitRun", "Submit a run: a goal and a plan, a fan-out or the "
              "Claude planner. Answers once the driver recorded it.", "submit", 202,
              SubmissionBody, _submit_run, request=SubmitRunBody, params=(_IDEMPOTENCY_KEY,),
              errors=(400, 401, 403, 409, 413, 422, 503)),
    Operation("POST", "/plans/preview", "previewPlan", "What a run would do, without starting "
              "it: tasks, dependencies, predicted overlaps, limits and budget, and an estimate "
              "of time and cost on the pool.", "submit", 200, PlanPreview, _preview_plan,
              request=PreviewPlanBody, errors=(400, 401, 403, 413, 422)),
    Operation("GET", "/runs", "listRuns", "Every run, oldest first.", "read", 200, RunsBody,
              _list_runs, errors=(401, 403)),
    Operation("GET", "/runs/{run_id}", "getRun", "One run with its tasks and spend.", "read",
              200, RunDetailBody, _get_run, params=(_RUN_ID,), errors=_READ_ERRORS),
    Operation("DELETE", "/runs/{run_id}", "cancelRun", "Cancel a run; answers with the "
              "driver's run.cancelled.", "submit", 200, CancelledBody, _cancel_run,
              request=CancelBody, body_required=False, params=(_RUN_ID,), errors=_COMMAND_ERRORS),
    Operation("POST", "/runs/{run_id}/rollback", "rollbackRun", "Move a finished run's branch "
              "back (to before a task merged, to a log sequence, or to its base).", "admin",
              200, RolledBackBody, _rollback_run, request=RollbackBody, body_required=False,
              params=(_RUN_ID,), errors=_COMMAND_ERRORS),
    Operation("POST", "/tasks", "submitTask", "Submit a single task (a run of one task).",
              "submit", 202, SubmissionBody, _submit_task, request=SubmitTaskBody,
              params=(_IDEMPOTENCY_KEY,), errors=(400, 401, 403, 409, 413, 422, 503)),
    Operation("GET", "/tasks/{task_id}", "getTask", "One task: state, attempt, timings, spend.",
              "read", 200, TaskView, _get_task, params=(_TASK_ID, _RUN_QUERY),
              errors=(*_READ_ERRORS, 422)),
    Operation("GET", "/tasks/{task_id}/logs", "getTaskLogs", "A task's log: what its agent "
              "said and did, and what happened to it.", "read", 200, LogsBody, _task_logs,
              params=(_TASK_ID, _RUN_QUERY), errors=(*_READ_ERRORS, 422, 503)),
    Operation("DELETE", "/tasks/{task_id}", "cancelTask", "Cancel one task (its dependents are "
              "skipped).", "submit", 200, CancelledBody, _cancel_task, request=CancelBody,
              body_required=False, params=(_TASK_ID, _RUN_QUERY), errors=_COMMAND_ERRORS),
    Operation("GET", "/workers", "listWorkers", "Every worker the log knows.", "read", 200,
              WorkersBody, _workers, errors=(401, 403)),
    Operation("GET", "/metrics", "metrics", "Prometheus metrics of the gateway and the "
              "cluster.", "read", 200, None, _metrics, media_type="text/plain",
              errors=(401, 403)),
)  # fmt: skip
