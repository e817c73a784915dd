"""Workspaces from bundles and results back as bundles, with real git in temp dirs."""

from __future__ import annotations

from pathlib import Path

import msgspec
import pytest

from claudecluster.domain.branches import task_branch
from claudecluster.errors import EventStoreError, WorkspaceError
from claudecluster.workspace.git import (
    FileChange,
    base_bundle,
    commit_all,
    fetch_result,
    git,
    open_workspace,
    result_bundle,
)
from tests.support import git_output, make_repo


@pytest.fixture
def source(tmp_path: Path) -> Path:
    return make_repo(tmp_path / "source", {"app.py": "print('v1')\n", "old.txt": "to be removed\n"})


async def test_a_task_result_travels_back_as_exactly_its_changes(
    source: Path, tmp_path: Path
) -> None:
    base = await base_bundle(source, "HEAD", "r1", tmp_path / "base.bundle")
    branch = task_branch("r1", "t1")
    workspace = await open_workspace(tmp_path / "base.bundle", base, branch, tmp_path / "ws" / "t1")
    assert (workspace / "app.py").read_text() == "print('v1')\n"
    # The agent's work: two files written, one edited, one deleted.
    (workspace / "new_a.py").write_text("a = 1\n")
    (workspace / "pkg").mkdir()
    (workspace / "pkg" / "b.py").write_text("b = 2\nc = 3\n")
    (workspace / "app.py").write_text("print('v2')\n")
    (workspace / "old.txt").unlink()
    head = await commit_all(workspace, "t1: the task's change")
    assert head is not None
    changes = await result_bundle(workspace, base, branch, tmp_path / "t1.bundle")
    assert sorted(changes, key=lambda c: c.path) == [
        FileChange(path="app.py", added=1, deleted=1),
        FileChange(path="new_a.py", added=1, deleted=0),
        FileChange(path="old.txt", added=0, deleted=1),
        FileChange(path="pkg/b.py", added=2, deleted=0),
    ]
    fetched = await fetch_result(source, tmp_path / "t1.bundle", branch)
    assert fetched == head
    diff = git_output(source, "diff", "--name-status", base, branch).split()
    assert diff == ["M", "app.py", "A", "new_a.py", "D", "old.txt", "A", "pkg/b.py"]
    # The user's checked-out branch is untouched.
    assert git_output(source, "rev-parse", "HEAD").strip() == base
    assert git_output(source, "branch", "--show-current").strip() == "main"


async def test_a_workspace_without_changes_commits_nothing(source: Path, tmp_path: Path) -> None:
    base = await base_bundle(source, "main", "r1", tmp_path / "base.bundle")
    workspace = await open_workspace(
        tmp_path / "base.bundle", base, task_branch("r1", "t2"), tmp_path / "ws"
    )
    assert await commit_all(workspace, "nothing") is None


async def test_an_unknown_ref_names_the_problem(source: Path, tmp_path: Path) -> None:
    with pytest.raises(WorkspaceError, match="rev-parse"):
        await base_bundle(source, "no-such-branch", "r1", tmp_path / "x.bundle")


async def test_a_nul_character_in_an_argument_is_a_workspace_error(source: Path) -> None:
    # A process cannot take it; the adapter says so instead of letting ValueError escape.
    with pytest.raises(WorkspaceError, match="NUL character"):
        await git(source, "rev-parse", "HEAD\x00")
    with pytest.raises(WorkspaceError, match="NUL character"):
        await git(source.with_name("so\x00urce"), "status")


async def test_a_result_bundle_whose_base_is_missing_does_not_apply(
    source: Path, tmp_path: Path
) -> None:
    base = await base_bundle(source, "HEAD", "r1", tmp_path / "base.bundle")
    branch = task_branch("r1", "t3")
    workspace = await open_workspace(tmp_path / "base.bundle", base, branch, tmp_path / "ws")
    (workspace / "x.py").write_text("x\n")
    await commit_all(workspace, "x")
    await result_bundle(workspace, base, branch, tmp_path / "t3.bundle")
    stranger = tmp_path / "stranger"
    stranger.mkdir()
    await git(stranger, "init", "-q")
    with pytest.raises(WorkspaceError, match="bundle verify"):
        await fetch_result(stranger, tmp_path / "t3.bundle", branch)


async def test_bundles_travel_through_the_object_store_intact(
    source: Path, tmp_path: Path, nats_url: str
) -> None:
    from claudecluster.runtime.connection import open_nats
    from claudecluster.transport.artifacts import (
        JetStreamArtifactStore,
        artifact_key,
    )
    from claudecluster.transport.topology import apply_topology, load_topology

    base = await base_bundle(source, "HEAD", "r9", tmp_path / "base.bundle")
    async with open_nats(nats_url) as client:
        js = client.jetstream()
        await apply_topology(js, load_topology())
        store = JetStreamArtifactStore(js)
        ref = await store.put_file(artifact_key("r9", "t1", 1, "base"), tmp_path / "base.bundle")
        assert ref.size == (tmp_path / "base.bundle").stat().st_size
        # A worker with no access to the driver's disk builds its workspace from the store.
        fetched = await store.get_file(ref, tmp_path / "fetched.bundle")
        workspace = await open_workspace(fetched, base, task_branch("r9", "t1"), tmp_path / "w")
        assert (workspace / "app.py").exists()
        with pytest.raises(EventStoreError, match="checksum"):
            await store.get(msgspec.structs.replace(ref, sha256="0" * 64))
        with pytest.raises(EventStoreError, match="not in bucket"):
            await store.get(msgspec.structs.replace(ref, key="r9/none/1/base"))
