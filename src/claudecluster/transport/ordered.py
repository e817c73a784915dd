"""Reading a stream in order: the one way every adapter here reads JetStream.

An ordered push consumer is ephemeral, flow-controlled and heartbeating; nats-py recreates
it from the last delivered sequence when heartbeats stop, which is how a following reader
survives a server restart. A bounded read first asks for the last sequence matching the
filter and stops there, so it never waits for messages that are not coming.

Messages reach the reader through a callback that fills a bounded buffer, not through
nats-py's message iterator: that iterator starts an asyncio task and an ``asyncio.wait``
for every message (three event-loop turns per message), which capped a replay at about
23,000 events/s. The callback hands over every message nats-py has already parsed without
a turn of the loop, and the reader takes them without one while the buffer is not empty;
a full buffer makes the callback wait, which leaves the rest in nats-py's pending queue
and the server's flow control, as before.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Final

import anyio
import nats.errors
import nats.js.errors
from anyio.streams.memory import MemoryObjectReceiveStream
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import ConsumerConfig, DeliverPolicy

from claudecluster.observability.logging import get_logger
from claudecluster.transport.failures import store_failure

__all__ = ["last_sequence", "open_ordered"]

_HEARTBEAT_S: Final = 1.0
_RETRY_FIRST_S: Final = 0.1
_RETRY_MAX_S: Final = 2.0
#: Messages handed over but not yet read; enough that the reader and nats-py take turns
#: once per batch rather than once per message.
_BUFFER: Final = 1024
_log = get_logger(__name__)


async def last_sequence(js: JetStreamContext, stream: str, subjects: str) -> int:
    """The sequence of the last message on ``stream`` matching ``subjects`` (0 if none).

    Raises:
        EventStoreError: the server could not be asked.
    """
    try:
        msg = await js.get_last_msg(stream, subjects)
    except nats.js.errors.NotFoundError:
        return 0
    except (nats.errors.Error, TimeoutError) as exc:
        raise store_failure(f"cannot read {stream}: {exc!r}", exc) from exc
    return int(msg.seq or 0)


@asynccontextmanager
async def open_ordered(
    js: JetStreamContext,
    stream: str,
    subjects: str,
    *,
    from_seq: int = 1,
    follow: bool = False,
    buffer: int = _BUFFER,
) -> AsyncIterator[AsyncIterator[Msg]]:
    """Messages of ``stream`` matching ``subjects`` from ``from_seq``, in order.

    Without ``follow`` the iteration ends at the last matching message stored when it
    started; with it, it goes on until the context exits.

    Args:
        js: the JetStream context to read with.
        stream: the stream's name.
        subjects: the subject filter.
        from_seq: the first stream sequence to read.
        follow: go on past the last message stored when the read started.
        buffer: how many delivered messages may wait for the reader before delivery
            waits for it.

    Raises:
        EventStoreError: the consumer could not be created.
    """
    end = None if follow else await last_sequence(js, stream, subjects)
    if end is not None and end < from_seq:
        yield _nothing()
        return
    send, receive = anyio.create_memory_object_stream[Msg](buffer)

    async def hand_over(msg: Msg) -> None:
        try:
            send.send_nowait(msg)
        except anyio.WouldBlock:
            await send.send(msg)

    with send, receive:
        backoff = _RETRY_FIRST_S
        while True:
            try:
                sub = await js.subscribe(
                    subjects,
                    stream=stream,
                    cb=hand_over,
                    ordered_consumer=True,
                    idle_heartbeat=_HEARTBEAT_S,
                    deliver_policy=DeliverPolicy.BY_START_SEQUENCE,
                    config=ConsumerConfig(opt_start_seq=max(from_seq, 1)),
                )
                break
            except (nats.errors.Error, TimeoutError) as exc:
                if not follow:
                    problem = f"cannot read {stream} ({subjects}): {exc!r}"
                    raise store_failure(problem, exc) from exc
                # A following reader outlives a server restart, including one that happens
                # before its consumer exists: keep trying until the server is back.
                _log.warning("reader waiting for the server", stream=stream, error=repr(exc))
                await anyio.sleep(backoff)
                backoff = min(backoff * 2, _RETRY_MAX_S)
        try:
            yield _messages(receive, end)
        finally:
            # Unsubscribing ends nats-py's delivery task, and with it a hand-over waiting
            # for room, before the buffer closes.
            await sub.unsubscribe()


async def _messages(buffer: MemoryObjectReceiveStream[Msg], end: int | None) -> AsyncIterator[Msg]:
    while True:
        try:
            msg = buffer.receive_nowait()
        except anyio.WouldBlock:
            msg = await buffer.receive()
        yield msg
        if end is not None and msg.metadata.sequence.stream >= end:
            return


async def _nothing() -> AsyncIterator[Msg]:
    return
    yield  # pragma: no cover - makes this an (empty) async generator
