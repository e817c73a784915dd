"""What a merge records, free of I/O: TaskMerged, MergeConflict or TaskFailed.

The shell (runtime/driver.py, one result at a time; runtime/merge_queue.py, a verified
batch) makes the merge with git and runs the verify command; what it found is a
:class:`MergeFound`. Which event that is, with which id, is decided here, once for both:

* the verify command failed on the merge: TaskFailed (class ``verify``; the merge was
  undone, and the policy may retry the task);
* git could not merge it: MergeConflict with the conflicting files;
* the judge (:func:`~claudecluster.actors.merging.judge_merge`) refused it (conflict
  markers left, or a resolution that lost the task's change): MergeConflict naming the
  problem, so the next resolution attempt is told;
* otherwise TaskMerged: with the new commit and its files, or, for a result that
  brings no change, at the commit the branch stays at, saying why.
"""

from __future__ import annotations

import msgspec

from claudecluster.actors.driver import Merge, Record
from claudecluster.actors.merging import MergeFacts, MergeVerdict, judge_merge
from claudecluster.events import event_ids as ids
from claudecluster.events.model import ChangedFile, MergeConflict, TaskFailed, TaskMerged

__all__ = ["MergeFound", "merge_key", "merge_record", "refused_conflict"]


class MergeFound(msgspec.Struct, frozen=True, kw_only=True):
    """What the shell found when it merged one result: git's facts, no decision.

    Attributes:
        theirs: the commit holding the result (None: the task's attempt changed nothing).
        commit: the commit the result became on the branch (None: no commit was made).
        conflict_files: the files git could not merge.
        changed_files: the files the merge changes against the branch's head.
        marker_files: changed files left with more conflict blocks than before.
        verify_failure: the verify command's output when it failed on the merge.
        files: the changes of ``commit``, as recorded.
        at: where the branch stays when the result brings no change (default: the
            head the merge was decided on; a batch's earlier results may have moved it).
    """

    theirs: str | None
    commit: str | None = None
    conflict_files: tuple[str, ...] = ()
    changed_files: tuple[str, ...] = ()
    marker_files: tuple[str, ...] = ()
    verify_failure: str | None = None
    files: tuple[ChangedFile, ...] = ()
    at: str | None = None


def merge_key(item: Merge) -> str:
    """``run/task/attempt``: the trailer of the item's commit on the integration branch."""
    return f"{item.run_id}/{item.task_id}/{item.attempt}"


def _judged(item: Merge, found: MergeFound) -> MergeVerdict:
    """The judge's verdict on what the merge would do."""
    if found.theirs is None:
        facts = MergeFacts(result_is_base=True)
        return judge_merge(facts, resolving=None, summary=item.result.summary)
    facts = MergeFacts(
        changed_files=found.changed_files,
        marker_files=found.marker_files,
        result_is_base=found.theirs == item.resolution_base,
    )
    return judge_merge(facts, resolving=item.resolving, summary=item.result.summary)


def refused_conflict(
    item: Merge, marker_files: tuple[str, ...], verdict: MergeVerdict, theirs: str
) -> MergeConflict:
    """A merge git made but the judge refused, recorded as a conflict with the problem.

    A refused resolution resolves the task's own commit again (the original conflict's
    ``theirs``), so the next attempt starts from the same two sides.
    """
    original = item.resolving
    return MergeConflict(
        run_id=item.run_id,
        task_id=item.task_id,
        attempt=item.attempt,
        files=original.files if original is not None else marker_files,
        ours=item.head,
        theirs=original.theirs if original is not None else theirs,
        policy=item.on_conflict,
        problem=verdict.problem,
    )


def merge_record(item: Merge, found: MergeFound) -> Record:
    """The event that records how merging ``item`` went, appended on the task's subject
    conditionally on the history the merge was decided on."""
    run_id, task_id, attempt = item.run_id, item.task_id, item.attempt

    def record(event: TaskMerged | MergeConflict | TaskFailed, event_id: str) -> Record:
        return Record(
            key=item.key, event=event, event_id=event_id, expected_last=item.expected_last
        )

    if found.verify_failure is not None:
        failed = TaskFailed(
            run_id=run_id, task_id=task_id, attempt=attempt,
            reason=f"verify failed after merging; the merge was undone: {found.verify_failure}",
            failure_class="verify", retryable=True,
        )  # fmt: skip
        return record(failed, ids.merge_verify_failed_id(run_id, task_id, attempt))
    conflict_id = ids.merge_conflict_id(run_id, task_id, attempt)
    if found.conflict_files:
        assert found.theirs is not None  # git merged something
        conflict = MergeConflict(
            run_id=run_id, task_id=task_id, attempt=attempt, files=found.conflict_files,
            ours=item.head, theirs=found.theirs, policy=item.on_conflict,
        )  # fmt: skip
        return record(conflict, conflict_id)
    verdict = _judged(item, found)
    if not verdict.accepted:
        assert found.theirs is not None  # a result with no commit is always accepted
        return record(
            refused_conflict(item, found.marker_files, verdict, found.theirs), conflict_id
        )
    merged_id = ids.task_merged_id(run_id, task_id, attempt)
    if found.commit is not None:
        merged = TaskMerged(
            run_id=run_id, task_id=task_id, attempt=attempt, commit=found.commit,
            integration_branch=item.integration_branch, files=found.files,
        )  # fmt: skip
        return record(merged, merged_id)
    unchanged = TaskMerged(
        run_id=run_id, task_id=task_id, attempt=attempt, commit=found.at or item.head,
        integration_branch=item.integration_branch, brought_changes=False, note=verdict.note,
    )  # fmt: skip
    return record(unchanged, merged_id)
