"""Recorded histories replayed through the driver's core, as Temporal's replayer does.

Every history here is a finished run: the sample logs under events/samples/ (built by
tests/fixtures/sample_runs.py) and the log of a real ``claudecluster demo`` run, with the real
driver, three real workers and the real Claude Code CLI on the scripted Messages API
(tests/replay/histories/demo.jsonl, captured by tests/replay/capture_demo.py).

Fed to :func:`~claudecluster.actors.driver.decide` from scratch, or through the driver's
recovery path (runtime/driver.py: the log replayed with what it decides discarded, then
:class:`~claudecluster.actors.driver.Resume`), at any point of the history, the core must
decide nothing the history does not already hold: every effect it asks for while the
history goes by is one whose outcome the history records after it, and once the history
is read it asks for nothing more: no event to record, no work item to publish.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import pytest

from claudecluster.actors.driver import (
    Dispatch,
    DriverState,
    Effect,
    Merge,
    MergeBatch,
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
from claudecluster.events import (
    MergeConflict,
    RunCompleted,
    RunFailed,
    RunPlanned,
    RunRetried,
    RunRolledBack,
    TaskCancelled,
    TaskFailed,
    TaskMerged,
    WorkerLeft,
    WorkerLost,
)
from claudecluster.events.codec import decode_stored_event
from claudecluster.events.envelope import StoredEvent
from claudecluster.events.model import Event

_ROOT = Path(__file__).resolve().parents[2]
_SAMPLES = sorted((_ROOT / "events" / "samples").glob("*.jsonl"))
_RECORDED = sorted((Path(__file__).parent / "histories").glob("*.jsonl"))
_HISTORIES = [*_SAMPLES, *_RECORDED]
#: A restarted driver reads the log long after it was written: timers are all past.
_LATER = timedelta(days=1)


def _identity(event: Event) -> tuple[object, ...]:
    """What makes two events the same decision's outcome (not times or totals)."""
    return (
        type(event),
        getattr(event, "run_id", None),
        getattr(event, "task_id", None),
        getattr(event, "attempt", None),
        getattr(event, "next_attempt", None),
        getattr(event, "worker_id", None) if isinstance(event, WorkerLost) else None,
    )


def _outcomes(effect: Effect) -> list[tuple[object, ...]]:
    """The events, any one of which in the history shows the effect was carried out."""
    match effect:
        case Record():
            return [_identity(effect.event)]
        case Dispatch():
            return [_identity(effect.queued)]
        case Plan():
            run = effect.submitted.run_id
            return [(RunPlanned, run), (RunFailed, run)]
        case Merge():
            return [
                (kind, effect.run_id, effect.task_id, effect.attempt)
                for kind in (TaskMerged, MergeConflict, TaskFailed)
            ]
        case MergeBatch():
            return [o for item in effect.items for o in _outcomes(item)]
        case Verify():
            return [(RunCompleted, effect.run_id), (RunFailed, effect.run_id)]
        case Rollback():
            return [(RunRolledBack, effect.event.run_id)]
        case Retry():
            return [(RunRetried, effect.event.run_id)]
        case PublishCommand():
            command = effect.command
            target = (getattr(command, "run_id", None), getattr(command, "task_id", None))
            return [(TaskCancelled, *target)]


def _facts(event: Event) -> set[tuple[object, ...]]:
    """Every key under which :func:`_outcomes` may look for ``event``."""
    full = _identity(event)
    kind, run, task, attempt = full[:4]
    return {full, (kind, run), (kind, run, task), (kind, run, task, attempt)}


@dataclass(frozen=True)
class _History:
    """A recorded history and, for each of its facts, the last sequence it appears at."""

    events: list[StoredEvent]
    last: dict[tuple[object, ...], int]

    @classmethod
    def load(cls, path: Path) -> _History:
        events = [decode_stored_event(line) for line in path.read_text().splitlines() if line]
        last = {fact: s.seq for s in events for fact in _facts(s.envelope.payload)}
        return cls(events, last)

    def unexplained(self, effects: list[Effect], after: int) -> list[Effect]:
        """The effects whose outcome the history does not record after sequence ``after``
        (a republished work item: its TaskQueued, recorded before)."""

        def explained(effect: Effect) -> bool:
            since = 0 if isinstance(effect, Dispatch) and effect.republish else after
            return any(self.last.get(outcome, 0) > since for outcome in _outcomes(effect))

        return [effect for effect in effects if not explained(effect)]


def _feed(
    state: DriverState, history: _History, events: list[StoredEvent], *, later: bool
) -> list[Effect]:
    """Feed stored events as the driver reads them; returns the effects left unexplained.

    Each effect is taken as carried out (its key released), as the history says it was.
    """
    unexplained: list[Effect] = []
    for stored in events:
        now = stored.envelope.occurred_at + (_LATER if later else timedelta(0))
        unexplained += history.unexplained(decide(state, stored, now), stored.seq)
        state.pending.clear()
        state.starting.clear()
    return unexplained


def _at_rest(state: DriverState, history: _History, now_offset: timedelta) -> None:
    """Once the whole history is read, nothing is left to decide for its runs."""
    end = history.events[-1].envelope.occurred_at + now_offset
    assert decide(state, Resume(), end) == []
    # Who is alive is in the registry, not the log: a restart reads it (every worker the
    # log did not see leave is taken as alive at the end). A run that finished is left alone.
    gone = {
        event.worker_id
        for event in (stored.envelope.payload for stored in history.events)
        if isinstance(event, WorkerLeft | WorkerLost)
    }
    for worker in state.view.workers.values():
        if worker.worker_id not in gone:
            decide(state, WorkerSeen(worker_id=worker.worker_id, at=end), end)
    assert decide(state, Tick(), end) == []


@pytest.mark.parametrize("path", _HISTORIES, ids=lambda p: p.name)
def test_a_recorded_history_replayed_from_scratch_asks_only_for_what_it_records(
    path: Path,
) -> None:
    history = _History.load(path)
    state = DriverState()
    assert _feed(state, history, history.events, later=False) == []
    _at_rest(state, history, timedelta(0))


@pytest.mark.parametrize("path", _HISTORIES, ids=lambda p: p.name)
def test_a_driver_recovering_from_a_recorded_history_decides_nothing_new(path: Path) -> None:
    history = _History.load(path)
    state = DriverState()
    # The recovery path: the log replayed with everything decided discarded, long after.
    _feed(state, history, history.events, later=True)
    _at_rest(state, history, _LATER)


@pytest.mark.parametrize("path", _HISTORIES, ids=lambda p: p.name)
def test_a_driver_restarted_anywhere_in_a_recorded_history_redoes_only_what_it_records(
    path: Path,
) -> None:
    history = _History.load(path)
    events = history.events
    for cut in range(len(events) + 1):
        state = DriverState()
        _feed(state, history, events[:cut], later=False)
        after = events[cut - 1].seq if cut else 0
        now = events[max(cut - 1, 0)].envelope.occurred_at
        resumed = decide(state, Resume(), now)
        assert history.unexplained(resumed, after) == [], f"resumed after seq {after}"
        state.pending.clear()
        state.starting.clear()
        assert _feed(state, history, events[cut:], later=False) == [], f"cut at seq {after}"
        _at_rest(state, history, timedelta(0))


def test_the_histories_are_finished_runs_and_include_a_real_one() -> None:
    assert [p.name for p in _RECORDED] == ["demo.jsonl"]
    for path in _HISTORIES:
        history = _History.load(path)
        state = DriverState()
        _feed(state, history, history.events, later=False)
        # Every run ended, so its book left the live books for the finished ones.
        assert state.finished or path.name.startswith("legacy"), path.name  # worker events only
        assert state.runs == {}, path.name
        assert all(book.ended for run in state.finished if (book := state.book(run))), path.name
    demo = _History.load(_RECORDED[0]).events
    # Real: the demo's workers signed their events with the keys their claims named.
    assert any(s.envelope.signature for s in demo)
    assert any(isinstance(s.envelope.payload, RunCompleted) for s in demo)
