"""The driver core's live collision prediction: what it records, and when.

Pure: the Log harness of test_driver_core feeds events and settles effects by hand.
"""

from __future__ import annotations

from typing import Any

from claudecluster.actors.driver import Merge, Record
from claudecluster.events import MergeConflict, RunCompleted, TaskMerged, TaskSucceeded
from claudecluster.events.model import CollisionPredicted, CollisionSettled, TaskFilesTouched
from tests.domain.test_driver_core import Log, spec


def _started(tasks: list[Any]) -> Log:
    log = Log()
    for effect in log.plan(tasks):
        log.settle(effect)
    return log


def _touch(log: Log, task_id: str, *files: str, attempt: int = 1) -> None:
    log.event(TaskFilesTouched(run_id="r", task_id=task_id, attempt=attempt, files=files))


def _records(log: Log, kind: type[Any]) -> list[Record]:
    return [e for e in log.outbox if isinstance(e, Record) and isinstance(e.event, kind)]


def _merge(log: Log, task_id: str, commit: str, *, conflict: bool = False) -> None:
    log.event(TaskSucceeded(run_id="r", task_id=task_id, attempt=1, worker_id="w1"))
    merge = next(
        e for e in log.outbox + log.tick() if isinstance(e, Merge) and e.task_id == task_id
    )
    event: Any = (
        MergeConflict(run_id="r", task_id=task_id, attempt=1, files=("x.py",), ours="o",
                      theirs="t", policy="resolve")
        if conflict
        else TaskMerged(run_id="r", task_id=task_id, attempt=1, commit=commit,
                        integration_branch="claudecluster/r")
    )  # fmt: skip
    log.settle(Record(key=merge.key, event=event, event_id=f"m-{task_id}", expected_last=0))


def test_two_live_attempts_touching_one_file_are_predicted_once_the_later_named_first() -> None:
    log = _started([spec("a"), spec("b"), spec("c")])
    for task_id in ("a", "b", "c"):
        log.run_task(task_id)
    _touch(log, "a", "x.py")
    _touch(log, "c", "y.py")
    assert _records(log, CollisionPredicted) == []
    _touch(log, "b", "x.py", "z.py")
    (record,) = _records(log, CollisionPredicted)
    event = record.event
    assert isinstance(event, CollisionPredicted)
    assert (event.task_id, event.other_task_id, event.files) == ("b", "a", ("x.py",))
    assert event.action == "let_both"
    log.settle(record)
    _touch(log, "b", "x.py", "w.py")  # a new report of the same pair: nothing new
    assert _records(log, CollisionPredicted) == []


def test_a_report_of_an_attempt_no_longer_live_predicts_nothing() -> None:
    log = _started([spec("a"), spec("b")])
    log.run_task("a")
    log.run_task("b")
    _touch(log, "a", "x.py")
    _touch(log, "b", "y.py", attempt=2)  # not the live attempt: the projection refuses it
    _touch(log, "b", "y.py")
    assert _records(log, CollisionPredicted) == []


def test_a_prediction_settles_as_come_true_on_a_conflict_and_the_run_ends_after() -> None:
    log = _started([spec("a"), spec("b")])
    log.run_task("a")
    log.run_task("b")
    _touch(log, "a", "x.py")
    _touch(log, "b", "x.py")
    log.settle(_records(log, CollisionPredicted)[0])
    _merge(log, "a", "c1")
    assert _records(log, CollisionSettled) == []  # b's merge is still to come
    _merge(log, "b", "", conflict=True)
    (record,) = _records(log, CollisionSettled)
    assert isinstance(record.event, CollisionSettled)
    assert (record.event.came_true, record.event.outcome) == (True, "conflicted")


def test_a_false_alarm_settles_before_the_run_ends() -> None:
    log = _started([spec("a"), spec("b")])
    log.run_task("a")
    log.run_task("b")
    _touch(log, "a", "x.py")
    _touch(log, "b", "x.py")
    log.settle(_records(log, CollisionPredicted)[0])
    _merge(log, "a", "c1")
    _merge(log, "b", "c2")
    (record,) = _records(log, CollisionSettled)
    assert isinstance(record.event, CollisionSettled)
    assert (record.event.came_true, record.event.outcome) == (False, "merged_clean")
    # The run's end waits for the settlement (both are appends on the run's subject).
    assert _records(log, RunCompleted) == []
    log.settle(record)
    assert len(_records(log, RunCompleted)) == 1


def test_three_attempts_on_one_file_are_recorded_a_pair_at_a_time_a_failed_one_again() -> None:
    log = _started([spec("a"), spec("b"), spec("c")])
    for task_id in ("a", "b", "c"):
        log.run_task(task_id)
        _touch(log, task_id, "x.py")
    (first,) = _records(log, CollisionPredicted)
    log.fail(first)  # the conditional append lost a race: asked for again at once
    pairs = []
    for _ in range(3):
        (record,) = _records(log, CollisionPredicted)
        assert isinstance(record.event, CollisionPredicted)
        pairs.append((record.event.task_id, record.event.other_task_id))
        log.settle(record)
    assert pairs == [("b", "a"), ("c", "a"), ("c", "b")]
    log.tick()
    assert _records(log, CollisionPredicted) == []
