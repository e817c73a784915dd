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

Only the ``let_both`` action exists: both attempts finish and the second merges through a
rebase or a resolution, as without a prediction.
"""

from __future__ import annotations

from collections.abc import Callable, Container, Iterable
from dataclasses import dataclass
from typing import Literal

__all__ = ["Collision", "LiveAttempt", "Outcome", "Side", "conflict_hits", "predict", "settle"]

Outcome = Literal["conflicted", "merged_clean", "moot"]


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


def settle(first: Side, second: Side) -> Outcome | None:
    """What became of a prediction, or None while it is not yet known.

    A conflict of either side settles it as come true at once; both merged without one
    settles it as a false alarm; a side that will never merge makes it moot.
    """
    if first.conflicted or second.conflicted:
        return "conflicted"
    if first.merged and second.merged:
        return "merged_clean"
    if first.gone or second.gone:
        return "moot"
    return None


def conflict_hits(conflict_files: Iterable[str], predicted: Iterable[str]) -> bool:
    """Whether a merge conflict is the predicted one: it names a predicted file, or names
    no file at all (a refused result whose files git did not list)."""
    files = set(conflict_files)
    return not files or bool(files & set(predicted))
