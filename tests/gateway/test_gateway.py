"""The gateway end to end: HTTP and WebSocket against a real cluster (shell tasks)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import anyio
import msgspec
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Mount, Route
from websockets.exceptions import InvalidStatus

from claudecluster.events.subjects import run_filter
from claudecluster.gateway import OPERATIONS, openapi_document, openapi_text
from claudecluster.transport.base import read_all
from tests.gateway.conftest import Served, bearer, receive_until, serve_cluster, token


def shell_plan(*tasks: tuple[str, str, list[str]]) -> list[dict[str, Any]]:
    return [
        {"task_id": t, "title": f"task {t}", "prompt": cmd, "executor": "shell", "depends_on": deps}
        for t, cmd, deps in tasks
    ]


async def test_the_api_takes_a_plan_files_field_names_id_and_no_title(served: Served) -> None:
    plan = [{"id": "a", "prompt": "echo a > a.txt", "executor": "shell"},
            {"task_id": "b", "title": "second", "prompt": "cat a.txt > b.txt",
             "executor": "shell", "depends_on": ["a"]}]  # fmt: skip
    answer = await served.http.post(
        "/runs",
        json={"goal": "named", "repo": str(served.repo), "plan": plan, "run_id": "rn"},
        headers=bearer("submit"),
    )
    assert answer.status_code == 202, answer.text
    with anyio.fail_after(60):
        async with served.ws("/runs/rn/events") as ws:
            events = await receive_until(ws, "run.completed")
    planned = next(e for e in events if e["envelope"]["payload"]["type"] == "run.planned")
    tasks = planned["envelope"]["payload"]["tasks"]
    assert [(t["task_id"], t["title"]) for t in tasks] == [("a", "a"), ("b", "second")]


async def test_a_run_submitted_over_http_completes_and_is_served_from_every_route(
    served: Served,
) -> None:
    plan = shell_plan(("a", "echo a > a.txt", []), ("b", "cat a.txt > b.txt", ["a"]))
    answer = await served.http.post(
        "/runs",
        json={"goal": "two files", "repo": str(served.repo), "plan": plan, "run_id": "r1"},
        headers=bearer("submit"),
    )
    assert answer.status_code == 202, answer.text
    body = answer.json()
    assert body["run_id"] == "r1"
    assert answer.headers["location"] == "/runs/r1"
    # Accepted means the driver recorded it: the run is readable at once.
    run = await served.http.get("/runs/r1", headers=bearer("read"))
    assert run.status_code == 200
    assert run.json()["run"]["goal"] == "two files"

    with anyio.fail_after(60):
        async with served.ws("/runs/r1/events") as ws:
            events = await receive_until(ws, "run.completed")
    types = [e["envelope"]["payload"]["type"] for e in events]
    assert types[0] == "run.submitted"
    assert types.count("task.merged") == 2
    await served.door.wait_caught_up(events[-1]["seq"])

    detail = (await served.http.get("/runs/r1", headers=bearer("read"))).json()
    assert detail["run"]["state"] == "completed"
    assert [t["state"] for t in detail["tasks"]] == ["merged", "merged"]
    listed = (await served.http.get("/runs", headers=bearer("read"))).json()
    assert [r["run_id"] for r in listed["runs"]] == ["r1"]
    task = (await served.http.get("/tasks/b", headers=bearer("read"))).json()
    assert (task["run_id"], task["state"]) == ("r1", "merged")
    logs = (await served.http.get("/tasks/a/logs?run_id=r1", headers=bearer("read"))).json()
    assert "task.succeeded" in [line["type"] for line in logs["lines"]]
    workers = (await served.http.get("/workers", headers=bearer("read"))).json()
    assert [w["state"] for w in workers["workers"]] == ["active"]
    health = (await served.http.get("/health")).json()
    assert health["status"] == "ok"

    metrics = (await served.http.get("/metrics", headers=bearer("read"))).text
    assert 'claudecluster_gateway_requests_total{operation="submitRun",status="202"} 1.0' in metrics
    assert 'claudecluster_runs{state="completed"} 1.0' in metrics
    assert "claudecluster_gateway_events_sent_total" in metrics


async def test_a_single_task_is_a_run_of_one_task(served: Served) -> None:
    answer = await served.http.post(
        "/tasks",
        json={"repo": str(served.repo), "prompt": "echo hi > hi.txt", "executor": "shell",
              "task_id": "hello"},
        headers=bearer("submit"),
    )  # fmt: skip
    assert answer.status_code == 202, answer.text
    body = answer.json()
    assert body["task_id"] == "hello"
    with anyio.fail_after(60):
        async with served.ws(f"/runs/{body['run_id']}/events") as ws:
            await receive_until(ws, "run.completed")


async def test_a_websocket_client_reconnecting_from_the_next_sequence_loses_nothing(
    served: Served,
) -> None:
    plan = shell_plan(("a", "echo a > a.txt", []), ("b", "echo b > b.txt", ["a"]),
                      ("c", "echo c > c.txt", ["b"]))  # fmt: skip
    answer = await served.http.post(
        "/runs", json={"goal": "chain", "repo": str(served.repo), "plan": plan, "run_id": "r2"},
        headers=bearer("submit"),
    )  # fmt: skip
    assert answer.status_code == 202
    seen: list[int] = []
    with anyio.fail_after(60):
        async with served.ws("/runs/r2/events") as ws:
            for _ in range(3):  # then drop the connection mid-run
                seen.append(msgspec.json.decode(await ws.recv())["seq"])
        async with served.ws("/runs/r2/events", from_seq=seen[-1] + 1) as ws:
            seen.extend(e["seq"] for e in await receive_until(ws, "run.completed"))
    stored = [e.seq for e in await read_all(served.log, subjects=run_filter("r2"))]
    assert seen == stored  # every event of the run, in order, none twice


async def test_cancelling_a_task_and_then_its_run_answers_with_the_drivers_events(
    served: Served,
) -> None:
    plan = shell_plan(("a", "sleep 60", []), ("b", "sleep 60", []))
    answer = await served.http.post(
        "/runs", json={"goal": "g", "repo": str(served.repo), "plan": plan, "run_id": "r3"},
        headers=bearer("submit"),
    )  # fmt: skip
    assert answer.status_code == 202
    with anyio.fail_after(30):
        async with served.ws("/runs/r3/events") as ws:
            started = await receive_until(ws, "task.started")
            await served.door.wait_caught_up(started[-1]["seq"])
            running = started[-1]["envelope"]["payload"]["task_id"]
            cancelled = await served.http.request(
                "DELETE", f"/tasks/{running}", params={"run_id": "r3"},
                json={"reason": "not needed"}, headers=bearer("submit"),
            )  # fmt: skip
            assert cancelled.status_code == 200, cancelled.text
            assert cancelled.json()["event"] == "task.cancelled"
            assert cancelled.json()["task_id"] == running
            # The worker takes the other task next. Cancel the run while that one runs,
            # so its worker stops it (one started after the cancellation would run on).
            other = (await receive_until(ws, "task.started"))[-1]["envelope"]["payload"]
            assert other["task_id"] != running
            run = await served.http.delete("/runs/r3", headers=bearer("submit"))
            assert run.status_code == 200, run.text
            assert run.json()["event"] == "run.cancelled"
            stopped = await receive_until(ws, "task.cancelled")
            assert stopped[-1]["envelope"]["payload"]["task_id"] == other["task_id"]
    again = await served.http.delete("/runs/r3", headers=bearer("submit"))
    assert again.status_code == 409
    assert again.headers["content-type"] == "application/problem+json"
    assert "already ended" in again.json()["detail"]
    taken = await served.http.post(
        "/runs", json={"goal": "g", "repo": str(served.repo), "plan": plan, "run_id": "r3"},
        headers=bearer("submit"),
    )  # fmt: skip
    assert taken.status_code == 409
    assert "already exists" in taken.json()["detail"]


@pytest.mark.parametrize(
    ("method", "path"),
    [("GET", "/runs"), ("POST", "/runs"), ("GET", "/runs/x"), ("DELETE", "/runs/x"),
     ("POST", "/runs/x/rollback"), ("POST", "/tasks"), ("GET", "/tasks/x"),
     ("GET", "/tasks/x/logs"), ("DELETE", "/tasks/x"), ("GET", "/workers"), ("GET", "/metrics"),
     ("GET", "/openapi.json")],
)  # fmt: skip
def test_every_route_but_health_needs_a_token(method: str, path: str) -> None:
    operation = next(op for op in OPERATIONS if op.method == method and _matches(op.path, path))
    assert operation.scope is not None
    assert 401 in operation.errors


def _matches(template: str, path: str) -> bool:
    parts, given = template.split("/"), path.split("/")
    return len(parts) == len(given) and all(
        p == g or p.startswith("{") for p, g in zip(parts, given, strict=True)
    )


async def test_auth_is_401_without_a_valid_token_and_403_without_the_scope(
    nats_url: str, tmp_path: Path
) -> None:
    async with serve_cluster(nats_url, tmp_path, workers=0) as served:
        http = served.http
        missing = await http.get("/runs")
        assert missing.status_code == 401
        assert missing.headers["content-type"] == "application/problem+json"
        assert missing.headers["www-authenticate"].startswith("Bearer")
        assert (await http.get("/runs", headers={"Authorization": "Basic abc"})).status_code == 401
        forged = token("read")[:-4] + "AAAA"
        assert (await http.get("/runs", headers={"Authorization": f"Bearer {forged}"})
                ).status_code == 401  # fmt: skip
        expired = token("read", ttl_s=1, now=_long_ago())
        answer = await http.get("/runs", headers={"Authorization": f"Bearer {expired}"})
        assert answer.status_code == 401
        assert "expired" in answer.json()["detail"]

        weak = await http.post("/runs", json={}, headers=bearer("read"))
        assert weak.status_code == 403
        assert "'submit'" in weak.json()["detail"]
        rollback = await http.post("/runs/x/rollback", headers=bearer("submit"))
        assert rollback.status_code == 403
        assert (await http.get("/runs", headers=bearer("admin"))).status_code == 200  # nests
        assert (await http.get("/health")).status_code == 200

        with pytest.raises(InvalidStatus) as denied:
            async with served.ws("/runs/x/events", scope=None):
                pass
        assert denied.value.response.status_code == 401

        metrics = (await http.get("/metrics", headers=bearer("read"))).text
        assert 'operation="listRuns",status="401"} 4.0' in metrics
        assert 'operation="submitRun",status="403"} 1.0' in metrics


def _long_ago() -> datetime:
    return datetime.now(UTC) - timedelta(hours=1)


async def test_unknown_ids_are_404_problems_and_invalid_input_is_4xx_naming_the_field(
    nats_url: str, tmp_path: Path
) -> None:
    async with serve_cluster(nats_url, tmp_path, workers=0) as served:
        http = served.http
        unknown = [("GET", "/runs/nope"), ("GET", "/tasks/nope"), ("GET", "/tasks/nope/logs"),
                   ("DELETE", "/runs/nope"), ("DELETE", "/tasks/nope"),
                   ("POST", "/runs/nope/rollback")]  # fmt: skip
        for method, path in unknown:
            answer = await http.request(method, path, headers=bearer("admin"))
            assert answer.status_code == 404, (method, path, answer.text)
            assert answer.headers["content-type"] == "application/problem+json"
            assert "'nope'" in answer.json()["detail"]
        with pytest.raises(InvalidStatus) as denied:
            async with served.ws("/runs/nope/events"):
                pass
        assert denied.value.response.status_code == 404

        repo = str(served.repo)
        task = shell_plan(("a", "true", []))
        cases: list[tuple[Any, str]] = [
            ({"goal": 1, "repo": repo, "plan": task}, "$.goal"),
            ({"goal": "g", "plan": task}, "$.repo"),
            ({"goal": "g", "repo": "relative/path", "plan": task}, "$.repo"),
            ({"goal": "g", "repo": repo, "plan": [{**task[0], "task_id": "a b"}]},
             "$.plan[0].task_id"),
            ({"goal": "g", "repo": repo, "plan": task, "surprise": 1}, "$.surprise"),
            ({"goal": "g\u0000", "repo": repo, "plan": task}, "$.goal"),
            ({"goal": "g", "repo": repo}, "$.plan"),
            ({"goal": "g", "repo": repo, "plan": task, "claude_planner": True}, "$.plan"),
            ({"goal": "g", "repo": repo,
              "plan": [{**task[0], "mcp_servers": {"s": {"command": "x", "url": "http://h/"}}}]},
             "$.plan[0].mcp_servers.s"),
            ({"goal": "g", "repo": repo,
              "plan": [{**task[0], "mcp_servers": {"s": {"cmd": "x"}}}]},
             "$.plan[0].mcp_servers[...].cmd"),
            ({"goal": "g", "repo": repo,
              "plan": shell_plan(("a", "true", ["b"]), ("b", "true", ["a"]))}, "$.plan"),
        ]  # fmt: skip
        for body, field in cases:
            answer = await http.post("/runs", json=body, headers=bearer("submit"))
            assert answer.status_code == 422, (body, answer.text)
            assert answer.headers["content-type"] == "application/problem+json"
            assert [e["field"] for e in answer.json()["errors"]] == [field], answer.text
        relative = await http.post("/runs", json=cases[2][0], headers=bearer("submit"))
        assert (
            "expected an absolute path on the driver's machine" in (relative.json()["detail"])
        )  # the pattern in words, not the regex
        named = await http.post("/runs", json=cases[3][0], headers=bearer("submit"))
        assert "letters, digits, '-' and '_'" in named.json()["detail"]
        for url in ("https://github.com/o/r.git", "git@github.com:o/r.git"):
            # Refused at submission with the way round it, never accepted and then failed.
            remote = await http.post(
                "/runs", json={"goal": "g", "repo": url, "plan": task}, headers=bearer("submit")
            )
            assert remote.status_code == 422, remote.text
            assert "git URL is not cloned by the driver" in remote.json()["detail"], remote.text
        cycle = await http.post("/runs", json=cases[-1][0], headers=bearer("submit"))
        assert "cycle" in cycle.json()["detail"]
        broken = await http.post("/runs", content=b"{not json", headers=bearer("submit"))
        assert broken.status_code == 400
        bad_query = await http.get("/tasks/a?run_id=no%20spaces", headers=bearer("read"))
        assert bad_query.status_code == 422
        assert bad_query.json()["errors"][0]["field"] == "run_id"
        with pytest.raises(InvalidStatus) as invalid:
            async with served.ws("/runs/nope/events", from_seq="zero"):
                pass
        assert invalid.value.response.status_code == 422


async def test_the_openapi_document_matches_the_routes_and_the_committed_file(
    served: Served, repo_root: Path
) -> None:
    committed = (repo_root / "docs" / "openapi.json").read_text(encoding="utf-8")
    assert committed == openapi_text(), "run 'claudecluster gateway openapi' to regenerate"
    document = openapi_document()
    documented = {(m.upper(), p) for p, ops in document["paths"].items() for m in ops}
    routes = {
        (method, route.path)
        for route in served.app.routes
        if isinstance(route, Route)
        for method in (route.methods or set()) - {"HEAD"}
    }
    assert routes == documented
    served_doc = await served.http.get("/openapi.json", headers=bearer("read"))
    assert served_doc.json() == json.loads(committed)


async def test_without_a_driver_a_submission_is_a_503_to_retry_not_a_client_error(
    nats_url: str, tmp_path: Path
) -> None:
    async with serve_cluster(nats_url, tmp_path, workers=0, driver=False,
                             answer_timeout_s=0.5) as served:  # fmt: skip
        plan = shell_plan(("a", "true", []))
        answer = await served.http.post(
            "/runs", json={"goal": "g", "repo": str(served.repo), "plan": plan},
            headers=bearer("submit"),
        )  # fmt: skip
    assert answer.status_code == 503
    assert answer.headers["retry-after"] == "5"
    assert "no driver answered" in answer.json()["detail"]


async def test_extra_routes_and_lifespans_are_mounted_beside_the_gateway(
    nats_url: str, tmp_path: Path
) -> None:
    lifespan_states: list[str] = []

    @asynccontextmanager
    async def extra_lifespan(app: Starlette) -> AsyncIterator[None]:
        del app
        lifespan_states.append("entered")
        yield
        lifespan_states.append("exited")

    async def extra(request: Request) -> Response:
        del request
        return PlainTextResponse("mounted")

    mount = Mount("/mcp", routes=[Route("/", extra)])
    async with serve_cluster(nats_url, tmp_path, workers=0, extra_routes=[mount],
                             extra_lifespans=[extra_lifespan]) as served:  # fmt: skip
        answer = await served.http.get("/mcp/")
        assert (answer.status_code, answer.text) == (200, "mounted")
        assert lifespan_states == ["entered"]
    assert lifespan_states == ["entered", "exited"]
