"""Folding the log into the driver's state: each stored event moves its run's book."""

from __future__ import annotations

import heapq
from datetime import datetime, timedelta

from claudecluster.actors.driver.effects import _ACTIVE, _DONE
from claudecluster.actors.driver.state import DriverState, RunBook, _free, _live_book
from claudecluster.domain.graph import TaskGraph
from claudecluster.domain.lifecycle import (
    RunState,
    TaskState,
)
from claudecluster.errors import GraphError
from claudecluster.events.envelope import StoredEvent
from claudecluster.events.model import (
    CollisionPredicted,
    CollisionSettled,
    MergeConflict,
    RunBudgetReached,
    RunCancelled,
    RunCompleted,
    RunEvent,
    RunFailed,
    RunPlanned,
    RunRetried,
    RunRolledBack,
    RunSubmitted,
    TaskCancelled,
    TaskEvent,
    TaskFilesTouched,
    TaskMerged,
    TaskPreempted,
    TaskQueued,
    TaskRateLimited,
    TaskRetryScheduled,
    TaskSucceeded,
    WorkerLeft,
    WorkerLost,
)
from claudecluster.events.subjects import scope_filter
from claudecluster.projections.cluster import apply
from claudecluster.projections.views import TaskView, task_key

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
            book.cancel_command = book.cancelling = ""
            if isinstance(event, RunFailed) and book.policy.rollback_on_failure and book.merges:
                book.roll_back = True
        case RunRolledBack() if book is not None:
            book.roll_back = False
            book.head = event.to_commit
            reverted = set(event.reverted_tasks)
            book.merges = [m for m in book.merges if m[1] not in reverted]
        case RunRetried() if book is not None and book.graph is not None:
            _retried(state, book, event)
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
            if isinstance(event, TaskCancelled) and event.run_cancel and not book.ended:
                # Its worker stopped it for the run's cancel, which it may have heard of
                # before the driver did: the run ends as cancelled (see _reconcile).
                book.cancel_command = book.cancel_command or event.run_cancel
                book.cancelling = book.cancelling or event.reason
        case _:
            pass
    return {event.run_id}


def _retried(state: DriverState, book: RunBook, event: RunRetried) -> None:
    """The ended run is open again: the retried tasks are pending, from ``head_commit``.

    Every task not merged waits again for its dependencies not merged; those with none
    left go back on the ready heap, so the usual scheduling queues them. The attempt
    numbers go on (and so does their count against max_attempts).
    """
    assert book.graph is not None
    if book.ended:
        state.active_count += len(book.active)
    book.ended = False
    book.retries += 1
    book.stopping = ""
    book.head = event.head_commit
    for task_id in event.task_ids:
        book.failed.discard(task_id)
        book.skipped_for.discard(task_id)
        book.unsent.discard(task_id)
        for table in (book.retry_at, book.conflicts, book.resolving, book.preempted):
            table.pop(task_id, None)
        book.results.pop(task_id, None)
        _classify(state, book, state.view.tasks[task_key(book.run_id, task_id)])
    book.ready.clear()
    for task_id, spec in book.graph.specs.items():
        if task_id in book.merged:
            continue
        book.waiting[task_id] = len({d for d in spec.depends_on if d not in book.merged})
        task = state.view.tasks[task_key(book.run_id, task_id)]
        if book.waiting[task_id] == 0 and task.state is TaskState.PENDING:
            _release(book, task_id)


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
