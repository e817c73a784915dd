"""The restart_later policy in the driver core: stop the later attempt of a predicted
collision, and run it again on top of the earlier task's merge.

Pure: the Log harness of test_driver_core feeds events and settles effects by hand; the
property at the end drives two tasks through random interleavings of worker reports and
effects, with appends conditional on the last sequence of their scope, as on JetStream.
"""

from __future__ import annotations

from typing import Any

from hypothesis import event, given, settings
from hypothesis import strategies as st

from claudecluster.actors.collisions import Runner, may_requeue, to_preempt
from claudecluster.actors.driver import Dispatch, Effect, Merge, PublishCommand, Record
from claudecluster.domain.lifecycle import TaskState
from claudecluster.events import (
    CancelRun,
    CancelTask,
    RunCancelled,
    RunCompleted,
    RunPolicy,
    TaskAssigned,
    TaskCancelled,
    TaskFailed,
    TaskMerged,
    TaskStarted,
    TaskSucceeded,
)
from claudecluster.events.model import (
    CollisionPredicted,
    CollisionSettled,
    TaskFilesTouched,
    TaskPreempted,
    TaskRetryScheduled,
)
from claudecluster.events.subjects import scope_filter
from claudecluster.projections.views import task_key
from tests.domain.test_driver_core import Log, spec

RESTART = RunPolicy(on_collision="restart_later")


def _started(policy: RunPolicy = RESTART, tasks: tuple[str, ...] = ("a", "b")) -> Log:
    log = Log()
    for effect in log.plan([spec(t) for t in tasks], policy=policy):
        log.settle(effect)
    for task_id in tasks:
        log.run_task(task_id)
    return log


def _touch(log: Log, task_id: str, *files: str, attempt: int = 1) -> None:
    log.event(TaskFilesTouched(run_id="r", task_id=task_id, attempt=attempt, files=files))


def _asked(log: Log, kind: type[Any]) -> list[Record]:
    return [e for e in log.outbox if isinstance(e, Record) and isinstance(e.event, kind)]


def _state(log: Log, task_id: str) -> TaskState:
    return log.state.view_of("r").tasks[task_key("r", task_id)].state


def _merge(log: Log, task_id: str, commit: str, attempt: int = 1) -> None:
    log.event(TaskSucceeded(run_id="r", task_id=task_id, attempt=attempt, worker_id="w1"))
    merge = next(
        e for e in log.outbox + log.tick() if isinstance(e, Merge) and e.task_id == task_id
    )
    merged = TaskMerged(run_id="r", task_id=task_id, attempt=attempt, commit=commit,
                        integration_branch="claudecluster/r")  # fmt: skip
    log.settle(Record(key=merge.key, event=merged, event_id=f"m-{task_id}", expected_last=0))


def _predicted(log: Log) -> None:
    """Both touched x.py: the prediction is recorded; the preemption is asked for."""
    _touch(log, "a", "x.py")
    _touch(log, "b", "x.py")
    (record,) = _asked(log, CollisionPredicted)
    assert isinstance(record.event, CollisionPredicted)
    assert record.event.action == "restart_later"
    log.settle(record)


def _preempted(log: Log) -> TaskPreempted:
    _predicted(log)
    (record,) = _asked(log, TaskPreempted)
    log.settle(record)
    assert isinstance(record.event, TaskPreempted)
    return record.event


def test_the_later_attempt_is_stopped_and_rerun_on_the_earlier_merge() -> None:
    log = _started()
    preemption = _preempted(log)
    assert (preemption.task_id, preemption.attempt, preemption.other_task_id) == ("b", 1, "a")
    assert preemption.files == ("x.py",)
    assert _state(log, "b") is TaskState.PREEMPTED
    # Its worker is told to stop that attempt, and only that one.
    (stop,) = [e for e in log.outbox if isinstance(e, PublishCommand)]
    assert isinstance(stop.command, CancelTask)
    assert (stop.command.task_id, stop.command.attempt) == ("b", 1)
    log.settle(stop)
    # The driver reads its own stop command back: it ends nothing.
    assert log.command(stop.command, command_id=stop.command_id) == []
    assert _state(log, "b") is TaskState.PREEMPTED
    # Not queued again while "a" has not merged.
    log.event(TaskSucceeded(run_id="r", task_id="a", attempt=1, worker_id="w1"))
    assert not [e for e in log.outbox + log.tick() if isinstance(e, Dispatch)]
    merge = next(e for e in log.outbox if isinstance(e, Merge))
    merged = TaskMerged(run_id="r", task_id="a", attempt=1, commit="c-a",
                        integration_branch="claudecluster/r")  # fmt: skip
    log.settle(Record(key=merge.key, event=merged, event_id="m-a", expected_last=0))
    (rerun,) = [e for e in log.outbox if isinstance(e, Dispatch)]
    assert (rerun.queued.task_id, rerun.queued.attempt) == ("b", 2)
    assert rerun.queued.base_commit == "c-a"  # on top of the earlier task's merge
    assert "predicted to collide with 'a'" in rerun.queued.note
    log.settle(rerun)
    log.run_task("b", attempt=2)
    _merge(log, "b", "c-b", attempt=2)
    (settled,) = _asked(log, CollisionSettled)
    assert isinstance(settled.event, CollisionSettled)
    assert (settled.event.outcome, settled.event.came_true) == ("restarted", False)
    log.settle(settled)
    (done,) = _asked(log, RunCompleted)
    assert isinstance(done.event, RunCompleted)
    assert (done.event.tasks_succeeded, done.event.tasks_failed) == (2, 0)
    assert done.event.preempted_attempts == 1
    task = log.state.view_of("r").tasks[task_key("r", "b")]
    assert (task.preemptions, task.preempted_by, task.failure) == (1, "a", None)


def test_with_let_both_nothing_is_stopped() -> None:
    log = _started(policy=RunPolicy())
    _touch(log, "a", "x.py")
    _touch(log, "b", "x.py")
    (record,) = _asked(log, CollisionPredicted)
    assert isinstance(record.event, CollisionPredicted)
    assert record.event.action == "let_both"
    log.settle(record)
    assert _asked(log, TaskPreempted) == []


def test_a_preempted_attempt_counts_against_no_attempt_limit() -> None:
    log = _started(policy=RunPolicy(on_collision="restart_later", max_attempts=2))
    _preempted(log)
    _merge(log, "a", "c-a")
    (rerun,) = [e for e in log.outbox if isinstance(e, Dispatch)]
    log.settle(rerun)
    log.run_task("b", attempt=2)
    log.event(TaskFailed(run_id="r", task_id="b", attempt=2, reason="overloaded",
                         failure_class="api_error", retryable=True))  # fmt: skip
    # Attempt 2 is the first that counts: one retry is left of max_attempts 2.
    (retry,) = _asked(log, TaskRetryScheduled)
    assert isinstance(retry.event, TaskRetryScheduled)
    assert retry.event.next_attempt == 3


def test_the_later_is_requeued_at_once_when_the_earlier_fails_for_good() -> None:
    log = _started(policy=RunPolicy(on_collision="restart_later", retry_classes=()))
    _preempted(log)
    log.event(TaskFailed(run_id="r", task_id="a", attempt=1, reason="broken",
                         failure_class="agent_error"))  # fmt: skip
    (rerun,) = [e for e in log.outbox + log.tick() if isinstance(e, Dispatch)]
    assert (rerun.queued.task_id, rerun.queued.attempt) == ("b", 2)
    assert rerun.queued.base_commit == "base"


def test_the_later_is_requeued_at_once_when_the_earlier_is_cancelled() -> None:
    log = _started()
    _preempted(log)
    log.event(TaskCancelled(run_id="r", task_id="a", attempt=1, reason="on request"))
    rerun = [e for e in log.outbox + log.tick() if isinstance(e, Dispatch)]
    assert [(e.queued.task_id, e.queued.attempt) for e in rerun] == [("b", 2)]


def test_an_attempt_that_finished_before_its_preemption_landed_is_not_stopped() -> None:
    log = _started()
    _predicted(log)
    (record,) = _asked(log, TaskPreempted)
    # The worker's result lands first: the driver's conditional append is refused.
    log.event(TaskSucceeded(run_id="r", task_id="b", attempt=1, worker_id="w1"))
    assert record.expected_last != log.state.scope_seq[scope_filter(record.event)]
    log.fail(record)
    log.tick()
    assert _asked(log, TaskPreempted) == []
    assert not [e for e in log.outbox if isinstance(e, PublishCommand)]
    assert any(isinstance(e, Merge) and e.task_id == "b" for e in log.outbox)


def test_a_pair_predicted_both_ways_stops_only_the_later_started_once() -> None:
    log = _started()
    for later, earlier in (("a", "b"), ("b", "a")):  # as two drivers might have recorded
        log.event(CollisionPredicted(run_id="r", task_id=later, attempt=1,
                                     other_task_id=earlier, other_attempt=1, files=("x.py",),
                                     action="restart_later"))  # fmt: skip
    log.tick()
    stops = [r.event for r in _asked(log, TaskPreempted) if isinstance(r.event, TaskPreempted)]
    assert [(e.task_id, e.other_task_id) for e in stops] == [("b", "a")]


def test_a_run_cancelled_meanwhile_cancels_the_preempted_task_and_requeues_nothing() -> None:
    log = _started()
    _preempted(log)
    effects = log.command(CancelRun(run_id="r", reason="enough"), command_id="cancel")
    cancelled = [e for e in effects if isinstance(e, Record)]
    # The preempted task is no worker's any more: the driver records its cancellation.
    assert {type(e.event) for e in cancelled} == {TaskCancelled, RunCancelled}
    assert [e.event.task_id for e in cancelled if isinstance(e.event, TaskCancelled)] == ["b"]
    for effect in cancelled:
        log.settle(effect)
    assert _state(log, "b") is TaskState.CANCELLED
    log.event(TaskSucceeded(run_id="r", task_id="a", attempt=1, worker_id="w1"))
    assert not [e for e in log.outbox + log.tick() if isinstance(e, Dispatch)]


def test_a_queued_attempt_is_preempted_without_a_stop_command() -> None:
    log = Log()
    for effect in log.plan([spec("a"), spec("b")], policy=RESTART):
        log.settle(effect)
    log.run_task("a")
    prediction = CollisionPredicted(run_id="r", task_id="b", attempt=1, other_task_id="a",
                                    other_attempt=1, files=("x.py",),
                                    action="restart_later")  # fmt: skip
    log.event(prediction)
    (record,) = _asked(log, TaskPreempted)
    log.settle(record)
    assert _state(log, "b") is TaskState.PREEMPTED
    assert not [e for e in log.outbox if isinstance(e, PublishCommand)]


def test_only_the_later_of_a_pair_is_stopped_and_never_for_a_task_that_will_not_merge() -> None:
    def runner(task_id: str, order: int, standing: Any, attempt: int = 1) -> Runner:
        return Runner(task_id=task_id, order=order, attempt=attempt, predicted_attempt=1,
                      standing=standing)  # fmt: skip

    early, late = runner("a", 1, "live"), runner("b", 2, "live")
    assert to_preempt(early, late) == to_preempt(late, early) == (late, early)
    assert to_preempt(early, runner("b", 2, "finishing")) is None  # finished: nothing to stop
    assert to_preempt(early, runner("b", 2, "live", attempt=2)) is None  # not the predicted one
    assert to_preempt(runner("a", 1, "gone"), late) is None
    assert to_preempt(runner("a", 1, "preempted"), late) is None
    assert to_preempt(runner("a", 1, "merged"), late) == (late, runner("a", 1, "merged"))
    assert [may_requeue(s) for s in ("live", "finishing", "merged", "preempted", "gone")] == [
        False, False, True, False, True,
    ]  # fmt: skip


# ----------------------------------------------------------------------------------------
# Random interleavings
# ----------------------------------------------------------------------------------------


class _Recording(Log):
    """The harness, keeping every event it fed the driver."""

    def __init__(self) -> None:
        super().__init__()
        self.events: list[Any] = []

    def event(self, event: Any) -> list[Effect]:
        self.events.append(event)
        return super().event(event)


class _World:
    """Two tasks on one file, workers that report as they are told, and effects carried
    out in any order, each conditional append checked against its scope as JetStream
    would. Merging assigns a fresh commit; a merge always succeeds (this property is about
    who is stopped and when, not about git)."""

    def __init__(self) -> None:
        self.log = _Recording()
        self.commits = 0
        self.merged_at: dict[str, str] = {}
        self.effects: list[Effect] = []
        self.workers: dict[str, list[Any]] = {}  # task -> the worker events still to report
        self.dispatched: list[tuple[str, int, str]] = []  # (task, attempt, base)
        self.take(self.log.plan([spec("a"), spec("b")], policy=RESTART))

    def take(self, effects: list[Effect]) -> None:
        self.effects += [e for e in effects if e not in self.effects]
        self.log.outbox.clear()

    def moves(self, finish: bool = True) -> list[tuple[str, Any]]:
        """What may happen next; with ``finish`` false, no attempt reports its result
        (so the two attempts overlap more often)."""
        return [("effect", e) for e in self.effects] + [
            ("worker", t)
            for t, steps in sorted(self.workers.items())
            if steps and (finish or not isinstance(steps[0], TaskSucceeded))
        ]

    def carry_out(self, effect: Effect) -> None:
        self.effects.remove(effect)
        state = self.log.state
        if isinstance(effect, Record | Dispatch):
            event = effect.event if isinstance(effect, Record) else effect.queued
            if effect.expected_last is not None and effect.expected_last != state.scope_seq.get(
                scope_filter(event), 0
            ):
                self.take(self.log.fail(effect))
                return
            if isinstance(effect, Dispatch):
                queued = effect.queued
                self.dispatched.append((queued.task_id, queued.attempt, queued.base_commit))
                self.workers[queued.task_id] = self._attempt(queued.task_id, queued.attempt)
            self.take(self.log.settle(effect))
        elif isinstance(effect, Merge):
            self.commits += 1
            commit = f"c{self.commits}"
            self.merged_at[effect.task_id] = commit
            merged = TaskMerged(run_id="r", task_id=effect.task_id, attempt=effect.attempt,
                                commit=commit, integration_branch="claudecluster/r")  # fmt: skip
            record = Record(key=effect.key, event=merged, event_id=f"m{commit}", expected_last=0)
            self.take(self.log.settle(record))
        else:
            if isinstance(effect, PublishCommand) and isinstance(effect.command, CancelTask):
                stopped = effect.command
                if stopped.attempt:  # the worker stops that attempt: it reports no more
                    steps = self.workers.get(stopped.task_id, [])
                    if steps and steps[0].attempt == stopped.attempt:
                        self.workers[stopped.task_id] = []
            self.take(self.log.settle(effect))

    @staticmethod
    def _attempt(task_id: str, attempt: int) -> list[Any]:
        worker = f"w-{task_id}"
        return [
            TaskAssigned(run_id="r", task_id=task_id, attempt=attempt, worker_id=worker),
            TaskStarted(run_id="r", task_id=task_id, attempt=attempt, worker_id=worker),
            TaskFilesTouched(run_id="r", task_id=task_id, attempt=attempt, files=("x.py",)),
            TaskSucceeded(run_id="r", task_id=task_id, attempt=attempt, worker_id=worker),
        ]

    def report(self, task_id: str) -> None:
        event = self.workers[task_id].pop(0)
        self.take(self.log.event(event))


@settings(max_examples=150, deadline=None)
@given(st.data())
def test_any_interleaving_stops_at_most_the_later_attempt_and_both_changes_merge(
    data: st.DataObject,
) -> None:
    world = _World()
    hold = data.draw(st.integers(0, 40), label="moves before any result is reported")
    for step in range(400):
        moves = world.moves(finish=step >= hold) or world.moves()
        if not moves:
            world.take(world.log.tick())
            moves = world.moves()
            if not moves:
                break
        kind, what = data.draw(st.sampled_from(moves))
        if kind == "effect":
            world.carry_out(what)
        else:
            world.report(what)
    log = world.log
    events = log.events
    preempted = [e for e in events if isinstance(e, TaskPreempted)]
    event(f"attempts preempted: {len(preempted)}")
    # The run completed with both tasks merged and nothing counted as failed.
    (done,) = [e for e in events if isinstance(e, RunCompleted)]
    assert (done.tasks_succeeded, done.tasks_failed) == (2, 0)
    assert done.preempted_attempts == len(preempted) <= 1
    assert not [e for e in events if isinstance(e, TaskFailed | TaskCancelled)]
    for preemption in preempted:
        # The stopped one is the attempt queued later; its re-run waited for the other's
        # merge and started from it.
        queued_order = [(t, a) for t, a, _ in world.dispatched]
        assert queued_order.index((preemption.task_id, 1)) > queued_order.index(
            (preemption.other_task_id, 1)
        )
        rerun = [d for d in world.dispatched if d[:2] == (preemption.task_id, 2)]
        assert rerun == [(preemption.task_id, 2, world.merged_at[preemption.other_task_id])]
    # Every prediction was settled, as restarted when it stopped an attempt.
    settled = [e for e in events if isinstance(e, CollisionSettled)]
    predicted = [e for e in events if isinstance(e, CollisionPredicted)]
    assert len(settled) == len(predicted) <= 1
    if preempted:
        assert [s.outcome for s in settled] == ["restarted"]
