"""The preview's content, one pure function every front door shares (the CLI renders it,
the MCP tool and the HTTP route return it)."""

from __future__ import annotations

import msgspec

from claudecluster.cli.preview import preview_lines, render_preview
from claudecluster.domain.preview import PreviewOverlap, plan_preview
from claudecluster.events.model import RunPolicy
from claudecluster.events.plan import plan_from_data

PLAN = plan_from_data(
    {
        "goal": "notes",
        "tasks": [
            {"id": "first", "prompt": "p", "size": "small", "files": ["notes.txt"],
             "limits": {"max_turns": 5}},
            {"id": "second", "prompt": "p", "size": "large", "files": ["notes.txt"],
             "mcp_servers": {"docs": {"command": "python3"}}},
            {"id": "last", "prompt": "p", "depends_on": ["first", "second"], "model": "opus"},
            {"id": "extra", "prompt": "p", "size": "small"},
        ],
    },
    "plan",
)  # fmt: skip


def test_the_preview_holds_the_tasks_overlaps_limits_and_estimate_on_the_pool() -> None:
    preview = plan_preview(PLAN, "write", workers=2, budget_usd=5.0, policy=RunPolicy())
    assert [(t.task_id, t.size) for t in preview.tasks] == [
        ("first", "small"), ("second", "large"), ("last", "medium"), ("extra", "small")
    ]  # fmt: skip
    assert preview.tasks[1].mcp_servers == ("docs",)
    assert preview.tasks[2].model == "opus"
    assert preview.overlaps == (
        PreviewOverlap(first="first", second="second", files=("notes.txt",), serialized=True),
    )
    assert (preview.max_attempts, preview.budget_usd) == (3, 5.0)
    # second waits for first (the overlap): 2 + 15 + 6 on the chain, extra beside it.
    assert (preview.estimate.minutes, preview.estimate.sequential_minutes) == (23.0, 25.0)
    assert preview.estimate.critical_path == ("first", "second", "last")
    assert preview.plan == PLAN
    warned = plan_preview(
        PLAN, "write", workers=2, budget_usd=None, policy=RunPolicy(file_overlap="warn")
    )
    assert not warned.overlaps[0].serialized
    assert warned.estimate.minutes == 21.0  # second no longer waits for first


def test_the_clis_lines_are_the_shared_content_rendered() -> None:
    preview = plan_preview(PLAN, "write", workers=2, budget_usd=5.0, policy=RunPolicy())
    lines = preview_lines(PLAN, "write", workers=2, budget_usd=5.0, policy=RunPolicy())
    assert lines == render_preview(preview)
    assert lines[:2] == ['plan for "write": 4 tasks', "  first   [small] first"]
    assert "overlap: first and second both change notes.txt: second will wait for first" in lines
    assert "limits per task: 5 turns; attempts per task: 3; budget: $5" in lines
    # The content survives the wire: what the HTTP route sends decodes to the same.
    wire = msgspec.json.encode(preview)
    assert msgspec.json.decode(wire, type=type(preview)) == preview
