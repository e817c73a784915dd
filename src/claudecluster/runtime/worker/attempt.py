"""One attempt, from its workspace to its recorded result: the part of the worker that
prepares the workspace, runs the agent (or the shell) with its transcript mirrored, and
collects and records what came of it. The serve loop (:mod:`.serve`) claims the attempt
first and owns everything around it.
"""

from __future__ import annotations

import json
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
from claudecluster.errors import (
    ClusterError,
    EventStoreError,
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
from claudecluster.observability.logging import get_logger
from claudecluster.projections.views import task_key
from claudecluster.runtime.touched import watch_touched
from claudecluster.runtime.worker_health import WorkerMetrics
from claudecluster.transport.artifacts import ArtifactStore
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
from claudecluster.runtime.worker.disk import AttemptDisk
from claudecluster.runtime.worker.failures import _classify_group
from claudecluster.runtime.worker.transcripts import (
    _RESUME_NOTE,
    _session_key,
    _TranscriptMirror,
)

__all__ = ["AttemptRunner"]

_log = get_logger(__name__)


class AttemptRunner:
    """The attempt half of :class:`~claudecluster.runtime.worker.serve.Worker` (a mixin).

    It declares what it uses of the worker; the worker sets those in its constructor.
    """

    config: WorkerConfig
    metrics: WorkerMetrics
    _artifacts: ArtifactStore
    _clock: Callable[[], datetime]
    _disk: AttemptDisk
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
                    await self._disk.clean(scratch)

    async def _attempt_in(self, live: _Attempt, scratch: Path, where: Path) -> None:
        item = live.item
        branch = task_branch(item.run_id, item.task_id)
        prepared = await self._disk.prepare(
            item, branch, scratch, where, empty=not self.config.keep_workspaces
        )
        workspace = prepared.workspace
        entries = None
        if live.resume_from:
            entries = await self._sessions.load(_session_key(item, live.resume_from))
            if entries:
                # The interrupted attempt's transcript was mirrored: continue that conversation.
                live.session_id, live.resume = live.resume_from, True
        # A shell task has no transcript (nothing it can reach writes one): not looked for.
        transcript = None
        if item.spec.executor != "shell":
            transcript = self._disk.transcript(scratch, workspace, live.session_id)
        resumed = live.resume and item.spec.executor == "claude_code" and transcript is not None
        restored = 0
        if resumed and transcript is not None:
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
        mirror = None
        if transcript is not None:
            mirror = _TranscriptMirror(
                self._sessions, _session_key(item, live.session_id), transcript, restored
            )
        superseded: BaseException | None = None
        try:
            async with anyio.create_task_group() as mirroring:
                if mirror is not None:
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
                        readable=(prepared.objects,),
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
        if mirror is not None:
            await mirror.sync()  # the transcript's last lines, written as the agent exited
        self.metrics.attempts_finished.labels(
            outcome="succeeded" if outcome.succeeded else (outcome.failure_class or "failed")
        ).inc()
        artifacts: tuple[ArtifactRef, ...] = ()
        if outcome.succeeded:
            artifacts = await self._disk.collect(item, live.attempt, prepared, branch)
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
