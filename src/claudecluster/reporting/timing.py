"""How long a run took, said honestly: the parallelism, and the time one after another.

The sum of the tasks' durations over the wall time is how many tasks ran at once on
average (the parallelism). It is not the speedup against one worker: tasks that share a
machine slow each other down, which lengthens every duration and so inflates the ratio.
The time each task spent waiting on the model is not slowed by its neighbours, so its sum
is an estimate of the time one after another that contention does not inflate (low: it
leaves tool and start-up time out). Both are shown, each under its own name. Pure.
"""

from __future__ import annotations

__all__ = ["timing_line"]


def timing_line(
    *, wall_time_s: float, task_time_s: float, parallelism: float, model_time_s: float
) -> str:
    """One line: wall time, parallelism with what it is, and the contention-free estimate."""
    line = (
        f"wall time {wall_time_s:.1f}s; parallelism {parallelism:.2f}x ({task_time_s:.1f}s of "
        f"task time / wall time: tasks at once, inflated when they slow each other down)"
    )
    if model_time_s <= 0 or wall_time_s <= 0:
        return line + "; no model time measured, so no estimate of one after another"
    return line + (
        f"; one after another: at least {model_time_s:.1f}s (the tasks' model time, which "
        f"contention does not inflate), so a speedup of at least "
        f"{model_time_s / wall_time_s:.2f}x against one worker"
    )
