"""Reading the cluster: ``status``, ``logs``, ``replay`` and ``export``.

Each rebuilds what it shows from the event log (a replay into the same projections every
actor uses), so what it says is what the log says, on the embedded server or a cluster.
"""

from __future__ import annotations

import shutil
import sys
import textwrap
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Final, Literal

import anyio
import msgspec
from rich.console import Console
from rich.table import Table

from claudecluster.cli.app import EXIT_OK, command_settings
from claudecluster.cli.render import (
    merge_warning_lines,
    preemption_lines,
    run_table,
    tasks_table,
)
from claudecluster.errors import ConfigError, InvalidIdError, UnknownEntityError
from claudecluster.events.envelope import StoredEvent
from claudecluster.events.model import TaskProgress
from claudecluster.events.subjects import run_filter
from claudecluster.projections.cluster import ClusterView, apply, find_task, replay
from claudecluster.projections.progress import run_progress
from claudecluster.projections.tasks import progress_text
from claudecluster.projections.views import RunView, TaskView
from claudecluster.runtime.connection import Connection, open_configured_cluster
from claudecluster.runtime.reads import (
    RunsListing,
    read_run,
    run_of_ref,
    runs_from_snapshot,
    view_from_snapshot,
)
from claudecluster.settings import Settings
from claudecluster.transport.artifacts import ArtifactStore, JetStreamArtifactStore
from claudecluster.transport.base import read_all
from claudecluster.transport.snapshots import JetStreamSnapshotStore

__all__ = ["DEFAULT_LIST_LIMIT", "export", "logs", "replay_cmd", "status"]

#: Finished runs ``status`` lists unless told otherwise: a cluster finishes thousands.
DEFAULT_LIST_LIMIT: Final = 20


def _archive(conn: Connection) -> ArtifactStore:
    """Where archived runs are read from (``claudecluster archive`` moved them there)."""
    return JetStreamArtifactStore(conn.client.jetstream())


def status(
    ref: str | None = None,
    *,
    json: bool = False,
    limit: int = DEFAULT_LIST_LIMIT,
    all: bool = False,
    nats: str | None = None,
    config: Path | None = None,
) -> int:
    """Show runs, one run with its tasks, or one task.

    Without a reference: every open run, and the newest finished ones (--limit, --all).

    Examples:
        claudecluster status
        claudecluster status --all
        claudecluster status run-20261124-101500
        claudecluster status run-20261124-101500/api
        claudecluster status run-20261124-101500 --json

    Args:
        ref: A run id, a task as RUN/TASK, or a task id unique across runs.
        json: Print JSON for scripts: an array of runs (the same runs as the table);
            {"run", "tasks", "cost"} for a run; the task's fields for a task.
        limit: Without a reference: how many finished runs to list, newest first
            (open runs are always listed).
        all: Without a reference: list every finished run.
        nats: NATS URL (default: nats.url, else the embedded server of this directory).
        config: A claudecluster.yaml to read instead of the one in this directory.
    """
    if limit < 0:
        raise ConfigError("limit", "flag --limit", "give 0 or more runs")
    settings = command_settings(nats, config)
    if ref is None:
        return _status_all(settings, json=json, newest=None if all else limit)
    view: ClusterView = anyio.run(_view, settings, ref)
    if json:
        sys.stdout.write(msgspec.json.encode(_status_record(view, ref)).decode() + "\n")
        return EXIT_OK
    console = Console(highlight=False)
    now = datetime.now(UTC)
    shown = view.runs.get(ref)
    if shown is not None:
        console.print(run_table(view, shown))
        console.print(tasks_table(view, ref))
        for line in merge_warning_lines(view, ref):
            console.print(line, style="yellow", markup=False)
        for line in preemption_lines(view, ref):
            console.print(line, markup=False)
        progress = run_progress(view, ref, now)
        if progress is not None and progress.remaining_path:
            estimate = (
                f", about {progress.remaining_s:.0f}s at the pace so far"
                if progress.remaining_s is not None
                else ""
            )
            console.print(
                f"{progress.remaining_path} task(s) on the longest chain still ahead{estimate}",
                markup=False,
            )
        return EXIT_OK
    task = _task_of(view, ref)
    table = Table(
        title=f"task {task.run_id}/{task.task_id}", show_header=False, title_justify="left"
    )
    table.add_column("key", style="bold")
    table.add_column("value")
    for key, value in msgspec.structs.asdict(task).items():
        if value not in (None, "", (), 0):
            table.add_row(key, str(value.value if hasattr(value, "value") else value))
    console.print(table)
    return EXIT_OK


def _status_all(settings: Settings, *, json: bool, newest: int | None) -> int:
    """``status`` without a reference: a run in a line, from the compact index of runs
    plus the tail (finished runs come summed up, without their tasks): every open run
    and the ``newest`` finished ones (None: all)."""
    listing: RunsListing = anyio.run(_runs, settings, newest)
    view = listing.view
    now = datetime.now(UTC)
    lines: list[tuple[RunView, str, str, str]] = []
    for row in listing.rows.values():
        done = f"{row.finished}/{row.total}"
        lines.append((row.run, done, f"{row.elapsed_s:.0f}s", f"${row.cost_usd:.4f}"))
    finished = [run for run in view.runs.values() if not run.state.open]
    finished.sort(key=lambda run: (run.submitted_at, run.run_id))
    # Finished runs the view holds (a tail, or no index) count against the limit as rows do.
    room = len(finished) if newest is None else max(newest - len(listing.rows), 0)
    hidden = {run.run_id for run in finished[: max(len(finished) - room, 0)]}
    for run in view.runs.values():
        if run.run_id in hidden:
            continue
        progress = run_progress(view, run.run_id, now)
        assert progress is not None
        done = f"{progress.finished}/{progress.total}"
        lines.append((run, done, f"{progress.elapsed_s:.0f}s", f"${progress.cost_usd:.4f}"))
    lines.sort(key=lambda line: (line[0].submitted_at, line[0].run_id))
    older = listing.older + len(hidden)
    if json:
        sys.stdout.write(msgspec.json.encode([line[0] for line in lines]).decode() + "\n")
        return EXIT_OK
    header = ("run", "state", "done", "elapsed", "cost", "goal")
    cells = [
        (run.run_id, run.state.value, done, elapsed, cost, run.goal)
        for run, done, elapsed, cost in lines
    ]
    sys.stdout.write(_plain_table("runs", header, cells))
    if older:
        sys.stdout.write(
            f"{older:,} older finished run(s) not shown: --all lists every run, "
            "--limit N the newest N\n"
        )
    return EXIT_OK


def _plain_table(title: str, header: tuple[str, ...], rows: Sequence[tuple[str, ...]]) -> str:
    """A table as plain text, the last column folded onto more lines to fit the terminal
    (no cell is cut). Not rich's: a cluster lists its runs by the ten thousand, and rich
    lays out such a table in minutes."""
    gap = "  "
    widths = [max([len(header[n]), *(len(row[n]) for row in rows)]) for n in range(len(header) - 1)]
    columns = shutil.get_terminal_size().columns
    last = max(columns - sum(widths) - len(gap) * len(widths), 10)

    def line(cells: tuple[str, ...]) -> str:
        return gap.join(cell.ljust(width) for cell, width in zip(cells, widths, strict=False))

    out = [
        title,
        line(header) + gap + header[-1],
        "─" * min(sum(widths) + len(gap) * len(widths) + last, columns),
    ]
    blank = line(tuple("" for _ in widths))
    for row in rows:
        folded = textwrap.wrap(row[-1], last, break_on_hyphens=False) or [""]
        out.append((line(row) + gap + folded[0]).rstrip())
        out.extend((blank + gap + more).rstrip() for more in folded[1:])
    return "\n".join(out) + "\n"


async def _runs(settings: Settings, newest: int | None) -> RunsListing:
    """Every run: the open ones in a view, the finished ones as rows (``newest`` of them)."""
    async with open_configured_cluster(settings, name="claudecluster-cli", read_only=True) as conn:
        store = JetStreamSnapshotStore(conn.client.jetstream())
        return await runs_from_snapshot(conn.log, store, archive=_archive(conn), newest=newest)


def _task_of(view: ClusterView, ref: str) -> TaskView:
    """The task ``status REF`` shows when REF names no run.

    Raises:
        UnknownEntityError: no such task, nor run when REF could be one (no ``/``).
        AmbiguousTaskError: several runs have a task of that id.
    """
    try:
        return find_task(view, ref)
    except UnknownEntityError:
        if "/" in ref:
            raise
        # ``status`` takes a run as readily as a task: the error names both.
        raise UnknownEntityError("run or task", ref) from None


def _status_record(view: ClusterView, ref: str) -> object:
    """What ``status RUN --json`` prints: the same projections the tables show, whole."""
    shown = view.runs.get(ref)
    if shown is not None:
        return {"run": shown, "tasks": list(view.tasks_of(ref)), "cost": view.costs.get(ref)}
    return _task_of(view, ref)


async def _view(settings: Settings, ref: str | None = None) -> ClusterView:
    """The view ``status`` shows: of one run when ``ref`` names it, else of every run."""
    async with open_configured_cluster(settings, name="claudecluster-cli", read_only=True) as conn:
        if ref is not None:
            found = await run_of_ref(conn.log, ref, archive=_archive(conn))
            if found is not None:
                return found[1]
        return await view_from_snapshot(conn.log, JetStreamSnapshotStore(conn.client.jetstream()))


def logs(
    task: str,
    *,
    follow: bool = False,
    json: bool = False,
    nats: str | None = None,
    config: Path | None = None,
) -> int:
    """Print what agents said and did: one task's log, or every task's of a run interleaved.

    Examples:
        claudecluster logs run-20261124-101500
        claudecluster logs run-20261124-101500/api
        claudecluster logs api -f
        claudecluster logs run-20261124-101500 --json

    Args:
        task: A run id (every task's log, in the order it happened, each line naming its
            task), a task as RUN/TASK, or a task id unique across runs.
        follow: Keep printing as the agents work, until the task (or the run) ends.
        json: Print the events as JSON Lines (the stored events, as `replay` reads them).
        nats: NATS URL (default: nats.url, else the embedded server of this directory).
        config: A claudecluster.yaml to read instead of the one in this directory.
    """
    settings = command_settings(nats, config)
    console = Console(highlight=False, soft_wrap=True)
    anyio.run(_logs, settings, task, follow, console, json)
    return EXIT_OK


async def _logs(
    settings: Settings, ref: str, follow: bool, console: Console, as_json: bool = False
) -> None:
    async with open_configured_cluster(settings, name="claudecluster-cli", read_only=True) as conn:
        found = await run_of_ref(conn.log, ref, archive=_archive(conn))
        if found is None:
            # A bare task id: which run has it, only the view of every run can say.
            snapshots = JetStreamSnapshotStore(conn.client.jetstream())
            named = find_task(await view_from_snapshot(conn.log, snapshots), ref)
            ref = f"{named.run_id}/{named.task_id}"
            found = await run_of_ref(conn.log, ref, archive=_archive(conn))
            assert found is not None  # the run was just seen in the log
        run_id, view, stored = found
        # A run id alone: every task of the run, interleaved in log order.
        whole_run = "/" not in ref and ref in view.runs
        task = None if whole_run else find_task(view, ref)
        show = _print_json if as_json else _print_progress
        for event in stored:
            show(console, event, run_id, task)
        if not follow or _ended(view, run_id, task):
            return
        async with conn.log.open_reader(
            from_seq=view.last_seq + 1, subjects=run_filter(run_id), follow=True
        ) as events:
            async for event in events:
                view = apply(view, event)
                show(console, event, run_id, task)
                if _ended(view, run_id, task):
                    return


def _ended(view: ClusterView, run_id: str, task: TaskView | None) -> bool:
    """Whether there is nothing more to follow: the task, or the whole run, ended."""
    if task is not None:
        return view.tasks[f"{task.run_id}/{task.task_id}"].state.terminal
    run = view.runs.get(run_id)
    return run is not None and not run.state.open


def _belongs(stored: StoredEvent, run_id: str, task: TaskView | None) -> bool:
    event = stored.envelope.payload
    if getattr(event, "run_id", None) != run_id:
        return False
    return task is None or getattr(event, "task_id", None) == task.task_id


def _print_json(console: Console, stored: StoredEvent, run_id: str, task: TaskView | None) -> None:
    if _belongs(stored, run_id, task):
        console.file.write(msgspec.json.encode(stored).decode() + "\n")


def _print_progress(
    console: Console, stored: StoredEvent, run_id: str, task: TaskView | None
) -> None:
    if not _belongs(stored, run_id, task):
        return
    event = stored.envelope.payload
    at = stored.envelope.occurred_at.strftime("%H:%M:%S")
    if task is None:  # interleaved: each line says whose it is
        at = f"{at} {getattr(event, 'task_id', None) or '(run)'}"
    if isinstance(event, TaskProgress):
        label = {
            "text": "agent",
            "tool_use": f"tool {event.tool}",
            "tool_result": "result",
            "usage": "usage",
        }[event.kind]
        console.print(f"{at} [{event.attempt}] {label}: {progress_text(event)}", markup=False)
        return
    kind = type(event).__name__
    console.print(f"{at} {kind} {_brief(event)}", markup=False)


def _brief(event: object) -> str:
    parts = []
    for field in ("attempt", "worker_id", "reason", "summary", "commit", "files"):
        value = getattr(event, field, None)
        if value not in (None, "", ()):
            parts.append(f"{field}={value}")
    return " ".join(parts)


def replay_cmd(
    *,
    run: str | None = None,
    until: str | None = None,
    type: str | None = None,
    nats: str | None = None,
    config: Path | None = None,
) -> int:
    """Replay the event log: print the events, then the state they add up to.

    Event-replay debugging: stop at a sequence number or a time to see the projections
    exactly as they were then.

    Examples:
        claudecluster replay --run run-20261124-101500
        claudecluster replay --run run-20261124-101500 --until 120
        claudecluster replay --until 2026-11-24T10:15:30Z --type task.failed

    Args:
        run: Only this run's events (and its state at the end).
        until: Stop after this sequence number, or at this ISO time.
        type: Print only events of this wire type (e.g. task.merged); all are replayed.
        nats: NATS URL (default: nats.url, else the embedded server of this directory).
        config: A claudecluster.yaml to read instead of the one in this directory.
    """
    settings = command_settings(nats, config)
    limit_seq, limit_time = _until(until)
    stored: list[StoredEvent] = anyio.run(_all_events, settings, run)
    console = Console(highlight=False, soft_wrap=True)
    view = ClusterView()
    for event in stored:
        if limit_seq is not None and event.seq > limit_seq:
            break
        if limit_time is not None and event.envelope.occurred_at > limit_time:
            break
        view = apply(view, event)
        payload = event.envelope.payload
        tag = str(type_tag(payload))
        if run is not None and getattr(payload, "run_id", None) != run:
            continue
        if type is not None and tag != type:
            continue
        scope = getattr(payload, "task_id", None) or getattr(payload, "worker_id", "")
        console.print(
            f"{event.seq:6d} {event.envelope.occurred_at:%H:%M:%S.%f}"[:-3]
            + f" {tag:22} {scope} {_brief(payload)}",
            markup=False,
        )
    console.print(
        f"state after seq {view.last_seq} ({view.anomaly_count} anomalies):", markup=False
    )
    runs = [view.runs[run]] if run is not None and run in view.runs else list(view.runs.values())
    if run is not None and run not in view.runs:
        raise UnknownEntityError("run", run)
    for shown in runs:
        console.print(run_table(view, shown))
        console.print(tasks_table(view, shown.run_id))
    return EXIT_OK


def type_tag(payload: object) -> str:
    """The wire tag of an event (``task.merged``)."""
    return str(type(payload).__struct_config__.tag)  # type: ignore[attr-defined]


def _until(until: str | None) -> tuple[int | None, datetime | None]:
    if until is None:
        return None, None
    if until.isdigit():
        return int(until), None
    try:
        moment = datetime.fromisoformat(until.replace("Z", "+00:00"))
    except ValueError:
        raise ConfigError(
            "until", "flag --until", "give a sequence number or an ISO time"
        ) from None
    return None, moment if moment.tzinfo else moment.replace(tzinfo=UTC)


async def _record(settings: Settings, run: str) -> dict[str, object]:
    async with open_configured_cluster(settings, name="claudecluster-cli", read_only=True) as conn:
        try:
            stored = await read_run(conn.log, run, archive=_archive(conn))
        except InvalidIdError:
            raise UnknownEntityError("run", run) from None
        view = replay(stored)
        if run not in view.runs:
            raise UnknownEntityError("run", run)
        from claudecluster.reporting import fetch_diffstats, run_record  # export only: heavy

        diffstats = await fetch_diffstats(conn, stored, run)
        return run_record(view, stored, run, diffstats)


async def _all_events(settings: Settings, run: str | None) -> list[StoredEvent]:
    """The log, or with ``run`` only that run's events (the server filters them)."""
    async with open_configured_cluster(settings, name="claudecluster-cli", read_only=True) as conn:
        if run is None:
            return await read_all(conn.log)
        try:
            return await read_run(conn.log, run, archive=_archive(conn))
        except InvalidIdError:
            raise UnknownEntityError("run", run) from None


def export(
    run: str,
    *,
    format: Literal["json", "md", "html"] = "html",
    out: Path | None = None,
    nats: str | None = None,
    config: Path | None = None,
) -> int:
    """Export a run's report: JSON for tools, Markdown for notes, or one HTML file.

    The HTML report is self-contained (no network, no scripts): a timeline of tasks per
    worker, the task graph, per-task files changed, cost and tokens, failures and
    conflicts.

    Examples:
        claudecluster export run-20261124-101500 --out report.html
        claudecluster export run-20261124-101500 --format md

    Args:
        run: The run id.
        format: json, md or html.
        out: The file to write (default: print to standard output).
        nats: NATS URL (default: nats.url, else the embedded server of this directory).
        config: A claudecluster.yaml to read instead of the one in this directory.
    """
    from claudecluster.reporting import render_html, render_markdown

    settings = command_settings(nats, config)
    record = anyio.run(_record, settings, run)
    if format == "json":
        text = msgspec.json.format(msgspec.json.encode(record), indent=2).decode() + "\n"
    elif format == "md":
        text = render_markdown(record)
    else:
        text = render_html(record)
    if out is None:
        Console(highlight=False, soft_wrap=True).out(text, end="")
    else:
        out.write_text(text, encoding="utf-8")
        Console(highlight=False, stderr=True).print(f"wrote {out}", markup=False)
    return EXIT_OK
