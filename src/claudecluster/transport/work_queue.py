"""A pool's work queue on JetStream: one work-queue stream, one durable pull consumer per
pool shared by all of its workers, so load balances by itself.

A worker fetches one item per free slot, sends in-progress acknowledgements while it
works (so the server does not redeliver), and acknowledges when the attempt's result is
recorded. If the worker dies, the server redelivers the item to another worker once the
ack wait has passed. An item that does not decode is recorded on
``cc.quarantine.work`` with the reason and terminated, so it never blocks the queue.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

import nats.errors
import nats.js.errors
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig

from claudecluster.errors import EventDecodeError, EventStoreError
from claudecluster.events.subjects import QUARANTINE_PREFIX
from claudecluster.events.work import WorkItem, decode_work_item, encode_work_item, work_subject
from claudecluster.observability.logging import get_logger
from claudecluster.transport.topology import QUARANTINE_STREAM, WORK_STREAM

__all__ = ["Delivery", "WorkQueue", "consumer_name"]

_log = get_logger(__name__)
_QUARANTINE_SUBJECT: Final = f"{QUARANTINE_PREFIX}.work"


def consumer_name(pool: str) -> str:
    """The durable consumer every worker of ``pool`` shares."""
    return f"worker__{pool}"


@dataclass(frozen=True, slots=True)
class Delivery:
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


class WorkQueue:
    """Publishes and fetches work items of pools.

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

    async def fetch(self, pool: str, *, wait_s: float = 1.0) -> Delivery | None:
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
            return Delivery(item=item, delivered=msg.metadata.num_delivered, _msg=msg)
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
