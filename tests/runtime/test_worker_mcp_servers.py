"""A plan task's own MCP server reaches its agent: the real Claude Code CLI (on the scripted
model) starts the server the work item names, inside the attempt's confinement, offers its
tool to the model and calls it. Real NATS, a real worker, real git.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import anyio

from claudecluster.domain.branches import task_branch
from claudecluster.domain.mcp_servers import mcp_config_json
from claudecluster.events import TaskFailed, TaskSucceeded
from claudecluster.events.envelope import StoredEvent
from claudecluster.events.model import McpServer
from claudecluster.executors.confinement import Mechanism
from claudecluster.runtime.worker import Worker, WorkerConfig
from claudecluster.scripted_model import Script, open_scripted_model
from claudecluster.transport.artifacts import JetStreamArtifactStore
from claudecluster.transport.jetstream import JetStreamEventLog
from claudecluster.workspace.git import fetch_result
from tests.runtime.conftest import Driver
from tests.support import git_output, make_repo

#: A whole stdio MCP server in the standard library: one tool, ``echo``, which writes what
#: it was given, its environment's PROBE_LEVEL and whether it could read a file outside the
#: workspace, to ``probe.txt`` in its working directory (the agent's workspace).
PROBE_SERVER = r"""
import json, os, sys

OUTSIDE = sys.argv[1]

def reply(request_id, result):
    sys.stdout.write(json.dumps({"jsonrpc": "2.0", "id": request_id, "result": result}) + "\n")
    sys.stdout.flush()

for line in sys.stdin:
    message = json.loads(line)
    method, request_id = message.get("method"), message.get("id")
    if request_id is None:
        continue  # a notification
    if method == "initialize":
        reply(request_id, {
            "protocolVersion": message["params"]["protocolVersion"],
            "capabilities": {"tools": {}},
            "serverInfo": {"name": "probe", "version": "1"},
        })
    elif method == "tools/list":
        reply(request_id, {"tools": [{
            "name": "echo", "description": "Write the text to probe.txt.",
            "inputSchema": {"type": "object", "properties": {"text": {"type": "string"}},
                            "required": ["text"]},
        }]})
    elif method == "tools/call":
        try:
            open(OUTSIDE).read()
            outside = "read"
        except OSError:
            outside = "denied"
        text = message["params"]["arguments"]["text"]
        with open("probe.txt", "w") as out:
            out.write(f"{text} level={os.environ.get('PROBE_LEVEL')} outside={outside}\n")
        reply(request_id, {"content": [{"type": "text", "text": "probed"}]})
    else:
        sys.stdout.write(json.dumps({"jsonrpc": "2.0", "id": request_id,
                                     "error": {"code": -32601, "message": method}}) + "\n")
        sys.stdout.flush()
"""

SCRIPT = Script.model_validate(
    {
        "tasks": [
            {
                "marker": "[[task:probe]]",
                "turns": [
                    {"text": "Asking the probe.",
                     "tools": [{"name": "mcp__probe__echo", "input": {"text": "hello"}}]},
                    {"text": "The probe answered."},
                ],
            }
        ]
    }
)  # fmt: skip


async def _until_finished(log: JetStreamEventLog, task_id: str) -> list[StoredEvent]:
    seen: list[StoredEvent] = []
    with anyio.fail_after(120):
        async with log.open_reader(follow=True) as events:
            async for stored in events:
                seen.append(stored)
                payload = stored.envelope.payload
                if isinstance(payload, TaskSucceeded | TaskFailed) and payload.task_id == task_id:
                    return seen
    raise AssertionError("unreachable")


async def test_a_tasks_stdio_mcp_server_runs_confined_and_its_tool_reaches_the_agent(
    sandbox: Mechanism, world: tuple[JetStreamEventLog, Any], tmp_path: Path
) -> None:
    log, client = world
    js = client.jetstream()
    secret = tmp_path / "host-secret.txt"
    secret.write_text("not for agents\n")
    source = make_repo(tmp_path / "source", {"tools/probe_mcp.py": PROBE_SERVER})
    servers = {
        "probe": McpServer(
            command="python3", args=("tools/probe_mcp.py", str(secret)), env={"PROBE_LEVEL": "7"}
        )
    }
    driver = Driver(log, js, source, tmp_path)
    async with open_scripted_model(SCRIPT) as model:
        config = WorkerConfig(
            worker_id="w-mcp",
            workspace_root=tmp_path / "workspaces",
            heartbeat_s=0.5,
            allow_plan_mcp_servers=True,
            api_environment={"ANTHROPIC_BASE_URL": model.url, "ANTHROPIC_API_KEY": "sk-x"},
        )
        worker = Worker(config, log, client)
        async with anyio.create_task_group() as group:
            await group.start(worker.serve)
            item = await driver.submit(
                "run-mcp", "probe", "[[task:probe]] ask the probe",
                mcp_config=mcp_config_json(servers),
                allowed_tools=("Read", "mcp__probe__echo"),
            )  # fmt: skip
            history = await _until_finished(log, "probe")
            worker.stop()
        served = list(model.served)
    succeeded = history[-1].envelope.payload
    assert isinstance(succeeded, TaskSucceeded), succeeded
    # The model was offered the server's tool, and its call went through to the server.
    assert "mcp__probe__echo" in served[0].offered, served[0].offered
    assert [s.tools for s in served] == [("mcp__probe__echo",), ()]
    store = JetStreamArtifactStore(js)
    bundle = await store.get_file(succeeded.artifacts[0], tmp_path / "r.bundle")
    branch = task_branch("run-mcp", "probe")
    await fetch_result(source, bundle, branch)
    # It ran in the workspace, with its env, and confined: the host's file was out of reach.
    assert git_output(source, "show", f"{branch}:probe.txt") == "hello level=7 outside=denied\n"
    assert json.loads(item.mcp_config)["mcpServers"]["probe"]["command"] == "python3"
