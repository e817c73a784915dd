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
    subject_problem,
)
from claudecluster.observability.logging import get_logger
from claudecluster.observability.redaction import Redactor
from claudecluster.transport.base import AppendResult, QuarantinedMessage
from claudecluster.transport.ordered import last_sequence, open_ordered
from claudecluster.transport.streams import EVENTS_STREAM, QUARANTINE_STREAM

__all__ = ["JetStreamEventLog"]

_WRONG_LAST_SEQUENCE: Final = 10071
_WRONG_LAST_RE: Final = re.compile(r"wrong last sequence: (\d+)")
_QUARANTINE_SUBJECT: Final = f"{QUARANTINE_PREFIX}.evt"
#: Events a bounded read of some subjects fetches one by one before it opens a consumer.
_PROBE: Final = 4

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
        """What every append strips; a signer signs what the log will store."""
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
        if not follow and subjects != ALL_EVENTS:
            # A bounded read of a few subjects (one task's history, what a worker reads
            # for every work item) is mostly a handful of events: fetched one by one by
            # sequence, it costs a request each, where a consumer costs its creation,
            # its deliveries and its removal. Past _PROBE events the consumer takes over.
            end = await self._last(self._stream, subjects)
            if end < from_seq:
                return
            for _ in range(_PROBE):
                found = await self._next(subjects, from_seq)
                if found is None:
                    return
                seq, stored = found
                if stored is not None:
                    yield stored
                if seq >= end:
                    return
                from_seq = seq + 1
        async with self._ordered(self._stream, subjects, from_seq, follow) as messages:
            async for msg in messages:
                stored = await self._decode(msg)
                if stored is not None:
                    yield stored

    async def _next(self, subjects: str, from_seq: int) -> tuple[int, StoredEvent | None] | None:
        """The first message matching ``subjects`` at or after ``from_seq`` (its sequence,
        and the event unless it was quarantined), or None if there is none."""
        try:
            raw = await self._js.get_msg(self._stream, seq=from_seq, subject=subjects, next=True)
        except nats.js.errors.NotFoundError:
            return None
        except (nats.errors.Error, TimeoutError) as exc:
            raise EventStoreError(f"cannot read {self._stream} ({subjects}): {exc!r}") from exc
        seq = int(raw.seq or 0)
        return seq, await self._decode_parts(raw.subject or "", seq, raw.data or b"")

    def _ordered(
        self, stream: str, subjects: str, from_seq: int, follow: bool
    ) -> AbstractAsyncContextManager[AsyncIterator[Msg]]:
        return open_ordered(self._js, stream, subjects, from_seq=from_seq, follow=follow)

    async def _decode(self, msg: Msg) -> StoredEvent | None:
        return await self._decode_parts(msg.subject, msg.metadata.sequence.stream, msg.data)

    async def _decode_parts(self, subject: str, seq: int, data: bytes) -> StoredEvent | None:
        try:
            envelope = decode_event(data)
        except EventDecodeError as exc:
            await self._quarantine(subject, seq, str(exc), data)
            return None
        misplaced = subject_problem(subject, envelope.payload)
        if misplaced is not None:  # permissions are per subject: hold the payload to it
            await self._quarantine(subject, seq, misplaced, data)
            return None
        return StoredEvent(seq=seq, subject=subject, envelope=envelope)

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

    async def quarantine_refused(self, stored: StoredEvent, reason: str) -> None:
        """Record a refused event; see :class:`~claudecluster.transport.base.EventLog`."""
        await self._quarantine(stored.subject, stored.seq, reason, encode(stored.envelope))

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
