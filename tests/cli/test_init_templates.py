"""``claudecluster init`` writes safe default limits and a run budget, ``run`` applies them,
the preview shows them, and ``--template`` writes a plan, a fan-out or a CI starter. The
installed CLI in subprocesses; the plan starter is checked by the plan loader and the
driver's graph rules, the CI starter against the documented workflow."""

from __future__ import annotations

import subprocess
from pathlib import Path

import anyio
import yaml

from claudecluster.cli.preview import preview_lines
from claudecluster.cli.templates import CI_WORKFLOW_PATH, starter_files
from claudecluster.domain.limits import with_default_limits
from claudecluster.events.model import RunPolicy, TaskLimits, TaskSpec
from claudecluster.events.plan import plan_from_data
from claudecluster.runtime.planners import load_plan_file
from claudecluster.scripted_model import open_scripted_model
from claudecluster.settings import load_settings
from tests.cli.test_cli import SCRIPT, branch_file, clean_env, cli
from tests.cli.test_preview import _ANSWERED_WITHIN_S as _RUN_WITHIN_S
from tests.cli.test_preview import MODEL
from tests.support import make_repo

_DOCS = Path(__file__).parents[2] / "docs"


def test_init_writes_the_safe_default_limits_and_budget_into_the_config(tmp_path: Path) -> None:
    done = cli("init", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    written = yaml.safe_load((tmp_path / "claudecluster.yaml").read_text())
    assert written["limits"] == {
        "max_turns": 50, "wall_time_s": 1800, "max_cost_usd": 5, "budget_usd": 25,
    }  # fmt: skip
    limits = load_settings(project_dir=tmp_path, environ={}).settings.limits
    assert limits.task_limits() == TaskLimits(max_turns=50, wall_time_s=1800, max_cost_usd=5)
    assert limits.budget_usd == 25


def test_a_tasks_own_limits_win_field_by_field_over_the_runs_defaults() -> None:
    spec = TaskSpec(task_id="t", title="t", prompt="p", limits=TaskLimits(max_turns=7))
    defaults = TaskLimits(max_turns=50, wall_time_s=60, max_cost_usd=1)
    filled = with_default_limits(spec, defaults).limits
    assert filled == TaskLimits(max_turns=7, wall_time_s=60, max_cost_usd=1)
    assert with_default_limits(spec, TaskLimits()) is spec


def test_the_preview_shows_the_limits_each_task_will_really_get() -> None:
    plan = plan_from_data(
        {"tasks": [{"id": "a", "prompt": "p"},
                   {"id": "b", "prompt": "q", "limits": {"max_turns": 9}}]}, "plan"
    )  # fmt: skip
    policy = RunPolicy(task_limits=TaskLimits(max_turns=50, wall_time_s=1800, max_cost_usd=5))
    lines = preview_lines(plan, "goal", workers=2, budget_usd=25, policy=policy)
    limits = next(line for line in lines if line.startswith("limits per task"))
    assert "50 turns, 1800 s, $5" in limits
    assert "9 turns, 1800 s, $5" in limits
    assert "budget: $25" in limits


def test_run_takes_the_configured_budget_and_limits_into_the_submitted_run(
    tmp_path: Path,
) -> None:
    repo = make_repo(tmp_path / "repo", {"a.txt": "a\n"})
    (repo / "claudecluster.yaml").write_text(
        "limits: {max_turns: 12, wall_time_s: 600, max_cost_usd: 2, budget_usd: 3}\n"
    )
    plan = tmp_path / "plan.yaml"
    plan.write_text("tasks:\n  - {id: one, prompt: 'true', executor: shell}\n")
    done = cli("run", "g", "--plan", str(plan), "--dry-run", cwd=repo)
    assert done.returncode == 0, done.stderr
    assert "12 turns, 600 s, $2" in done.stdout
    assert "budget: $3" in done.stdout
    flag = cli("run", "g", "--plan", str(plan), "--dry-run", "--budget", "1.5", cwd=repo)
    assert "budget: $1.5" in flag.stdout


def test_init_template_plan_writes_a_plan_the_loader_accepts(tmp_path: Path) -> None:
    done = cli("init", "--template", "plan", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    plan = load_plan_file(tmp_path / "plan.yaml", max_tasks=100)
    assert [task.id for task in plan.tasks] == ["core", "tests", "review"]
    assert "--plan plan.yaml" in done.stdout
    again = cli("init", "--template", "plan", "--force", cwd=tmp_path)
    assert again.returncode == 0, again.stderr


def test_init_template_fanout_writes_an_executable_fanout_script(tmp_path: Path) -> None:
    done = cli("init", "--template", "fanout", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    script = tmp_path / "fanout.sh"
    assert script.stat().st_mode & 0o100
    assert "--fanout" in script.read_text()


def test_init_template_ci_writes_the_documented_github_actions_workflow(tmp_path: Path) -> None:
    done = cli("init", "--template", "ci", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    written = (tmp_path / CI_WORKFLOW_PATH).read_text()
    assert written == (_DOCS / "examples" / "claudecluster-workflow.yml").read_text()
    workflow = yaml.safe_load(written)
    steps = workflow["jobs"]["run"]["steps"]
    commands = " ".join(step.get("run", "") for step in steps)
    assert "claudecluster doctor" in commands
    assert "--yes --push origin --pr" in commands.replace("\\\n", "")
    assert workflow["permissions"] == {"contents": "write", "pull-requests": "write"}


def test_init_refuses_to_overwrite_a_templates_file_without_force(tmp_path: Path) -> None:
    (tmp_path / "plan.yaml").write_text("mine\n")
    done = cli("init", "--template", "plan", cwd=tmp_path)
    assert done.returncode == 2
    assert (tmp_path / "plan.yaml").read_text() == "mine\n"
    assert not (tmp_path / "claudecluster.yaml").exists()


def test_every_starter_is_text_with_a_next_step() -> None:
    for name in ("plan", "fanout", "ci"):
        for path, starter in starter_files(name).items():
            assert starter.text.endswith("\n"), path
            assert starter.next_step, path


async def test_a_run_that_reaches_the_configured_budget_starts_nothing_more_and_keeps_what_merged(
    tmp_path: Path,
) -> None:
    ignore = "claudecluster.yaml\n.claudecluster/\n"
    repo = make_repo(tmp_path / "repo", {"notes.txt": "notes\n", ".gitignore": ignore})
    # Each scripted task costs about $0.02: the first one spends the whole budget.
    (repo / "claudecluster.yaml").write_text("limits: {budget_usd: 0.01}\n")
    plan = tmp_path / "plan.yaml"
    plan.write_text(
        "tasks:\n"
        "  - {id: first, prompt: '[[task:first]] write the first note'}\n"
        "  - {id: second, prompt: '[[task:second]] write the second note', depends_on: [first]}\n"
    )
    async with open_scripted_model(MODEL) as model:
        with anyio.fail_after(_RUN_WITHIN_S):
            done = await anyio.run_process(
                [str(SCRIPT), "run", "notes", "--plan", str(plan), "--run-id", "b1"],
                cwd=repo, check=False, stdin=subprocess.DEVNULL,
                env=clean_env(ANTHROPIC_BASE_URL=model.url, ANTHROPIC_API_KEY="sk-scripted"),
            )  # fmt: skip
    out = done.stdout.decode() + done.stderr.decode()
    assert done.returncode == 1, out
    assert "budget of $0.01 was spent" in out
    assert branch_file(repo, "first.txt") == "one\n"  # what merged stays
    assert [r.task for r in model.served] == ["[[task:first]]"] * len(model.served)
