"""Judging a merge before it counts, free of I/O.

A task's result reaches the integration branch only after the driver has looked at what
the merge would do: the files it changes, and whether any of them holds conflict markers
it did not hold before. The shell (runtime/driver.py with workspace/integration.py)
gathers those facts with git; :func:`judge_merge` decides. A resolution attempt is not
trusted to have resolved anything: it must leave no markers and bring a change, or say,
in the words :data:`KEEP_DECLARATION` gives it, that keeping the integration side alone
is right (both sides made the same change). Anything else is a failed resolution, which
is recorded as a conflict again with what was wrong, so that the next attempt is told.
"""

from __future__ import annotations

import re
from typing import Final

import msgspec

from claudecluster.events.model import MergeConflict

__all__ = [
    "KEEP_DECLARATION",
    "Bisection",
    "MergeFacts",
    "MergeVerdict",
    "declared_keep",
    "judge_merge",
    "resolution_note",
    "stop_reason",
]

#: What a resolution attempt's final message starts with when it keeps the integration
#: side on purpose; the rest of the line says why.
KEEP_DECLARATION: Final = "KEPT INTEGRATION SIDE:"
_KEEP: Final = re.compile(re.escape(KEEP_DECLARATION) + r"\s*(.*)", re.IGNORECASE)
_REASON_CHARS: Final = 200


class MergeFacts(msgspec.Struct, frozen=True, kw_only=True):
    """What a merge would do to the integration branch, as git saw it.

    Attributes:
        changed_files: files whose content differs from the integration head after it.
        marker_files: changed files holding more conflict blocks than they did before.
        result_is_base: the attempt changed nothing in its workspace (a resolution that
            hands back the conflicted merge it started from).
    """

    changed_files: tuple[str, ...] = ()
    marker_files: tuple[str, ...] = ()
    result_is_base: bool = False


class MergeVerdict(msgspec.Struct, frozen=True, kw_only=True):
    """Whether the merge may move the branch, and what to record.

    Attributes:
        accepted: the merge may be committed (after the verify command, if any).
        brought_changes: it changes the integration branch.
        note: why an accepted merge brings no change (shown as a warning).
        problem: why a refused merge is refused, in words for the next attempt's agent.
    """

    accepted: bool
    brought_changes: bool = True
    note: str = ""
    problem: str = ""


def declared_keep(summary: str) -> str:
    """The reason a resolution gave for keeping the integration side, or "" if it gave none."""
    found = _KEEP.search(summary)
    if found is None:
        return ""
    reason = " ".join(found.group(1).split())[:_REASON_CHARS]
    return reason or "the resolution says both sides made the same change"


def judge_merge(
    facts: MergeFacts, *, resolving: MergeConflict | None, summary: str
) -> MergeVerdict:
    """Decide whether a merge counts.

    Args:
        facts: what the merge would do.
        resolving: the conflict the attempt was asked to resolve, or None for a task's own
            result.
        summary: the attempt's final message (for :data:`KEEP_DECLARATION`).
    """
    if facts.marker_files:
        files = ", ".join(facts.marker_files)
        if resolving is not None and facts.result_is_base:
            problem = (
                f"the resolution attempt changed nothing: the conflict markers are still in {files}"
            )
        else:
            problem = f"conflict markers (<<<<<<<, =======, >>>>>>>) are left in {files}"
        return MergeVerdict(accepted=False, problem=problem)
    if facts.changed_files:
        return MergeVerdict(accepted=True)
    if resolving is None:
        note = (
            "the task changed no file"
            if facts.result_is_base
            else "its changes were already on the integration branch"
        )
        return MergeVerdict(accepted=True, brought_changes=False, note=note)
    keep = declared_keep(summary)
    if keep:
        return MergeVerdict(
            accepted=True,
            brought_changes=False,
            note=f"the resolution kept the integration side: {keep}",
        )
    return MergeVerdict(
        accepted=False,
        problem=(
            "the resolution left the integration branch exactly as it was, so this task's "
            f"change to {', '.join(resolving.files)} is lost"
        ),
    )


def resolution_note(conflict: MergeConflict) -> str:
    """What a resolution attempt is told: where the conflict is, what went wrong last time,
    and how to say that the integration side alone is right."""
    files = ", ".join(conflict.files)
    note = (
        f"Merging your previous result into the integration branch conflicted in {files}. "
        f"The workspace holds that merge with conflict markers. Resolve every conflict "
        f"keeping the intent of both sides, remove every marker, then finish."
    )
    if conflict.problem:
        note += f" Your last resolution was refused: {conflict.problem}."
    return note + (
        f" If both sides made the same change, so that the integration side alone is right, "
        f"keep it and start your final message with '{KEEP_DECLARATION} <why>'."
    )


def stop_reason(
    task_id: str, conflict: MergeConflict | None, files: tuple[str, ...], attempts: int, branch: str
) -> str:
    """Why the run stops on a conflict no attempt resolved, and what the user can do."""
    where = ", ".join(files) or "unknown files"
    reason = f"task {task_id!r} still conflicts in {where} after {attempts} attempts"
    if conflict is not None and conflict.problem:
        reason += f": {conflict.problem}"
    theirs = f" {conflict.theirs[:12]}" if conflict is not None and conflict.theirs else ""
    return (
        f"{reason}. To finish it, merge the task's commit{theirs} into {branch} by hand "
        f"and resolve {where}, or give the task more attempts (max_attempts) or make it "
        f"depend on the task it collides with, then run it again"
    )


class Bisection(msgspec.Struct, frozen=True, kw_only=True):
    """The search for the first result of a batch that breaks the verify command.

    A batch of ``n`` results is stacked as ``n`` commits; prefix ``k`` is the branch with
    the first ``k`` of them. The head before the batch passed (prefix 0) and the whole
    batch failed (prefix ``n``); each probe verifies the prefix halfway between the
    longest known to pass and the shortest known to fail, so the culprit is found in
    about log2(n) more runs. It assumes a result that breaks the build keeps it broken
    when more results are stacked on top, which is what a merge queue can rely on.

    Attributes:
        good: the longest prefix known to pass.
        bad: the shortest prefix known to fail.
    """

    good: int
    bad: int

    @property
    def probe(self) -> int | None:
        """The prefix to verify next, or None once the culprit is known."""
        return None if self.bad - self.good <= 1 else (self.good + self.bad) // 2

    def probes(self, at_once: int) -> tuple[int, ...]:
        """Up to ``at_once`` prefixes to verify together, evenly spread over what is still
        unknown: with k runs at a time the culprit is found in log_(k+1)(n) rounds."""
        inside = self.bad - self.good - 1
        if inside <= 0:
            return ()
        count = min(max(at_once, 1), inside)
        step = (self.bad - self.good) / (count + 1)
        return tuple(sorted({self.good + max(1, round(step * (i + 1))) for i in range(count)}))

    def record_all(self, results: dict[int, bool]) -> Bisection:
        """What a round of probes taught (prefix -> passed)."""
        search = self
        for prefix, passed in sorted(results.items()):
            search = search.record(prefix, passed)
        if search.good >= search.bad:
            # A pass above a failure: the build is not monotonic; trust the failures.
            below = [p for p, ok in results.items() if ok and p < search.bad]
            search = Bisection(good=max(below, default=self.good), bad=search.bad)
        return search

    @property
    def culprit(self) -> int:
        """The index in the batch of the first result that breaks it (when ``probe`` is None)."""
        return self.bad - 1

    def record(self, prefix: int, passed: bool) -> Bisection:
        """What one probe of ``prefix`` taught."""
        if passed:
            return Bisection(good=max(self.good, prefix), bad=self.bad)
        return Bisection(good=self.good, bad=min(self.bad, prefix))
