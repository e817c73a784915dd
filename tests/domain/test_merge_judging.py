"""The pure judgement of a merge: what counts as merged, and what a resolution must do."""

from __future__ import annotations

from claudecluster.actors.merging import (
    KEEP_DECLARATION,
    MergeFacts,
    declared_keep,
    judge_merge,
    resolution_note,
    stop_reason,
)
from claudecluster.events import MergeConflict

_CONFLICT = MergeConflict(
    run_id="r", task_id="t", attempt=1, files=("a.txt",), ours="1" * 40, theirs="2" * 40
)


def test_a_merge_with_changes_and_no_markers_counts() -> None:
    verdict = judge_merge(MergeFacts(changed_files=("a.txt",)), resolving=_CONFLICT, summary="")
    assert (verdict.accepted, verdict.brought_changes) == (True, True)


def test_markers_refuse_any_merge_and_say_where() -> None:
    facts = MergeFacts(changed_files=("a.txt", "b.txt"), marker_files=("b.txt",))
    for resolving in (None, _CONFLICT):
        verdict = judge_merge(facts, resolving=resolving, summary=f"{KEEP_DECLARATION} same")
        assert not verdict.accepted
        assert "left in b.txt" in verdict.problem
    unchanged = MergeFacts(changed_files=("a.txt",), marker_files=("a.txt",), result_is_base=True)
    verdict = judge_merge(unchanged, resolving=_CONFLICT, summary="done")
    assert verdict.problem == (
        "the resolution attempt changed nothing: the conflict markers are still in a.txt"
    )


def test_a_resolution_that_leaves_the_branch_as_it_was_must_say_it_means_to() -> None:
    refused = judge_merge(MergeFacts(), resolving=_CONFLICT, summary="Resolved.")
    assert not refused.accepted
    assert "change to a.txt is lost" in refused.problem
    kept = judge_merge(
        MergeFacts(), resolving=_CONFLICT, summary="kept integration side:  both  added it"
    )
    assert (kept.accepted, kept.brought_changes) == (True, False)
    assert kept.note == "the resolution kept the integration side: both added it"


def test_a_task_that_changed_nothing_merges_without_changes_with_the_reason() -> None:
    nothing = judge_merge(MergeFacts(result_is_base=True), resolving=None, summary="")
    assert (nothing.accepted, nothing.brought_changes, nothing.note) == (
        True, False, "the task changed no file",
    )  # fmt: skip
    already = judge_merge(MergeFacts(), resolving=None, summary="")
    assert already.note == "its changes were already on the integration branch"


def test_the_declaration_needs_its_words_and_defaults_its_reason() -> None:
    assert declared_keep("All done.") == ""
    assert declared_keep(KEEP_DECLARATION) == "the resolution says both sides made the same change"


def test_the_next_attempt_is_told_what_was_wrong_and_the_stop_says_what_to_do() -> None:
    refused = MergeConflict(
        run_id="r", task_id="t", attempt=2, files=("a.txt",), ours="3" * 40, theirs="2" * 40,
        problem="conflict markers are left in a.txt",
    )  # fmt: skip
    assert "Your last resolution was refused: conflict markers" in resolution_note(refused)
    assert KEEP_DECLARATION in resolution_note(_CONFLICT)
    assert "refused" not in resolution_note(_CONFLICT)
    reason = stop_reason("t", refused, ("a.txt",), 4, "claudecluster/r")
    assert reason.startswith("task 't' still conflicts in a.txt after 4 attempts: conflict")
    assert "merge the task's commit 222222222222 into claudecluster/r by hand" in reason
