"""The worker's decisions beyond admission, free of I/O: the claim, the session, what a
command stops, and whose fault a failure was.

runtime/worker/ carries these out (on NATS and, in the simulator, on the in-memory
seams); here each is pinned down on its own, and the claim is checked against the
projections that fold it.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import get_args

import pytest
from hypothesis import given
from hypothesis import strategies as st

from claudecluster.actors.worker import (
    TAKE_OVER_NOTE,
    WORKER_COMMAND_SUBJECTS,
    Admission,
    AttemptFailure,
    Stops,
    admit,
    attempt_session,
    claim_events,
    classify_failure,
    failed_event,
    rejoin_reason,
    resumable_session,
    stops_for,
)
from claudecluster.domain.lifecycle import TaskState
from claudecluster.errors import (
    ConcurrencyError,
    ConfigError,
    CopyFilesError,
    EventStoreError,
    GraphError,
    SetupCommandError,
    UnsupportedRepositoryError,
    WorkspaceError,
)
from claudecluster.events import (
    CancelRun,
    CancelTask,
    DrainWorker,
    RetryRun,
    RollbackRun,
    RunPlanned,
    RunSubmitted,
    SubmitRun,
    TaskAssigned,
    TaskFailed,
    TaskQueued,
    TaskRetryScheduled,
    TaskSpec,
    TaskStarted,
    wrap_event,
)
from claudecluster.events.envelope import StoredEvent
from claudecluster.events.model import Command, Event
from claudecluster.events.subjects import command_subject, event_subject
from claudecluster.projections.cluster import replay
from claudecluster.projections.views import TaskView, task_key

_NOW = datetime(2026, 1, 1, tzinfo=UTC)
_ids = st.from_regex(r"[a-z][a-z0-9]{0,6}", fullmatch=True)


def _history(*events: Event) -> list[StoredEvent]:
    spec = TaskSpec(task_id="t", title="t", prompt="p")
    prefix: list[Event] = [
        RunSubmitted(run_id="r", goal="g", repo="/repo"),
        RunPlanned(run_id="r", tasks=(spec,), base_commit="c0", integration_branch="b"),
    ]
    return [
        StoredEvent(
            seq=n, subject=event_subject(e), envelope=wrap_event(e, event_id=f"e{n}", now=_NOW)
        )
        for n, e in enumerate([*prefix, *events], start=1)
    ]


def _task(history: list[StoredEvent]) -> TaskView | None:
    return replay(history).tasks.get(task_key("r", "t"))


# -- the claim ----------------------------------------------------------------------------


def test_a_queued_attempt_is_claimed_by_its_assignment_alone() -> None:
    admission = Admission(action="run", attempt=2)
    (assigned,) = claim_events(admission, run_id="r", task_id="t", worker_id="w1", worker_key="KEY")
    assert assigned == TaskAssigned(
        run_id="r", task_id="t", attempt=2, worker_id="w1", worker_key="KEY"
    )


def test_a_take_over_records_the_new_attempt_resuming_the_silent_session_then_claims_it() -> None:
    admission = Admission(action="take_over", attempt=3, resume_session_id="s-old")
    queued, assigned = claim_events(
        admission, run_id="r", task_id="t", worker_id="w2", pool="gpu", base_commit="c9"
    )
    assert queued == TaskQueued(
        run_id="r", task_id="t", attempt=3, pool="gpu", base_commit="c9",
        resume_session_id="s-old", note=TAKE_OVER_NOTE,
    )  # fmt: skip
    assert isinstance(assigned, TaskAssigned)
    assert (assigned.attempt, assigned.worker_id) == (3, "w2")


@pytest.mark.parametrize("action", ["drop", "retry_later"])
def test_an_admission_that_runs_nothing_claims_nothing(action: str) -> None:
    with pytest.raises(ValueError, match=action):
        claim_events(
            Admission(action=action, attempt=1),  # type: ignore[arg-type]
            run_id="r", task_id="t", worker_id="w",
        )  # fmt: skip


@given(
    attempt=st.integers(min_value=1, max_value=5),
    held=st.sampled_from(["queued", "assigned", "running"]),
    worker=_ids,
)
def test_whatever_the_history_admits_its_claim_leaves_the_task_assigned_to_the_claimant(
    attempt: int, held: str, worker: str
) -> None:
    events: list[Event] = []
    for earlier in range(1, attempt):  # the attempts before, failed and retried
        events += [
            TaskQueued(run_id="r", task_id="t", attempt=earlier),
            TaskFailed(run_id="r", task_id="t", attempt=earlier, reason="x", retryable=True),
            TaskRetryScheduled(run_id="r", task_id="t", next_attempt=earlier + 1, delay_s=0),
        ]
    events.append(TaskQueued(run_id="r", task_id="t", attempt=attempt))
    if held in ("assigned", "running"):
        events.append(TaskAssigned(run_id="r", task_id="t", attempt=attempt, worker_id="old"))
    if held == "running":
        events.append(
            TaskStarted(run_id="r", task_id="t", attempt=attempt, worker_id="old", session_id="s")
        )
    history = _history(*events)
    admission = admit(_task(history), attempt)
    assert admission.action == ("run" if held == "queued" else "take_over")
    claim = claim_events(admission, run_id="r", task_id="t", worker_id=worker)
    after = _task(_history(*events, *claim))
    assert after is not None
    assert after.state is TaskState.ASSIGNED
    assert after.attempt == admission.attempt
    assert after.worker_id == worker
    # A take-over is a new attempt, so a late result of the silent holder is fenced off.
    assert admission.attempt == (attempt if held == "queued" else attempt + 1)


# -- the session ----------------------------------------------------------------------------


def test_a_take_over_resumes_the_silent_holders_session_when_its_transcript_was_kept() -> None:
    admission = Admission(action="take_over", attempt=2, resume_session_id="s-old")
    assert resumable_session(admission, "s-driver") == "s-old"
    assert attempt_session(admission, "s-driver", restorable=True, fresh="s-new") == (
        "s-old",
        True,
    )


def test_a_requeued_item_resumes_the_session_the_driver_names() -> None:
    admission = Admission(action="run", attempt=2)
    assert resumable_session(admission, "s-driver") == "s-driver"
    assert attempt_session(admission, "s-driver", restorable=True, fresh="s-new") == (
        "s-driver",
        True,
    )


def test_without_a_kept_transcript_or_a_session_to_continue_the_attempt_starts_afresh() -> None:
    taken = Admission(action="take_over", attempt=2, resume_session_id="s-old")
    assert attempt_session(taken, "", restorable=False, fresh="s-new") == ("s-new", False)
    plain = Admission(action="run", attempt=1)
    assert resumable_session(plain, "") == ""
    assert attempt_session(plain, "", restorable=True, fresh="s-new") == ("s-new", False)


# -- what a command stops ---------------------------------------------------------------------


def test_a_task_cancel_stops_only_that_task_with_its_reason_or_a_default() -> None:
    running = {"r1/a", "r1/b", "r2/a"}
    stops = stops_for(CancelTask(run_id="r1", task_id="b", reason="not needed"), running, "w")
    assert stops.attempts == (("r1/b", "not needed"),)
    assert not stops.drain
    default = stops_for(CancelTask(run_id="r2", task_id="a"), running, "w")
    assert default.attempts == (("r2/a", "cancelled on request"),)
    assert stops_for(CancelTask(run_id="r1", task_id="zz"), running, "w").attempts == ()


def test_a_run_cancel_stops_that_runs_attempts_and_no_run_sharing_its_prefix() -> None:
    running = {"r1/a", "r1/b", "r10/a", "r2/c"}
    stops = stops_for(CancelRun(run_id="r1"), running, "w")
    assert stops.attempts == (("r1/a", "run r1 cancelled"), ("r1/b", "run r1 cancelled"))


def test_a_drain_stops_only_the_worker_it_names_and_nothing_that_runs() -> None:
    running = {"r1/a"}
    mine = stops_for(DrainWorker(worker_id="w1"), running, "w1")
    assert mine.drain
    assert mine.attempts == ()
    assert not stops_for(DrainWorker(worker_id="w2"), running, "w1").drain


def test_commands_for_the_driver_stop_nothing() -> None:
    submit = SubmitRun(run_id="r1", goal="g", repo="/repo")
    stops = stops_for(submit, {"r1/a"}, "w1")
    assert stops.attempts == ()
    assert not stops.drain


@given(
    running=st.sets(st.tuples(_ids, _ids), max_size=12),
    run_id=_ids,
    task_id=_ids,
)
def test_a_cancel_stops_exactly_the_running_attempts_it_names(
    running: set[tuple[str, str]], run_id: str, task_id: str
) -> None:
    keys = {f"{r}/{t}" for r, t in running}
    by_run = {k for k, _ in stops_for(CancelRun(run_id=run_id), keys, "w").attempts}
    assert by_run == {f"{r}/{t}" for r, t in running if r == run_id}
    by_task = {
        k for k, _ in stops_for(CancelTask(run_id=run_id, task_id=task_id), keys, "w").attempts
    }
    assert by_task == keys & {f"{run_id}/{task_id}"}


# -- whose fault a failure was --------------------------------------------------------------


@pytest.mark.parametrize(
    ("error", "failure_class"),
    [
        (SetupCommandError("the setup command exited with status 3: boom", status=3), "setup"),
        (SetupCommandError("the setup command took longer than 5s", status=None), "setup"),
        (CopyFilesError(".env", "/local"), "configuration"),
        (UnsupportedRepositoryError("the base abc has submodules (vendor)"), "configuration"),
        (ConfigError("worker.copy_from", "settings.yaml", "not a directory"), "configuration"),
        (GraphError("a cycle"), "configuration"),
    ],
)
def test_what_the_task_or_configuration_caused_is_not_retried_and_names_the_problem(
    error: Exception, failure_class: str
) -> None:
    failure = classify_failure(error)
    assert failure == AttemptFailure(
        failure_class=failure_class,  # type: ignore[arg-type]
        retryable=False,
        reason=str(error),
    )


@pytest.mark.parametrize(
    "error",
    [
        EventStoreError("the object store is unreachable"),
        WorkspaceError("git fetch was killed by signal 9"),
        ConcurrencyError("cc.evt.r.t.>", 3, 4),
        OSError(28, "No space left on device"),
        PermissionError("read-only file system"),
    ],
)
def test_what_the_machine_or_the_stores_did_is_an_infrastructure_failure_retried(
    error: Exception,
) -> None:
    failure = classify_failure(error)
    assert failure.failure_class == "infrastructure"
    assert failure.retryable
    assert failure.reason == str(error)


def test_an_error_without_a_message_is_named_by_its_type() -> None:
    assert classify_failure(OSError()).reason == "OSError"


def test_the_failure_is_recorded_with_its_class_and_reason() -> None:
    failure = classify_failure(CopyFilesError(".env", "/local"))
    event = failed_event(run_id="r", task_id="t", attempt=2, worker_id="w", failure=failure)
    assert (event.failure_class, event.retryable, event.attempt) == ("configuration", False, 2)
    assert event.reason == "copy_files pattern '.env' matches nothing in /local"


def test_a_worker_joins_again_only_when_its_last_event_declares_it_lost() -> None:
    from claudecluster.events.model import WorkerJoined, WorkerLeft, WorkerLost

    lost = WorkerLost(worker_id="w1", reason="no heartbeat for 30s")
    assert rejoin_reason(lost) == "joined again: declared lost (no heartbeat for 30s)"
    for other in (None, WorkerJoined(worker_id="w1"), WorkerLeft(worker_id="w1")):
        assert rejoin_reason(other) is None


def test_a_worker_asks_its_feed_for_exactly_the_commands_that_can_stop_it() -> None:
    running = {"r1/a", "r1/b"}
    samples: list[Command] = [
        CancelTask(run_id="r1", task_id="a"),
        CancelRun(run_id="r1"),
        DrainWorker(worker_id="w1"),
        RollbackRun(run_id="r1"),
        RetryRun(run_id="r1"),
        SubmitRun(run_id="r1", goal="g", repo="/r"),
    ]
    assert {type(c) for c in samples} == set(get_args(Command))  # every command, once
    acting = {command_subject(c) for c in samples if stops_for(c, running, "w1") != Stops()}
    assert acting == set(WORKER_COMMAND_SUBJECTS)
