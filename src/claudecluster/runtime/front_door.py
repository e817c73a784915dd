"""The front door: what every way into the cluster (CLI, HTTP gateway, MCP server) does.

A front door only publishes commands and reads projections; it holds no task state of
its own. :class:`FrontDoor` keeps one :class:`~claudecluster.projections.cluster.ClusterView`
current by following the event log in the background, so a status read is a dictionary
lookup in memory rather than a replay of the log per request, and a command's answer
(the driver's event, or its ``CommandRejected``) is noticed by that same follower instead
of a reader opened per request. That is what keeps submission and status cheap enough
for the gateway's latency targets.

Open one with :func:`open_front_door`; it is ready when its view has caught up with the
log as it was when it opened.
"""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Final, Literal
from uuid import uuid4

import anyio
import msgspec
from anyio.abc import TaskStatus

from claudecluster.domain.graph import validate_graph
from claudecluster.domain.submission import DEFAULT_MAX_TASKS, submission_problem
from claudecluster.errors import (
    CommandRefusedError,
    ConfigError,
    DriverUnavailableError,
    UnknownEntityError,
)
from claudecluster.events.envelope import StoredEvent
from claudecluster.events.model import (
    CancelRun,
    CancelTask,
    Command,
    CommandRejected,
    Event,
    FanoutSpec,
    RetryRun,
    RollbackRun,
    RunCancelled,
    RunPolicy,
    RunRetried,
    RunRolledBack,
    RunSubmitted,
    SubmitRun,
    TaskCancelled,
    TaskLimits,
    TaskSkipped,
    TaskSpec,
    is_id,
)
from claudecluster.events.subjects import run_filter, task_filter
from claudecluster.observability.logging import get_logger
from claudecluster.observability.redaction import redact_url
from claudecluster.projections.cluster import ClusterView, apply, find_task
from claudecluster.projections.views import RunView, TaskView, WorkerView
from claudecluster.runtime.connection import Connection
from claudecluster.runtime.reads import keep_snapshotting, open_view_from_snapshot
from claudecluster.transport.base import read_all
from claudecluster.transport.commands import publish_command
from claudecluster.transport.snapshots import JetStreamSnapshotStore, SnapshotStore

__all__ = [
    "DEFAULT_ANSWER_TIMEOUT_S",
    "FrontDoor",
    "Submission",
    "idempotent_run_id",
    "new_run_id",
    "open_front_door",
    "submit_run_command",
    "with_safe_defaults",
]

#: No limits at all: what a front door adds when no defaults are configured.
NO_LIMITS: Final = TaskLimits()
#: How long a front door waits for the driver to answer a command.
DEFAULT_ANSWER_TIMEOUT_S: Final = 30.0
#: A front door snapshots its view this often, if this many events came since the last.
SNAPSHOT_EVERY_S: Final = 30.0
SNAPSHOT_MIN_EVENTS: Final = 1000
_log = get_logger(__name__)


def new_run_id(now: datetime, prefix: str = "run") -> str:
    """A fresh run id: ``prefix``, the time to the second and a short random suffix.

    The suffix is there because two runs can start within the same second (a gateway
    takes many submissions from different clients; two ``demo`` commands side by side).
    The one format of every run id we make (an idempotent one is
    :func:`idempotent_run_id`).
    """
    return f"{prefix}-{now:%Y%m%d-%H%M%S}-{uuid4().hex[:6]}"


#: What an idempotency key may hold: printable ASCII, as an HTTP header value can.
_KEY_CHARS: Final = frozenset(chr(c) for c in range(0x21, 0x7F))
_MAX_KEY: Final = 200


def idempotent_run_id(key: str, client: str = "") -> str:
    """The run id a submission with idempotency ``key`` gets when it names none.

    Derived from the key (and the client, so two clients' keys never meet), so a retry
    names the same run and the driver's core, which refuses a second run with one id,
    answers it with the first.
    """
    digest = hashlib.sha256(f"{client}\0{key}".encode()).hexdigest()[:24]
    return f"run-k{digest}"


def _key_problem(key: str) -> str | None:
    if len(key) > _MAX_KEY:
        return f"at most {_MAX_KEY} characters"
    if not set(key) <= _KEY_CHARS:
        return "printable ASCII only (no spaces or control characters)"
    return None


def with_safe_defaults(
    command: SubmitRun, *, task_limits: TaskLimits, budget_usd: float | None
) -> SubmitRun:
    """``command`` with the configured defaults where it names none: per-task limits in
    its policy (a task's own limits still win, field by field, at dispatch) and a budget.
    """
    changes: dict[str, object] = {}
    if command.policy.task_limits == NO_LIMITS and task_limits != NO_LIMITS:
        changes["policy"] = msgspec.structs.replace(command.policy, task_limits=task_limits)
    if command.budget_usd is None and budget_usd is not None:
        changes["budget_usd"] = budget_usd
    return msgspec.structs.replace(command, **changes) if changes else command


def submit_run_command(
    goal: str,
    *,
    repo: str,
    plan: Sequence[TaskSpec] | None = None,
    fanout: FanoutSpec | None = None,
    claude_planner: bool = False,
    run_id: str | None = None,
    budget_usd: float | None = None,
    max_parallel: int | None = None,
    policy: RunPolicy | None = None,
    plan_source: str = "",
    source: str = "request",
    now: datetime,
    max_tasks: int = DEFAULT_MAX_TASKS,
    idempotency_key: str = "",
    client: str = "",
) -> SubmitRun:
    """The ``SubmitRun`` for a goal, checked as far as it can be before the driver sees it.

    Exactly one way of planning must be chosen: a plan (explicit tasks), a fan-out, or the
    Claude Code planner. A plan's graph is validated here so a cycle or an unknown
    dependency fails at once with the task named.

    Args:
        goal: what the run should achieve.
        repo: the repository path or URL the driver works on.
        plan: explicit tasks (``planner`` becomes ``plan_file`` when ``plan_source`` is
            given, else ``inline``).
        fanout: one task per file matching a glob.
        claude_planner: let a read-only Claude Code agent plan the tasks.
        run_id: the run's id; a fresh one when None.
        budget_usd: stop starting tasks once the run has cost this much.
        max_parallel: the run's own concurrency cap.
        policy: retries, conflicts and verification.
        plan_source: where the plan came from (a file path), for the record.
        source: where the values came from, for error messages (``flags``, ``request``).
        now: the time, for a default run id.
        max_tasks: the configured cap on a run's tasks (``driver.max_tasks``).
        idempotency_key: the client's key: a retry with it is the same run (the run id
            is derived from it and ``client`` when none is given).
        client: who submits (a token's subject), so keys of different clients differ.

    Raises:
        ConfigError: not exactly one way of planning, an invalid run id, or a bound broken
            (more tasks than ``max_tasks``, a fan-out template with a bad placeholder).
        GraphError: the plan's task graph is invalid.
    """
    chosen = [
        name
        for name, given in (("plan", plan is not None), ("fanout", fanout is not None),
                            ("claude_planner", claude_planner))
        if given
    ]  # fmt: skip
    if len(chosen) != 1:
        raise ConfigError(
            "plan",
            source,
            "give exactly one of a plan, a fan-out or the claude planner "
            f"(got {', '.join(chosen) or 'none'})",
        )
    if idempotency_key:
        problem = _key_problem(idempotency_key)
        if problem is not None:
            raise ConfigError("idempotency_key", source, problem)
    run_id = run_id or (
        idempotent_run_id(idempotency_key, client) if idempotency_key else new_run_id(now)
    )
    if not is_id(run_id):
        raise ConfigError("run_id", source, "use letters, digits, '-' and '_' only")
    common = {
        "run_id": run_id,
        "goal": goal,
        "repo": repo,
        "budget_usd": budget_usd,
        "max_parallel": max_parallel,
        "policy": policy or RunPolicy(),
        "idempotency_key": idempotency_key,
    }
    if plan is not None:
        specs = tuple(plan)
        if len(specs) > max_tasks:  # before the graph is built: its size is the problem
            raise ConfigError(
                "plan", source, f"{len(specs)} tasks, more than the limit of {max_tasks} per run"
            )
        validate_graph(specs)
        planner: Literal["plan_file", "inline"] = "plan_file" if plan_source else "inline"
        command = SubmitRun(**common, plan=specs, planner=planner, plan_source=plan_source)  # type: ignore[arg-type]
    elif fanout is not None:
        command = SubmitRun(**common, planner="fanout", fanout=fanout)  # type: ignore[arg-type]
    else:
        command = SubmitRun(**common, planner="claude")  # type: ignore[arg-type]
    bound = submission_problem(command, max_tasks=max_tasks)
    if bound is not None:
        raise ConfigError(bound[0], source, bound[1])
    return command


@dataclass(frozen=True, slots=True)
class Submission:
    """A submitted run as the front door saw it.

    Attributes:
        run_id: the run's id.
        command_id: the command's id (its deduplication key).
        command_seq: the command's sequence in the commands stream.
        accepted: the driver recorded the run (``run.submitted``) before this returned.
    """

    run_id: str
    command_id: str
    command_seq: int
    accepted: bool


@dataclass(slots=True)
class _Waiter:
    """One pending question to the follower: the first event that ``wanted`` matches."""

    wanted: Callable[[StoredEvent], bool]
    done: anyio.Event = field(default_factory=anyio.Event)
    found: StoredEvent | None = None


class FrontDoor:
    """Commands out, projections in: the shared service behind every front door.

    Reads (:meth:`runs`, :meth:`run`, :meth:`task`, :meth:`workers`) are served from the
    view in memory. Commands are published to the commands stream; the methods that wait
    for the driver's answer raise :class:`CommandRefusedError` when it refuses and
    :class:`DriverUnavailableError` when it does not answer in time.
    """

    def __init__(
        self,
        conn: Connection,
        *,
        answer_timeout_s: float = DEFAULT_ANSWER_TIMEOUT_S,
        max_tasks: int = DEFAULT_MAX_TASKS,
        snapshots: SnapshotStore | None = None,
        default_task_limits: TaskLimits = NO_LIMITS,
        default_budget_usd: float | None = None,
    ) -> None:
        self._conn = conn
        self._answer_timeout_s = answer_timeout_s
        self.max_tasks = max_tasks
        #: The configured safe defaults (the ``limits`` section) a submission gets where it
        #: names none, whichever door it came through: HTTP, MCP or the CLI.
        self.default_task_limits = default_task_limits
        self.default_budget_usd = default_budget_usd
        self._snapshots = snapshots or JetStreamSnapshotStore(conn.client.jetstream())
        self._view = ClusterView()
        self._last_id = ""  # the envelope id of the event at self._view.last_seq
        #: run id -> the idempotency key it was submitted with
        self._keys: dict[str, str] = {}
        self._waiters: list[_Waiter] = []
        self._advanced = anyio.Event()

    @property
    def connection(self) -> Connection:
        """The cluster connection this front door uses."""
        return self._conn

    @property
    def view(self) -> ClusterView:
        """The cluster view as of the last event the follower applied."""
        return self._view

    # -- reading ---------------------------------------------------------------------

    def runs(self) -> list[RunView]:
        """Every run, oldest submission first."""
        return sorted(self._view.runs.values(), key=lambda r: (r.submitted_at, r.run_id))

    def run(self, run_id: str) -> RunView:
        """One run.

        Raises:
            UnknownEntityError: no run has this id.
        """
        run = self._view.runs.get(run_id)
        if run is None:
            raise UnknownEntityError("run", run_id)
        return run

    def task(self, ref: str) -> TaskView:
        """One task, as ``RUN/TASK`` or a task id that only one run has.

        Raises:
            UnknownEntityError: no such task.
            AmbiguousTaskError: several runs have a task of that id.
        """
        return find_task(self._view, ref)

    def workers(self) -> list[WorkerView]:
        """Every worker the log knows, by id."""
        return sorted(self._view.workers.values(), key=lambda w: w.worker_id)

    async def task_events(self, ref: str) -> list[StoredEvent]:
        """Every event of one task (its transcript is the ``task.progress`` among them).

        Read from the log on the task's own subjects, so it costs what the task wrote,
        not what the whole log holds.

        Raises:
            UnknownEntityError: no such task.
            AmbiguousTaskError: several runs have a task of that id.
            EventStoreError: the log could not be read.
        """
        task = self.task(ref)
        return await read_all(self._conn.log, subjects=task_filter(task.run_id, task.task_id))

    @asynccontextmanager
    async def open_run_events(
        self, run_id: str, *, from_seq: int = 1
    ) -> AsyncIterator[AsyncIterator[StoredEvent]]:
        """A run's events from stream sequence ``from_seq``: the stored ones, then live.

        One ordered reader on the run's subjects does both, so there is no gap and no
        duplicate between the replay and the live part; a client that reconnects with
        the sequence after the last one it saw loses nothing.

        Raises:
            UnknownEntityError: no run has this id.
            EventStoreError: the log could not be read.
        """
        self.run(run_id)
        async with self._conn.log.open_reader(
            from_seq=max(from_seq, 1), subjects=run_filter(run_id), follow=True
        ) as events:
            yield events

    async def wait_caught_up(self, seq: int) -> None:
        """Wait until the view has applied every event up to ``seq``.

        Raises:
            TimeoutError: the follower did not get there within the answer timeout.
        """
        with anyio.fail_after(self._answer_timeout_s):
            while self._view.last_seq < seq:
                await self._advanced.wait()

    # -- commands --------------------------------------------------------------------

    async def submit_run(
        self, command: SubmitRun, *, command_id: str | None = None, wait: bool = True
    ) -> Submission:
        """Publish ``command``; with ``wait``, return once the driver recorded the run.

        A run id the view already knows is refused here, without a round trip.

        Raises:
            ConfigError: the run breaks a bound (too many tasks, a bad fan-out template).
            CommandRefusedError: the driver refused the run (or its id is taken).
            DriverUnavailableError: ``wait`` and no driver recorded it in time.
            EventStoreError: the command could not be published.
        """
        command = with_safe_defaults(
            command, task_limits=self.default_task_limits, budget_usd=self.default_budget_usd
        )
        bound = submission_problem(command, max_tasks=self.max_tasks)
        if bound is not None:
            raise ConfigError(bound[0], "request", bound[1])
        key = command.idempotency_key
        if key and self._keys.get(command.run_id) == key:
            # A retry of a submission the log already has: the same run, not a second one.
            return Submission(command.run_id, "", 0, accepted=True)
        if command.run_id in self._view.runs:
            raise CommandRefusedError(
                "run.submit", f"run {command.run_id!r} already exists; choose another run id"
            )
        command_id = command_id or f"submit-{command.run_id}-{uuid4().hex[:8]}"
        if not wait:
            seq = await self._publish(command, command_id)
            return Submission(command.run_id, command_id, seq, accepted=False)

        def accepted(stored: StoredEvent) -> bool:
            event = stored.envelope.payload
            return isinstance(event, RunSubmitted) and event.run_id == command.run_id

        seq, _ = await self._ask(command, command_id, accepted)
        return Submission(command.run_id, command_id, seq, accepted=True)

    async def cancel(self, ref: str, *, reason: str = "") -> Event:
        """Cancel a run (by id) or one task (``RUN/TASK`` or a unique task id).

        Returns the driver's answer: ``RunCancelled``, or ``TaskCancelled`` /
        ``TaskSkipped`` for a task.

        Raises:
            UnknownEntityError: no such run or task.
            AmbiguousTaskError: several runs have a task of that id.
            CommandRefusedError: the driver refused (e.g. it already ended).
            DriverUnavailableError: no driver answered in time.
        """
        if ref in self._view.runs:
            return await self.cancel_run(ref, reason=reason)
        task = self.task(ref)
        return await self.cancel_task(task.run_id, task.task_id, reason=reason)

    async def cancel_run(self, run_id: str, *, reason: str = "") -> RunCancelled:
        """Cancel a run and wait for the driver's ``RunCancelled``.

        Raises:
            UnknownEntityError: no run has this id.
            CommandRefusedError: the driver refused (e.g. the run already ended).
            DriverUnavailableError: no driver answered in time.
        """
        self.run(run_id)
        event = await self._answer(CancelRun(run_id=run_id, reason=reason), (RunCancelled,))
        assert isinstance(event, RunCancelled)
        return event

    async def cancel_task(
        self, run_id: str, task_id: str, *, reason: str = ""
    ) -> TaskCancelled | TaskSkipped:
        """Cancel one task (its dependents are skipped) and wait for the driver's answer.

        Raises:
            UnknownEntityError: no such task.
            CommandRefusedError: the driver refused (e.g. the task already ended).
            DriverUnavailableError: no driver answered in time.
        """
        self.task(f"{run_id}/{task_id}")
        command = CancelTask(run_id=run_id, task_id=task_id, reason=reason)
        event = await self._answer(command, (TaskCancelled, TaskSkipped))
        assert isinstance(event, (TaskCancelled, TaskSkipped))
        return event

    async def rollback(
        self, run_id: str, *, to_task: str | None = None, to_sequence: int | None = None
    ) -> RunRolledBack:
        """Move a run's branch back: before a task merged, to a log sequence, or (neither)
        to the run's base commit.

        Raises:
            UnknownEntityError: no run has this id.
            CommandRefusedError: the driver refused (e.g. the run is still going).
            DriverUnavailableError: no driver answered in time.
        """
        self.run(run_id)
        if to_task is None and to_sequence is None:
            to_sequence = 0
        command = RollbackRun(run_id=run_id, to_task=to_task, to_sequence=to_sequence)
        event = await self._answer(command, (RunRolledBack,))
        assert isinstance(event, RunRolledBack)
        return event

    async def retry(self, run_id: str, task_ids: tuple[str, ...] = ()) -> RunRetried:
        """Run an ended run's unfinished tasks (or ``task_ids``) again, from its
        integration branch as it is now; wait for the driver's ``RunRetried``.

        Raises:
            UnknownEntityError: no run has this id.
            CommandRefusedError: the driver refused (the run is open or rolled back, a
                task is unknown or merged).
            DriverUnavailableError: no driver answered in time.
        """
        self.run(run_id)
        event = await self._answer(RetryRun(run_id=run_id, task_ids=task_ids), (RunRetried,))
        assert isinstance(event, RunRetried)
        return event

    async def _answer(self, command: Command, done: tuple[type[Event], ...]) -> Event:
        """Publish a command about a run or task; the driver's matching event."""
        target_run = getattr(command, "run_id", None)
        target_task = getattr(command, "task_id", None)

        def answered(stored: StoredEvent) -> bool:
            event = stored.envelope.payload
            if not isinstance(event, done) or getattr(event, "run_id", None) != target_run:
                return False
            return target_task is None or getattr(event, "task_id", None) == target_task

        command_id = f"{type(command).__name__.lower()}-{uuid4().hex}"
        _, found = await self._ask(command, command_id, answered)
        return found.envelope.payload

    async def _ask(
        self, command: Command, command_id: str, wanted: Callable[[StoredEvent], bool]
    ) -> tuple[int, StoredEvent]:
        """Publish and wait for the first event ``wanted`` accepts, or the refusal.

        The waiter is registered before the publish, so the answer cannot slip past it.
        """

        def answer(stored: StoredEvent) -> bool:
            event = stored.envelope.payload
            if isinstance(event, CommandRejected) and event.command_id == command_id:
                return True
            return wanted(stored)

        waiter = _Waiter(answer)
        self._waiters.append(waiter)
        try:
            seq = await self._publish(command, command_id)
            with anyio.move_on_after(self._answer_timeout_s):
                await waiter.done.wait()
        finally:
            self._waiters.remove(waiter)
        if waiter.found is None:
            raise DriverUnavailableError(
                f"no driver answered {command_id} within {self._answer_timeout_s:.0f}s: start "
                f"one with 'claudecluster driver --nats {redact_url(self._conn.url)}'"
            )
        event = waiter.found.envelope.payload
        if isinstance(event, CommandRejected):
            raise CommandRefusedError(event.command_type, event.reason)
        return seq, waiter.found

    async def _publish(self, command: Command, command_id: str) -> int:
        return await publish_command(
            self._conn.client.jetstream(), command, command_id=command_id, now=datetime.now(UTC)
        )

    # -- following the log -----------------------------------------------------------

    async def follow(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Keep the view current until cancelled; ready once caught up with the log.

        Raises:
            EventStoreError: the log could not be read.
        """
        target = await self._conn.log.last_seq()
        started = False
        # From the newest usable snapshot of the view and the events after it, not from
        # the first event of the cluster's life.
        async with open_view_from_snapshot(self._conn.log, self._snapshots, follow=True) as (
            view,
            events,
        ):
            self._view = view
            if self._view.last_seq >= target:
                task_status.started()
                started = True
            async for stored in events:
                self._view = apply(self._view, stored)
                event = stored.envelope.payload
                if isinstance(event, RunSubmitted) and event.idempotency_key:
                    self._keys.setdefault(event.run_id, event.idempotency_key)
                self._last_id = stored.envelope.id
                for waiter in self._waiters:
                    if waiter.found is None and waiter.wanted(stored):
                        waiter.found = stored
                        waiter.done.set()
                advanced, self._advanced = self._advanced, anyio.Event()
                advanced.set()
                if not started and self._view.last_seq >= target:
                    task_status.started()
                    started = True

    async def keep_snapshotting(
        self, *, every_s: float = SNAPSHOT_EVERY_S, min_events: int = SNAPSHOT_MIN_EVENTS
    ) -> None:
        """Snapshot the view every ``every_s`` if ``min_events`` came since; until cancelled."""
        await keep_snapshotting(
            lambda: (self._view, self._last_id),
            self._snapshots,
            every_s=every_s,
            min_events=min_events,
        )


@asynccontextmanager
async def open_front_door(
    conn: Connection,
    *,
    answer_timeout_s: float = DEFAULT_ANSWER_TIMEOUT_S,
    max_tasks: int = DEFAULT_MAX_TASKS,
    default_task_limits: TaskLimits = NO_LIMITS,
    default_budget_usd: float | None = None,
) -> AsyncIterator[FrontDoor]:
    """A front door on ``conn`` whose view has caught up with the log; closed on exit.

    Args:
        conn: the cluster connection.
        answer_timeout_s: how long to wait for the driver's answer to a command.
        max_tasks: the configured cap on a run's tasks (``driver.max_tasks``).
        default_task_limits: per-task limits a submission gets where it names none.
        default_budget_usd: the budget a submission gets where it names none.

    Raises:
        EventStoreError: the log could not be read.
    """
    door = FrontDoor(conn, answer_timeout_s=answer_timeout_s, max_tasks=max_tasks,
                     default_task_limits=default_task_limits,
                     default_budget_usd=default_budget_usd)  # fmt: skip
    async with anyio.create_task_group() as group:
        await group.start(door.follow)
        group.start_soon(door.keep_snapshotting)
        _log.debug("front door ready", last_seq=door.view.last_seq)
        try:
            yield door
        finally:
            group.cancel_scope.cancel()
