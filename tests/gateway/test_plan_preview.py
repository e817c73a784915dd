"""``POST /plans/preview``: what a run would do, over HTTP, without starting it. The content
is the CLI's preview (one pure function); a plan, a fan-out over the repository, and a
goal drafted by the real Claude Code CLI on the scripted model. Real nats-server, gateway.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import msgspec

from claudecluster.domain.preview import PlanPreview, plan_preview
from claudecluster.events.model import RunPolicy
from claudecluster.events.plan import plan_from_data
from claudecluster.executors.claude_code import ClaudeCodeExecutor
from claudecluster.executors.confinement import Confinement
from claudecluster.runtime.plan_previews import claude_drafter
from claudecluster.scripted_model import Script, open_scripted_model
from tests.gateway.conftest import bearer, serve_cluster

PLAN: dict[str, Any] = {
    "goal": "notes",
    "tasks": [
        {"id": "first", "prompt": "p", "size": "small", "files": ["notes.txt"]},
        {"id": "second", "prompt": "p", "size": "large", "files": ["notes.txt"]},
        {"id": "last", "prompt": "p", "depends_on": ["first", "second"]},
    ],
}  # fmt: skip


async def test_a_plan_is_previewed_as_the_cli_shows_it_and_nothing_starts(
    nats_url: str, tmp_path: Path
) -> None:
    async with serve_cluster(nats_url, tmp_path, workers=0) as served:
        answer = await served.http.post(
            "/plans/preview",
            json={"goal": "write notes", "plan": PLAN, "workers": 2, "budget_usd": 4},
            headers=bearer("submit"),
        )
        runs = served.door.runs()
        denied = await served.http.post(
            "/plans/preview", json={"plan": PLAN}, headers=bearer("read")
        )
        bad = await served.http.post(
            "/plans/preview",
            json={"plan": {"tasks": [{"id": "a", "prompt": "p", "depends_on": ["zz"]}]}},
            headers=bearer("submit"),
        )
        neither = await served.http.post(
            "/plans/preview", json={"goal": "g"}, headers=bearer("submit")
        )
        no_planner = await served.http.post(
            "/plans/preview",
            json={"goal": "g", "claude_planner": True, "repo": str(served.repo)},
            headers=bearer("submit"),
        )
    assert answer.status_code == 200, answer.text
    expected = plan_preview(
        plan_from_data(PLAN, "plan"), "write notes", workers=2, budget_usd=4.0,
        policy=RunPolicy(),
    )  # fmt: skip
    assert answer.json() == json.loads(json.dumps(_builtins(expected)))
    body = answer.json()
    assert body["overlaps"] == [
        {"first": "first", "second": "second", "files": ["notes.txt"], "serialized": True}
    ]
    assert body["estimate"]["critical_path"] == ["first", "second", "last"]
    assert runs == []  # a preview starts nothing
    assert denied.status_code == 403
    assert bad.status_code == 422
    assert "zz" in bad.json()["detail"]
    assert neither.status_code == 422
    assert "exactly one" in neither.json()["detail"]
    assert no_planner.status_code == 422
    assert "runs no planner" in no_planner.json()["detail"]


async def test_a_fanout_is_previewed_from_the_repositorys_files_at_head(
    nats_url: str, tmp_path: Path
) -> None:
    async with serve_cluster(nats_url, tmp_path, workers=0) as served:
        answer = await served.http.post(
            "/plans/preview",
            json={"goal": "type it", "repo": str(served.repo),
                  "fanout": {"glob": "*.py", "prompt_template": "Type {path}"}},
            headers=bearer("submit"),
        )  # fmt: skip
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert [t["task_id"] for t in body["tasks"]] == ["app-py"]
    assert body["plan"]["tasks"][0]["prompt"] == "Type app.py"
    assert body["estimate"]["workers"] == 1  # no workers yet: one, not none


async def test_a_goal_is_planned_by_claude_code_and_previewed(
    nats_url: str, tmp_path: Path
) -> None:
    answer_text = "Here is the plan.\n```json\n" + json.dumps(PLAN) + "\n```"
    script = Script.model_validate(
        {"tasks": [{"marker": "Plan how several agents", "turns": [{"text": answer_text}]}]}
    )
    async with open_scripted_model(script) as model:
        drafter = claude_drafter(
            ClaudeCodeExecutor(confinement=Confinement.unconfined()),
            tmp_path / "previews",
            {"ANTHROPIC_BASE_URL": model.url, "ANTHROPIC_API_KEY": "sk-x"},
        )
        async with serve_cluster(nats_url, tmp_path, workers=0, drafter=drafter) as served:
            answer = await served.http.post(
                "/plans/preview",
                json={"goal": "write notes", "claude_planner": True, "repo": str(served.repo)},
                headers=bearer("submit"),
            )
            runs = served.door.runs()
        asked = [s.task for s in model.served]
    assert answer.status_code == 200, answer.text
    assert [t["task_id"] for t in answer.json()["tasks"]] == ["first", "second", "last"]
    assert asked == ["Plan how several agents"]
    assert runs == []


def _builtins(preview: PlanPreview) -> Any:
    return msgspec.to_builtins(preview)
