"""MCP for people: completions of run and task ids, the three prompts, and subscriptions to
a run's resources that tell a client when the run's events arrive. The SDK's client over
a real session (and the 2026-07-28 listen stream), a real nats-server, a real driver.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import anyio
import mcp.types as mcp_types
import pytest
from mcp import Client, MCPDeprecationWarning
from mcp.shared.exceptions import MCPError
from mcp.shared.subscriptions import ResourceUpdated

from claudecluster.mcp_server.server import build_mcp_server
from claudecluster.runtime.connection import Connection
from claudecluster.runtime.front_door import FrontDoor, open_front_door
from claudecluster.runtime.local_cluster import open_local_services
from claudecluster.settings import Settings
from tests.support import make_repo

pytestmark = pytest.mark.nats

#: How long the driver may take to record a run and answer a cancel on a loaded machine.
_DRIVER_ANSWERS_WITHIN_S = 60

RUN_TEMPLATE = mcp_types.ResourceTemplateReference(uri="claudecluster://runs/{run_id}")


def _text(message: mcp_types.PromptMessage) -> str:
    assert isinstance(message.content, mcp_types.TextContent)
    return message.content.text


async def test_run_and_task_ids_complete_from_the_live_view(door: FrontDoor) -> None:
    why = mcp_types.PromptReference(name="why_task_failed")
    async with Client(build_mcp_server(door, default_repo="/repo")) as client:
        runs = await client.complete(RUN_TEMPLATE, {"name": "run_id", "value": "sample"})
        none = await client.complete(RUN_TEMPLATE, {"name": "run_id", "value": "zzz"})
        tasks = await client.complete(why, {"name": "task", "value": "sample-happy/"})
        narrowed = await client.complete(
            why, {"name": "task", "value": ""}, context_arguments={"run_id": "sample-happy"}
        )
        unknown = await client.complete(why, {"name": "colour", "value": ""})
    assert runs.completion.values == ["sample-happy"]
    assert none.completion.values == []
    expected = [f"sample-happy/{t.task_id}" for t in door.view.tasks_of("sample-happy")]
    assert sorted(tasks.completion.values) == sorted(expected)
    assert len(expected) == 6
    assert sorted(narrowed.completion.values) == sorted(expected)
    assert unknown.completion.values == []


async def test_the_prompts_plan_a_goal_summarise_a_run_and_explain_a_task(
    door: FrontDoor,
) -> None:
    task = door.view.tasks_of("sample-happy")[0]
    async with Client(build_mcp_server(door, default_repo="/repo")) as client:
        listed = {p.name: p for p in (await client.list_prompts()).prompts}
        plan = await client.get_prompt("plan_goal", {"goal": "add type hints"})
        summary = await client.get_prompt("summarise_run", {"run_id": "sample-happy"})
        why = await client.get_prompt("why_task_failed", {"task": f"sample-happy/{task.task_id}"})
    assert set(listed) == {"plan_goal", "summarise_run", "why_task_failed"}
    assert [a.name for a in listed["why_task_failed"].arguments or []] == ["task"]
    assert "add type hints" in _text(plan.messages[0])
    assert "preview_plan" in _text(plan.messages[0])
    assert "never start a run without my yes" in _text(plan.messages[0])
    summarised = _text(summary.messages[0])
    assert "Summarise ClaudeCluster run sample-happy" in summarised
    assert "# " in summarised  # the report's Markdown rides along
    explained = _text(why.messages[0])
    assert f"Task sample-happy/{task.task_id} has not failed: it is merged." in explained


async def test_a_subscribed_client_is_told_when_the_runs_events_arrive(
    connection: Connection, tmp_path: Path
) -> None:
    # A driver and no worker: the run waits with its task queued until the client cancels
    # it, so what the client is told follows from what it does, not from a race.
    repo = make_repo(tmp_path / "repo", {"README.md": "hello\n"})
    settings = Settings.model_validate({"driver": {"work_dir": str(tmp_path / "driver")}})
    updated: list[str] = []
    told = anyio.Event()

    async def on_message(message: Any) -> None:
        if isinstance(message, mcp_types.ResourceUpdatedNotification):
            updated.append(str(message.params.uri))
            if "cancel" in done_by:
                told.set()

    done_by: list[str] = []
    plan = "tasks:\n  - {id: wait, prompt: 'true', executor: shell}\n"
    async with (
        open_front_door(connection, answer_timeout_s=30) as door,
        open_local_services(connection, settings, workers=0, project_dir=tmp_path),
    ):
        server = build_mcp_server(door, default_repo=str(repo))
        async with Client(server, mode="legacy", message_handler=on_message) as client:
            resources = client.server_capabilities.resources
            assert resources is not None
            assert resources.subscribe is True
            assert client.server_capabilities.completions is not None
            submitted = await client.call_tool("submit_plan", {"plan": plan})
            run_id = (submitted.structured_content or {})["run_id"]
            uri = f"claudecluster://runs/{run_id}"
            with pytest.warns(MCPDeprecationWarning):
                await client.subscribe_resource(uri)
            with pytest.warns(MCPDeprecationWarning), pytest.raises(MCPError, match="cannot be"):
                await client.subscribe_resource("claudecluster://elsewhere")
            done_by.append("cancel")
            cancelled = await client.call_tool("cancel", {"target": run_id})
            assert not cancelled.is_error
            with anyio.fail_after(_DRIVER_ANSWERS_WITHIN_S):
                await told.wait()
            read = await client.read_resource(uri)
            with pytest.warns(MCPDeprecationWarning):
                await client.unsubscribe_resource(uri)
    assert uri in updated
    assert "claudecluster://runs" not in updated  # not subscribed to, not told
    content = read.contents[0]
    assert isinstance(content, mcp_types.TextResourceContents)
    assert json.loads(content.text)["state"] == "cancelled"


async def test_a_listening_client_of_the_current_revision_is_told_too(
    connection: Connection, tmp_path: Path
) -> None:
    repo = make_repo(tmp_path / "repo", {"README.md": "hello\n"})
    settings = Settings.model_validate({"driver": {"work_dir": str(tmp_path / "driver")}})
    plan = "tasks:\n  - {id: wait, prompt: 'true', executor: shell}\n"
    async with (
        open_front_door(connection, answer_timeout_s=30) as door,
        open_local_services(connection, settings, workers=0, project_dir=tmp_path),
    ):
        server = build_mcp_server(door, default_repo=str(repo))
        async with Client(server) as client:
            submitted = await client.call_tool("submit_plan", {"plan": plan})
            run_id = (submitted.structured_content or {})["run_id"]
            uri = f"claudecluster://runs/{run_id}"
            async with client.listen(resource_subscriptions=[uri]) as listening:
                cancelled = await client.call_tool("cancel", {"target": run_id})
                assert not cancelled.is_error
                with anyio.fail_after(_DRIVER_ANSWERS_WITHIN_S):
                    async for event in listening:
                        assert isinstance(event, ResourceUpdated)
                        assert event.uri == uri
                        state = json.loads(
                            (await client.read_resource(uri)).contents[0].text  # type: ignore[union-attr]
                        )["state"]
                        if state == "cancelled":
                            break
