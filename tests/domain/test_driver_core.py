"""The driver's decisions, message by message, with no I/O and a hand-driven clock.

The shell (runtime/driver.py) and the simulations run exactly this code; here each rule
is pinned down on its own: planning, ordering, caps, pacing, rate limits, retries with
their changes, skipping, failing, liveness, the budget, commands and rollback.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from itertools import count
from typing import Any

import pytest

from claudecluster.actors.driver import (
    Dispatch,
    DriverConfig,
    DriverState,
    Effect,
    EffectFailed,
    EffectSettled,
    Merge,
    Plan,
    PublishCommand,
    Record,
    Resume,
    Rollback,
    Tick,
    WorkerSeen,
    decide,
    retry_limits,
)
from claudecluster.events import (
    CancelRun,
    CancelTask,
    CommandRejected,
    RollbackRun,
    RunBudgetReached,
    RunCancelled,
    RunCompleted,
    RunFailed,
    RunPlanned,
    RunPolicy,
    RunSubmitted,
    SubmitRun,
    TaskAssigned,
    TaskCancelled,
    TaskFailed,
    TaskLimits,
    TaskMerged,
    TaskQueued,
    TaskRateLimited,
    TaskRetryScheduled,
    TaskSkipped,
    TaskSpec,
    TaskStarted,
    TaskSucceeded,
    WorkerHeartbeat,
    WorkerJoined,
    WorkerLost,
    wrap_command,
    wrap_event,
)
from claudecluster.events.envelope import StoredEvent
from claudecluster.events.model import Event
from claudecluster.events.subjects import event_subject, scope_filter

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def spec(task_id: str, *deps: str, **extra: Any) -> TaskSpec:
    return TaskSpec(task_id=task_id, title=task_id, prompt=f"do {task_id}", depends_on=deps,
                    **extra)  # fmt: skip


class Log:
    """Feeds events to the driver in sequence order, as the shell does."""

    def __init__(self, config: DriverConfig | None = None) -> None:
        self.state = DriverState(config=config or DriverConfig())
        self.seq = count(1)
        self.now = T0
        self.outbox: list[Effect] = []

    def _out(self, effects: list[Effect]) -> list[Effect]:
        self.outbox += effects
        return effects

    def take(self, kind: type[Any]) -> Any:
        """The oldest effect of ``kind`` the driver asked for (ticking once if none yet)."""
        for effect in self.outbox + self.tick():
            if isinstance(effect, kind):
                self.outbox.remove(effect)
                return effect
        raise AssertionError(f"no {kind.__name__} effect was asked for")

    def at(self, seconds: float) -> Log:
        self.now = T0 + timedelta(seconds=seconds)
        return self

    def event(self, event: Event) -> list[Effect]:
        seq = next(self.seq)
        stored = StoredEvent(
            seq=seq,
            subject=event_subject(event),
            envelope=wrap_event(event, event_id=f"e{seq}", now=self.now),
        )
        return self._out(decide(self.state, stored, self.now))

    def settle(self, effect: Effect) -> list[Effect]:
        """Record what the effect asked for and tell the driver it is done."""
        if effect in self.outbox:
            self.outbox.remove(effect)
        effects: list[Effect] = []
        if isinstance(effect, Record):
            effects += self.event(effect.event)
        elif isinstance(effect, Dispatch) and not effect.republish:
            effects += self.event(effect.queued)  # a republish records nothing
        settled = EffectSettled(key=effect.key, seq=self.state.view.last_seq)
        return effects + self._out(decide(self.state, settled, self.now))

    def fail(self, effect: Effect) -> list[Effect]:
        """Tell the driver the effect failed (what it recorded, if anything, is up to the
        caller)."""
        if effect in self.outbox:
            self.outbox.remove(effect)
        failed = EffectFailed(key=effect.key, reason="the store did not answer")
        return self._out(decide(self.state, failed, self.now))

    def command(self, command: Any, command_id: str = "c1") -> list[Effect]:
        envelope = wrap_command(command, command_id=command_id, now=self.now, correlation_id="x")
        return self._out(decide(self.state, envelope, self.now))

    def tick(self) -> list[Effect]:
        return self._out(decide(self.state, Tick(), self.now))

    def plan(self, tasks: list[TaskSpec], **submitted: Any) -> list[Effect]:
        """A submitted and planned run; returns the effects of the plan."""
        self.event(RunSubmitted(run_id="r", goal="g", repo="/repo", plan=tuple(tasks),
                                **submitted))  # fmt: skip
        return self.event(
            RunPlanned(run_id="r", tasks=tuple(tasks), base_commit="base",
                       integration_branch="claudecluster/r")
        )  # fmt: skip

    def run_task(self, task_id: str, attempt: int = 1, worker: str = "w1") -> None:
        self.event(TaskAssigned(run_id="r", task_id=task_id, attempt=attempt, worker_id=worker))
        self.event(TaskStarted(run_id="r", task_id=task_id, attempt=attempt, worker_id=worker,
                               session_id=f"s-{task_id}"))  # fmt: skip


def dispatched(effects: list[Effect]) -> list[str]:
    return [e.queued.task_id for e in effects if isinstance(e, Dispatch)]


def test_a_submit_command_is_recorded_once_and_a_second_run_with_its_id_is_refused() -> None:
    log = Log()
    submit = SubmitRun(run_id="r", goal="g", repo="/repo", plan=(spec("a"),))
    (effect,) = log.command(submit)
    assert isinstance(effect, Record)
    assert isinstance(effect.event, RunSubmitted)
    assert effect.event_id == "submitted-r"
    assert log.command(submit) == []  # the same command redelivered
    log.settle(effect)
    (refusal,) = log.command(submit, command_id="c2")
    assert isinstance(refusal, Record)
    assert isinstance(refusal.event, CommandRejected)
    assert "already exists" in refusal.event.reason


def test_an_invalid_inline_plan_is_refused_naming_the_problem() -> None:
    log = Log()
    bad = SubmitRun(run_id="r", goal="g", repo="/repo", plan=(spec("a", "ghost"),))
    (refusal,) = log.command(bad)
    assert isinstance(refusal, Record)
    assert isinstance(refusal.event, CommandRejected)
    assert "unknown task 'ghost'" in refusal.event.reason


def test_the_summary_sums_the_merged_tasks_model_time_beside_the_parallelism() -> None:
    log = Log()
    for effect in log.plan([spec("a"), spec("b")]):
        log.settle(effect)
    log.run_task("a")
    log.run_task("b", worker="w2")
    # Both ran 10 s side by side, each waiting 4 s and 6 s on the model.
    log.at(10).event(TaskSucceeded(run_id="r", task_id="a", attempt=1, worker_id="w1",
                                   model_time_ms=4000))  # fmt: skip
    log.at(10).event(TaskSucceeded(run_id="r", task_id="b", attempt=1, worker_id="w2",
                                   model_time_ms=6000))  # fmt: skip
    for task, commit in (("a", "m1"), ("b", "m2")):
        merge = log.take(Merge)
        log.event(TaskMerged(run_id="r", task_id=task, attempt=1, commit=commit,
                             integration_branch="claudecluster/r"))  # fmt: skip
        effects = log.settle(merge)
    (end,) = [e for e in effects if isinstance(e, Record)]
    assert isinstance(end.event, RunCompleted)
    assert (end.event.speedup, end.event.model_time_s) == (2, 10)


@pytest.mark.parametrize(
    ("repo", "base_ref", "named"),
    [("", "HEAD", "names no repository"), ("/re\x00po", "HEAD", "repo '/re\\x00po'"),
     ("/repo", "main\n", "base_ref 'main\\n'")],
)  # fmt: skip
def test_a_run_on_an_unusable_repository_or_ref_is_refused_naming_it(
    repo: str, base_ref: str, named: str
) -> None:
    log = Log()
    bad = SubmitRun(run_id="r", goal="g", repo=repo, base_ref=base_ref, plan=(spec("a"),))
    (refusal,) = log.command(bad)
    assert isinstance(refusal, Record)
    assert isinstance(refusal.event, CommandRejected)
    assert named in refusal.event.reason


def test_a_submitted_run_is_planned_then_its_roots_start_longest_path_first() -> None:
    log = Log()
    effects = log.event(RunSubmitted(run_id="r", goal="g", repo="/repo", plan=(spec("a"),)))
    assert [type(e) for e in effects] == [Plan]
    # "long" heads a chain of three; "hi" has the higher priority but a shorter path.
    tasks = [spec("hi", priority=9), spec("long"), spec("mid", "long"), spec("end", "mid")]
    effects = log.event(
        RunPlanned(run_id="r", tasks=tuple(tasks), base_commit="base",
                   integration_branch="claudecluster/r")
    )  # fmt: skip
    assert dispatched(effects) == ["long", "hi"]
    first = next(e for e in effects if isinstance(e, Dispatch))
    assert (first.queued.attempt, first.queued.base_commit, first.event_id) == (
        1, "base", "queued-r-long-1",
    )  # fmt: skip


def test_a_queued_task_is_cancelled_by_the_driver_and_a_running_one_left_to_its_worker() -> None:
    log = Log()
    for effect in log.plan([spec("a"), spec("b")]):
        log.settle(effect)
    log.run_task("a")
    assert log.command(CancelTask(run_id="r", task_id="a"), command_id="c1") == []
    (cancel,) = log.command(CancelTask(run_id="r", task_id="b"), command_id="c2")
    assert isinstance(cancel, Record)
    assert isinstance(cancel.event, TaskCancelled)
    assert (cancel.event.task_id, cancel.expected_last) == ("b", log.state.scope_seq[
        scope_filter(cancel.event)])  # fmt: skip


def test_cancelling_a_run_records_its_queued_tasks_cancelled_too() -> None:
    log = Log()
    for effect in log.plan([spec("a"), spec("b"), spec("c", "a")]):
        log.settle(effect)
    log.run_task("a")
    effects = log.command(CancelRun(run_id="r"))
    cancelled = {e.event.task_id for e in effects
                 if isinstance(e, Record) and isinstance(e.event, TaskCancelled)}  # fmt: skip
    assert cancelled == {"b", "c"}  # queued and pending; "a" is its worker's to stop
    assert any(isinstance(e, Record) and isinstance(e.event, RunCancelled) for e in effects)


def _run_end(effects: list[Effect]) -> Record:
    (end,) = [e for e in effects if isinstance(e, Record)
              and isinstance(e.event, RunCompleted | RunFailed | RunCancelled)]  # fmt: skip
    return end


def test_a_run_whose_worker_stopped_its_last_task_for_a_cancel_ends_cancelled() -> None:
    # The worker heard the run's cancel before the driver did: the task it stopped is the
    # run's last, and the run ends as the cancel says, not as completed with none done.
    log = Log()
    for effect in log.plan([spec("a")]):
        log.settle(effect)
    log.run_task("a")
    stopped = TaskCancelled(run_id="r", task_id="a", attempt=1, reason="run r cancelled",
                            run_cancel="c9")  # fmt: skip
    end = _run_end(log.event(stopped))
    assert isinstance(end.event, RunCancelled)
    assert (end.event.reason, end.causation_id) == ("run r cancelled", "c9")
    # The command itself, decided while that end is on its way, adds nothing; once the
    # end is recorded, a delivery of it is known as done.
    assert log.command(CancelRun(run_id="r"), command_id="c9") == []
    log.settle(end)
    assert log.command(CancelRun(run_id="r"), command_id="c9") == []


def test_a_run_cancel_that_lost_the_race_for_the_log_is_decided_again_not_completed() -> None:
    # The driver decided the cancel, but its worker recorded the task it stopped for the
    # same command first, so the conditional append of RunCancelled failed.
    log = Log()
    for effect in log.plan([spec("a")]):
        log.settle(effect)
    log.run_task("a")
    first = _run_end(log.command(CancelRun(run_id="r", reason="not needed"), command_id="c9"))
    log.event(TaskCancelled(run_id="r", task_id="a", attempt=1, reason="not needed"))
    again = _run_end(log.fail(first))
    assert isinstance(again.event, RunCancelled)
    assert (again.event.reason, again.causation_id) == ("not needed", "c9")
    assert again.expected_last == log.state.scope_seq[scope_filter(again.event)]
    assert again.event_id == first.event_id  # the same fact, once in the log


def _first_start(log: Log) -> Dispatch:
    """A one-task run's start, taken out of the outbox and not yet carried out."""
    log.plan([spec("a")])
    start: Dispatch = log.take(Dispatch)
    return start


def test_a_work_item_whose_publish_failed_after_its_task_queued_is_published_again() -> None:
    log = Log()
    start = _first_start(log)
    # TaskQueued was recorded, then the publish failed and the effect with it.
    log.event(start.queued)
    (again,) = [e for e in log.fail(start) if isinstance(e, Dispatch)]
    assert (again.queued, again.republish) == (start.queued, True)
    # Settled, it is not published a third time.
    assert not [e for e in log.settle(again) if isinstance(e, Dispatch)]


def test_a_failed_dispatch_read_back_late_goes_out_again_as_the_same_attempt() -> None:
    log = Log()
    start = _first_start(log)
    # The effect failed before its TaskQueued (recorded or not) was read back: the task
    # looks pending, so it is started again as the same attempt (the same event id, so a
    # recorded TaskQueued is not recorded twice).
    (redo,) = [e for e in log.fail(start) if isinstance(e, Dispatch)]
    assert (redo.event_id, redo.queued.attempt, redo.republish) == (start.event_id, 1, False)
    log.event(start.queued)  # read back now; the redo is still in flight: nothing more
    settled = decide(log.state, EffectSettled(key=redo.key, seq=log.state.view.last_seq),
                     log.now)  # fmt: skip
    # At most the item once more, as a republish of the same attempt; then nothing.
    assert all(e.republish and e.queued == start.queued
               for e in settled if isinstance(e, Dispatch))  # fmt: skip
    assert not [e for e in log.tick() if isinstance(e, Dispatch)]


def test_a_task_starts_only_after_every_dependency_merged_from_the_new_head() -> None:
    log = Log()
    effects = log.plan([spec("a"), spec("b"), spec("c", "a", "b")])
    for effect in effects:
        log.settle(effect)
    for task in ("a", "b"):
        log.run_task(task)
        effects = log.event(TaskSucceeded(run_id="r", task_id=task, attempt=1, worker_id="w1"))
        assert "c" not in dispatched(effects)  # succeeded is not enough: it must merge
    merge = log.take(Merge)
    assert merge.task_id == "a"
    log.event(TaskMerged(run_id="r", task_id="a", attempt=1, commit="m1",
                         integration_branch="claudecluster/r"))  # fmt: skip
    effects = log.settle(merge)
    assert "c" not in dispatched(effects)
    merge = log.take(Merge)
    assert (merge.task_id, merge.head) == ("b", "m1")
    log.event(TaskMerged(run_id="r", task_id="b", attempt=1, commit="m2",
                         integration_branch="claudecluster/r"))  # fmt: skip
    log.settle(merge)
    start = log.take(Dispatch)
    assert (start.queued.task_id, start.queued.base_commit) == ("c", "m2")


def test_the_per_run_cap_and_the_start_pace_hold() -> None:
    log = Log(DriverConfig(start_burst=2, starts_per_s=1.0))
    effects = log.plan([spec(f"t{i}") for i in range(6)], max_parallel=3)
    assert len(dispatched(effects)) == 2  # the bucket holds two starts
    for effect in effects:
        log.settle(effect)
    assert dispatched(log.at(0.5).tick()) == []  # half a token
    effects = log.at(1.0).tick()
    assert len(dispatched(effects)) == 1
    for effect in effects:
        log.settle(effect)
    assert dispatched(log.at(10).tick()) == []  # three running: the run's cap


def test_a_rate_limit_report_pauses_all_starts_then_they_recover() -> None:
    log = Log(DriverConfig(start_burst=10, rate_limit_backoff_s=5))
    effects = log.plan([spec("a")] + [spec(f"t{i}", "a") for i in range(3)] + [spec("x")])
    for effect in effects:
        log.settle(effect)
    log.run_task("a")
    log.event(TaskRateLimited(run_id="r", task_id="a", attempt=1, status=429, retry_after_s=8))
    log.event(TaskSucceeded(run_id="r", task_id="a", attempt=1, worker_id="w1"))
    merge = log.take(Merge)
    log.event(TaskMerged(run_id="r", task_id="a", attempt=1, commit="m1",
                         integration_branch="claudecluster/r"))  # fmt: skip
    assert dispatched(log.settle(merge)) == []  # retry-after 8 s beats the 5 s base
    assert dispatched(log.at(7.9).tick()) == []
    assert len(dispatched(log.at(8.0).tick())) == 3


def test_a_retryable_failure_backs_off_then_retries_with_more_room() -> None:
    log = Log()
    policy = RunPolicy(backoff_base_s=4, max_attempts=3)
    for effect in log.plan([spec("a", limits=TaskLimits(max_turns=10))], policy=policy):
        log.settle(effect)
    log.run_task("a")
    (retry,) = log.event(TaskFailed(run_id="r", task_id="a", attempt=1, reason="out of turns",
                                    failure_class="max_turns", retryable=True))  # fmt: skip
    assert isinstance(retry, Record)
    assert isinstance(retry.event, TaskRetryScheduled)
    assert (retry.event.next_attempt, retry.event.delay_s) == (2, 4.0)
    log.settle(retry)
    assert dispatched(log.at(3.9).tick()) == []
    (again,) = [e for e in log.at(4.0).tick() if isinstance(e, Dispatch)]
    assert again.queued.attempt == 2
    assert again.queued.limits == TaskLimits(max_turns=20)
    assert "attempt 2" in again.queued.note


def test_retry_limits_grow_only_what_ran_out() -> None:
    task = spec("a", limits=TaskLimits(max_turns=10, wall_time_s=100))
    assert retry_limits(task, "max_turns", 3) == TaskLimits(max_turns=40, wall_time_s=100)
    assert retry_limits(task, "timeout", 2) == TaskLimits(max_turns=10, wall_time_s=150)
    assert retry_limits(task, "api_error", 2) is None


def test_a_failure_that_is_not_retried_skips_every_dependent_with_the_reason() -> None:
    log = Log()
    for effect in log.plan([spec("a"), spec("b", "a"), spec("c", "b"), spec("free")]):
        log.settle(effect)
    log.run_task("a")
    effects = log.event(TaskFailed(run_id="r", task_id="a", attempt=1, reason="bad key",
                                   failure_class="auth"))  # fmt: skip
    skips = [e.event for e in effects if isinstance(e, Record) and isinstance(e.event, TaskSkipped)]
    assert len(skips) == len([e for e in effects if isinstance(e, Record)])
    assert [(s.task_id, s.blocked_by) for s in skips] == [("b", "a"), ("c", "a")]
    assert "depends on 'a', which failed: bad key" in skips[0].reason


def test_under_fail_run_a_lasting_failure_stops_the_running_tasks_then_fails_the_run() -> None:
    log = Log()
    policy = RunPolicy(on_task_failure="fail_run", max_attempts=1)
    for effect in log.plan([spec("a"), spec("b")], policy=policy):
        log.settle(effect)
    log.run_task("a")
    log.run_task("b", worker="w2")
    effects = log.event(TaskFailed(run_id="r", task_id="a", attempt=1, reason="boom",
                                   failure_class="agent_error"))  # fmt: skip
    (cancel,) = [e for e in effects if isinstance(e, PublishCommand)]
    assert cancel.command == CancelTask(run_id="r", task_id="b", reason="task 'a' failed: boom")
    effects = log.event(TaskCancelled(run_id="r", task_id="b", attempt=1))
    (end,) = [e for e in effects if isinstance(e, Record) and isinstance(e.event, RunFailed)]
    assert isinstance(end.event, RunFailed)
    assert end.event.failed_tasks == ("a",)


def test_a_silent_worker_is_declared_lost_and_its_task_requeued_resuming_the_session() -> None:
    log = Log(DriverConfig(lost_after_s=20))
    log.event(WorkerJoined(worker_id="w1"))
    for effect in log.plan([spec("a")]):
        log.settle(effect)
    log.run_task("a", worker="w1")
    log.at(5).event(WorkerHeartbeat(worker_id="w1", running_tasks=("r/a",)))
    assert [e for e in log.at(24).tick() if isinstance(e, Record)] == []
    (lost,) = [e for e in log.at(25).tick() if isinstance(e, Record)]
    assert isinstance(lost.event, WorkerLost)
    assert lost.event.orphaned_tasks == ("r/a",)
    effects = log.settle(lost)
    (requeue,) = [e for e in effects if isinstance(e, Dispatch)]
    assert (requeue.queued.attempt, requeue.queued.resume_session_id) == (2, "s-a")


def test_a_worker_alive_in_the_registry_is_not_lost_and_is_once_its_entry_goes_stale() -> None:
    # Liveness comes from the registry (WorkerSeen), not from heartbeat events in the log.
    log = Log(DriverConfig(lost_after_s=20))
    log.event(WorkerJoined(worker_id="w1"))
    for effect in log.plan([spec("a")]):
        log.settle(effect)
    log.run_task("a", worker="w1")
    for second in range(5, 100, 5):
        seen = WorkerSeen(worker_id="w1", at=T0 + timedelta(seconds=second))
        assert decide(log.state, seen, log.now) == []
        assert [e for e in log.at(second).tick() if isinstance(e, Record)] == []
    # A late, older entry (a watch delivering what it had) does not move the time back.
    decide(log.state, WorkerSeen(worker_id="w1", at=T0 + timedelta(seconds=10)), log.now)
    # The last entry said 95 s; nothing since (killed): lost 20 s after it, not before.
    assert [e for e in log.at(114).tick() if isinstance(e, Record)] == []
    (lost,) = [e for e in log.at(115).tick() if isinstance(e, Record)]
    assert isinstance(lost.event, WorkerLost)
    assert lost.event.orphaned_tasks == ("r/a",)


def test_spending_the_budget_stops_new_starts_and_fails_the_run_saying_so() -> None:
    log = Log()
    for effect in log.plan([spec("a"), spec("b", "a")], budget_usd=1.0):
        log.settle(effect)
    log.run_task("a")
    effects = log.event(TaskSucceeded(run_id="r", task_id="a", attempt=1, worker_id="w1",
                                      cost_usd=1.25))  # fmt: skip
    budget = next(e for e in effects if isinstance(e, Record))
    assert budget.event == RunBudgetReached(run_id="r", budget_usd=1.0, spent_usd=1.25)
    log.settle(budget)
    merge = log.take(Merge)
    log.event(TaskMerged(run_id="r", task_id="a", attempt=1, commit="m1",
                         integration_branch="claudecluster/r"))  # fmt: skip
    effects = log.settle(merge)
    assert dispatched(effects) == []
    (end,) = [e for e in effects if isinstance(e, Record)]
    assert isinstance(end.event, RunFailed)
    assert "budget of $1.00 was spent with 1 tasks not done" in end.event.reason


def test_a_finished_run_records_its_summary_with_the_speedup() -> None:
    log = Log()
    for effect in log.plan([spec("a"), spec("b")]):
        log.settle(effect)
    log.run_task("a")
    log.run_task("b", worker="w2")
    log.at(10).event(TaskSucceeded(run_id="r", task_id="a", attempt=1, worker_id="w1"))
    log.at(10).event(TaskSucceeded(run_id="r", task_id="b", attempt=1, worker_id="w2"))
    for task, commit in (("a", "m1"), ("b", "m2")):
        merge = log.take(Merge)
        assert merge.task_id == task
        log.event(TaskMerged(run_id="r", task_id=task, attempt=1, commit=commit,
                             integration_branch="claudecluster/r"))  # fmt: skip
        effects = log.settle(merge)
    (end,) = [e for e in effects if isinstance(e, Record)]
    assert isinstance(end.event, RunCompleted)
    assert (end.event.head_commit, end.event.tasks_succeeded) == ("m2", 2)
    assert (end.event.wall_time_s, end.event.task_time_s, end.event.speedup) == (10, 20, 2)


@pytest.mark.parametrize(
    ("command", "expected"),
    [
        (RollbackRun(run_id="r", to_task="b"), ("m1", ("b", "c"))),
        (RollbackRun(run_id="r", to_task="a"), ("base", ("a", "b", "c"))),
        (RollbackRun(run_id="r", to_sequence=0), ("base", ("a", "b", "c"))),
    ],
)
def test_rollback_goes_back_to_the_commit_before_a_task_or_a_sequence(
    command: RollbackRun, expected: tuple[str, tuple[str, ...]]
) -> None:
    log = Log()
    for effect in log.plan([spec("a"), spec("b", "a"), spec("c", "b")]):
        log.settle(effect)
    for number, task in enumerate(("a", "b", "c"), 1):
        if number > 1:
            log.settle(log.take(Dispatch))
        log.run_task(task)
        log.event(TaskSucceeded(run_id="r", task_id=task, attempt=1, worker_id="w1"))
        merge = log.take(Merge)
        log.event(TaskMerged(run_id="r", task_id=task, attempt=1, commit=f"m{number}",
                             integration_branch="claudecluster/r"))  # fmt: skip
        log.settle(merge)
    log.settle(log.take(Record))  # RunCompleted
    assert log.state.view_of("r").runs["r"].state.value == "completed"
    # The ended run's book left the live books; a rollback still finds its merges.
    assert "r" not in log.state.runs
    assert "r" in log.state.finished
    (rollback,) = log.command(command, "rb")
    assert isinstance(rollback, Rollback)
    assert (rollback.event.to_commit, rollback.event.reverted_tasks) == expected


def test_rollback_of_a_running_run_or_an_unmerged_task_is_refused() -> None:
    log = Log()
    for effect in log.plan([spec("a")]):
        log.settle(effect)
    (refusal,) = log.command(RollbackRun(run_id="r", to_task="a"))
    assert isinstance(refusal, Record)
    assert isinstance(refusal.event, CommandRejected)
    assert "cancel it first" in refusal.event.reason
    (refusal,) = log.command(RollbackRun(run_id="nope", to_task="a"), "c2")
    assert isinstance(refusal, Record)
    assert isinstance(refusal.event, CommandRejected)
    assert "no planned run 'nope'" in refusal.event.reason


def test_an_event_from_a_superseded_attempt_changes_nothing() -> None:
    log = Log()
    for effect in log.plan([spec("a")]):
        log.settle(effect)
    log.run_task("a")
    log.event(TaskQueued(run_id="r", task_id="a", attempt=2))  # taken over
    effects = log.event(TaskSucceeded(run_id="r", task_id="a", attempt=1, worker_id="w1"))
    assert [e for e in effects if isinstance(e, Merge)] == []
    assert log.state.runs["r"].to_merge == []


def test_a_failed_run_with_rollback_on_failure_goes_back_to_its_base() -> None:
    log = Log()
    policy = RunPolicy(on_task_failure="fail_run", max_attempts=1, rollback_on_failure=True)
    for effect in log.plan([spec("a"), spec("b", "a")], policy=policy):
        log.settle(effect)
    log.run_task("a")
    log.event(TaskSucceeded(run_id="r", task_id="a", attempt=1, worker_id="w1"))
    merge = log.take(Merge)
    log.event(TaskMerged(run_id="r", task_id="a", attempt=1, commit="m1",
                         integration_branch="claudecluster/r"))  # fmt: skip
    log.settle(merge)
    log.settle(log.take(Dispatch))
    log.run_task("b")
    log.event(TaskFailed(run_id="r", task_id="b", attempt=1, reason="boom",
                         failure_class="agent_error"))  # fmt: skip
    failed = log.take(Record)
    assert isinstance(failed.event, RunFailed)
    effects = log.settle(failed)
    (rollback,) = [e for e in effects if isinstance(e, Rollback)]
    assert (rollback.event.to_commit, rollback.event.reverted_tasks) == ("base", ("a",))
    assert rollback.event_id == "rolledback-r-on-failure"


def test_a_task_released_while_replaying_after_a_crash_is_started_on_resume() -> None:
    # The old driver recorded a's merge and died before it queued b. A new driver replays
    # the log (its decisions then are discarded), so the start of b decided during the
    # replay never happened: Resume must decide it again.
    log = Log()
    for effect in log.plan([spec("a"), spec("b", "a")]):
        log.settle(effect)
    log.run_task("a")
    log.event(TaskSucceeded(run_id="r", task_id="a", attempt=1, worker_id="w1"))
    log.event(TaskMerged(run_id="r", task_id="a", attempt=1, commit="m1",
                         integration_branch="claudecluster/r"))  # fmt: skip
    assert "b" in dispatched(log.outbox)  # decided during the replay, then discarded
    log.state.pending.clear()  # what the shell does after replaying
    log.state.starting.clear()
    log.outbox.clear()
    effects = log._out(decide(log.state, Resume(), log.now))
    (start,) = [e for e in effects if isinstance(e, Dispatch)]
    assert (start.queued.task_id, start.queued.attempt, start.queued.base_commit) == ("b", 1, "m1")


def test_a_start_whose_dispatch_failed_is_decided_again() -> None:
    log = Log()
    (start,) = [e for e in log.plan([spec("a")]) if isinstance(e, Dispatch)]
    assert log.tick() == []  # the dispatch is in flight: nothing more to start
    effects = log._out(decide(log.state, EffectFailed(key=start.key, reason="nats down"), log.now))
    assert dispatched(effects) == ["a"]
