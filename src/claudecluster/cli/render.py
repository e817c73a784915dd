"""Rich renderings of projections, shared by every command that shows status."""

from __future__ import annotations

from datetime import datetime

from rich import box
from rich.table import Table

from claudecluster.projections.cluster import ClusterView
from claudecluster.projections.progress import merge_warnings, preemptions
from claudecluster.projections.views import RunView

__all__ = [
    "merge_warning_lines",
    "preemption_lines",
    "run_table",
    "tasks_table",
    "workers_table",
]

#: Below this many columns the workers table leaves out CPU, memory and a lone pool, so
#: that a typical worker id, state, host and task ids fit 80 columns whole.
WIDE_COLUMNS = 110


def _elapsed(start: datetime | None, end: datetime | None) -> str:
    if start is None or end is None:
        return "-"
    return f"{(end - start).total_seconds():.1f}s"


def run_table(view: ClusterView, run: RunView) -> Table:
    """One run: state, goal, branch, spend."""
    cost = view.costs.get(run.run_id)
    table = Table(title=f"run {run.run_id}", show_header=False, title_justify="left")
    table.add_column("key", style="bold")
    table.add_column("value")
    table.add_row("goal", run.goal)
    table.add_row("state", run.state.value)
    table.add_row("tasks", str(len(run.task_ids)))
    table.add_row("integration branch", run.integration_branch or "-")
    table.add_row("head commit", run.head_commit or "-")
    table.add_row("elapsed", _elapsed(run.submitted_at, run.finished_at))
    if cost is not None:
        table.add_row("cost", f"${cost.cost_usd:.4f} over {cost.attempts_billed} attempts")
        table.add_row(
            "tokens", f"{cost.usage.input_tokens:,} in / {cost.usage.output_tokens:,} out"
        )
    return table


def tasks_table(view: ClusterView, run_id: str) -> Table:
    """A run's tasks in plan order: state, attempt, worker, elapsed, turns, cost."""
    # No vertical rules, and long values fold onto a second line rather than being cut:
    # 80 columns hold a typical row whole.
    table = Table(title="tasks", title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False)
    for column in ("task", "state", "attempt", "worker", "elapsed", "turns", "cost"):
        table.add_column(column, justify="right" if column in {"turns", "cost"} else "left",
                         overflow="fold")  # fmt: skip
    for task in view.tasks_of(run_id):
        unchanged = task.state.value == "merged" and task.merge_note
        state = f"{task.state.value} (no change)" if unchanged else task.state.value
        if task.state.value == "preempted":
            state = f"preempted (waits for {task.preempted_by})"
        stopped = f" ({task.preemptions} stopped early)" if task.preemptions else ""
        table.add_row(
            task.task_id,
            state,
            f"{task.attempt}{stopped}",
            task.worker_id or "-",
            _elapsed(task.started_at, task.finished_at),
            str(task.turns),
            f"${task.cost_usd:.4f}",
        )
    return table


def merge_warning_lines(view: ClusterView, run_id: str) -> list[str]:
    """One warning per task counted as merged although its merge changed nothing."""
    return [
        f"warning: {task_id} merged without changes: {why}"
        for task_id, why in merge_warnings(view, run_id)
    ]


def preemption_lines(view: ClusterView, run_id: str) -> list[str]:
    """One note per task with an attempt stopped early for a predicted collision."""
    lines = []
    for task_id, count, by, state in preemptions(view, run_id):
        then = (
            f"waits for {by} to merge"
            if state == "preempted"
            else f"re-run on top of {by}'s merge, now {state}"
        )
        lines.append(
            f"note: {task_id}: {count} attempt(s) stopped early, predicted to collide "
            f"with {by}; {then}"
        )
    return lines


def workers_table(
    view: ClusterView, now: datetime | None = None, *, width: int = WIDE_COLUMNS
) -> Table:
    """Every worker the log knows: state, host, last heartbeat, load, slots, running tasks.

    Narrower than :data:`WIDE_COLUMNS` (an 80-column terminal), CPU and memory are left
    out, and the pool too when every worker is in the same one (``workers list --json``
    has every field); nothing shown is cut.
    """
    wide = width >= WIDE_COLUMNS
    pools = {worker.pool for worker in view.workers.values()}
    shown = [column for column in ("worker", "state", "pool", "host", "seen", "cpu", "load",
                                   "memory", "slots", "running")
             if wide or (column not in {"cpu", "memory"}
                         and (column != "pool" or len(pools) > 1))]  # fmt: skip
    table = Table(title="workers", title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False)
    for column in shown:
        table.add_column(column, overflow="fold")
    for worker in sorted(view.workers.values(), key=lambda w: w.worker_id):
        seen = "-"
        if worker.last_seen_at is not None and now is not None:
            seen = f"{(now - worker.last_seen_at).total_seconds():.0f}s ago"
        elif worker.last_seen_at is not None:
            seen = worker.last_seen_at.strftime("%H:%M:%S")
        cells = {
            "worker": worker.worker_id,
            "state": worker.state,
            "pool": worker.pool,
            "host": worker.host or "-",
            "seen": seen,
            "cpu": f"{worker.cpu_percent:.0f}%",
            "load": f"{worker.load_avg:.2f}",
            "memory": f"{worker.memory_bytes / 2**20:.0f} MiB",
            "slots": f"{worker.slots_free}/{worker.slots}",
            "running": ", ".join(worker.running_tasks) or "-",
        }
        table.add_row(*(cells[column] for column in shown))
    return table
