"""The MCP server at /mcp of the real gateway: uvicorn on loopback, the gateway's JWTs,
sessions in JetStream KV.

The SDK's client speaks to it as any HTTP MCP client would; the checks an MCP client would
not make on purpose (no token, a foreign Origin, an unknown session) use plain HTTP.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx2
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.types.version import LATEST_HANDSHAKE_VERSION

from claudecluster.auth import Scope, TokenSigner, TokenVerifier
from claudecluster.gateway import open_gateway
from claudecluster.mcp_server.http_endpoint import endpoint_security, mcp_for_gateway
from claudecluster.runtime.front_door import FrontDoor
from claudecluster.transport.mcp_sessions import JetStreamMcpSessionStore
from tests.mcp_server.claude_client import ask_claude_for_status
from tests.mcp_server.conftest import Live, initialize

pytestmark = pytest.mark.nats

SECRET = "test-secret-at-least-32-bytes-long-for-hs256"
SIGNER = TokenSigner("HS256", SECRET, "claudecluster", "claudecluster-gateway")
VERIFIER = TokenVerifier("HS256", SECRET, "claudecluster", "claudecluster-gateway")


def token(subject: str = "alice", scope: Scope = "read") -> str:
    return SIGNER.mint(subject=subject, scope=scope, ttl=timedelta(hours=1), now=datetime.now(UTC))


ALICE = token()


@asynccontextmanager
async def serving(door: FrontDoor) -> AsyncIterator[str]:
    """A gateway with the MCP endpoint on a free loopback port; yields the MCP URL."""
    mcp = mcp_for_gateway(door, VERIFIER, host="127.0.0.1", port=0, default_repo="/repo")
    async with open_gateway(
        door, VERIFIER, extra_routes=[mcp.route], extra_lifespans=[mcp.lifespan]
    ) as gateway:
        yield f"{gateway.url}/mcp"


def headers(bearer: str | None = ALICE, **extra: str) -> dict[str, str]:
    found = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}
    if bearer:
        found["Authorization"] = f"Bearer {bearer}"
    return found | extra


def call(name: str, arguments: dict[str, Any], request_id: int = 2) -> dict[str, Any]:
    return {
        "jsonrpc": "2.0",
        "id": request_id,
        "method": "tools/call",
        "params": {"name": name, "arguments": arguments},
    }


def message_of(response: httpx2.Response) -> dict[str, Any]:
    """The JSON-RPC message of a response, whether it came as JSON or as one SSE event."""
    if response.headers["content-type"].startswith("application/json"):
        found: dict[str, Any] = response.json()
        return found
    for line in response.text.splitlines():
        if line.startswith("data: "):
            found = json.loads(line.removeprefix("data: "))
            if "id" in found:
                return found
    raise AssertionError(f"no JSON-RPC response in {response.text!r}")


async def test_the_sdk_client_calls_tools_over_http_with_a_token(door: FrontDoor) -> None:
    async with serving(door) as url:
        for mode in ("legacy", "auto"):
            http = httpx2.AsyncClient(headers={"Authorization": f"Bearer {ALICE}"})
            async with http, Client(streamable_http_client(url, http_client=http), mode=mode) as c:
                result = await c.call_tool("run_status", {"run_id": "sample-happy"})
                tools = await c.list_tools()
                resources = await c.list_resources()
            assert (result.structured_content or {})["state"] == "completed", mode
            assert len(tools.tools) == 9  # preview_plan among them
            assert [str(r.uri) for r in resources.resources] == ["claudecluster://runs"]


async def test_a_request_without_a_valid_token_is_refused(door: FrontDoor) -> None:
    async with serving(door) as url, httpx2.AsyncClient() as http:
        missing = await http.post(url, json=initialize(), headers=headers(bearer=None))
        forged = TokenSigner("HS256", "another-secret-of-32-bytes-or-more!!", "claudecluster",
                             "claudecluster-gateway")  # fmt: skip
        wrong = await http.post(
            url,
            json=initialize(),
            headers=headers(
                bearer=forged.mint(
                    subject="eve", scope="admin", ttl=timedelta(hours=1), now=datetime.now(UTC)
                )
            ),
        )
    assert missing.status_code == 401
    assert missing.headers["www-authenticate"].startswith("Bearer")
    assert wrong.status_code == 401
    assert "mcp-session-id" not in wrong.headers


async def test_a_foreign_origin_or_host_is_refused(door: FrontDoor) -> None:
    async with serving(door) as url, httpx2.AsyncClient() as http:
        origin = await http.post(
            url, json=initialize(), headers=headers(Origin="http://evil.example")
        )
        host = await http.post(url, json=initialize(), headers=headers(Host="evil.example"))
        local = await http.post(
            url, json=initialize(), headers=headers(Origin="http://localhost:3000")
        )
    assert origin.status_code == 403
    assert host.status_code == 421
    assert local.status_code == 200


async def test_sessions_survive_a_restart_of_the_server(door: FrontDoor) -> None:
    async with serving(door) as url, httpx2.AsyncClient() as http:
        opened = await http.post(url, json=initialize(), headers=headers())
        session = opened.headers["mcp-session-id"]
        assert message_of(opened)["result"]["protocolVersion"] == LATEST_HANDSHAKE_VERSION
    # A new server (new process state, new port) serves the same session from KV.
    async with serving(door) as url, httpx2.AsyncClient() as http:
        served = await http.post(
            url,
            json=call("run_status", {"run_id": "sample-happy"}),
            headers=headers(**{"Mcp-Session-Id": session}),
        )
        stranger = await http.post(
            url,
            json=call("list_workers", {}),
            headers=headers(bearer=token("bob"), **{"Mcp-Session-Id": session}),
        )
        unknown = await http.post(
            url, json=call("list_workers", {}), headers=headers(**{"Mcp-Session-Id": "0" * 32})
        )
        missing = await http.post(url, json=call("list_workers", {}), headers=headers())
        ended = await http.delete(url, headers=headers(**{"Mcp-Session-Id": session}))
        after = await http.post(
            url, json=call("list_workers", {}), headers=headers(**{"Mcp-Session-Id": session})
        )
    assert served.status_code == 200
    assert message_of(served)["result"]["structuredContent"]["state"] == "completed"
    assert stranger.status_code == 404
    assert unknown.status_code == 404
    assert missing.status_code == 400
    assert ended.status_code == 200
    assert after.status_code == 404


async def test_the_endpoint_sends_nothing_outside_a_response(door: FrontDoor) -> None:
    async with serving(door) as url, httpx2.AsyncClient() as http:
        opened = await http.post(url, json=initialize(), headers=headers())
        stream = await http.get(
            url,
            headers=headers(
                Accept="text/event-stream", **{"Mcp-Session-Id": opened.headers["mcp-session-id"]}
            ),
        )
    assert stream.status_code == 405
    assert stream.headers["allow"] == "POST, DELETE"


async def test_tools_that_change_things_need_the_gateways_scopes(door: FrontDoor) -> None:
    async with serving(door) as url, httpx2.AsyncClient() as http:
        opened = await http.post(url, json=initialize(), headers=headers())
        session = {"Mcp-Session-Id": opened.headers["mcp-session-id"]}
        refused = await http.post(
            url,
            json=call("rollback", {"run_id": "sample-happy"}),
            headers=headers(**session),
        )
        plan = "tasks:\n  - {id: a, prompt: 'true', executor: shell}\n"
        submit = await http.post(
            url, json=call("submit_plan", {"plan": plan}, 3), headers=headers(**session)
        )
    rollback_result = message_of(refused)["result"]
    assert rollback_result["isError"] is True
    assert "'admin' scope" in rollback_result["content"][0]["text"]
    submit_result = message_of(submit)["result"]
    assert submit_result["isError"] is True
    assert "'submit' scope" in submit_result["content"][0]["text"]


async def test_claude_code_calls_run_status_over_http_with_a_token(
    door: FrontDoor, tmp_path: Path
) -> None:
    async with serving(door) as url:
        await ask_claude_for_status(
            tmp_path,
            {"type": "http", "url": url, "headers": {"Authorization": f"Bearer {ALICE}"}},
        )


async def test_set_level_is_kept_with_the_session_in_kv(door: FrontDoor) -> None:
    store = JetStreamMcpSessionStore(door.connection.client.jetstream())
    async with serving(door) as url, httpx2.AsyncClient() as http:
        opened = await http.post(url, json=initialize(), headers=headers())
        session_id = opened.headers["mcp-session-id"]
        answer = await http.post(
            url,
            json={"jsonrpc": "2.0", "id": 5, "method": "logging/setLevel",
                  "params": {"level": "error"}},
            headers=headers(**{"Mcp-Session-Id": session_id}),
        )  # fmt: skip
        ping = await http.post(
            url,
            json={"jsonrpc": "2.0", "id": 6, "method": "ping"},
            headers=headers(**{"Mcp-Session-Id": session_id}),
        )
    assert message_of(answer)["result"] == {}
    assert message_of(ping)["result"] == {}
    session = await store.get(session_id)
    assert session is not None
    assert (session.log_level, session.owner, session.client_name) == ("error", "alice", "test")


async def test_odd_requests_get_the_status_that_says_why(door: FrontDoor) -> None:
    async with serving(door) as url, httpx2.AsyncClient() as http:
        too_big = await http.post(
            url, content=b"[" + b" " * (4 * 1024 * 1024) + b"]", headers=headers()
        )
        put = await http.put(url, json=initialize(), headers=headers())
        no_read_scope = await http.post(url, json=initialize(), headers=headers(bearer="x.y.z"))
        not_json = await http.post(url, content=b"{not json", headers=headers())
    assert too_big.status_code == 413
    assert put.status_code == 405
    assert no_read_scope.status_code == 401
    assert not_json.status_code == 400


def test_an_endpoint_on_a_named_host_accepts_that_host_and_loopback() -> None:
    security = endpoint_security("10.1.2.3", 8080, hosts=["mcp.example:443"])
    assert "10.1.2.3:8080" in security.allowed_hosts
    assert "mcp.example:443" in security.allowed_hosts
    assert "127.0.0.1:8080" in security.allowed_hosts
    wildcard = endpoint_security("0.0.0.0", 8080)
    assert not any(host.startswith("0.0.0.0") for host in wildcard.allowed_hosts)


async def test_progress_of_a_followed_run_arrives_over_http(live: Live) -> None:
    reported: list[float] = []

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        reported.append(progress)

    plan = "tasks:\n  - {id: a, prompt: 'echo a > a.txt', executor: shell}\n"
    arguments = {"plan": plan, "repo": str(live.repo), "wait": True, "timeout_s": 60}
    async with serving(live.door) as url:
        http = httpx2.AsyncClient(headers={"Authorization": f"Bearer {token(scope='submit')}"})
        async with http, Client(streamable_http_client(url, http_client=http)) as client:
            result = await client.call_tool("submit_plan", arguments, progress_callback=on_progress)
    assert not result.is_error, result.content
    assert (result.structured_content or {})["status"]["state"] == "completed"
    assert reported[-1] == 1


async def test_deeply_nested_json_is_a_bad_request_not_a_server_error(door: FrontDoor) -> None:
    deep = b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":' + b"[" * 100_000
    async with serving(door) as url, httpx2.AsyncClient() as http:
        answers = [
            await http.post(url, content=deep, headers=headers()),
            await http.post(url, content=b"[" * 100_000, headers=headers()),
            await http.post(
                url, content=deep, headers=headers(**{"MCP-Protocol-Version": "2099-01-01"})
            ),
        ]
    assert [a.status_code for a in answers] == [400, 400, 400]
    assert "nested too deeply" in answers[0].text
