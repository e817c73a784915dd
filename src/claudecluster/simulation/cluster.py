"""The real driver core in a simulated cluster on a virtual clock.

Everything around :func:`claudecluster.actors.driver.decide` is simulated, nothing of
the driver is: an in-memory event log with the same dedup and conditional-append rules as
JetStream, workers that take queued attempts (deciding with the real
:func:`claudecluster.actors.worker.admit`), run them for a sampled time, fail some, and
die; a merger that merges or conflicts. One seed gives one history, so a failing
property test or simulation replays exactly.

After every event the invariants the scheduler promises are checked, and the first
broken one raises :class:`InvariantBrokenError` with the event that broke it:

* no attempt is queued before every dependency of its task merged;
* per-run and global caps on queued-or-running attempts hold;
* a task merges only after its dependencies merged, and at most once;
* at the end every task of every run is merged, skipped, cancelled or failed.
"""

from __future__ import annotations

import copy
import heapq
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Final

from claudecluster.actors.driver import (
    Dispatch,
    DriverConfig,
    DriverState,
    Effect,
    EffectFailed,
    EffectSettled,
    Merge,
    MergeBatch,
    Message,
    Plan,
    PublishCommand,
    Record,
    Resume,
    Retry,
    Rollback,
    Tick,
    Verify,
    WorkerSeen,
    decide,
)
from claudecluster.actors.worker import admit, claim_events, stops_for
from claudecluster.domain.branches import integration_branch
from claudecluster.domain.graph import TaskGraph
from claudecluster.domain.lifecycle import (
    FINISHED_TASK_STATES,
    OPEN_RUN_STATES,
    RunState,
    TaskState,
)
from claudecluster.events import event_ids as ids
from claudecluster.events.envelope import StoredEvent, wrap_command, wrap_event
from claudecluster.events.model import (
    Event,
    FailureClass,
    MergeConflict,
    RunPlanned,
    RunPolicy,
    SubmitRun,
    TaskAssigned,
    TaskCancelled,
    TaskFailed,
    TaskMerged,
    TaskQueued,
    TaskSpec,
    TaskStarted,
    TaskSucceeded,
    WorkerJoined,
)
from claudecluster.events.subjects import event_subject, scope_filter
from claudecluster.projections.views import task_key

__all__ = [
    "InvariantBrokenError",
    "SimulatedCluster",
    "SimulationReport",
    "random_graph",
]

EPOCH: Final = datetime(2026, 1, 1, tzinfo=UTC)


class InvariantBrokenError(AssertionError):
    """The driver broke a promise; the message names the promise and the event."""


def random_graph(
    rng: random.Random, size: int, *, edge_chance: float = 0.15, max_parents: int = 3
) -> tuple[TaskSpec, ...]:
    """A random DAG: each task may depend on a few earlier ones."""
    tasks = []
    for i in range(size):
        earlier = list(range(max(0, i - 50), i))
        parents = [p for p in earlier if rng.random() < edge_chance][:max_parents]
        tasks.append(
            TaskSpec(
                task_id=f"t{i}",
                title=f"task {i}",
                prompt=f"do {i}",
                depends_on=tuple(f"t{p}" for p in parents),
                priority=rng.randint(0, 2),
            )
        )
    return tuple(tasks)


@dataclass
class _Worker:
    worker_id: str
    alive: bool = True
    busy: tuple[str, str, int] | None = None  # (run, task, attempt)


@dataclass
class SimulationReport:
    """What a simulated run did, for tables and assertions."""

    makespan_s: float
    critical_path_s: float
    events: int
    attempts: int
    merged: int
    failed: int
    skipped: int
    workers_lost: int
    run_state: str


@dataclass
class SimulatedCluster:
    """A driver, ``workers`` single-slot workers and a merger on one virtual clock.

    Args:
        seed: the one source of randomness.
        workers: how many workers.
        config: the driver's fleet-wide limits.
        duration: samples a task attempt's duration in seconds.
        failure_chance: chance an attempt fails.
        failure_classes: the classes a failure is drawn from (the default policy retries
            api_error and timeout, not agent_error).
        conflict_chance: chance a merge conflicts.
        death_chance: chance per heartbeat that a worker dies (kill -9).
        ack_wait_s: when a dead worker's item is redelivered.
        stall_s: a run with no event for this long (only joins, only liveness) has stalled (a bug).
        check_ticks: after every tick, check that no open run has anything left to decide
            (a tick looks only at runs time may have moved; this proves it missed none).
            Copies the driver's state per tick: for small property tests, not 10k tasks.
    """

    seed: int
    workers: int
    config: DriverConfig = field(default_factory=DriverConfig)
    duration: Callable[[random.Random, str], float] | None = None
    failure_chance: float = 0.0
    failure_classes: tuple[FailureClass, ...] = ("api_error", "timeout", "agent_error")
    conflict_chance: float = 0.0
    death_chance: float = 0.0
    ack_wait_s: float = 30.0
    heartbeat_s: float = 5.0
    tick_s: float = 1.0
    stall_s: float = 3600.0
    check_ticks: bool = False

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)  # noqa: S311 - a seeded simulation, not secrets
        self.state = DriverState(config=self.config)
        self.now = EPOCH
        self.log: list[StoredEvent] = []
        self._ids: dict[str, int] = {}
        self._scopes: dict[str, int] = {}
        self._timers: list[tuple[datetime, int, Callable[[], None]]] = []
        self._timer_n = 0
        self._queue: list[tuple[str, str, int]] = []  # work items: (run, task, attempt)
        self._workers = [_Worker(f"w{i}") for i in range(self.workers)]
        self._graphs: dict[str, TaskGraph] = {}
        self._merged: dict[str, set[str]] = {}
        self._last_progress = self.now
        self._inbox: list[Message] = []
        self._feeding = False
        self._active: dict[str, set[str]] = {}
        self._attempts = 0
        self._lost = 0
        self._commit = 0
        for worker in list(self._workers):
            self._join(worker)
        self._every(self.tick_s, lambda: self._feed(Tick()))

    # -- the world's clock ---------------------------------------------------------------

    def _at(self, delay_s: float, action: Callable[[], None]) -> None:
        self._timer_n += 1
        when = self.now + timedelta(seconds=delay_s)
        heapq.heappush(self._timers, (when, self._timer_n, action))

    def _every(self, period_s: float, action: Callable[[], None]) -> None:
        def again() -> None:
            action()
            self._at(period_s, again)

        self._at(period_s, again)

    # -- the event log -------------------------------------------------------------------

    def _append(self, event: Event, event_id: str, expected_last: int | None = None) -> int | None:
        """Append like JetStream: dedup by id, conditional on the scope's last sequence."""
        if event_id in self._ids:
            return self._ids[event_id]
        scope = scope_filter(event)
        if expected_last is not None and self._scopes.get(scope, 0) != expected_last:
            return None
        seq = len(self.log) + 1
        stored = StoredEvent(
            seq=seq,
            subject=event_subject(event),
            envelope=wrap_event(event, event_id=event_id, now=self.now),
        )
        self.log.append(stored)
        if not isinstance(event, WorkerJoined):
            self._last_progress = self.now
        self._ids[event_id] = seq
        self._scopes[scope] = seq
        self._check(stored)
        self._feed(stored)
        return seq

    # -- the driver ----------------------------------------------------------------------

    def _feed(self, message: Message) -> None:
        """Deliver a message to the driver; what it causes is delivered after it, in order
        (no re-entrant decisions, as with the real driver's single reading loop)."""
        self._inbox.append(message)
        if self._feeding:
            return
        self._feeding = True
        try:
            while self._inbox:
                message = self._inbox.pop(0)
                effects = decide(self.state, message, self.now)
                if self.check_ticks and isinstance(message, Tick):
                    self._check_tick()
                for effect in effects:
                    self._carry_out(effect)
        finally:
            self._feeding = False

    def _check_tick(self) -> None:
        """A tick reconciles only the runs time may have moved: if looking at every open run
        again would decide anything (apart from a restart's republishing of queued work),
        the tick missed a run that needed it."""
        state = self.state
        counted = sum(len(book.active) for book in state.runs.values() if not book.ended)
        if counted != state.active_count:
            raise InvariantBrokenError(
                f"the driver counts {state.active_count} active attempts, its runs hold {counted}"
            )
        again = [
            effect
            for effect in decide(copy.deepcopy(state), Resume(), self.now)
            if not (isinstance(effect, Dispatch) and effect.republish)
        ]
        if again:
            raise InvariantBrokenError(
                f"a tick at {self.now:%H:%M:%S} left undecided: {', '.join(e.key for e in again)}"
            )

    def _carry_out(self, effect: Effect) -> None:
        seq: int | None
        match effect:
            case Record():
                seq = self._append(effect.event, effect.event_id, effect.expected_last)
            case Plan():
                submitted = effect.submitted
                assert submitted.plan is not None
                event = RunPlanned(
                    run_id=submitted.run_id,
                    tasks=submitted.plan,
                    base_commit="c0",
                    integration_branch=integration_branch(submitted.run_id),
                )
                self._graphs[submitted.run_id] = TaskGraph.build(submitted.plan)
                self._merged[submitted.run_id] = set()
                seq = self._append(event, ids.run_planned_id(submitted.run_id), None)
            case Dispatch():
                seq = self._dispatch(effect)
            case Merge():
                seq = self._merge(effect)
            case MergeBatch():
                # No verify command is simulated: each result merges in turn, and the
                # batch ends at the first that conflicts, as the real one does.
                seq = None
                for item in effect.items:
                    seq = self._merge(item)
                    if seq is None or isinstance(self.log[-1].envelope.payload, MergeConflict):
                        break
            case Verify():
                event_id = ids.run_completed_id(effect.run_id, effect.retries)
                seq = self._append(effect.done, event_id, None)
            case Rollback() | Retry():
                seq = self._append(effect.event, effect.event_id, None)
            case PublishCommand():
                seq = self._cancel(effect)
        if seq is None:
            self._feed(EffectFailed(key=effect.key, reason="lost a race"))
        else:
            self._feed(EffectSettled(key=effect.key, seq=seq))

    def _dispatch(self, effect: Dispatch) -> int | None:
        queued = effect.queued
        if effect.republish:
            seq: int | None = self._ids.get(effect.event_id, len(self.log))
        else:
            seq = self._append(queued, effect.event_id, effect.expected_last)
        if seq is not None:
            self._queue.append((queued.run_id, queued.task_id, queued.attempt))
            self._at(0.0, self._assign)
        return seq

    def _merge(self, effect: Merge) -> int | None:
        if self.rng.random() < self.conflict_chance:
            event: Event = MergeConflict(
                run_id=effect.run_id, task_id=effect.task_id, attempt=effect.attempt,
                files=("shared.py",), ours=effect.head, theirs=f"r{effect.attempt}",
                policy=effect.on_conflict,
            )  # fmt: skip
            return self._append(
                event, ids.merge_conflict_id(effect.run_id, effect.task_id, effect.attempt),
                effect.expected_last,
            )  # fmt: skip
        self._commit += 1
        event = TaskMerged(
            run_id=effect.run_id,
            task_id=effect.task_id,
            attempt=effect.attempt,
            commit=f"c{self._commit}",
            integration_branch=effect.integration_branch,
        )
        return self._append(
            event,
            ids.task_merged_id(effect.run_id, effect.task_id, effect.attempt),
            effect.expected_last,
        )

    # -- the workers ---------------------------------------------------------------------

    def _cancel(self, effect: PublishCommand) -> int:
        """A worker running the task stops it and records that, as real workers do."""
        command = effect.command
        for worker in self._workers:
            if not worker.alive or worker.busy is None:
                continue
            run_id, task_id, attempt = worker.busy
            # Each worker decides for itself what the command stops, as real ones do.
            stops = stops_for(command, (task_key(run_id, task_id),), worker.worker_id)
            for _, reason in stops.attempts:
                worker.busy = None
                self._append(
                    TaskCancelled(run_id=run_id, task_id=task_id, attempt=attempt, reason=reason),
                    f"cancelled-{run_id}-{task_id}-{attempt}",
                    self._scopes.get(f"cc.evt.{run_id}.{task_id}.>", 0),
                )
                self._at(0.0, self._assign)
        return len(self.log)

    def _heartbeat(self, worker: _Worker) -> None:
        if not worker.alive:
            return
        if self.death_chance and self.rng.random() < self.death_chance:
            self._die(worker)
            return
        # Liveness goes to the registry, not the log, as with real workers.
        self._feed(WorkerSeen(worker_id=worker.worker_id, at=self.now))

    def _die(self, worker: _Worker) -> None:
        """kill -9: no more events; its unacknowledged item comes back after the ack wait;
        a replacement worker joins."""
        worker.alive = False
        self._lost += 1
        if worker.busy is not None:
            item = worker.busy
            self._at(self.ack_wait_s, lambda: self._redeliver(item))
        fresh = _Worker(f"w{len(self._workers)}")
        self._workers.append(fresh)
        self._join(fresh)
        self._at(0.0, self._assign)

    def _join(self, worker: _Worker) -> None:
        self._append(WorkerJoined(worker_id=worker.worker_id), f"join-{worker.worker_id}")
        self._every(self.heartbeat_s, lambda: self._heartbeat(worker))

    def _redeliver(self, item: tuple[str, str, int]) -> None:
        self._queue.append(item)
        self._assign()

    def _assign(self) -> None:
        for worker in self._workers:
            if not self._queue:
                return
            if not worker.alive or worker.busy is not None:
                continue
            run_id, task_id, attempt = self._queue.pop(0)
            self._take(worker, run_id, task_id, attempt)

    def _take(self, worker: _Worker, run_id: str, task_id: str, attempt: int) -> None:
        task = self.state.view_of(run_id).tasks.get(task_key(run_id, task_id))
        decision = admit(task, attempt)
        scope = f"cc.evt.{run_id}.{task_id}.>"
        if decision.action in ("drop", "retry_later"):
            if decision.action == "retry_later":
                self._at(1.0, lambda: self._redeliver((run_id, task_id, attempt)))
            self._at(0.0, self._assign)
            return
        live = decision.attempt
        # The claim the real worker records, each append conditional on the one before.
        ids = {TaskQueued: "takeover", TaskAssigned: "assigned"}
        claim = claim_events(decision, run_id=run_id, task_id=task_id, worker_id=worker.worker_id)
        for event in claim:
            event_id = f"{ids[type(event)]}-{run_id}-{task_id}-{live}"
            if self._append(event, event_id, self._scopes.get(scope, 0)) is None:
                self._at(0.0, self._assign)
                return
        self._attempts += 1
        worker.busy = (run_id, task_id, live)
        self._append(
            TaskStarted(run_id=run_id, task_id=task_id, attempt=live, worker_id=worker.worker_id),
            f"started-{run_id}-{task_id}-{live}", self._scopes.get(scope, 0),
        )  # fmt: skip
        seconds = self.duration(self.rng, task_id) if self.duration else self.rng.uniform(5, 60)
        fails = self.rng.random() < self.failure_chance
        self._at(seconds, lambda: self._finish(worker, run_id, task_id, live, fails, seconds))

    def _finish(
        self, worker: _Worker, run_id: str, task_id: str, attempt: int, fails: bool, seconds: float
    ) -> None:
        if not worker.alive or worker.busy != (run_id, task_id, attempt):
            return
        worker.busy = None
        scope = f"cc.evt.{run_id}.{task_id}.>"
        event: Event
        if fails:
            kind: FailureClass = self.rng.choice(self.failure_classes)
            event = TaskFailed(
                run_id=run_id, task_id=task_id, attempt=attempt, reason=f"simulated {kind}",
                failure_class=kind, retryable=kind != "agent_error", worker_id=worker.worker_id,
            )  # fmt: skip
        else:
            event = TaskSucceeded(
                run_id=run_id, task_id=task_id, attempt=attempt, worker_id=worker.worker_id,
                cost_usd=0.01, duration_ms=int(seconds * 1000),
            )  # fmt: skip
        self._append(event, f"done-{run_id}-{task_id}-{attempt}", self._scopes.get(scope, 0))
        self._at(0.0, self._assign)

    # -- invariants ----------------------------------------------------------------------

    def _check(self, stored: StoredEvent) -> None:
        event = stored.envelope.payload
        run_id = getattr(event, "run_id", None)
        graph = self._graphs.get(run_id or "")
        if graph is None or run_id is None:
            return
        merged = self._merged[run_id]
        task_id = getattr(event, "task_id", None)
        if isinstance(event, TaskQueued) and task_id is not None:
            missing = [d for d in graph.specs[task_id].depends_on if d not in merged]
            if missing:
                raise InvariantBrokenError(
                    f"seq {stored.seq}: {task_id} queued before {missing} merged"
                )
        if isinstance(event, TaskMerged) and task_id is not None:
            if task_id in merged:
                raise InvariantBrokenError(f"seq {stored.seq}: {task_id} merged twice")
            missing = [d for d in graph.specs[task_id].depends_on if d not in merged]
            if missing:
                raise InvariantBrokenError(f"seq {stored.seq}: {task_id} merged before {missing}")
            merged.add(task_id)
        active = self._active.setdefault(run_id, set())
        if isinstance(event, TaskQueued) and task_id is not None:
            active.add(task_id)
            book = self.state.runs.get(run_id)
            cap = (book.submitted.max_parallel if book else None) or self.config.max_running
            if len(active) > cap:
                raise InvariantBrokenError(
                    f"seq {stored.seq}: {len(active)} active tasks, cap {cap}"
                )
            everywhere = sum(len(a) for a in self._active.values())
            if everywhere > self.config.max_running:
                raise InvariantBrokenError(f"seq {stored.seq}: {everywhere} active in all runs")
        elif isinstance(event, (TaskSucceeded, TaskFailed, TaskCancelled)) and task_id:
            active.discard(task_id)

    # -- driving it ----------------------------------------------------------------------

    def submit(
        self,
        run_id: str,
        tasks: Sequence[TaskSpec],
        *,
        policy: RunPolicy | None = None,
        max_parallel: int | None = None,
    ) -> None:
        """Send a SubmitRun command, as the CLI would."""
        command = SubmitRun(
            run_id=run_id, goal="simulated", repo="/sim", plan=tuple(tasks),
            policy=policy or RunPolicy(), max_parallel=max_parallel,
        )  # fmt: skip
        envelope = wrap_command(
            command, command_id=f"submit-{run_id}", now=self.now, correlation_id=run_id
        )
        self._feed(envelope)

    def run_until_done(self, run_id: str, *, limit_s: float = 10 * 24 * 3600) -> SimulationReport:
        """Advance the clock until the run ends; check the end state.

        Raises:
            InvariantBrokenError: a promise was broken, or the run did not end in ``limit_s``.
        """
        deadline = EPOCH + timedelta(seconds=limit_s)
        while self._timers:
            run = self.state.view_of(run_id).runs.get(run_id)
            if run is not None and run.state not in OPEN_RUN_STATES:
                break
            when, _, action = heapq.heappop(self._timers)
            if when > deadline:
                raise InvariantBrokenError(f"run {run_id} did not end within {limit_s:.0f}s")
            if (when - self._last_progress).total_seconds() > self.stall_s:
                raise InvariantBrokenError(
                    f"run {run_id} stalled: nothing happened for {self.stall_s:.0f}s "
                    f"after seq {len(self.log)}"
                )
            self.now = max(self.now, when)
            action()
        return self._report(run_id)

    def _report(self, run_id: str) -> SimulationReport:
        view = self.state.view_of(run_id)
        run = view.runs[run_id]
        tasks = view.tasks_of(run_id)
        unfinished = [t.task_id for t in tasks if t.state not in FINISHED_TASK_STATES]
        if run.state is RunState.COMPLETED and unfinished:
            raise InvariantBrokenError(f"run completed with unfinished tasks {unfinished[:5]}")
        graph = self._graphs[run_id]
        durations = {}
        for t in tasks:
            if t.started_at and t.finished_at:
                durations[t.task_id] = (t.finished_at - t.started_at).total_seconds()
        from claudecluster.domain.graph import critical_path

        bound, _ = critical_path(list(graph.specs.values()), durations)
        return SimulationReport(
            makespan_s=(self.now - EPOCH).total_seconds(),
            critical_path_s=bound,
            events=len(self.log),
            attempts=self._attempts,
            merged=sum(1 for t in tasks if t.state is TaskState.MERGED),
            failed=sum(1 for t in tasks if t.state is TaskState.FAILED),
            skipped=sum(1 for t in tasks if t.state is TaskState.SKIPPED),
            workers_lost=self._lost,
            run_state=run.state.value,
        )
