"""``run --push REMOTE``: the merged result reaches a remote, and only a merged one does."""

from __future__ import annotations

import json
import subprocess
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar

import pytest

from claudecluster.cli.pull_request import repository_of
from tests.cli.test_cli import DIAMOND, _repo_with_plan, clean_env, cli


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


def test_push_alone_pushes_to_origin(tmp_path: Path) -> None:
    repo = _repo_with_plan(tmp_path, DIAMOND)
    remote = _bare_remote(tmp_path, repo)  # the repository's origin
    result = cli("run", "diamond", "--plan", str(tmp_path / "plan.yaml"), "--run-id", "p0",
                 "--workers", "2", "--push", cwd=repo)  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert "pushed claudecluster/p0 to origin" in result.stdout
    assert _git("-C", str(remote), "show", "claudecluster/p0:d.txt") == "a\na"


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


class _GitHubDouble(BaseHTTPRequestHandler):
    """``POST /api/v3/repos/OWNER/NAME/pulls`` as GitHub answers it; records each request."""

    requests: ClassVar[list[tuple[str, str, dict[str, Any]]]] = []

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        type(self).requests.append((self.path, self.headers["Authorization"], body))
        if self.headers["Authorization"] != f"Bearer {_TOKEN}":
            self._answer(401, {"message": "Bad credentials"})
        elif self.path != "/api/v3/repos/octo/widgets/pulls":
            self._answer(404, {"message": "Not Found"})
        else:
            self._answer(201, {"html_url": "https://github.example/octo/widgets/pull/7",
                               "number": 7})  # fmt: skip

    def _answer(self, status: int, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: the test reads the recorded requests instead."""


_TOKEN = "ghp_double-token-0123456789"


@pytest.fixture
def github_double() -> Iterator[str]:
    _GitHubDouble.requests = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _GitHubDouble)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/api/v3"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def test_pr_opens_a_pull_request_on_the_github_double_after_the_push(
    tmp_path: Path, github_double: str
) -> None:
    repo = _repo_with_plan(tmp_path, DIAMOND)
    remote = _bare_remote(tmp_path, repo)
    env = clean_env(
        GH_TOKEN=_TOKEN,
        CLAUDECLUSTER_GITHUB__API_URL=github_double,
        CLAUDECLUSTER_GITHUB__REPOSITORY="octo/widgets",
    )
    result = cli("run", "diamond", "--plan", str(tmp_path / "plan.yaml"), "--run-id", "pr1",
                 "--workers", "2", "--push", "origin", "--pr", cwd=repo, env=env)  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert "opened pull request #7: https://github.example/octo/widgets/pull/7" in result.stdout
    assert _TOKEN not in result.stdout + result.stderr
    assert _git("-C", str(remote), "rev-parse", "claudecluster/pr1")  # pushed before the PR
    [(path, auth, body)] = _GitHubDouble.requests
    assert (path, auth) == ("/api/v3/repos/octo/widgets/pulls", f"Bearer {_TOKEN}")
    base = _git("-C", str(repo), "symbolic-ref", "--short", "HEAD")
    assert (body["head"], body["base"]) == ("claudecluster/pr1", base)
    assert body["title"] == "diamond (pr1)"
    assert "4 merged, 0 failed, 0 skipped" in body["body"]
    assert "cost $" in body["body"]
    for task in "abcd":
        assert f"| `{task}` " in body["body"]
    assert "claudecluster export pr1 --format html" in body["body"]


def test_a_refused_pull_request_is_exit_1_and_the_push_stays(
    tmp_path: Path, github_double: str
) -> None:
    repo = _repo_with_plan(tmp_path, DIAMOND)
    remote = _bare_remote(tmp_path, repo)
    env = clean_env(GITHUB_TOKEN="wrong", CLAUDECLUSTER_GITHUB__API_URL=github_double,
                    CLAUDECLUSTER_GITHUB__REPOSITORY="octo/widgets")  # fmt: skip
    result = cli("run", "diamond", "--plan", str(tmp_path / "plan.yaml"), "--run-id", "pr2",
                 "--push", "origin", "--pr", cwd=repo, env=env)  # fmt: skip
    assert result.returncode == 1, result.stdout + result.stderr
    assert "pull request not opened: GitHub answered 401: Bad credentials" in result.stdout
    assert _GitHubDouble.requests[0][1] == "Bearer wrong"
    assert _git("-C", str(remote), "rev-parse", "claudecluster/pr2")


def test_pr_without_a_token_or_a_push_is_refused_before_the_run(tmp_path: Path) -> None:
    repo = _repo_with_plan(tmp_path, DIAMOND)
    _bare_remote(tmp_path, repo)
    plan = str(tmp_path / "plan.yaml")
    no_token = cli("run", "d", "--plan", plan, "--push", "origin", "--pr", cwd=repo)
    assert no_token.returncode == 2, no_token.stdout + no_token.stderr
    assert "GH_TOKEN or GITHUB_TOKEN" in no_token.stderr
    no_push = cli("run", "d", "--plan", plan, "--pr", cwd=repo, env=clean_env(GH_TOKEN="t"))
    assert no_push.returncode == 2
    assert "needs --push" in no_push.stderr


@pytest.mark.parametrize(
    "url",
    ["https://github.com/octo/widgets.git", "git@github.com:octo/widgets.git",
     "https://ghe.example/octo/widgets", "ssh://git@github.com/octo/widgets.git/"],
)  # fmt: skip
def test_the_pull_requests_repository_is_read_from_the_remote_url(url: str) -> None:
    assert repository_of(url, None) == "octo/widgets"
    assert repository_of(url, "other/name") == "other/name"
