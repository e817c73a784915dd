"""The host's repository cache and a slot's workspace, with real git and no network.

Segments here are bundles on disk made by the driver's own function (``segment_bundle``);
the cache under test sees them only through ``Segment.download``, as it sees the object
store in a worker.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from claudecluster.errors import UnsupportedRepositoryError, WorkspaceError
from claudecluster.workspace.cache import RepoCache, Segment
from claudecluster.workspace.git import (
    commit_all as commit_workspace,
)
from claudecluster.workspace.git import (
    git_status,
    refuse_unsupported,
    repository_key,
    resolve_commit,
    segment_bundle,
)
from claudecluster.workspace.naming import attempt_dir_name, slot_dir_name
from claudecluster.workspace.slot import reset_workspace
from tests.support import commit_all, git_output, make_repo


class Chain:
    """The driver's side in miniature: one segment per new commit, files on disk."""

    def __init__(self, repo: Path, where: Path) -> None:
        self.repo = repo
        self.where = where
        self.segments: list[Segment] = []
        self.downloads: list[str] = []
        where.mkdir(parents=True, exist_ok=True)

    async def send(self, commit: str) -> None:
        path = self.where / f"{commit}.bundle"
        have = [s.commit for s in self.segments]
        if not await segment_bundle(self.repo, commit, have, path):
            return

        async def download(target: Path, source: Path = path, tip: str = commit) -> int:
            self.downloads.append(tip)
            shutil.copyfile(source, target)
            return os.stat(source).st_size

        self.segments.append(Segment(commit=commit, download=download))


def _grow(repo: Path, name: str, size: int = 4096) -> str:
    (repo / name).write_bytes(os.urandom(size))
    commit_all(repo, f"add {name}")
    return git_output(repo, "rev-parse", "HEAD").strip()


async def test_the_first_commit_brings_the_history_once_and_later_ones_only_what_is_new(
    tmp_path: Path,
) -> None:
    repo = make_repo(tmp_path / "source", {"a.txt": "a\n"})
    first = _grow(repo, "big.bin", 200_000)
    chain = Chain(repo, tmp_path / "store")
    await chain.send(first)
    key = await repository_key(repo, first)
    cache = RepoCache(tmp_path / "cache")

    await cache.ensure(key, first, chain.segments)
    assert cache.transferred.bundles == 1
    history_bytes = cache.transferred.bytes
    assert history_bytes > 200_000  # random bytes do not compress

    await cache.ensure(key, first, chain.segments)  # a second attempt: nothing moves
    assert cache.transferred.bundles == 1
    assert RepoCache(tmp_path / "cache").path(key).is_dir()
    again = RepoCache(tmp_path / "cache")  # another worker process of the same host
    await again.ensure(key, first, chain.segments)
    assert again.transferred.bundles == 0

    second = _grow(repo, "small.txt", 100)
    await chain.send(second)
    await cache.ensure(key, second, chain.segments)
    assert cache.transferred.bundles == 2
    assert cache.transferred.bytes - history_bytes < 5_000  # only the new commit
    assert chain.downloads == [first, second]


async def test_an_ancestor_of_what_was_sent_needs_no_segment(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "source", {"a.txt": "a\n"})
    old = await resolve_commit(repo, "HEAD")
    new = _grow(repo, "b.txt", 10)
    chain = Chain(repo, tmp_path / "store")
    await chain.send(new)
    await chain.send(old)  # a rollback to an older base: its history is already there
    assert [s.commit for s in chain.segments] == [new]
    cache = RepoCache(tmp_path / "cache")
    key = await repository_key(repo, new)
    await cache.ensure(key, old, chain.segments)
    assert cache.transferred.bundles == 1


async def test_locks_left_by_a_fetch_killed_mid_way_do_not_block_the_next(
    tmp_path: Path,
) -> None:
    repo = make_repo(tmp_path / "source", {"a.txt": "a\n"})
    first = await resolve_commit(repo, "HEAD")
    chain = Chain(repo, tmp_path / "store")
    await chain.send(first)
    cache = RepoCache(tmp_path / "cache")
    bare = await cache.ensure("k", first, chain.segments)
    second = _grow(repo, "b.txt", 10)
    await chain.send(second)
    # What a git fetch killed with its worker leaves: the ref's lock and packed-refs'.
    ref_lock = bare / "refs" / "claudecluster" / "cache" / f"{second}.lock"
    ref_lock.write_text(f"{second}\n")
    (bare / "packed-refs.lock").write_text("")
    await cache.ensure("k", second, chain.segments)
    assert cache.transferred.bundles == 2
    assert not ref_lock.exists()


async def test_a_commit_the_segments_do_not_hold_is_named(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "source", {"a.txt": "a\n"})
    base = await resolve_commit(repo, "HEAD")
    chain = Chain(repo, tmp_path / "store")
    await chain.send(base)
    later = _grow(repo, "b.txt", 10)
    cache = RepoCache(tmp_path / "cache")
    with pytest.raises(WorkspaceError, match=later):
        await cache.ensure("k", later, chain.segments)


async def test_a_configured_remote_is_fetched_from_instead_of_bundles(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "source", {"a.txt": "a\n"})
    base = await resolve_commit(repo, "HEAD")
    chain = Chain(repo, tmp_path / "store")
    await chain.send(base)
    cache = RepoCache(tmp_path / "cache", remotes={"k": repo.as_uri()})
    await cache.ensure("k", base, chain.segments)
    assert (cache.transferred.remote_fetches, cache.transferred.bundles) == (1, 0)
    assert chain.downloads == []


async def test_a_missing_object_fails_naming_it_not_pack_objects(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "source", {"a.txt": "first\n"})
    (repo / "a.txt").write_text("second\n")
    commit_all(repo, "change")
    lost = git_output(repo, "rev-parse", "HEAD~1:a.txt").strip()
    loose = repo / ".git" / "objects" / lost[:2] / lost[2:]
    loose.unlink()
    with pytest.raises(WorkspaceError, match=f"corrupt object {lost}") as caught:
        await segment_bundle(repo, "HEAD", [], tmp_path / "x.bundle")
    assert "pack-objects" not in str(caught.value)
    assert "git fsck" in str(caught.value)


async def test_submodules_and_lfs_files_are_refused_naming_them(tmp_path: Path) -> None:
    inner = make_repo(tmp_path / "inner", {"lib.txt": "x\n"})
    outer = make_repo(tmp_path / "outer", {"main.txt": "y\n"})
    git_output(outer, "-c", "protocol.file.allow=always", "submodule", "add", "-q",
               str(inner), "vendor/inner")  # fmt: skip
    commit_all(outer, "submodule")
    with pytest.raises(UnsupportedRepositoryError, match="submodules \\(vendor/inner\\)"):
        await refuse_unsupported(outer, await resolve_commit(outer, "HEAD"))

    lfs = make_repo(tmp_path / "lfs", {".gitattributes": "*.psd filter=lfs diff=lfs -text\n"})
    with pytest.raises(UnsupportedRepositoryError, match="Git LFS"):
        await refuse_unsupported(lfs, await resolve_commit(lfs, "HEAD"))

    plain = make_repo(tmp_path / "plain", {".gitattributes": "*.txt text\n"})
    await refuse_unsupported(plain, await resolve_commit(plain, "HEAD"))  # no error


async def test_a_reused_workspace_keeps_nothing_of_the_attempt_before(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "source", {"a.txt": "a\n", ".gitignore": "*.log\n"})
    base = await resolve_commit(repo, "HEAD")
    chain = Chain(repo, tmp_path / "store")
    await chain.send(base)
    cache = await RepoCache(tmp_path / "cache").ensure("k", base, chain.segments)
    ws = await reset_workspace(tmp_path / "slot" / "ws", cache, base, "claudecluster/r/one")

    # The first attempt commits, leaves untracked, ignored and nested-repository files,
    # a hook and a config setting.
    (ws / "a.txt").write_text("changed\n")
    (ws / "secret.txt").write_text("attempt one's work\n")
    commit_all(ws, "one")
    mine = git_output(ws, "rev-parse", "HEAD").strip()
    (ws / "untracked.txt").write_text("u\n")
    (ws / "debug.log").write_text("ignored\n")
    (ws / "nested").mkdir()
    git_output(ws / "nested", "init", "-q")
    (ws / ".git" / "hooks").mkdir(exist_ok=True)
    (ws / ".git" / "hooks" / "post-checkout").write_text("#!/bin/sh\ntouch /tmp/pwned\n")
    git_output(ws, "config", "alias.st", "!touch pwned")

    ws = await reset_workspace(ws, cache, base, "claudecluster/r/two")
    names = sorted(p.name for p in ws.iterdir())
    assert names == [".git", ".gitignore", "a.txt"]
    assert (ws / "a.txt").read_text() == "a\n"
    assert git_output(ws, "status", "--porcelain", "--ignored") == ""
    assert git_output(ws, "for-each-ref", "--format=%(refname)").split() == [
        "refs/heads/claudecluster/r/two"
    ]
    assert git_output(ws, "cat-file", "-t", base).strip() == "commit"
    code, _, _ = await git_status(ws, "cat-file", "-e", mine)
    assert code != 0  # attempt one's commit went with its objects
    assert not (ws / ".git" / "hooks").exists()
    assert "alias" not in (ws / ".git" / "config").read_text()
    # The cache's refs are not the workspace's.
    assert "refs/claudecluster" not in git_output(ws, "show-ref")


async def test_a_workspace_that_resists_the_reset_is_made_again(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "source", {"a.txt": "a\n"})
    base = await resolve_commit(repo, "HEAD")
    chain = Chain(repo, tmp_path / "store")
    await chain.send(base)
    cache = await RepoCache(tmp_path / "cache").ensure("k", base, chain.segments)
    ws = await reset_workspace(tmp_path / "ws", cache, base, "b1")
    (ws / ".git" / "index").write_bytes(b"not an index")
    locked = ws / "locked"
    locked.mkdir()
    (locked / "f").write_text("x")
    locked.chmod(0o500)
    try:
        ws = await reset_workspace(ws, cache, base, "b2")
    finally:
        if locked.exists():
            locked.chmod(0o700)
    assert sorted(p.name for p in ws.iterdir()) == [".git", "a.txt"]


_IDS = st.from_regex(r"\A[A-Za-z0-9][A-Za-z0-9_-]{0,63}\Z")


@given(
    a=st.tuples(_IDS, _IDS, st.integers(1, 10_000)),
    b=st.tuples(_IDS, _IDS, st.integers(1, 10_000)),
)
def test_two_different_attempts_never_share_a_directory(
    a: tuple[str, str, int], b: tuple[str, str, int]
) -> None:
    if a != b:
        assert attempt_dir_name(*a) != attempt_dir_name(*b)


@given(attempt=st.tuples(_IDS, _IDS, st.integers(1, 10_000)), worker=_IDS, slot=st.integers(0, 64))
def test_a_slot_never_shares_a_directory_with_an_attempt(
    attempt: tuple[str, str, int], worker: str, slot: int
) -> None:
    assert slot_dir_name(worker, slot) != attempt_dir_name(*attempt)


def test_the_names_that_used_to_collide_do_not() -> None:
    assert attempt_dir_name("a-b", "c", 1) != attempt_dir_name("a", "b-c", 1)


async def _pristine_after(ws: Path, cache: Path, mess: Callable[[Path], None]) -> bool:
    """Whether the worker's own commit step calls the tree pristine after ``mess``."""
    mess(ws)
    told: list[bool] = []
    head = await commit_workspace(
        ws, "unchanged", objects=cache / "objects", on_pristine=lambda: told.append(True)
    )
    assert head is None
    return bool(told)


async def test_only_a_tree_holding_exactly_its_base_is_called_pristine(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "source", {"a.txt": "a\n", ".gitignore": "*.log\n"})
    base = await resolve_commit(repo, "HEAD")
    chain = Chain(repo, tmp_path / "store")
    await chain.send(base)
    cache = await RepoCache(tmp_path / "cache").ensure("k", base, chain.segments)

    def nothing(ws: Path) -> None:
        del ws

    def ignored_file(ws: Path) -> None:
        (ws / "debug.log").write_text("ignored\n")

    def empty_directory(ws: Path) -> None:
        (ws / "empty" / "deeper").mkdir(parents=True)

    found = {}
    for n, mess in enumerate((nothing, ignored_file, empty_directory)):
        ws = await reset_workspace(tmp_path / f"slot{n}" / "ws", cache, base, "claudecluster/r/a")
        found[mess.__name__] = await _pristine_after(ws, cache, mess)
    # git status cannot see an empty directory, and hides ignored files unless asked.
    assert found == {"nothing": True, "ignored_file": False, "empty_directory": False}


async def test_a_pristine_slot_is_reset_without_git_and_still_keeps_nothing(
    tmp_path: Path,
) -> None:
    repo = make_repo(tmp_path / "source", {"a.txt": "a\n"})
    first = await resolve_commit(repo, "HEAD")
    (repo / "b.txt").write_text("b\n")
    commit_all(repo, "second")
    second = await resolve_commit(repo, "HEAD")
    chain = Chain(repo, tmp_path / "store")
    await chain.send(second)
    cache = await RepoCache(tmp_path / "cache").ensure("k", second, chain.segments)
    ws = await reset_workspace(tmp_path / "slot" / "ws", cache, first, "claudecluster/r/one")
    assert await _pristine_after(ws, cache, lambda ws: None)
    git_output(ws, "config", "alias.st", "!touch pwned")  # the worker's view of .git only

    # The same base: nothing to check out, but .git is made again.
    ws = await reset_workspace(ws, cache, first, "claudecluster/r/two", pristine_at=first)
    assert sorted(p.name for p in ws.iterdir()) == [".git", "a.txt"]
    assert git_output(ws, "status", "--porcelain", "--ignored") == ""
    assert git_output(ws, "rev-parse", "HEAD").strip() == first
    assert git_output(ws, "for-each-ref", "--format=%(refname)").split() == [
        "refs/heads/claudecluster/r/two"
    ]
    assert "alias" not in (ws / ".git" / "config").read_text()

    # Another base: checked out, with nothing to clean.
    ws = await reset_workspace(ws, cache, second, "claudecluster/r/three", pristine_at=first)
    assert sorted(p.name for p in ws.iterdir()) == [".git", "a.txt", "b.txt"]
    assert git_output(ws, "status", "--porcelain", "--ignored") == ""
    assert git_output(ws, "rev-parse", "HEAD").strip() == second


async def test_a_reset_in_place_leaves_nothing_planted_inside_the_fresh_layout(
    tmp_path: Path,
) -> None:
    # .git is pruned to its layout rather than removed: what hides inside the directories
    # it keeps, or takes the place of one of them, must still go.
    repo = make_repo(tmp_path / "source", {"a.txt": "a\n"})
    base = await resolve_commit(repo, "HEAD")
    chain = Chain(repo, tmp_path / "store")
    await chain.send(base)
    cache = await RepoCache(tmp_path / "cache").ensure("k", base, chain.segments)
    ws = await reset_workspace(tmp_path / "slot" / "ws", cache, base, "claudecluster/r/one")
    assert await _pristine_after(ws, cache, lambda ws: None)
    gitdir = ws / ".git"
    outside = tmp_path / "outside"
    outside.mkdir()
    (gitdir / "objects" / "pack" / "planted.pack").write_text("x")
    (gitdir / "objects" / "ab").mkdir()
    (gitdir / "refs" / "heads" / "other").write_text(f"{base}\n")
    shutil.rmtree(gitdir / "refs" / "tags")
    (gitdir / "refs" / "tags").symlink_to(outside)
    (gitdir / "objects" / "info" / "alternates").unlink()
    (gitdir / "objects" / "info" / "alternates").symlink_to(outside / "alternates")
    (gitdir / "config").unlink()
    (gitdir / "config").mkdir()

    ws = await reset_workspace(ws, cache, base, "claudecluster/r/two", pristine_at=base)
    assert sorted(p.name for p in (gitdir / "objects" / "pack").iterdir()) == []
    assert not (gitdir / "objects" / "ab").exists()
    assert not (gitdir / "refs" / "tags").is_symlink()
    assert not (gitdir / "objects" / "info" / "alternates").is_symlink()
    assert not (outside / "alternates").exists()
    assert (gitdir / "config").is_file()
    assert git_output(ws, "for-each-ref", "--format=%(refname)").split() == [
        "refs/heads/claudecluster/r/two"
    ]
    assert git_output(ws, "status", "--porcelain", "--ignored") == ""
