"""The fence: a driver's appends are stored only while it is the last to take the lease.

The driver lease (a KV entry with a TTL, :mod:`claudecluster.transport.leases`) says who
should drive; the fence makes sure nobody else's decisions reach the log, even a holder
that was paused (SIGSTOP, a long GC, a VM freeze) between checking its lease and writing.
A lease alone cannot do that: any check before a write leaves a gap a pause fits in. The
check must be the store's own, in the same atomic step as the write:

1. A new holder's first act is :class:`~claudecluster.events.model.DriverLeaseTaken` on
   ``cc.evt._driver.<id>``, appended on condition that the last sequence of
   ``cc.evt._driver.*.driver.lease_taken`` (the fence) is the one it read: two takers
   cannot both succeed. Its sequence is the holder's *fence sequence*. Only the driver
   role may publish there.
2. An append the driver core makes without a condition of its own carries
   ``Nats-Expected-Last-Subject-Sequence: <fence sequence>`` with the fence filter as
   ``Nats-Expected-Last-Subject-Sequence-Subject``: once another holder's
   DriverLeaseTaken is stored, the server refuses it. One round trip, no contention:
   only lease events live on the fence subjects.
3. An append the core makes conditional on its scope (a task's last sequence, say)
   needs that header for the scope, and JetStream checks one subject filter per
   message. It carries the stream-wide ``Nats-Expected-Last-Sequence: N`` as well, where
   N is a stream sequence at which the fence was known to be this holder's: either the
   sequence of this holder's last successful append (stored under the fence, so the fence
   was its own there), or a last sequence read *before* reading the fence and finding it
   unchanged. If the append succeeds, nothing was stored after N, so no other holder's
   DriverLeaseTaken either. When the server refuses it, this log tells the three causes
   apart by reading: the fence moved (lease lost), the scope moved (the core's own race:
   ConcurrencyError, or our earlier attempt whose answer was lost: a duplicate), or only
   other writers moved the stream (read again and retry).

A holder that finds the fence moved calls ``on_lost`` and raises ``LeaseLostError``
from then on, without asking the server again.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from typing import Final

import nats.errors
import nats.js.errors
from nats.js import JetStreamContext

from claudecluster.errors import ConcurrencyError, EventStoreError, LeaseLostError
from claudecluster.events.codec import encode
from claudecluster.events.envelope import EventEnvelope, StoredEvent
from claudecluster.events.model import DriverLeaseTaken
from claudecluster.events.subjects import ALL_EVENTS, DRIVER_FENCE, event_subject, scope_filter
from claudecluster.observability.logging import get_logger
from claudecluster.observability.redaction import Redactor
from claudecluster.transport.base import AppendResult, EventLog, QuarantinedMessage
from claudecluster.transport.ordered import last_sequence, open_ordered
from claudecluster.transport.streams import EVENTS_STREAM

__all__ = ["FencedEventLog", "take_fence"]

_WRONG_LAST_SEQUENCE: Final = 10071
#: Conditional appends tried in a row while only other writers move the stream on.
_MAX_TRIES: Final = 64
_log = get_logger(__name__)


def _headers(envelope: EventEnvelope) -> dict[str, str]:
    event = envelope.payload
    return {
        "Nats-Msg-Id": envelope.id,
        "Cc-Type": str(type(event).__struct_config__.tag),
        "Cc-Schema-Version": str(envelope.schema_version),
    }


async def take_fence(
    js: JetStreamContext,
    log: EventLog,
    envelope: EventEnvelope,
    *,
    stream: str = EVENTS_STREAM,
    ack_timeout_s: float = 5.0,
) -> int:
    """Append ``envelope`` (a DriverLeaseTaken) if the fence is still where it was read.

    Returns its sequence: the new holder's fence sequence.

    Raises:
        LeaseLostError: another holder fenced first.
        EventStoreError: the log could not be reached.
    """
    assert isinstance(envelope.payload, DriverLeaseTaken)
    before = await last_sequence(js, stream, DRIVER_FENCE)
    lease = envelope.payload
    headers = _headers(envelope) | {
        "Cc-Driver": lease.driver_id,
        "Cc-Driver-Epoch": str(lease.epoch),
        "Nats-Expected-Last-Subject-Sequence": str(before),
        "Nats-Expected-Last-Subject-Sequence-Subject": DRIVER_FENCE,
    }
    data = log.redactor.data(encode(envelope))
    subject = event_subject(envelope.payload)
    try:
        ack = await js.publish(subject, data, timeout=ack_timeout_s, stream=stream, headers=headers)
    except nats.js.errors.APIError as exc:
        if exc.err_code == _WRONG_LAST_SEQUENCE:
            raise LeaseLostError(f"another driver fenced the log first: {exc}") from None
        raise EventStoreError(f"the event store refused the fence: {exc}") from exc
    except (nats.errors.Error, TimeoutError) as exc:
        raise EventStoreError(f"appending the fence failed: {exc!r}") from exc
    return int(ack.seq)


class FencedEventLog:
    """An :class:`~claudecluster.transport.base.EventLog` whose appends are fenced.

    Reads, quarantine and the redactor are the inner log's.

    Args:
        inner: the JetStream event log (reads go to it).
        js: the JetStream context the appends are published with.
        fence_seq: this holder's DriverLeaseTaken sequence (see :func:`take_fence`).
        on_lost: called once, when an append finds the fence moved.
        driver_id: this driver's id, sent with every append (``Cc-Driver`` header).
        epoch: the lease epoch, sent with every append (``Cc-Driver-Epoch`` header), so
            the log says which holder stored each event.
        stream: the event stream.
        timeout: seconds to wait for the server to acknowledge an append.
    """

    def __init__(
        self,
        inner: EventLog,
        js: JetStreamContext,
        fence_seq: int,
        *,
        on_lost: Callable[[], None] = lambda: None,
        driver_id: str = "",
        epoch: int = 0,
        stream: str = EVENTS_STREAM,
        timeout: float = 5.0,
    ) -> None:
        self._inner = inner
        self._js = js
        self._fence = fence_seq
        self._on_lost = on_lost
        self._holder = {"Cc-Driver": driver_id, "Cc-Driver-Epoch": str(epoch)} if driver_id else {}
        self._stream = stream
        self._timeout = timeout
        #: a stream sequence at which the fence was ours (None: read it again)
        self._verified: int | None = fence_seq
        self._lost = False
        #: appends refused because the fence moved (for the logs and tests)
        self.refused = 0

    @property
    def redactor(self) -> Redactor:
        """The inner log's redactor."""
        return self._inner.redactor

    @property
    def fence_seq(self) -> int:
        """The sequence of this holder's DriverLeaseTaken."""
        return self._fence

    def _lose(self, why: str) -> LeaseLostError:
        self.refused += 1
        if not self._lost:
            self._lost = True
            _log.warning("the driver lease was lost: nothing more is recorded", reason=why)
            self._on_lost()
        return LeaseLostError(f"this driver lost the lease ({why}); the append was refused")

    async def append(
        self, envelope: EventEnvelope, *, expected_last: int | None = None
    ) -> AppendResult:
        """Append one event if this holder's fence is the last; see the module docstring.

        Raises:
            LeaseLostError: another driver took the lease since.
            ConcurrencyError: the scope's last sequence is not ``expected_last``.
            EventStoreError: the server refused the event or did not answer in time.
        """
        if self._lost:
            raise self._lose("an earlier append found the fence moved")
        subject = event_subject(envelope.payload)
        data = self.redactor.data(encode(envelope))
        base = _headers(envelope) | self._holder
        if expected_last is None:
            headers = base | {
                "Nats-Expected-Last-Subject-Sequence": str(self._fence),
                "Nats-Expected-Last-Subject-Sequence-Subject": DRIVER_FENCE,
            }
            try:
                seq, duplicate = await self._publish(subject, data, headers)
            except _WrongLastError:
                raise self._lose("another driver's DriverLeaseTaken is in the log") from None
            self._verified = None if duplicate else seq
            return AppendResult(seq=seq, duplicate=duplicate)
        scope = scope_filter(envelope.payload)
        for _ in range(_MAX_TRIES):
            verified = self._verified
            if verified is None:
                verified = await self._stream_last()
                await self._check_fence()
            headers = base | {
                "Nats-Expected-Last-Subject-Sequence": str(expected_last),
                "Nats-Expected-Last-Subject-Sequence-Subject": scope,
                "Nats-Expected-Last-Sequence": str(verified),
            }
            try:
                seq, duplicate = await self._publish(subject, data, headers)
            except _WrongLastError:
                self._verified = None
                await self._check_fence()
                existing = await self._find(scope, expected_last + 1, envelope.id)
                if existing is not None:
                    return AppendResult(seq=existing, duplicate=True)
                actual = await last_sequence(self._js, self._stream, scope)
                if actual != expected_last:
                    raise ConcurrencyError(scope, expected_last, actual) from None
                continue  # only other writers moved the stream: read it again, retry
            self._verified = None if duplicate else seq
            return AppendResult(seq=seq, duplicate=duplicate)
        raise EventStoreError(
            f"appending {subject}: the log moved on {_MAX_TRIES} times in a row; retried later"
        )

    async def _stream_last(self) -> int:
        """The stream's last sequence, from its state (no message is fetched)."""
        try:
            info = await self._js.stream_info(self._stream)
        except (nats.errors.Error, TimeoutError) as exc:
            raise EventStoreError(f"cannot read {self._stream}: {exc!r}") from exc
        return int(info.state.last_seq)

    async def _check_fence(self) -> None:
        fence = await last_sequence(self._js, self._stream, DRIVER_FENCE)
        if fence != self._fence:
            raise self._lose(f"the fence is at {fence}, this holder's at {self._fence}")

    async def _publish(
        self, subject: str, data: bytes, headers: dict[str, str]
    ) -> tuple[int, bool]:
        try:
            ack = await self._js.publish(
                subject, data, timeout=self._timeout, stream=self._stream, headers=headers
            )
        except nats.js.errors.APIError as exc:
            if exc.err_code == _WRONG_LAST_SEQUENCE:
                raise _WrongLastError from None
            raise EventStoreError(f"the event store refused {subject}: {exc}") from exc
        except (nats.errors.Error, TimeoutError) as exc:
            raise EventStoreError(f"appending {subject} failed: {exc!r}") from exc
        return int(ack.seq), bool(ack.duplicate)

    async def _find(self, subjects: str, from_seq: int, event_id: str) -> int | None:
        async with open_ordered(self._js, self._stream, subjects, from_seq=from_seq) as messages:
            async for msg in messages:
                if (msg.headers or {}).get("Nats-Msg-Id") == event_id:
                    return int(msg.metadata.sequence.stream)
        return None

    def open_reader(
        self, *, from_seq: int = 1, subjects: str = ALL_EVENTS, follow: bool = False
    ) -> AbstractAsyncContextManager[AsyncIterator[StoredEvent]]:
        """The inner log's reader."""
        return self._inner.open_reader(from_seq=from_seq, subjects=subjects, follow=follow)

    async def last_seq(self, subjects: str = ALL_EVENTS) -> int:
        """The inner log's last sequence."""
        return await self._inner.last_seq(subjects)

    async def quarantined(self) -> list[QuarantinedMessage]:
        """The inner log's quarantine records."""
        return await self._inner.quarantined()

    async def quarantine_refused(self, stored: StoredEvent, reason: str) -> None:
        """Recorded by the inner log (the quarantine stream is not fenced)."""
        await self._inner.quarantine_refused(stored, reason)


class _WrongLastError(Exception):
    """The server refused an append with 10071 (some expected sequence did not hold)."""
