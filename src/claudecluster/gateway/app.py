"""The gateway's ASGI application: starlette routes built from the operation table.

The parts, each in its own module: the table of operations and their handlers
(:mod:`~claudecluster.gateway.operations`), problem details and body decoding
(:mod:`~claudecluster.gateway.problems`), the Prometheus metrics
(:mod:`~claudecluster.gateway.metrics`) and the event WebSocket
(:mod:`~claudecluster.gateway.run_events`). This module wires them together: around each
handler, authentication, the body read and decoded, errors mapped to problem details and
the request counted; and the OpenAPI document (:mod:`~claudecluster.gateway.openapi`,
built from the same table) served at ``/openapi.json``.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import AbstractAsyncContextManager, AsyncExitStack, asynccontextmanager

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route, WebSocketRoute

from claudecluster.auth import TokenVerifier, authenticate
from claudecluster.errors import ClusterError
from claudecluster.gateway.metrics import GatewayMetrics
from claudecluster.gateway.openapi import openapi_document
from claudecluster.gateway.operations import OPERATIONS, Call, Operation, Param, door_of
from claudecluster.gateway.problems import (
    DEFAULT_MAX_BODY_BYTES,
    Problem,
    decode_body,
    http_error,
    problem_for,
    problem_response,
    read_body,
)
from claudecluster.gateway.run_events import run_events
from claudecluster.observability.logging import get_logger
from claudecluster.runtime.front_door import FrontDoor
from claudecluster.runtime.plan_previews import PlanDrafter

__all__ = ["DEFAULT_MAX_BODY_BYTES", "OPERATIONS", "Operation", "Param", "create_app"]

_log = get_logger(__name__)


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
                data = await read_body(request, request.app.state.max_body_bytes)
                body = decode_body(data, op.request, required=op.body_required)
            response = await op.handler(Call(request, door_of(request), principal, body))
        except Problem as problem:
            response = problem_response(problem)
        except ClusterError as exc:
            mapped = problem_for(exc)
            if mapped.status == 401:
                headers = {"WWW-Authenticate": 'Bearer realm="claudecluster"'}
            elif mapped.status == 503:
                headers = {"Retry-After": "5"}
                _log.warning("gateway answered 503", operation=op.operation_id, error=str(exc))
            response = problem_response(mapped, headers)
        metrics.requests.labels(op.operation_id, str(response.status_code)).inc()
        metrics.latency.labels(op.operation_id).observe(time.perf_counter() - started)
        return response

    endpoint.__name__ = op.operation_id
    return endpoint


def create_app(
    door: FrontDoor,
    verifier: TokenVerifier,
    *,
    extra_routes: Sequence[BaseRoute] = (),
    extra_lifespans: Sequence[Callable[[Starlette], AbstractAsyncContextManager[None]]] = (),
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    drafter: PlanDrafter | None = None,
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
        drafter: the Claude planner ``POST /plans/preview`` may run for a bare goal;
            None: it previews plans and fan-outs only.
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
    routes.append(WebSocketRoute("/runs/{run_id}/events", run_events, name="runEvents"))
    routes.extend(extra_routes)
    app = Starlette(
        routes=routes, lifespan=lifespan, exception_handlers={HTTPException: http_error}
    )
    app.state.door = door
    app.state.verifier = verifier
    app.state.max_body_bytes = max_body_bytes
    app.state.drafter = drafter
    app.state.metrics = GatewayMetrics(lambda: door)
    app.state.openapi = openapi_document()
    return app
