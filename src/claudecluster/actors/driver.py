"""The driver's decisions, free of I/O: what to record, dispatch, merge and roll back next.

:func:`decide` takes one message (a stored event in log order, a command, the outcome of
an effect, or a clock tick) and returns the effects the shell must carry out. The same
function runs live (runtime/driver.py), after a crash (replay the log, then tick), and in
the deterministic simulations on a virtual clock.

The decisions are level-triggered: after every message the driver looks at where each
touched run stands and asks for whatever is missing (a plan, a dispatch, a merge, a
retry, the run's end). So a restarted driver needs no memory of what it was doing: the
log says where things stand, and every effect is idempotent (deterministic event ids,
appends conditional on the last sequence of their scope, work-message ids per attempt).
While an effect is in flight its key is *pending*, and it stays pending until the log has
caught up with what the effect recorded, so nothing is asked for twice.

A message costs what it concerns, not the number of open runs: a :class:`Tick` looks only
at runs with a timer due (a retry) and, while the caps and the pace allow a start, at
runs waiting for one (``want_start``, ``want_room``). Every other change to a run comes
with a message that touches it, so a tick has nothing to find there.

Scheduling rules, in order:

* a task is released when every dependency has **merged** (not merely succeeded), so its
  workspace starts from a base that contains its dependencies' changes;
* ready tasks go by the longest remaining path first, then priority, then plan order;
* starts are capped per run and globally, paced by a token bucket, slowed fleet-wide
  while the API reports rate limits, and stopped when the run's budget is spent;
* results merge one at a time per run, in the order they succeeded, which is a
  topological order because dependents only start after their dependencies merged.
"""

from __future__ import annotations

import dataclasses
import heapq
import zlib
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Final, Literal

import msgspec

from claudecluster.actors import collisions
from claudecluster.actors.merging import resolution_note, stop_reason
from claudecluster.domain.graph import TaskGraph
from claudecluster.domain.kinds import KIND_PROFILES
from claudecluster.domain.lifecycle import (
    ACTIVE_TASK_STATES,
    HELD_TASK_STATES,
    OPEN_RUN_STATES,
    RunState,
    TaskState,
)
from claudecluster.domain.limits import with_default_limits
from claudecluster.domain.submission import DEFAULT_MAX_TASKS, submission_problem
from claudecluster.errors import GraphError
from claudecluster.events import event_ids as ids
from claudecluster.events.envelope import CommandEnvelope, StoredEvent
from claudecluster.events.model import (
    CancelRun,
    CancelTask,
    CollisionPredicted,
    CollisionSettled,
    Command,
    CommandRejected,
    Event,
    MergeConflict,
    RollbackRun,
    RunBudgetReached,
    RunCancelled,
    RunCompleted,
    RunEvent,
    RunFailed,
    RunPlanned,
    RunPolicy,
    RunRolledBack,
    RunSubmitted,
    SubmitRun,
    TaskCancelled,
    TaskEvent,
    TaskFilesTouched,
    TaskLimits,
    TaskMerged,
    TaskPreempted,
    TaskQueued,
    TaskRateLimited,
    TaskRetryScheduled,
    TaskSkipped,
    TaskSpec,
    TaskSucceeded,
    WorkerLeft,
    WorkerLost,
)
from claudecluster.events.subjects import scope_filter
from claudecluster.projections.cluster import ClusterView, apply
from claudecluster.projections.views import TaskView, task_key

__all__ = [
    "Dispatch",
    "DriverConfig",
    "DriverState",
    "Effect",
    "EffectFailed",
    "EffectSettled",
    "Merge",
    "MergeBatch",
    "Message",
    "Plan",
    "PublishCommand",
    "Record",
    "Resume",
    "Rollback",
    "RunBook",
    "Tick",
    "Verify",
    "WorkerSeen",
    "decide",
    "retry_limits",
]

_ACTIVE: Final = ACTIVE_TASK_STATES
# A worker holds these attempts: it stops the agent on a cancel and records it. A queued
# attempt is still only a message, so the driver records its cancellation; a worker that
# takes the message later finds the task cancelled and drops it (its claim is
# conditional on the history it read, so the two cannot both win).
_HELD_BY_WORKER: Final = HELD_TASK_STATES
_DONE: Final = frozenset({TaskState.MERGED, TaskState.SKIPPED, TaskState.CANCELLED})
_OPEN_RUN: Final = OPEN_RUN_STATES
_DEFAULT_MAX_TURNS: Final = 30
_DEFAULT_WALL_TIME_S: Final = 1800.0


@dataclass(frozen=True, slots=True)
class DriverConfig:
    """Fleet-wide limits the driver applies to every run.

    Attributes:
        max_running: attempts queued or running at once, all runs together.
        max_tasks: tasks one run may have (plan, fan-out or planner).
        starts_per_s: sustained task starts per second (token bucket rate).
        start_burst: starts allowed at once after a quiet spell (bucket size).
        lost_after_s: a worker silent this long is declared lost.
        rate_limit_backoff_s: the first pause of all starts after a rate-limit report.
        rate_limit_backoff_max_s: the longest such pause (the pause doubles per report).
    """

    max_running: int = 64
    #: tasks one run may have; larger submissions are refused, larger plans fail the run
    max_tasks: int = DEFAULT_MAX_TASKS
    starts_per_s: float = 10.0
    start_burst: int = 10
    lost_after_s: float = 20.0
    rate_limit_backoff_s: float = 2.0
    rate_limit_backoff_max_s: float = 60.0


# ----------------------------------------------------------------------------------------
# Messages in, effects out
# ----------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Tick:
    """Time passed; timers (retries, liveness, pacing) may be due."""


@dataclass(frozen=True, slots=True)
class Resume:
    """The driver (re)started and has read the log: redo what may have been cut off."""


@dataclass(frozen=True, slots=True)
class EffectSettled:
    """The shell carried out the effect with ``key``; ``seq`` is the last event it wrote."""

    key: str
    seq: int = 0


@dataclass(frozen=True, slots=True)
class EffectFailed:
    """The shell could not carry out the effect with ``key`` (it will be asked again)."""

    key: str
    reason: str


@dataclass(frozen=True, slots=True)
class WorkerSeen:
    """A worker said it was alive at ``at``: its entry in the live registry.

    Liveness is not in the log (a heartbeat event every few seconds per worker was most
    of it); the shell watches the registry and hands each entry over as this message.
    """

    worker_id: str
    at: datetime


Message = StoredEvent | CommandEnvelope | Tick | Resume | EffectSettled | EffectFailed | WorkerSeen


@dataclass(frozen=True, slots=True)
class Record:
    """Append ``event`` with id ``event_id``, if its scope's last sequence is still
    ``expected_last`` (a lost race is fine: the driver decides again on what won)."""

    key: str
    event: Event
    event_id: str
    expected_last: int | None
    #: the command this records the outcome of: stored as the envelope's causation id,
    #: which is how a redelivered command is known as done (see ``commands_seen``)
    causation_id: str | None = None


@dataclass(frozen=True, slots=True)
class Dispatch:
    """Record ``queued`` and put its work item on the pool's queue.

    With ``queued.resolves_conflict`` the shell first makes the conflicted merge of
    ``conflict`` (ours, theirs) on ``integration_branch`` and uses it as the base commit.
    ``repo`` is the run's repository, whose history the work item names.
    """

    key: str
    run_id: str
    spec: TaskSpec
    queued: TaskQueued
    event_id: str
    expected_last: int
    conflict: tuple[str, str] | None = None
    republish: bool = False
    repo: str = ""
    integration_branch: str = ""
    #: the run's model, for a task that names none
    model: str = ""


@dataclass(frozen=True, slots=True)
class Plan:
    """Turn the submitted run into a validated graph and record RunPlanned (or RunFailed)."""

    key: str
    submitted: RunSubmitted


@dataclass(frozen=True, slots=True)
class Merge:
    """Merge the task's result onto the integration branch, which must be at ``head``;
    run the verify command after it when ``verify``; record TaskMerged, MergeConflict
    or (verify failed) TaskFailed."""

    key: str
    run_id: str
    task_id: str
    attempt: int
    title: str
    result: TaskSucceeded
    head: str
    integration_branch: str
    verify: bool
    on_conflict: Literal["resolve", "stop"]
    expected_last: int
    #: the conflict this attempt was asked to resolve: its result is judged against it
    resolving: MergeConflict | None = None
    #: the commit a resolution attempt started from (what it hands back if it changed nothing)
    resolution_base: str = ""
    #: the run's repository, which holds the integration branch
    repo: str = ""
    #: the run's verify command and its time limit (used when ``verify``)
    verify_command: str = ""
    verify_timeout_s: float = 600.0


@dataclass(frozen=True, slots=True)
class MergeBatch:
    """Merge several results at once, in order, and verify them once together.

    The shell stacks ``items`` as one commit each on ``head``, runs the verify command on
    the top, and on a failure bisects to the first result that breaks it: the results
    before it merge, it alone is recorded as failed (class ``verify``), the ones after it
    wait for the next batch. A result that conflicts, or is refused, after the first one
    ends the batch there: it is merged first in the next batch, onto a verified head.
    """

    key: str
    run_id: str
    items: tuple[Merge, ...]
    head: str
    verify: bool
    repo: str = ""
    verify_command: str = ""
    verify_timeout_s: float = 600.0
    #: verify runs a bisection may make at once
    verify_parallel: int = 1


@dataclass(frozen=True, slots=True)
class Verify:
    """Run the verify command once on the finished integration branch, then record the
    run's end: ``done`` if it passes, RunFailed if not."""

    key: str
    run_id: str
    head: str
    done: RunCompleted
    repo: str = ""
    verify_command: str = ""
    verify_timeout_s: float = 600.0


@dataclass(frozen=True, slots=True)
class Rollback:
    """Move the integration branch to ``event.to_commit`` and record ``event``."""

    key: str
    integration_branch: str
    event: RunRolledBack
    event_id: str
    #: the rollback command this records the outcome of (see :class:`Record`)
    causation_id: str | None = None
    repo: str = ""


@dataclass(frozen=True, slots=True)
class PublishCommand:
    """Publish a command to the workers (say, cancel a failed run's running tasks)."""

    key: str
    command: Command
    command_id: str


Effect = Record | Dispatch | Plan | Merge | MergeBatch | Verify | Rollback | PublishCommand


# ----------------------------------------------------------------------------------------
# State
# ----------------------------------------------------------------------------------------


@dataclass(slots=True)
class RunBook:
    """What the driver tracks of one run beyond the projections, kept incrementally so a
    decision costs the size of what changed, not the size of the run."""

    run_id: str
    submitted: RunSubmitted
    submitted_at: datetime
    graph: TaskGraph | None = None
    base_commit: str = ""
    integration_branch: str = ""
    head: str = ""
    #: dependencies not yet merged, per task
    waiting: dict[str, int] = field(default_factory=dict)
    #: released tasks: a heap of (-remaining path, -priority, plan position, task id)
    ready: list[tuple[float, int, int, str]] = field(default_factory=list)
    #: attempts queued, assigned or running
    active: set[str] = field(default_factory=set)
    #: tasks in a state that asks for a decision: failed, waiting to retry, conflicted,
    #: or active on a worker that was lost
    attention: set[str] = field(default_factory=set)
    #: merged, skipped or cancelled
    done: set[str] = field(default_factory=set)
    #: failed for good (no retry left, or a class that is not retried)
    failed: set[str] = field(default_factory=set)
    #: succeeded tasks waiting for the merge lane, in order of success
    to_merge: list[str] = field(default_factory=list)
    results: dict[str, TaskSucceeded] = field(default_factory=dict)
    merged: set[str] = field(default_factory=set)
    #: (seq, task id, commit) of each merge still on the branch, for rollback
    merges: list[tuple[int, str, str]] = field(default_factory=list)
    retry_at: dict[str, datetime] = field(default_factory=dict)
    queued: dict[str, TaskQueued] = field(default_factory=dict)
    conflicts: dict[str, MergeConflict] = field(default_factory=dict)
    #: the conflict each live resolution attempt was queued to resolve
    resolving: dict[str, MergeConflict] = field(default_factory=dict)
    skipped_for: set[str] = field(default_factory=set)
    #: "task/attempt" of attempts told to stop because the run is failing
    cancel_sent: set[str] = field(default_factory=set)
    #: tasks whose effect failed: a recorded TaskQueued may have no work item out yet
    unsent: set[str] = field(default_factory=set)
    budget_reached: bool = False
    ended: bool = False
    #: the run failed and its policy says to roll back what it merged
    roll_back: bool = False
    #: why the run must end as failed once nothing runs any more
    stopping: str = ""
    #: a recorded event of this run the driver cannot apply (a cyclic RunPlanned, say):
    #: the run is failed with this reason, once, and nothing else is decided for it
    rejected: str = ""
    #: live collision prediction: task -> (attempt, files) its worker last reported
    touched: dict[str, tuple[int, frozenset[str]]] = field(default_factory=dict)
    #: a report came in since the live attempts were last compared (comparing them is
    #: quadratic in the live attempts, so it is done only when something changed)
    touched_fresh: bool = False
    #: task -> log sequence of its latest TaskQueued (which of two attempts started later)
    queued_seq: dict[str, int] = field(default_factory=dict)
    #: (later, earlier) -> (sequence, prediction) of predictions not yet settled
    predicted: dict[tuple[str, str], tuple[int, CollisionPredicted]] = field(default_factory=dict)
    #: pairs whose prediction was settled (a pair is predicted once per run)
    settled: set[tuple[str, str]] = field(default_factory=set)
    #: task -> (sequence, files) of each merge conflict, to tell whether a prediction hit
    conflicts_seen: dict[str, list[tuple[int, tuple[str, ...]]]] = field(default_factory=dict)
    #: restart_later: task -> the preemption of its attempt, while it waits to be requeued
    preempted: dict[str, TaskPreempted] = field(default_factory=dict)
    #: (later, earlier) pairs whose later attempt was preempted (settled as "restarted")
    preempted_pairs: set[tuple[str, str]] = field(default_factory=set)

    @property
    def policy(self) -> RunPolicy:
        """The run's policy, as submitted."""
        return self.submitted.policy


@dataclass(slots=True)
class DriverState:
    """Everything the driver knows; rebuilt by feeding the log to :func:`decide`."""

    config: DriverConfig = field(default_factory=DriverConfig)
    view: ClusterView = field(default_factory=ClusterView)
    runs: dict[str, RunBook] = field(default_factory=dict)
    #: scope filter -> last sequence, for conditional appends
    scope_seq: dict[str, int] = field(default_factory=dict)
    #: effect key -> the sequence the log must reach before the key is free (0: in flight)
    pending: dict[str, int] = field(default_factory=dict)
    #: dispatches in flight that start a task not yet active: effect key -> run id
    starting: dict[str, str] = field(default_factory=dict)
    #: handled command ids (a redelivered command is not acted on twice)
    commands_seen: set[str] = field(default_factory=set)
    #: run id -> the idempotency key it was submitted with, from the log and from
    #: submissions decided but not yet read back (a retry with the key is the same run)
    idempotency: dict[str, str] = field(default_factory=dict)
    #: attempts queued, assigned or running in open runs (the sum of their ``active``),
    #: kept as each task moves so the global cap costs nothing to check
    active_count: int = 0
    #: (seq, key) of settled effects waiting for the log to reach seq (a heap; entries
    #: whose key was released or re-asked for meanwhile are skipped when popped)
    settling: list[tuple[int, str]] = field(default_factory=list)
    #: (when, run id): a run has something to do at that time (a retry comes due); a heap
    timers: list[tuple[datetime, str]] = field(default_factory=list)
    #: open runs with released tasks waiting for a start (caps, token bucket, rate limit)
    want_start: set[str] = field(default_factory=set)
    #: open runs with a due retry or a conflict to resolve waiting for room under the caps
    want_room: set[str] = field(default_factory=set)
    #: how many times a run was reconciled, all runs together: what a message cost
    reconciled: int = 0
    tokens: float = 0.0
    tokens_at: datetime | None = None
    throttle_until: datetime | None = None
    throttle_s: float = 0.0
    last_rate_limit: datetime | None = None
    now: datetime | None = None
    #: worker id -> the latest time its registry entry said it was alive (see WorkerSeen)
    seen: dict[str, datetime] = field(default_factory=dict)
    #: run id -> the book of an ended run, encoded (see :func:`book`): a long-lived
    #: cluster's finished runs outnumber its open ones by thousands, and kept as objects
    #: they made every snapshot and restart cost the whole history
    finished: dict[str, bytes] = field(default_factory=dict)

    def book(self, run_id: str) -> RunBook | None:
        """The run's book, open or finished (a finished one decoded; a copy, not the
        state's), or None for a run the driver never saw submitted."""
        live = self.runs.get(run_id)
        if live is not None:
            return live
        data = self.finished.get(run_id)
        return None if data is None else _decode_book(data)

    def active_total(self) -> int:
        """Attempts queued or running (or about to be), all open runs together.

        Costs the number of dispatches in flight, not the number of runs: it is asked for
        on every start decision, and a tick once asked it for every open run.
        """
        in_flight = 0
        for key, run_id in self.starting.items():
            book = self.runs.get(run_id)
            if book is not None and not book.ended:
                in_flight += key[len(f"task:{run_id}:") :] not in book.active
        return self.active_count + in_flight

    def active_in(self, book: RunBook) -> int:
        """Attempts of one run queued or running, counting dispatches still in flight."""
        prefix = f"task:{book.run_id}:"
        in_flight = sum(
            1
            for key in self.starting
            if key.startswith(prefix) and key[len(prefix) :] not in book.active
        )
        return len(book.active) + in_flight


# ----------------------------------------------------------------------------------------
# decide
# ----------------------------------------------------------------------------------------


class _FrozenBook(msgspec.Struct, frozen=True, kw_only=True):
    """A finished book as stored: its predictions (keyed by pairs, which a sorted
    encoding cannot key a map by) as a list in pair order, the rest as is."""

    book: RunBook
    predicted: list[tuple[tuple[str, str], tuple[int, CollisionPredicted]]]


#: Finished books are encoded with sets and dict keys sorted, so a book frozen from a
#: restored snapshot is the same bytes as one frozen in a full replay.
_BOOK_ENCODER: Final = msgspec.msgpack.Encoder(order="deterministic")
_FROZEN_DECODER: Final = msgspec.msgpack.Decoder(_FrozenBook)


def _encode_book(book: RunBook) -> bytes:
    """The book, compressed: a finished book is read back rarely, and its copies of the
    run's events (results, work items) compress about fourfold, which is that much less
    snapshot to move at every restart."""
    predicted = sorted(book.predicted.items(), key=lambda item: item[0])
    frozen = _FrozenBook(book=dataclasses.replace(book, predicted={}), predicted=predicted)
    return zlib.compress(_BOOK_ENCODER.encode(frozen), 1)


def _decode_book(data: bytes) -> RunBook:
    frozen = _FROZEN_DECODER.decode(zlib.decompress(data))
    book = frozen.book
    book.predicted = dict(frozen.predicted)
    return book


def _live_book(state: DriverState, run_id: str) -> RunBook | None:
    """The run's book to change: a finished one is decoded back into the live books (the
    rare message that still concerns it, say a rollback), and frozen again by
    :func:`_freeze_finished` at the end of the decision."""
    book = state.runs.get(run_id)
    if book is None and run_id in state.finished:
        book = state.runs[run_id] = _decode_book(state.finished.pop(run_id))
    return book


def _freeze_finished(state: DriverState, run_ids: set[str]) -> None:
    """Move the books of runs that ended, with nothing left to do, out of the live books.

    Nothing a live run's decision reads is in them (every scan of the books skips ended
    runs), so the live state, and each snapshot of it, costs the open runs, not the
    history. A book waiting for its rollback stays live until the rollback is recorded.
    """
    for run_id in run_ids:
        book = state.runs.get(run_id)
        if book is not None and book.ended and not book.roll_back:
            # Through the decoder once: a value held as another type than its field's
            # (an int where a float is declared) is encoded as the field's type, so the
            # bytes are the same whether the book was built live or from a snapshot.
            data = _encode_book(state.runs.pop(run_id))
            state.finished[run_id] = _encode_book(_decode_book(data))


def decide(state: DriverState, message: Message, now: datetime) -> list[Effect]:
    """Fold ``message`` into ``state`` (in place) and return the effects to carry out.

    Deterministic and free of I/O: the same messages at the same times give the same
    effects, which is what replay and the simulations rely on. ``state`` belongs to one
    caller, which feeds stored events in log order. The books of runs the message ended
    leave the live books (see :func:`_freeze_finished`).
    """
    effects, looked_at = _decide(state, message, now)
    _freeze_finished(state, looked_at)
    return effects


def _decide(state: DriverState, message: Message, now: datetime) -> tuple[list[Effect], set[str]]:
    """:func:`decide`'s work, and the runs it looked at."""
    state.now = now
    touched: set[str] = set()
    effects: list[Effect] = []
    wake: set[str] = set()
    match message:
        case StoredEvent():
            if message.envelope.causation_id is not None:
                # The outcome of a command: a redelivery of that command is a no-op.
                state.commands_seen.add(message.envelope.causation_id)
            touched |= _fold_guarded(state, message)
            touched |= _release_pending(state)
        case CommandEnvelope():
            effects += _command_guarded(state, message)
            run_id = getattr(message.payload, "run_id", None)
            if isinstance(run_id, str):
                touched.add(run_id)
        case EffectSettled(key=key, seq=seq):
            if key in state.pending:
                state.pending[key] = max(seq, 1)
                heapq.heappush(state.settling, (max(seq, 1), key))
            touched |= _release_pending(state)
            touched |= _runs_of_key(key)
        case EffectFailed(key=key):
            state.pending.pop(key, None)
            state.starting.pop(key, None)
            touched |= _runs_of_key(key)
            for run_id in _runs_of_key(key):
                if run_id in state.runs:
                    _restore_ready(state, state.runs[run_id])
            kind, _, scope = key.partition(":")
            run_id, _, task_id = scope.partition(":")
            if kind == "task" and run_id in state.runs and task_id:
                state.runs[run_id].unsent.add(task_id)
        case Resume():
            effects += _republish(state)
            for resumed in state.runs.values():
                _restore_ready(state, resumed)
            touched |= {r for r, book in state.runs.items() if book.roll_back}
            touched |= {r for r, book in state.runs.items() if not book.ended}
        case WorkerSeen(worker_id=worker_id, at=at):
            if worker_id not in state.seen or at > state.seen[worker_id]:
                state.seen[worker_id] = at
        case Tick():
            # Only what time can change: retries that came due, and runs waiting for a
            # slot or the pace. Everything else moves only on a message that touches it.
            touched |= _due(state, now)
            effects += _liveness(state, now)
            if state.active_total() < state.config.max_running:
                wake = state.want_room | state.want_start
    _asked(state, effects)
    asked = len(effects)
    for run_id in sorted(touched | wake):
        book = state.runs.get(run_id)
        if run_id not in touched and not _may_start(state, run_id, now):
            continue  # woken for a start, but the slots or the pace went to runs before it
        if book is not None and not book.ended:
            state.reconciled += 1
            effects += _reconcile_guarded(state, book, now)
        elif book is not None and book.roll_back and _free(state, f"run:{run_id}:rollback"):
            effects.append(_rollback_effect(book, 0, None, ids.rolled_back_on_failure_id(run_id)))
        if book is not None:
            _note_wants_guarded(state, book, now)
        _asked(state, effects[asked:])
        asked = len(effects)
    return effects, touched | wake


# Nothing recorded may stop the driver: the log keeps every event for good, so an event
# that made decide() raise would stop it again at every start. What the core cannot apply
# ends its run (the one thing a bad event can spoil) with the reason, recorded once; every
# other run goes on. The guards catch every Exception on purpose: a bug that lets one
# through here is still a bug, but it costs one run, not the cluster.


def _fold_guarded(state: DriverState, stored: StoredEvent) -> set[str]:
    try:
        return _fold(state, stored)
    except Exception as exc:  # noqa: BLE001 - see above: the run is failed with the reason
        return _reject_run(state, stored, exc)


def _reject_run(state: DriverState, stored: StoredEvent, exc: Exception) -> set[str]:
    """Mark the run of an event the core could not apply as rejected, naming why."""
    event = stored.envelope.payload
    state.view = msgspec.structs.replace(state.view, last_seq=max(state.view.last_seq, stored.seq))
    tag = type(event).__struct_config__.tag
    reason = f"the driver cannot apply {tag} (sequence {stored.seq}): {_problem(exc)}"
    if not isinstance(event, RunEvent):
        return set()  # a worker's event: the projection counted it as an anomaly
    book = state.runs.get(event.run_id)
    if book is None or book.ended:
        return set()
    if not book.rejected:
        book.rejected = reason
    return {event.run_id}


def _problem(exc: Exception) -> str:
    text = str(exc) or type(exc).__name__
    return text if isinstance(exc, GraphError) else f"{type(exc).__name__}: {text}"


def _command_guarded(state: DriverState, envelope: CommandEnvelope) -> list[Effect]:
    try:
        return _command(state, envelope)
    except Exception as exc:  # a poison command is refused, never redelivered (it re-raises)
        command = envelope.payload
        run_id = getattr(command, "run_id", None)
        if not isinstance(run_id, str):
            raise  # only run commands reach the core's handlers; the shell's guard logs it
        tag = str(type(command).__struct_config__.tag)
        reason = f"the driver cannot act on this command: {_problem(exc)}"
        return [_reject(state, run_id, envelope.id, tag, reason)]


def _reconcile_guarded(state: DriverState, book: RunBook, now: datetime) -> list[Effect]:
    if book.rejected:
        return _end_rejected(state, book)
    try:
        return _reconcile(state, book, now)
    except Exception as exc:  # noqa: BLE001 - the run is failed with the reason, once
        book.rejected = f"the driver cannot go on with this run: {_problem(exc)}"
        return _end_rejected(state, book)


def _note_wants_guarded(state: DriverState, book: RunBook, now: datetime) -> None:
    try:
        _note_wants(state, book, now)
    except Exception as exc:  # noqa: BLE001 - the run is failed with the reason, once
        state.want_start.discard(book.run_id)
        state.want_room.discard(book.run_id)
        if not book.ended and not book.rejected:
            book.rejected = f"the driver cannot go on with this run: {_problem(exc)}"
            heapq.heappush(state.timers, (now, book.run_id))  # the next tick ends it


def _end_rejected(state: DriverState, book: RunBook) -> list[Effect]:
    """The rejected run's RunFailed, once: its id is fixed, and once it is in the log the
    run is ended, so neither a replay nor a restart asks for it again."""
    key = f"run:{book.run_id}:end"
    if not _free(state, key):
        return []
    event = RunFailed(run_id=book.run_id, reason=book.rejected)
    return [_record(state, key, event, ids.run_failed_id(book.run_id))]


def _asked(state: DriverState, effects: list[Effect]) -> None:
    """Note effects as asked for: their keys pending, their starts counted.

    Done after each run is looked at, not once at the end, so the next run of the same
    message sees the starts just decided under the global cap.
    """
    for effect in effects:
        state.pending.setdefault(effect.key, 0)
        if isinstance(effect, PublishCommand) and isinstance(effect.command, CancelTask):
            cancelled = state.runs[effect.command.run_id]
            task = effect.command.task_id
            cancelled.cancel_sent.add(f"{task}/{_attempt(state, cancelled, task)}")
        if isinstance(effect, Dispatch) and not effect.republish:
            book = state.runs[effect.run_id]
            if effect.queued.task_id not in book.active:
                state.starting[effect.key] = effect.run_id


def _runs_of_key(key: str) -> set[str]:
    kind, _, rest = key.partition(":")
    return {rest.split(":", 1)[0]} if kind in {"run", "task", "merge"} else set()


def _release_pending(state: DriverState) -> set[str]:
    """Free the keys of settled effects whose events the log has reached; returns their
    runs, which may now decide what those keys held back."""
    last = state.view.last_seq
    runs: set[str] = set()
    while state.settling and state.settling[0][0] <= last:
        seq, key = heapq.heappop(state.settling)
        if state.pending.get(key) == seq:
            del state.pending[key]
            state.starting.pop(key, None)
            runs |= _runs_of_key(key)
    return runs


def _due(state: DriverState, now: datetime) -> set[str]:
    """The open runs whose timers came due (each timer fires once)."""
    runs: set[str] = set()
    while state.timers and state.timers[0][0] <= now:
        run_id = heapq.heappop(state.timers)[1]
        book = state.runs.get(run_id)
        if book is not None and not book.ended:
            runs.add(run_id)
    return runs


def _may_start(state: DriverState, run_id: str, now: datetime) -> bool:
    """Whether a run waiting for a start could get one: a free slot under the global cap,
    and a token unless what it waits to start is a retry or a resolution (not paced)."""
    if run_id not in state.want_room and not _pace_allows(state, now):
        return False  # checked first: it is O(1), the slot count is O(starts in flight)
    return state.active_total() < state.config.max_running


def _pace_allows(state: DriverState, now: datetime) -> bool:
    """Whether :func:`_take_token` would grant a start now (without taking it)."""
    config = state.config
    if state.throttle_until is not None and now < state.throttle_until:
        return False
    if state.tokens_at is None:
        return config.start_burst >= 1
    elapsed = max((now - state.tokens_at).total_seconds(), 0.0)
    return min(float(config.start_burst), state.tokens + elapsed * config.starts_per_s) >= 1.0


def _note_wants(state: DriverState, book: RunBook, now: datetime) -> None:
    """After a run was looked at: note whether it waits for a slot or the pace, so a tick
    wakes it (and only it) when one may be free."""
    run = state.view.runs.get(book.run_id)
    open_ = (
        not book.ended
        and not book.stopping
        and book.graph is not None
        and run is not None
        and run.state in _OPEN_RUN
    )
    if open_ and book.ready and not book.budget_reached:
        state.want_start.add(book.run_id)
    else:
        state.want_start.discard(book.run_id)
    if open_ and any(_waits_for_room(state, book, task_id, now) for task_id in book.attention):
        state.want_room.add(book.run_id)
    else:
        state.want_room.discard(book.run_id)


def _waits_for_room(state: DriverState, book: RunBook, task_id: str, now: datetime) -> bool:
    """A due retry or a resolvable conflict: started by :func:`_attend` when the caps
    leave room."""
    task = state.view.tasks[task_key(book.run_id, task_id)]
    if task.state is TaskState.RETRY_WAIT:
        due = book.retry_at.get(task_id)
        return due is not None and now >= due
    return (
        task.state is TaskState.CONFLICTED
        and book.policy.on_conflict != "stop"
        and _counted(task) <= book.policy.max_attempts
        and task_id in book.conflicts
    ) or (task.state is TaskState.PREEMPTED and _requeue_due(state, book, task_id))


def _free(state: DriverState, key: str) -> bool:
    return key not in state.pending


# ----------------------------------------------------------------------------------------
# Folding the log
# ----------------------------------------------------------------------------------------


def _fold(state: DriverState, stored: StoredEvent) -> set[str]:
    before = state.view
    if stored.seq <= before.last_seq:
        return set()
    state.view = apply(before, stored)
    event = stored.envelope.payload
    state.scope_seq[scope_filter(event)] = stored.seq
    if state.view.anomaly_count != before.anomaly_count:
        if isinstance(event, RunPlanned):
            _plan_refused(state, event, stored.seq)
        return {event.run_id} if isinstance(event, RunEvent) else set()
    if isinstance(event, TaskRateLimited):
        _throttle(state, event, stored.envelope.occurred_at)
    if isinstance(event, WorkerLeft | WorkerLost):
        state.seen.pop(event.worker_id, None)  # it no longer counts; a new join starts over
    if isinstance(event, WorkerLost):
        runs: set[str] = set()
        for key in event.orphaned_tasks:
            run_id, _, task_id = key.partition("/")
            book = _live_book(state, run_id)
            if book is not None and task_key(run_id, task_id) in state.view.tasks:
                book.attention.add(task_id)
                runs.add(run_id)
        return runs
    if not isinstance(event, RunEvent):
        return set()
    book = _live_book(state, event.run_id)
    match event:
        case RunSubmitted():
            if event.idempotency_key:
                state.idempotency[event.run_id] = event.idempotency_key
            if book is not None and not book.ended:
                state.active_count -= len(book.active)
            state.runs[event.run_id] = RunBook(
                run_id=event.run_id, submitted=event, submitted_at=stored.envelope.occurred_at
            )
        case RunPlanned() if book is not None:
            if len(event.tasks) > state.config.max_tasks:
                raise GraphError(
                    f"the plan has {len(event.tasks)} tasks, more than the limit of "
                    f"{state.config.max_tasks} per run"
                )
            _planned(book, event)
        case RunCompleted() | RunFailed() | RunCancelled() if book is not None:
            if not book.ended:
                state.active_count -= len(book.active)
            book.ended = True
            if isinstance(event, RunFailed) and book.policy.rollback_on_failure and book.merges:
                book.roll_back = True
        case RunRolledBack() if book is not None:
            book.roll_back = False
            book.head = event.to_commit
            reverted = set(event.reverted_tasks)
            book.merges = [m for m in book.merges if m[1] not in reverted]
        case RunBudgetReached() if book is not None:
            book.budget_reached = True
        case CollisionPredicted() if book is not None:
            pair = (event.task_id, event.other_task_id)
            if pair not in book.settled:
                book.predicted[pair] = (stored.seq, event)
        case CollisionSettled() if book is not None:
            pair = (event.task_id, event.other_task_id)
            book.predicted.pop(pair, None)
            book.settled.add(pair)
        case TaskEvent() if book is not None and book.graph is not None:
            _task_moved(state, book, event, stored)
        case _:
            pass
    return {event.run_id}


def _plan_refused(state: DriverState, event: RunPlanned, seq: int) -> None:
    """A plan the projections refused leaves its run waiting for a plan that would only be
    refused again (the planner is deterministic): the run is failed instead."""
    book = state.runs.get(event.run_id)
    run = state.view.runs.get(event.run_id)
    if book is None or book.ended or run is None or run.state is not RunState.SUBMITTED:
        return
    problem = state.view.recent_anomalies[-1].reason if state.view.recent_anomalies else ""
    book.rejected = book.rejected or (
        f"the driver cannot apply run.planned (sequence {seq}): {problem}"
    )


def _planned(book: RunBook, event: RunPlanned) -> None:
    book.graph = TaskGraph.build(event.tasks)
    book.base_commit = event.base_commit
    book.integration_branch = event.integration_branch
    book.head = event.base_commit
    for spec in event.tasks:
        book.waiting[spec.task_id] = len(set(spec.depends_on))
        if not spec.depends_on:
            _release(book, spec.task_id)


def _release(book: RunBook, task_id: str) -> None:
    assert book.graph is not None
    spec = book.graph.specs[task_id]
    heapq.heappush(
        book.ready,
        (-book.graph.rank[task_id], -spec.priority, book.graph.position[task_id], task_id),
    )


def _restore_ready(state: DriverState, book: RunBook) -> None:
    """Put back on the ready heap every released task that never got queued.

    A start is popped from the heap when it is decided, before its TaskQueued is in the
    log. If that decision is lost (its effect failed, or it was made while replaying the
    log after a restart, when effects are discarded), the task would otherwise stay
    pending forever: every dependency merged, so nothing releases it again.
    """
    if book.ended or book.graph is None:
        return
    on_heap = {entry[3] for entry in book.ready}
    for task_id, waiting in book.waiting.items():
        if waiting or task_id in on_heap or not _free(state, f"task:{book.run_id}:{task_id}"):
            continue
        if state.view.tasks[task_key(book.run_id, task_id)].state is TaskState.PENDING:
            _release(book, task_id)


def _task_moved(state: DriverState, book: RunBook, event: TaskEvent, stored: StoredEvent) -> None:
    assert book.graph is not None
    task_id = event.task_id
    task = state.view.tasks[task_key(book.run_id, task_id)]
    match event:
        case TaskQueued():
            book.queued[task_id] = event
            book.queued_seq[task_id] = stored.seq
            book.touched.pop(task_id, None)
            book.preempted.pop(task_id, None)
            book.retry_at.pop(task_id, None)
            conflict = book.conflicts.pop(task_id, None)
            if event.resolves_conflict and conflict is not None:
                book.resolving[task_id] = conflict
            else:
                book.resolving.pop(task_id, None)
        case TaskRetryScheduled():
            due = stored.envelope.occurred_at + timedelta(seconds=event.delay_s)
            book.retry_at[task_id] = due
            heapq.heappush(state.timers, (due, book.run_id))
        case TaskSucceeded():
            book.results[task_id] = event
            if task_id not in book.to_merge:
                book.to_merge.append(task_id)
        case MergeConflict():
            book.conflicts[task_id] = event
            book.conflicts_seen.setdefault(task_id, []).append((stored.seq, event.files))
        case TaskFilesTouched() if event.attempt == task.attempt:
            book.touched[task_id] = (event.attempt, frozenset(event.files))
            book.touched_fresh = True
        case TaskPreempted():
            book.preempted[task_id] = event
            book.preempted_pairs.add((task_id, event.other_task_id))
        case TaskMerged():
            book.head = event.commit
            book.merges.append((stored.seq, task_id, event.commit))
            if task_id not in book.merged:
                book.merged.add(task_id)
                for child in book.graph.dependents[task_id]:
                    book.waiting[child] -= 1
                    if book.waiting[child] == 0:
                        _release(book, child)
        case _:
            pass
    _classify(state, book, task)


def _classify(state: DriverState, book: RunBook, task: TaskView) -> None:
    """Put the task in the indexes its state belongs to (and out of the others)."""
    task_id = task.task_id
    state_ = task.state
    if not book.ended:
        state.active_count -= task_id in book.active
    for index in (book.active, book.attention, book.done):
        index.discard(task_id)
    if state_ is not TaskState.SUCCEEDED:
        _drop(book.to_merge, task_id)
    if state_ in _ACTIVE:
        book.active.add(task_id)
        state.active_count += not book.ended
        worker = state.view.workers.get(task.worker_id or "")
        if worker is not None and worker.state == "lost":
            book.attention.add(task_id)
    elif state_ in (
        TaskState.FAILED,
        TaskState.RETRY_WAIT,
        TaskState.CONFLICTED,
        TaskState.PREEMPTED,
    ):
        book.attention.add(task_id)
    elif state_ in _DONE:
        book.done.add(task_id)
        if state_ is TaskState.CANCELLED:
            book.attention.add(task_id)  # its dependents are skipped


def _drop(items: list[str], item: str) -> None:
    if item in items:
        items.remove(item)


def _throttle(state: DriverState, event: TaskRateLimited, at: datetime) -> None:
    """Pause every start fleet-wide; a report soon after the last doubles the pause, a
    report after a quiet spell starts again from the base pause."""
    config = state.config
    quiet = max(state.throttle_s, config.rate_limit_backoff_s) * 2
    recovering = (
        state.last_rate_limit is None or (at - state.last_rate_limit).total_seconds() > quiet
    )
    base = config.rate_limit_backoff_s if recovering else state.throttle_s * 2
    pause = min(max(base, event.retry_after_s or 0.0), config.rate_limit_backoff_max_s)
    state.throttle_s = pause
    state.last_rate_limit = at
    until = at + timedelta(seconds=pause)
    if state.throttle_until is None or until > state.throttle_until:
        state.throttle_until = until


# ----------------------------------------------------------------------------------------
# Commands
# ----------------------------------------------------------------------------------------


def _command(state: DriverState, envelope: CommandEnvelope) -> list[Effect]:
    if envelope.id in state.commands_seen:
        return []
    state.commands_seen.add(envelope.id)
    command = envelope.payload
    match command:
        case SubmitRun():
            effects = _submit(state, envelope.id, command)
        case CancelRun():
            effects = _cancel_run(state, envelope.id, command)
        case CancelTask():
            effects = _cancel_task(state, envelope.id, command)
        case RollbackRun():
            effects = _rollback(state, envelope.id, command)
        case _:
            return []  # DrainWorker: the workers act on it themselves
    return _caused_by(envelope.id, effects)


def _caused_by(command_id: str, effects: list[Effect]) -> list[Effect]:
    """Mark the command's outcome record with its id (the envelope's causation id).

    Only the last record is marked, the one that settles the command (a cancel's
    RunCancelled comes after its tasks' TaskCancelled): once it is in the log, a
    redelivered copy of the command is recognised and skipped; until then a redelivery
    is decided again, and what was recorded already is deduplicated by its event id.
    """
    for index in range(len(effects) - 1, -1, -1):
        effect = effects[index]
        if isinstance(effect, Record | Rollback):
            effects[index] = dataclasses.replace(effect, causation_id=command_id)
            break
    return effects


def _reject(state: DriverState, run_id: str, command_id: str, kind: str, reason: str) -> Record:
    event = CommandRejected(run_id=run_id, command_id=command_id, command_type=kind, reason=reason)
    return _record(state, f"reject:{command_id}", event, ids.command_rejected_id(command_id))


def _submit(state: DriverState, command_id: str, command: SubmitRun) -> list[Effect]:
    def reject(reason: str) -> list[Effect]:
        return [_reject(state, command.run_id, command_id, "run.submit", reason)]

    exists = command.run_id in state.view.runs or not _free(state, f"run:{command.run_id}:submit")
    key = command.idempotency_key
    if exists and key and state.idempotency.get(command.run_id) == key:
        return []  # a retry of a submission already recorded (or being recorded): that run
    if exists:
        return reject(f"run {command.run_id!r} already exists; choose another run id")
    if not command.repo.strip():
        return reject("the run names no repository: give repo as a path")
    for name, value in (("repo", command.repo), ("base_ref", command.base_ref)):
        if any(ord(char) < 32 for char in value):
            return reject(f"{name} {value!r} contains a control character")
    bound = submission_problem(command, max_tasks=state.config.max_tasks)
    if bound is not None:
        return reject(f"{bound[0]}: {bound[1]}")
    if command.plan is not None:
        try:
            TaskGraph.build(command.plan)
        except GraphError as exc:
            return reject(str(exc))
    elif command.fanout is None and command.planner != "claude":
        return reject("the run has no plan: give tasks, a fan-out, or the claude planner")
    event = RunSubmitted(
        run_id=command.run_id,
        goal=command.goal,
        repo=command.repo,
        base_ref=command.base_ref,
        planner=command.planner,
        budget_usd=command.budget_usd,
        max_parallel=command.max_parallel,
        policy=command.policy,
        plan=command.plan,
        plan_source=command.plan_source,
        fanout=command.fanout,
        idempotency_key=key,
    )
    if key:
        state.idempotency[command.run_id] = key
    return [
        _record(state, f"run:{command.run_id}:submit", event, ids.run_submitted_id(command.run_id))
    ]


def _cancel_run(state: DriverState, command_id: str, command: CancelRun) -> list[Effect]:
    run = state.view.runs.get(command.run_id)
    if run is None:
        return [
            _reject(
                state,
                command.run_id,
                command_id,
                "run.cancel",
                f"there is no run {command.run_id!r}",
            )
        ]
    if run.state not in _OPEN_RUN:
        return [
            _reject(
                state,
                command.run_id,
                command_id,
                "run.cancel",
                f"run {command.run_id!r} already ended ({run.state.value})",
            )
        ]
    effects: list[Effect] = []
    reason = command.reason or "the run was cancelled"
    for task in state.view.tasks_of(command.run_id):
        if not task.state.terminal and task.state not in _HELD_BY_WORKER:
            effects.append(_cancel_event(state, task, reason))
    # Running attempts: the workers got the same command and stop them themselves.
    event = RunCancelled(run_id=command.run_id, reason=reason)
    effects.append(
        _record(state, f"run:{command.run_id}:end", event, ids.run_cancelled_id(command.run_id))
    )
    return effects


def _cancel_event(state: DriverState, task: TaskView, reason: str) -> Record:
    event = TaskCancelled(run_id=task.run_id, task_id=task.task_id, reason=reason)
    key = f"task:{task.run_id}:{task.task_id}"
    return _record(state, key, event, ids.task_cancelled_id(task.run_id, task.task_id))


def _cancel_task(state: DriverState, command_id: str, command: CancelTask) -> list[Effect]:
    task = state.view.tasks.get(task_key(command.run_id, command.task_id))

    def reject(reason: str) -> list[Effect]:
        return [_reject(state, command.run_id, command_id, "task.cancel", reason)]

    if task is None:
        return reject(f"run {command.run_id!r} has no task {command.task_id!r}")
    if command.attempt and (command.attempt != task.attempt or task.state is TaskState.PREEMPTED):
        return []  # that attempt is no longer live: nothing of the task to cancel
    if task.state.terminal:
        return reject(f"task {command.task_id!r} already ended ({task.state.value})")
    if task.state in _HELD_BY_WORKER:
        return []  # its worker got the same command: it stops the agent and records it
    return [_cancel_event(state, task, command.reason or "cancelled on request")]


def _rollback(state: DriverState, command_id: str, command: RollbackRun) -> list[Effect]:
    book = _live_book(state, command.run_id)
    run = state.view.runs.get(command.run_id)

    def reject(reason: str) -> list[Effect]:
        return [_reject(state, command.run_id, command_id, "run.rollback", reason)]

    if book is None or run is None or book.graph is None:
        return reject(f"there is no planned run {command.run_id!r}")
    if run.state in _OPEN_RUN:
        return reject(f"run {command.run_id!r} is still {run.state.value}: cancel it first")
    if (command.to_task is None) == (command.to_sequence is None):
        return reject("give exactly one of a task id or a sequence number to roll back to")
    if command.to_task is not None:
        index = next((i for i, m in enumerate(book.merges) if m[1] == command.to_task), None)
        if index is None:
            return reject(f"task {command.to_task!r} of run {command.run_id!r} is not merged")
    else:
        index = sum(1 for m in book.merges if m[0] <= (command.to_sequence or 0))
    return [_rollback_effect(book, index, command.to_sequence, ids.rolled_back_id(command_id))]


def _rollback_effect(book: RunBook, index: int, to_sequence: int | None, event_id: str) -> Rollback:
    """Back to before the merge at ``index`` of the run's merge history."""
    target = book.merges[index - 1][2] if index > 0 else book.base_commit
    event = RunRolledBack(
        run_id=book.run_id,
        to_commit=target,
        to_sequence=to_sequence,
        reverted_tasks=tuple(m[1] for m in book.merges[index:]),
    )
    return Rollback(
        key=f"run:{book.run_id}:rollback",
        integration_branch=book.integration_branch,
        event=event,
        event_id=event_id,
        repo=book.submitted.repo,
    )


# ----------------------------------------------------------------------------------------
# Reconciling a run
# ----------------------------------------------------------------------------------------


def _record(state: DriverState, key: str, event: Event, event_id: str) -> Record:
    return Record(
        key=key,
        event=event,
        event_id=event_id,
        expected_last=state.scope_seq.get(scope_filter(event), 0),
    )


def _reconcile(state: DriverState, book: RunBook, now: datetime) -> list[Effect]:
    run = state.view.runs.get(book.run_id)
    if run is None:
        return []
    if run.state is RunState.SUBMITTED:
        key = f"run:{book.run_id}:plan"
        return [Plan(key=key, submitted=book.submitted)] if _free(state, key) else []
    if run.state not in _OPEN_RUN or book.graph is None:
        return []
    effects: list[Effect] = _resend_unsent(state, book) if book.unsent else []
    attended = _attend(state, book, now)
    effects += attended
    starting = sum(
        1 for e in attended if isinstance(e, Dispatch) and e.queued.task_id not in book.active
    )
    effects += _start_ready(state, book, now, starting)
    effects += _preempt(state, book)
    effects += _merge_lane(state, book)
    effects += _budget(state, book)
    collided = _collisions(state, book)
    effects += collided
    if not collided:  # both are run-level appends: one at a time
        effects += _ending(state, book)
    return effects


def _collisions(state: DriverState, book: RunBook) -> list[Effect]:
    """Settle a prediction whose outcome is known, else predict a new collision.

    At most one record per call: each is a conditional append on the run's own subject,
    so two in one go would refuse each other; the next one follows when the log has it.
    """
    key = f"run:{book.run_id}:collision"
    if not _free(state, key) or book.graph is None:
        return []
    for pair, (seq, prediction) in sorted(book.predicted.items()):
        outcome = collisions.settle(
            *(_side(state, book, t, seq, prediction) for t in pair),
            restarted=pair in book.preempted_pairs or pair[::-1] in book.preempted_pairs,
        )
        if outcome is None:
            continue
        settled = CollisionSettled(
            run_id=book.run_id,
            task_id=pair[0],
            attempt=max(_attempt(state, book, pair[0]), 1),
            other_task_id=pair[1],
            files=prediction.files,
            came_true=outcome == "conflicted",
            outcome=outcome,
        )
        return [_record(state, key, settled, ids.collision_settled_id(book.run_id, *pair))]
    if not book.touched_fresh:
        return []
    live = [
        collisions.LiveAttempt(
            task_id=task_id,
            attempt=attempt,
            order=book.queued_seq.get(task_id, 0),
            files=files,
        )
        for task_id, (attempt, files) in book.touched.items()
        if task_id in book.active and attempt == _attempt(state, book, task_id)
    ]
    if len(live) < 2:
        book.touched_fresh = False
        return []
    graph = book.graph

    def ordered(a: str, b: str) -> bool:
        return b in graph.descendants(a) or a in graph.descendants(b)

    known = set(book.predicted) | book.settled
    found = collisions.predict(live, ordered, known)
    # One record per call; stay fresh until a comparison finds nothing new, so the
    # others follow, and a record whose append failed is asked for again.
    book.touched_fresh = bool(found)
    for collision in found[:1]:
        later, earlier = collision.later, collision.earlier
        event = CollisionPredicted(
            run_id=book.run_id,
            task_id=later.task_id,
            attempt=later.attempt,
            other_task_id=earlier.task_id,
            other_attempt=earlier.attempt,
            files=collision.files,
            action=book.policy.on_collision,
        )
        event_id = ids.collision_predicted_id(book.run_id, later.task_id, earlier.task_id)
        return [_record(state, key, event, event_id)]
    return []


def _side(
    state: DriverState, book: RunBook, task_id: str, since: int, prediction: CollisionPredicted
) -> collisions.Side:
    """Where one task of a predicted pair stands, for :func:`collisions.settle`."""
    task = state.view.tasks[task_key(book.run_id, task_id)]
    conflicted = any(
        seq > since and collisions.conflict_hits(files, prediction.files)
        for seq, files in book.conflicts_seen.get(task_id, ())
    )
    return collisions.Side(
        merged=task.state is TaskState.MERGED,
        conflicted=conflicted,
        gone=task.state in {TaskState.CANCELLED, TaskState.SKIPPED} or task_id in book.failed,
    )


def _standing(state: DriverState, book: RunBook, task_id: str) -> collisions.Standing:
    """Where one task of a predicted pair stands, for the ``restart_later`` policy."""
    task_state = state.view.tasks[task_key(book.run_id, task_id)].state
    if task_state in _ACTIVE:
        return "live"
    if task_state in (TaskState.SUCCEEDED, TaskState.CONFLICTED):
        return "finishing"
    if task_state is TaskState.MERGED:
        return "merged"
    if task_state is TaskState.PREEMPTED:
        return "preempted"
    return "gone"  # failed (retried or not), cancelled, skipped


def _preempt(state: DriverState, book: RunBook) -> list[Effect]:
    """restart_later: stop the later attempt of each predicted pair, and tell its worker.

    Level-triggered like the rest: a preemption is recorded (conditional on the task's
    history, so it loses to a result that came first, and is then decided again on what
    won) while the prediction stands and the later attempt is live; once it is recorded,
    the worker holding the attempt is sent an attempt-scoped cancel that stops the agent.
    """
    effects: list[Effect] = []
    chosen: set[str] = set()
    for _, prediction in sorted(book.predicted.values(), key=lambda p: p[0]):
        if prediction.action != "restart_later" or book.stopping:
            continue  # a failing run stops nothing more for later: _ending cancels it all
        runners = [
            collisions.Runner(
                task_id=task_id,
                order=book.queued_seq.get(task_id, 0),
                attempt=_attempt(state, book, task_id),
                predicted_attempt=attempt,
                standing=_standing(state, book, task_id),
            )
            for task_id, attempt in (
                (prediction.task_id, prediction.attempt),
                (prediction.other_task_id, prediction.other_attempt),
            )
        ]
        stop = collisions.to_preempt(*runners)
        if stop is None:
            continue
        later, earlier = stop
        key = f"task:{book.run_id}:{later.task_id}"
        if (
            later.task_id in chosen
            or later.task_id in book.attention  # a lost worker's requeue goes first
            or later.task_id in book.unsent  # its work item is being published again
            or not _free(state, key)
        ):
            continue
        chosen.add(later.task_id)
        files = ", ".join(prediction.files)
        event = TaskPreempted(
            run_id=book.run_id,
            task_id=later.task_id,
            attempt=later.attempt,
            other_task_id=earlier.task_id,
            files=prediction.files,
            reason=(
                f"predicted to collide with {earlier.task_id!r} in {files}: stopped, to run "
                f"again on top of its merge"
            ),
        )
        event_id = f"preempted-{book.run_id}-{later.task_id}-{later.attempt}"
        effects.append(_record(state, key, event, event_id))
    for task_id, preemption in sorted(book.preempted.items()):
        task = state.view.tasks[task_key(book.run_id, task_id)]
        sent = f"{task_id}/{preemption.attempt}"
        key = f"cancel:{book.run_id}:{task_id}"
        if (
            task.state is not TaskState.PREEMPTED
            or task.worker_id is None  # still only a queued message: no agent to stop
            or sent in book.cancel_sent
            or not _free(state, key)
        ):
            continue
        command = CancelTask(
            run_id=book.run_id,
            task_id=task_id,
            reason=preemption.reason or "preempted",
            attempt=preemption.attempt,
        )
        effects.append(
            PublishCommand(
                key=key,
                command=command,
                command_id=f"preempt-{book.run_id}-{task_id}-{preemption.attempt}",
            )
        )
    return effects


def _requeue_due(state: DriverState, book: RunBook, task_id: str) -> bool:
    """Whether a preempted task may be queued again: the task it waits for merged, or
    will not merge (then at once)."""
    preemption = book.preempted.get(task_id)
    if preemption is None:
        return True  # preempted before this driver knew why (an older log): go on
    return collisions.may_requeue(_standing(state, book, preemption.other_task_id))


def _rerun_why(book: RunBook, task_id: str) -> str:
    """The note of a preempted task's new attempt."""
    preemption = book.preempted.get(task_id)
    if preemption is None:
        return "the previous attempt was stopped early"
    return (
        f"the previous attempt was stopped early because it was predicted to collide with "
        f"{preemption.other_task_id!r} in {', '.join(preemption.files) or 'the same files'}; "
        f"this one starts from the integration branch after that task"
    )


def _counted(task: TaskView) -> int:
    """The task's attempts that count against max_attempts: preempted ones do not."""
    return task.attempt - task.preemptions


def _attend(state: DriverState, book: RunBook, now: datetime) -> list[Effect]:
    """Tasks whose state asks for a decision: retry, requeue, resolve, skip or stop."""
    policy = book.policy
    effects: list[Effect] = []
    requeues: list[Effect] = []
    cap = book.submitted.max_parallel or state.config.max_running
    total = state.active_total()
    active = state.active_in(book)

    def room() -> bool:
        # A retry or a resolution is a start like any other: the caps apply to it.
        starts = sum(1 for e in effects if isinstance(e, Dispatch))
        return active + starts < cap and total + starts < state.config.max_running

    for task_id in sorted(book.attention):
        task = state.view.tasks[task_key(book.run_id, task_id)]
        key = f"task:{book.run_id}:{task_id}"
        if not _free(state, key):
            continue
        match task.state:
            case TaskState.FAILED if task_id not in book.failed:
                if (
                    task.failure_class in policy.retry_classes
                    and _counted(task) < policy.max_attempts
                ):
                    delay = min(
                        policy.backoff_base_s * 2 ** (task.attempt - 1), policy.backoff_max_s
                    )
                    event = TaskRetryScheduled(
                        run_id=book.run_id,
                        task_id=task_id,
                        next_attempt=task.attempt + 1,
                        delay_s=delay,
                        reason=f"{task.failure_class}: {task.failure}",
                    )
                    effects.append(
                        _record(
                            state,
                            key,
                            event,
                            ids.task_retry_id(book.run_id, task_id, task.attempt + 1),
                        )
                    )
                else:
                    book.failed.add(task_id)
                    if policy.on_task_failure == "fail_run":
                        book.stopping = book.stopping or f"task {task_id!r} failed: {task.failure}"
            case TaskState.RETRY_WAIT:
                due = book.retry_at.get(task_id)
                if due is not None and now >= due and not book.stopping and room():
                    effects.append(
                        _dispatch(state, book, task, f"retry after {task.failure_class}")
                    )
            case TaskState.CONFLICTED:
                conflict = book.conflicts.get(task_id)
                if policy.on_conflict == "stop":
                    files = ", ".join(task.conflict_files) or "unknown files"
                    problem = f" ({conflict.problem})" if conflict and conflict.problem else ""
                    book.stopping = book.stopping or (
                        f"task {task_id!r} conflicts with the integration branch in "
                        f"{files}{problem}"
                    )
                elif _counted(task) > policy.max_attempts:
                    book.stopping = book.stopping or stop_reason(
                        task_id, conflict, task.conflict_files, _counted(task),
                        book.integration_branch,
                    )  # fmt: skip
                elif conflict is not None and not book.stopping and room():
                    effects.append(_dispatch(state, book, task, "resolve", conflict=conflict))
            case TaskState.PREEMPTED:
                if _requeue_due(state, book, task_id) and not book.stopping and room():
                    effects.append(_dispatch(state, book, task, _rerun_why(book, task_id)))
            case TaskState.QUEUED | TaskState.ASSIGNED | TaskState.RUNNING:
                worker = state.view.workers.get(task.worker_id or "")
                if worker is not None and worker.state == "lost":
                    # Replaces an attempt already counted as active: no room needed.
                    requeues.append(
                        _dispatch(state, book, task, "its worker was lost", resume=task.session_id)
                    )
            case _:
                pass
    for task_id in sorted(book.attention):
        task = state.view.tasks[task_key(book.run_id, task_id)]
        cancelled = task.state is TaskState.CANCELLED
        failed = task_id in book.failed and policy.on_task_failure != "fail_run"
        if (cancelled or failed) and task_id not in book.skipped_for:
            effects += _skip_descendants(state, book, task)
    return effects + requeues


def _skip_descendants(state: DriverState, book: RunBook, blocker: TaskView) -> list[Effect]:
    assert book.graph is not None
    effects: list[Effect] = []
    waiting = False
    for task_id in book.graph.descendants(blocker.task_id):
        task = state.view.tasks[task_key(book.run_id, task_id)]
        key = f"task:{book.run_id}:{task_id}"
        if task.state is not TaskState.PENDING:
            continue
        if not _free(state, key):
            waiting = True
            continue
        why = (
            "was cancelled"
            if blocker.state is TaskState.CANCELLED
            else f"failed: {blocker.failure}"
        )
        event = TaskSkipped(
            run_id=book.run_id,
            task_id=task_id,
            reason=f"depends on {blocker.task_id!r}, which {why}",
            blocked_by=blocker.task_id,
        )
        effects.append(_record(state, key, event, ids.task_skipped_id(book.run_id, task_id)))
    if not effects and not waiting:
        book.skipped_for.add(blocker.task_id)
    return effects


def retry_limits(spec: TaskSpec, failure_class: str | None, attempt: int) -> TaskLimits | None:
    """The limits of a retry: more room for what ran out, None (unchanged) otherwise."""
    limits = spec.limits
    if failure_class == "max_turns":
        turns = limits.max_turns or _DEFAULT_MAX_TURNS
        return msgspec.structs.replace(limits, max_turns=turns * 2 ** (attempt - 1))
    if failure_class == "timeout":
        wall = limits.wall_time_s or _DEFAULT_WALL_TIME_S
        return msgspec.structs.replace(limits, wall_time_s=wall * 1.5 ** (attempt - 1))
    return None


def _take_token(state: DriverState, now: datetime) -> bool:
    """Pace starts: a token bucket, and a full stop while the API reports rate limits."""
    config = state.config
    if state.throttle_until is not None and now < state.throttle_until:
        return False
    if state.tokens_at is None:
        state.tokens, state.tokens_at = float(config.start_burst), now
    elapsed = max((now - state.tokens_at).total_seconds(), 0.0)
    state.tokens = min(float(config.start_burst), state.tokens + elapsed * config.starts_per_s)
    state.tokens_at = now
    if state.tokens < 1.0:
        return False
    state.tokens -= 1.0
    return True


def _start_ready(state: DriverState, book: RunBook, now: datetime, starting: int) -> list[Effect]:
    """Start released tasks, most urgent first, as far as the caps and the pace allow."""
    if book.stopping or book.budget_reached or not book.ready:
        return []
    effects: list[Effect] = []
    running = state.active_in(book) + starting
    total = state.active_total() + starting
    run_cap = book.submitted.max_parallel or state.config.max_running
    while book.ready:
        task_id = book.ready[0][3]
        task = state.view.tasks[task_key(book.run_id, task_id)]
        if task.state is not TaskState.PENDING:
            heapq.heappop(book.ready)  # skipped or cancelled meanwhile
            continue
        if not _free(state, f"task:{book.run_id}:{task_id}"):
            break
        if running >= run_cap or total >= state.config.max_running:
            break
        if not _take_token(state, now):
            break
        heapq.heappop(book.ready)
        effects.append(_dispatch(state, book, task, ""))
        running += 1
        total += 1
    return effects


def _dispatch(
    state: DriverState,
    book: RunBook,
    task: TaskView,
    why: str,
    *,
    resume: str = "",
    conflict: MergeConflict | None = None,
) -> Dispatch:
    assert book.graph is not None
    spec = with_default_limits(book.graph.specs[task.task_id], book.policy.task_limits)
    attempt = task.attempt + 1
    if conflict is not None:
        note = resolution_note(conflict)
    else:
        note = f"This is attempt {attempt}: {why}." if why else ""
    queued = TaskQueued(
        run_id=book.run_id,
        task_id=task.task_id,
        attempt=attempt,
        pool=book.policy.pool,
        base_commit="" if conflict is not None else book.head,
        limits=retry_limits(spec, task.failure_class, attempt) if why.startswith("retry") else None,
        resume_session_id=resume,
        note=note,
        resolves_conflict=conflict is not None,
    )
    return Dispatch(
        key=f"task:{book.run_id}:{task.task_id}",
        run_id=book.run_id,
        spec=spec,
        queued=queued,
        event_id=ids.task_queued_id(book.run_id, task.task_id, attempt),
        expected_last=state.scope_seq.get(scope_filter(queued), 0),
        conflict=(conflict.ours, conflict.theirs) if conflict is not None else None,
        repo=book.submitted.repo,
        integration_branch=book.integration_branch,
        model=book.policy.model,
    )


def _republish(state: DriverState) -> list[Effect]:
    """After a restart: put the work item of every queued attempt back on its queue.

    The driver may have died between recording TaskQueued and publishing the item; the
    item's id is per attempt, so an item that did get out is not duplicated.
    """
    effects: list[Effect] = []
    for book in state.runs.values():
        if book.ended or book.graph is None:
            continue
        for task_id in sorted(book.active):
            resent = _resend(state, book, task_id)
            if resent is not None:
                effects.append(resent)
    return effects


def _resend(state: DriverState, book: RunBook, task_id: str) -> Dispatch | None:
    """The work item of the task's queued attempt, published again; None if not queued."""
    assert book.graph is not None
    task = state.view.tasks[task_key(book.run_id, task_id)]
    queued = book.queued.get(task_id)
    if task.state is not TaskState.QUEUED or queued is None or queued.attempt != task.attempt:
        return None
    return Dispatch(
        key=f"task:{book.run_id}:{task_id}",
        run_id=book.run_id,
        spec=with_default_limits(book.graph.specs[task_id], book.policy.task_limits),
        queued=queued,
        event_id=ids.task_queued_id(book.run_id, task_id, queued.attempt),
        expected_last=state.scope_seq.get(scope_filter(queued), 0),
        republish=True,
        repo=book.submitted.repo,
        integration_branch=book.integration_branch,
        model=book.policy.model,
    )


def _resend_unsent(state: DriverState, book: RunBook) -> list[Effect]:
    """Work items whose publish failed after their TaskQueued was recorded.

    A Dispatch records TaskQueued, then publishes the item; when the publish fails (the
    work stream's leader is being elected, say) the task is queued with no message for any
    worker to take. Until its TaskQueued is read back the task still looks pending (and
    is released again); once it reads as queued, the item is published again, and again
    after each failure, until it gets out or the task moves on.
    """
    effects: list[Effect] = []
    for task_id in sorted(book.unsent):
        task = state.view.tasks[task_key(book.run_id, task_id)]
        if task.state is TaskState.PENDING:
            continue  # its TaskQueued, if it was recorded, is not read back yet
        if not _free(state, f"task:{book.run_id}:{task_id}"):
            continue
        book.unsent.discard(task_id)
        resent = _resend(state, book, task_id)
        if resent is not None:
            effects.append(resent)
    return effects


def _merge_lane(state: DriverState, book: RunBook) -> list[Effect]:
    """One merge at a time per run, in the order results arrived.

    With a verify command run after each merge, the results waiting at the front of the
    lane (up to the policy's ``merge_batch``) go together, verified once.
    """
    key = f"merge:{book.run_id}"
    if not book.to_merge or not _free(state, key) or book.stopping:
        return []
    policy = book.policy
    limit = policy.merge_batch if policy.verify_command and policy.verify_when == "each" else 1
    items: list[Merge] = []
    for task_id in book.to_merge[:limit]:
        item = _merge_item(state, book, task_id, key)
        if item is None:
            break
        items.append(item)
    if len(items) > 1:
        verify = any(item.verify for item in items)
        return [
            MergeBatch(key=key, run_id=book.run_id, items=tuple(items), head=book.head,
                       verify=verify, repo=book.submitted.repo,
                       verify_command=policy.verify_command,
                       verify_timeout_s=policy.verify_timeout_s,
                       verify_parallel=policy.verify_parallel)
        ]  # fmt: skip
    return list(items)


def _merge_item(state: DriverState, book: RunBook, task_id: str, key: str) -> Merge | None:
    """The merge of the task's result, or None if the task has no current result."""
    assert book.graph is not None
    task = state.view.tasks[task_key(book.run_id, task_id)]
    result = book.results.get(task_id)
    if task.state is not TaskState.SUCCEEDED or result is None or result.attempt != task.attempt:
        return None
    spec = book.graph.specs[task_id]
    queued = book.queued.get(task_id)
    resolving = book.resolving.get(task_id)
    resolves = resolving is not None and queued is not None and queued.attempt == task.attempt
    verify = (
        bool(book.policy.verify_command)
        and book.policy.verify_when == "each"
        and KIND_PROFILES[spec.kind].verify
    )
    return Merge(
        key=key,
        run_id=book.run_id,
        task_id=task_id,
        attempt=task.attempt,
        title=spec.title,
        result=result,
        head=book.head,
        integration_branch=book.integration_branch,
        verify=verify,
        on_conflict=book.policy.on_conflict,
        expected_last=state.scope_seq.get(f"cc.evt.{book.run_id}.{task_id}.>", 0),
        resolving=resolving if resolves else None,
        resolution_base=queued.base_commit if resolves and queued is not None else "",
        repo=book.submitted.repo,
        verify_command=book.policy.verify_command,
        verify_timeout_s=book.policy.verify_timeout_s,
    )


def _budget(state: DriverState, book: RunBook) -> list[Effect]:
    budget = book.submitted.budget_usd
    if budget is None or book.budget_reached:
        return []
    cost = state.view.costs.get(book.run_id)
    spent = cost.cost_usd if cost is not None else 0.0
    key = f"run:{book.run_id}:budget"
    if spent < budget or not _free(state, key):
        return []
    event = RunBudgetReached(run_id=book.run_id, budget_usd=budget, spent_usd=spent)
    return [_record(state, key, event, ids.budget_reached_id(book.run_id))]


def _ending(state: DriverState, book: RunBook) -> list[Effect]:
    """Record the run's end once nothing runs, nothing waits and nothing is in flight."""
    assert book.graph is not None
    key = f"run:{book.run_id}:end"
    if book.stopping and book.active:
        # Stop what still runs: the run is failing and its results would not be merged.
        return [
            PublishCommand(
                key=f"cancel:{book.run_id}:{task_id}",
                command=CancelTask(run_id=book.run_id, task_id=task_id, reason=book.stopping),
                command_id=ids.cancel_task_command_id(
                    book.run_id, task_id, _attempt(state, book, task_id)
                ),
            )
            for task_id in sorted(book.active)
            if _free(state, f"cancel:{book.run_id}:{task_id}")
            and f"{task_id}/{_attempt(state, book, task_id)}" not in book.cancel_sent
        ]
    busy = (
        book.active
        or (book.to_merge and not book.stopping)  # a failing run merges nothing more
        or any(
            k.startswith(
                (f"task:{book.run_id}:", f"merge:{book.run_id}", f"run:{book.run_id}:collision")
            )
            for k in state.pending
        )
    )
    if busy or not _free(state, key):
        return []
    waiting_retry = any(
        state.view.tasks[task_key(book.run_id, t)].state is TaskState.RETRY_WAIT
        for t in book.attention
    )
    unfinished = len(book.graph.specs) - len(book.done) - len(book.failed)
    if book.stopping or (book.budget_reached and unfinished > 0):
        reason = book.stopping or (
            f"the run's budget of ${book.submitted.budget_usd or 0:.2f} was spent with "
            f"{unfinished} tasks not done"
        )
        event = RunFailed(
            run_id=book.run_id, reason=reason, failed_tasks=tuple(sorted(book.failed))
        )
        return [_record(state, key, event, ids.run_failed_id(book.run_id))]
    if unfinished > 0 or waiting_retry:
        return []
    done = _summary(state, book)
    if book.policy.verify_command and book.policy.verify_when == "end":
        return [
            Verify(key=key, run_id=book.run_id, head=book.head, done=done,
                   repo=book.submitted.repo, verify_command=book.policy.verify_command,
                   verify_timeout_s=book.policy.verify_timeout_s)
        ]  # fmt: skip
    return [_record(state, key, done, ids.run_completed_id(book.run_id))]


def _attempt(state: DriverState, book: RunBook, task_id: str) -> int:
    return state.view.tasks[task_key(book.run_id, task_id)].attempt


def _summary(state: DriverState, book: RunBook) -> RunCompleted:
    tasks = state.view.tasks_of(book.run_id)
    wall = (state.now - book.submitted_at).total_seconds() if state.now else 0.0
    busy = sum(
        (t.finished_at - t.started_at).total_seconds()
        for t in tasks
        if t.started_at is not None and t.finished_at is not None
    )
    model_time = sum(t.model_time_s for t in tasks if t.state is TaskState.MERGED)
    cost = state.view.costs.get(book.run_id)
    return RunCompleted(
        run_id=book.run_id,
        head_commit=book.head,
        tasks_succeeded=sum(1 for t in tasks if t.state is TaskState.MERGED),
        tasks_failed=sum(1 for t in tasks if t.state is TaskState.FAILED),
        tasks_skipped=sum(1 for t in tasks if t.state in (TaskState.SKIPPED, TaskState.CANCELLED)),
        wall_time_s=round(max(wall, 0.0), 3),
        task_time_s=round(busy, 3),
        speedup=round(busy / wall, 3) if wall > 0 else 0.0,
        model_time_s=round(model_time, 3),
        cost_usd=round(cost.cost_usd, 6) if cost is not None else 0.0,
        preempted_attempts=sum(t.preemptions for t in tasks),
    )


# ----------------------------------------------------------------------------------------
# Worker liveness
# ----------------------------------------------------------------------------------------


def _last_seen(state: DriverState, worker_id: str, logged: datetime) -> datetime:
    """When a worker was last known alive: its registry entry, or what the log says (its
    join, or a heartbeat event of an older worker)."""
    seen = state.seen.get(worker_id)
    return logged if seen is None or seen < logged else seen


def _liveness(state: DriverState, now: datetime) -> list[Effect]:
    """Declare lost every active worker silent for longer than ``lost_after_s``."""
    effects: list[Effect] = []
    limit = timedelta(seconds=state.config.lost_after_s)
    # In id order: the workers map iterates in hash order, which changes from process
    # to process, and the order of the losses decides the order of the requeues.
    silent = sorted(
        (
            worker
            for worker in state.view.workers.values()
            if worker.state == "active"
            and worker.last_seen_at is not None
            and now - _last_seen(state, worker.worker_id, worker.last_seen_at) >= limit
        ),
        key=lambda worker: worker.worker_id,
    )
    for worker in silent:
        key = f"worker:{worker.worker_id}"
        if not _free(state, key):
            continue
        orphaned = tuple(
            f"{book.run_id}/{task_id}"
            for book in state.runs.values()
            if not book.ended
            for task_id in sorted(book.active)
            if state.view.tasks[task_key(book.run_id, task_id)].worker_id == worker.worker_id
        )
        event = WorkerLost(
            worker_id=worker.worker_id,
            last_seen_seq=state.scope_seq.get(f"cc.evt._workers.{worker.worker_id}.>", 0),
            reason=f"no heartbeat for {state.config.lost_after_s:g}s",
            orphaned_tasks=orphaned,
        )
        effects.append(
            _record(state, key, event, ids.worker_lost_id(worker.worker_id, event.last_seen_seq))
        )
    return effects
