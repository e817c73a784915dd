"""An in-memory event log with the same contract as the JetStream one.

For unit tests and simulations: no server, deterministic, instant. It keeps messages as
encoded bytes, exactly as the real log does, so decoding, quarantine and redaction behave
the same. Unlike JetStream, its deduplication window never closes.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import asynccontextmanager

import anyio

from claudecluster.errors import ConcurrencyError, EventDecodeError
from claudecluster.events.codec import decode_event, encode
from claudecluster.events.envelope import EventEnvelope, StoredEvent
from claudecluster.events.subjects import (
    ALL_EVENTS,
    event_subject,
    scope_filter,
    subject_matches,
)
from claudecluster.observability.redaction import Redactor
from claudecluster.transport.base import AppendResult, QuarantinedMessage

__all__ = ["MemoryEventLog"]


class MemoryEventLog:
    """An :class:`~claudecluster.transport.base.EventLog` held in this process's memory."""

    def __init__(self, *, redactor: Redactor | None = None) -> None:
        self._redactor = redactor or Redactor()
        self._messages: list[tuple[str, bytes]] = []
        self._by_id: dict[str, int] = {}
        self._quarantine: dict[int, QuarantinedMessage] = {}
        self._appended = anyio.Event()

    @property
    def redactor(self) -> Redactor:
        """The secrets stripped from every event before it is stored."""
        return self._redactor

    async def append(
        self, envelope: EventEnvelope, *, expected_last: int | None = None
    ) -> AppendResult:
        """Append one event; see :class:`~claudecluster.transport.base.EventLog`.

        Raises:
            ConcurrencyError: the scope's last sequence is not ``expected_last``.
        """
        known = self._by_id.get(envelope.id)
        if known is not None:
            return AppendResult(seq=known, duplicate=True)
        subject = event_subject(envelope.payload)
        if expected_last is not None:
            scope = scope_filter(envelope.payload)
            actual = await self.last_seq(scope)
            if actual != expected_last:
                raise ConcurrencyError(scope, expected_last, actual)
        seq = self.inject_raw(subject, self._redactor.data(encode(envelope)))
        self._by_id[envelope.id] = seq
        return AppendResult(seq=seq)

    def inject_raw(self, subject: str, data: bytes) -> int:
        """Store raw bytes as a foreign publisher could; returns the sequence.

        This is how tests put an undecodable message on the log.
        """
        self._messages.append((subject, data))
        self._appended.set()
        self._appended = anyio.Event()
        return len(self._messages)

    @asynccontextmanager
    async def open_reader(
        self, *, from_seq: int = 1, subjects: str = ALL_EVENTS, follow: bool = False
    ) -> AsyncIterator[AsyncIterator[StoredEvent]]:
        """Iterate stored events; see :class:`~claudecluster.transport.base.EventLog`."""
        iterator = self._iterate(max(from_seq, 1), subjects, follow)
        try:
            yield iterator
        finally:
            await iterator.aclose()

    async def _iterate(
        self, from_seq: int, subjects: str, follow: bool
    ) -> AsyncGenerator[StoredEvent]:
        seq = from_seq
        end = len(self._messages)
        while True:
            while seq <= (len(self._messages) if follow else end):
                subject, data = self._messages[seq - 1]
                if subject_matches(subjects, subject):
                    stored = self._decode(seq, subject, data)
                    if stored is not None:
                        yield stored
                seq += 1
            if not follow:
                return
            await self._appended.wait()

    def _decode(self, seq: int, subject: str, data: bytes) -> StoredEvent | None:
        try:
            envelope = decode_event(data)
        except EventDecodeError as exc:
            self._quarantine.setdefault(
                seq,
                QuarantinedMessage(
                    origin_subject=subject, origin_seq=seq, reason=str(exc), data=data
                ),
            )
            return None
        return StoredEvent(seq=seq, subject=subject, envelope=envelope)

    async def last_seq(self, subjects: str = ALL_EVENTS) -> int:
        """The last sequence matching ``subjects`` (0 if none)."""
        for index in range(len(self._messages) - 1, -1, -1):
            if subject_matches(subjects, self._messages[index][0]):
                return index + 1
        return 0

    async def quarantined(self) -> list[QuarantinedMessage]:
        """Quarantine records, oldest first."""
        return [self._quarantine[seq] for seq in sorted(self._quarantine)]
