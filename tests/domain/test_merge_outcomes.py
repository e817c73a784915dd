"""What a merge records, decided once for the single merge and the verified batch.

runtime/driver.py and runtime/merge_queue.py both hand what git found to
:func:`merge_record`; here each outcome is pinned down without git.
"""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from claudecluster.actors.driver import Merge
from claudecluster.actors.merge_outcomes import MergeFound, merge_key, merge_record
from claudecluster.actors.merging import KEEP_DECLARATION
from claudecluster.events import MergeConflict, TaskFailed, TaskMerged, TaskSucceeded
from claudecluster.events.model import ChangedFile


def _item(*, resolving: MergeConflict | None = None, summary: str = "done") -> Merge:
    return Merge(
        key="merge:r",
        run_id="r",
        task_id="t",
        attempt=2,
        title="the task",
        result=TaskSucceeded(run_id="r", task_id="t", attempt=2, worker_id="w", summary=summary),
        head="h0",
        integration_branch="claudecluster/r",
        verify=True,
        on_conflict="resolve",
        expected_last=17,
        resolving=resolving,
        resolution_base="conflicted" if resolving is not None else "",
    )


_CONFLICT = MergeConflict(
    run_id="r", task_id="t", attempt=1, files=("a.py",), ours="h0", theirs="c1"
)


def test_a_merged_commit_is_recorded_with_its_files_on_the_tasks_subject() -> None:
    files = (ChangedFile(path="a.py", added=2, deleted=1),)
    record = merge_record(_item(), MergeFound(theirs="c1", commit="m1", files=files))
    assert record.event == TaskMerged(
        run_id="r", task_id="t", attempt=2, commit="m1",
        integration_branch="claudecluster/r", files=files,
    )  # fmt: skip
    assert (record.event_id, record.expected_last, record.key) == ("merged-r-t-2", 17, "merge:r")


def test_a_task_that_changed_nothing_merges_at_the_head_saying_so() -> None:
    record = merge_record(_item(), MergeFound(theirs=None))
    assert isinstance(record.event, TaskMerged)
    assert (record.event.commit, record.event.brought_changes) == ("h0", False)
    assert record.event.note == "the task changed no file"


def test_in_a_batch_a_result_without_change_merges_where_the_stack_stands() -> None:
    record = merge_record(_item(), MergeFound(theirs="c1", changed_files=(), at="m5"))
    assert isinstance(record.event, TaskMerged)
    assert record.event.commit == "m5"
    assert record.event.note == "its changes were already on the integration branch"


def test_gits_conflict_is_recorded_with_the_files_and_both_sides() -> None:
    record = merge_record(_item(), MergeFound(theirs="c1", conflict_files=("a.py", "b.py")))
    assert record.event == MergeConflict(
        run_id="r", task_id="t", attempt=2, files=("a.py", "b.py"), ours="h0", theirs="c1",
        policy="resolve",
    )  # fmt: skip
    assert record.event_id == "conflict-r-t-2"


def test_markers_left_in_a_merge_are_a_conflict_naming_the_problem() -> None:
    found = MergeFound(theirs="c1", changed_files=("a.py",), marker_files=("a.py",))
    record = merge_record(_item(), found)
    assert isinstance(record.event, MergeConflict)
    assert record.event.files == ("a.py",)
    assert "conflict markers" in record.event.problem


def test_a_refused_resolution_resolves_the_original_sides_again() -> None:
    item = _item(resolving=_CONFLICT)
    record = merge_record(item, MergeFound(theirs="r2", changed_files=()))
    assert isinstance(record.event, MergeConflict)
    assert (record.event.ours, record.event.theirs, record.event.files) == ("h0", "c1", ("a.py",))
    assert "change to a.py is lost" in record.event.problem


def test_a_resolution_declaring_the_integration_side_right_merges_without_change() -> None:
    item = _item(resolving=_CONFLICT, summary=f"{KEEP_DECLARATION} both added the same line")
    record = merge_record(item, MergeFound(theirs="r2", changed_files=()))
    assert isinstance(record.event, TaskMerged)
    assert not record.event.brought_changes
    assert "both added the same line" in record.event.note


def test_a_failing_verify_fails_the_task_as_retryable_with_its_output() -> None:
    found = MergeFound(theirs="c1", commit="m1", verify_failure="2 tests failed")
    record = merge_record(_item(), found)
    assert isinstance(record.event, TaskFailed)
    assert (record.event.failure_class, record.event.retryable) == ("verify", True)
    assert record.event.reason.endswith("the merge was undone: 2 tests failed")
    assert record.event_id == "verify-failed-r-t-2"


@given(
    theirs=st.one_of(st.none(), st.sampled_from(["c1", "conflicted"])),
    commit=st.one_of(st.none(), st.just("m1")),
    conflict=st.booleans(),
    markers=st.booleans(),
    changed=st.booleans(),
    verify_failed=st.booleans(),
    resolving=st.booleans(),
)
def test_every_outcome_is_one_of_the_three_events_of_the_items_attempt(
    theirs: str | None,
    commit: str | None,
    conflict: bool,
    markers: bool,
    changed: bool,
    verify_failed: bool,
    resolving: bool,
) -> None:
    if theirs is None:
        # No result: nothing was merged, so git found nothing either.
        commit, conflict, markers, changed, verify_failed = None, False, False, False, False
    found = MergeFound(
        theirs=theirs,
        commit=commit,
        conflict_files=("a.py",) if conflict else (),
        changed_files=("a.py",) if changed or markers else (),
        marker_files=("a.py",) if markers else (),
        verify_failure="failed" if verify_failed else None,
    )
    record = merge_record(_item(resolving=_CONFLICT if resolving else None), found)
    event = record.event
    assert isinstance(event, TaskMerged | MergeConflict | TaskFailed)
    assert (event.run_id, event.task_id, event.attempt) == ("r", "t", 2)
    assert record.expected_last == 17
    assert record.event_id.endswith("-r-t-2")
    if verify_failed:
        assert isinstance(event, TaskFailed)
    elif conflict or markers:
        assert isinstance(event, MergeConflict)
    if isinstance(event, TaskMerged):
        # Nothing is recorded as merged that is not on the branch.
        assert event.commit == (commit if commit is not None else "h0")


def test_the_key_of_an_item_names_its_run_task_and_attempt() -> None:
    assert merge_key(_item()) == "r/t/2"


@pytest.mark.parametrize("theirs", ["c1", None])
def test_a_result_on_the_branch_is_never_a_conflict(theirs: str | None) -> None:
    found = MergeFound(theirs=theirs, commit="m1" if theirs else None, changed_files=("a.py",))
    assert not isinstance(merge_record(_item(), found).event, MergeConflict)
