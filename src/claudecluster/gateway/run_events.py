"""The event WebSocket: a run's events from a stream sequence on, the stored ones and
then the live ones, with no gap and no duplicate between them."""

from __future__ import annotations

import anyio
import msgspec
from starlette.websockets import WebSocket, WebSocketDisconnect

from claudecluster.auth import authenticate
from claudecluster.errors import ClusterError
from claudecluster.gateway.metrics import GatewayMetrics
from claudecluster.gateway.problems import (
    WS_CLOSE_BASE,
    Problem,
    invalid,
    problem_for,
    problem_response,
)
from claudecluster.runtime.front_door import FrontDoor

__all__ = ["run_events"]


async def run_events(websocket: WebSocket) -> None:
    """A run's events from ``from_seq`` (default 1): the stored ones, then live, as JSON.

    The token comes in the Authorization header or, for browsers that cannot set one, the
    ``access_token`` query parameter. A refusal before the stream starts is an HTTP
    denial when the server supports it, else a close with code 4000 + the status.
    """
    door: FrontDoor = websocket.app.state.door
    metrics: GatewayMetrics = websocket.app.state.metrics
    run_id = websocket.path_params["run_id"]
    try:
        token = websocket.headers.get("authorization")
        if token is None and "access_token" in websocket.query_params:
            token = f"Bearer {websocket.query_params['access_token']}"
        authenticate(token, "read", websocket.app.state.verifier)
        raw = websocket.query_params.get("from_seq", "1")
        if not raw.isdigit() or int(raw) < 1:
            raise invalid("from_seq", "give a stream sequence number of at least 1")
        door.run(run_id)
    except (Problem, ClusterError) as exc:
        problem = exc if isinstance(exc, Problem) else problem_for(exc)
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


async def _deny(websocket: WebSocket, problem: Problem) -> None:
    if "websocket.http.response" in websocket.scope.get("extensions", {}):
        await websocket.send_denial_response(problem_response(problem))
        return
    await websocket.close(code=WS_CLOSE_BASE + problem.status, reason=problem.detail[:120])
