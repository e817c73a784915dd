"""The driver core's state: one book per run, the frozen finished runs, pending keys."""

from __future__ import annotations

import dataclasses
import zlib
from dataclasses import dataclass, field
from datetime import datetime
from typing import Final

import msgspec

from claudecluster.actors.driver.effects import DriverConfig
from claudecluster.domain.graph import TaskGraph
from claudecluster.events.model import (
    CollisionPredicted,
    MergeConflict,
    RunPolicy,
    RunSubmitted,
    TaskPreempted,
    TaskQueued,
    TaskSucceeded,
)
from claudecluster.projections.cluster import ClusterView
from claudecluster.projections.views import CostView, RunView, TaskView, task_key

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
    #: how many times the ended run was opened again (RunRetried): the events that are
    #: once per run (its end, a task's skip) are once per round, their ids say which
    retries: int = 0
    #: the run failed and its policy says to roll back what it merged
    roll_back: bool = False
    #: why the run must end as failed once nothing runs any more
    stopping: str = ""
    #: the run is being cancelled, by the command with this id (for this reason): set
    #: when the command is decided, or when a worker records a task it stopped for it,
    #: whichever comes first, so that a RunCancelled that lost a race for the log is
    #: decided again rather than the run ending as completed with its tasks cancelled
    cancel_command: str = ""
    cancelling: str = ""
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
    #: run id -> an ended run, encoded (see :func:`_freeze_finished`): its book and its
    #: entries of the view (the run, its tasks, its cost), which leave ``view`` with it. A
    #: long-lived cluster's finished runs outnumber its open ones by thousands, and kept
    #: as objects they made every snapshot and restart cost the whole history.
    finished: dict[str, bytes] = field(default_factory=dict)

    def book(self, run_id: str) -> RunBook | None:
        """The run's book, open or finished (a finished one decoded; a copy, not the
        state's), or None for a run the driver never saw submitted."""
        live = self.runs.get(run_id)
        if live is not None:
            return live
        data = self.finished.get(run_id)
        return None if data is None else _decode_run(data).book

    def view_of(self, run_id: str) -> ClusterView:
        """The view with the run's entries in it: ``view`` itself for a run not finished,
        else a copy of it with the finished run's entries put back (to read, not to keep)."""
        data = self.finished.get(run_id)
        if data is None:
            return self.view
        return _with_run(self.view, _decode_run(data))

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


class _FrozenRun(msgspec.Struct, frozen=True, kw_only=True):
    """A finished run as stored: its book, its predictions (keyed by pairs, which a sorted
    encoding cannot key a map by) as a list in pair order, and its view entries."""

    book: RunBook
    predicted: list[tuple[tuple[str, str], tuple[int, CollisionPredicted]]]
    run: RunView | None
    #: in plan order
    tasks: list[TaskView]
    cost: CostView | None


#: Finished runs are encoded with sets and dict keys sorted, so a run frozen from a
#: restored snapshot is the same bytes as one frozen in a full replay.
_RUN_ENCODER: Final = msgspec.msgpack.Encoder(order="deterministic")
_FROZEN_DECODER: Final = msgspec.msgpack.Decoder(_FrozenRun)


def _encode_run(frozen: _FrozenRun) -> bytes:
    """The run, compressed: a finished run is read back rarely, and its copies of the
    run's events (results, work items) compress about fourfold, which is that much less
    snapshot to move at every restart."""
    return zlib.compress(_RUN_ENCODER.encode(frozen), 1)


def _decode_run(data: bytes) -> _FrozenRun:
    return _FROZEN_DECODER.decode(zlib.decompress(data))


def _task_ids(book: RunBook, run: RunView | None) -> list[str]:
    """Every task the view may hold of the run: its plan's, in plan order."""
    ids = list(run.task_ids) if run is not None else []
    if book.graph is not None:
        known = set(ids)
        ids += [task_id for task_id in book.graph.specs if task_id not in known]
    return ids


def _with_run(view: ClusterView, frozen: _FrozenRun) -> ClusterView:
    """``view`` with a frozen run's entries put back."""
    run_id = frozen.book.run_id
    runs, tasks, costs = view.runs, view.tasks, view.costs
    if frozen.run is not None:
        runs = runs.set(run_id, frozen.run)
    if frozen.tasks:
        building = tasks.mutate()
        for task in frozen.tasks:
            building[task_key(run_id, task.task_id)] = task
        tasks = building.finish()
    if frozen.cost is not None:
        costs = costs.set(run_id, frozen.cost)
    return msgspec.structs.replace(view, runs=runs, tasks=tasks, costs=costs)


def _thaw(state: DriverState, run_id: str) -> RunBook | None:
    """Bring a finished run back into the live state (its book into ``runs``, its entries
    into ``view``), for a message that concerns it; :func:`_freeze_finished` freezes it
    again at the end of the decision if it is still over. The live book, or None."""
    data = state.finished.pop(run_id, None)
    if data is None:
        return state.runs.get(run_id)
    frozen = _decode_run(data)
    book = frozen.book
    book.predicted = dict(frozen.predicted)
    state.runs[run_id] = book
    state.view = _with_run(state.view, frozen)
    return book


def _live_book(state: DriverState, run_id: str) -> RunBook | None:
    """The run's book to change: a finished one is brought back into the live state (the
    rare message that still concerns it, say a rollback), and frozen again by
    :func:`_freeze_finished` at the end of the decision."""
    book = state.runs.get(run_id)
    return book if book is not None else _thaw(state, run_id)


def _freeze(state: DriverState, book: RunBook) -> bytes:
    """Take the run out of the live state: its book out of ``runs``, its entries out of
    ``view``; the run encoded."""
    run_id = book.run_id
    del state.runs[run_id]
    view = state.view
    run = view.runs.get(run_id)
    keys = [task_key(run_id, task_id) for task_id in _task_ids(book, run)]
    tasks = [view.tasks[key] for key in keys if key in view.tasks]
    cost = view.costs.get(run_id)
    if tasks:
        building = view.tasks.mutate()
        for key in keys:
            building.pop(key, None)
        view = msgspec.structs.replace(view, tasks=building.finish())
    if run is not None:
        view = msgspec.structs.replace(view, runs=view.runs.delete(run_id))
    if cost is not None:
        view = msgspec.structs.replace(view, costs=view.costs.delete(run_id))
    state.view = view
    predicted = sorted(book.predicted.items(), key=lambda item: item[0])
    frozen = _FrozenRun(
        book=dataclasses.replace(book, predicted={}),
        predicted=predicted,
        run=run,
        tasks=tasks,
        cost=cost,
    )
    return _encode_run(frozen)


def _freeze_finished(state: DriverState, run_ids: set[str]) -> None:
    """Move the runs that ended, with nothing left to do, out of the live state.

    Nothing a live run's decision reads is in them (every scan of the books skips ended
    runs, and a run's decisions read the view of its own run and of the workers), so the
    live state, and each snapshot of it, costs the open runs, not the history. A book
    waiting for its rollback stays live until the rollback is recorded.
    """
    for run_id in sorted(run_ids):
        book = state.runs.get(run_id)
        if book is not None and book.ended and not book.roll_back:
            # Through the decoder once: a value held as another type than its field's
            # (an int where a float is declared) is encoded as the field's type, so the
            # bytes are the same whether the run was built live or from a snapshot.
            data = _freeze(state, book)
            state.finished[run_id] = _encode_run(_decode_run(data))


def _free(state: DriverState, key: str) -> bool:
    return key not in state.pending
