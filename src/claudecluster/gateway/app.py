"""The gateway's ASGI application: one table of operations, starlette routes built from it.

Every HTTP operation is a row of :data:`OPERATIONS` (method, path, the scope it needs,
its request and response types). The starlette routes and the OpenAPI document
(:mod:`claudecluster.gateway.openapi`) are both built from that table, so they cannot
disagree. The gateway holds no task state: it publishes commands and reads the
:class:`~claudecluster.runtime.front_door.FrontDoor`'s view.

Errors are RFC 9457 problem details. Whose fault it is decides the status: bad input is
400 (not JSON) or 422 (naming the field), an unknown id 404, a refusal by the driver 409,
a missing or invalid token 401, a missing scope 403; only the infrastructure (no driver,
NATS away) answers 503. Bad input never causes a 5xx.
"""

from __future__ import annotations

import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from contextlib import AbstractAsyncContextManager, AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final

import anyio
import msgspec
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

from claudecluster.auth import Principal, Scope, TokenVerifier, authenticate
from claudecluster.errors import (
    AuthenticationError,
    ClusterError,
    CommandRefusedError,
    ConfigError,
    GraphError,
    InvalidIdError,
    LocalError,
    PermissionDeniedError,
    RemoteError,
    UnknownEntityError,
)
from claudecluster.events.envelope import StoredEvent
from claudecluster.events.model import ID_PATTERN, TaskProgress, TaskSpec, is_id
from claudecluster.gateway.schemas import (
    CancelBody,
    CancelledBody,
    HealthBody,
    LogLine,
    LogsBody,
    ProblemBody,
    ProblemField,
    RollbackBody,
    RolledBackBody,
    RunDetailBody,
    RunsBody,
    SubmissionBody,
    SubmitRunBody,
    SubmitTaskBody,
    WorkersBody,
)
from claudecluster.observability.logging import get_logger
from claudecluster.projections.views import TaskView
from claudecluster.runtime.front_door import FrontDoor, submit_run_command

__all__ = ["OPERATIONS", "Operation", "Param", "create_app"]

_log = get_logger(__name__)
_JSON: Final = "application/json"
_PROBLEM: Final = "application/problem+json"
_AT = re.compile(r" - at `(?P<path>[^`]*)`$")
_NAMED = re.compile(r"(?:missing required|unknown) field `(?P<name>[^`]*)`")
_REGEX = re.compile(r"Expected `str` matching regex .*")
# What a pattern asks for, in words, by the field it guards: a regex is no help to a user.
_PATTERN_MEANS = {
    "repo": "expected an absolute path on the driver's machine or a git URL, "
    "without control characters",
    "run_id": "expected letters, digits, '-' and '_', starting with a letter or digit, at most 64",
    "task_id": "expected letters, digits, '-' and '_', starting with a letter or digit, at most 64",
}
#: WebSocket close codes: 4000 + the HTTP status the same problem would have.
WS_CLOSE_BASE: Final = 4000


@dataclass(frozen=True, slots=True)
class Param:
    """A path or query parameter of an operation."""

    name: str
    where: str  # "path", "query" or "header"
    schema: dict[str, Any]
    description: str
    required: bool = True


class _Problem(Exception):  # noqa: N818 - carried to the error response, not raised out
    """An answer that is an error: status, title, detail and the fields at fault."""

    def __init__(
        self, status: int, title: str, detail: str, errors: Sequence[ProblemField] = ()
    ) -> None:
        self.status = status
        self.title = title
        self.detail = detail
        self.errors = list(errors)
        super().__init__(detail)


@dataclass(frozen=True, slots=True)
class _Call:
    """What a handler gets: the request, the front door and the decoded body."""

    request: Request
    door: FrontDoor
    principal: Principal | None
    body: Any


Handler = Callable[[_Call], Awaitable[Response]]


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
    media_type: str = _JSON
    request: type[Any] | None = None
    body_required: bool = True
    params: tuple[Param, ...] = ()
    errors: tuple[int, ...] = ()


# -- encoding and decoding -------------------------------------------------------------


def _json(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(msgspec.json.encode(body), status_code=status, media_type=_JSON,
                    headers=headers)  # fmt: skip


def _problem_response(problem: _Problem, headers: dict[str, str] | None = None) -> Response:
    body = ProblemBody(
        title=problem.title, status=problem.status, detail=problem.detail, errors=problem.errors
    )
    return Response(msgspec.json.encode(body), status_code=problem.status, media_type=_PROBLEM,
                    headers=headers)  # fmt: skip


def _invalid(field: str, problem: str) -> _Problem:
    return _Problem(422, "Unprocessable Content", f"{field}: {problem}",
                    [ProblemField(field=field, problem=problem)])  # fmt: skip


#: The default cap on a request body (``gateway.max_body_bytes``).
DEFAULT_MAX_BODY_BYTES: Final = 4 * 1024 * 1024


async def _read_body(request: Request, limit: int) -> bytes:
    """The body, read no further than ``limit`` bytes: past it, a 413 problem.

    A declared ``Content-Length`` over the limit is refused before anything is read; a
    body without one (chunked) is refused as soon as what arrived passes the limit.
    """
    too_large = _Problem(
        413, "Content Too Large", f"the request body is larger than the limit of {limit} bytes"
    )
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise too_large
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise too_large
        chunks.append(chunk)
    return b"".join(chunks)


def _decode(data: bytes, kind: type[Any], *, required: bool) -> Any:
    """The request body as ``kind``; a problem naming the field when it is not one."""
    if not data.strip():
        if required:
            raise _invalid("$", "a JSON body is required")
        return msgspec.convert({}, kind)
    try:
        decoded = msgspec.json.decode(data, type=kind)
    except msgspec.ValidationError as exc:
        message = str(exc)
        at = _AT.search(message)
        path = at.group("path") if at else "$"
        named = _NAMED.search(message)
        field = f"{path}.{named.group('name')}" if named else path
        problem = _AT.sub("", message)
        means = _PATTERN_MEANS.get(re.split(r"[.\[]", field)[-1])
        if means is not None:
            problem = _REGEX.sub(means, problem)
        raise _invalid(field, problem) from None
    except msgspec.DecodeError as exc:
        raise _Problem(400, "Bad Request", f"the body is not valid JSON: {exc}",
                       [ProblemField(field="$", problem=str(exc))]) from None  # fmt: skip
    # A NUL cannot travel on to a path, an argument or a command line (the OS refuses it).
    nul = _nul_field(msgspec.to_builtins(decoded), "$")
    if nul is not None:
        raise _invalid(nul, "a NUL character (\\u0000) is not allowed here")
    return decoded


def _nul_field(value: Any, path: str) -> str | None:
    """The JSON path of the first string holding a NUL character, if any."""
    if isinstance(value, str):
        return path if "\x00" in value else None
    if isinstance(value, dict):
        for key, item in value.items():
            found = _nul_field(item, f"{path}.{key}")
            if found is not None:
                return found
    if isinstance(value, list):
        for index, item in enumerate(value):
            found = _nul_field(item, f"{path}[{index}]")
            if found is not None:
                return found
    return None


def _problem_for(exc: ClusterError) -> _Problem:
    """The problem an error of ours answers with: the status says whose fault it is."""
    match exc:
        case AuthenticationError():
            return _Problem(401, "Unauthorized", str(exc))
        case PermissionDeniedError():
            return _Problem(403, "Forbidden", str(exc))
        case UnknownEntityError():
            return _Problem(404, "Not Found", str(exc))
        case CommandRefusedError():
            return _Problem(409, "Conflict", str(exc))
        case ConfigError():
            return _invalid(f"$.{exc.key}" if exc.key != "task" else "task_id", exc.problem)
        case GraphError():
            return _invalid("$.plan", str(exc))
        case InvalidIdError():
            return _invalid(exc.kind + "_id", str(exc))
        case LocalError():
            return _Problem(422, "Unprocessable Content", str(exc))
        case RemoteError():
            return _Problem(503, "Service Unavailable", str(exc))
        case _:
            return _Problem(503, "Service Unavailable", str(exc))


def _door(request: Request | WebSocket) -> FrontDoor:
    door: FrontDoor = request.app.state.door
    return door


def _query_id(request: Request, name: str) -> str | None:
    value = request.query_params.get(name)
    if value is None:
        return None
    if not is_id(value):
        raise _invalid(
            name, "use 1-64 letters, digits, '_' or '-', starting with one of the first two"
        )
    return value


# -- handlers --------------------------------------------------------------------------


async def _health(call: _Call) -> Response:
    return _json(HealthBody(last_seq=call.door.view.last_seq))


async def _openapi(call: _Call) -> Response:
    from claudecluster.gateway.openapi import openapi_document  # the document imports us

    return _json(openapi_document())


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
    return _json(body, 202, {"Location": f"/runs/{run_id}"})


def _idempotency_key(call: _Call) -> str:
    """The ``Idempotency-Key`` header: a retry with the same key is the same run."""
    return call.request.headers.get("idempotency-key", "")


def _client(call: _Call) -> str:
    """Who calls (the token's subject), so two clients' idempotency keys never meet."""
    return call.principal.subject if call.principal is not None else ""


async def _submit_run(call: _Call) -> Response:
    body: SubmitRunBody = call.body
    command = submit_run_command(
        body.goal, repo=body.repo, plan=body.plan, fanout=body.fanout,
        claude_planner=body.claude_planner, run_id=body.run_id, budget_usd=body.budget_usd,
        max_parallel=body.max_parallel, policy=body.policy, now=datetime.now(UTC),
        idempotency_key=_idempotency_key(call), client=_client(call),
    )  # fmt: skip
    submission = await call.door.submit_run(command)
    return _submitted(call.request, submission)


async def _submit_task(call: _Call) -> Response:
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


async def _list_runs(call: _Call) -> Response:
    return _json(RunsBody(runs=call.door.runs(), last_seq=call.door.view.last_seq))


async def _get_run(call: _Call) -> Response:
    door = call.door
    run = door.run(call.request.path_params["run_id"])
    view = door.view
    body = RunDetailBody(run=run, tasks=view.tasks_of(run.run_id),
                         cost=view.costs.get(run.run_id), last_seq=view.last_seq)  # fmt: skip
    return _json(body)


async def _cancel_run(call: _Call) -> Response:
    body: CancelBody = call.body
    event = await call.door.cancel_run(call.request.path_params["run_id"], reason=body.reason)
    return _json(CancelledBody(event="run.cancelled", run_id=event.run_id, reason=event.reason))


async def _rollback_run(call: _Call) -> Response:
    body: RollbackBody = call.body
    if body.to_task is not None and body.to_sequence is not None:
        raise _invalid("$.to_task", "give to_task or to_sequence, not both")
    event = await call.door.rollback(
        call.request.path_params["run_id"], to_task=body.to_task, to_sequence=body.to_sequence
    )
    return _json(RolledBackBody(run_id=event.run_id, to_commit=event.to_commit,
                                reverted_tasks=list(event.reverted_tasks)))  # fmt: skip


def _task_ref(request: Request) -> str:
    task_id = request.path_params["task_id"]
    run_id = _query_id(request, "run_id")
    return f"{run_id}/{task_id}" if run_id else task_id


async def _get_task(call: _Call) -> Response:
    return _json(call.door.task(_task_ref(call.request)))


async def _task_logs(call: _Call) -> Response:
    task = call.door.task(_task_ref(call.request))
    events = await call.door.task_events(f"{task.run_id}/{task.task_id}")
    lines = [_log_line(stored) for stored in events]
    return _json(LogsBody(run_id=task.run_id, task_id=task.task_id, lines=lines))


async def _cancel_task(call: _Call) -> Response:
    body: CancelBody = call.body
    task = call.door.task(_task_ref(call.request))
    event = await call.door.cancel_task(task.run_id, task.task_id, reason=body.reason)
    tag = str(type(event).__struct_config__.tag)
    return _json(CancelledBody(event=tag, run_id=event.run_id, task_id=event.task_id,
                               reason=event.reason))  # fmt: skip


async def _workers(call: _Call) -> Response:
    return _json(WorkersBody(workers=call.door.workers()))


async def _metrics(call: _Call) -> Response:
    registry: CollectorRegistry = call.request.app.state.metrics.registry
    return Response(generate_latest(registry), media_type="text/plain; version=0.0.4")


def _log_line(stored: StoredEvent) -> LogLine:
    """A task event as one line of its log: what the agent said or did, or what happened."""
    event = stored.envelope.payload
    tag = str(type(event).__struct_config__.tag)
    at = stored.envelope.occurred_at.isoformat()
    attempt = getattr(event, "attempt", None)
    if isinstance(event, TaskProgress):
        text = event.text
        if event.kind == "usage" and event.usage is not None:
            text = f"{event.usage.input_tokens} in / {event.usage.output_tokens} out"
        return LogLine(seq=stored.seq, occurred_at=at, type=tag, attempt=attempt,
                       kind=event.kind, tool=event.tool, text=text)  # fmt: skip
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


# -- metrics ---------------------------------------------------------------------------


class _ClusterCollector(Collector):
    """Gauges read from the front door's view at scrape time (no bookkeeping of our own)."""

    def __init__(self, door: Callable[[], FrontDoor | None]) -> None:
        self._door = door

    def collect(self) -> Iterable[GaugeMetricFamily]:
        door = self._door()
        if door is None:
            return
        view = door.view
        seq = GaugeMetricFamily("claudecluster_log_last_seq", "Last event sequence applied.")
        seq.add_metric([], view.last_seq)
        yield seq
        for name, records in (("runs", view.runs), ("tasks", view.tasks)):
            family = GaugeMetricFamily(f"claudecluster_{name}", f"{name.title()} by state.",
                                       labels=["state"])  # fmt: skip
            counts: dict[str, int] = {}
            for record in records.values():
                counts[record.state.value] = counts.get(record.state.value, 0) + 1
            for state, count in sorted(counts.items()):
                family.add_metric([state], count)
            yield family
        workers = GaugeMetricFamily("claudecluster_workers", "Workers by state.", labels=["state"])
        states: dict[str, int] = {}
        for worker in view.workers.values():
            states[worker.state] = states.get(worker.state, 0) + 1
        for state, count in sorted(states.items()):
            workers.add_metric([state], count)
        yield workers


class GatewayMetrics:
    """The gateway's Prometheus registry: requests, latency, open WebSockets, the cluster."""

    def __init__(self, door: Callable[[], FrontDoor | None]) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "claudecluster_gateway_requests", "HTTP requests answered.",
            ["operation", "status"], registry=self.registry,
        )  # fmt: skip
        self.latency = Histogram(
            "claudecluster_gateway_request_seconds", "Time to answer a request.",
            ["operation"], registry=self.registry,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 5.0, 30.0),
        )  # fmt: skip
        self.websockets = Gauge(
            "claudecluster_gateway_websockets", "Open WebSocket event streams.",
            registry=self.registry,
        )  # fmt: skip
        self.events_sent = Counter(
            "claudecluster_gateway_events_sent", "Events sent to WebSocket clients.",
            registry=self.registry,
        )  # fmt: skip
        self.registry.register(_ClusterCollector(door))


# -- wiring ----------------------------------------------------------------------------


def _endpoint(op: Operation) -> Callable[[Request], Awaitable[Response]]:
    """Authentication, body decoding, error mapping and metrics around one handler."""

    async def endpoint(request: Request) -> Response:
        started = time.perf_counter()
        metrics: GatewayMetrics = request.app.state.metrics
        headers: dict[str, str] | None = None
        try:
            principal = None
            if op.scope is not None:
                principal = authenticate(
                    request.headers.get("authorization"), op.scope, request.app.state.verifier
                )
            body = None
            if op.request is not None:
                data = await _read_body(request, request.app.state.max_body_bytes)
                body = _decode(data, op.request, required=op.body_required)
            response = await op.handler(_Call(request, _door(request), principal, body))
        except _Problem as problem:
            response = _problem_response(problem)
        except ClusterError as exc:
            mapped = _problem_for(exc)
            if mapped.status == 401:
                headers = {"WWW-Authenticate": 'Bearer realm="claudecluster"'}
            elif mapped.status == 503:
                headers = {"Retry-After": "5"}
                _log.warning("gateway answered 503", operation=op.operation_id, error=str(exc))
            response = _problem_response(mapped, headers)
        metrics.requests.labels(op.operation_id, str(response.status_code)).inc()
        metrics.latency.labels(op.operation_id).observe(time.perf_counter() - started)
        return response

    endpoint.__name__ = op.operation_id
    return endpoint


async def _run_events(websocket: WebSocket) -> None:
    """A run's events from ``from_seq`` (default 1): the stored ones, then live, as JSON.

    The token comes in the Authorization header or, for browsers that cannot set one, the
    ``access_token`` query parameter. A refusal before the stream starts is an HTTP
    denial when the server supports it, else a close with code 4000 + the status.
    """
    door = _door(websocket)
    metrics: GatewayMetrics = websocket.app.state.metrics
    run_id = websocket.path_params["run_id"]
    try:
        token = websocket.headers.get("authorization")
        if token is None and "access_token" in websocket.query_params:
            token = f"Bearer {websocket.query_params['access_token']}"
        authenticate(token, "read", websocket.app.state.verifier)
        raw = websocket.query_params.get("from_seq", "1")
        if not raw.isdigit() or int(raw) < 1:
            raise _invalid("from_seq", "give a stream sequence number of at least 1")
        door.run(run_id)
    except (_Problem, ClusterError) as exc:
        problem = exc if isinstance(exc, _Problem) else _problem_for(exc)
        await _deny(websocket, problem)
        return
    await websocket.accept()
    metrics.websockets.inc()
    try:
        async with anyio.create_task_group() as group:

            async def until_closed() -> None:
                # What a client sends is ignored; its leaving ends the stream.
                while (await websocket.receive())["type"] != "websocket.disconnect":
                    pass
                group.cancel_scope.cancel()

            group.start_soon(until_closed)
            async with door.open_run_events(run_id, from_seq=int(raw)) as events:
                async for stored in events:
                    await websocket.send_bytes(msgspec.json.encode(stored))
                    metrics.events_sent.inc()
    except* WebSocketDisconnect:
        pass  # the client left while we sent to it; there is no one to tell
    finally:
        metrics.websockets.dec()


async def _deny(websocket: WebSocket, problem: _Problem) -> None:
    if "websocket.http.response" in websocket.scope.get("extensions", {}):
        await websocket.send_denial_response(_problem_response(problem))
        return
    await websocket.close(code=WS_CLOSE_BASE + problem.status, reason=problem.detail[:120])


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    problem = _Problem(exc.status_code, str(exc.detail), f"{request.method} {request.url.path}: "
                       f"{exc.detail}")  # fmt: skip
    return _problem_response(problem, dict(exc.headers or {}))


def create_app(
    door: FrontDoor,
    verifier: TokenVerifier,
    *,
    extra_routes: Sequence[BaseRoute] = (),
    extra_lifespans: Sequence[Callable[[Starlette], AbstractAsyncContextManager[None]]] = (),
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
) -> Starlette:
    """The gateway application on an open front door.

    Args:
        door: the front door it reads from and publishes through (opened by the caller,
            so a failure to reach NATS is reported before the server starts).
        verifier: how bearer tokens are checked.
        extra_routes: more routes or mounts, e.g. ``Mount("/mcp", app=...)`` for the MCP
            server's streamable-HTTP app; they do their own authentication.
        extra_lifespans: context managers run for the application's lifetime (an MCP
            session manager, say), entered in order and exited in reverse.
        max_body_bytes: the largest request body any route reads (413 past it).
    """

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async with AsyncExitStack() as stack:
            for extra in extra_lifespans:
                await stack.enter_async_context(extra(app))
            _log.info("gateway ready", last_seq=door.view.last_seq)
            yield

    routes: list[BaseRoute] = [
        Route(op.path, _endpoint(op), methods=[op.method], name=op.operation_id)
        for op in OPERATIONS
    ]
    routes.append(WebSocketRoute("/runs/{run_id}/events", _run_events, name="runEvents"))
    routes.extend(extra_routes)
    app = Starlette(
        routes=routes, lifespan=lifespan, exception_handlers={HTTPException: _http_error}
    )
    app.state.door = door
    app.state.verifier = verifier
    app.state.max_body_bytes = max_body_bytes
    app.state.metrics = GatewayMetrics(lambda: door)
    return app
