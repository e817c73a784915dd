"""Live collision prediction, free of I/O: which running attempts are heading for one file.

Workers report the files each attempt has touched so far (``TaskFilesTouched``). Two live
attempts of one run with no order between them that touched the same file will most
likely conflict when the second of them merges. The driver records that as a prediction
(``CollisionPredicted``) and, once both merges are known, whether it came true
(``CollisionSettled``), so a run's log says how often a live prediction was right and what
the collisions cost.

Declared ``files`` are handled before any of this, at planning: overlapping declarations
become dependencies, and a task that depends on another never runs beside it, so it is
never predicted to collide with it.

The run's ``on_collision`` policy says what a prediction does:

* ``let_both``: both attempts finish and the second merges through a rebase or a
  resolution, as without a prediction;
* ``restart_later``: the attempt that started later is stopped at once
  (``TaskPreempted``, see :func:`to_preempt`) and queued again once the earlier task
  has merged (:func:`may_requeue`), so it starts from that merge and does not conflict
  with it: a stopped attempt instead of a whole attempt plus a resolution.
"""

from __future__ import annotations

from collections.abc import Callable, Container, Iterable
from dataclasses import dataclass
from typing import Literal

__all__ = [
    "Collision",
    "LiveAttempt",
    "Outcome",
    "Runner",
    "Side",
    "Standing",
    "conflict_hits",
    "may_requeue",
    "predict",
    "settle",
    "to_preempt",
]

Outcome = Literal["conflicted", "merged_clean", "restarted", "moot"]

#: Where a task of a predicted pair stands, for the ``restart_later`` policy: ``live``
#: (queued, assigned or running), ``finishing`` (succeeded or conflicted: on its way to a
#: merge), ``merged``, ``preempted`` (itself stopped, waiting for another task), or
#: ``gone`` (failed, cancelled or skipped: it will not merge, or not soon).
Standing = Literal["live", "finishing", "merged", "preempted", "gone"]


@dataclass(frozen=True, slots=True)
class LiveAttempt:
    """A queued, assigned or running attempt and the files its worker last reported.

    ``order`` is when the attempt was queued (its log sequence): the larger started later.
    """

    task_id: str
    attempt: int
    order: int
    files: frozenset[str]


@dataclass(frozen=True, slots=True)
class Collision:
    """Two live attempts that touched the same files; ``later`` was queued after
    ``earlier``."""

    later: LiveAttempt
    earlier: LiveAttempt
    files: tuple[str, ...]

    @property
    def pair(self) -> tuple[str, str]:
        """The two tasks as (later, earlier): one prediction per pair of tasks."""
        return (self.later.task_id, self.earlier.task_id)


def predict(
    live: Iterable[LiveAttempt],
    ordered: Callable[[str, str], bool],
    known: Container[tuple[str, str]],
) -> list[Collision]:
    """The collisions among ``live`` not predicted before, in a deterministic order.

    Args:
        live: the run's live attempts with the files they touched.
        ordered: whether one task depends on the other (directly or not), either way;
            such tasks never run side by side, so they cannot collide.
        known: pairs (later, earlier) already predicted, in either order.
    """
    attempts = sorted(live, key=lambda a: (a.order, a.task_id))
    found: list[Collision] = []
    for index, later in enumerate(attempts):
        if not later.files:
            continue
        for earlier in attempts[:index]:
            shared = later.files & earlier.files
            if not shared:
                continue
            pair = (later.task_id, earlier.task_id)
            if pair in known or (pair[1], pair[0]) in known:
                continue
            if ordered(later.task_id, earlier.task_id):
                continue
            found.append(Collision(later=later, earlier=earlier, files=tuple(sorted(shared))))
    return found


@dataclass(frozen=True, slots=True)
class Side:
    """Where one task of a predicted pair stands on its way to the integration branch.

    ``conflicted``: a merge of the task conflicted in the predicted files after the
    prediction. ``gone``: the task will never merge (failed for good, cancelled, skipped).
    """

    merged: bool = False
    conflicted: bool = False
    gone: bool = False


def settle(first: Side, second: Side, *, restarted: bool = False) -> Outcome | None:
    """What became of a prediction, or None while it is not yet known.

    A conflict of either side settles it as come true at once; both merged without one
    settles it as a false alarm, or as ``restarted`` when the later attempt was preempted
    for it (the re-run started from the earlier merge, so it could not collide with it);
    a side that will never merge makes it moot.
    """
    if first.conflicted or second.conflicted:
        return "conflicted"
    if first.merged and second.merged:
        return "restarted" if restarted else "merged_clean"
    if first.gone or second.gone:
        return "moot"
    return None


def conflict_hits(conflict_files: Iterable[str], predicted: Iterable[str]) -> bool:
    """Whether a merge conflict is the predicted one: it names a predicted file, or names
    no file at all (a refused result whose files git did not list)."""
    files = set(conflict_files)
    return not files or bool(files & set(predicted))


@dataclass(frozen=True, slots=True)
class Runner:
    """One task of a predicted pair as the ``restart_later`` policy sees it.

    ``order`` is when its live attempt was queued (its log sequence): the larger started
    later. ``predicted_attempt`` is the attempt the prediction named for it.
    """

    task_id: str
    order: int
    attempt: int
    predicted_attempt: int
    standing: Standing


def to_preempt(first: Runner, second: Runner) -> tuple[Runner, Runner] | None:
    """(later, earlier) when the later-started attempt of a predicted pair is to be
    stopped now, else None.

    Only the attempt that started later is ever stopped, whichever way round the pair
    was predicted (a pair predicted both ways still stops one). It is stopped only while
    it is the live attempt the prediction named (one that finished, or was replaced
    meanwhile, has nothing to stop), and only if the earlier one is still on its way to
    a merge or merged: not if it will not merge (nothing to wait for), and not if it is
    itself preempted (it waits for a third task; waiting on a waiting task could close a
    cycle of tasks each waiting for another).
    """
    later, earlier = sorted((first, second), key=lambda r: (r.order, r.task_id), reverse=True)
    if later.standing != "live" or later.attempt != later.predicted_attempt:
        return None
    if earlier.standing in ("preempted", "gone"):
        return None
    return later, earlier


def may_requeue(earlier: Standing) -> bool:
    """Whether a task preempted for ``earlier`` may be queued again: once that task has
    merged (the new attempt starts from the merge), or at once if it will not merge."""
    return earlier in ("merged", "gone")
