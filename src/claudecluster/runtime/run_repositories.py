"""The git half of the driver's effects, behind one seam.

The driver shell (:mod:`claudecluster.runtime.driver`) carries out what the core decides;
most effects are appends to the log and publications on the bus, which have in-memory
twins (:mod:`claudecluster.transport.infrastructure`). The rest is git: a run's base and
its history sent to the object store, the integration branch, merging a result, the
verify command, a rollback. :class:`RunRepositories` is that rest, per run, so the same
driver shell runs on real repositories (:class:`GitRunRepositories`, the default) or on a
twin that scripts what git would have answered (a simulation on a virtual clock).
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

from claudecluster.actors.driver import Merge, MergeBatch
from claudecluster.actors.merge_outcomes import MergeFound, merge_key
from claudecluster.domain.branches import integration_branch, result_ref, task_branch
from claudecluster.events.model import ChangedFile
from claudecluster.events.work import BaseSegment
from claudecluster.executors.confined import ConfinedVerify
from claudecluster.executors.confinement import Confinement
from claudecluster.runtime.base_transfer import RepositoryChains
from claudecluster.runtime.merge_queue import BatchMerger, Recorder
from claudecluster.transport.artifacts import ArtifactStore
from claudecluster.workspace.git import (
    commit_changes,
    fetch_result,
    git,
    refuse_unsupported,
    resolve_commit,
)
from claudecluster.workspace.integration import Integration, VerifyOutcome

__all__ = ["GitRunRepositories", "RunRepositories"]


class RunRepositories(Protocol):
    """What the driver asks of a run's repository.

    Every method may raise :class:`~claudecluster.errors.ClusterError` for a failing store
    or git (the driver retries the effect); the ones that say so raise the planning
    errors that fail the run instead.
    """

    def run_dir(self, run_id: str, repo: Path) -> Path:
        """The run's private directory (planner files, bundles, the integration worktree)."""
        ...

    async def base_of(self, run_id: str, repo: Path, base_ref: str) -> str:
        """The commit a run starts from, its history sent to the object store.

        Raises:
            WorkspaceError: the ref cannot be resolved or the repository is unsupported.
        """
        ...

    async def open_integration(self, run_id: str, repo: Path, base: str) -> None:
        """Create the run's integration branch at ``base`` (unless it is already there)."""
        ...

    async def segments(
        self, run_id: str, repo: Path, base: str
    ) -> tuple[str, tuple[BaseSegment, ...]]:
        """The repository's key and the chain of segments a worker needs for ``base``."""
        ...

    async def conflicted_merge(
        self, run_id: str, repo: Path, ours: str, theirs: str, message: str
    ) -> str:
        """A commit holding the merge of ``theirs`` into ``ours``, conflict markers and all."""
        ...

    async def merge(self, effect: Merge) -> MergeFound:
        """Merge one attempt's result onto the integration branch (and verify it)."""
        ...

    async def merge_batch(self, effect: MergeBatch, record: Recorder) -> int:
        """Merge a batch of results, verified once and bisected; returns the last seq."""
        ...

    async def verify_head(
        self, run_id: str, repo: Path, command: str, timeout_s: float
    ) -> VerifyOutcome:
        """Run the verify command on the integration branch's head."""
        ...

    async def move_to(self, run_id: str, repo: Path, commit: str) -> None:
        """Point the integration branch at ``commit`` (a rollback)."""
        ...

    async def head(self, run_id: str, repo: Path) -> str:
        """The integration branch's head."""
        ...

    async def clean_run(self, run_id: str) -> None:
        """Remove what an ended run left in the object store (its result bundles)."""
        ...


class GitRunRepositories:
    """The real repositories: git on the driver's machine, bundles in the object store.

    Args:
        artifacts: where histories and result bundles are kept.
        work_dir: integration worktrees and bundles (default ``<repo>/.claudecluster/driver``).
        confinement: how verify commands are confined (None: this machine's sandbox).
    """

    def __init__(
        self,
        artifacts: ArtifactStore,
        *,
        work_dir: Path | None = None,
        confinement: Confinement | None = None,
    ) -> None:
        self._artifacts = artifacts
        self._work_dir = work_dir
        self._confinement = confinement
        self._chains = RepositoryChains(artifacts)
        self._integrations: dict[str, Integration] = {}

    def run_dir(self, run_id: str, repo: Path) -> Path:
        root = self._work_dir or repo / ".claudecluster" / "driver"
        return root / run_id

    async def base_of(self, run_id: str, repo: Path, base_ref: str) -> str:
        base = await resolve_commit(repo, base_ref)
        await refuse_unsupported(repo, base)
        # The history goes to the object store now, once for the repository (only what
        # earlier runs did not send): a missing object fails the run here.
        await self._chains.segments_for(repo, base, self.run_dir(run_id, repo))
        await _exclude_work_dir(repo)
        return base

    async def open_integration(self, run_id: str, repo: Path, base: str) -> None:
        await self._integration(run_id, repo).start(base)

    async def segments(
        self, run_id: str, repo: Path, base: str
    ) -> tuple[str, tuple[BaseSegment, ...]]:
        return await self._chains.segments_for(repo, base, self.run_dir(run_id, repo))

    async def conflicted_merge(
        self, run_id: str, repo: Path, ours: str, theirs: str, message: str
    ) -> str:
        return await self._integration(run_id, repo).conflicted_merge(ours, theirs, message)

    async def merge(self, effect: Merge) -> MergeFound:
        repo = Path(effect.repo)
        theirs = await self._theirs_of(effect)
        if theirs is None:
            # The task changed nothing: there is nothing to merge, and nothing to verify.
            return MergeFound(theirs=None)
        outcome, verdict = await self._integration(effect.run_id, repo).merge(
            head=effect.head,
            theirs=theirs,
            key=merge_key(effect),
            message=f"{effect.task_id}: {effect.title}",
            verify=effect.verify_command if effect.verify else None,
            verify_timeout_s=effect.verify_timeout_s,
        )
        files: tuple[ChangedFile, ...] = ()
        if outcome.commit is not None:
            files = tuple(
                ChangedFile(path=change.path, added=change.added, deleted=change.deleted)
                for change in await commit_changes(repo, outcome.commit)
            )
        return MergeFound(
            theirs=theirs, commit=outcome.commit, conflict_files=outcome.conflict_files,
            changed_files=outcome.changed_files, marker_files=outcome.marker_files,
            verify_failure=None if verdict is None or verdict.passed else verdict.output,
            files=files,
        )  # fmt: skip

    async def merge_batch(self, effect: MergeBatch, record: Recorder) -> int:
        repo = Path(effect.repo)
        merger = BatchMerger(
            self._integration(effect.run_id, repo), repo, record, self._theirs_of,
            effect.verify_command, effect.verify_timeout_s, effect.verify_parallel,
        )  # fmt: skip
        return await merger.run(effect)

    async def verify_head(
        self, run_id: str, repo: Path, command: str, timeout_s: float
    ) -> VerifyOutcome:
        return await self._integration(run_id, repo).verify_head(command, timeout_s)

    async def move_to(self, run_id: str, repo: Path, commit: str) -> None:
        await self._integration(run_id, repo).move_to(commit)

    async def head(self, run_id: str, repo: Path) -> str:
        return await self._integration(run_id, repo).head()

    async def clean_run(self, run_id: str) -> None:
        await self._chains.clean_run(run_id)

    async def _theirs_of(self, effect: Merge) -> str | None:
        """The commit holding the attempt's result in the driver's repository.

        None when a task's own attempt changed nothing. A resolution attempt that changed
        nothing hands back the conflicted merge it started from, markers and all, so that
        it is judged like any other result.
        """
        bundle_ref = next((a for a in effect.result.artifacts if a.name == "result.bundle"), None)
        if bundle_ref is None:
            return effect.resolution_base if effect.resolving is not None else None
        repo = Path(effect.repo)
        path = self.run_dir(effect.run_id, repo) / (
            f"result-{effect.task_id}-{effect.attempt}.bundle"
        )
        await self._artifacts.get_file(bundle_ref, path)
        return await fetch_result(
            repo, path, task_branch(effect.run_id, effect.task_id),
            result_ref(effect.run_id, effect.task_id, effect.attempt),
        )  # fmt: skip

    def _integration(self, run_id: str, repo: Path) -> Integration:
        if run_id not in self._integrations:
            self._integrations[run_id] = Integration(
                repo,
                self.run_dir(run_id, repo) / "integration",
                integration_branch(run_id),
                run_verify=ConfinedVerify(self._confinement),
            )
        return self._integrations[run_id]


async def _exclude_work_dir(repo: Path) -> None:
    """Keep ``.claudecluster/`` out of the user's ``git status`` without editing tracked files."""
    common = Path((await git(repo, "rev-parse", "--git-common-dir")).strip())
    exclude = (common if common.is_absolute() else repo / common) / "info" / "exclude"
    current = exclude.read_text() if exclude.exists() else ""
    if ".claudecluster/" not in current.split():
        exclude.parent.mkdir(parents=True, exist_ok=True)
        exclude.write_text(
            current + ("" if current.endswith("\n") or not current else "\n") + ".claudecluster/\n"
        )
