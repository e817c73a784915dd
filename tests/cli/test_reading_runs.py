"""Reading a run at a glance: ``logs RUN`` interleaves every task's log, ``status`` and
``workers list`` fit 80 columns with no cell cut, and all three print JSON for scripts.
The installed CLI in subprocesses against one finished run on the embedded cluster."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from tests.cli.test_cli import DIAMOND, _repo_with_plan, clean_env, cli

# One xdist worker runs this module's tests, so the finished run is made once, not once per
# worker that takes one of them.
pytestmark = pytest.mark.xdist_group("reading-runs")


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp_path = tmp_path_factory.mktemp("reading")
    repo = _repo_with_plan(tmp_path, DIAMOND)
    done = cli("run", "diamond", "--plan", str(tmp_path / "plan.yaml"), "--run-id", "rd1",
               "--workers", "3", cwd=repo)  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    return repo


def _narrow() -> dict[str, str]:
    return clean_env(COLUMNS="80")


def test_logs_of_a_run_interleaves_every_tasks_log_in_log_order(finished: Path) -> None:
    shown = cli("logs", "rd1", cwd=finished)
    assert shown.returncode == 0, shown.stderr
    lines = shown.stdout.splitlines()
    succeeded = [line.split()[1] for line in lines if "TaskSucceeded" in line]
    assert sorted(succeeded) == ["a", "b", "c", "d"]
    assert succeeded[0] == "a"  # dependency order is log order
    assert succeeded[-1] == "d"
    assert any(line.split()[1] == "(run)" for line in lines)  # the run's own events too


def test_logs_json_prints_one_stored_event_per_line(finished: Path) -> None:
    shown = cli("logs", "rd1", "--json", cwd=finished)
    assert shown.returncode == 0, shown.stderr
    events = [json.loads(line) for line in shown.stdout.splitlines()]
    assert {event["envelope"]["payload"]["run_id"] for event in events} == {"rd1"}
    types = [event["envelope"]["payload"]["type"] for event in events]
    assert types.count("task.merged") == 4
    one = cli("logs", "rd1/b", "--json", cwd=finished)
    tasks = {json.loads(line)["envelope"]["payload"].get("task_id") for line in
             one.stdout.splitlines()}  # fmt: skip
    assert tasks == {"b"}


def test_status_and_workers_list_fit_80_columns_with_no_cell_cut(finished: Path) -> None:
    workers = json.loads(cli("workers", "list", "--json", cwd=finished).stdout)
    assert len(workers) == 3
    table = cli("workers", "list", cwd=finished, env=_narrow())
    assert table.returncode == 0, table.stderr
    assert max(len(line) for line in table.stdout.splitlines()) <= 80
    assert "…" not in table.stdout
    for worker in workers:
        assert re.search(rf"^\s*{re.escape(worker['worker_id'])}\s+{worker['state']}\s",
                         table.stdout, re.MULTILINE), table.stdout  # fmt: skip
    narrow: dict[str | None, str] = {}
    for ref in ("rd1", None):
        args = ("status", ref) if ref else ("status",)
        shown = cli(*args, cwd=finished, env=_narrow())
        assert shown.returncode == 0, shown.stderr
        assert max(len(line) for line in shown.stdout.splitlines()) <= 80, shown.stdout
        assert "…" not in shown.stdout, shown.stdout
        narrow[ref] = shown.stdout
    tasks = narrow["rd1"]  # the same command's table again would cost another CLI start
    for task in json.loads(cli("status", "rd1", "--json", cwd=finished).stdout)["tasks"]:
        assert re.search(rf"^\s*{task['task_id']}\s+merged\s+1\s+{re.escape(task['worker_id'])}\s",
                         tasks, re.MULTILINE), tasks  # fmt: skip


def test_status_json_gives_runs_a_run_and_a_task_for_scripts(finished: Path) -> None:
    runs = json.loads(cli("status", "--json", cwd=finished).stdout)
    assert [(run["run_id"], run["state"]) for run in runs] == [("rd1", "completed")]
    one = json.loads(cli("status", "rd1", "--json", cwd=finished).stdout)
    assert one["run"]["goal"] == "diamond"
    assert [task["state"] for task in one["tasks"]] == ["merged"] * 4
    task = json.loads(cli("status", "rd1/d", "--json", cwd=finished).stdout)
    assert task["task_id"] == "d"
    assert task["merged_commit"]
