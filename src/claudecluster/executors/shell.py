"""The shell executor: run the task's prompt as a command line in the workspace.

For steps that need no model (formatting, code generation from a template, running a
test suite) and for tests. Each output line becomes a progress event; exit status 0 is
success; limits and cancellation end the process tree as for Claude Code.
"""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path
from typing import Final

import anyio
from anyio.streams.text import TextReceiveStream

from claudecluster.domain.outcome import Outcome
from claudecluster.events.model import TaskProgress
from claudecluster.executors.base import AttemptRun, ProgressSink
from claudecluster.executors.claude_stream import SUMMARY_CHARS
from claudecluster.executors.confined import (
    ConfinedProcess,
    cgroup_limits,
    open_confined_process,
)
from claudecluster.executors.confinement import (
    Confinement,
    attempt_sandbox,
    confined_environment,
    default_confinement,
)
from claudecluster.executors.lines import LineSplitter
from claudecluster.executors.process import end_tree, launcher

__all__ = ["ShellExecutor"]

_TAIL: Final = 2000
#: Output lines become progress text cut to SUMMARY_CHARS; a longer line is not kept whole.
_MAX_LINE_CHARS: Final = 2**20


def _make_dirs(*directories: Path) -> None:
    for directory in directories:
        directory.mkdir(parents=True, exist_ok=True)


class ShellExecutor:
    """Runs ``bash -c <prompt>`` with the workspace as its working directory.

    The command runs confined (:mod:`.confinement`): its workspace, a private home and
    temp directory, no network but the destinations its plan allows, a minimal
    environment (no API key: a shell task needs none), in its own cgroup.

    Args:
        shell: the shell to use.
        kill_grace_s: seconds between SIGTERM and SIGKILL when a run must end.
        confinement: how to confine it (default: this machine's sandbox, required).
    """

    def __init__(
        self,
        *,
        shell: str = "/bin/bash",
        kill_grace_s: float = 5.0,
        confinement: Confinement | None = None,
    ) -> None:
        self._shell = shell
        self._kill_grace_s = kill_grace_s
        self._confinement = confinement

    async def run(self, job: AttemptRun, on_progress: ProgressSink) -> Outcome:
        """Run the command; see :class:`~claudecluster.executors.base.Executor`."""
        confinement = self._confinement or default_confinement()
        sandbox = attempt_sandbox(job.workspace, job.scratch, readable=job.readable)
        await anyio.to_thread.run_sync(_make_dirs, sandbox.home, sandbox.tmp)  # one hop
        env = confined_environment(
            os.environ, home=sandbox.home, tmp=sandbox.tmp, passed=confinement.pass_env
        )
        started = time.monotonic()
        async with open_confined_process(
            confinement,
            sandbox,
            [self._shell, "-c", job.prompt],
            prefix=launcher(job.nice, sandboxed=confinement.confined),
            env=env,
            limits=cgroup_limits(job.limits, confinement),
            allow=job.destinations(),
            cwd=Path(job.workspace),
            stdin=subprocess.DEVNULL,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        ) as confined:
            return await self._follow(job, confined, on_progress, started)

    async def _follow(
        self, job: AttemptRun, confined: ConfinedProcess, on_progress: ProgressSink, started: float
    ) -> Outcome:
        process = confined.process
        tail = ""
        try:
            with anyio.move_on_after(job.limits.wall_time_s or float("inf")) as deadline:
                assert process.stdout is not None
                splitter = LineSplitter(_MAX_LINE_CHARS)
                async for chunk in TextReceiveStream(process.stdout, errors="replace"):
                    tail = (tail + chunk[-_TAIL:])[-_TAIL:]
                    for line in splitter.feed(chunk):
                        if line.strip():
                            await on_progress(
                                TaskProgress(
                                    run_id=job.run_id,
                                    task_id=job.task_id,
                                    attempt=job.attempt,
                                    kind="text",
                                    text=line[:SUMMARY_CHARS],
                                )
                            )
                await process.wait()
        finally:
            await end_tree(process, self._kill_grace_s)
        duration_ms = int((time.monotonic() - started) * 1000)
        if deadline.cancelled_caught:
            return Outcome(
                succeeded=False,
                reason=f"the command exceeded its wall-time limit of {job.limits.wall_time_s}s",
                failure_class="timeout",
                retryable=True,
                duration_ms=duration_ms,
            )
        if process.returncode != 0 and confined.oom_killed():
            return Outcome(
                succeeded=False,
                reason=f"the command went over its memory limit of {job.limits.memory_mb} MiB "
                "and the kernel ended it",
                failure_class="limit",
                duration_ms=duration_ms,
            )
        last_lines = [line for line in tail.strip().splitlines() if line.strip()]
        if process.returncode == 0:
            summary = last_lines[-1][:SUMMARY_CHARS] if last_lines else "done"
            return Outcome(succeeded=True, summary=summary, duration_ms=duration_ms)
        detail = " | ".join(last_lines[-3:])[:SUMMARY_CHARS]
        return Outcome(
            succeeded=False,
            reason=f"the command exited with status {process.returncode}: {detail}",
            failure_class="agent_error",
            duration_ms=duration_ms,
        )
