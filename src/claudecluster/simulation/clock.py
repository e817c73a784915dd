"""Virtual time for the real shells: trio's ``MockClock`` and a replayable scheduler.

The shells read time from anyio's clock and from an injected ``now``; on trio with
``MockClock(autojump_threshold=0)`` both are virtual, and time jumps to the next
deadline whenever every task waits. What remains is the order trio runs ready tasks
in: on purpose it reverses each batch at random (to shake out ordering bugs), from a
module-level ``random.Random`` that nothing seeds. A simulation must replay exactly
from its seed, so :func:`seed_trio_scheduler` seeds that source. trio offers no public
way to do so (Hypothesis' trio support reaches the same attribute); checked with trio
0.35 (constraints.txt), and :func:`seed_trio_scheduler` fails loudly if it moves.
"""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from typing import Final

import anyio

__all__ = ["EPOCH", "seed_trio_scheduler", "virtual_now"]

#: what virtual time 0 is as a date
EPOCH: Final = datetime(2026, 1, 1, tzinfo=UTC)


def virtual_now() -> datetime:
    """The current time as a date, read from anyio's (virtual) clock."""
    return EPOCH + timedelta(seconds=anyio.current_time())


def seed_trio_scheduler(seed: int) -> None:
    """Make the order trio runs ready tasks in a function of ``seed``.

    Raises:
        TypeError: this trio keeps that order's source elsewhere.
    """
    import trio._core._run as trio_run

    source = getattr(trio_run, "_r", None)
    if not isinstance(source, random.Random) or not hasattr(
        trio_run, "_ALLOW_DETERMINISTIC_SCHEDULING"
    ):
        raise TypeError("trio's scheduler has no seedable source here: update clock.py")
    source.seed(seed)
    # Process-wide, as Hypothesis sets it: it only ever makes trio's order repeatable.
    setattr(trio_run, "_ALLOW_DETERMINISTIC_SCHEDULING", True)  # noqa: B010 - a Final of trio's
