"""Event ids and branch names: one home each, formats the recorded logs already hold."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from claudecluster.domain import branches
from claudecluster.events import event_ids as ids

_id = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9_]{0,10}", fullmatch=True)


def test_the_driver_ids_keep_the_formats_of_recorded_logs() -> None:
    # These are the ids in events/samples/*.jsonl: a driver restarted on such a log must
    # give its decisions the same ids, or a retried append would not be deduplicated.
    assert ids.run_submitted_id("r1") == "submitted-r1"
    assert ids.run_planned_id("r1") == "planned-r1"
    assert ids.task_queued_id("r1", "a", 2) == "queued-r1-a-2"
    assert ids.task_merged_id("r1", "a", 2) == "merged-r1-a-2"
    assert ids.merge_conflict_id("r1", "a", 2) == "conflict-r1-a-2"
    assert ids.merge_verify_failed_id("r1", "a", 2) == "verify-failed-r1-a-2"
    assert ids.task_retry_id("r1", "a", 3) == "retry-r1-a-3"
    assert ids.task_skipped_id("r1", "a") == "skipped-r1-a"
    assert ids.task_cancelled_id("r1", "a") == "cancelled-r1-a"
    assert ids.run_completed_id("r1") == "completed-r1"
    assert ids.run_failed_id("r1") == "failed-r1"
    assert ids.run_cancelled_id("r1") == "cancelled-r1"
    assert ids.budget_reached_id("r1") == "budget-r1"
    assert ids.rolled_back_id("cmd-1") == "rolledback-cmd-1"
    assert ids.rolled_back_on_failure_id("r1") == "rolledback-r1-on-failure"
    assert ids.command_rejected_id("cmd-1") == "rejected-cmd-1"
    assert ids.worker_lost_id("w1", 7) == "lost-w1-7"
    assert ids.cancel_task_command_id("r1", "a", 2) == "cancel-r1-a-2"
    assert ids.collision_predicted_id("r1", "b", "a") == "collision-r1-b-a"
    assert ids.collision_settled_id("r1", "b", "a") == "settled-r1-b-a"
    assert ids.worker_event_id("w1", 3, "ab12cd34") == "w1-3-ab12cd34"


@given(run=_id, task=_id, attempt=st.integers(min_value=1, max_value=99))
def test_a_runs_branches_and_refs_live_under_its_own_name(
    run: str, task: str, attempt: int
) -> None:
    assert branches.integration_branch(run) == f"claudecluster/{run}"
    assert branches.task_branch(run, task) == f"claudecluster/{run}/{task}"
    assert branches.result_ref(run, task, attempt) == (
        f"refs/claudecluster/results/{run}/{task}/{attempt}"
    )
