"""How a worker makes an attempt's workspace: the host's cache, then one checkout.

1. The repository cache (:mod:`claudecluster.workspace.cache`) gets the base commit: at
   no cost when an earlier attempt on this host brought it, otherwise by fetching only
   the segments of the repository's chain it lacks (streamed from the object store to a
   file, never held in memory), or from a configured git remote.
2. The slot's workspace (:mod:`claudecluster.workspace.slot`) is reset to that commit,
   borrowing the cache's objects: the cost is the checkout of one tree.

A work item of before the chains (one bundle of the whole history, ``base_bundle``) is
still understood: its bundle is the only segment of a cache named after the bundle.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Final

from claudecluster.errors import WorkspaceError
from claudecluster.events.model import ArtifactRef
from claudecluster.events.work import WorkItem
from claudecluster.observability.logging import get_logger
from claudecluster.runtime.patience import STORE_PATIENCE_S, patiently
from claudecluster.transport.artifacts import ArtifactStore
from claudecluster.workspace.cache import CacheTransfer, RepoCache, Segment
from claudecluster.workspace.slot import reset_workspace

__all__ = ["Preparation"]

_log = get_logger(__name__)
_PROGRESS_EVERY_S: Final = 2.0


class Preparation:
    """Makes workspaces for one worker from the host's repository cache.

    Args:
        artifacts: the object store the segments are read from.
        cache_root: the repository cache's directory.
        remotes: git remote URLs by repository key.
        patience_s: how long the history's fetch is repeated while the store is
            unavailable (:mod:`claudecluster.runtime.patience`).
    """

    def __init__(
        self,
        artifacts: ArtifactStore,
        cache_root: Path,
        *,
        remotes: Mapping[str, str],
        patience_s: float = STORE_PATIENCE_S,
    ) -> None:
        self._artifacts = artifacts
        self._patience_s = patience_s
        self.cache = RepoCache(cache_root, remotes=remotes)
        self._pristine: dict[Path, str] = {}

    @property
    def transferred(self) -> CacheTransfer:
        """What this worker's cache brought onto the host so far."""
        return self.cache.transferred

    async def workspace(self, item: WorkItem, branch: str, where: Path) -> Path:
        """Make ``where`` a private checkout of the item's base on ``branch``.

        Raises:
            WorkspaceError: the base cannot be had, or git failed.
            EventStoreError: a segment could not be read from the object store.
        """
        key, segments = self._segments(item)
        pristine_at = self._pristine.pop(where, None)  # only until this attempt starts
        # A streamed segment's read is not repeated by the store (its sink holds part of
        # it): the fetch is, whole, while the store is unavailable; what it brought before
        # failing is kept, so a repeat fetches only the segments still missing.
        repo = await patiently(
            lambda: self.cache.ensure(key, item.base_commit, segments),
            what=f"repository history of {key}",
            patience_s=self._patience_s,
        )
        return await reset_workspace(where, repo, item.base_commit, branch, pristine_at=pristine_at)

    def pristine(self, where: Path, commit: str) -> None:
        """Note that ``where`` holds exactly ``commit`` now that its attempt has ended."""
        self._pristine[where] = commit

    def objects(self, item: WorkItem) -> Path:
        """The object directory the item's workspace borrows (its cache's), for the
        sandbox to mount read-only and the worker's git calls to trust."""
        key, _ = self._segments(item)
        return self.cache.path(key) / "objects"

    def _segments(self, item: WorkItem) -> tuple[str, list[Segment]]:
        if item.repo_key:
            return item.repo_key, [
                _segment(s.commit, self._downloader(item.repo_key, s.bundle))
                for s in item.base_segments
            ]
        if item.base_bundle is None:
            raise WorkspaceError(
                f"work item {item.message_id} says neither where the repository's history "
                "is nor which repository it is"
            )
        key = f"bundle-{item.base_bundle.sha256[:32] or item.base_commit}"
        return key, [_segment(item.base_commit, self._downloader(key, item.base_bundle))]

    def _downloader(self, key: str, ref: ArtifactRef) -> _Download:
        return _Download(self._artifacts, key, ref)


def _segment(commit: str, download: _Download) -> Segment:
    return Segment(commit=commit, download=download, stream=download.stream)


class _Download:
    """Streams one segment to a file, logging progress every few seconds."""

    def __init__(self, artifacts: ArtifactStore, key: str, ref: ArtifactRef) -> None:
        self._artifacts = artifacts
        self._key = key
        self._ref = ref
        self._last = 0.0

    async def __call__(self, path: Path) -> int:
        started = time.monotonic()
        _log.info("fetching repository history", repo=self._key, segment=self._ref.key,
                  size=self._ref.size)  # fmt: skip
        await self._artifacts.get_file(self._ref, path, on_progress=self._progress)
        _log.info("repository history fetched", repo=self._key, segment=self._ref.key,
                  size=self._ref.size, seconds=round(time.monotonic() - started, 2))  # fmt: skip
        return self._ref.size

    async def stream(self, sink: Callable[[bytes], None]) -> int:
        """Give the segment's bytes to ``sink`` as they arrive; see :class:`Segment`."""
        started = time.monotonic()
        _log.info("fetching repository history", repo=self._key, segment=self._ref.key,
                  size=self._ref.size)  # fmt: skip
        size = await self._artifacts.get_into(self._ref, sink, on_progress=self._progress)
        _log.info("repository history fetched", repo=self._key, segment=self._ref.key,
                  size=size, seconds=round(time.monotonic() - started, 2))  # fmt: skip
        return size

    def _progress(self, done: int, total: int) -> None:
        now = time.monotonic()
        if now - self._last >= _PROGRESS_EVERY_S:
            self._last = now
            _log.info("fetching repository history", repo=self._key, segment=self._ref.key,
                      done=done, size=total)  # fmt: skip
