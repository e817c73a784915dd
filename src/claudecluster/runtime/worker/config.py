"""How a worker runs, the state of one attempt it holds, and the limits of both."""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

import anyio
import anyio.abc

from claudecluster.actors.worker import (
    DEFAULT_PERMISSION_MODES,
)
from claudecluster.events.work import WorkItem
from claudecluster.executors.confinement import (
    Confinement,
)
from claudecluster.runtime.credentials import new_user_seed
from claudecluster.runtime.patience import STORE_PATIENCE_S
from claudecluster.runtime.touched import TOUCHED_EVERY_S
from claudecluster.settings import Settings

__all__ = [
    "Origin",
    "Superseded",
    "WorkerConfig",
    "configured_worker",
    "new_worker_id",
    "this_process",
]


_CAPABILITIES: Final = ("claude_code", "shell")
_RUNS_KEPT: Final = 8
#: Forgeries in a row an append steps over before it gives the attempt up.
_FORGERIES_STEPPED_OVER: Final = 16
#: How long an attempt's append is tried again while the store fails over. An election of
#: a new stream leader takes seconds; a loaded machine was seen to need over ten.
_APPEND_PATIENCE_S: Final = STORE_PATIENCE_S
#: Heartbeats after a missed or late one during which the worker asks the log whether it
#: was declared lost (the driver may record it a little after the link is back), and the
#: interval, in heartbeats, of the same question asked anyway.
_LOST_RECHECK_BEATS: Final = 6
_LOST_CHECK_EVERY_BEATS: Final = 12


def new_worker_id() -> str:
    """A readable, unique worker id: host, pid and a random suffix."""
    host = "".join(c if c.isalnum() else "-" for c in socket.gethostname())[:24] or "host"
    return f"{host}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


@dataclass(frozen=True, slots=True)
class Origin:
    """What a worker draws from the process it runs in, injected so a simulation can
    give each of its workers a repeatable one (one seed, one history).

    Attributes:
        host: the host its WorkerJoined names.
        pid: the process id its WorkerJoined names.
        key_seed: the nkey seed of the attempt key it signs its attempts' events with
            (in memory only, new at every start).
        nonce: the tail of each event id, after the worker id and its counter: a
            restarted worker's counter starts again at 1, and its ids must not repeat.
        session_id: a new attempt's agent session id (a UUID, as Claude Code wants).
    """

    host: str
    pid: int
    key_seed: bytes
    nonce: Callable[[], str]
    session_id: Callable[[], str]


def this_process() -> Origin:
    """This machine, this process, a fresh key and random nonces."""
    return Origin(
        host=socket.gethostname(),
        pid=os.getpid(),
        key_seed=new_user_seed(),
        nonce=lambda: uuid.uuid4().hex[:8],
        session_id=lambda: str(uuid.uuid4()),
    )


@dataclass(frozen=True, slots=True)
class WorkerConfig:
    """How one worker process runs.

    Attributes:
        worker_id: unique id (a subject token).
        pool: the pool whose queue it serves.
        slots: attempts it runs at once.
        workspace_root: where private workspaces are made.
        keep_workspaces: leave workspaces on disk after the attempt (debugging).
        heartbeat_s: seconds between heartbeats.
        ack_wait_s: the pool consumer's ack wait; in-progress acks go out at a third of it.
        api_environment: ANTHROPIC_* settings handed to Claude Code.
        drain_deadline_s: on graceful stop, how long running attempts may go on.
        nice: CPU niceness for agents, so a busy machine stays responsive.
        health_port: serve /health and /metrics on this port (0 picks a free one; None
            serves nothing).
        health_host: the address for /health and /metrics.
        copy_from: a local directory with untracked files (``.env``) for workspaces.
        copy_files: paths or globs under ``copy_from`` copied into each workspace.
        setup_command: run in each workspace before the agent (install dependencies).
        setup_timeout_s: how long the setup command may take.
        join_reason: why it was started, recorded in WorkerJoined (an autoscaler says).
        confinement: how attempts and the setup command are confined (None: this
            machine's sandbox, which must work; ``Confinement.unconfined()`` is the
            operator's ``--no-sandbox``).
        permission_modes: Claude Code permission modes a work item may ask for.
        allow_plan_mcp_servers: run the MCP servers a work item names (``mcp_config``).
        progress_interval_s: the least time between two emissions of an attempt's
            coalesced progress events (see :mod:`claudecluster.actors.progress`).
        repo_cache: where the host's repository cache lives (default: ``repo-cache``
            beside ``workspace_root``).
        repo_remotes: git remote URLs by repository key, fetched from before bundles.
        touched_every_s: seconds between looks at a running attempt's changed files,
            reported for the driver's collision prediction (0 reports none).
        fetch_wait_s: how long a free slot's fetch waits for an item before it asks
            again (and looks whether it should stop draining). On NATS a short wait
            keeps a stop prompt; on a virtual clock every wait that ends empty is a
            wake-up of every idle worker, so a simulation waits longer.
    """

    worker_id: str
    workspace_root: Path
    pool: str = "default"
    slots: int = 1
    keep_workspaces: bool = False
    heartbeat_s: float = 5.0
    ack_wait_s: float = 30.0
    api_environment: dict[str, str] = field(default_factory=dict)
    drain_deadline_s: float = 60.0
    nice: int = 0
    health_port: int | None = None
    health_host: str = "127.0.0.1"
    copy_from: Path | None = None
    copy_files: tuple[str, ...] = ()
    setup_command: str | None = None
    setup_timeout_s: float = 600.0
    join_reason: str = ""
    confinement: Confinement | None = None
    permission_modes: tuple[str, ...] = DEFAULT_PERMISSION_MODES
    allow_plan_mcp_servers: bool = False
    progress_interval_s: float = 1.0
    repo_cache: Path | None = None
    repo_remotes: dict[str, str] = field(default_factory=dict)
    touched_every_s: float = TOUCHED_EVERY_S
    fetch_wait_s: float = 1.0


def configured_worker(
    settings: Settings,
    *,
    worker_id: str,
    workspace_root: Path,
    api_environment: dict[str, str],
    confinement: Confinement,
) -> WorkerConfig:
    """A worker as ``settings.worker`` configures it (the files copied in, the setup
    command, permission modes, the repository cache); the rest at its defaults, for the
    caller to replace.
    """
    worker = settings.worker
    return WorkerConfig(
        worker_id=worker_id,
        workspace_root=workspace_root,
        api_environment=api_environment,
        confinement=confinement,
        copy_from=worker.copy_from,
        copy_files=tuple(worker.copy_files),
        setup_command=worker.setup_command,
        setup_timeout_s=worker.setup_timeout_s,
        permission_modes=tuple(worker.permission_modes),
        allow_plan_mcp_servers=worker.allow_plan_mcp_servers,
        repo_cache=worker.repo_cache,
        repo_remotes=dict(worker.repo_remotes),
    )


class Superseded(Exception):  # noqa: N818 - a condition, not a failure of ours
    """Another writer moved the task on; this attempt must stop and record nothing."""


@dataclass
class _Attempt:
    """The live bookkeeping of one running attempt."""

    item: WorkItem
    attempt: int
    last_seq: int
    session_id: str
    resume: bool = False
    #: the session of the attempt this one continues, if its transcript was mirrored
    resume_from: str = ""
    scope: anyio.CancelScope = field(default_factory=anyio.CancelScope)
    cancel_reason: str = ""
    #: the id of the run's cancel command, when that is what stopped the attempt
    run_cancel: str = ""
    #: one append at a time: each is conditional on the sequence the previous one left
    appending: anyio.Lock = field(default_factory=anyio.Lock)
