"""The MCP server over streamable HTTP, with sessions kept in JetStream KV.

The SDK's session manager keeps each session in the memory of the process that opened it,
so a restart ends every session. This endpoint runs the SDK's manager in stateless mode
(every request is served on its own, with the protocol version from the request's
``MCP-Protocol-Version`` header) and keeps the sessions itself, in a
:class:`~claudecluster.transport.mcp_sessions.McpSessionStore`:

* ``initialize`` (a POST without ``Mcp-Session-Id``) is served, and when it succeeds a new
  session id is minted, stored with the negotiated protocol version and the caller's
  identity, and returned in the ``Mcp-Session-Id`` response header;
* any other POST must name a session the store knows and that the same caller opened,
  else 400 (no id) or 404 (unknown, expired or someone else's: the spec's signal to
  start a new session); a missing ``MCP-Protocol-Version`` is filled in from the session;
* DELETE ends the session; GET answers 405, because this server never sends anything
  outside a response (the spec allows exactly that);
* requests of the 2026-07-28 revision have no sessions at all and go straight through.

Before any of that, each request must pass two checks the spec requires of an HTTP MCP
server: the ``Host`` and ``Origin`` headers must be ones we serve (DNS-rebinding
protection, the SDK's :class:`TransportSecuritySettings`), and, when the endpoint has a
token verifier, a valid ``Authorization: Bearer`` token with at least the ``read`` scope,
checked by the gateway's own :func:`claudecluster.auth.authenticate` (401 without a valid
token, 403 without the scope). The principal goes with the request to the tools, which
ask for more where they change things (``submit``, ``admin``), as the gateway's routes do.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final
from uuid import uuid4

import msgspec
from mcp.server.context import ServerRequestContext
from mcp.server.mcpserver import MCPServer
from mcp.server.streamable_http_manager import StreamableHTTPSessionManager
from mcp.server.transport_security import TransportSecurityMiddleware, TransportSecuritySettings
from mcp.types.version import HANDSHAKE_PROTOCOL_VERSIONS, LATEST_HANDSHAKE_VERSION
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import Message, Receive, Scope, Send

from claudecluster.auth import Principal, TokenVerifier, authenticate
from claudecluster.errors import AuthenticationError, PermissionDeniedError
from claudecluster.mcp_server.server import PRINCIPAL_STATE_KEY, build_mcp_server
from claudecluster.runtime.front_door import FrontDoor
from claudecluster.runtime.plan_previews import PlanDrafter
from claudecluster.transport.mcp_sessions import (
    JetStreamMcpSessionStore,
    McpSession,
    McpSessionStore,
)

__all__ = [
    "MCP_SESSION_HEADER",
    "GatewayMount",
    "McpHttpEndpoint",
    "SessionLogLevels",
    "endpoint_security",
    "loopback_security",
    "mcp_for_gateway",
]

MCP_SESSION_HEADER: Final = "mcp-session-id"
_VERSION_HEADER: Final = "mcp-protocol-version"
_MAX_BODY: Final = 4 * 1024 * 1024
_LOOPBACK: Final = frozenset({"127.0.0.1", "localhost", "::1"})


def loopback_security(port: int | None = None) -> TransportSecuritySettings:
    """Host and Origin checks for a server on this machine only.

    A browser page on another site can make a request to localhost, and with a DNS name
    rebound to 127.0.0.1 it passes the same-origin policy; checking ``Host`` and
    ``Origin`` against the loopback names is what stops it.
    """
    port_part = f":{port}" if port else ":*"
    hosts = [f"127.0.0.1{port_part}", f"localhost{port_part}", f"[::1]{port_part}"]
    return TransportSecuritySettings(
        enable_dns_rebinding_protection=True,
        allowed_hosts=hosts,
        allowed_origins=[f"http://{host}" for host in hosts]
        + [f"https://{host}" for host in hosts],
    )


def endpoint_security(
    host: str, port: int, *, hosts: Sequence[str] = (), origins: Sequence[str] = ()
) -> TransportSecuritySettings:
    """Host and Origin checks for an endpoint listening on ``host:port``.

    The loopback names are always accepted; a server reached under another name (a
    host on the network, a proxy) must name it in ``hosts`` (``name:port`` or
    ``name:*``) and the browser origins it trusts in ``origins``: anything else is
    refused, which is the point.
    """
    base = loopback_security(port or None)
    extra_hosts = list(hosts)
    if host not in _LOOPBACK and host not in ("0.0.0.0", "::", ""):  # noqa: S104
        extra_hosts.append(f"[{host}]:{port}" if ":" in host else f"{host}:{port}")
    return TransportSecuritySettings(
        enable_dns_rebinding_protection=True,
        allowed_hosts=base.allowed_hosts + extra_hosts,
        allowed_origins=base.allowed_origins + list(origins),
    )


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> Response:
    # The body is a JSON-RPC error without an id, as the SDK's own transport answers.
    body = {"jsonrpc": "2.0", "id": None, "error": {"code": -32600, "message": message}}
    return JSONResponse(body, status_code=status, headers=headers)


class SessionLogLevels:
    """``logging/setLevel`` per session, kept in the session's record.

    Args:
        sessions: the store the endpoint keeps sessions in.
    """

    def __init__(self, sessions: McpSessionStore) -> None:
        self._sessions = sessions

    async def _session(self, ctx: ServerRequestContext[Any, Any]) -> McpSession | None:
        request = ctx.request
        if not isinstance(request, Request):
            return None
        session_id = request.headers.get(MCP_SESSION_HEADER)
        return await self._sessions.get(session_id) if session_id else None

    async def level(self, ctx: ServerRequestContext[Any, Any]) -> str:
        """The session's level (``info`` until the client sets one)."""
        session = await self._session(ctx)
        return session.log_level if session else "info"

    async def set_level(self, ctx: ServerRequestContext[Any, Any], level: str) -> None:
        """Store ``level`` with the session.

        Raises:
            EventStoreError: the store refused the write.
        """
        session = await self._session(ctx)
        if session is not None:
            await self._sessions.put(msgspec.structs.replace(session, log_level=level))


class McpHttpEndpoint:
    """An ASGI app serving one MCP server over streamable HTTP; mount it at ``/mcp``.

    Run :meth:`open` around serving (in the host app's lifespan): it runs the SDK's
    manager, whose task group serves the requests.

    Args:
        server: the MCP server (see :func:`~claudecluster.mcp_server.build_mcp_server`,
            with ``log_levels=SessionLogLevels(sessions)``).
        sessions: where sessions live; JetStream KV so that they outlive the process.
        security: the Host and Origin values to accept.
        verifier: how bearer tokens are checked (the gateway's); None serves without
            authentication (only for an endpoint on loopback, e.g. in tests).
        now: the clock for session records.
    """

    def __init__(
        self,
        server: MCPServer[Any],
        sessions: McpSessionStore,
        *,
        security: TransportSecuritySettings,
        verifier: TokenVerifier | None,
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
        max_body_bytes: int = _MAX_BODY,
    ) -> None:
        self._sessions = sessions
        self._max_body = max_body_bytes
        self._security = TransportSecurityMiddleware(security)
        self._verifier = verifier
        self._now = now
        self._manager = StreamableHTTPSessionManager(
            server._lowlevel_server,
            stateless=True,
            security_settings=security,
        )

    @asynccontextmanager
    async def open(self) -> AsyncIterator[McpHttpEndpoint]:
        """Serve requests for the duration of the context (the SDK manager's task group)."""
        async with self._manager.run():
            yield self

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Serve one HTTP request."""
        if scope["type"] != "http":
            return
        request = Request(scope, receive)
        refused = await self._security.validate_request(request, is_post=False)
        if refused is not None:
            await refused(scope, receive, send)
            return
        try:
            principal = self._caller(request)
        except AuthenticationError as exc:
            await _error(401, f"Unauthorized: {exc}", {"WWW-Authenticate": "Bearer"})(
                scope, receive, send
            )
            return
        except PermissionDeniedError as exc:
            await _error(403, f"Forbidden: {exc}")(scope, receive, send)
            return
        owner = principal.subject if principal else ""
        if principal is not None:
            scope = {**scope, "state": {**scope.get("state", {}), PRINCIPAL_STATE_KEY: principal}}
        version = request.headers.get(_VERSION_HEADER)
        body = b""
        if request.method == "POST":
            # Read here, within the cap, for every protocol version, and checked for a
            # nesting no JSON parser on the way can take (it answered 500 before).
            read = await self._body(request)
            if read is None:
                await _error(413, "Payload Too Large")(scope, receive, send)
                return
            body = read
            if _too_deep(body):
                await _error(400, "Bad Request: the JSON is nested too deeply")(
                    scope, receive, send
                )
                return
            receive = _replaying(body, receive)
        if version is not None and version not in HANDSHAKE_PROTOCOL_VERSIONS:
            # 2026-07-28 and later: one self-contained request, no session to keep.
            await self._manager.handle_request(scope, receive, send)
            return
        if request.method == "GET":
            await _error(
                405, "Method Not Allowed: this server sends nothing outside a response",
                {"Allow": "POST, DELETE"},
            )(scope, receive, send)  # fmt: skip
            return
        if request.method == "DELETE":
            await self._end(request, owner, scope, receive, send)
            return
        if request.method != "POST":
            await _error(405, "Method Not Allowed", {"Allow": "POST, DELETE"})(scope, receive, send)
            return
        replay = receive
        requested = _initialize_version(body)
        if requested is not None and MCP_SESSION_HEADER not in request.headers:
            await self._open_session(scope, replay, send, owner, requested, body)
            return
        session = await self._known_session(request, owner, scope, receive, send)
        if session is None:
            return
        if version is None:
            scope = _with_header(scope, _VERSION_HEADER, session.protocol_version)
        await self._manager.handle_request(scope, replay, send)

    def _caller(self, request: Request) -> Principal | None:
        """Who calls: the token's principal, or None on an endpoint without tokens.

        Raises:
            AuthenticationError: no valid bearer token.
            PermissionDeniedError: the token lacks even the ``read`` scope.
        """
        if self._verifier is None:
            return None
        return authenticate(request.headers.get("authorization"), "read", self._verifier)

    async def _body(self, request: Request) -> bytes | None:
        """The request body, or None when it is larger than we accept."""
        chunks: list[bytes] = []
        size = 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > self._max_body:
                return None
            chunks.append(chunk)
        return b"".join(chunks)

    async def _open_session(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        owner: str,
        requested: str,
        body: bytes,
    ) -> None:
        """Serve ``initialize``; on success store a new session and name it in the response."""
        negotiated = requested if requested in HANDSHAKE_PROTOCOL_VERSIONS else (
            LATEST_HANDSHAKE_VERSION
        )  # fmt: skip
        session = McpSession(
            session_id=uuid4().hex,
            protocol_version=negotiated,
            owner=owner,
            client_name=_client_name(body),
            created_at=self._now(),
        )

        async def send_with_session(message: Message) -> None:
            if message["type"] == "http.response.start" and message["status"] == 200:
                await self._sessions.put(session)
                headers = list(message.get("headers", []))
                headers.append((MCP_SESSION_HEADER.encode(), session.session_id.encode()))
                message = {**message, "headers": headers}
            await send(message)

        await self._manager.handle_request(scope, receive, send_with_session)

    async def _known_session(
        self, request: Request, owner: str, scope: Scope, receive: Receive, send: Send
    ) -> McpSession | None:
        """The request's session, or None after answering 400 or 404."""
        session_id = request.headers.get(MCP_SESSION_HEADER)
        if not session_id:
            await _error(400, "Bad Request: Missing session ID")(scope, receive, send)
            return None
        session = await self._sessions.get(session_id)
        if session is None or session.owner != owner:
            # Someone else's session looks exactly like one that does not exist.
            await _error(404, "Session not found")(scope, receive, send)
            return None
        return session

    async def _end(
        self, request: Request, owner: str, scope: Scope, receive: Receive, send: Send
    ) -> None:
        session = await self._known_session(request, owner, scope, receive, send)
        if session is None:
            return
        await self._sessions.delete(session.session_id)
        await Response(status_code=200)(scope, receive, send)


def _replaying(body: bytes, receive: Receive) -> Receive:
    """A ``receive`` that hands the already-read body over once, then the real one."""
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


def _parsed(body: bytes) -> Any:
    try:
        return json.loads(body)
    except (ValueError, RecursionError):
        return None  # the SDK's transport answers a parse error itself


def _too_deep(body: bytes) -> bool:
    """Whether the body is JSON nested deeper than a parser here goes (RecursionError).

    Such a body answered 500: a parse further on raised RecursionError. Anything else
    that does not parse is left to the SDK, which answers a JSON-RPC parse error.
    """
    try:
        json.loads(body)
    except RecursionError:
        return True
    except ValueError:
        return False
    return False


def _initialize_version(body: bytes) -> str | None:
    """The protocol version an ``initialize`` request asks for, or None if it is not one."""
    message = _parsed(body)
    if not isinstance(message, dict) or message.get("method") != "initialize":
        return None
    params = message.get("params")
    version = params.get("protocolVersion") if isinstance(params, dict) else None
    return version if isinstance(version, str) else ""


def _client_name(body: bytes) -> str:
    message = _parsed(body)
    params = message.get("params") if isinstance(message, dict) else None
    info = params.get("clientInfo") if isinstance(params, dict) else None
    name = info.get("name") if isinstance(info, dict) else None
    return name if isinstance(name, str) else ""


def _with_header(scope: Scope, name: str, value: str) -> Scope:
    headers = [(k, v) for k, v in scope["headers"] if k != name.encode()]
    headers.append((name.encode(), value.encode()))
    return {**scope, "headers": headers}


@dataclass(frozen=True, slots=True)
class GatewayMount:
    """The MCP endpoint as the gateway takes it: a route and a lifespan.

    Attributes:
        route: ``/mcp`` (exactly: a ``Mount`` would redirect ``/mcp`` to ``/mcp/``,
            which not every MCP client follows).
        lifespan: runs the endpoint for the gateway application's lifetime.
        endpoint: the endpoint itself.
    """

    route: Route
    lifespan: Callable[[Starlette], AbstractAsyncContextManager[None]]
    endpoint: McpHttpEndpoint


def mcp_for_gateway(
    door: FrontDoor,
    verifier: TokenVerifier,
    *,
    host: str,
    port: int,
    default_repo: str,
    hosts: Sequence[str] = (),
    origins: Sequence[str] = (),
    max_body_bytes: int = _MAX_BODY,
    drafter: PlanDrafter | None = None,
) -> GatewayMount:
    """The MCP server at ``/mcp`` of a gateway: same front door, same bearer tokens,
    sessions in JetStream KV, Host and Origin checked for where the gateway listens.

    Args:
        door: the gateway's front door.
        verifier: the gateway's token verifier.
        host: the address the gateway listens on.
        port: its port (0: any port is accepted in ``Host`` for the loopback names).
        default_repo: the repository runs work on when a tool call names none.
        hosts: more ``Host`` values to accept (a DNS name, a proxy's).
        origins: browser origins to accept.
        max_body_bytes: the largest request body it reads (413 past it).
        drafter: the Claude planner ``preview_plan`` may run for a bare goal, or None.
    """
    sessions = JetStreamMcpSessionStore(door.connection.client.jetstream())
    server = build_mcp_server(
        door, default_repo=default_repo, log_levels=SessionLogLevels(sessions), drafter=drafter
    )
    endpoint = McpHttpEndpoint(
        server,
        sessions,
        security=endpoint_security(host, port, hosts=hosts, origins=origins),
        verifier=verifier,
        max_body_bytes=max_body_bytes,
    )

    @asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncIterator[None]:
        async with endpoint.open():
            yield

    route = Route("/mcp", endpoint, methods=["GET", "POST", "DELETE"], name="mcp")
    return GatewayMount(route=route, lifespan=lifespan, endpoint=endpoint)
