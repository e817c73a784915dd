"""The event log on NATS JetStream: a thin adapter, all semantics are the server's.

* Deduplication: the envelope id is sent as ``Nats-Msg-Id``; within the stream's duplicate
  window the server stores an event once and acknowledges the copy as a duplicate.
* Optimistic concurrency: ``Nats-Expected-Last-Subject-Sequence`` together with
  ``Nats-Expected-Last-Subject-Sequence-Subject`` (the event's scope filter, a wildcard), so
  "no other event of this task since sequence N" is checked by the server atomically.
  A stale writer gets JetStream error 10071, raised here as ``ConcurrencyError``.
* Reading: an ordered push consumer (ephemeral, flow-controlled, heartbeating). nats-py
  recreates it from the last delivered sequence when heartbeats stop, which is how a
  following reader survives a server restart.
* Poison messages: a message on the event subjects that does not decode is published to
  ``cc.quarantine.evt`` with the reason (deduplicated per origin sequence) and skipped.
"""

from __future__ import annotations

import re
from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Final

import nats.errors
import nats.js.errors
from nats.aio.msg import Msg
from nats.js import JetStreamContext

from claudecluster.errors import ConcurrencyError, EventDecodeError, EventStoreError
from claudecluster.events.codec import decode_event, encode
from claudecluster.events.envelope import EventEnvelope, StoredEvent
from claudecluster.events.subjects import (
    ALL_EVENTS,
    QUARANTINE_PREFIX,
    event_subject,
    scope_filter,
)
from claudecluster.observability.logging import get_logger
from claudecluster.observability.redaction import Redactor
from claudecluster.transport.base import AppendResult, QuarantinedMessage
from claudecluster.transport.ordered import last_sequence, open_ordered
from claudecluster.transport.topology import EVENTS_STREAM, QUARANTINE_STREAM

__all__ = ["JetStreamEventLog"]

_WRONG_LAST_SEQUENCE: Final = 10071
_WRONG_LAST_RE: Final = re.compile(r"wrong last sequence: (\d+)")
_QUARANTINE_SUBJECT: Final = f"{QUARANTINE_PREFIX}.evt"

_log = get_logger(__name__)


class JetStreamEventLog:
    """An :class:`~claudecluster.transport.base.EventLog` on a JetStream stream.

    Args:
        js: a JetStream context of a connected client (the caller owns the connection).
        stream: the event stream, as the topology names it.
        quarantine_stream: where undecodable messages are recorded.
        redactor: secrets to strip from every event before it is written.
        timeout: seconds to wait for the server to acknowledge an append.
    """

    def __init__(
        self,
        js: JetStreamContext,
        *,
        stream: str = EVENTS_STREAM,
        quarantine_stream: str = QUARANTINE_STREAM,
        redactor: Redactor | None = None,
        timeout: float = 5.0,
    ) -> None:
        self._js = js
        self._stream = stream
        self._quarantine_stream = quarantine_stream
        self._redactor = redactor or Redactor()
        self._timeout = timeout

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
            EventStoreError: the server refused the event or did not answer in time.
        """
        event = envelope.payload
        subject = event_subject(event)
        headers = {
            "Nats-Msg-Id": envelope.id,
            "Cc-Type": str(type(event).__struct_config__.tag),
            "Cc-Schema-Version": str(envelope.schema_version),
        }
        scope = scope_filter(event)
        if expected_last is not None:
            headers["Nats-Expected-Last-Subject-Sequence"] = str(expected_last)
            headers["Nats-Expected-Last-Subject-Sequence-Subject"] = scope
        data = self._redactor.data(encode(envelope))
        try:
            ack = await self._js.publish(
                subject, data, timeout=self._timeout, stream=self._stream, headers=headers
            )
        except nats.js.errors.APIError as exc:
            if exc.err_code == _WRONG_LAST_SEQUENCE and expected_last is not None:
                # The server checks the expected sequence before deduplicating, so a retry
                # of an append whose acknowledgement was lost lands here: find it.
                existing = await self._find(scope, expected_last + 1, envelope.id)
                if existing is not None:
                    return AppendResult(seq=existing, duplicate=True)
                found = _WRONG_LAST_RE.search(exc.description or "")
                actual = int(found.group(1)) if found else None
                raise ConcurrencyError(scope, expected_last, actual) from None
            raise EventStoreError(f"the event store refused {subject}: {exc}") from exc
        except (nats.errors.Error, TimeoutError) as exc:
            raise EventStoreError(f"appending {subject} failed: {exc!r}") from exc
        return AppendResult(seq=ack.seq, duplicate=bool(ack.duplicate))

    async def _find(self, subjects: str, from_seq: int, event_id: str) -> int | None:
        """The sequence of the event with ``event_id`` at or after ``from_seq``, if stored."""
        async with self._ordered(self._stream, subjects, from_seq, False) as messages:
            async for msg in messages:
                if (msg.headers or {}).get("Nats-Msg-Id") == event_id:
                    return int(msg.metadata.sequence.stream)
        return None

    @asynccontextmanager
    async def open_reader(
        self, *, from_seq: int = 1, subjects: str = ALL_EVENTS, follow: bool = False
    ) -> AsyncIterator[AsyncIterator[StoredEvent]]:
        """Iterate stored events; see :class:`~claudecluster.transport.base.EventLog`.

        Raises:
            EventStoreError: the consumer could not be created.
        """
        iterator = self._iterate(max(from_seq, 1), subjects, follow)
        try:
            yield iterator
        finally:
            await iterator.aclose()

    async def _iterate(
        self, from_seq: int, subjects: str, follow: bool
    ) -> AsyncGenerator[StoredEvent]:
        async with self._ordered(self._stream, subjects, from_seq, follow) as messages:
            async for msg in messages:
                stored = await self._decode(msg)
                if stored is not None:
                    yield stored

    def _ordered(
        self, stream: str, subjects: str, from_seq: int, follow: bool
    ) -> AbstractAsyncContextManager[AsyncIterator[Msg]]:
        return open_ordered(self._js, stream, subjects, from_seq=from_seq, follow=follow)

    async def _decode(self, msg: Msg) -> StoredEvent | None:
        seq = msg.metadata.sequence.stream
        try:
            envelope = decode_event(msg.data)
        except EventDecodeError as exc:
            await self._quarantine(msg.subject, seq, str(exc), msg.data)
            return None
        return StoredEvent(seq=seq, subject=msg.subject, envelope=envelope)

    async def _quarantine(self, subject: str, seq: int, reason: str, data: bytes) -> None:
        headers = {
            "Nats-Msg-Id": f"quarantine-{self._stream}-{seq}",
            "Cc-Origin-Subject": subject,
            "Cc-Origin-Seq": str(seq),
            "Cc-Reason": reason,
        }
        _log.warning("event quarantined", subject=subject, seq=seq, reason=reason)
        try:
            await self._js.publish(
                _QUARANTINE_SUBJECT,
                data,
                timeout=self._timeout,
                stream=self._quarantine_stream,
                headers=headers,
            )
        except (nats.errors.Error, TimeoutError) as exc:
            # The reader must go on past a poison message even if the record of it is lost;
            # the message itself stays in the event log, so nothing is destroyed.
            _log.error("quarantine record not written", subject=subject, seq=seq, error=repr(exc))

    async def last_seq(self, subjects: str = ALL_EVENTS) -> int:
        """The last sequence matching ``subjects`` (0 if none).

        Raises:
            EventStoreError: the server could not be asked.
        """
        return await self._last(self._stream, subjects)

    async def _last(self, stream: str, subjects: str) -> int:
        return await last_sequence(self._js, stream, subjects)

    async def quarantined(self) -> list[QuarantinedMessage]:
        """Quarantine records, oldest first.

        Raises:
            EventStoreError: the quarantine stream could not be read.
        """
        records: list[QuarantinedMessage] = []
        async with self._ordered(self._quarantine_stream, _QUARANTINE_SUBJECT, 1, False) as msgs:
            async for msg in msgs:
                headers = msg.headers or {}
                try:
                    origin_seq = int(headers.get("Cc-Origin-Seq", "0"))
                except ValueError:
                    origin_seq = 0
                records.append(
                    QuarantinedMessage(
                        origin_subject=headers.get("Cc-Origin-Subject", ""),
                        origin_seq=origin_seq,
                        reason=headers.get("Cc-Reason", ""),
                        data=msg.data,
                    )
                )
        return records
