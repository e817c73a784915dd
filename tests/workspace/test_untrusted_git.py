"""The worker's git calls on a workspace the agent had never run what the agent planted.

An agent (or a shell task) running unconfined can write its workspace's ``.git``: a
``core.fsmonitor`` command runs on every ``git status``/``add``/``diff``, a hook on
``commit``, a filter on ``add``. Each plant below writes a marker file when it runs; the
worker's commit, bundle and diff must leave every marker unwritten.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from claudecluster.domain.branches import task_branch
from claudecluster.errors import WorkspaceError
from claudecluster.workspace.git import (
    base_bundle,
    commit_all,
    git,
    open_workspace,
    result_bundle,
)
from tests.support import make_repo


def _plant(workspace: Path, markers: Path) -> dict[str, Path]:
    """Write every kind of git-run program into ``workspace``'s git dir; return markers."""
    markers.mkdir()
    found = {name: markers / name for name in ("fsmonitor", "hook", "filter", "include")}
    script = markers / "evil.sh"
    script.write_text('#!/bin/sh\nenv > "$1"\nexit 0\n')
    script.chmod(0o755)
    included = markers / "included.cfg"
    included.write_text(f"[core]\n\tfsmonitor = {script} {found['include']}\n")
    with (workspace / ".git" / "config").open("a") as config:
        config.write(
            f"[core]\n\tfsmonitor = {script} {found['fsmonitor']}\n"
            f"[filter \"evil\"]\n\tclean = sh -c '{script} {found['filter']}; cat'\n"
            "\trequired = false\n"
            f"[include]\n\tpath = {included}\n"
        )
    hook = workspace / ".git" / "hooks" / "post-commit"
    hook.parent.mkdir(exist_ok=True)
    hook.write_text(f"#!/bin/sh\n{script} {found['hook']}\n")
    hook.chmod(0o755)
    (workspace / ".gitattributes").write_text("* filter=evil\n")
    return found


async def test_commit_bundle_and_diff_run_nothing_the_agent_planted_in_git(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CLAUDECLUSTER_NATS__URL", "nats://user:hunter2-password@127.0.0.1:4222")
    source = make_repo(tmp_path / "source", {"app.py": "v1\n"})
    base = await base_bundle(source, "HEAD", "r1", tmp_path / "base.bundle")
    branch = task_branch("r1", "t1")
    workspace = await open_workspace(tmp_path / "base.bundle", base, branch, tmp_path / "ws")
    markers = _plant(workspace, tmp_path / "markers")
    (workspace / "app.py").write_text("v2\n")

    head = await commit_all(workspace, "t1: change")
    changes = await result_bundle(workspace, base, branch, tmp_path / "result.bundle")
    await git(workspace, "status", "--porcelain")

    assert head is not None
    assert sorted(c.path for c in changes) == [".gitattributes", "app.py"]
    assert {name: path.exists() for name, path in markers.items()} == dict.fromkeys(markers, False)
    assert not (workspace / ".git" / "hooks").exists()
    assert "evil" not in (workspace / ".git" / "config").read_text()


async def test_a_git_dir_replaced_by_a_pointer_elsewhere_is_refused(tmp_path: Path) -> None:
    source = make_repo(tmp_path / "source", {"app.py": "v1\n"})
    base = await base_bundle(source, "HEAD", "r1", tmp_path / "base.bundle")
    workspace = await open_workspace(
        tmp_path / "base.bundle", base, task_branch("r1", "t1"), tmp_path / "ws"
    )
    (workspace / ".git").rename(tmp_path / "elsewhere")
    (workspace / ".git").write_text(f"gitdir: {tmp_path / 'elsewhere'}\n")
    with pytest.raises(WorkspaceError, match="not a plain git directory"):
        await commit_all(workspace, "t1: change")


async def test_git_calls_get_a_minimal_environment_and_safe_settings(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "cloud-key-that-must-not-leak")
    monkeypatch.setenv("CLAUDECLUSTER_NATS__URL", "nats://u:hunter2-password@127.0.0.1:4222")
    repo = make_repo(tmp_path / "repo", {"a": "1\n"})
    with (repo / ".git" / "config").open("a") as config:
        config.write("[core]\n\tfsmonitor = /bin/false\n")
    # A program git itself starts (here an alias of the test's own choosing) sees the
    # environment every git call of ours gets.
    seen = await git(repo, "-c", "alias.showenv=!env", "showenv")
    assert "cloud-key-that-must-not-leak" not in seen
    assert "hunter2-password" not in seen
    assert "PATH=" in seen
    assert (await git(repo, "config", "--get", "core.fsmonitor")).strip() == "false"
    assert (await git(repo, "config", "--get", "core.hooksPath")).strip() == os.devnull
