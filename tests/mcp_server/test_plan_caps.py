"""Plans are read with bounds at every door: no YAML aliases, no more tasks than the cap."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import mcp.types as mcp_types
import pytest
from mcp import Client

from claudecluster.errors import GraphError
from claudecluster.mcp_server.server import build_mcp_server
from claudecluster.runtime.front_door import FrontDoor
from claudecluster.runtime.planners import load_plan_file, parse_plan_text

#: The "billion laughs": nine lines that expand to 10**9 strings in a plain YAML loader.
ALIAS_BOMB = "a: &a ['x','x','x','x','x','x','x','x','x','x']\n" + "".join(
    f"{chr(98 + i)}: &{chr(98 + i)} [" + ",".join([f"*{chr(97 + i)}"] * 10) + "]\n"
    for i in range(8)
)


def _plan(tasks: int) -> str:
    return json.dumps(
        {"tasks": [{"id": f"t{i}", "prompt": "p"} for i in range(tasks)]}, separators=(",", ":")
    )


def _text(result: mcp_types.CallToolResult) -> str:
    block = result.content[0]
    assert isinstance(block, mcp_types.TextContent)
    return block.text


@pytest.mark.parametrize(
    ("text", "named"),
    [
        (ALIAS_BOMB, "anchors and aliases (&a)"),
        ("base: &b {prompt: p}\ntasks:\n  - {id: a, prompt: p}\n", "(&b)"),
        # More levels than the interpreter has frames: each level costs the parser one at
        # least. (More than that only makes PyYAML scan further before it gives up.)
        ("[" * (sys.getrecursionlimit() + 1), "nested too deeply"),
        (_plan(501), "501 tasks, more than the limit of 500"),
    ],
)
def test_a_plan_text_that_would_expand_or_is_too_large_is_refused_by_name(
    text: str, named: str
) -> None:
    with pytest.raises(GraphError, match=r"^plan: ") as caught:
        parse_plan_text(text, "plan")
    assert named in str(caught.value)


def test_a_plan_file_gets_the_same_checks_and_the_configured_cap(tmp_path: Path) -> None:
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text(ALIAS_BOMB)
    with pytest.raises(GraphError, match="aliases"):
        load_plan_file(bomb)
    three = tmp_path / "three.json"
    three.write_text(_plan(3))
    with pytest.raises(GraphError, match="limit of 2"):
        load_plan_file(three, max_tasks=2)
    assert len(load_plan_file(three, max_tasks=3).tasks) == 3


async def test_submit_plan_refuses_an_alias_bomb_and_a_plan_over_the_task_cap(
    door: FrontDoor,
) -> None:
    # One task over the door's cap is refused by the same count as forty thousand, and
    # the count is checked before any task is converted: the size adds only parsing time
    # (40,000 tasks were 20 s of CPU under coverage, spent in PyYAML).
    async with Client(build_mcp_server(door, default_repo="/repo")) as client:
        bomb = await client.call_tool("submit_plan", {"plan": ALIAS_BOMB})
        over = await client.call_tool("submit_plan", {"plan": _plan(501)})
    assert bomb.is_error
    assert "aliases" in _text(bomb)
    assert over.is_error
    assert "501 tasks, more than the limit of 500" in _text(over)
