"""What one message costs the driver: it looks at the runs the message concerns, not at
every open run.

Counted, not timed: ``DriverState.reconciled`` counts the runs the core looked at, so
these tests hold on any machine and would catch a tick that walks every run again.
"""

from __future__ import annotations

from collections.abc import Callable

from claudecluster.actors.driver import Dispatch, DriverConfig, Effect, Plan, Record, decide
from claudecluster.events import (
    RunPlanned,
    RunPolicy,
    SubmitRun,
    TaskFailed,
    TaskRetryScheduled,
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
