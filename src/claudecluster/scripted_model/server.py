"""The scripted model as a loopback HTTP server (starlette on uvicorn).

Point the real Claude Code CLI at it with ``ANTHROPIC_BASE_URL`` and it runs offline,
deterministically, with the latency and failures the script asks for. The demo, our tests
and users' own CI use it.
"""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import anyio
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from claudecluster.observability.logging import get_logger
from claudecluster.runtime.http_server import open_http_server
from claudecluster.scripted_model.script import Reply, Script, decide, error_key, request_text
from claudecluster.scripted_model.wire import (
    ERRORS,
    encode_sse,
    error_body,
    message_json,
    sse_events,
)

__all__ = ["ScriptedModel", "ServedRequest", "open_scripted_model"]

_log = get_logger(__name__)


@dataclass(frozen=True, slots=True)
class ServedRequest:
    """One request the server answered, for tests and debugging.

    Attributes:
        task: the matched task's marker, or None for the fallback.
        turn: the conversation turn it answered.
        error: the injected error served, if any.
        stream: whether the client asked for a streamed reply.
        tools: the names of the tools the reply called.
        model: the model the request named.
        api_key: the ``x-api-key`` header it carried (an API key sign-in), if any.
        bearer: the bearer token of its ``authorization`` header (an OAuth token or an
            LLM gateway's token), if any.
        offered: the names of the tools the request offered the model: those it defines,
            then those it names as deferred (Claude Code lists MCP servers' tools,
            ``mcp__SERVER__TOOL``, by name in a system message and loads their schemas on
            demand with its ToolSearch tool).
    """

    task: str | None
    turn: int
    error: str | None
    stream: bool
    tools: tuple[str, ...]
    model: str | None = None
    api_key: str | None = None
    bearer: str | None = None
    offered: tuple[str, ...] = ()


#: How Claude Code introduces the tools whose schemas it loads on demand, one name a line.
_DEFERRED_RE = re.compile(r"ToolSearch[^\n]*before calling them:\n((?:[^\s][^\n]*\n?)+)")


def _offered(body: dict[str, Any]) -> tuple[str, ...]:
    tools = body.get("tools")
    defined = [
        t["name"]
        for t in (tools if isinstance(tools, list) else [])
        if isinstance(t, dict) and isinstance(t.get("name"), str)
    ]
    deferred = [
        name.strip()
        # In a message of role "system" among the messages (CLI 2.1.33x), or the user's.
        for role in ("system", "user")
        for found in _DEFERRED_RE.finditer(request_text(body, role))
        for name in found.group(1).splitlines()
        if name.strip()
    ]
    return tuple(dict.fromkeys([*defined, *deferred]))


def _bearer(authorization: str | None) -> str | None:
    scheme, _, token = (authorization or "").partition(" ")
    return token.strip() or None if scheme.lower() == "bearer" else None


class _Body:
    """An ASGI response that waits ``latency`` and then sends prepared chunks.

    With ``complete=False`` it stops without finishing the response, so the client sees the
    connection cut mid-stream, as with a dropped network link.
    """

    def __init__(
        self, status: int, content_type: str, chunks: list[bytes], latency: float, complete: bool
    ) -> None:
        self._status = status
        self._content_type = content_type
        self._chunks = chunks
        self._latency = latency
        self._complete = complete

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self._latency:
            await anyio.sleep(self._latency)
        headers = [(b"content-type", self._content_type.encode()), (b"cache-control", b"no-cache")]
        await send({"type": "http.response.start", "status": self._status, "headers": headers})
        for chunk in self._chunks:
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
        if self._complete:
            await send({"type": "http.response.body", "body": b"", "more_body": False})


class ScriptedModel:
    """A scripted Anthropic Messages API. Serve it with :func:`open_scripted_model`.

    Args:
        script: what to answer.
    """

    def __init__(self, script: Script) -> None:
        self.script = script
        self.url = ""
        self.served: list[ServedRequest] = []
        self._errors_served: dict[str, int] = {}
        self._arrived = anyio.Event()
        self.app = Starlette(routes=[Route("/v1/messages", self._messages, methods=["POST"])])

    async def _messages(self, request: Request) -> Response | _Body:
        try:
            body: Any = json.loads(await request.body())
        except ValueError:
            return JSONResponse(
                {"type": "error", "error": {"type": "invalid_request_error",
                                           "message": "body is not JSON"}},
                status_code=400,
            )  # fmt: skip
        if not isinstance(body, dict) or not isinstance(body.get("messages"), list):
            return JSONResponse(
                {"type": "error", "error": {"type": "invalid_request_error",
                                           "message": "messages: expected a list"}},
                status_code=400,
            )  # fmt: skip
        reply = decide(self.script, body, self._errors_served)
        stream = bool(body.get("stream"))
        self._arrived.set()
        self._arrived = anyio.Event()
        self.served.append(
            ServedRequest(
                task=reply.task,
                turn=reply.turn,
                error=reply.error,
                stream=stream,
                tools=tuple(tool.name for tool in reply.tools),
                model=body.get("model") if isinstance(body.get("model"), str) else None,
                api_key=request.headers.get("x-api-key"),
                bearer=_bearer(request.headers.get("authorization")),
                offered=_offered(body),
            )
        )
        if reply.error is not None:
            key = error_key(reply.task or "", reply.turn, reply.error)
            self._errors_served[key] = self._errors_served.get(key, 0) + 1
            _log.info("scripted error served", task=reply.task, turn=reply.turn, kind=reply.error)
            return self._error(body, reply, stream)
        message_id = f"msg_scripted_{len(self.served):06d}"
        if stream:
            chunks = [encode_sse(name, data) for name, data in sse_events(body, reply, message_id)]
            return _Body(200, "text/event-stream", chunks, reply.latency_s, complete=True)
        payload = json.dumps(message_json(body, reply, message_id)).encode()
        return _Body(200, "application/json", [payload], reply.latency_s, complete=True)

    def _error(self, body: dict[str, Any], reply: Reply, stream: bool) -> Response | _Body:
        assert reply.error is not None
        if reply.error == "cut_stream":
            partial = Reply(text="This answer is cut off before it", task=reply.task)
            events = sse_events(body, partial, "msg_cut")[:3]  # start, block start, one delta
            chunks = [encode_sse(name, data) for name, data in events]
            content_type = "text/event-stream" if stream else "application/json"
            return _Body(200, content_type, chunks, 0.0, complete=False)
        status, _ = ERRORS[reply.error]
        headers = {}
        if reply.retry_after_s is not None:
            headers["retry-after"] = str(int(reply.retry_after_s))
        return JSONResponse(error_body(reply.error), status_code=status, headers=headers)

    async def wait_requests(self, count: int) -> None:
        """Return once at least ``count`` requests have arrived (wrap it in a timeout)."""
        while len(self.served) < count:
            await self._arrived.wait()

    def statistics(self) -> dict[str, int]:
        """Requests served, errors injected, and turns answered per task marker."""
        stats = {"requests": len(self.served), "errors": sum(1 for s in self.served if s.error)}
        for served in self.served:
            if served.task is not None and served.error is None:
                stats[served.task] = stats.get(served.task, 0) + 1
        return stats


@asynccontextmanager
async def open_scripted_model(
    script: Script, *, host: str = "127.0.0.1", port: int = 0
) -> AsyncIterator[ScriptedModel]:
    """Serve ``script`` on ``host:port`` (0 picks a free port) for the context's duration.

    The returned model's ``url`` is what ``ANTHROPIC_BASE_URL`` should be set to.

    Raises:
        OSError: the port cannot be bound.
        TimeoutError: the server did not start listening in time.
    """
    model = ScriptedModel(script)
    async with open_http_server(model.app, host=host, port=port) as bound:
        model.url = f"http://{host}:{bound}"
        _log.info("scripted model serving", url=model.url, tasks=len(script.tasks))
        yield model
