"""Publishing a command and waiting in the log for its answer (the driver's, or for a
drain the worker's).

For a short-lived client (``run --detach``, ``workers rm``) that keeps no view of its own;
:class:`~claudecluster.runtime.front_door.FrontDoor` answers the same way from the view
it already follows.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime

import anyio

from claudecluster.errors import CommandRefusedError, DriverUnavailableError
from claudecluster.events.envelope import StoredEvent
from claudecluster.events.model import Command, CommandRejected, Event
from claudecluster.transport.base import EventLog
from claudecluster.transport.commands import CommandBus

__all__ = ["publish_and_wait"]


async def publish_and_wait(
    log: EventLog,
    commands: CommandBus,
    command: Command,
    *,
    command_id: str,
    answered: Callable[[Event], bool],
    timeout_s: float,
    silence: str,
    correlation_id: str | None = None,
) -> StoredEvent:
    """Publish ``command``; the first event after it that ``answered`` accepts.

    Args:
        log: where the answer is recorded.
        commands: where the command goes.
        command: the command.
        command_id: its id (a refusal names it).
        answered: whether an event is the answer.
        timeout_s: how long to wait for it.
        silence: the message of the error raised when no answer came in time.
        correlation_id: the envelope's correlation id (default: the run, or the command id).

    Raises:
        CommandRefusedError: the driver refused the command (its reason is the message).
        DriverUnavailableError: nothing answered within ``timeout_s``; says ``silence``.
        EventStoreError: the command could not be published or the log read.
    """
    start = await log.last_seq() + 1
    await commands.publish(
        command, command_id=command_id, now=datetime.now(UTC), correlation_id=correlation_id
    )
    with anyio.move_on_after(timeout_s):
        async with log.open_reader(from_seq=start, follow=True) as events:
            async for stored in events:
                event = stored.envelope.payload
                if isinstance(event, CommandRejected) and event.command_id == command_id:
                    raise CommandRefusedError(event.command_type, event.reason)
                if answered(event):
                    return stored
    raise DriverUnavailableError(silence)
