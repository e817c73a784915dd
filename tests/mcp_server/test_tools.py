"""The MCP server through the SDK's own client, in process, on a real nats-server.

Both ways the SDK connects in process are covered: the current protocol revision (the
per-request path, no handshake) and the handshake era (``mode="legacy"``), where ``ping``
and ``logging/setLevel`` live.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import mcp.types as mcp_types
import pytest
from mcp import Client, MCPDeprecationWarning
from mcp.types.version import LATEST_HANDSHAKE_VERSION

from claudecluster.mcp_server.server import build_mcp_server
from claudecluster.runtime.connection import Connection
from claudecluster.runtime.front_door import FrontDoor, open_front_door
from claudecluster.runtime.local_cluster import open_local_services
from claudecluster.scripted_model import Script, open_scripted_model
from claudecluster.settings import Settings
from tests.mcp_server.conftest import Live
from tests.support import make_repo

pytestmark = pytest.mark.nats

TOOLS = {
    "run_goal",
    "submit_plan",
    "preview_plan",
    "run_status",
    "task_status",
    "task_logs",
    "cancel",
    "list_workers",
    "rollback",
}


def text_of(result: mcp_types.CallToolResult) -> str:
    block = result.content[0]
    assert isinstance(block, mcp_types.TextContent)
    return block.text


async def test_the_server_lists_every_tool_with_an_input_and_output_schema(
    door: FrontDoor,
) -> None:
    async with Client(build_mcp_server(door, default_repo="/repo")) as client:
        tools = {tool.name: tool for tool in (await client.list_tools()).tools}
    assert set(tools) == TOOLS
    run_id = tools["run_status"].input_schema["properties"]["run_id"]
    assert run_id["pattern"].startswith("^[A-Za-z0-9]")
    assert tools["run_status"].output_schema is not None
    assert tools["run_status"].annotations is not None
    assert tools["run_status"].annotations.read_only_hint is True


async def test_run_status_returns_the_runs_recorded_state_and_tasks(door: FrontDoor) -> None:
    async with Client(build_mcp_server(door, default_repo="/repo")) as client:
        result = await client.call_tool("run_status", {"run_id": "sample-happy"})
    assert not result.is_error
    status: dict[str, Any] = result.structured_content or {}
    assert status["state"] == "completed"
    assert status["counts"] == {"merged": 6}
    assert [t["task_id"] for t in status["tasks"]][:2] == ["schema", "api"]
    # The text is the same result as JSON: what Claude Code shows its model.
    assert json.loads(text_of(result))["state"] == "completed"


async def test_task_status_and_logs_read_one_task(door: FrontDoor) -> None:
    async with Client(build_mcp_server(door, default_repo="/repo")) as client:
        status = await client.call_tool("task_status", {"task": "sample-happy/api"})
        logs = await client.call_tool("task_logs", {"task": "api", "limit": 1})
    assert (status.structured_content or {})["state"] == "merged"
    lines = (logs.structured_content or {})["lines"]
    assert len(lines) == 1
    assert (logs.structured_content or {})["truncated"] is True


async def test_list_workers_shows_the_workers_the_log_knows(door: FrontDoor) -> None:
    async with Client(build_mcp_server(door, default_repo="/repo")) as client:
        result = await client.call_tool("list_workers", {})
    workers = (result.structured_content or {})["workers"]
    assert [w["worker_id"] for w in workers] == ["w1", "w2", "w3"]


async def test_a_bad_argument_is_refused_with_the_argument_named(door: FrontDoor) -> None:
    async with Client(build_mcp_server(door, default_repo="/repo")) as client:
        bad_id = await client.call_tool("run_status", {"run_id": "no spaces allowed"})
        missing = await client.call_tool("task_status", {})
        bad_limit = await client.call_tool("task_logs", {"task": "api", "limit": 0})
        relative = await client.call_tool("run_goal", {"goal": "x", "repo": "some/dir"})
        nul = await client.call_tool("run_goal", {"goal": "a\x00b", "repo": "/repo"})
    assert bad_id.is_error
    assert "run_id" in text_of(bad_id)
    assert "pattern" in text_of(bad_id)
    assert missing.is_error
    assert "task" in text_of(missing)
    assert bad_limit.is_error
    assert "limit" in text_of(bad_limit)
    assert relative.is_error
    assert "repo" in text_of(relative)
    assert nul.is_error
    assert "goal" in text_of(nul)


async def test_an_unknown_run_is_a_tool_error_naming_it(door: FrontDoor) -> None:
    async with Client(build_mcp_server(door, default_repo="/repo")) as client:
        result = await client.call_tool("run_status", {"run_id": "nope"})
        rollback = await client.call_tool(
            "rollback", {"run_id": "sample-happy", "to_task": "api", "to_sequence": 3}
        )
    assert result.is_error
    assert "nope" in text_of(result)
    assert rollback.is_error
    assert "not both" in text_of(rollback)


async def test_a_plan_that_does_not_parse_is_refused_with_the_problem(door: FrontDoor) -> None:
    async with Client(build_mcp_server(door, default_repo="/repo")) as client:
        result = await client.call_tool("submit_plan", {"plan": "tasks:\n  - {id: a}\n"})
    assert result.is_error
    assert "prompt" in text_of(result)


async def test_resources_list_runs_and_serve_a_run_report(door: FrontDoor) -> None:
    async with Client(build_mcp_server(door, default_repo="/repo")) as client:
        listed = await client.list_resources()
        templates = await client.list_resource_templates()
        runs = await client.read_resource("claudecluster://runs")
        report = await client.read_resource("claudecluster://runs/sample-happy/report")
    assert [str(r.uri) for r in listed.resources] == ["claudecluster://runs"]
    assert sorted(t.uri_template for t in templates.resource_templates) == [
        "claudecluster://runs/{run_id}",
        "claudecluster://runs/{run_id}/report",
    ]
    first = runs.contents[0]
    assert isinstance(first, mcp_types.TextResourceContents)
    assert first.text.startswith("sample-happy\tcompleted\t6/6\t")
    text = report.contents[0]
    assert isinstance(text, mcp_types.TextResourceContents)
    assert "sample-happy" in text.text
    assert text.mime_type == "text/markdown"


async def test_handshake_clients_get_ping_and_set_level(door: FrontDoor) -> None:
    async with Client(build_mcp_server(door, default_repo="/repo"), mode="legacy") as client:
        assert client.server_capabilities.logging is not None
        assert client.protocol_version == LATEST_HANDSHAKE_VERSION
        # The SDK warns that both are gone from the current revision; they are the
        # handshake era's, which is what this client negotiated.
        with pytest.warns(MCPDeprecationWarning):
            await client.send_ping()
        with pytest.warns(MCPDeprecationWarning):
            await client.set_logging_level("debug")
        result = await client.call_tool("run_status", {"run_id": "sample-happy"})
    assert not result.is_error


async def test_submit_plan_with_wait_reports_progress_until_the_run_ends(live: Live) -> None:
    reported: list[tuple[float, float | None, str | None]] = []
    logs: list[str] = []

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        reported.append((progress, total, message))

    async def on_log(params: mcp_types.LoggingMessageNotificationParams) -> None:
        logs.append(str(params.data))

    plan = (
        "goal: two files\n"
        "tasks:\n"
        "  - {id: a, prompt: 'echo a > a.txt', executor: shell}\n"
        "  - {id: b, prompt: 'cat a.txt > b.txt', executor: shell, depends_on: [a]}\n"
    )
    server = build_mcp_server(live.door, default_repo=str(live.repo))
    async with Client(server, mode="legacy", logging_callback=on_log) as client:
        with pytest.warns(MCPDeprecationWarning):
            await client.set_logging_level("info")
        result = await client.call_tool(
            "submit_plan",
            {"plan": plan, "wait": True, "timeout_s": 60},
            progress_callback=on_progress,
        )
    assert not result.is_error, text_of(result)
    submitted: dict[str, Any] = result.structured_content or {}
    assert submitted["status"]["state"] == "completed"
    assert submitted["status"]["counts"] == {"merged": 2}
    assert reported[-1][:2] == (2, 2)
    assert [done for done, _, _ in reported] == sorted(done for done, _, _ in reported)
    assert any(line.endswith("/b: merged") for line in logs)


PLANNED = {
    "goal": "two files",
    "tasks": [
        {"id": "a", "prompt": "echo a > a.txt", "executor": "shell"},
        {"id": "b", "prompt": "cat a.txt > b.txt", "executor": "shell", "depends_on": ["a"]},
    ],
}


async def test_run_goal_with_wait_plans_with_claude_and_follows_the_run_to_its_end(
    connection: Connection, tmp_path: Path
) -> None:
    # The real Claude Code CLI plans on the scripted model; the plan's shell tasks run on a
    # local worker; the tool follows the run and reports progress until it ends.
    answer = "Here is the plan.\n```json\n" + json.dumps(PLANNED) + "\n```"
    script = Script.model_validate(
        {"tasks": [{"marker": "Plan how several agents", "turns": [{"text": answer}]}]}
    )
    repo = make_repo(tmp_path / "repo", {"README.md": "hello\n"})
    settings = Settings.model_validate({"driver": {"work_dir": str(tmp_path / "driver")}})
    reported: list[float] = []

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        reported.append(progress)

    async with (
        open_scripted_model(script) as model,
        open_front_door(connection, answer_timeout_s=30) as door,
        open_local_services(
            connection, settings, workers=1, project_dir=tmp_path,
            api_environment={"ANTHROPIC_BASE_URL": model.url, "ANTHROPIC_API_KEY": "sk-x"},
        ),
    ):  # fmt: skip
        server = build_mcp_server(door, default_repo=str(repo))
        async with Client(server) as client:
            result = await client.call_tool(
                "run_goal",
                {"goal": "two files", "wait": True, "timeout_s": 120},
                progress_callback=on_progress,
            )
    assert not result.is_error, text_of(result)
    submitted: dict[str, Any] = result.structured_content or {}
    assert submitted["status"]["state"] == "completed"
    assert submitted["status"]["counts"] == {"merged": 2}
    assert reported[-1:] == [2]
    assert [s.task for s in model.served if s.task is not None] == ["Plan how several agents"]
