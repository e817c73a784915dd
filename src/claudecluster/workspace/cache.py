"""The repository cache of a worker host: one bare copy of each repository it serves.

A task's cost must not grow with the repository's history, so history crosses to a host
once. The cache keeps one bare repository per source repository, named by a stable key
(the repository's root commit, or a configured name), and receives only the objects it
lacks:

- from a git remote the host can reach, when one is configured for the key (git hosting is
  made for moving repositories), fetching its branches;
- otherwise, or when the remote does not have the commit, from the driver's *segments*:
  a chain of bundles in the object store, the first with the history of the first base
  and each later one only the commits after the ones before it (its prerequisites).
  The cache fetches the segments it lacks, in order, so each one's prerequisites are
  already there.

Every attempt's workspace borrows the cache's objects (``objects/info/alternates``, see
:mod:`claudecluster.workspace.slot`), so making one costs the checkout of one tree.

Several slots of a worker, and several worker processes of a host, share one cache: a
lock (an in-process lock and ``flock`` on a file beside the repository) lets one of them
fetch while the others wait, and then finds the commit there. Nothing is ever removed
from a cache by the worker (``gc.auto`` is off, so no fetch prunes what a workspace
borrows); clearing it is deleting its directory while no worker of the host runs.
"""

from __future__ import annotations

import errno
import fcntl
import os
import re
import shutil
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import anyio

from claudecluster.errors import WorkspaceError
from claudecluster.workspace.bundle_stream import BundleSink
from claudecluster.workspace.git import git, git_status, present_commits

__all__ = [
    "CACHE_REF_PREFIX",
    "CacheTransfer",
    "RepoCache",
    "Segment",
    "valid_cache_key",
]

#: The refs under which a cache keeps what it received (segments' tips and remote branches).
CACHE_REF_PREFIX: Final = "refs/claudecluster/"
_KEY: Final = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,79}$")
_LOCK_TIMEOUT_S: Final = 3600.0
_LOCK_POLL_S: Final = 0.05
_FETCH_TIMEOUT_S: Final = 3600.0
_CACHE_CONFIG: Final = (
    "[gc]\n"
    "\tauto = 0\n"  # workspaces borrow these objects: nothing may prune them
    "[core]\n"
    "\tlogAllRefUpdates = false\n"
    "[fetch]\n"
    "\tunpackLimit = 1\n"  # a segment stays one pack, not loose objects
    "[transfer]\n"
    "\tfsckObjects = false\n"
)


def valid_cache_key(key: str) -> bool:
    """Whether ``key`` can name a cached repository (a directory name, nothing more)."""
    return bool(_KEY.match(key))


@dataclass(frozen=True, slots=True)
class Segment:
    """One bundle of the driver's chain for a repository, as the cache sees it.

    Attributes:
        commit: the bundle's tip; present in the cache once the bundle was fetched.
        download: writes the bundle to the given path and returns its size in bytes.
        stream: gives the bundle's bytes in order to the given callable (from a worker
            thread; it may block) and returns the size once they are all given and
            verified; None where only ``download`` is offered.
    """

    commit: str
    download: Callable[[Path], Awaitable[int]]
    stream: Callable[[Callable[[bytes], None]], Awaitable[int]] | None = None


@dataclass(frozen=True, slots=True)
class CacheTransfer:
    """What making a commit available in the cache moved onto the host.

    Attributes:
        bundles: segments downloaded and fetched.
        bytes: their total size.
        remote_fetches: fetches from a configured git remote.
    """

    bundles: int = 0
    bytes: int = 0
    remote_fetches: int = 0


class RepoCache:
    """The host's bare repositories under ``root``, one per key.

    Args:
        root: the directory holding ``<key>.git`` for every cached repository.
        remotes: git remote URLs by key, fetched from before any bundle.
    """

    def __init__(self, root: Path, *, remotes: Mapping[str, str] | None = None) -> None:
        self.root = root
        self._remotes = dict(remotes or {})
        self._locks: dict[str, anyio.Lock] = {}
        #: commits known present, per key: the cache only grows, so one check is enough
        self._present: dict[str, set[str]] = {}
        self.transferred = CacheTransfer()

    def path(self, key: str) -> Path:
        """The bare repository of ``key``.

        Raises:
            WorkspaceError: ``key`` is not a valid cache key.
        """
        if not valid_cache_key(key):
            raise WorkspaceError(f"{key!r} cannot name a repository cache")
        return self.root / f"{key}.git"

    async def ensure(self, key: str, commit: str, segments: Sequence[Segment]) -> Path:
        """Make ``commit`` (with its history) present in the cache of ``key``.

        Costs nothing when it already is; otherwise fetches from the configured remote,
        then the segments the cache lacks. Returns the bare repository's path.

        Raises:
            WorkspaceError: the commit is still missing afterwards, or git failed.
            EventStoreError: a segment could not be downloaded (from ``download``).
        """
        repo = self.path(key)
        if commit in self._present.get(key, set()) and repo.is_dir():
            return repo
        async with self._locked(key):
            if not (repo / "objects").is_dir():
                await self._create(repo)
                self._present.pop(key, None)
            if not await self._has(repo, commit):
                await anyio.to_thread.run_sync(_clear_stale_locks, repo)
                await self._fill(key, repo, commit, segments)
            self._present.setdefault(key, set()).add(commit)
        return repo

    async def _fill(self, key: str, repo: Path, commit: str, segments: Sequence[Segment]) -> None:
        remote = self._remotes.get(key)
        remote_said = [""]
        if remote:
            # A remote that fails is not fatal: the driver's segments carry the same history.
            code, _, err = await git_status(
                repo, "fetch", "--quiet", "--no-tags", remote,
                f"+refs/heads/*:{CACHE_REF_PREFIX}remote/*", time_limit=_FETCH_TIMEOUT_S,
            )  # fmt: skip
            self._add(remote_fetches=1)
            if code == 0 and await self._has(repo, commit):
                return
            remote_said = err.strip().splitlines()[-1:] if code != 0 else ["no such commit"]
        present = await self._which_present(repo, [s.commit for s in segments])
        for segment in segments:
            if segment.commit in present:
                continue
            await self._fetch_segment(repo, segment)
        if not await self._has(repo, commit):
            raise WorkspaceError(
                f"commit {commit} is not in the repository cache {key} after fetching "
                f"{len(segments) - len(present)} of {len(segments)} segments"
                + (f" and the remote {remote} ({remote_said[0]})" if remote else "")
            )

    async def _fetch_segment(self, repo: Path, segment: Segment) -> None:
        where = repo.parent / f".{repo.name}.{uuid.uuid4().hex[:8]}.bundle"
        sink = BundleSink(repo, where)
        try:
            refs = None
            if segment.stream is not None:
                # Indexed while it downloads when it can be (see bundle_stream).
                size = await segment.stream(sink.feed)
                refs = await anyio.to_thread.run_sync(sink.finish)
            else:
                size = await segment.download(where)
            if refs is not None:
                for oid, name in refs:
                    if name.startswith(CACHE_REF_PREFIX):  # what the fetch's refspec takes
                        await git(repo, "update-ref", name, oid)
            else:
                await git(
                    repo, "fetch", "--quiet", "--no-tags", str(where),
                    f"+{CACHE_REF_PREFIX}*:{CACHE_REF_PREFIX}*", time_limit=_FETCH_TIMEOUT_S,
                )  # fmt: skip
            self._add(bundles=1, size=size)
        finally:
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(sink.close)
                await anyio.Path(where).unlink(missing_ok=True)

    def _add(self, *, bundles: int = 0, size: int = 0, remote_fetches: int = 0) -> None:
        done = self.transferred
        self.transferred = CacheTransfer(
            bundles=done.bundles + bundles,
            bytes=done.bytes + size,
            remote_fetches=done.remote_fetches + remote_fetches,
        )

    async def _create(self, repo: Path) -> None:
        # Made aside and renamed into place: a worker killed half-way leaves no half cache.
        await anyio.Path(repo.parent).mkdir(parents=True, exist_ok=True)
        draft = repo.parent / f".{repo.name}.{uuid.uuid4().hex[:8]}.new"
        try:
            await git(repo.parent, "init", "--quiet", "--bare", str(draft))
            # Appended to the config git init wrote (one process, not one per setting).
            async with await anyio.open_file(draft / "config", "a", encoding="utf-8") as config:
                await config.write(_CACHE_CONFIG)
            if await anyio.Path(repo).exists():
                await anyio.to_thread.run_sync(shutil.rmtree, repo)
            await anyio.Path(draft).rename(repo)
        finally:
            if await anyio.Path(draft).exists():
                await anyio.to_thread.run_sync(shutil.rmtree, draft)

    async def _has(self, repo: Path, commit: str) -> bool:
        return commit in await self._which_present(repo, [commit])

    async def _which_present(self, repo: Path, commits: Sequence[str]) -> set[str]:
        return await present_commits(repo, commits)

    @asynccontextmanager
    async def _locked(self, key: str) -> AsyncIterator[None]:
        """One filler per key: the slots of this process, then the processes of the host."""
        async with self._locks.setdefault(key, anyio.Lock()):
            await anyio.Path(self.root).mkdir(parents=True, exist_ok=True)
            fd = os.open(self.root / f"{key}.lock", os.O_RDWR | os.O_CREAT, 0o600)
            try:
                with anyio.fail_after(_LOCK_TIMEOUT_S):
                    while True:
                        try:
                            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                            break
                        except OSError as exc:
                            if exc.errno not in (errno.EAGAIN, errno.EACCES):
                                raise
                        # Another worker of this host is filling the cache: its fetch may
                        # take minutes, so polling (not a thread blocked in flock, which a
                        # cancellation could not take back) is the honest wait.
                        await anyio.sleep(_LOCK_POLL_S)
                yield
            finally:
                os.close(fd)  # closing the descriptor releases the lock


def _clear_stale_locks(repo: Path) -> None:
    """Remove git's lock files left by a worker killed mid-fetch.

    Only the holder of the cache's own lock writes to it, and that is the caller: a git
    lock file found now belongs to a fetch whose worker died (``kill -9`` ends the worker,
    not always its git), and left in place it would refuse that ref's update forever.
    """
    candidates = [*repo.glob("*.lock"), *(repo / "refs").rglob("*.lock")]
    for lock in candidates:
        if lock.is_file() and not lock.is_symlink():
            lock.unlink(missing_ok=True)
