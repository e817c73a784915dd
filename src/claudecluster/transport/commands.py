"""Publishing commands: the one way the CLI, the gateway, the MCP server and the driver
send a request to the cluster.

A command goes to the CC_COMMANDS stream (kept for audit and replay, and read by the
driver's durable consumer) and, since JetStream subjects are plain NATS subjects, also to
the workers' live subscriptions. The command id is the publish deduplication key, so a
retried publish is stored once.
"""

from __future__ import annotations

from datetime import datetime

import nats.errors
from nats.js import JetStreamContext

from claudecluster.errors import EventStoreError
from claudecluster.events.codec import encode
from claudecluster.events.envelope import wrap_command
from claudecluster.events.model import Command
from claudecluster.events.subjects import command_subject

__all__ = ["publish_command"]


async def publish_command(
    js: JetStreamContext,
    command: Command,
    *,
    command_id: str,
    now: datetime,
    correlation_id: str | None = None,
) -> int:
    """Publish ``command``; returns its sequence in the commands stream.

    Raises:
        EventStoreError: the stream did not acknowledge the command.
    """
    envelope = wrap_command(
        command,
        command_id=command_id,
        now=now,
        correlation_id=correlation_id or str(getattr(command, "run_id", "") or command_id),
    )
    try:
        ack = await js.publish(
            command_subject(command), encode(envelope), headers={"Nats-Msg-Id": command_id}
        )
    except (nats.errors.Error, TimeoutError) as exc:
        raise EventStoreError(f"cannot publish command {command_id}: {exc!r}") from exc
    return int(ack.seq)
