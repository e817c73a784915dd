"""The event log interface every actor programs against.

Two implementations pass the same contract tests (tests/transport/test_event_log_contract.py):
:class:`~claudecluster.transport.memory.MemoryEventLog` for unit tests and simulations, and
:class:`~claudecluster.transport.jetstream.JetStreamEventLog` for everything real.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager
from typing import Protocol

import msgspec

from claudecluster.events.envelope import EventEnvelope, StoredEvent
from claudecluster.events.subjects import ALL_EVENTS
from claudecluster.observability.redaction import Redactor

__all__ = ["AppendResult", "EventLog", "QuarantinedMessage", "read_all"]


class AppendResult(msgspec.Struct, frozen=True, kw_only=True):
    """Where an append landed.

    Attributes:
        seq: the stream sequence of the event (of the original, for a duplicate).
        duplicate: the store already held an event with this id; nothing new was written.
    """

    seq: int
    duplicate: bool = False


class QuarantinedMessage(msgspec.Struct, frozen=True, kw_only=True):
    """A message found on the event subjects that could not be decoded.

    It stays in the event log (which denies deletes); this record, on its own subject,
    says where it is and why it was skipped, so an operator can look at it.
    """

    origin_subject: str
    origin_seq: int
    reason: str
    data: bytes


class EventLog(Protocol):
    """The durable, ordered, append-only log of every event.

    Semantics shared by all implementations:

    * ``append`` stores an event once per envelope id: appending the same envelope again
      returns the original sequence with ``duplicate=True``.
    * ``expected_last`` makes an append conditional on the last sequence of the event's
      scope (its task, its run's run-level events, or its worker; see
      :func:`~claudecluster.events.subjects.scope_filter`); 0 means "no event yet".
    * Readers see events in sequence order. An undecodable message is quarantined with the
      reason and skipped; it never stops a reader.
    """

    @property
    def redactor(self) -> Redactor:
        """The secrets this log strips from every event it stores; an actor strips the same
        ones from everything else it stores (session transcripts)."""
        ...

    async def append(
        self, envelope: EventEnvelope, *, expected_last: int | None = None
    ) -> AppendResult:
        """Append one event.

        Raises:
            ConcurrencyError: ``expected_last`` was given and the scope has moved on.
            EventStoreError: the store refused the event or could not be reached in time.
        """
        ...

    def open_reader(
        self, *, from_seq: int = 1, subjects: str = ALL_EVENTS, follow: bool = False
    ) -> AbstractAsyncContextManager[AsyncIterator[StoredEvent]]:
        """Iterate stored events matching ``subjects`` from ``from_seq`` on.

        With ``follow=False`` the iteration ends at the last event stored when it started;
        with ``follow=True`` it goes on with new events until the context exits, and
        survives a restart of the server behind it.

        Raises:
            EventStoreError: the store could not be reached.
        """
        ...

    async def last_seq(self, subjects: str = ALL_EVENTS) -> int:
        """The sequence of the last event matching ``subjects``, or 0 if there is none.

        Raises:
            EventStoreError: the store could not be reached.
        """
        ...

    async def quarantined(self) -> list[QuarantinedMessage]:
        """Every quarantine record, oldest first.

        Raises:
            EventStoreError: the store could not be reached.
        """
        ...

    async def quarantine_refused(self, stored: StoredEvent, reason: str) -> None:
        """Record that a stored event was refused (a forged result, say), with the reason.

        The event stays in the log; the record says why readers skip it. Recording the
        same sequence twice writes one record. Never raises: a lost record is logged.
        """
        ...


async def read_all(
    log: EventLog, *, from_seq: int = 1, subjects: str = ALL_EVENTS
) -> list[StoredEvent]:
    """Every stored event matching ``subjects`` from ``from_seq`` to the current end.

    Raises:
        EventStoreError: the store could not be reached.
    """
    async with log.open_reader(from_seq=from_seq, subjects=subjects) as events:
        return [event async for event in events]
