"""``claudecluster run "GOAL"`` with no plan: Claude Code plans here, the plan is shown, and
the user goes, saves it, or stops. The installed CLI in a subprocess (through a
pseudo-terminal where a person would answer), the real Claude Code CLI, the scripted model.
"""

from __future__ import annotations

import json
import os
import pty
import select
import subprocess
import time
from pathlib import Path

import anyio
import pytest

from claudecluster.scripted_model import Script, open_scripted_model
from tests.cli.test_cli import SCRIPT, branch_file, clean_env
from tests.support import make_repo

PLAN = {
    "goal": "notes",
    "tasks": [
        {"id": "first", "prompt": "[[task:first]] write the first note", "size": "small",
         "files": ["notes.txt"]},
        {"id": "second", "prompt": "[[task:second]] write the second note", "size": "large",
         "files": ["notes.txt"]},
        {"id": "last", "prompt": "[[task:last]] sum up", "depends_on": ["first", "second"]},
        {"id": "extra", "prompt": "[[task:extra]] add a note", "size": "small"},
    ],
}  # fmt: skip


def _write(path: str, text: str) -> dict[str, object]:
    tool = {"name": "Write", "input": {"file_path": "{cwd}/" + path, "content": text}}
    return {"turns": [{"tools": [tool]}, {"text": f"Wrote {path}."}]}


MODEL = Script.model_validate(
    {
        "tasks": [
            {"marker": "Plan how several agents",
             "turns": [{"text": "```json\n" + json.dumps(PLAN) + "\n```"}]},
            {"marker": "[[task:first]]", **_write("first.txt", "one\n")},
            {"marker": "[[task:second]]", **_write("second.txt", "two\n")},
            {"marker": "[[task:last]]", **_write("summary.txt", "one and two\n")},
            {"marker": "[[task:extra]]", **_write("extra.txt", "extra\n")},
        ]
    }
)  # fmt: skip


#: How long planning, the question and the run may take together on a loaded machine.
_ANSWERED_WITHIN_S = 300


def _env(url: str) -> dict[str, str]:
    return clean_env(ANTHROPIC_BASE_URL=url, ANTHROPIC_API_KEY="sk-scripted")


async def _cli(repo: Path, url: str, *args: str) -> subprocess.CompletedProcess[bytes]:
    return await anyio.run_process(
        [str(SCRIPT), "run", "write the notes", "--workers", "2", *args],
        cwd=repo, env=_env(url), check=False, stdin=subprocess.DEVNULL,
    )  # fmt: skip


def _in_a_terminal(repo: Path, url: str, answer: bytes) -> tuple[int, str]:
    """Run the bare goal on a pseudo-terminal and answer its question."""
    main, child = pty.openpty()
    process = subprocess.Popen(
        [str(SCRIPT), "run", "write the notes", "--workers", "2"],
        cwd=repo, env=_env(url), stdin=child, stdout=child, stderr=child,
    )  # fmt: skip
    os.close(child)
    seen = b""
    answered = False
    deadline = time.monotonic() + _ANSWERED_WITHIN_S
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([main], [], [], 1.0)
            if not ready:
                continue
            try:
                chunk = os.read(main, 4096)
            except OSError:  # the terminal closed: the command ended
                break
            if not chunk:
                break
            seen += chunk
            if not answered and b"s[t]op?" in seen:
                os.write(main, answer + b"\r")
                answered = True
        else:
            raise AssertionError(f"the command neither asked nor ended:\n{seen.decode()[-2000:]}")
        return process.wait(timeout=_ANSWERED_WITHIN_S), seen.decode(errors="replace")
    finally:
        os.close(main)
        if process.poll() is None:
            process.kill()
            process.wait()


async def test_a_dry_run_shows_the_plan_with_overlaps_and_the_estimate_and_starts_nothing(
    tmp_path: Path,
) -> None:
    repo = make_repo(tmp_path / "repo", {"notes.txt": "notes\n"})
    async with open_scripted_model(MODEL) as model:
        done = await _cli(repo, model.url, "--dry-run", "--budget", "5")
    out = done.stdout.decode() + done.stderr.decode()
    assert done.returncode == 0, out
    assert 'plan for "write the notes": 4 tasks' in out
    assert "last    [medium]" in out
    assert "after first, second" in out
    assert "overlap: first and second both change notes.txt: second will wait for first" in out
    assert "budget: $5" in out
    # first (2) and extra (2) at once, then second (15, ordered after first for the
    # overlap), then last (6): 23 min on two workers, 25 one after another.
    assert "about 23 min (25 min one after another), about $2.90" in out
    assert "longest chain: first > second > last" in out
    assert "dry run: nothing started" in out
    assert [r.task for r in model.served] == ["Plan how several agents"]
    branches = await anyio.run_process(
        ["git", "-C", str(repo), "branch", "--list", "claudecluster/*"]
    )
    assert branches.stdout.strip() == b""


async def test_yes_runs_the_previewed_plan_and_keeps_it(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo", {"notes.txt": "notes\n"})
    async with open_scripted_model(MODEL) as model:
        done = await _cli(repo, model.url, "--yes", "--run-id", "yes1")
    out = done.stdout.decode() + done.stderr.decode()
    assert done.returncode == 0, out
    assert "completed: 4 merged" in out
    assert branch_file(repo, "summary.txt") == "one and two\n"
    assert (repo / ".claudecluster" / "plans" / "yes1.yaml").is_file()


@pytest.mark.parametrize(("answer", "ran"), [(b"g", True), (b"s", False), (b"t", False)])
async def test_a_person_at_a_terminal_goes_saves_or_stops(
    tmp_path: Path, answer: bytes, ran: bool
) -> None:
    repo = make_repo(tmp_path / "repo", {"notes.txt": "notes\n"})
    async with open_scripted_model(MODEL) as model:
        code, out = await anyio.to_thread.run_sync(_in_a_terminal, repo, model.url, answer)
    assert code == 0, out
    assert "estimate on 2 workers" in out
    assert ("completed: 4 merged" in out) is ran
    if answer == b"s":
        assert "edit it, then run: claudecluster run" in out
        saved = list((repo / ".claudecluster" / "plans").glob("*.yaml"))
        assert len(saved) == 1
        assert "size: large" in saved[0].read_text()
    if answer == b"t":
        assert "stopped: nothing started" in out
    tasks_run = {r.task for r in model.served} - {"Plan how several agents"}
    assert bool(tasks_run) is ran
