"""The real driver and worker shells in a simulated cluster on a virtual clock.

Nothing of the driver or of a worker is replaced: the driver shell
(:class:`~claudecluster.runtime.driver.Driver`) and ``workers`` worker shells
(:class:`~claudecluster.runtime.worker.Worker`) run on the in-memory twins of every
seam (:func:`~claudecluster.transport.infrastructure.memory_infrastructure`), on trio's
``MockClock``: time jumps to the next deadline whenever every task waits. What is
simulated is only what sits past the shells: the agent and the disk
(:mod:`claudecluster.simulation.workers`), git (:mod:`claudecluster.simulation.repositories`),
and deaths: every heartbeat a worker may be killed (kill -9, through its own link,
:mod:`claudecluster.simulation.cut`), and a replacement joins.

One seed gives one history: every draw comes from the seed, and the order trio runs
ready tasks in is seeded too (:mod:`claudecluster.simulation.clock`).

An invariant checker follows the log and stops the simulation at the first broken
promise with the event that broke it (:class:`InvariantBrokenError`):

* no attempt is queued before every dependency of its task merged;
* per-run and global caps on queued-or-running attempts hold;
* a task merges only after its dependencies merged, and at most once;
* the run ends (a run with nothing but joins for ``stall_s`` has stalled), and then
  every task is merged, skipped, cancelled or failed.
"""

from __future__ import annotations

import copy
import functools
import random
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Final

import anyio
import anyio.abc
import nkeys
import trio
import trio.testing

from claudecluster.actors.driver import (
    Dispatch,
    DriverConfig,
    DriverState,
    Message,
    Resume,
    Tick,
    decide,
)
from claudecluster.domain.graph import TaskGraph, critical_path
from claudecluster.domain.lifecycle import FINISHED_TASK_STATES, RunState, TaskState
from claudecluster.events.envelope import StoredEvent
from claudecluster.events.model import (
    FailureClass,
    RunCompleted,
    RunFailed,
    RunPlanned,
    RunPolicy,
    SubmitRun,
    TaskCancelled,
    TaskFailed,
    TaskMerged,
    TaskQueued,
    TaskSpec,
    TaskStarted,
    TaskSucceeded,
    WorkerJoined,
)
from claudecluster.executors.confinement import Confinement
from claudecluster.projections.cluster import ClusterView, apply
from claudecluster.runtime.driver import Driver, DriverOptions
from claudecluster.runtime.worker import HostLoad, Origin, Worker, WorkerConfig
from claudecluster.simulation.clock import seed_trio_scheduler, virtual_now
from claudecluster.simulation.cut import Link, WorkerKilled, cuttable
from claudecluster.simulation.repositories import ScriptedRunRepositories
from claudecluster.simulation.workers import Duration, ScriptedDisk, ScriptedExecutor
from claudecluster.transport.base import EventLog
from claudecluster.transport.infrastructure import Infrastructure, memory_infrastructure

__all__ = ["InvariantBrokenError", "ShellCluster", "SimulatedRun", "SimulationReport"]

_RUN_ID: Final = "sim"


class InvariantBrokenError(AssertionError):
    """The driver broke a promise it makes (the message names the event)."""


@dataclass(frozen=True)
class SimulationReport:
    """How one simulated run went: virtual seconds, counts, and its end state."""

    makespan_s: float
    critical_path_s: float
    events: int
    attempts: int
    merged: int
    failed: int
    skipped: int
    workers_lost: int
    run_state: str


@dataclass(frozen=True)
class SimulatedRun:
    """One run to submit: its id, plan, policy and per-run cap."""

    run_id: str
    tasks: tuple[TaskSpec, ...]
    policy: RunPolicy = field(default_factory=RunPolicy)
    max_parallel: int | None = None


@dataclass
class _Member:
    worker: Worker
    link: Link
    scope: anyio.CancelScope = field(default_factory=anyio.CancelScope)


@dataclass
class ShellCluster:
    """A real driver and ``workers`` real one-slot workers on one virtual clock.

    Args:
        seed: the one source of randomness.
        workers: how many workers (a killed one is replaced).
        config: the driver's fleet-wide limits.
        duration: samples an attempt's duration in seconds.
        failure_chance: chance an attempt fails.
        failure_classes: the classes a failure is drawn from.
        conflict_chance: chance a merge conflicts.
        death_chance: chance per heartbeat that a worker dies (kill -9).
        ack_wait_s: when a dead worker's item is redelivered.
        heartbeat_s: the workers' heartbeat, and how often deaths are drawn.
        tick_s: the driver's tick.
        fetch_wait_s: how long an idle worker's fetch waits for an item (each wait that
            ends empty wakes the worker for nothing; the real default is 1 s).
        progress_interval_s: how often a running attempt looks for progress to flush
            (the scripted agent reports none; the real default is 1 s).
        stall_s: a run with nothing but joins for this long has stalled (a bug).
        check_ticks: after every tick the driver decides, check that no open run has
            anything left to decide (a tick looks only at runs time may have moved; this
            proves it missed none). Copies the driver's state per tick: for small
            property tests, not 10,000 tasks.
        settle_s: after the last run ended, let the cluster go on this long (the
            cancellations and clean-up that follow a run's end) and keep what it records
            in :attr:`history` too; 0 stops at the end, as the scenarios do.
    """

    seed: int
    workers: int
    config: DriverConfig = field(default_factory=DriverConfig)
    duration: Duration | None = None
    failure_chance: float = 0.0
    failure_classes: tuple[FailureClass, ...] = ("api_error", "timeout")
    conflict_chance: float = 0.0
    death_chance: float = 0.0
    ack_wait_s: float = 30.0
    heartbeat_s: float = 5.0
    tick_s: float = 1.0
    fetch_wait_s: float = 30.0
    progress_interval_s: float = 60.0
    stall_s: float = 3600.0
    check_ticks: bool = False
    settle_s: float = 0.0

    def __post_init__(self) -> None:
        self._rng = random.Random(self.seed)  # noqa: S311 - a seeded simulation, not secrets
        self._members: list[_Member] = []
        self._joined = 0
        self.lost = 0
        #: seconds of the attempts that ran to a result, for the work bound
        self.work_s = 0.0
        self.driver: Driver | None = None
        #: the simulated cluster's event log, once it ran
        self.log: EventLog | None = None
        #: the events of the last simulation, in log order, up to the one that ended its
        #: last run (and what came in ``settle_s`` after it)
        self.history: tuple[StoredEvent, ...] = ()
        #: the cluster as the log told it when the simulation ended
        self.view = ClusterView()
        self.executor = ScriptedExecutor(
            seed=self.seed, duration=self.duration, failure_chance=self.failure_chance,
            failure_classes=self.failure_classes,
        )  # fmt: skip

    def run(
        self,
        tasks: Sequence[TaskSpec],
        *,
        policy: RunPolicy | None = None,
        max_parallel: int | None = None,
        limit_s: float = 10 * 24 * 3600,
    ) -> SimulationReport:
        """Submit one run of ``tasks`` and simulate until it ends.

        Raises:
            InvariantBrokenError: a promise was broken, or the run did not end in ``limit_s``.
        """
        run = SimulatedRun(_RUN_ID, tuple(tasks), policy or RunPolicy(), max_parallel)
        return self.run_all([run], limit_s=limit_s)[_RUN_ID]

    def run_all(
        self,
        runs: Sequence[SimulatedRun],
        *,
        one_after_another: bool = False,
        limit_s: float = 10 * 24 * 3600,
    ) -> dict[str, SimulationReport]:
        """Submit ``runs`` (all at once, or each once the one before ended) and simulate
        until every one ended; a report for each, by run id.

        Raises:
            InvariantBrokenError: a promise was broken, or the runs did not end in ``limit_s``.
        """
        if len({r.run_id for r in runs}) != len(runs):
            raise ValueError("two simulated runs share a run id")
        clock = trio.testing.MockClock(autojump_threshold=0)
        runner = functools.partial(self._simulate, tuple(runs), one_after_another, limit_s)
        reports: dict[str, SimulationReport] = trio.run(runner, clock=clock)
        return reports

    async def _simulate(
        self, runs: tuple[SimulatedRun, ...], one_after_another: bool, limit_s: float
    ) -> dict[str, SimulationReport]:
        seed_trio_scheduler(self.seed)
        infra = memory_infrastructure(work_ack_wait_s=self.ack_wait_s)
        self.log = infra.log
        checker = _Checker(self.config)
        self.driver = Driver(
            infra.log,
            options=DriverOptions(
                config=self.config, tick_s=self.tick_s, now=virtual_now, snapshot_every_events=0,
                observe=checker.check_tick if self.check_ticks else None,
            ),
            infrastructure=infra,
            repositories=ScriptedRunRepositories(
                seed=self.seed, conflict_chance=self.conflict_chance
            ),
        )  # fmt: skip
        ended: dict[str, float] = {}
        async with anyio.create_task_group() as group:
            await group.start(self.driver.run)
            for _ in range(self.workers):
                await self._join(group, infra)
            group.start_soon(self._deaths, group, infra)
            batches = [(r,) for r in runs] if one_after_another else [runs]
            with anyio.move_on_after(limit_s):
                await self._submit(infra, checker, batches[0])
                async with infra.log.open_reader(follow=True) as events:
                    reading = aiter(events)
                    await checker.follow(reading, self.stall_s, ended)
                    for batch in batches[1:]:
                        await self._submit(infra, checker, batch)
                        await checker.follow(reading, self.stall_s, ended)
            if self.settle_s and len(ended) == len(runs):
                await anyio.sleep(self.settle_s)
                last = checker.history[-1].seq if checker.history else 0
                async with infra.log.open_reader(from_seq=last + 1) as rest:
                    checker.history.extend([stored async for stored in rest])
            for member in self._members:
                member.worker.stop()
            group.cancel_scope.cancel()
        if checker.error is not None:
            raise checker.error
        unended = [r.run_id for r in runs if r.run_id not in ended]
        if unended:
            raise InvariantBrokenError(f"run {unended[0]} did not end within {limit_s:.0f}s")
        self.history = tuple(checker.history)
        self.view = checker.view
        return {r.run_id: self._report(checker, r.run_id, ended[r.run_id]) for r in runs}

    async def _submit(
        self, infra: Infrastructure, checker: _Checker, runs: Sequence[SimulatedRun]
    ) -> None:
        """Submit ``runs`` as the CLI would, each once the checker knows what to expect."""
        for run in runs:
            checker.expect(run, self.config)
            submit = SubmitRun(
                run_id=run.run_id, goal="simulated", repo="/simulated", plan=run.tasks,
                policy=run.policy, max_parallel=run.max_parallel,
            )  # fmt: skip
            await infra.commands.publish(
                submit, command_id=f"submit-{run.run_id}", now=virtual_now()
            )

    async def _join(self, group: anyio.abc.TaskGroup, infra: Infrastructure) -> None:
        """A fresh worker joins, on a link of its own."""
        own, link = cuttable(infra)
        n = self._joined
        worker_id = f"w{n}"
        self._joined += 1
        worker = Worker(
            WorkerConfig(
                worker_id=worker_id, workspace_root=Path(f"/simulated/{worker_id}"),
                heartbeat_s=self.heartbeat_s, ack_wait_s=self.ack_wait_s,
                confinement=Confinement.unconfined(), touched_every_s=0,
                fetch_wait_s=self.fetch_wait_s, progress_interval_s=self.progress_interval_s,
            ),
            own.log, infrastructure=own, executor=self.executor, clock=virtual_now,
            disk=ScriptedDisk(own.artifacts), load=_no_load,
            origin=_simulated_origin(self.seed, n),
        )  # fmt: skip
        member = _Member(worker, link)
        self._members.append(member)
        await group.start(_serve_until_killed, member)

    async def _deaths(self, group: anyio.abc.TaskGroup, infra: Infrastructure) -> None:
        """Every heartbeat each live worker may die (kill -9); a replacement joins."""
        if not self.death_chance:
            return
        while True:
            await anyio.sleep(self.heartbeat_s)
            for member in list(self._members):
                if member.link.cut_off or self._rng.random() >= self.death_chance:
                    continue
                member.link.cut()
                member.scope.cancel()
                self.lost += 1
                await self._join(group, infra)

    def _report(self, checker: _Checker, run_id: str, makespan: float) -> SimulationReport:
        view = checker.view
        run = view.runs[run_id]
        tasks = view.tasks_of(run_id)
        unfinished = [t.task_id for t in tasks if t.state not in FINISHED_TASK_STATES]
        if run.state is RunState.COMPLETED and unfinished:
            raise InvariantBrokenError(f"run completed with unfinished tasks {unfinished[:5]}")
        durations = {
            t.task_id: (t.finished_at - t.started_at).total_seconds()
            for t in tasks
            if t.started_at and t.finished_at
        }
        bound, _ = critical_path(list(checker.graphs[run_id].specs.values()), durations)
        self.work_s = sum(durations.values())
        return SimulationReport(
            makespan_s=makespan,
            critical_path_s=bound,
            events=checker.events,
            attempts=checker.attempts[run_id],
            merged=sum(1 for t in tasks if t.state is TaskState.MERGED),
            failed=sum(1 for t in tasks if t.state is TaskState.FAILED),
            skipped=sum(1 for t in tasks if t.state is TaskState.SKIPPED),
            workers_lost=self.lost,
            run_state=run.state.value,
        )


def _simulated_origin(seed: int, n: int) -> Origin:
    """The n-th worker to join: its own seeded key and session ids, a pid of its own.

    Its source is its own, not the cluster's: how many ids a worker draws must not move
    the draws of deaths. A worker id is never reused here, so its counter alone keeps
    its event ids apart.
    """
    rng = random.Random(f"{seed}/origin/{n}")  # noqa: S311 - a seeded simulation
    return Origin(
        host="simulated",
        pid=1000 + n,
        key_seed=nkeys.encode_seed(rng.randbytes(32), nkeys.PREFIX_BYTE_USER),
        nonce=lambda: "sim",
        session_id=lambda: str(uuid.UUID(int=rng.getrandbits(128), version=4)),
    )


def _no_load() -> HostLoad:
    """Simulated machines report no load: nothing reads /proc a thousand times a second."""
    return HostLoad(cpu_percent=0.0, memory_bytes=0, load_avg=0.0)


async def _serve_until_killed(
    member: _Member, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
) -> None:
    """Serve until the worker's scope is cancelled; a kill (its link cut first) ends here."""
    with member.scope:
        try:
            await member.worker.serve(task_status=task_status)
        except* WorkerKilled:
            # The death the simulation inflicted: its clean-up reached nothing, as a killed
            # process's never does. Anything else the worker raised ends the simulation.
            pass


class _Checker:
    """Follows the log and checks the scheduler's promises after every event."""

    def __init__(self, config: DriverConfig) -> None:
        self._max_running = config.max_running
        self.graphs: dict[str, TaskGraph] = {}
        self._caps: dict[str, int] = {}
        self._merged: dict[str, set[str]] = {}
        self._active: dict[str, set[str]] = {}
        self._open: set[str] = set()
        self.events = 0
        self.attempts: dict[str, int] = {}
        #: every event the checker read, in log order: what "one seed, one history" compares
        self.history: list[StoredEvent] = []
        #: the cluster as the log tells it, folded as the checker reads
        self.view = ClusterView()
        #: a promise a tick broke (raised by the driver's observer, where the driver
        #: would only log it): raised again when the simulation ends
        self.error: InvariantBrokenError | None = None

    def expect(self, run: SimulatedRun, config: DriverConfig) -> None:
        """``run`` is about to be submitted: its graph and caps are what is checked."""
        self.graphs[run.run_id] = TaskGraph.build(run.tasks)
        self._caps[run.run_id] = min(run.max_parallel or config.max_running, config.max_running)
        self._merged[run.run_id] = set()
        self._active[run.run_id] = set()
        self.attempts[run.run_id] = 0
        self._open.add(run.run_id)

    async def follow(
        self, reading: AsyncIterator[StoredEvent], stall_s: float, ended: dict[str, float]
    ) -> None:
        """Check every event until every expected run ended (its end time into ``ended``).

        Raises:
            InvariantBrokenError: a promise broke, or the runs stalled.
        """
        while self._open:
            with anyio.move_on_after(stall_s) as waited:
                stored = await anext(reading)
                while isinstance(stored.envelope.payload, WorkerJoined):
                    self.events += 1  # a join is no progress
                    self.history.append(stored)
                    self.view = apply(self.view, stored)
                    stored = await anext(reading)
            if waited.cancelled_caught:
                raise InvariantBrokenError(
                    f"run {sorted(self._open)[0]} stalled: nothing happened for "
                    f"{stall_s:.0f}s after {self.events} events"
                )
            self.events += 1
            self.history.append(stored)
            self.view = apply(self.view, stored)
            self._check(stored)
            event = stored.envelope.payload
            if isinstance(event, (RunCompleted, RunFailed)) and event.run_id in self._open:
                self._open.discard(event.run_id)
                ended[event.run_id] = anyio.current_time()

    def check_tick(self, state: DriverState, message: Message, now: datetime) -> None:
        """After a tick: a tick reconciles only the runs time may have moved; if looking at
        every open run again would decide anything (apart from a restart's republishing of
        queued work), the tick missed a run that needed it."""
        if not isinstance(message, Tick) or self.error is not None:
            return
        counted = sum(len(book.active) for book in state.runs.values() if not book.ended)
        if counted != state.active_count:
            self.error = InvariantBrokenError(
                f"the driver counts {state.active_count} active attempts, its runs hold {counted}"
            )
            return
        again = [
            effect
            for effect in decide(copy.deepcopy(state), Resume(), now)
            if not (isinstance(effect, Dispatch) and effect.republish)
        ]
        if again:
            self.error = InvariantBrokenError(
                f"a tick at {now:%H:%M:%S} left undecided: {', '.join(e.key for e in again)}"
            )

    def _check(self, stored: StoredEvent) -> None:
        if self.error is not None:
            raise self.error
        event = stored.envelope.payload
        task_id = getattr(event, "task_id", None)
        run_id = getattr(event, "run_id", None)
        if isinstance(event, RunPlanned) or task_id is None or run_id not in self.graphs:
            return
        graph = self.graphs[run_id]
        if task_id not in graph.specs:
            return
        depends = graph.specs[task_id].depends_on
        merged, active = self._merged[run_id], self._active[run_id]
        if isinstance(event, TaskQueued):
            missing = [d for d in depends if d not in merged]
            if missing:
                raise InvariantBrokenError(
                    f"seq {stored.seq}: {task_id} queued before {missing} merged"
                )
            active.add(task_id)
            if len(active) > self._caps[run_id]:
                raise InvariantBrokenError(
                    f"seq {stored.seq}: {len(active)} active tasks, cap {self._caps[run_id]}"
                )
            everywhere = sum(len(a) for a in self._active.values())
            if everywhere > self._max_running:
                raise InvariantBrokenError(f"seq {stored.seq}: {everywhere} active in all runs")
        elif isinstance(event, TaskStarted):
            self.attempts[run_id] += 1
        elif isinstance(event, TaskMerged):
            if task_id in merged:
                raise InvariantBrokenError(f"seq {stored.seq}: {task_id} merged twice")
            missing = [d for d in depends if d not in merged]
            if missing:
                raise InvariantBrokenError(f"seq {stored.seq}: {task_id} merged before {missing}")
            merged.add(task_id)
        if isinstance(event, (TaskSucceeded, TaskFailed, TaskCancelled)):
            active.discard(task_id)
