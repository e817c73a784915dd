"""The one small interface every executor meets, and what an attempt gives it."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final, Protocol

from claudecluster.domain.network import Destination, parse_destination
from claudecluster.domain.outcome import Outcome
from claudecluster.events.model import TaskLimits, TaskProgress, TaskRateLimited

__all__ = [
    "DEFAULT_TOOLS",
    "ENV_ALLOWLIST",
    "AttemptRun",
    "Executor",
    "ProgressSink",
    "base_environment",
]

#: Claude Code tools an attempt may use unless its task says otherwise.
DEFAULT_TOOLS: Final = ("Read", "Write", "Edit", "Bash", "Glob", "Grep")

ProgressSink = Callable[[TaskProgress | TaskRateLimited], Awaitable[None]]

#: Variables of the worker's own environment an agent may see; everything else (other
#: services' credentials, our NATS settings) stays out. API settings come from the run.
ENV_ALLOWLIST: Final = frozenset(
    {"PATH", "LANG", "LC_ALL", "LC_CTYPE", "TZ", "TERM", "TMPDIR", "SHELL", "USER", "LOGNAME"}
)


@dataclass(frozen=True, slots=True)
class AttemptRun:
    """Everything one attempt needs.

    Attributes:
        run_id: the run. task_id: the task. attempt: the attempt number.
        prompt: the task's prompt.
        workspace: the agent's working directory (a git worktree).
        scratch: a private directory for HOME and CLAUDE_CONFIG_DIR.
        session_id: a UUID chosen up front, so a transcript can be found and resumed.
        limits: wall time, turns and memory to enforce.
        api_environment: ANTHROPIC_* settings for this run (key, base URL).
        resume: continue the session ``session_id`` instead of starting it.
        nice: CPU niceness for the agent's process tree (0 leaves it unchanged).
        mcp_config: an MCP servers JSON file for Claude Code, if the task uses any.
        readable: more paths the confined attempt may read (the repository cache's
            objects its workspace borrows, so git works inside the sandbox).
        network_allow: ``host:port`` destinations its plan lets it reach besides the model
            API (the task's ``network.allow``, already checked by the worker).
    """

    run_id: str
    task_id: str
    attempt: int
    prompt: str
    workspace: Path
    scratch: Path
    session_id: str
    limits: TaskLimits = field(default_factory=TaskLimits)
    model: str | None = None
    permission_mode: str = "acceptEdits"
    allowed_tools: tuple[str, ...] = DEFAULT_TOOLS
    append_system_prompt: str | None = None
    api_environment: Mapping[str, str] = field(default_factory=dict)
    nice: int = 0
    mcp_config: Path | None = None
    readable: tuple[Path, ...] = ()
    resume: bool = False
    network_allow: tuple[str, ...] = ()

    def destinations(self) -> tuple[Destination, ...]:
        """The allowed destinations, parsed.

        Raises:
            ValueError: an entry is not a destination (the worker checks before it runs).
        """
        return tuple(parse_destination(entry) for entry in self.network_allow)


def base_environment(job: AttemptRun, parent: Mapping[str, str]) -> dict[str, str]:
    """The allowlisted part of the worker's environment plus the run's API settings."""
    env = {key: value for key, value in parent.items() if key in ENV_ALLOWLIST}
    env.update(job.api_environment)
    return env


class Executor(Protocol):
    """Carries out one attempt in its workspace and says how it ended."""

    async def run(self, job: AttemptRun, on_progress: ProgressSink) -> Outcome:
        """Run to the end, reporting progress as it happens.

        A breached limit ends the process tree and is reported in the outcome; a
        cancellation ends the tree and propagates.
        """
        ...
