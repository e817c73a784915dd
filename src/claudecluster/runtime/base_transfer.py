"""The driver's side of moving a repository's history to worker hosts: one chain per repo.

Each source repository (named by its root commit) has one chain of bundles in the
``cc_artifacts`` object store, shared by every run on it, under ``repos/<key>/``:

- the first segment holds the history of the first base commit sent;
- each later segment holds only the commits of a new base that the segments before it
  do not (a bundle whose prerequisites are their commits);
- ``repos/<key>/chain.json`` lists them, so a driver that restarts continues the chain
  instead of sending the history again.

So the object store never holds the same history twice: a new run, a new base (the
integration branch after a merge) or a retry adds at most the commits that are new. A work
item carries the chain; a worker host's repository cache fetches only the segments it
lacks (:mod:`claudecluster.workspace.cache`).

The chain stays short: past :data:`MAX_SEGMENTS`, the later segments are replaced by one
that holds everything after the first segment, and the replaced ones are deleted one
compaction later (a work item already on the queue may still name them).
"""

from __future__ import annotations

from pathlib import Path
from typing import Final

import anyio
import msgspec

from claudecluster.errors import EventStoreError
from claudecluster.events.work import BaseSegment
from claudecluster.observability.logging import get_logger
from claudecluster.transport.artifacts import ArtifactStore
from claudecluster.workspace.git import present_commits, repository_key, segment_bundle

__all__ = ["MAX_SEGMENTS", "RepositoryChains", "chain_prefix"]

_log = get_logger(__name__)

#: Segments a chain may have before the later ones are folded into one.
MAX_SEGMENTS: Final = 16


def chain_prefix(key: str) -> str:
    """Where a repository's chain lives in the object store."""
    return f"repos/{key}"


class _Chain(msgspec.Struct, kw_only=True):
    segments: list[BaseSegment] = msgspec.field(default_factory=list)
    retired: list[BaseSegment] = msgspec.field(default_factory=list)


class RepositoryChains:
    """The chain of every repository this driver serves, kept in the object store.

    Args:
        artifacts: the object store.
    """

    def __init__(self, artifacts: ArtifactStore) -> None:
        self._artifacts = artifacts
        self._keys: dict[tuple[Path, str], str] = {}
        self._chains: dict[str, _Chain] = {}
        self._locks: dict[str, anyio.Lock] = {}
        #: commits the chain is known to hold, per key (asked of git once each)
        self._covered: dict[str, set[str]] = {}

    async def key_of(self, repo: Path, commit: str) -> str:
        """The cache key of ``repo`` (its root commit), found once per repository.

        Raises:
            WorkspaceError: git failed.
        """
        # Keyed by the commit too: a commit of unrelated history would have another root.
        known = self._keys.get((repo, commit))
        if known is None:
            known = await repository_key(repo, commit)
            self._keys[(repo, commit)] = known
        return known

    async def segments_for(
        self, repo: Path, commit: str, work_dir: Path
    ) -> tuple[str, tuple[BaseSegment, ...]]:
        """The repository's key and a chain whose segments together hold ``commit``.

        Sends (stores) only what the chain lacks: nothing when ``commit`` is already in
        it, one incremental segment otherwise. ``work_dir`` holds the bundle meanwhile.

        Raises:
            WorkspaceError: git failed, or the repository has a missing or corrupt object
                (named in the message).
            EventStoreError: the object store failed.
        """
        key = await self.key_of(repo, commit)
        async with self._locks.setdefault(key, anyio.Lock()):
            chain = await self._load(key)
            covered = self._covered.setdefault(key, set())
            if commit in covered:  # the common case, every dispatch on the same base
                return key, tuple(chain.segments)
            have = await present_commits(repo, [s.commit for s in chain.segments])
            if commit in have:
                covered.add(commit)
                return key, tuple(chain.segments)
            if len(chain.segments) >= MAX_SEGMENTS:
                await self._compact(key, repo, chain, commit, work_dir)
                covered.clear()  # the chain changed: what it covers is asked again
                covered.add(commit)
                return key, tuple(chain.segments)
            segment = await self._store_segment(key, repo, commit, sorted(have), work_dir)
            if segment is not None:
                chain.segments.append(segment)
                await self._save(key, chain)
            covered.add(commit)
            return key, tuple(chain.segments)

    async def clean_run(self, run_id: str) -> int:
        """Remove what a finished run left in the object store: its result bundles (merged
        or given up by now) and any whole-history base bundle of before the chains.

        The diffstats stay (reports read them); repository chains are not a run's. Returns
        how many objects were removed. A failure is logged, not raised: the run's end is
        recorded already, and leftovers only cost space (docs/worker.md says how to remove
        them by hand).
        """
        try:
            names = await self._artifacts.names(prefix=f"{run_id}/")
            doomed = [
                name for name in names
                if name.endswith("/result.bundle") or name.startswith(f"{run_id}/_/0/base")
            ]  # fmt: skip
            for name in doomed:
                await self._artifacts.delete(name)
        except EventStoreError as exc:
            _log.warning("a finished run's bundles were not removed", run=run_id, error=str(exc))
            return 0
        if doomed:
            _log.info("a finished run's bundles removed", run=run_id, count=len(doomed))
        return len(doomed)

    async def _store_segment(
        self, key: str, repo: Path, commit: str, have: list[str], work_dir: Path
    ) -> BaseSegment | None:
        await anyio.Path(work_dir).mkdir(parents=True, exist_ok=True)
        path = work_dir / f"segment-{commit[:16]}.bundle"
        try:
            if not await segment_bundle(repo, commit, have, path):
                return None  # commit is in the history already sent
            ref = await self._artifacts.put_file(f"{chain_prefix(key)}/{commit}.bundle", path)
        finally:
            await anyio.Path(path).unlink(missing_ok=True)
        _log.info("history segment stored", repo=key, commit=commit, size=ref.size,
                  prerequisites=len(have))  # fmt: skip
        return BaseSegment(commit=commit, bundle=ref)

    async def _compact(
        self, key: str, repo: Path, chain: _Chain, commit: str, work_dir: Path
    ) -> None:
        first = chain.segments[0]
        segment = await self._store_segment(key, repo, commit, [first.commit], work_dir)
        for old in chain.retired:  # retired a compaction ago: no queued item names them
            await self._artifacts.delete(old.bundle.key)
        chain.retired = chain.segments[1:]
        chain.segments = [first] + ([segment] if segment is not None else [])
        await self._save(key, chain)

    async def _load(self, key: str) -> _Chain:
        chain = self._chains.get(key)
        if chain is not None:
            return chain
        raw = await self._artifacts.read_named(f"{chain_prefix(key)}/chain.json")
        chain = _Chain()
        if raw:
            try:
                stored = msgspec.json.decode(raw, type=_Chain)
            except msgspec.DecodeError as exc:
                _log.warning("repository chain unreadable; starting a new one", repo=key,
                             error=str(exc))  # fmt: skip
                stored = _Chain()
            # A segment removed meanwhile (by hand, by a limit) ends the chain there.
            for segment in stored.segments:
                if not await self._artifacts.exists(segment.bundle.key):
                    _log.warning("repository chain cut at a missing segment", repo=key,
                                 segment=segment.bundle.key)  # fmt: skip
                    break
                chain.segments.append(segment)
            chain.retired = stored.retired
        self._chains[key] = chain
        return chain

    async def _save(self, key: str, chain: _Chain) -> None:
        await self._artifacts.put(
            f"{chain_prefix(key)}/chain.json", "chain.json", msgspec.json.encode(chain)
        )
