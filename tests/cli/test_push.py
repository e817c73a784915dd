"""``run --push REMOTE``: the merged result reaches a remote, and only a merged one does."""

from __future__ import annotations

import subprocess
from pathlib import Path

from tests.cli.test_cli import DIAMOND, _repo_with_plan, cli


def _git(*args: str) -> str:
    return subprocess.run(["git", *args], capture_output=True, text=True, check=True).stdout.strip()


def _bare_remote(tmp_path: Path, repo: Path) -> Path:
    remote = tmp_path / "remote.git"
    _git("init", "-q", "--bare", str(remote))
    _git("-C", str(repo), "remote", "add", "origin", str(remote))
    return remote


def test_a_merged_run_is_pushed_to_the_bare_remote_under_its_branch(tmp_path: Path) -> None:
    repo = _repo_with_plan(tmp_path, DIAMOND)
    remote = _bare_remote(tmp_path, repo)
    result = cli("run", "diamond", "--plan", str(tmp_path / "plan.yaml"), "--run-id", "p1",
                 "--workers", "2", "--push", "origin", cwd=repo)  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert "pushed claudecluster/p1 to origin" in result.stdout
    local = _git("-C", str(repo), "rev-parse", "claudecluster/p1")
    assert _git("-C", str(remote), "rev-parse", "claudecluster/p1") == local
    assert _git("-C", str(remote), "show", "claudecluster/p1:d.txt") == "a\na"


def test_a_run_with_a_failed_task_is_not_pushed(tmp_path: Path) -> None:
    plan = "tasks:\n  - {id: a, prompt: 'exit 3', executor: shell}\n"
    repo = _repo_with_plan(tmp_path, plan)
    remote = _bare_remote(tmp_path, repo)
    result = cli("run", "fails", "--plan", str(tmp_path / "plan.yaml"), "--run-id", "p2",
                 "--max-attempts", "1", "--push", "origin", cwd=repo)  # fmt: skip
    assert result.returncode == 1, result.stdout + result.stderr
    assert "not pushed to origin: not every task merged" in result.stdout
    assert _git("-C", str(remote), "branch", "--list") == ""


def test_an_unknown_remote_is_refused_before_the_run_starts(tmp_path: Path) -> None:
    repo = _repo_with_plan(tmp_path, DIAMOND)
    result = cli("run", "diamond", "--plan", str(tmp_path / "plan.yaml"), "--run-id", "p3",
                 "--push", "upstream", cwd=repo)  # fmt: skip
    assert result.returncode == 2, result.stdout + result.stderr
    assert "has no remote 'upstream'" in result.stderr
    assert "run p3" not in result.stdout  # nothing was submitted
    assert _git("-C", str(repo), "branch", "--list", "claudecluster/*") == ""


def test_a_git_url_repo_is_refused_with_the_way_round_it(tmp_path: Path) -> None:
    repo = _repo_with_plan(tmp_path, DIAMOND)
    for url in ("https://github.com/o/r.git", "git@github.com:o/r.git"):
        result = cli("run", "diamond", "--plan", str(tmp_path / "plan.yaml"),
                     "--repo", url, cwd=repo)  # fmt: skip
        assert result.returncode == 2, result.stdout + result.stderr
        assert "a git URL is not cloned" in result.stderr, result.stderr
