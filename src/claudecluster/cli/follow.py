"""Submitting a run and following it live: what ``run`` and ``demo`` share.

The follower reads the log from just before the submission, folds every event into a
cluster view and hands both to a renderer: plain lines when stdout is not a terminal, a
live table when it is, JSON Lines with ``--json``. It returns when the run ends, and
fails clearly when the driver refuses the run or no driver answers.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Final, Protocol

import anyio
import msgspec
from rich.console import Console, Group
from rich.live import Live
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from claudecluster.domain.lifecycle import FINISHED_TASK_STATES, TaskState
from claudecluster.errors import CommandRefusedError, DriverUnavailableError
from claudecluster.events.envelope import StoredEvent
from claudecluster.events.model import (
    CollisionPredicted,
    CommandRejected,
    MergeConflict,
    RunCancelled,
    RunCompleted,
    RunFailed,
    RunPlanned,
    RunSubmitted,
    SubmitRun,
    TaskFailed,
    TaskMerged,
    TaskPreempted,
    TaskRetryScheduled,
    TaskSkipped,
    TaskStarted,
    TaskSucceeded,
    WorkerEvent,
    WorkerLost,
)
from claudecluster.observability.redaction import redact_url
from claudecluster.projections.cluster import ClusterView, apply
from claudecluster.projections.progress import merge_warnings
from claudecluster.runtime.answers import publish_and_wait
from claudecluster.runtime.connection import Connection
from claudecluster.transport.commands import JetStreamCommandBus, publish_command

__all__ = ["Renderer", "RunEnd", "follow_run", "renderer_for", "submit_only", "watch_run"]

_ACCEPT_TIMEOUT_S: Final = 20.0
_PLAN_LINES: Final = 30
_ENDS = (RunCompleted, RunFailed, RunCancelled)


@dataclass(frozen=True, slots=True)
class RunEnd:
    """How the followed run ended and the view at that point."""

    event: RunCompleted | RunFailed | RunCancelled
    view: ClusterView


class Renderer(Protocol):
    """Shows a run's progress as its events arrive."""

    def event(self, stored: StoredEvent, view: ClusterView) -> None:
        """One more event of the run (or of the workers)."""
        ...

    def close(self) -> None:
        """The run ended or the follower stopped."""
        ...


def renderer_for(console: Console, run_id: str, *, json: bool) -> Renderer:
    """JSON Lines, a live table on a terminal, or plain lines."""
    if json:
        return _JsonLines()
    if console.is_terminal:
        return _LiveTable(console, run_id)
    return _PlainLines(console, run_id)


async def follow_run(
    conn: Connection, command: SubmitRun, renderer: Renderer, *, command_id: str
) -> RunEnd:
    """Submit ``command`` and follow its run to the end.

    Raises:
        CommandRefusedError: the driver refused the run (the message is its reason).
        DriverUnavailableError: no driver recorded the submission in time.
    """
    start = await conn.log.last_seq() + 1
    await publish_command(
        conn.client.jetstream(), command, command_id=command_id, now=datetime.now(UTC)
    )
    return await watch_run(conn, command.run_id, renderer, from_seq=start, command_id=command_id)


async def submit_only(conn: Connection, command: SubmitRun, *, command_id: str) -> None:
    """Submit ``command`` and return once the driver recorded it (``run --detach``).

    Raises:
        CommandRefusedError: the driver refused the run.
        DriverUnavailableError: no driver recorded the submission in time.
    """
    await publish_and_wait(
        conn.log,
        JetStreamCommandBus(conn.client.jetstream()),
        command,
        command_id=command_id,
        answered=lambda event: isinstance(event, RunSubmitted) and event.run_id == command.run_id,
        timeout_s=_ACCEPT_TIMEOUT_S,
        silence=f"no driver took run {command.run_id!r} within {_ACCEPT_TIMEOUT_S:.0f}s: start "
        f"one with 'claudecluster driver --nats {redact_url(conn.url)}'",
    )


async def watch_run(
    conn: Connection,
    run_id: str,
    renderer: Renderer,
    *,
    from_seq: int,
    command_id: str | None = None,
) -> RunEnd:
    """Follow a run from ``from_seq`` until it ends (see :func:`follow_run`)."""
    view = ClusterView(last_seq=from_seq - 1)
    accepted = anyio.Event()
    end: RunEnd | None = None
    refused = ""

    async def watchdog() -> None:
        with anyio.move_on_after(_ACCEPT_TIMEOUT_S):
            await accepted.wait()
            return
        raise DriverUnavailableError(
            f"no driver took run {run_id!r} within {_ACCEPT_TIMEOUT_S:.0f}s: start one with "
            f"'claudecluster driver --nats {redact_url(conn.url)}' (or run without --nats to "
            "use the embedded cluster)"
        )

    try:
        async with anyio.create_task_group() as group:
            if command_id is not None:
                group.start_soon(watchdog)
            else:
                accepted.set()
            async with conn.log.open_reader(from_seq=from_seq, follow=True) as events:
                async for stored in events:
                    view = apply(view, stored)
                    event = stored.envelope.payload
                    if isinstance(event, CommandRejected) and event.command_id == command_id:
                        refused = event.reason
                        group.cancel_scope.cancel()
                        break
                    if isinstance(event, WorkerEvent) and not isinstance(event, WorkerLost):
                        continue  # folded into the view; the run's own story is shown
                    if getattr(event, "run_id", run_id) != run_id:
                        continue
                    if isinstance(event, RunSubmitted):
                        accepted.set()
                    renderer.event(stored, view)
                    if isinstance(event, _ENDS):
                        end = RunEnd(event, view)
                        group.cancel_scope.cancel()
                        break
    finally:
        renderer.close()
    if refused:
        raise CommandRefusedError("run.submit", refused)
    assert end is not None
    return end


def _clock(stored: StoredEvent, origin: list[datetime]) -> str:
    at = stored.envelope.occurred_at
    if not origin:
        origin.append(at)
    return f"+{(at - origin[0]).total_seconds():6.1f}s"


class _PlainLines:
    """One line per event worth reading, for logs and pipes."""

    def __init__(self, console: Console, run_id: str) -> None:
        self._console = console
        self._run_id = run_id
        self._origin: list[datetime] = []

    def event(self, stored: StoredEvent, view: ClusterView) -> None:
        line = _describe(stored, view)
        if line:
            self._console.print(f"{_clock(stored, self._origin)}  {line}", markup=False)

    def close(self) -> None:
        """Nothing to tear down."""


class _JsonLines:
    """Every event of the run as one JSON object per line, for scripts."""

    def event(self, stored: StoredEvent, view: ClusterView) -> None:
        del view
        sys.stdout.write(msgspec.json.encode(stored).decode() + "\n")
        sys.stdout.flush()

    def close(self) -> None:
        """Nothing to tear down."""


class _LiveTable:
    """A table of the run's tasks, redrawn in place, with the notable events above it."""

    def __init__(self, console: Console, run_id: str) -> None:
        self._console = console
        self._run_id = run_id
        self._origin: list[datetime] = []
        self._live = Live(console=console, auto_refresh=False, transient=False)
        self._live.start()

    def event(self, stored: StoredEvent, view: ClusterView) -> None:
        line = _describe(stored, view)
        if line and isinstance(
            stored.envelope.payload,
            (RunPlanned, MergeConflict, TaskFailed, TaskSkipped, WorkerLost, *_ENDS),
        ):
            self._live.console.print(f"{_clock(stored, self._origin)}  {line}", markup=False)
        self._live.update(self._render(view, stored.envelope.occurred_at), refresh=True)

    def close(self) -> None:
        self._live.stop()

    def _render(self, view: ClusterView, now: datetime) -> Group:
        tasks = view.tasks_of(self._run_id)
        table = Table(title=f"run {self._run_id}", title_justify="left", expand=False)
        for column in ("task", "state", "attempt", "worker", "elapsed", "turns", "cost"):
            table.add_column(column, justify="right" if column in ("turns", "cost") else "left")
        for task in tasks:
            started = task.started_at
            finished = task.finished_at or (now if started else None)
            elapsed = f"{(finished - started).total_seconds():.1f}s" if started and finished else ""
            table.add_row(
                task.task_id, _styled(task.state), str(task.attempt or ""), task.worker_id or "",
                elapsed, str(task.turns or ""), f"${task.cost_usd:.4f}" if task.cost_usd else "",
            )  # fmt: skip
        done = sum(1 for t in tasks if t.state in FINISHED_TASK_STATES)
        bar = ProgressBar(total=max(len(tasks), 1), completed=done, width=40)
        return Group(table, Text(f"{done}/{len(tasks)} tasks done "), bar)


def _styled(state: TaskState) -> Text:
    colour = {
        TaskState.MERGED: "green", TaskState.SUCCEEDED: "green", TaskState.RUNNING: "cyan",
        TaskState.FAILED: "red", TaskState.CONFLICTED: "yellow", TaskState.SKIPPED: "dim",
    }.get(state, "")  # fmt: skip
    return Text(state.value, style=colour)


def _describe(stored: StoredEvent, view: ClusterView) -> str:
    """A sentence for the events a person wants to see scroll by."""
    event = stored.envelope.payload
    match event:
        case RunSubmitted():
            return f"run {event.run_id} submitted: {event.goal}"
        case RunPlanned():
            overlaps = len(event.predicted_conflicts)
            extra = f", {overlaps} predicted overlap(s) ordered" if overlaps else ""
            lines = [f"planned {len(event.tasks)} tasks from {event.base_commit[:12]}{extra}:"]
            for spec in event.tasks[:_PLAN_LINES]:
                after = f" (after {', '.join(spec.depends_on)})" if spec.depends_on else ""
                lines.append(f"           {spec.task_id}{after}: {spec.title}")
            if len(event.tasks) > _PLAN_LINES:
                lines.append(f"           ... and {len(event.tasks) - _PLAN_LINES} more")
            return "\n".join(lines)
        case TaskStarted():
            resumed = " (resumed)" if event.resumed else ""
            return (
                f"{event.task_id}: started on {event.worker_id}, attempt {event.attempt}{resumed}"
            )
        case TaskSucceeded():
            return (
                f"{event.task_id}: succeeded in {event.duration_ms / 1000:.1f}s, "
                f"{event.turns} turns, ${event.cost_usd:.4f}"
            )
        case TaskFailed():
            return f"{event.task_id}: failed ({event.failure_class}): {event.reason[:160]}"
        case TaskRetryScheduled():
            return f"{event.task_id}: retry as attempt {event.next_attempt} in {event.delay_s:g}s"
        case TaskSkipped():
            return f"{event.task_id}: skipped: {event.reason}"
        case TaskPreempted():
            return (
                f"{event.task_id}: attempt {event.attempt} stopped early, predicted to collide "
                f"with {event.other_task_id} in {', '.join(event.files) or 'the same files'}; "
                f"it runs again once {event.other_task_id} merged"
            )
        case CollisionPredicted():
            return (
                f"{event.task_id}: predicted to collide with {event.other_task_id} in "
                f"{', '.join(event.files)}; policy: {event.action}"
            )
        case TaskMerged() if not event.brought_changes:
            return (
                f"{event.task_id}: merged WITHOUT CHANGES, the branch stays at "
                f"{event.commit[:12]}: {event.note or 'the merge changed nothing'}"
            )
        case TaskMerged():
            return f"{event.task_id}: merged as {event.commit[:12]}"
        case MergeConflict() if event.problem:
            return f"{event.task_id}: merge refused: {event.problem}; policy: {event.policy}"
        case MergeConflict():
            return f"{event.task_id}: conflicts in {', '.join(event.files)}; policy: {event.policy}"
        case WorkerLost():
            return f"worker {event.worker_id} lost: {event.reason}"
        case RunCompleted():
            unchanged = len(merge_warnings(view, event.run_id))
            extra = f" ({unchanged} without changes)" if unchanged else ""
            if event.preempted_attempts:
                extra += f", {event.preempted_attempts} attempt(s) stopped early and re-run"
            return f"run completed: {event.tasks_succeeded} merged{extra}"
        case RunFailed():
            return f"run failed: {event.reason}"
        case RunCancelled():
            return f"run cancelled: {event.reason}"
        case _:
            del view
            return ""
