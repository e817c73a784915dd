"""``preview_plan``: the plan preview over MCP, through the SDK's client on a real
nats-server; the content is the CLI's (one pure function) and nothing starts."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import msgspec
import pytest
from mcp import Client

from claudecluster.domain.preview import plan_preview
from claudecluster.events.model import RunPolicy
from claudecluster.events.plan import plan_from_data
from claudecluster.mcp_server.server import build_mcp_server
from claudecluster.runtime.front_door import FrontDoor
from tests.mcp_server.test_tools import text_of
from tests.support import make_repo

pytestmark = pytest.mark.nats

PLAN: dict[str, Any] = {
    "tasks": [
        {"id": "a", "prompt": "p", "size": "small", "files": ["x.py"]},
        {"id": "b", "prompt": "p", "files": ["x.py"]},
        {"id": "c", "prompt": "p", "depends_on": ["a"], "size": "large"},
    ],
}  # fmt: skip


async def test_preview_plan_gives_the_shared_preview_and_starts_nothing(door: FrontDoor) -> None:
    runs_before = door.runs()
    async with Client(build_mcp_server(door, default_repo="/repo")) as client:
        result = await client.call_tool(
            "preview_plan", {"goal": "g", "plan": json.dumps(PLAN), "workers": 2}
        )
        no_planner = await client.call_tool("preview_plan", {"goal": "g", "claude_planner": True})
        half = await client.call_tool("preview_plan", {"fanout_glob": "*.py"})
    assert not result.is_error, text_of(result)
    expected = plan_preview(
        plan_from_data(PLAN, "plan"), "g", workers=2, budget_usd=None, policy=RunPolicy()
    )
    content = dict(result.structured_content or {})
    assert content.pop("started") is False
    assert content == json.loads(msgspec.json.encode(expected))
    assert door.runs() == runs_before
    assert no_planner.is_error
    assert "not a git repository" in text_of(no_planner)
    assert half.is_error
    assert "both fanout_glob and fanout_prompt" in text_of(half)


async def test_preview_plan_fans_out_over_the_repository(door: FrontDoor, tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo", {"a.py": "", "b.py": "", "c.txt": ""})
    async with Client(build_mcp_server(door, default_repo=str(repo))) as client:
        result = await client.call_tool(
            "preview_plan", {"fanout_glob": "*.py", "fanout_prompt": "Type {path}"}
        )
        no_planner = await client.call_tool("preview_plan", {"goal": "g", "claude_planner": True})
    assert not result.is_error, text_of(result)
    content = result.structured_content or {}
    assert [t["task_id"] for t in content["tasks"]] == ["a-py", "b-py"]
    assert no_planner.is_error
    assert "runs no planner" in text_of(no_planner)
