"""Which runs a message wakes: pending keys released, timers due, runs waiting for a start."""

from __future__ import annotations

import heapq
from datetime import datetime

from claudecluster.actors.driver.effects import _OPEN_RUN
from claudecluster.actors.driver.reconcile import _counted, _requeue_due
from claudecluster.actors.driver.state import DriverState, RunBook
from claudecluster.domain.lifecycle import (
    TaskState,
)
from claudecluster.projections.views import task_key


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
