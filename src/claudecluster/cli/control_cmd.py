"""Changing a run: ``cancel`` and ``rollback``.

Both publish a command and wait for the driver's answer in the log: the event that says
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

from claudecluster.cli.app import EXIT_OK, command_settings
from claudecluster.domain.branches import integration_branch
from claudecluster.events.model import RollbackRun, RunRolledBack
from claudecluster.runtime.connection import open_configured_cluster
from claudecluster.runtime.front_door import FrontDoor, open_front_door
from claudecluster.runtime.local_cluster import open_local_services
from claudecluster.settings import Settings

__all__ = ["cancel", "rollback"]

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
