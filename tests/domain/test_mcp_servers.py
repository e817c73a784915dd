"""The MCP servers a plan names: refused at the door when wrong, with the field and why."""

from __future__ import annotations

import pytest

from claudecluster.domain.mcp_servers import mcp_config_json, mcp_servers_problem
from claudecluster.domain.submission import submission_problem
from claudecluster.events.model import McpServer, SubmitRun, TaskNetwork, TaskSpec


@pytest.mark.parametrize(
    ("servers", "allowed", "where", "says"),
    [
        ({"x": McpServer()}, (), "x", "either command"),
        ({"x": McpServer(command="a", url="http://h:1/")}, (), "x", "not both"),
        ({"bad name": McpServer(command="a")}, (), "bad name", "a name is"),
        ({"x": McpServer(url="ftp://h/")}, (), "x.url", "http"),
        ({"x": McpServer(url="http://h:1/", args=("a",))}, ("h:1",), "x.url", "no args"),
        ({"x": McpServer(url="http://tools.example:8931/mcp")}, (), "x.url", "network.allow"),
        ({"x": McpServer(command="a\nb")}, (), "x.command", "control"),
        ({"x": McpServer(command="a", env={"1X": "v"})}, (), "x.env.1X", "variable name"),
        ({f"s{i}": McpServer(command="a") for i in range(17)}, (), "", "at most 16"),
    ],
)
def test_a_wrong_server_is_named_with_the_field_and_the_problem(
    servers: dict[str, McpServer], allowed: tuple[str, ...], where: str, says: str
) -> None:
    found = mcp_servers_problem(servers, allowed)
    assert found is not None
    assert found[0] == where
    assert says in found[1]


def test_a_stdio_server_and_an_allowed_url_server_pass_and_are_written_for_claude_code() -> None:
    servers = {
        "docs": McpServer(command="python3", args=("docs.py",)),
        "search": McpServer(url="http://tools.example:8931/mcp"),
    }
    assert mcp_servers_problem(servers, ("tools.example:8931",)) is None
    assert mcp_config_json(servers) == (
        '{"mcpServers":{"docs":{"type":"stdio","command":"python3","args":["docs.py"],'
        '"env":{}},"search":{"type":"http","url":"http://tools.example:8931/mcp"}}}'
    )
    assert mcp_config_json({}) == ""


def test_every_door_refuses_a_submission_whose_task_names_a_bad_server() -> None:
    spec = TaskSpec(
        task_id="t", title="T", prompt="p", network=TaskNetwork(allow=("a.example:443",)),
        mcp_servers={"s": McpServer(url="https://b.example/mcp")},
    )  # fmt: skip
    command = SubmitRun(run_id="r", goal="g", repo="/r", plan=(spec,))
    found = submission_problem(command, max_tasks=10)
    assert found is not None
    assert found[0] == "plan[0].mcp_servers.s.url"
    assert "'b.example:443'" in found[1]
