"""A pool's work queue on JetStream: one work-queue stream, one durable pull consumer per
pool shared by all of its workers, so load balances by itself.

A worker fetches one item per free slot, sends in-progress acknowledgements while it
works (so the server does not redeliver), and acknowledges when the attempt's result is
recorded. If the worker dies, the server redelivers the item to another worker once the
ack wait has passed. An item that does not decode is recorded on
``cc.quarantine.work`` with the reason and terminated, so it never blocks the queue.

``WorkQueue`` and ``Delivery`` are the seam the driver and workers use; ``JetStreamWorkQueue``
is the real one and ``MemoryWorkQueue`` its in-memory twin (same contract, one test suite,
``tests/transport/test_work_queue_contract.py``), good enough to run the real shells on.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final, Protocol

import anyio
import nats.errors
import nats.js.errors
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig

from claudecluster.errors import EventDecodeError, EventStoreError
from claudecluster.events.subjects import QUARANTINE_PREFIX
from claudecluster.events.work import WorkItem, decode_work_item, encode_work_item, work_subject
from claudecluster.observability.logging import get_logger
from claudecluster.transport.streams import QUARANTINE_STREAM, WORK_STREAM

__all__ = [
    "Delivery",
    "JetStreamDelivery",
    "JetStreamWorkQueue",
    "MemoryWorkQueue",
    "QuarantinedWork",
    "WorkQueue",
    "consumer_name",
]

_log = get_logger(__name__)
_QUARANTINE_SUBJECT: Final = f"{QUARANTINE_PREFIX}.work"


def consumer_name(pool: str) -> str:
    """The durable consumer every worker of ``pool`` shares."""
    return f"worker__{pool}"


class Delivery(Protocol):
    """One delivered work item and the handle to acknowledge it.

    Attributes:
        item: the decoded work item.
        delivered: how many times the queue has delivered this message (1 = first).
    """

    @property
    def item(self) -> WorkItem:
        """The decoded work item."""
        ...

    @property
    def delivered(self) -> int:
        """How many times the queue has delivered this message (1 = first)."""
        ...

    async def in_progress(self) -> None:
        """The item is still being worked on: restart its ack wait."""
        ...

    async def ack(self) -> None:
        """The item is done with: its outcome is recorded, or it was obsolete."""
        ...

    async def nak(self, delay_s: float | None = None) -> None:
        """Give the item back, to be delivered again after ``delay_s`` seconds."""
        ...


class WorkQueue(Protocol):
    """Where the driver queues work items and a pool's workers fetch them.

    Delivery is at least once: an item neither acknowledged nor kept in progress within
    the ack wait is delivered again. Publishing is idempotent per ``WorkItem.message_id``.
    Every method raises ``EventStoreError`` on a store failure.
    """

    async def publish(self, item: WorkItem) -> bool:
        """Queue an item; False if the same attempt was already queued."""
        ...

    async def fetch(self, pool: str, *, wait_s: float = 1.0) -> Delivery | None:
        """The next item of ``pool``, or None if none arrived within ``wait_s``."""
        ...

    async def close(self) -> None:
        """Stop fetching (queued and pending items stay)."""
        ...


@dataclass(frozen=True, slots=True)
class JetStreamDelivery:
    """One delivered work item and the handle to acknowledge it.

    Attributes:
        item: the decoded work item.
        delivered: how many times the server has delivered this message (1 = first).
    """

    item: WorkItem
    delivered: int
    _msg: Msg

    async def in_progress(self) -> None:
        """Tell the server the item is still being worked on (resets its ack wait)."""
        await self._msg.in_progress()

    async def ack(self) -> None:
        """The item is done with: its outcome is recorded, or it was obsolete."""
        await self._msg.ack()

    async def nak(self, delay_s: float | None = None) -> None:
        """Give the item back, to be delivered again after ``delay_s`` seconds."""
        await self._msg.nak(delay=delay_s)


class JetStreamWorkQueue:
    """Publishes and fetches work items of pools on the ``CC_WORK`` stream.

    Args:
        js: a JetStream context with the topology applied.
        ack_wait_s: how long the server waits for an acknowledgement before redelivering.
    """

    def __init__(self, js: JetStreamContext, *, ack_wait_s: float = 30.0) -> None:
        self._js = js
        self._ack_wait_s = ack_wait_s
        self._subscriptions: dict[str, JetStreamContext.PullSubscription] = {}

    async def publish(self, item: WorkItem) -> bool:
        """Queue an item; returns False if the same attempt was already queued.

        Raises:
            EventStoreError: the server refused it.
        """
        try:
            ack = await self._js.publish(
                work_subject(item.pool),
                encode_work_item(item),
                stream=WORK_STREAM,
                headers={"Nats-Msg-Id": item.message_id},
            )
        except (nats.errors.Error, TimeoutError) as exc:
            raise EventStoreError(f"cannot queue {item.message_id}: {exc!r}") from exc
        return not ack.duplicate

    async def _subscription(self, pool: str) -> JetStreamContext.PullSubscription:
        found = self._subscriptions.get(pool)
        if found is None:
            config = ConsumerConfig(
                # Named, so the request's subject carries the name and the filter
                # ($JS.API.CONSUMER.CREATE.CC_WORK.<name>.<filter>): that is what lets the
                # server's permissions hold a worker to its own pool's queue.
                name=consumer_name(pool),
                durable_name=consumer_name(pool),
                filter_subject=work_subject(pool),
                ack_policy=AckPolicy.EXPLICIT,
                ack_wait=self._ack_wait_s,
                max_ack_pending=1000,
            )
            try:
                await self._js.add_consumer(WORK_STREAM, config)
                found = await self._js.pull_subscribe_bind(consumer_name(pool), stream=WORK_STREAM)
            except (nats.errors.Error, TimeoutError) as exc:
                raise EventStoreError(f"cannot consume pool {pool!r}: {exc!r}") from exc
            self._subscriptions[pool] = found
        return found

    async def fetch(self, pool: str, *, wait_s: float = 1.0) -> JetStreamDelivery | None:
        """The next item of ``pool``, or None if none arrived within ``wait_s``.

        Raises:
            EventStoreError: the server could not be asked.
        """
        subscription = await self._subscription(pool)
        try:
            messages = await subscription.fetch(1, timeout=wait_s)
        except (nats.errors.TimeoutError, TimeoutError):
            return None
        except nats.errors.Error as exc:
            raise EventStoreError(f"cannot fetch from pool {pool!r}: {exc!r}") from exc
        for msg in messages:
            try:
                item = decode_work_item(msg.data)
            except EventDecodeError as exc:
                await self._quarantine(msg, str(exc))
                continue
            return JetStreamDelivery(item=item, delivered=msg.metadata.num_delivered, _msg=msg)
        return None

    async def _quarantine(self, msg: Msg, reason: str) -> None:
        _log.warning("work item quarantined", subject=msg.subject, reason=reason)
        seq = msg.metadata.sequence.stream
        try:
            await self._js.publish(
                _QUARANTINE_SUBJECT,
                msg.data,
                stream=QUARANTINE_STREAM,
                headers={
                    "Nats-Msg-Id": f"quarantine-{WORK_STREAM}-{seq}",
                    "Cc-Origin-Subject": msg.subject,
                    "Cc-Origin-Seq": str(seq),
                    "Cc-Reason": reason,
                },
            )
        except (nats.errors.Error, TimeoutError) as exc:
            _log.error("quarantine record not written", seq=seq, error=repr(exc))
        await msg.term()  # never deliver it again: it cannot become valid

    async def close(self) -> None:
        """Stop fetching (the durable consumer and its pending items stay)."""
        for subscription in self._subscriptions.values():
            await subscription.unsubscribe()
        self._subscriptions.clear()


@dataclass(frozen=True, slots=True)
class QuarantinedWork:
    """A message of the in-memory queue that did not decode, as ``cc.quarantine.work`` keeps it.

    Attributes:
        subject: the work subject it was queued on.
        data: its bytes.
        reason: why it was refused.
    """

    subject: str
    data: bytes
    reason: str


@dataclass(slots=True)
class _Message:
    pool: str
    data: bytes
    seq: int
    delivered: int = 0
    due: float = 0.0  # when it may be delivered (again); pending until then
    done: bool = False


@dataclass(frozen=True, slots=True)
class _MemoryDelivery:
    item: WorkItem
    delivered: int
    _queue: MemoryWorkQueue
    _message: _Message = field(repr=False)

    async def in_progress(self) -> None:
        self._queue._restart_ack_wait(self._message)

    async def ack(self) -> None:
        self._queue._settle(self._message)

    async def nak(self, delay_s: float | None = None) -> None:
        self._queue._give_back(self._message, delay_s or 0.0)


class MemoryWorkQueue:
    """The work queue in memory: the same contract as :class:`JetStreamWorkQueue`.

    Messages are kept encoded and decoded on delivery, as on the server, so a message that
    does not decode is quarantined (see :attr:`quarantined`) rather than handed out.
    Time is ``clock`` (default: anyio's, which a virtual-clock event loop drives), so a
    simulator sees ack waits expire on its own time.

    Args:
        ack_wait_s: how long a delivered, unacknowledged item stays with its worker.
        clock: seconds, monotonic.
    """

    def __init__(
        self, *, ack_wait_s: float = 30.0, clock: Callable[[], float] | None = None
    ) -> None:
        self._ack_wait_s = ack_wait_s
        self._clock = clock or anyio.current_time
        self._count = 0
        # Each pool's messages not yet settled, in order: a fetch looks at those only (a
        # simulation's queue holds thousands of settled items and a few open ones).
        self._open: dict[str, list[_Message]] = {}
        self._ids: set[str] = set()
        self._changed = anyio.Event()
        self.quarantined: list[QuarantinedWork] = []

    def _signal(self) -> None:
        self._changed.set()
        self._changed = anyio.Event()

    async def publish(self, item: WorkItem) -> bool:
        """Queue an item; False if the same attempt was already queued."""
        return self.inject_raw(item.pool, encode_work_item(item), message_id=item.message_id)

    def inject_raw(self, pool: str, data: bytes, *, message_id: str | None = None) -> bool:
        """Queue raw bytes on ``pool``'s subject, as a foreign publisher could."""
        if message_id is not None:
            if message_id in self._ids:
                return False
            self._ids.add(message_id)
        self._count += 1
        self._open.setdefault(pool, []).append(_Message(pool=pool, data=data, seq=self._count))
        self._signal()
        return True

    def _next(self, pool: str, now: float) -> tuple[_Message | None, float]:
        """The first deliverable message of ``pool`` and when the next one becomes due."""
        next_due = math.inf
        for message in self._open.get(pool, ()):
            if message.due <= now:
                return message, now
            next_due = min(next_due, message.due)
        return None, next_due

    async def fetch(self, pool: str, *, wait_s: float = 1.0) -> Delivery | None:
        """The next item of ``pool``, or None if none arrived within ``wait_s``."""
        deadline = self._clock() + wait_s
        while True:
            now = self._clock()
            message, next_due = self._next(pool, now)
            if message is not None:
                message.delivered += 1
                message.due = now + self._ack_wait_s
                try:
                    item = decode_work_item(message.data)
                except EventDecodeError as exc:
                    _log.warning("work item quarantined", pool=pool, reason=str(exc))
                    self._settle(message)
                    self.quarantined.append(
                        QuarantinedWork(work_subject(pool), message.data, str(exc))
                    )
                    continue
                return _MemoryDelivery(item, message.delivered, self, message)
            if now >= deadline:
                return None
            changed = self._changed
            with anyio.move_on_after(min(deadline, next_due) - now):
                await changed.wait()

    def _restart_ack_wait(self, message: _Message) -> None:
        if not message.done:
            message.due = self._clock() + self._ack_wait_s

    def _settle(self, message: _Message) -> None:
        if not message.done:
            message.done = True
            self._open[message.pool].remove(message)

    def _give_back(self, message: _Message, delay_s: float) -> None:
        if not message.done:
            message.due = self._clock() + delay_s
            self._signal()

    async def close(self) -> None:
        """Nothing to release: queued and pending items stay, as on the server."""
