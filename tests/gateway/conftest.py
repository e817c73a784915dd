"""A real gateway for each test: real nats-server, real driver, real workers (shell tasks),
the front door and uvicorn on a free port, an httpx client and WebSocket clients."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest
from starlette.applications import Starlette
from websockets.asyncio.client import ClientConnection, connect

from claudecluster.auth import Scope, TokenSigner, TokenVerifier
from claudecluster.gateway import open_gateway
from claudecluster.runtime.connection import Connection, open_jetstream_log
from claudecluster.runtime.front_door import FrontDoor, open_front_door
from claudecluster.transport.jetstream import JetStreamEventLog
from tests.conftest import fresh_jetstream_log
from tests.runtime.test_driver import Cluster, open_cluster, running_driver
from tests.support import make_repo

# Long enough for HS256 (PyJWT warns below 32 bytes, and warnings are errors here).
SECRET = "gateway-test-secret-0123456789abcdef-0123456789"
VERIFIER = TokenVerifier("HS256", SECRET, "claudecluster", "claudecluster-gateway")
SIGNER = TokenSigner("HS256", SECRET, "claudecluster", "claudecluster-gateway")


def token(scope: Scope = "admin", *, ttl_s: float = 600, now: datetime | None = None) -> str:
    """A token signed with the test secret."""
    return SIGNER.mint(
        subject="tester", scope=scope, ttl=timedelta(seconds=ttl_s), now=now or datetime.now(UTC)
    )


def bearer(scope: Scope = "admin") -> dict[str, str]:
    """The Authorization header for a token with ``scope``."""
    return {"Authorization": f"Bearer {token(scope)}"}


@dataclass
class Served:
    """A gateway serving a live cluster, and what a test needs to talk to it."""

    url: str
    app: Starlette
    http: httpx.AsyncClient
    door: FrontDoor
    log: JetStreamEventLog
    repo: Path

    def ws(self, path: str, *, scope: Scope | None = "read", **query: Any) -> Any:
        """A WebSocket client context for ``path`` (no token when scope is None)."""
        params = "&".join(f"{k}={v}" for k, v in query.items())
        url = self.url.replace("http://", "ws://") + path + (f"?{params}" if params else "")
        headers = bearer(scope) if scope is not None else {}
        return connect(url, additional_headers=headers, open_timeout=10)


@asynccontextmanager
async def serve_cluster(
    nats_url: str,
    tmp_path: Path,
    *,
    workers: int = 1,
    driver: bool = True,
    answer_timeout_s: float = 20,
    **gateway_options: Any,
) -> AsyncIterator[Served]:
    """Fresh streams, a driver (unless not), ``workers`` workers (0: none), the gateway."""
    repo = make_repo(tmp_path / "repo", {"app.py": "VERSION = 1\n"})
    async with AsyncExitStack() as stack:
        await stack.enter_async_context(fresh_jetstream_log(nats_url))
        client, log = await stack.enter_async_context(
            open_jetstream_log(nats_url, name="gateway-test")
        )
        cluster = Cluster(log, client, repo, tmp_path)
        if workers:
            await stack.enter_async_context(open_cluster((log, client), repo, tmp_path, workers))
        if driver:
            await stack.enter_async_context(running_driver(cluster))
        conn = Connection(nats_url, client, log, embedded=False)
        door = await stack.enter_async_context(
            open_front_door(conn, answer_timeout_s=answer_timeout_s)
        )
        gateway = await stack.enter_async_context(open_gateway(door, VERIFIER, **gateway_options))
        http = await stack.enter_async_context(httpx.AsyncClient(base_url=gateway.url, timeout=30))
        yield Served(gateway.url, gateway.app, http, door, log, repo)


@pytest.fixture
async def served(nats_url: str, tmp_path: Path) -> AsyncIterator[Served]:
    """A gateway on a cluster with a driver and one worker."""
    async with serve_cluster(nats_url, tmp_path) as s:
        yield s


async def receive_until(ws: ClientConnection, done: str, limit: int = 500) -> list[dict[str, Any]]:
    """Messages from ``ws`` until one whose payload type is ``done`` (included)."""
    got: list[dict[str, Any]] = []
    for _ in range(limit):
        message = msgspec.json.decode(await ws.recv())
        got.append(message)
        if message["envelope"]["payload"]["type"] == done:
            return got
    raise AssertionError(f"no {done} in {limit} messages")
