"""What one message costs the driver: it looks at the runs the message concerns, not at
every open run.

Counted, not timed: ``DriverState.reconciled`` counts the runs the core looked at, so
these tests hold on any machine and would catch a tick that walks every run again.
"""

from __future__ import annotations

from collections.abc import Callable

from claudecluster.actors.driver import Dispatch, DriverConfig, Effect, Merge, Plan, Record, decide
from claudecluster.events import (
    RunPlanned,
    RunPolicy,
    SubmitRun,
    TaskAssigned,
    TaskFailed,
    TaskRetryScheduled,
    TaskStarted,
    TaskSucceeded,
    wrap_command,
)
from tests.domain.test_driver_core import Log, spec

OPEN_RUNS = 1000


def open_run(log: Log, run_id: str, *, tasks: int = 1, policy: RunPolicy | None = None) -> None:
    """Submit and plan ``run_id``; settle what the driver asks for (its tasks queue)."""
    submit = SubmitRun(
        run_id=run_id, goal="g", repo="/repo", plan=tuple(spec(f"t{i}") for i in range(tasks)),
        policy=policy or RunPolicy(),
    )  # fmt: skip
    envelope = wrap_command(submit, command_id=f"c-{run_id}", now=log.now, correlation_id="x")
    (submitted,) = decide(log.state, envelope, log.now)
    (plan,) = log.settle(submitted)
    assert isinstance(plan, Plan)
    log.settle(plan)  # the planner's answer is recorded next, as the shell does
    planned = RunPlanned(
        run_id=run_id, tasks=submit.plan or (), base_commit="base",
        integration_branch=f"claudecluster/{run_id}",
    )  # fmt: skip
    for effect in log.event(planned):
        if isinstance(effect, Dispatch):
            log.settle(effect)
    log.outbox.clear()


def many_open_runs(config: DriverConfig | None = None) -> Log:
    log = Log(config or DriverConfig(max_running=10 * OPEN_RUNS, start_burst=10 * OPEN_RUNS))
    for n in range(OPEN_RUNS):
        open_run(log, f"r{n:04d}")
    return log


def looked_at(log: Log, step: Callable[[], object]) -> int:
    """How many runs the driver looked at while ``step`` ran."""
    before = log.state.reconciled
    step()
    return log.state.reconciled - before


def test_a_tick_looks_at_no_run_when_a_thousand_open_runs_wait_on_their_workers() -> None:
    log = many_open_runs()
    assert log.state.active_total() == OPEN_RUNS  # each run's one task is queued
    log.at(60)
    assert looked_at(log, log.tick) == 0
    assert log.outbox == []


def test_a_tick_looks_only_at_the_run_whose_retry_came_due() -> None:
    log = many_open_runs()
    log.event(TaskFailed(run_id="r0500", task_id="t0", attempt=1, reason="overloaded",
                         failure_class="api_error", retryable=True))  # fmt: skip
    retry = log.take(Record)
    assert isinstance(retry.event, TaskRetryScheduled)
    log.settle(retry)
    log.at(retry.event.delay_s / 2)
    assert looked_at(log, log.tick) == 0
    log.at(retry.event.delay_s + 1)
    effects: list[Effect] = []
    assert looked_at(log, lambda: effects.extend(log.tick())) == 1
    (again,) = [e for e in effects if isinstance(e, Dispatch)]
    assert (again.run_id, again.queued.attempt) == ("r0500", 2)


def test_a_slot_freed_under_the_global_cap_wakes_only_the_runs_with_tasks_to_start() -> None:
    # Every slot is taken; two runs more have a task each ready to start.
    log = many_open_runs(DriverConfig(max_running=OPEN_RUNS, start_burst=10 * OPEN_RUNS))
    open_run(log, "s1")
    open_run(log, "s2")
    assert sorted(log.state.want_start) == ["s1", "s2"]
    log.at(1)
    assert looked_at(log, log.tick) == 0  # no slot: nothing can start, nobody is looked at
    log.event(TaskAssigned(run_id="r0007", task_id="t0", attempt=1, worker_id="w1"))
    log.event(TaskStarted(run_id="r0007", task_id="t0", attempt=1, worker_id="w1",
                          session_id="s"))  # fmt: skip
    log.event(TaskSucceeded(run_id="r0007", task_id="t0", attempt=1, worker_id="w1"))
    # The slot is free once the task succeeded; its merge does not wait for a tick.
    (merge,) = [e for e in log.outbox if isinstance(e, Merge)]
    log.at(2)
    effects: list[Effect] = []
    assert looked_at(log, lambda: effects.extend(log.tick())) == 1
    # The first in run order takes the one free slot; the other is not looked at.
    assert [(e.run_id, e.queued.task_id) for e in effects if isinstance(e, Dispatch)] == [
        ("s1", "t0")
    ]
    assert sorted(log.state.want_start) == ["s2"]
    log.settle(merge)


def test_a_due_retry_that_found_no_slot_is_woken_when_one_frees() -> None:
    log = Log(DriverConfig(max_running=1))
    open_run(log, "a")  # takes the one slot
    open_run(log, "b")  # waits for it
    log.event(TaskAssigned(run_id="a", task_id="t0", attempt=1, worker_id="w1"))
    log.event(TaskFailed(run_id="a", task_id="t0", attempt=1, reason="overloaded",
                         failure_class="api_error", retryable=True))  # fmt: skip
    retry = next(e for e in log.outbox if isinstance(e, Record))
    assert isinstance(retry.event, TaskRetryScheduled)
    log.settle(retry)
    (start,) = [e for e in log.tick() if isinstance(e, Dispatch)]  # b takes the free slot
    assert start.run_id == "b"
    log.settle(start)
    log.at(retry.event.delay_s + 1)
    assert not [e for e in log.tick() if isinstance(e, Dispatch)]  # due, but no slot
    assert log.state.want_room == {"a"}
    log.event(TaskAssigned(run_id="b", task_id="t0", attempt=1, worker_id="w1"))
    log.event(TaskStarted(run_id="b", task_id="t0", attempt=1, worker_id="w1", session_id="s"))
    log.event(TaskSucceeded(run_id="b", task_id="t0", attempt=1, worker_id="w1"))
    effects: list[Effect] = []
    assert looked_at(log, lambda: effects.extend(log.tick())) == 1
    (again,) = [e for e in effects if isinstance(e, Dispatch)]
    assert (again.run_id, again.queued.attempt) == ("a", 2)
