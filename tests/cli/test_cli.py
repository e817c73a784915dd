"""The ``claudecluster`` command end to end: the installed console script in a subprocess.

Each subprocess runs in a temporary directory with no ``CLAUDECLUSTER_*`` variables, so
neither the developer's configuration nor the repository's files can change an outcome.
"""

from __future__ import annotations

import json
import os
import re
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from pathlib import Path

import psutil
import pytest
import structlog
from PIL import Image

from claudecluster.cli import run
from claudecluster.domain.signin import SIGN_IN_VARIABLES
from claudecluster.events.schema import render_schemas
from tests.browser import SUCCEEDED_GREEN, headless_chromium
from tests.support import free_port

SCRIPT = Path(sys.executable).parent / "claudecluster"


def clean_env(**extra: str) -> dict[str, str]:
    env = {
        key: value
        for key, value in os.environ.items()
        # No sign-in of the machine's reaches a test: each test says which it uses.
        if not key.startswith("CLAUDECLUSTER_") and key not in SIGN_IN_VARIABLES
    }
    # Wide enough that rich never wraps a path or a sentence we look for.
    env["COLUMNS"] = "400"
    env["PYTHONIOENCODING"] = "utf-8"
    env.update(extra)
    return env


#: One command, a whole run included: generous, for a machine with a second suite beside
#: this one (120 s was too little for a four-task run at a load of 20).
CLI_TIMEOUT_S = 300


def cli(
    *args: str, cwd: Path, env: Mapping[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(SCRIPT), *args],
        cwd=cwd,
        env=dict(env if env is not None else clean_env()),
        capture_output=True,
        text=True,
        timeout=CLI_TIMEOUT_S,
        check=False,
    )


def branch_file(repo: Path, path: str) -> str:
    branch = subprocess.run(
        ["git", "-C", str(repo), "branch", "--list", "claudecluster/*",
         "--format=%(refname:short)"],
        capture_output=True, text=True, check=True,
    ).stdout.split()[0]  # fmt: skip
    return subprocess.run(
        ["git", "-C", str(repo), "show", f"{branch}:{path}"],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip


def demo_repo(stdout: str) -> Path:
    found = re.search(r"the sample repository is (\S+)", stdout)
    assert found is not None, stdout
    return Path(found.group(1))


@pytest.fixture
def restore_structlog() -> Iterator[None]:
    """The in-process demo configures structlog for the process: undo that afterwards."""
    yield
    structlog.reset_defaults()


def test_the_console_script_is_installed() -> None:
    assert SCRIPT.is_file()


def test_help_lists_the_commands(tmp_path: Path) -> None:
    result = cli("--help", cwd=tmp_path)

    assert result.returncode == 0, result.stderr
    assert "demo" in result.stdout
    assert "events" in result.stdout


def test_an_unknown_command_is_a_usage_error(tmp_path: Path) -> None:
    result = cli("frobnicate", cwd=tmp_path)

    assert result.returncode == 2
    assert "frobnicate" in result.stdout + result.stderr


@pytest.fixture(scope="module")
def demo_run(
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[subprocess.CompletedProcess[str], Path]:
    """One real demo run, shared by the tests that look at what it printed and wrote.

    Those tests share an xdist group, so that one worker runs them and the demo once (a
    module fixture is made once per worker that runs a test needing it).
    """
    where = tmp_path_factory.mktemp("demo")
    return cli("demo", cwd=where), where


@pytest.mark.xdist_group("demo")
def test_the_demo_runs_eight_tasks_through_a_conflict_offline(
    demo_run: tuple[subprocess.CompletedProcess[str], Path],
) -> None:
    result, tmp_path = demo_run

    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert "planned 8 tasks" in out
    # Whichever changelog note merges second conflicts with the first.
    assert re.search(r"note-(api|cli): conflicts in CHANGELOG.md; policy: resolve", out), out
    assert "completed: 8 merged, 0 failed, 0 skipped" in out
    assert re.search(r"parallelism \d+\.\d\dx \(", out), out
    # The scripted model's turns are the model time: an estimate of one after another.
    assert re.search(r"one after another: at least \d+\.\ds .* speedup of at least \d", out), out
    repo = demo_repo(out)
    assert branch_file(repo, "CHANGELOG.md").endswith(
        "- Added the HTTP API.\n- Added the command line.\n"
    )
    assert "class Stock" in branch_file(repo, "app/models.py")
    store = tmp_path / ".claudecluster" / "nats"
    assert (store / "jetstream").is_dir()
    assert not (store / "server.json").exists()  # the demo stopped the server it started


@pytest.mark.xdist_group("demo")
def test_the_demo_report_renders_in_headless_chromium(
    demo_run: tuple[subprocess.CompletedProcess[str], Path], tmp_path: Path
) -> None:
    result, _ = demo_run
    assert result.returncode == 0, result.stdout + result.stderr
    found = re.search(r"the report is (\S+)", result.stdout)
    assert found is not None, result.stdout
    report = Path(found.group(1))
    browser = headless_chromium()

    dom = browser.dump_dom(report, tmp_path)
    assert dom.count("<h2>") == 4, dom
    assert dom.count('<rect x="') >= 8 + 8  # one bar per attempt on the timeline, one node per task
    for task in ("models", "store", "api", "cli", "tests", "docs", "note-api", "note-cli"):
        assert f"<td>{task}</td>" in dom
    # Each note's merge added its line, whichever one needed a resolution attempt.
    assert dom.count("CHANGELOG.md <small>+1/-0</small>") == 2, dom

    shot = browser.screenshot(report, tmp_path / "report.png", width=1280, height=1600)
    with Image.open(shot) as image:
        assert image.size == (1280, 1600)
        colours = image.convert("RGB").getcolors(maxcolors=1 << 20)
    assert colours is not None
    painted = {colour for _, colour in colours}
    assert len(painted) > 50  # text, bars and tables, not a blank or error page
    assert SUCCEEDED_GREEN in painted  # the timeline's bars for succeeded attempts


def test_the_demo_reports_an_unreachable_nats_url_in_one_line(tmp_path: Path) -> None:
    url = f"nats://127.0.0.1:{free_port()}"

    result = cli("demo", cwd=tmp_path, env=clean_env(CLAUDECLUSTER_NATS__URL=url))

    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "cannot reach NATS" in lines[0]
    assert url in lines[0]
    assert "Traceback" not in result.stderr
    assert not (tmp_path / ".claudecluster").exists()


def test_an_invalid_port_from_the_environment_names_the_key_and_the_variable(
    tmp_path: Path,
) -> None:
    result = cli("demo", cwd=tmp_path, env=clean_env(CLAUDECLUSTER_NATS__PORT="99999"))

    assert result.returncode == 2
    assert "nats.port" in result.stderr
    assert "CLAUDECLUSTER_NATS__PORT" in result.stderr
    assert "Traceback" not in result.stderr


def test_debug_shows_the_traceback_of_a_configuration_error(tmp_path: Path) -> None:
    result = cli("demo", "--debug", cwd=tmp_path, env=clean_env(CLAUDECLUSTER_NATS__PORT="99999"))

    assert result.returncode == 2
    assert "Traceback" in result.stderr
    assert "nats.port" in result.stderr


def test_a_malformed_config_file_is_named_in_the_error(tmp_path: Path) -> None:
    config = tmp_path / "claudecluster.yaml"
    config.write_text("nats:\n  url: [unclosed\n", encoding="utf-8")

    result = cli("demo", cwd=tmp_path)

    assert result.returncode == 2
    assert str(config) in result.stderr
    assert "not valid YAML" in result.stderr
    assert "Traceback" not in result.stderr


def test_schema_check_passes_on_fresh_output_and_names_a_stale_file(tmp_path: Path) -> None:
    out = tmp_path / "schemas"

    written = cli("events", "schema", "--out", str(out), cwd=tmp_path)
    assert written.returncode == 0, written.stderr
    files = sorted(out.rglob("*.json"))
    assert len(files) == len(render_schemas())

    current = cli("events", "schema", "--out", str(out), "--check", cwd=tmp_path)
    assert current.returncode == 0, current.stdout
    assert "are current" in current.stdout

    stale = files[0]
    stale.write_text(stale.read_text(encoding="utf-8") + "\n", encoding="utf-8")
    checked = cli("events", "schema", "--out", str(out), "--check", cwd=tmp_path)
    assert checked.returncode == 1
    assert f"stale {stale}" in checked.stdout
    assert "claudecluster events schema" in checked.stdout


def test_schema_check_reports_missing_and_extra_files(tmp_path: Path) -> None:
    out = tmp_path / "schemas"
    assert cli("events", "schema", "--out", str(out), cwd=tmp_path).returncode == 0
    missing = sorted(out.rglob("*.json"))[0]
    missing.unlink()
    extra = out / "leftover.json"
    extra.write_text("{}", encoding="utf-8")

    checked = cli("events", "schema", "--out", str(out), "--check", cwd=tmp_path)

    assert checked.returncode == 1
    assert f"missing {missing}" in checked.stdout
    assert f"extra {extra}" in checked.stdout


def test_the_committed_schemas_are_current(repo_root: Path) -> None:
    result = cli("events", "schema", "--check", cwd=repo_root)

    assert result.returncode == 0, result.stdout + result.stderr
    assert "are current" in result.stdout


# -- in process (for coverage of the same code paths) ---------------------------------------


def test_writing_schemas_in_process_returns_zero(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(["events", "schema", "--out", str(tmp_path)]) == 0
    assert sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*.json")) == sorted(
        render_schemas()
    )
    assert run(["events", "schema", "--out", str(tmp_path), "--check"]) == 0
    assert "are current" in capsys.readouterr().out


def test_a_stale_missing_or_extra_schema_in_process_fails_the_check(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COLUMNS", "400")  # rich would otherwise wrap the long paths
    assert run(["events", "schema", "--out", str(tmp_path)]) == 0
    stale, missing = sorted(tmp_path.rglob("*.json"))[:2]
    stale.write_text("{}", encoding="utf-8")
    missing.unlink()
    extra = tmp_path / "extra.json"
    extra.write_text("{}", encoding="utf-8")
    capsys.readouterr()

    assert run(["events", "schema", "--out", str(tmp_path), "--check"]) == 1

    out = capsys.readouterr().out
    assert f"stale {stale}" in out
    assert f"missing {missing}" in out
    assert f"extra {extra}" in out


def test_debug_in_process_prints_the_traceback_before_the_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(["demo", "--debug", "--config", str(tmp_path / "absent.yaml")]) == 2

    err = capsys.readouterr().err
    assert "Traceback" in err
    assert err.rstrip().splitlines()[-1].startswith("error: invalid configuration")


def test_a_missing_config_file_in_process_is_a_usage_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "absent.yaml"

    assert run(["demo", "--config", str(missing)]) == 2

    err = capsys.readouterr().err
    assert "cannot read" in err
    assert "absent.yaml" in err


def test_an_unknown_command_in_process_is_a_usage_error(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert run(["frobnicate"]) == 2
    captured = capsys.readouterr()
    assert "frobnicate" in captured.out + captured.err


@pytest.mark.nats
@pytest.mark.usefixtures("restore_structlog")
def test_the_demo_in_process_uses_the_nats_url_flag(
    tmp_path: Path,
    nats_url: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    for key in list(os.environ):
        if key.startswith("CLAUDECLUSTER_"):
            monkeypatch.delenv(key)
    monkeypatch.chdir(tmp_path)

    assert run(["demo", "--nats-url", nats_url]) == 0

    out = capsys.readouterr().out
    assert f"cluster at {nats_url}" in out
    assert "completed: 8 merged" in out
    assert not (tmp_path / ".claudecluster" / "nats").exists()  # no embedded server


def _repo_with_plan(tmp_path: Path, plan: str) -> Path:
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "notes.txt").write_text("base\n")
    for args in (["init", "-q"], ["add", "."], ["-c", "user.email=t@t", "-c", "user.name=t",
                                                "commit", "-qm", "base"]):  # fmt: skip
        subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True)
    (tmp_path / "plan.yaml").write_text(plan)
    return repo


DIAMOND = """\
tasks:
  - {id: a, prompt: "echo a > a.txt", executor: shell}
  - {id: b, prompt: "cat a.txt > b.txt", executor: shell, depends_on: [a]}
  - {id: c, prompt: "cat a.txt > c.txt", executor: shell, depends_on: [a]}
  - {id: d, prompt: "cat b.txt c.txt > d.txt", executor: shell, depends_on: [b, c]}
"""


def test_run_with_a_plan_file_merges_the_graph_onto_its_branch(tmp_path: Path) -> None:
    repo = _repo_with_plan(tmp_path, DIAMOND)
    result = cli("run", "diamond", "--plan", str(tmp_path / "plan.yaml"), "--run-id", "r1",
                 "--workers", "2", cwd=repo)  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert "planned 4 tasks" in result.stdout
    assert "run r1 completed: 4 merged, 0 failed, 0 skipped" in result.stdout
    assert branch_file(repo, "d.txt") == "a\na\n"
    status = subprocess.run(["git", "-C", str(repo), "status", "--porcelain"],
                            capture_output=True, text=True, check=True)  # fmt: skip
    assert status.stdout == ""  # the user's working tree is as it was


def test_a_run_on_the_embedded_server_needs_no_permission_it_lacks(tmp_path: Path) -> None:
    # The embedded server admits only its generated identities; run connects the driver,
    # the workers and the front door each as its own role. Everything must still work,
    # and the server must have refused nothing any of them asked for.
    repo = _repo_with_plan(tmp_path, DIAMOND)
    result = cli("run", "diamond", "--plan", str(tmp_path / "plan.yaml"), "--run-id", "r2",
                 "--workers", "2", cwd=repo)  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert "run r2 completed: 4 merged, 0 failed, 0 skipped" in result.stdout
    store = repo / ".claudecluster" / "nats"
    server_log = (store / "nats-server.log").read_text(encoding="utf-8")
    assert "Violation" not in server_log, server_log
    assert "authorization" in (store / "nats-server.conf").read_text(encoding="utf-8")
    assert sorted(p.name for p in (store / "creds").glob("*.nk")) == [
        "admin.nk", "driver.nk", "frontdoor.nk", "reader.nk", "worker.nk"
    ]  # fmt: skip


def test_run_json_streams_the_runs_events_as_json_lines(tmp_path: Path) -> None:
    repo = _repo_with_plan(tmp_path, DIAMOND)
    result = cli("run", "diamond", "--plan", str(tmp_path / "plan.yaml"), "--run-id", "j1",
                 "--json", cwd=repo)  # fmt: skip
    assert result.returncode == 0, result.stderr
    types = [json.loads(line)["envelope"]["payload"]["type"] for line in result.stdout.splitlines()]
    assert types[0] == "run.submitted"
    assert types[-1] == "run.completed"
    assert types.count("task.merged") == 4


@pytest.mark.parametrize(
    ("plan", "args", "message"),
    [
        (None, ["--plan", "missing.yaml"], "cannot read the plan file"),
        ("tasks: [", ["--plan", "PLAN"], "not valid YAML"),
        (
            "tasks:\n  - {id: a, prompt: x, depends_on: [b]}\n  - {id: b, prompt: y, "
            "depends_on: [a]}\n",
            ["--plan", "PLAN"],
            "cycle: a -> b -> a",
        ),
        (None, ["--plan", "PLAN", "--claude-planner"], "give exactly one of --plan"),
        # A bare goal is planned here and previewed; without a terminal there is no one to
        # ask, and it says what to pass instead.
        (None, [], "no terminal to ask whether to run the plan: pass --yes"),
        (None, ["--fanout", "*.py"], "--fanout needs --prompt"),
    ],
)
def test_bad_run_inputs_are_one_line_and_exit_2(
    tmp_path: Path, plan: str | None, args: list[str], message: str
) -> None:
    repo = _repo_with_plan(tmp_path, plan or "tasks: []\n")
    args = [str(tmp_path / "plan.yaml") if a == "PLAN" else a for a in args]
    result = cli("run", "goal", *args, cwd=repo)
    assert result.returncode == 2, result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert message in lines[0]
    assert "Traceback" not in result.stderr


def test_run_against_an_unreachable_nats_url_is_one_line_and_exit_2(tmp_path: Path) -> None:
    repo = _repo_with_plan(tmp_path, DIAMOND)
    url = f"nats://127.0.0.1:{free_port()}"
    result = cli("run", "goal", "--plan", str(tmp_path / "plan.yaml"), "--nats", url, cwd=repo)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "cannot reach NATS" in lines[0]


def test_a_finished_run_can_be_inspected_exported_and_rolled_back(tmp_path: Path) -> None:
    repo = _repo_with_plan(tmp_path, DIAMOND)
    plan = str(tmp_path / "plan.yaml")
    assert cli("run", "diamond", "--plan", plan, "--run-id", "r9", cwd=repo).returncode == 0

    listed = cli("status", cwd=repo)
    assert listed.returncode == 0, listed.stderr
    assert re.search(r"r9\s.*completed\s.*4/4", listed.stdout), listed.stdout
    shown = cli("status", "r9", cwd=repo)
    assert re.search(r"^\W*d\W+merged\W", shown.stdout, re.MULTILINE), shown.stdout
    task = cli("status", "r9/b", cwd=repo)
    assert "merged_commit" in task.stdout

    logs = cli("logs", "r9/a", cwd=repo)
    assert logs.returncode == 0
    assert "TaskSucceeded attempt=1" in logs.stdout

    replayed = cli("replay", "--run", "r9", "--type", "task.merged", cwd=repo)
    assert replayed.returncode == 0
    assert replayed.stdout.count("task.merged") == 4
    early = cli("replay", "--run", "r9", "--until", "5", cwd=repo)
    assert "state after seq 5" in early.stdout

    exported = cli("export", "r9", "--format", "json", cwd=repo)
    record = json.loads(exported.stdout)
    assert [t["state"] for t in record["tasks"]] == ["merged"] * 4
    assert record["tasks"][3]["files"] == [{"path": "d.txt", "added": 2, "deleted": 0}]
    assert "| d | merged |" in cli("export", "r9", "--format", "md", cwd=repo).stdout
    report = tmp_path / "report.html"
    assert cli("export", "r9", "--out", str(report), cwd=repo).returncode == 0
    page = report.read_text()
    assert page.startswith("<!doctype html>")
    assert '<svg class="gantt"' in page
    assert "<script" not in page  # self-contained and inert

    back = cli("rollback", "r9", "--to", "b", cwd=repo)
    assert back.returncode == 0, back.stderr
    assert "reverted:" in back.stdout
    refused = cli("cancel", "r9", cwd=repo)
    assert refused.returncode == 2
    assert "the driver refused run.cancel" in refused.stderr


@pytest.mark.parametrize("command", [["status", "nope"], ["logs", "nope"], ["export", "nope"],
                                     ["rollback", "nope"]])  # fmt: skip
def test_an_unknown_id_is_one_line_and_exit_2(tmp_path: Path, command: list[str]) -> None:
    result = cli(*command, cwd=tmp_path)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "unknown" in lines[0]
    assert "'nope'" in lines[0]


def test_config_shows_where_each_value_came_from_and_sets_only_valid_values(
    tmp_path: Path,
) -> None:
    env = clean_env(CLAUDECLUSTER_DRIVER__LOST_AFTER_S="45")
    assert cli("config", "set", "driver.max_running", "8", cwd=tmp_path).returncode == 0
    shown = cli("config", "show", cwd=tmp_path, env=env)
    assert re.search(r"driver\.max_running\s.*8\s.*file .*claudecluster\.yaml", shown.stdout)
    assert re.search(r"driver\.lost_after_s\s.*45\.0\s.*env CLAUDECLUSTER_DRIVER__LOST_AFTER_S",
                     shown.stdout), shown.stdout  # fmt: skip
    assert re.search(r"driver\.start_burst\s.*10\s.*default", shown.stdout)
    got = cli("config", "get", "driver.max_running", cwd=tmp_path)
    assert got.stdout.strip() == "8"
    refused = cli("config", "set", "driver.max_running", "0", cwd=tmp_path)
    assert refused.returncode == 2
    assert "driver.max_running" in refused.stderr
    assert cli("config", "get", "driver.max_running", cwd=tmp_path).stdout.strip() == "8"
    unknown = cli("config", "get", "driver.nope", cwd=tmp_path)
    assert unknown.returncode == 2
    assert "no such setting" in unknown.stderr
    assert "configuration is valid" in cli("config", "validate", cwd=tmp_path).stdout


# How long a loaded machine may take to start a worker process and see it join, or exit.
WORKER_SEEN_WITHIN_S = 60.0


@pytest.mark.nats
def test_workers_add_starts_a_worker_that_list_shows_and_rm_drains(
    tmp_path: Path, nats_url: str
) -> None:
    assert cli("workers", "add", cwd=tmp_path).returncode == 2  # no cluster to serve
    added = cli("workers", "add", "1", "--nats", nats_url, cwd=tmp_path)
    assert added.returncode == 0, added.stderr
    pid = int(re.search(r"started worker process (\d+)", added.stdout).group(1))  # type: ignore[union-attr]
    worker_id = ""
    deadline = time.monotonic() + WORKER_SEEN_WITHIN_S
    while not worker_id and time.monotonic() < deadline:
        listed = cli("workers", "list", "--nats", nats_url, cwd=tmp_path)
        found = re.findall(rf"(\S+-{pid}-\S+)\W+active", listed.stdout)
        if found:
            worker_id = found[0]
        else:
            time.sleep(0.2)  # it has not joined yet: ask again
    assert worker_id, listed.stdout
    removed = cli("workers", "rm", worker_id, "--nats", nats_url, cwd=tmp_path)
    assert removed.returncode == 0, removed.stderr
    assert f"worker {worker_id} left: drained on request" in removed.stdout
    deadline = time.monotonic() + WORKER_SEEN_WITHIN_S
    while time.monotonic() < deadline:
        try:
            if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                break
        except psutil.NoSuchProcess:
            break
        time.sleep(0.1)
    else:
        raise AssertionError("the drained worker process did not exit")


def test_init_writes_a_valid_commented_config_and_refuses_to_overwrite(tmp_path: Path) -> None:
    (tmp_path / ".gitignore").write_text("node_modules/")
    first = cli("init", cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    assert (tmp_path / ".gitignore").read_text() == "node_modules/\n.claudecluster/\n"
    text = (tmp_path / "claudecluster.yaml").read_text()
    assert "# driver:" in text
    assert "ANTHROPIC_API_KEY" in text
    again = cli("init", cwd=tmp_path)
    assert again.returncode == 2
    assert "use --force" in again.stderr
    forced = cli("init", "--force", "--nats", "nats://10.0.0.5:4222", cwd=tmp_path)
    assert forced.returncode == 0
    got = cli("config", "get", "nats.url", cwd=tmp_path)
    assert got.stdout.strip() == "nats://10.0.0.5:4222"
    assert (tmp_path / ".gitignore").read_text().count(".claudecluster/") == 1


def test_ctrl_c_during_a_run_without_a_terminal_detaches_with_exit_130(tmp_path: Path) -> None:
    repo = _repo_with_plan(
        tmp_path, "tasks:\n  - {id: slow, prompt: 'sleep 30', executor: shell}\n"
    )
    process = subprocess.Popen(
        [str(SCRIPT), "run", "slow", "--plan", str(tmp_path / "plan.yaml"), "--run-id", "c1"],
        cwd=repo, env=clean_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert process.stdout is not None
        for line in process.stdout:
            if "slow: started" in line:
                break
        process.send_signal(signal.SIGINT)
        out, err = process.communicate(timeout=90)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == 130, err
    assert "run c1 goes on without this command" in out


def test_detach_needs_a_cluster_that_outlives_the_command(tmp_path: Path) -> None:
    repo = _repo_with_plan(tmp_path, DIAMOND)
    result = cli("run", "x", "--plan", str(tmp_path / "plan.yaml"), "--detach", cwd=repo)
    assert result.returncode == 2
    assert "--detach" in result.stderr or "detach" in result.stderr


def test_creds_mints_a_worker_identity_for_another_pool_and_cluster_authorization(
    tmp_path: Path,
) -> None:
    out = tmp_path / "gpu-worker.nk"
    minted = cli("creds", "worker", "--pool", "gpu", "--out", str(out), cwd=tmp_path)
    assert minted.returncode == 0, minted.stderr
    assert minted.stdout.strip() == str(out)
    assert out.read_bytes().startswith(b"SU")
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    users = json.loads((tmp_path / ".claudecluster/nats/creds/users.json").read_text())
    assert {u["name"]: u["pool"] for u in users}["worker-gpu"] == "gpu"
    again = cli("creds", "worker", "--pool", "gpu", "--out", str(out), cwd=tmp_path)
    assert again.returncode == 2
    assert "exists already" in again.stderr

    made = cli("creds", "cluster", "--dir", str(tmp_path / "cluster"), cwd=tmp_path)
    assert made.returncode == 0, made.stderr
    conf = (tmp_path / "cluster" / "authorization.conf").read_text()
    keys = [
        u["public_key"] for u in json.loads((tmp_path / "cluster/creds/users.json").read_text())
    ]
    assert len(keys) == 5
    assert all(key in conf for key in keys)
    for seed in (tmp_path / "cluster" / "creds").glob("*.nk"):
        assert seed.read_text().strip() not in conf  # public keys only


SEES_WIP = """\
tasks:
  - {id: look, prompt: "cat notes.txt wip.txt > seen.txt", executor: shell}
"""


def test_uncommitted_changes_are_refused_unless_included(tmp_path: Path) -> None:
    repo = _repo_with_plan(tmp_path, SEES_WIP)
    (repo / "notes.txt").write_text("edited, not committed\n")
    (repo / "wip.txt").write_text("untracked work\n")
    (repo / ".gitignore").write_text("*.log\n")
    (repo / "build.log").write_text("ignored: never part of the base\n")
    refused = cli("run", "wip", "--plan", str(tmp_path / "plan.yaml"), "--run-id", "w0",
                  cwd=repo)  # fmt: skip
    assert refused.returncode == 2
    assert "uncommitted changes" in refused.stderr
    assert "notes.txt" in refused.stderr
    assert "--include-uncommitted" in refused.stderr
    assert "build.log" not in refused.stderr

    included = cli("run", "wip", "--plan", str(tmp_path / "plan.yaml"), "--run-id", "w1",
                   "--workers", "1", "--include-uncommitted", cwd=repo)  # fmt: skip
    assert included.returncode == 0, included.stdout + included.stderr
    assert branch_file(repo, "seen.txt") == "edited, not committed\nuntracked work\n"
    files = subprocess.run(["git", "-C", str(repo), "ls-tree", "--name-only",
                            "refs/claudecluster/snapshots/w1"],
                           capture_output=True, text=True, check=True).stdout.split()  # fmt: skip
    assert "build.log" not in files
    assert "wip.txt" in files
    status = subprocess.run(["git", "-C", str(repo), "status", "--porcelain"],
                            capture_output=True, text=True, check=True).stdout  # fmt: skip
    assert " M notes.txt" in status  # the user's checkout is as it was
    assert "?? wip.txt" in status


RETRIED = """\
tasks:
  - {id: a, prompt: "echo a > a.txt", executor: shell}
  - {id: b, prompt: "test -f later.txt && cat a.txt later.txt > b.txt", executor: shell,
     depends_on: [a]}
  - {id: c, prompt: "cat b.txt > c.txt", executor: shell, depends_on: [b]}
"""


def test_retry_reruns_a_failed_task_and_its_skipped_dependent_on_the_current_head(
    tmp_path: Path,
) -> None:
    # b fails for want of a file nobody made yet, and c, which needs b, is skipped. The
    # file is then committed onto the run's branch by hand: the retry starts b from the
    # branch as it is now, so b passes, and c runs after it.
    repo = _repo_with_plan(tmp_path, RETRIED)
    first = cli("run", "retried", "--plan", str(tmp_path / "plan.yaml"), "--run-id", "rt1",
                "--workers", "2", "--max-attempts", "1", cwd=repo)  # fmt: skip
    assert "run rt1 completed: 1 merged, 1 failed, 1 skipped" in first.stdout, (
        first.stdout + first.stderr
    )
    refused = cli("retry", "rt1", "a", "nope", cwd=repo)
    assert refused.returncode == 2
    assert "the driver refused run.retry" in refused.stderr
    assert "'nope'" in refused.stderr

    branch = "claudecluster/rt1"
    worktree = tmp_path / "by-hand"
    git = ["git", "-C", str(repo)]
    subprocess.run([*git, "worktree", "add", "-q", str(worktree), branch], check=True,
                   capture_output=True)  # fmt: skip
    (worktree / "later.txt").write_text("later\n")
    for args in (["add", "later.txt"], ["-c", "user.email=t@t", "-c", "user.name=t",
                                        "commit", "-qm", "later"]):  # fmt: skip
        subprocess.run(["git", "-C", str(worktree), *args], check=True, capture_output=True)
    subprocess.run([*git, "worktree", "remove", "--force", str(worktree)], check=True,
                   capture_output=True)  # fmt: skip

    again = cli("retry", "rt1", "--workers", "2", cwd=repo)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "run rt1 retries b, c from" in again.stdout
    assert "run rt1 completed: 3 merged, 0 failed, 0 skipped" in again.stdout, again.stdout
    assert branch_file(repo, "c.txt") == "a\nlater\n"

    status = cli("status", "rt1", "--json", cwd=repo)
    assert status.returncode == 0, status.stderr
    shown = json.loads(status.stdout)
    assert shown["run"]["state"] == "completed", shown
    tasks = {t["task_id"]: t for t in shown["tasks"]}
    assert {k: t["state"] for k, t in tasks.items()} == {"a": "merged", "b": "merged",
                                                         "c": "merged"}  # fmt: skip
    assert (tasks["a"]["attempt"], tasks["b"]["attempt"], tasks["c"]["attempt"]) == (1, 2, 1)

    open_again = cli("retry", "rt1", "b", cwd=repo)
    assert open_again.returncode == 2
    assert "merged already" in open_again.stderr
