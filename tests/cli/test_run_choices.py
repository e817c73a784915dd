"""What a user chooses for a run reaches the agents: the run's model, a task's own model
and tools, and the failure policy, from flags and from the plan file.

The installed CLI in a subprocess, the real Claude Code CLI, the scripted model in this
process (it records the model each request names).
"""

from __future__ import annotations

import json
from pathlib import Path

import anyio

from claudecluster.scripted_model import Script, open_scripted_model
from tests.cli.test_cli import SCRIPT, clean_env
from tests.support import make_repo

MODEL_SCRIPT = Script.model_validate(
    {
        "tasks": [
            {"marker": f"[[task:{name}]]", "turns": [{"text": f"{name} done."}]}
            for name in ("plain", "own")
        ]
    }
)

PLAN = """\
model: claude-plan-default
policy: {max_attempts: 1, on_task_failure: fail_run}
tasks:
  - {id: plain, prompt: "[[task:plain]] look around"}
  - id: own
    prompt: "[[task:own]] look around"
    model: claude-task-own
    allowed_tools: [Read, Grep]
"""


async def _run(repo: Path, url: str, *flags: str) -> tuple[int, str]:
    done = await anyio.run_process(
        [str(SCRIPT), "run", "choices", "--plan", str(repo.parent / "plan.yaml"),
         "--workers", "2", "--json", *flags],
        cwd=repo, env=clean_env(ANTHROPIC_BASE_URL=url, ANTHROPIC_API_KEY="sk-scripted"),
        check=False,
    )  # fmt: skip
    return done.returncode, done.stdout.decode() + done.stderr.decode()


def _submitted_policy(output: str) -> dict[str, object]:
    for line in output.splitlines():
        if line.startswith("{") and '"run.submitted"' in line:
            policy: dict[str, object] = json.loads(line)["envelope"]["payload"]["policy"]
            return policy
    raise AssertionError(f"no run.submitted in the output:\n{output[-3000:]}")


async def test_a_tasks_model_wins_over_the_runs_and_the_plans_policy_is_recorded(
    tmp_path: Path,
) -> None:
    repo = make_repo(tmp_path / "repo", {"app.py": "x = 1\n"})
    (tmp_path / "plan.yaml").write_text(PLAN)
    async with open_scripted_model(MODEL_SCRIPT) as model:
        code, output = await _run(repo, model.url, "--model", "claude-run-flag")
    assert code == 0, output[-3000:]
    named = {r.task: r.model for r in model.served if r.task is not None}
    # The flag beats the plan's default; the task's own model beats both.
    assert named == {"[[task:plain]]": "claude-run-flag", "[[task:own]]": "claude-task-own"}
    policy = _submitted_policy(output)
    assert (policy["max_attempts"], policy["on_task_failure"]) == (1, "fail_run")
    assert policy["model"] == "claude-run-flag"


async def test_without_the_flag_the_plans_model_and_flags_beat_the_plans_policy(
    tmp_path: Path,
) -> None:
    repo = make_repo(tmp_path / "repo", {"app.py": "x = 1\n"})
    (tmp_path / "plan.yaml").write_text(PLAN)
    async with open_scripted_model(MODEL_SCRIPT) as model:
        code, output = await _run(
            repo, model.url, "--max-attempts", "4", "--on-task-failure", "skip_dependents"
        )
    assert code == 0, output[-3000:]
    named = {r.task: r.model for r in model.served if r.task is not None}
    assert named == {"[[task:plain]]": "claude-plan-default", "[[task:own]]": "claude-task-own"}
    policy = _submitted_policy(output)
    assert (policy["max_attempts"], policy["on_task_failure"]) == (4, "skip_dependents")
