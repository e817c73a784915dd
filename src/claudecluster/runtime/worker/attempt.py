"""One attempt, from its workspace to its recorded result: the part of the worker that
prepares the workspace, runs the agent (or the shell) with its transcript mirrored, and
collects and records what came of it. The serve loop (:mod:`.serve`) claims the attempt
first and owns everything around it.
"""

from __future__ import annotations

import functools
import importlib
import json
import os
import sys
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

import anyio
import anyio.abc
import msgspec

from claudecluster.actors.progress import ProgressBatcher
from claudecluster.actors.worker import (
    failed_event,
    finished_event,
)
from claudecluster.domain.branches import task_branch
from claudecluster.domain.outcome import Outcome
from claudecluster.errors import (
    ClusterError,
    EventStoreError,
    SetupCommandError,
)
from claudecluster.events.model import (
    ArtifactRef,
    Event,
    TaskFilesTouched,
    TaskProgress,
    TaskRateLimited,
    TaskStarted,
)
from claudecluster.executors.base import DEFAULT_TOOLS, AttemptRun, Executor
from claudecluster.executors.confined import run_confined
from claudecluster.executors.confinement import (
    Confinement,
    attempt_sandbox,
    confined_environment,
)
from claudecluster.observability.logging import get_logger
from claudecluster.projections.views import task_key
from claudecluster.runtime.touched import watch_touched
from claudecluster.runtime.worker_health import WorkerMetrics
from claudecluster.runtime.workspace_preparation import Preparation
from claudecluster.transport.artifacts import ArtifactStore, artifact_key
from claudecluster.workspace.git import commit_all, result_bundle
from claudecluster.workspace.naming import attempt_dir_name

if TYPE_CHECKING:
    # claude_agent_sdk loads the mcp package (about 30 MB and 0.3-0.8 s): an idle worker
    # should not carry it, nor every CLI command that imports this module. It is imported
    # when the first attempt runs.
    from claude_agent_sdk import SessionStore
from claudecluster.runtime.worker.config import (
    Superseded,
    WorkerConfig,
    _Attempt,
)
from claudecluster.runtime.worker.failures import _classify_group
from claudecluster.runtime.worker.transcripts import (
    _RESUME_NOTE,
    _session_key,
    _transcript_path,
    _TranscriptMirror,
)
from claudecluster.runtime.worker.workspaces import _copy_in, _empty_scratch, _ready_scratch

__all__ = ["AttemptRunner"]

_log = get_logger(__name__)


class AttemptRunner:
    """The attempt half of :class:`~claudecluster.runtime.worker.serve.Worker` (a mixin).

    It declares what it uses of the worker; the worker sets those in its constructor.
    """

    config: WorkerConfig
    metrics: WorkerMetrics
    preparation: Preparation
    _artifacts: ArtifactStore
    _clock: Callable[[], datetime]
    _confinement: Confinement
    _executor: Executor
    _shell: Executor
    _running: dict[str, _Attempt]
    _sessions: SessionStore

    if TYPE_CHECKING:
        # Defined by the worker (the serve loop's side); declared here for the checker.
        async def _record_for(self, live: _Attempt, event: Event) -> None: ...

        def _slot_dir(self, n: int) -> Path: ...

    async def _run_attempt(self, live: _Attempt, slot: int = 0) -> None:
        item = live.item
        key = task_key(item.run_id, item.task_id)
        # A slot's workspace and scratch directory (the sandbox's home and temp dir) are
        # reused: the workspace reset to each attempt's base, the scratch emptied. Kept
        # workspaces are for looking at afterwards, so each attempt then gets its own.
        if self.config.keep_workspaces:
            scratch = self.config.workspace_root / attempt_dir_name(
                item.run_id, item.task_id, live.attempt
            )
            where = scratch / "ws"
        else:
            scratch, where = self._slot_dir(slot) / "scratch", self._slot_dir(slot) / "ws"
        self._running[key] = live
        self.metrics.attempts_started.inc()
        self.metrics.running.inc()
        try:
            await self._attempt_in(live, scratch, where)
        except* (ClusterError, OSError) as failed:
            # The attempt could not be carried out. Whose fault it was (the task's setup,
            # the configuration, or the machine) decides whether the driver retries it.
            # except*: a failure of the transcript mirror or of a progress append arrives
            # wrapped in the attempt's task group; let out, it was an attempt claimed and
            # never ended. (Superseded is neither, and passes through as it was raised.)
            failure = _classify_group(failed)
            _log.warning("attempt not carried out", item=item.message_id,
                         failure_class=failure.failure_class, reason=failure.reason)  # fmt: skip
            await self._record_for(
                live,
                failed_event(
                    run_id=item.run_id, task_id=item.task_id, attempt=live.attempt,
                    worker_id=self.config.worker_id, failure=failure,
                ),
            )  # fmt: skip
        finally:
            self._running.pop(key, None)
            self.metrics.running.dec()
            if not self.config.keep_workspaces:
                with anyio.CancelScope(shield=True):  # cleaned on every path, cancel included
                    await anyio.to_thread.run_sync(_empty_scratch, scratch)

    async def _attempt_in(self, live: _Attempt, scratch: Path, where: Path) -> None:
        item = live.item
        # Who owns the directory (the slot's, or a kept attempt's): a worker killed outright
        # cannot remove it, the next worker to start on this machine does (_sweep_orphans).
        # A slot's scratch is emptied here too: the end of the attempt before did it, but
        # a failure to empty it then must not hand its files to this attempt.
        await anyio.to_thread.run_sync(
            functools.partial(
                _ready_scratch, scratch, where.parent, empty=not self.config.keep_workspaces
            )
        )
        entries = None
        if live.resume_from:
            entries = await self._sessions.load(_session_key(item, live.resume_from))
            if entries:
                # The interrupted attempt's transcript was mirrored: continue that conversation.
                live.session_id, live.resume = live.resume_from, True
        branch = task_branch(item.run_id, item.task_id)
        workspace = await self.preparation.workspace(item, branch, where)
        objects = self.preparation.objects(item)
        await self._prepare(workspace, scratch, objects)
        resumed = live.resume and item.spec.executor == "claude_code"
        # claude_agent_sdk (and mcp with it) is imported on the first attempt, in a thread:
        # imported on the event loop it held the loop for seconds on a busy machine, the
        # work item's in-progress acks stopped, and the item went to another worker.
        if "claude_agent_sdk" not in sys.modules:  # a thread hop per attempt otherwise
            await anyio.to_thread.run_sync(importlib.import_module, "claude_agent_sdk")
        transcript = _transcript_path(scratch, workspace, live.session_id)
        restored = 0
        if resumed:
            await anyio.Path(transcript.parent).mkdir(parents=True, exist_ok=True)
            lines = "".join(json.dumps(entry) + "\n" for entry in entries or []).encode()
            await anyio.Path(transcript).write_bytes(lines)
            restored = len(lines)
        await self._record_for(
            live,
            TaskStarted(
                run_id=item.run_id,
                task_id=item.task_id,
                attempt=live.attempt,
                worker_id=self.config.worker_id,
                session_id=live.session_id,
                resumed=resumed,
            ),
        )

        # Live output is coalesced (actors/progress.py): a bounded number of events per
        # second whatever the agent prints; the transcript keeps every word.
        batcher = ProgressBatcher(interval=timedelta(seconds=self.config.progress_interval_s))
        recording = anyio.Lock()  # one conditional append at a time: they chain sequences

        async def record(events: list[TaskProgress] | list[TaskRateLimited]) -> None:
            async with recording:
                for event in events:
                    await self._record_for(live, event)

        async def progress(update: TaskProgress | TaskRateLimited) -> None:
            if isinstance(update, TaskRateLimited):
                # At once, not batched: the driver slows every start fleet-wide on it.
                await record([msgspec.structs.replace(update, worker_id=self.config.worker_id)])
                return
            await record(batcher.offer(update, self._clock()))

        async def flush_when_due() -> None:
            while True:
                await anyio.sleep(self.config.progress_interval_s)
                # Not cut off mid-append when the agent ends: the server may have stored
                # the event while this side never learnt its sequence, and the attempt's
                # next conditional append would then find it "moved on" (superseded).
                with anyio.CancelScope(shield=True):
                    await record(batcher.due(self._clock()))

        mcp_config = None
        if item.mcp_config:
            mcp_config = scratch / "mcp.json"
            await anyio.Path(mcp_config).write_text(item.mcp_config, encoding="utf-8")
        executor = self._shell if item.spec.executor == "shell" else self._executor
        prompt = _RESUME_NOTE + item.spec.prompt if resumed else item.spec.prompt
        # A shell task has no transcript (nothing it can reach writes one): not looked for.
        transcribed = item.spec.executor != "shell"
        mirror = _TranscriptMirror(
            self._sessions, _session_key(item, live.session_id), transcript, restored
        )
        superseded: BaseException | None = None
        try:
            async with anyio.create_task_group() as mirroring:
                if transcribed:
                    mirroring.start_soon(mirror.follow)
                mirroring.start_soon(flush_when_due)
                if item.base_commit and self.config.touched_every_s > 0:
                    mirroring.start_soon(self._report_touched, live, workspace)
                outcome = await executor.run(
                    AttemptRun(
                        run_id=item.run_id,
                        task_id=item.task_id,
                        attempt=live.attempt,
                        prompt=prompt,
                        workspace=workspace,
                        scratch=scratch,
                        session_id=live.session_id,
                        limits=item.spec.limits,
                        model=item.model or None,
                        permission_mode=item.permission_mode,
                        allowed_tools=item.allowed_tools or DEFAULT_TOOLS,
                        append_system_prompt=item.append_system_prompt or None,
                        api_environment=self.config.api_environment,
                        resume=resumed,
                        nice=self.config.nice,
                        mcp_config=mcp_config,
                        readable=(objects,),
                        network_allow=item.spec.network.allow,
                    ),
                    progress,
                )
                mirroring.cancel_scope.cancel()
        except* Superseded as group:
            # Recording progress found the task moved on: that, not the task group
            # around it, is what the caller handles.
            superseded = group.exceptions[0]
            while isinstance(superseded, BaseExceptionGroup):
                superseded = superseded.exceptions[0]
        if superseded is not None:
            raise superseded
        await record(batcher.flush())
        if transcribed:
            await mirror.sync()  # the transcript's last lines, written as the agent exited
        self.metrics.attempts_finished.labels(
            outcome="succeeded" if outcome.succeeded else (outcome.failure_class or "failed")
        ).inc()
        artifacts: tuple[ArtifactRef, ...] = ()
        if outcome.succeeded:
            outcome, artifacts = await self._collect(live, workspace, branch, outcome, objects)
        try:
            await self._record_for(
                live,
                finished_event(
                    run_id=item.run_id,
                    task_id=item.task_id,
                    attempt=live.attempt,
                    worker_id=self.config.worker_id,
                    outcome=outcome,
                    artifacts=artifacts,
                ),
            )
        except Superseded:
            # No event names what this attempt stored, so nothing would ever remove it
            # (a run that ended meanwhile has cleaned its bundles already).
            with anyio.CancelScope(shield=True):
                await self._discard(artifacts)
            raise

    async def _discard(self, artifacts: tuple[ArtifactRef, ...]) -> None:
        """Remove artifacts no recorded event names; one that cannot be is logged."""
        for ref in artifacts:
            try:
                await self._artifacts.delete(ref.key)
            except EventStoreError as error:
                _log.warning("an unrecorded attempt's artifact was left in the store",
                             key=ref.key, error=str(error))  # fmt: skip

    async def _report_touched(self, live: _Attempt, workspace: Path) -> None:
        """Report the files the attempt touched as they change (collision prediction)."""
        item = live.item

        async def report(files: tuple[str, ...]) -> None:
            event = TaskFilesTouched(
                run_id=item.run_id, task_id=item.task_id, attempt=live.attempt, files=files
            )
            # Shielded: an append cut short by the attempt's end could land unseen, and
            # the attempt's next conditional append would then find the task moved on.
            with anyio.CancelScope(shield=True):
                try:
                    await self._record_for(live, event)
                except EventStoreError as error:
                    # A prediction is advice: the attempt goes on without this report
                    # (Superseded still ends it: the task moved on).
                    _log.warning("touched files not recorded", item=item.message_id,
                                 error=str(error))  # fmt: skip

        await watch_touched(
            workspace, item.base_commit, report, every_s=self.config.touched_every_s
        )

    async def _prepare(self, workspace: Path, scratch: Path, objects: Path) -> None:
        """Copy in the configured untracked files and run the setup command.

        The setup command runs confined like an attempt (its workspace, the attempt's
        private home and temp dir, a minimal environment, no network unless
        ``sandbox.setup_network``): it runs the repository's own scripts.

        Raises:
            CopyFilesError: a configured pattern matches nothing.
            SetupCommandError: the setup command failed or ran out of time.
        """
        copied = await anyio.to_thread.run_sync(_copy_in, self.config, workspace)
        if copied:
            # Copied files (secrets, local config) must never travel in the task's commits.
            exclude = workspace / ".git" / "info" / "exclude"
            await anyio.Path(exclude.parent).mkdir(parents=True, exist_ok=True)
            lines = "".join(f"/{path}\n" for path in copied)
            async with await anyio.open_file(exclude, "a", encoding="utf-8") as handle:
                await handle.write(lines)
        if self.config.setup_command:
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
                ["/bin/bash", "-c", self.config.setup_command],
                env=confined_environment(
                    os.environ, home=sandbox.home, tmp=sandbox.tmp, passed=confinement.pass_env
                ),
                timeout_s=self.config.setup_timeout_s,
            )
            tail = (done.output.strip().splitlines()[-1:] or [""])[0][:500]
            if done.returncode is None:
                raise SetupCommandError(
                    f"the setup command took longer than {self.config.setup_timeout_s:.0f}s",
                    status=None,
                    output=tail,
                )
            if done.returncode != 0:
                raise SetupCommandError(
                    f"the setup command exited with status {done.returncode}: {tail}",
                    status=done.returncode,
                    output=tail,
                )

    async def _collect(
        self, live: _Attempt, workspace: Path, branch: str, outcome: Outcome, objects: Path
    ) -> tuple[Outcome, tuple[ArtifactRef, ...]]:
        """Commit the agent's work and store it as artifacts: the bundle and a diffstat."""
        item = live.item
        head = await commit_all(
            workspace,
            f"{item.task_id}: {item.spec.title}",
            objects=objects,
            on_pristine=None
            if self.config.keep_workspaces  # each attempt has its own directory then
            else lambda: self.preparation.pristine(workspace, item.base_commit),
        )
        if head is None:
            return outcome, ()
        bundle_path = workspace.parent / "result.bundle"
        changes = await result_bundle(workspace, item.base_commit, branch, bundle_path)
        prefix = (item.run_id, item.task_id, live.attempt)
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
        return outcome, (bundle, stat)
