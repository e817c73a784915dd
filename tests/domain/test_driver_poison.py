"""Nothing recorded stops the driver: what its core cannot apply ends that run, once.

The log keeps every event for good, so an event that made ``decide`` raise would stop the
driver at every start. These tests feed such events (a well-formed RunPlanned whose graph
is invalid, and a core that fails on a command or a run) and check that the run is failed
with the reason, exactly once (a replay and a restart ask for nothing more), and that
every other run goes on.
"""

from __future__ import annotations

from typing import Any

import pytest

from claudecluster.actors.driver import Dispatch, Record, Resume, decide
from claudecluster.actors.driver import commands as driver_commands
from claudecluster.actors.driver import reconcile as driver_reconcile
from claudecluster.events import (
    CommandRejected,
    RunFailed,
    RunPlanned,
    RunSubmitted,
    SubmitRun,
    TaskSpec,
    wrap_event,
)
from claudecluster.events.envelope import StoredEvent
from claudecluster.events.model import Event
from claudecluster.events.subjects import event_subject
from tests.domain.test_driver_core import T0, Log, dispatched, spec


class RecordingLog(Log):
    """A :class:`Log` that keeps what it recorded, to replay it into a fresh driver."""

    def __init__(self) -> None:
        super().__init__()
        self.recorded: list[StoredEvent] = []

    def event(self, event: Event) -> list[Any]:
        seq = self.state.view.last_seq + 1
        self.recorded.append(
            StoredEvent(seq=seq, subject=event_subject(event),
                        envelope=wrap_event(event, event_id=f"e{seq}", now=self.now))
        )  # fmt: skip
        return super().event(event)


def _submit_and_plan(log: Log, run_id: str, tasks: tuple[TaskSpec, ...]) -> list[Any]:
    log.event(RunSubmitted(run_id=run_id, goal="g", repo="/repo", plan=(spec("a"),)))
    planned = RunPlanned(run_id=run_id, tasks=tasks, base_commit="base",
                         integration_branch=f"claudecluster/{run_id}")  # fmt: skip
    return log.event(planned)


def _failures(effects: list[Any]) -> list[RunFailed]:
    return [e.event for e in effects if isinstance(e, Record) and isinstance(e.event, RunFailed)]


_BAD_GRAPHS = {
    "cycle": ((spec("a", "b"), spec("b", "a")), "cycle"),
    "unknown dependency": ((spec("a", "ghost"),), "ghost"),
    "duplicate ids": ((spec("a"), spec("a")), "already planned"),
}


@pytest.mark.parametrize("case", sorted(_BAD_GRAPHS))
def test_a_recorded_plan_the_core_rejects_fails_its_run_once_and_others_go_on(case: str) -> None:
    tasks, named = _BAD_GRAPHS[case]
    log = RecordingLog()
    (end,) = _submit_and_plan(log, "bad", tasks)
    assert isinstance(end, Record)
    assert isinstance(end.event, RunFailed)
    assert end.event_id == "failed-bad"
    assert "run.planned" in end.event.reason
    assert named in end.event.reason
    assert log.tick() == []  # asked for once: its key is pending
    log.settle(end)
    # Another run, recorded after the poison one, is planned and started as usual.
    assert dispatched(_submit_and_plan(log, "good", (spec("x"),))) == ["x"]
    assert log.state.view_of("bad").runs["bad"].state.value == "failed"

    # A restarted driver replays the whole log: nothing raises, nothing is asked twice.
    fresh = Log()
    for stored in log.recorded:
        decide(fresh.state, stored, T0)
    fresh.state.pending.clear()
    fresh.state.starting.clear()
    resumed = decide(fresh.state, Resume(), T0)
    assert _failures(resumed) == []
    assert [e.queued.task_id for e in resumed if isinstance(e, Dispatch)] == ["x"]


def test_a_rejected_plan_replayed_before_its_failure_was_recorded_fails_it_on_resume() -> None:
    log = RecordingLog()
    _submit_and_plan(log, "bad", (spec("a", "b"), spec("b", "a")))  # the driver died here
    fresh = Log()
    for stored in log.recorded:
        decide(fresh.state, stored, T0)
    fresh.state.pending.clear()
    (failed,) = _failures(decide(fresh.state, Resume(), T0))
    assert "cycle" in failed.reason


def test_a_command_the_core_fails_on_is_refused_with_the_reason(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def broken(*_: object) -> list[Any]:
        raise KeyError("boom")

    monkeypatch.setattr(driver_commands, "_submit", broken)
    log = Log()
    (refusal,) = log.command(SubmitRun(run_id="r", goal="g", repo="/repo", plan=(spec("a"),)))
    assert isinstance(refusal, Record)
    assert isinstance(refusal.event, CommandRejected)
    assert "KeyError" in refusal.event.reason
    assert log.command(SubmitRun(run_id="r", goal="g", repo="/r", plan=(spec("a"),))) == []


def test_a_run_the_core_fails_on_is_failed_once_and_other_runs_go_on(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    log = Log()
    assert dispatched(_submit_and_plan(log, "good", (spec("x"),))) == ["x"]
    real = driver_reconcile._start_ready

    def broken_for_bad(state: Any, book: Any, *rest: Any) -> list[Any]:
        if book.run_id == "bad":
            raise ZeroDivisionError("a bug")
        result: list[Any] = real(state, book, *rest)
        return result

    monkeypatch.setattr(driver_reconcile, "_start_ready", broken_for_bad)
    (end,) = _failures(_submit_and_plan(log, "bad", (spec("y"),)))
    assert "ZeroDivisionError: a bug" in end.reason
    assert _failures(log.tick()) == []
    assert dispatched(_submit_and_plan(log, "other", (spec("z"),))) == ["z"]
