"""The driver core's merge lane: batches with a verify command, judged resolutions.

Pure: the Log harness of test_driver_core feeds events and settles effects by hand.
"""

from __future__ import annotations

from claudecluster.actors.driver import Dispatch, Merge, MergeBatch, Record
from claudecluster.events import (
    MergeConflict,
    RunFailed,
    RunPolicy,
    TaskMerged,
    TaskSucceeded,
)
from tests.domain.test_driver_core import Log, spec


def _succeed(log: Log, task_id: str, attempt: int = 1) -> None:
    log.run_task(task_id, attempt)
    log.event(TaskSucceeded(run_id="r", task_id=task_id, attempt=attempt, worker_id="w1"))


def _started(policy: RunPolicy, tasks: list[str]) -> Log:
    log = Log()
    for effect in log.plan([spec(t) for t in tasks], policy=policy):
        log.settle(effect)
    return log


def _merged(log: Log, merge: Merge, commit: str) -> None:
    event = TaskMerged(
        run_id="r", task_id=merge.task_id, attempt=merge.attempt, commit=commit,
        integration_branch="claudecluster/r",
    )  # fmt: skip
    log.settle(Record(key=merge.key, event=event, event_id=f"m-{merge.task_id}",
                      expected_last=0))  # fmt: skip


def test_results_waiting_while_a_merge_is_verified_go_together_in_success_order() -> None:
    log = _started(RunPolicy(verify_command="make test"), ["a", "b", "c", "d"])
    _succeed(log, "a")
    first = log.take(Merge)
    assert first.task_id == "a"
    for task_id in ("c", "b", "d"):
        _succeed(log, task_id)
    _merged(log, first, "c1")
    batch = log.take(MergeBatch)
    assert [item.task_id for item in batch.items] == ["c", "b", "d"]
    assert (batch.head, batch.verify) == ("c1", True)
    assert all(item.head == "c1" for item in batch.items)


def test_the_batch_size_is_capped_by_the_policy_and_no_verify_means_no_batch() -> None:
    log = _started(RunPolicy(verify_command="make test", merge_batch=2), ["a", "b", "c", "d"])
    _succeed(log, "a")
    first = log.take(Merge)
    for task_id in ("b", "c", "d"):
        _succeed(log, task_id)
    _merged(log, first, "c1")
    assert [item.task_id for item in log.take(MergeBatch).items] == ["b", "c"]
    plain = _started(RunPolicy(), ["a", "b"])
    _succeed(plain, "a")
    _succeed(plain, "b")
    assert plain.take(Merge).task_id == "a"
    assert not [e for e in plain.outbox if isinstance(e, MergeBatch)]


def test_a_refused_resolution_is_retried_with_the_problem_then_stops_saying_what_to_do() -> None:
    log = _started(RunPolicy(max_attempts=2), ["a"])
    _succeed(log, "a")
    merge = log.take(Merge)
    conflict = MergeConflict(
        run_id="r", task_id="a", attempt=1, files=("x.txt",), ours="h1", theirs="t1" * 20,
        policy="resolve",
    )  # fmt: skip
    log.settle(Record(key=merge.key, event=conflict, event_id="c-1", expected_last=0))
    resolution = log.take(Dispatch)
    assert resolution.queued.resolves_conflict
    assert "KEPT INTEGRATION SIDE:" in resolution.queued.note
    log.settle(resolution)
    _succeed(log, "a", 2)
    judged = log.take(Merge)
    assert judged.resolving == conflict
    refused = MergeConflict(
        run_id="r", task_id="a", attempt=2, files=("x.txt",), ours="h1", theirs=conflict.theirs,
        policy="resolve", problem="the resolution attempt changed nothing",
    )  # fmt: skip
    log.settle(Record(key=judged.key, event=refused, event_id="c-2", expected_last=0))
    again = log.take(Dispatch)
    assert "Your last resolution was refused: the resolution attempt changed nothing" in (
        again.queued.note
    )
    log.settle(again)
    _succeed(log, "a", 3)
    last = log.take(Merge)
    refused_again = MergeConflict(
        run_id="r", task_id="a", attempt=3, files=("x.txt",), ours="h1", theirs=conflict.theirs,
        policy="resolve", problem="conflict markers are left in x.txt",
    )  # fmt: skip
    log.settle(Record(key=last.key, event=refused_again, event_id="c-3", expected_last=0))
    failed = log.take(Record)
    assert isinstance(failed.event, RunFailed)
    assert failed.event.reason.startswith(
        "task 'a' still conflicts in x.txt after 3 attempts: conflict markers are left in x.txt"
    )
    assert "by hand" in failed.event.reason
