"""What an attempt does on the worker's disk, behind one seam.

The worker shell claims an attempt, records its events and runs its executor; everything
else is files and git: the slot's scratch directory, the workspace checked out at the
attempt's base, the configured files and the setup command, the agent's transcript, and
the result committed and bundled into the artifact store. :class:`AttemptDisk` is that
rest, so the same worker shell runs on real workspaces (:class:`GitAttemptDisk`, the
default) or on a twin that touches no disk (a simulation on a virtual clock, where a
thread hop would let virtual time run on while the thread works, and no two runs of a
seed would agree).
"""

from __future__ import annotations

import functools
import importlib
import os
import sys
from pathlib import Path
from typing import Protocol

import anyio
import msgspec

from claudecluster.errors import SetupCommandError
from claudecluster.events.model import ArtifactRef
from claudecluster.events.work import WorkItem
from claudecluster.executors.confined import run_confined
from claudecluster.executors.confinement import (
    Confinement,
    attempt_sandbox,
    confined_environment,
)
from claudecluster.runtime.worker.config import WorkerConfig
from claudecluster.runtime.worker.transcripts import _transcript_path
from claudecluster.runtime.worker.workspaces import (
    _copy_in,
    _empty_scratch,
    _ready_scratch,
    _remove,
    _sweep_orphans,
)
from claudecluster.runtime.workspace_preparation import Preparation
from claudecluster.transport.artifacts import ArtifactStore, artifact_key
from claudecluster.workspace.git import commit_all, result_bundle

__all__ = ["AttemptDisk", "GitAttemptDisk", "PreparedWorkspace"]


class PreparedWorkspace(msgspec.Struct, frozen=True, kw_only=True):
    """An attempt's workspace, ready for the agent.

    Attributes:
        workspace: the agent's working directory.
        objects: what else the confined agent must read (the repository cache's objects
            the workspace borrows).
    """

    workspace: Path
    objects: Path


class AttemptDisk(Protocol):
    """What the worker asks of its disk, around each attempt.

    Every method may raise :class:`~claudecluster.errors.ClusterError` or ``OSError``: the
    worker then records the attempt's failure (whose fault it was decides the retry).
    """

    async def sweep(self, root: Path) -> None:
        """Remove what worker processes that no longer run left under ``root``."""
        ...

    async def remove(self, path: Path) -> None:
        """Remove a slot's directory (the worker is leaving)."""
        ...

    async def prepare(
        self, item: WorkItem, branch: str, scratch: Path, where: Path, *, empty: bool
    ) -> PreparedWorkspace:
        """The scratch directory ready (emptied first with ``empty``), the workspace at
        ``where`` on ``branch`` at the item's base, the configured files copied in and the
        setup command run.

        Raises:
            CopyFilesError: a configured pattern matches nothing.
            SetupCommandError: the setup command failed or ran out of time.
        """
        ...

    def transcript(self, scratch: Path, workspace: Path, session_id: str) -> Path | None:
        """Where the agent writes the session's transcript (None: it writes none here)."""
        ...

    async def collect(
        self, item: WorkItem, attempt: int, prepared: PreparedWorkspace, branch: str
    ) -> tuple[ArtifactRef, ...]:
        """The agent's work committed and stored as artifacts (none: it changed nothing)."""
        ...

    async def clean(self, scratch: Path) -> None:
        """Leave nothing of the attempt in the slot's scratch directory."""
        ...


class GitAttemptDisk:
    """Real workspaces: git worktrees from the repository cache, on this machine's disk.

    Args:
        config: the worker's configuration (files to copy, the setup command).
        preparation: builds workspaces from the repository cache.
        confinement: how the setup command is confined.
        artifacts: where results are stored.
    """

    def __init__(
        self,
        config: WorkerConfig,
        preparation: Preparation,
        confinement: Confinement,
        artifacts: ArtifactStore,
    ) -> None:
        self._config = config
        self._preparation = preparation
        self._confinement = confinement
        self._artifacts = artifacts

    async def sweep(self, root: Path) -> None:
        await anyio.to_thread.run_sync(_sweep_orphans, root)

    async def remove(self, path: Path) -> None:
        await anyio.to_thread.run_sync(_remove, path)

    async def prepare(
        self, item: WorkItem, branch: str, scratch: Path, where: Path, *, empty: bool
    ) -> PreparedWorkspace:
        # Who owns the directory (the slot's, or a kept attempt's): a worker killed outright
        # cannot remove it, the next worker to start on this machine does (_sweep_orphans).
        # A slot's scratch is emptied here too: the end of the attempt before did it, but
        # a failure to empty it then must not hand its files to this attempt.
        await anyio.to_thread.run_sync(
            functools.partial(_ready_scratch, scratch, where.parent, empty=empty)
        )
        workspace = await self._preparation.workspace(item, branch, where)
        objects = self._preparation.objects(item)
        await self._setup(workspace, scratch, objects)
        # claude_agent_sdk (and mcp with it) is imported on the first attempt, in a thread:
        # imported on the event loop it held the loop for seconds on a busy machine, the
        # work item's in-progress acks stopped, and the item went to another worker.
        if "claude_agent_sdk" not in sys.modules:  # a thread hop per attempt otherwise
            await anyio.to_thread.run_sync(importlib.import_module, "claude_agent_sdk")
        return PreparedWorkspace(workspace=workspace, objects=objects)

    def transcript(self, scratch: Path, workspace: Path, session_id: str) -> Path | None:
        return _transcript_path(scratch, workspace, session_id)

    async def clean(self, scratch: Path) -> None:
        await anyio.to_thread.run_sync(_empty_scratch, scratch)

    async def _setup(self, workspace: Path, scratch: Path, objects: Path) -> None:
        """Copy in the configured untracked files and run the setup command.

        The setup command runs confined like an attempt (its workspace, the attempt's
        private home and temp dir, a minimal environment, no network unless
        ``sandbox.setup_network``): it runs the repository's own scripts.

        Raises:
            CopyFilesError: a configured pattern matches nothing.
            SetupCommandError: the setup command failed or ran out of time.
        """
        copied = await anyio.to_thread.run_sync(_copy_in, self._config, workspace)
        if copied:
            # Copied files (secrets, local config) must never travel in the task's commits.
            exclude = workspace / ".git" / "info" / "exclude"
            await anyio.Path(exclude.parent).mkdir(parents=True, exist_ok=True)
            lines = "".join(f"/{path}\n" for path in copied)
            async with await anyio.open_file(exclude, "a", encoding="utf-8") as handle:
                await handle.write(lines)
        if self._config.setup_command:
            confinement = self._confinement
            sandbox = attempt_sandbox(
                workspace,
                scratch,
                network="host" if confinement.setup_network else "none",
                readable=(objects,),  # the cache's objects the workspace borrows
            )
            for directory in (sandbox.home, sandbox.tmp):
                await anyio.Path(directory).mkdir(parents=True, exist_ok=True)
            done = await run_confined(
                confinement,
                sandbox,
                ["/bin/bash", "-c", self._config.setup_command],
                env=confined_environment(
                    os.environ, home=sandbox.home, tmp=sandbox.tmp, passed=confinement.pass_env
                ),
                timeout_s=self._config.setup_timeout_s,
            )
            tail = (done.output.strip().splitlines()[-1:] or [""])[0][:500]
            if done.returncode is None:
                raise SetupCommandError(
                    f"the setup command took longer than {self._config.setup_timeout_s:.0f}s",
                    status=None,
                    output=tail,
                )
            if done.returncode != 0:
                raise SetupCommandError(
                    f"the setup command exited with status {done.returncode}: {tail}",
                    status=done.returncode,
                    output=tail,
                )

    async def collect(
        self, item: WorkItem, attempt: int, prepared: PreparedWorkspace, branch: str
    ) -> tuple[ArtifactRef, ...]:
        """Commit the agent's work and store it as artifacts: the bundle and a diffstat."""
        workspace = prepared.workspace
        head = await commit_all(
            workspace,
            f"{item.task_id}: {item.spec.title}",
            objects=prepared.objects,
            on_pristine=None
            if self._config.keep_workspaces  # each attempt has its own directory then
            else lambda: self._preparation.pristine(workspace, item.base_commit),
        )
        if head is None:
            return ()
        bundle_path = workspace.parent / "result.bundle"
        changes = await result_bundle(workspace, item.base_commit, branch, bundle_path)
        prefix = (item.run_id, item.task_id, attempt)
        try:
            bundle = await self._artifacts.put_file(
                artifact_key(*prefix, "result.bundle"), bundle_path
            )
        finally:
            await anyio.Path(bundle_path).unlink(missing_ok=True)
        stat = await self._artifacts.put(
            artifact_key(*prefix, "diffstat.json"),
            "diffstat.json",
            msgspec.json.encode(
                {
                    "head": head,
                    "base": item.base_commit,
                    "files": [
                        {"path": c.path, "added": c.added, "deleted": c.deleted} for c in changes
                    ],
                }
            ),
        )
        return (bundle, stat)
