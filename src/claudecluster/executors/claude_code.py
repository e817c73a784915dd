"""Running the real Claude Code CLI headless, with limits, for one task attempt.

The process gets the workspace as its working directory, a private HOME and
CLAUDE_CONFIG_DIR, an environment reduced to an allowlist, a session id chosen up front,
and a small CLI retry budget (our own retry policy decides what happens next). It runs in
its own process group, so a breached limit or a cancellation ends the whole tree: SIGTERM,
then SIGKILL after a grace period, on every path.

What the agent reported is decided from its stream (:mod:`.claude_stream`); what we did to
it (timeout, memory cap, cancellation) overrides that.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import anyio
import anyio.abc
from anyio.streams.text import TextReceiveStream

from claudecluster.domain.signin import API_KEY_HELPER_VARIABLE, api_url_of
from claudecluster.executors.base import (
    DEFAULT_TOOLS,
    ENV_ALLOWLIST,
    AttemptRun,
    ProgressSink,
    base_environment,
)
from claudecluster.executors.claude_stream import Outcome, classify, progress_from
from claudecluster.executors.confined import cgroup_limits, open_confined_process
from claudecluster.executors.confinement import (
    Confinement,
    attempt_sandbox,
    default_confinement,
)
from claudecluster.executors.lines import LineSplitter
from claudecluster.executors.process import end_tree, launcher, tree_rss
from claudecluster.observability.logging import get_logger

__all__ = [
    "DEFAULT_TOOLS",
    "ENV_ALLOWLIST",
    "ClaudeCodeExecutor",
    "AttemptRun",
    "bundled_claude",
    "child_environment",
    "claude_command",
]


_STDERR_TAIL: Final = 4096
_MEMORY_POLL_S: Final = 0.25
_log = get_logger(__name__)


def bundled_claude() -> Path:
    """The Claude Code CLI shipped inside claude-agent-sdk.

    Raises:
        FileNotFoundError: the package carries no CLI for this platform.
    """
    import claude_agent_sdk

    path = Path(claude_agent_sdk.__file__).parent / "_bundled" / "claude"
    if not path.is_file():
        raise FileNotFoundError(f"claude-agent-sdk has no bundled CLI at {path}")
    return path


def claude_command(job: AttemptRun, binary: Path) -> list[str]:
    """The command line for one attempt."""
    command = [
        str(binary),
        "-p",
        job.prompt,
        "--output-format",
        "stream-json",
        "--verbose",
        "--permission-mode",
        job.permission_mode,
        "--allowedTools",
        ",".join(job.allowed_tools),
    ]
    command += ["--resume", job.session_id] if job.resume else ["--session-id", job.session_id]
    if job.limits.max_turns is not None:
        command += ["--max-turns", str(job.limits.max_turns)]
    if job.limits.max_cost_usd is not None:
        command += ["--max-budget-usd", f"{job.limits.max_cost_usd:g}"]
    if job.mcp_config is not None:
        # Only the plan's servers: none from the repository's .mcp.json or user settings.
        command += ["--mcp-config", str(job.mcp_config), "--strict-mcp-config"]
    if job.model:
        command += ["--model", job.model]
    if job.append_system_prompt:
        command += ["--append-system-prompt", job.append_system_prompt]
    helper = job.api_environment.get(API_KEY_HELPER_VARIABLE)
    if helper:
        command += ["--settings", json.dumps({"apiKeyHelper": helper})]
    return command


def child_environment(
    job: AttemptRun, parent: Mapping[str, str], *, cli_retries: int
) -> dict[str, str]:
    """The agent's environment: the allowlist, private dirs, the run's API settings."""
    env = base_environment(job, parent)
    env.update(
        HOME=str(job.scratch / "home"),
        TMPDIR=str(job.scratch / "tmp"),
        CLAUDE_CONFIG_DIR=str(job.scratch / "claude-config"),
        CLAUDE_CODE_MAX_RETRIES=str(cli_retries),
        CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC="1",
    )
    env.pop("CLAUDECODE", None)  # trips Claude Code's nested-session guard
    env.pop(API_KEY_HELPER_VARIABLE, None)  # a setting (see claude_command), not a variable
    return env


class ClaudeCodeExecutor:
    """Runs attempts with the Claude Code CLI.

    Args:
        binary: the ``claude`` executable (default: the one bundled with claude-agent-sdk).
        cli_retries: CLAUDE_CODE_MAX_RETRIES for the CLI's own API retries.
        kill_grace_s: seconds between SIGTERM and SIGKILL when a run must end.
        confinement: how to confine the CLI (default: this machine's sandbox, required).
            Confined, it reaches the model API (through a forwarder) and nothing else.
    """

    def __init__(
        self,
        *,
        binary: Path | None = None,
        cli_retries: int = 2,
        kill_grace_s: float = 5.0,
        confinement: Confinement | None = None,
    ) -> None:
        self._binary = binary
        self._cli_retries = cli_retries
        self._kill_grace_s = kill_grace_s
        self._confinement = confinement

    async def run(self, job: AttemptRun, on_progress: ProgressSink) -> Outcome:
        """Run one attempt to its end and say how it ended.

        Progress events are handed to ``on_progress`` as the agent produces them. A breached
        limit ends the process tree and is reported as the outcome; cancellation ends the
        tree and propagates.

        Raises:
            FileNotFoundError: no Claude Code executable.
        """
        binary = self._binary or bundled_claude()
        confinement = self._confinement or default_confinement()
        config_dir = job.scratch / "claude-config"
        readable = [binary.parent, *job.readable]
        credentials = job.api_environment.get("GOOGLE_APPLICATION_CREDENTIALS")
        if credentials:  # Vertex's credentials file, which Claude Code reads itself
            readable.append(Path(credentials))
        if job.mcp_config is not None:
            readable.append(job.mcp_config)
        sandbox = attempt_sandbox(
            job.workspace,
            job.scratch,
            network="api",
            writable=(config_dir,),
            readable=tuple(readable),
        )
        for directory in (sandbox.home, sandbox.tmp, config_dir):
            await anyio.Path(directory).mkdir(parents=True, exist_ok=True)
        env = child_environment(job, os.environ, cli_retries=self._cli_retries)
        async with open_confined_process(
            confinement,
            sandbox,
            claude_command(job, binary),
            prefix=launcher(job.nice, sandboxed=confinement.confined),
            env=env,
            limits=cgroup_limits(job.limits, confinement),
            api_base_url=api_url_of(env),
            allow=job.destinations(),
            cwd=job.workspace,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        ) as confined:
            process = confined.process
            state = _RunState()
            try:
                async with anyio.create_task_group() as group:
                    group.start_soon(self._collect_stderr, process, state)
                    if job.limits.memory_mb is not None:
                        group.start_soon(self._watch_memory, process, job.limits.memory_mb, state)
                    with anyio.move_on_after(job.limits.wall_time_s or float("inf")) as deadline:
                        await self._read_stream(process, job, on_progress, state)
                        await process.wait()
                    if deadline.cancelled_caught:
                        state.breach = (
                            "timeout",
                            "the attempt exceeded its wall-time limit of "
                            f"{job.limits.wall_time_s}s",
                        )
                    group.cancel_scope.cancel()
            finally:
                await end_tree(process, self._kill_grace_s)
            if state.breach is None and process.returncode != 0 and confined.oom_killed():
                state.breach = (
                    "limit",
                    f"the attempt went over its memory limit of {job.limits.memory_mb} MiB "
                    "and the kernel ended it",
                )
        return state.outcome(process.returncode)

    @staticmethod
    async def _read_stream(
        process: anyio.abc.Process, job: AttemptRun, on_progress: ProgressSink, state: _RunState
    ) -> None:
        assert process.stdout is not None
        usage_seen: set[str] = set()
        lines = LineSplitter()

        async def handle(line: str) -> None:
            if not line.strip():
                return
            try:
                event = json.loads(line)
            except ValueError:
                state.bad_lines += 1
                return
            if not isinstance(event, dict):
                state.bad_lines += 1
                return
            if event.get("type") == "result":
                state.result = event
            for update in progress_from(
                event,
                run_id=job.run_id,
                task_id=job.task_id,
                attempt=job.attempt,
                usage_seen=usage_seen,
            ):
                await on_progress(update)

        async for chunk in TextReceiveStream(process.stdout):
            for line in lines.feed(chunk):
                await handle(line)
        last = lines.end()
        if last is not None:
            await handle(last)
        state.bad_lines += lines.overlong_lines

    @staticmethod
    async def _collect_stderr(process: anyio.abc.Process, state: _RunState) -> None:
        assert process.stderr is not None
        async for chunk in TextReceiveStream(process.stderr, errors="replace"):
            state.stderr = (state.stderr + chunk)[-_STDERR_TAIL:]

    async def _watch_memory(
        self, process: anyio.abc.Process, memory_mb: int, state: _RunState
    ) -> None:
        limit = memory_mb * 1024 * 1024
        while process.returncode is None:
            used = tree_rss(process.pid)
            if used > limit:
                state.breach = (
                    "limit",
                    f"the process tree used {used // 2**20} MiB, over its memory limit "
                    f"of {memory_mb} MiB",
                )
                await end_tree(process, self._kill_grace_s, close=False)
                return
            await anyio.sleep(_MEMORY_POLL_S)


@dataclass
class _RunState:
    result: dict[str, object] | None = None
    bad_lines: int = 0
    stderr: str = ""
    breach: tuple[str, str] | None = None

    def outcome(self, exit_code: int | None) -> Outcome:
        if self.breach is not None:
            failure_class, reason = self.breach
            reported = classify(self.result, exit_code=exit_code)
            return Outcome(
                succeeded=False,
                reason=reason,
                failure_class="timeout" if failure_class == "timeout" else "limit",
                retryable=failure_class == "timeout",
                cost_usd=reported.cost_usd,
                usage=reported.usage,
                turns=reported.turns,
                session_id=reported.session_id,
            )
        outcome = classify(self.result, exit_code=exit_code, stderr_tail=self.stderr)
        if self.result is None and self.bad_lines:
            return Outcome(
                succeeded=False,
                reason=f"{outcome.reason} ({self.bad_lines} unreadable output lines)",
                failure_class=outcome.failure_class,
                retryable=outcome.retryable,
            )
        return outcome
