"""Envelopes: the metadata that turns a bare event or command into a record on the log.

The envelope's ``id`` is unique per event and is also sent as ``Nats-Msg-Id``, so a
publisher that retries after a lost acknowledgement is deduplicated by the server.
``correlation_id`` ties together everything that serves one run (or one worker's life);
``causation_id`` names the event or command that directly led to this one, which makes
"why did this happen?" answerable by walking the log backwards.

Nothing here reads a clock or a random source: the caller passes ``event_id`` and ``now``.
"""

from __future__ import annotations

from datetime import datetime

import msgspec

from claudecluster.events.model import Command, DriverEvent, Event, RunEvent, WorkerEvent

__all__ = ["CommandEnvelope", "EventEnvelope", "StoredEvent", "wrap_command", "wrap_event"]


class EventEnvelope(msgspec.Struct, frozen=True, kw_only=True):
    """One event as it travels and is stored.

    ``signature`` is set on the events a worker records for an attempt it holds: an
    ed25519 signature by the key its claim named, over the envelope with an empty
    signature (see :mod:`claudecluster.events.signing`). Empty everywhere else.
    """

    id: str
    occurred_at: datetime
    schema_version: int
    correlation_id: str
    causation_id: str | None = None
    payload: Event
    signature: str = ""


class CommandEnvelope(msgspec.Struct, frozen=True, kw_only=True):
    """One command as it travels on ``cc.cmd.>``."""

    id: str
    occurred_at: datetime
    schema_version: int
    correlation_id: str
    causation_id: str | None = None
    payload: Command


class StoredEvent(msgspec.Struct, frozen=True, kw_only=True):
    """An event together with where the log put it.

    ``seq`` is the stream sequence: strictly increasing along the log, which is what makes
    projections idempotent (an event at or below the last applied sequence is a duplicate).
    """

    seq: int
    subject: str
    envelope: EventEnvelope


def _default_correlation(event: Event) -> str:
    if isinstance(event, RunEvent):
        return event.run_id
    if isinstance(event, WorkerEvent):
        return event.worker_id
    if isinstance(event, DriverEvent):
        return event.driver_id
    raise TypeError(f"no default correlation id for {type(event).__name__}")  # pragma: no cover


def wrap_event(
    event: Event,
    *,
    event_id: str,
    now: datetime,
    correlation_id: str | None = None,
    causation_id: str | None = None,
) -> EventEnvelope:
    """Put an event in an envelope, stamping its class's current schema version.

    Args:
        event: the fact to record.
        event_id: a unique id (also the publish deduplication key).
        now: when the fact happened, timezone-aware.
        correlation_id: defaults to the run id, or the worker id for worker events.
        causation_id: the id of the event or command that caused this one.

    Raises:
        ValueError: ``now`` has no timezone (a naive time is ambiguous on replay).
    """
    if now.tzinfo is None:
        raise ValueError("event time must be timezone-aware")
    return EventEnvelope(
        id=event_id,
        occurred_at=now,
        schema_version=type(event).schema_version,
        correlation_id=correlation_id or _default_correlation(event),
        causation_id=causation_id,
        payload=event,
    )


def wrap_command(
    command: Command,
    *,
    command_id: str,
    now: datetime,
    correlation_id: str,
    causation_id: str | None = None,
) -> CommandEnvelope:
    """Put a command in an envelope; see :func:`wrap_event` for the arguments.

    Raises:
        ValueError: ``now`` has no timezone.
    """
    if now.tzinfo is None:
        raise ValueError("command time must be timezone-aware")
    return CommandEnvelope(
        id=command_id,
        occurred_at=now,
        schema_version=type(command).schema_version,
        correlation_id=correlation_id,
        causation_id=causation_id,
        payload=command,
    )
