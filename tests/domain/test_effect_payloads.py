"""Effects carry what carrying them out needs: the shell reads nothing of the core's state.

The run's repository, its integration branch and its verify settings travel with each
Dispatch, Merge, MergeBatch, Verify and Rollback, so an effect in flight does not depend
on state that may move under it while it runs.
"""

from __future__ import annotations

from claudecluster.actors.driver import Dispatch, Merge, MergeBatch, Record, Rollback, Verify
from claudecluster.events import (
    MergeConflict,
    RollbackRun,
    RunPolicy,
    TaskSucceeded,
)
from tests.domain.test_driver_core import Log, spec
from tests.domain.test_merge_queue_core import _merged, _started, _succeed

_POLICY = RunPolicy(verify_command="make check", verify_timeout_s=42.0, verify_parallel=3)


def _succeeded(log: Log, task_id: str) -> list[object]:
    log.run_task(task_id)
    return list(log.event(TaskSucceeded(run_id="r", task_id=task_id, attempt=1, worker_id="w1")))


def test_a_dispatch_carries_the_runs_repository_and_branch() -> None:
    log = Log()
    log.plan([spec("a")])
    dispatch = log.take(Dispatch)
    assert (dispatch.repo, dispatch.integration_branch) == ("/repo", "claudecluster/r")


def test_a_merge_carries_the_repository_and_the_verify_command_and_its_limit() -> None:
    log = Log()
    log.plan([spec("a")], policy=_POLICY)
    log.settle(log.take(Dispatch))
    _succeed(log, "a")
    merge = log.take(Merge)
    assert merge.repo == "/repo"
    assert merge.verify
    assert (merge.verify_command, merge.verify_timeout_s) == ("make check", 42.0)


def test_a_batch_carries_the_verify_settings_its_bisection_needs() -> None:
    log = _started(_POLICY, ["a", "b", "c"])
    _succeed(log, "a")
    first = log.take(Merge)
    _succeed(log, "b")
    _succeed(log, "c")
    _merged(log, first, "m1")  # b and c waited for a's merge: they go together
    batch = log.take(MergeBatch)
    assert [item.task_id for item in batch.items] == ["b", "c"]
    assert (batch.repo, batch.verify_command, batch.verify_timeout_s) == (
        "/repo",
        "make check",
        42.0,
    )
    assert batch.verify_parallel == 3
    assert all(item.repo == "/repo" for item in batch.items)


def test_a_resolution_dispatch_carries_the_branch_its_conflicted_merge_is_made_on() -> None:
    log = Log()
    log.plan([spec("a")])
    log.settle(log.take(Dispatch))
    _succeed(log, "a")
    log.take(Merge)
    log.event(MergeConflict(run_id="r", task_id="a", attempt=1, files=("x",), ours="o", theirs="t"))
    resolution = log.take(Dispatch)
    assert resolution.conflict == ("o", "t")
    assert (resolution.repo, resolution.integration_branch) == ("/repo", "claudecluster/r")


def test_a_final_verify_and_a_rollback_carry_the_repository() -> None:
    end = RunPolicy(verify_command="make check", verify_when="end", verify_timeout_s=7.0)
    log = _started(end, ["a"])
    _succeed(log, "a")
    _merged(log, log.take(Merge), "m1")
    verify = log.take(Verify)
    assert (verify.repo, verify.verify_command, verify.verify_timeout_s) == (
        "/repo",
        "make check",
        7.0,
    )
    log.settle(Record(key=verify.key, event=verify.done, event_id="done", expected_last=0))
    (rollback,) = log.command(RollbackRun(run_id="r", to_task="a"))
    assert isinstance(rollback, Rollback)
    assert (rollback.repo, rollback.integration_branch) == ("/repo", "claudecluster/r")
