"""Changing a run: ``cancel`` and ``rollback``.

Both publish a command and wait for the driver's answer in the log: the event that says
it was done, or CommandRejected with the reason (a one-line error, exit 2). On the
embedded server no driver runs between commands, so one is started in this process for
as long as the answer takes.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Final

import anyio
from rich.console import Console

from claudecluster.cli.app import EXIT_OK, app
from claudecluster.cli.inspect_cmd import find_task
from claudecluster.errors import CommandRefusedError, DriverUnavailableError, UnknownEntityError
from claudecluster.events.model import (
    CancelRun,
    CancelTask,
    Command,
    CommandRejected,
    Event,
    RollbackRun,
    RunCancelled,
    RunRolledBack,
    TaskCancelled,
    TaskSkipped,
)
from claudecluster.observability.logging import configure_logging
from claudecluster.observability.redaction import Redactor
from claudecluster.projections.cluster import replay
from claudecluster.runtime.connection import Connection, open_configured_cluster
from claudecluster.runtime.local_cluster import open_local_services
from claudecluster.settings import Settings, load_settings
from claudecluster.transport.base import read_all
from claudecluster.transport.commands import publish_command

__all__ = ["cancel", "rollback"]

_ANSWER_TIMEOUT_S: Final = 30.0


def _settings(nats: str | None, config: Path | None) -> Settings:
    flags = {"nats": {"url": nats}} if nats else None
    settings = load_settings(config_file=config, flags=flags).settings
    configure_logging(level="WARNING", redactor=Redactor(settings.secret_values()))
    return settings


@app.command
def cancel(
    ref: str, *, reason: str = "", nats: str | None = None, config: Path | None = None
) -> int:
    """Cancel a run, or one task (its dependents are skipped).

    Examples:
        claudecluster cancel run-20261124-101500
        claudecluster cancel run-20261124-101500/api --reason "wrong approach"

    Args:
        ref: A run id, a task as RUN/TASK, or a task id unique across runs.
        reason: Why, recorded with the cancellation.
        nats: NATS URL (default: nats.url, else the embedded server of this directory).
        config: A claudecluster.yaml to read instead of the one in this directory.
    """
    settings = _settings(nats, config)
    message: str = anyio.run(_cancel, settings, ref, reason)
    Console(highlight=False).print(message, markup=False)
    return EXIT_OK


async def _cancel(settings: Settings, ref: str, reason: str) -> str:
    async with open_configured_cluster(settings, name="claudecluster-cli") as conn:
        view = replay(await read_all(conn.log))
        command: Command
        if ref in view.runs:
            command = CancelRun(run_id=ref, reason=reason)
            done: tuple[type[Event], ...] = (RunCancelled,)
        else:
            task = find_task(view, ref)
            command = CancelTask(run_id=task.run_id, task_id=task.task_id, reason=reason)
            done = (TaskCancelled, TaskSkipped)
        event = await _ask(conn, settings, command, done)
        return f"{type(event).__name__}: {getattr(event, 'reason', '') or 'done'}"


@app.command
def rollback(
    run: str, *, to: str | None = None, nats: str | None = None, config: Path | None = None
) -> int:
    """Move a finished run's branch back: to before a task merged, or to a log sequence.

    Without --to the branch goes back to the run's base commit.

    Examples:
        claudecluster rollback run-20261124-101500 --to api
        claudecluster rollback run-20261124-101500 --to 240
        claudecluster rollback run-20261124-101500

    Args:
        run: The run id.
        to: A task id of the run, or an event sequence number.
        nats: NATS URL (default: nats.url, else the embedded server of this directory).
        config: A claudecluster.yaml to read instead of the one in this directory.
    """
    settings = _settings(nats, config)
    if to is None:
        command = RollbackRun(run_id=run, to_sequence=0)
    elif to.isdigit():
        command = RollbackRun(run_id=run, to_sequence=int(to))
    else:
        command = RollbackRun(run_id=run, to_task=to)
    event: RunRolledBack = anyio.run(_rollback, settings, command)
    reverted = ", ".join(event.reverted_tasks) or "nothing"
    Console(highlight=False).print(
        f"branch claudecluster/{run} is back at {event.to_commit[:12]}; reverted: {reverted}",
        markup=False,
    )
    return EXIT_OK


async def _rollback(settings: Settings, command: RollbackRun) -> RunRolledBack:
    async with open_configured_cluster(settings, name="claudecluster-cli") as conn:
        view = replay(await read_all(conn.log))
        if command.run_id not in view.runs:
            raise UnknownEntityError("run", command.run_id)
        event = await _ask(conn, settings, command, (RunRolledBack,))
        assert isinstance(event, RunRolledBack)
        return event


async def _ask(
    conn: Connection, settings: Settings, command: Command, done: tuple[type[Event], ...]
) -> Event:
    """Publish ``command`` and wait for the driver's answer (starting one if embedded)."""
    start = await conn.log.last_seq() + 1
    command_id = f"cli-{type(command).__name__.lower()}-{datetime.now(UTC):%Y%m%d%H%M%S%f}"
    target_run = getattr(command, "run_id", None)
    target_task = getattr(command, "task_id", None)

    async def answer() -> Event:
        async with conn.log.open_reader(from_seq=start, follow=True) as events:
            async for stored in events:
                event = stored.envelope.payload
                if isinstance(event, CommandRejected) and event.command_id == command_id:
                    return event
                if not isinstance(event, done) or getattr(event, "run_id", None) != target_run:
                    continue
                if target_task is None or getattr(event, "task_id", None) == target_task:
                    return event
        raise DriverUnavailableError("the event log closed before the driver answered")

    async def publish() -> None:
        await publish_command(
            conn.client.jetstream(), command, command_id=command_id, now=datetime.now(UTC)
        )

    try:
        with anyio.fail_after(_ANSWER_TIMEOUT_S):
            if conn.embedded:
                async with open_local_services(conn, settings, workers=0, project_dir=Path.cwd()):
                    await publish()
                    got = await answer()
            else:
                await publish()
                got = await answer()
    except TimeoutError:
        raise DriverUnavailableError(
            f"no driver answered within {_ANSWER_TIMEOUT_S:.0f}s: start one with "
            f"'claudecluster driver --nats {conn.url}'"
        ) from None
    if isinstance(got, CommandRejected):
        raise CommandRefusedError(got.command_type, got.reason)
    return got
