"""A plan submitted over MCP names an MCP server for its task; the driver carries it to the
work item, the worker (allowed to) hands it to the real Claude Code CLI on the scripted
model, which starts it confined and calls its tool. Every part real but the model.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from mcp import Client

from claudecluster.executors.confinement import Mechanism
from claudecluster.mcp_server.server import build_mcp_server
from claudecluster.runtime.connection import Connection
from claudecluster.runtime.front_door import open_front_door
from claudecluster.runtime.local_cluster import open_local_services
from claudecluster.scripted_model import Script, open_scripted_model
from claudecluster.settings import Settings
from tests.mcp_server.test_tools import text_of
from tests.runtime.test_worker_mcp_servers import PROBE_SERVER
from tests.support import git_output, make_repo

pytestmark = pytest.mark.nats

SCRIPT = Script.model_validate(
    {
        "tasks": [
            {
                "marker": "[[task:probe]]",
                "turns": [
                    {"tools": [{"name": "mcp__probe__echo", "input": {"text": "via-plan"}}]},
                    {"text": "The probe answered."},
                ],
            }
        ]
    }
)  # fmt: skip


async def test_a_plans_mcp_server_reaches_the_agent_through_driver_and_worker(
    sandbox: Mechanism, connection: Connection, tmp_path: Path
) -> None:
    secret = tmp_path / "host-secret.txt"
    secret.write_text("not for agents\n")
    repo = make_repo(tmp_path / "repo", {"tools/probe_mcp.py": PROBE_SERVER})
    plan = {
        "goal": "probe",
        "tasks": [{
            "id": "probe", "prompt": "[[task:probe]] ask the probe",
            "allowed_tools": ["Read", "mcp__probe__echo"],
            "mcp_servers": {"probe": {"command": "python3",
                                      "args": ["tools/probe_mcp.py", str(secret)],
                                      "env": {"PROBE_LEVEL": "3"}}},
        }],
    }  # fmt: skip
    settings = Settings.model_validate(
        {"driver": {"work_dir": str(tmp_path / "driver")},
         "worker": {"allow_plan_mcp_servers": True}}
    )  # fmt: skip
    async with (
        open_scripted_model(SCRIPT) as model,
        open_front_door(connection, answer_timeout_s=30) as door,
        open_local_services(
            connection, settings, workers=1, project_dir=tmp_path,
            api_environment={"ANTHROPIC_BASE_URL": model.url, "ANTHROPIC_API_KEY": "sk-x"},
        ),
    ):  # fmt: skip
        async with Client(build_mcp_server(door, default_repo=str(repo))) as client:
            result = await client.call_tool(
                "submit_plan", {"plan": json.dumps(plan), "wait": True, "timeout_s": 180}
            )
        served = list(model.served)
    assert not result.is_error, text_of(result)
    status: dict[str, Any] = (result.structured_content or {})["status"]
    assert status["state"] == "completed", status
    assert "mcp__probe__echo" in served[0].offered
    branch = status["integration_branch"]
    assert git_output(repo, "show", f"{branch}:probe.txt") == "via-plan level=3 outside=denied\n"
