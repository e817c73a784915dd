"""The configured safe defaults (``limits``) reach a run submitted over HTTP, as they do one
started with ``claudecluster run``; what the request names itself wins."""

from __future__ import annotations

from pathlib import Path

import msgspec

from claudecluster.events import RunSubmitted, SubmitRun, TaskLimits
from claudecluster.runtime.front_door import with_safe_defaults
from claudecluster.transport.base import read_all
from tests.gateway.conftest import bearer, serve_cluster

LIMITS = TaskLimits(max_turns=50, wall_time_s=1800.0, max_cost_usd=5.0)


def test_defaults_fill_only_what_a_submission_leaves_unset() -> None:
    bare = SubmitRun(run_id="r", goal="g", repo="/r", planner="claude")
    filled = with_safe_defaults(bare, task_limits=LIMITS, budget_usd=25.0)
    assert (filled.policy.task_limits, filled.budget_usd) == (LIMITS, 25.0)
    own = msgspec.structs.replace(
        bare, budget_usd=3.0,
        policy=msgspec.structs.replace(bare.policy, task_limits=TaskLimits(max_turns=4)),
    )  # fmt: skip
    kept = with_safe_defaults(own, task_limits=LIMITS, budget_usd=25.0)
    assert (kept.policy.task_limits, kept.budget_usd) == (TaskLimits(max_turns=4), 3.0)
    assert with_safe_defaults(bare, task_limits=TaskLimits(), budget_usd=None) == bare


async def test_a_run_submitted_over_http_gets_the_configured_limits_and_budget(
    nats_url: str, tmp_path: Path
) -> None:
    async with serve_cluster(nats_url, tmp_path, workers=0) as served:
        served.door.default_task_limits = LIMITS
        served.door.default_budget_usd = 25.0
        plan = [{"id": "a", "prompt": "echo a > a.txt", "executor": "shell"}]
        for run_id, extra in (("dflt", {}), ("own", {"budget_usd": 2.5})):
            body = {"goal": "g", "repo": str(served.repo), "run_id": run_id, "plan": plan}
            answer = await served.http.post("/runs", json=body | extra, headers=bearer("submit"))
            assert answer.status_code == 202, answer.text
        submitted = {
            s.envelope.payload.run_id: s.envelope.payload
            for s in await read_all(served.log)
            if isinstance(s.envelope.payload, RunSubmitted)
        }
    assert submitted["dflt"].policy.task_limits == LIMITS
    assert submitted["dflt"].budget_usd == 25.0
    assert submitted["own"].budget_usd == 2.5  # the request's own budget wins
