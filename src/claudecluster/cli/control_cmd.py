"""Changing a run: ``cancel``, ``rollback`` and ``retry``.

Each publishes a command and wait for the driver's answer in the log: the event that says
it was done, or CommandRejected with the reason (a one-line error, exit 2). On the
embedded server no driver runs between commands, so one is started in this process for
as long as the answer takes.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Final

import anyio
from rich.console import Console

from claudecluster.cli.app import EXIT_FAILED, EXIT_OK, command_settings
from claudecluster.cli.follow import RunEnd, renderer_for, watch_run
from claudecluster.domain.branches import integration_branch
from claudecluster.errors import ConfigError
from claudecluster.events.model import RollbackRun, RunCompleted, RunRetried, RunRolledBack
from claudecluster.runtime.connection import open_configured_cluster
from claudecluster.runtime.front_door import FrontDoor, open_front_door
from claudecluster.runtime.local_cluster import open_local_services
from claudecluster.settings import Settings

__all__ = ["cancel", "retry", "rollback"]

_ANSWER_TIMEOUT_S: Final = 30.0


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
    settings = command_settings(nats, config)
    message: str = anyio.run(_cancel, settings, ref, reason)
    Console(highlight=False).print(message, markup=False)
    return EXIT_OK


async def _cancel(settings: Settings, ref: str, reason: str) -> str:
    async with _front_door(settings) as door:
        event = await door.cancel(ref, reason=reason)
        return f"{type(event).__name__}: {getattr(event, 'reason', '') or 'done'}"


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
    settings = command_settings(nats, config)
    if to is None:
        command = RollbackRun(run_id=run, to_sequence=0)
    elif to.isdigit():
        command = RollbackRun(run_id=run, to_sequence=int(to))
    else:
        command = RollbackRun(run_id=run, to_task=to)
    event: RunRolledBack = anyio.run(_rollback, settings, command)
    reverted = ", ".join(event.reverted_tasks) or "nothing"
    Console(highlight=False).print(
        f"branch {integration_branch(run)} is back at {event.to_commit[:12]}; reverted: {reverted}",
        markup=False,
    )
    return EXIT_OK


async def _rollback(settings: Settings, command: RollbackRun) -> RunRolledBack:
    async with _front_door(settings) as door:
        return await door.rollback(
            command.run_id, to_task=command.to_task, to_sequence=command.to_sequence
        )


def retry(
    run: str,
    *tasks: str,
    workers: int = 3,
    nats: str | None = None,
    config: Path | None = None,
) -> int:
    """Run an ended run's failed, skipped and cancelled tasks again, or only the named ones.

    The tasks start from the run's integration branch as it is now (commits made on it
    since the run ended included); their dependents wait for them as before, and the run
    is running again until it ends anew. Attempt numbers go on, and so does their count
    against the policy's max_attempts: each retried task runs once more, and is retried
    automatically after that only if it has attempts left. On the embedded cluster this
    command starts local workers and follows the run to its end (exit 1 if it fails);
    with --nats it returns once the driver accepted the retry.

    Examples:
        claudecluster retry run-20261124-101500
        claudecluster retry run-20261124-101500 api tests

    Args:
        run: The run id.
        tasks: Task ids of the run to retry (default: every task not merged).
        workers: Local workers to start (embedded cluster only).
        nats: NATS URL (default: nats.url, else the embedded server of this directory).
        config: A claudecluster.yaml to read instead of the one in this directory.
    """
    if workers < 1:
        raise ConfigError("workers", "flag --workers", "must be at least 1")
    settings = command_settings(nats, config)
    console = Console(highlight=False)
    end: RunEnd | None = anyio.run(_retry, settings, run, tuple(tasks), workers, console)
    if end is None:
        return EXIT_OK
    from claudecluster.cli.run_cmd import print_summary

    print_summary(console, end)
    return EXIT_OK if isinstance(end.event, RunCompleted) else EXIT_FAILED


async def _retry(
    settings: Settings, run: str, tasks: tuple[str, ...], workers: int, console: Console
) -> RunEnd | None:
    """Ask for the retry; on the embedded cluster, run it with local workers to its end."""
    async with (
        open_configured_cluster(settings, name="claudecluster-retry") as conn,
        open_front_door(
            conn, answer_timeout_s=_ANSWER_TIMEOUT_S, max_tasks=settings.driver.max_tasks
        ) as door,
    ):
        if not conn.embedded:
            _print_retried(console, await door.retry(run, tasks))
            return None
        async with open_local_services(conn, settings, workers=workers, project_dir=Path.cwd()):
            start = await conn.log.last_seq() + 1
            _print_retried(console, await door.retry(run, tasks))
            renderer = renderer_for(console, run, json=False)
            return await watch_run(conn, run, renderer, from_seq=start)


def _print_retried(console: Console, event: RunRetried) -> None:
    retried = ", ".join(event.task_ids) or "its pending tasks"
    console.print(
        f"run {event.run_id} retries {retried} from {event.head_commit[:12]}", markup=False
    )


@asynccontextmanager
async def _front_door(settings: Settings) -> AsyncIterator[FrontDoor]:
    """A front door on the configured cluster, with a driver beside it if embedded.

    On the embedded server no driver runs between commands, so one runs in this process
    for as long as the answer takes.
    """
    async with (
        open_configured_cluster(settings, name="claudecluster-cli") as conn,
        open_front_door(
            conn, answer_timeout_s=_ANSWER_TIMEOUT_S, max_tasks=settings.driver.max_tasks
        ) as door,
    ):
        if not conn.embedded:
            yield door
            return
        async with open_local_services(conn, settings, workers=0, project_dir=Path.cwd()):
            yield door
