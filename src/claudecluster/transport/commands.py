"""Publishing commands: the one way the CLI, the gateway, the MCP server and the driver
send a request to the cluster.

A command goes to the CC_COMMANDS stream (kept for audit and replay, and read by the
driver's durable consumer) and, since JetStream subjects are plain NATS subjects, also to
the workers' live subscriptions. The command id is the publish deduplication key, so a
retried publish is stored once.

The driver reads the stream through its inbox (:class:`CommandInbox`): a command is
acknowledged only once its outcome is recorded, given back (nak) when carrying it out
failed, and delivered again when its ack wait passes unacknowledged (a driver died, or a
standby that does not hold the lease left it); one that does not decode, or that the core
fails on, is terminated and quarantined. ``CommandBus`` and ``CommandInbox`` are the seams;
the ``JetStream*`` classes the real ones and :class:`MemoryCommands` the in-memory twin of
both (one contract suite, ``tests/transport/test_commands_contract.py``).
"""

from __future__ import annotations

import math
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Sequence
from contextlib import AbstractAsyncContextManager, aclosing, asynccontextmanager
from dataclasses import dataclass, field
from datetime import datetime
from typing import Final, Protocol

import anyio
import nats.errors
from anyio.streams.memory import MemoryObjectSendStream
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from claudecluster.errors import EventDecodeError, EventStoreError
from claudecluster.events.codec import decode_command, encode
from claudecluster.events.envelope import CommandEnvelope, wrap_command
from claudecluster.events.model import Command
from claudecluster.events.subjects import ALL_COMMANDS, command_subject, subject_matches
from claudecluster.observability.logging import get_logger
from claudecluster.transport.quarantine import quarantine
from claudecluster.transport.streams import COMMANDS_STREAM

__all__ = [
    "DRIVER_CONSUMER",
    "CommandBus",
    "CommandFeed",
    "CommandInbox",
    "InboundCommand",
    "JetStreamCommandBus",
    "JetStreamCommandFeed",
    "JetStreamCommandInbox",
    "MemoryCommands",
    "QuarantinedCommand",
    "publish_command",
]

_log = get_logger(__name__)

#: Commands a feed listener may have waiting before more are dropped (a worker acts on
#: each at once; only a flood of cancels could fill it).
FEED_BUFFER: Final = 1024

#: The durable consumer every driver (the active one and its standbys) shares.
DRIVER_CONSUMER: Final = "driver"


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


class CommandBus(Protocol):
    """Where commands are sent. ``publish`` raises ``EventStoreError`` on a store failure."""

    async def publish(
        self,
        command: Command,
        *,
        command_id: str,
        now: datetime,
        correlation_id: str | None = None,
    ) -> int:
        """Publish ``command`` (once per ``command_id``); returns its sequence."""
        ...


class InboundCommand(Protocol):
    """One command delivered to the driver, and the handle to settle it.

    Settling never raises for a lost connection: an ack or nak that does not arrive
    leaves the command to come back after its ack wait, which the driver recognises
    (the outcome's causation id is in the log).
    """

    @property
    def envelope(self) -> CommandEnvelope:
        """The decoded command."""
        ...

    @property
    def delivered(self) -> int:
        """How many times it has been delivered (1 = first)."""
        ...

    async def ack(self) -> None:
        """Its outcome is recorded: never deliver it again."""
        ...

    async def nak(self, delay_s: float | None = None) -> None:
        """Carrying it out failed: deliver it again after ``delay_s`` seconds."""
        ...

    async def term(self, reason: str) -> None:
        """It can never be carried out: quarantine it with ``reason``, never redeliver."""
        ...


class CommandInbox(Protocol):
    """The driver's side of the command stream (one durable consumer all drivers share)."""

    async def fetch(self, batch: int, *, wait_s: float) -> list[InboundCommand]:
        """Up to ``batch`` commands, oldest first; [] if none came within ``wait_s``.

        A command that does not decode is quarantined and terminated, never handed out.

        Raises:
            EventStoreError: the store could not be asked.
        """
        ...


class CommandFeed(Protocol):
    """Commands as they are published, for workers (cancel an attempt, drain).

    Live and at most once: a listener hears what is published while it listens, nothing
    from before; one that does not decode is skipped (logged), never handed out.
    """

    def listen(
        self, subjects: Sequence[str] = (ALL_COMMANDS,)
    ) -> AbstractAsyncContextManager[AsyncIterator[CommandEnvelope]]:
        """Listen until the context is left; the iterator yields commands as they come.

        Only commands on ``subjects`` (NATS wildcards allowed) reach the listener, nor are
        others sent to it: a worker asks for the few it acts on, not for every run's
        plan (a 10,000-task submission is megabytes, and every worker would decode it).
        """
        ...


class JetStreamCommandBus:
    """Publishes commands on the ``CC_COMMANDS`` stream (see :func:`publish_command`)."""

    def __init__(self, js: JetStreamContext) -> None:
        self._js = js

    async def publish(
        self,
        command: Command,
        *,
        command_id: str,
        now: datetime,
        correlation_id: str | None = None,
    ) -> int:
        """Publish ``command``; returns its stream sequence.

        Raises:
            EventStoreError: the stream did not acknowledge it.
        """
        return await publish_command(
            self._js, command, command_id=command_id, now=now, correlation_id=correlation_id
        )


class JetStreamCommandFeed:
    """Commands off the plain NATS subjects of ``CC_COMMANDS`` (a core subscription).

    Args:
        client: a connected client.
    """

    def __init__(self, client: Client) -> None:
        self._client = client

    @asynccontextmanager
    async def listen(
        self, subjects: Sequence[str] = (ALL_COMMANDS,)
    ) -> AsyncIterator[AsyncIterator[CommandEnvelope]]:
        """One core subscription per subject, merged; unsubscribed on exit.

        What arrives while the listener is busy waits in a buffer of
        :data:`FEED_BUFFER` messages; past that a command is dropped with a warning, as
        a slow core subscriber's are (the feed is at most once; the log is the record).
        """
        send, receive = anyio.create_memory_object_stream[Msg](FEED_BUFFER)

        async def deliver(msg: Msg) -> None:
            try:
                send.send_nowait(msg)
            except anyio.WouldBlock:
                _log.warning("command feed full: a command was dropped", subject=msg.subject)
            except (anyio.BrokenResourceError, anyio.ClosedResourceError):
                pass  # the listener has left; its subscriptions are being removed

        subscriptions = []
        try:
            for subject in subjects:
                subscriptions.append(await self._client.subscribe(subject, cb=deliver))

            async def decoded() -> AsyncGenerator[CommandEnvelope, None]:
                async for msg in receive:
                    try:
                        yield decode_command(msg.data)
                    except EventDecodeError as exc:
                        _log.warning(
                            "undecodable command ignored", subject=msg.subject, error=str(exc)
                        )

            async with aclosing(decoded()) as commands:
                yield commands
        finally:
            with anyio.CancelScope(shield=True):
                for subscription in subscriptions:
                    await subscription.unsubscribe()
            send.close()
            receive.close()


async def _settle(what: str, acknowledgement: Awaitable[None]) -> None:
    """Send an ack/nak/term; one that cannot reach the server is only logged."""
    try:
        await acknowledgement
    except (nats.errors.Error, TimeoutError) as exc:
        _log.warning(
            "a command could not be settled; it will be redelivered", what=what, error=str(exc)
        )


@dataclass(frozen=True, slots=True)
class _JetStreamInbound:
    envelope: CommandEnvelope
    delivered: int
    _msg: Msg = field(repr=False)
    _js: JetStreamContext = field(repr=False)

    async def ack(self) -> None:
        await _settle("ack", self._msg.ack())

    async def nak(self, delay_s: float | None = None) -> None:
        await _settle("nak", self._msg.nak(delay=delay_s))

    async def term(self, reason: str) -> None:
        await _quarantine_msg(self._js, self._msg, reason)


async def _quarantine_msg(js: JetStreamContext, msg: Msg, reason: str) -> None:
    await quarantine(
        js, origin="cmd", origin_stream=COMMANDS_STREAM, subject=msg.subject,
        seq=msg.metadata.sequence.stream, reason=reason, data=msg.data,
    )  # fmt: skip
    await _settle("term", msg.term())  # never deliver it again: it cannot become valid


class JetStreamCommandInbox:
    """The driver's durable pull consumer :data:`DRIVER_CONSUMER` on ``CC_COMMANDS``.

    Args:
        js: a JetStream context with the topology applied.
        ack_wait_s: how long a fetched command may stay unacknowledged before the server
            delivers it again.
    """

    def __init__(self, js: JetStreamContext, *, ack_wait_s: float = 30.0) -> None:
        self._js = js
        self._ack_wait_s = ack_wait_s
        self._subscription: JetStreamContext.PullSubscription | None = None

    async def _subscribe(self) -> JetStreamContext.PullSubscription:
        if self._subscription is None:
            config = ConsumerConfig(
                durable_name=DRIVER_CONSUMER,
                ack_policy=AckPolicy.EXPLICIT,
                deliver_policy=DeliverPolicy.ALL,
                filter_subject=ALL_COMMANDS,
                ack_wait=self._ack_wait_s,
                max_ack_pending=256,
            )
            try:
                self._subscription = await self._js.pull_subscribe(
                    ALL_COMMANDS, durable=DRIVER_CONSUMER, stream=COMMANDS_STREAM, config=config
                )
            except (nats.errors.Error, TimeoutError) as exc:
                raise EventStoreError(f"cannot consume commands: {exc!r}") from exc
        return self._subscription

    async def fetch(self, batch: int, *, wait_s: float) -> list[InboundCommand]:
        """Up to ``batch`` commands; [] if none came within ``wait_s``.

        Raises:
            EventStoreError: the server could not be asked.
        """
        subscription = await self._subscribe()
        try:
            msgs = await subscription.fetch(batch, timeout=wait_s)
        except (TimeoutError, nats.errors.TimeoutError):
            return []
        except nats.errors.Error as exc:
            raise EventStoreError(f"cannot fetch commands: {exc!r}") from exc
        fetched: list[InboundCommand] = []
        for msg in msgs:
            try:
                envelope = decode_command(msg.data)
            except EventDecodeError as exc:
                await _quarantine_msg(self._js, msg, str(exc))
                continue
            fetched.append(
                _JetStreamInbound(envelope, msg.metadata.num_delivered, _msg=msg, _js=self._js)
            )
        return fetched


@dataclass(frozen=True, slots=True)
class QuarantinedCommand:
    """A command the in-memory inbox took out for good, as ``cc.quarantine.cmd`` keeps it.

    Attributes:
        subject: the command's subject.
        data: its bytes.
        reason: why.
    """

    subject: str
    data: bytes
    reason: str


@dataclass(slots=True)
class _Stored:
    seq: int
    subject: str
    data: bytes
    delivered: int = 0
    due: float = 0.0
    done: bool = False


@dataclass(frozen=True, slots=True)
class _MemoryInbound:
    envelope: CommandEnvelope
    delivered: int
    _owner: MemoryCommands = field(repr=False)
    _stored: _Stored = field(repr=False)

    async def ack(self) -> None:
        self._stored.done = True

    async def nak(self, delay_s: float | None = None) -> None:
        self._owner._give_back(self._stored, delay_s or 0.0)

    async def term(self, reason: str) -> None:
        self._owner._quarantine(self._stored, reason)


class MemoryCommands:
    """The command stream in memory, with the driver's one durable consumer and the
    workers' live feed: the twin of :class:`JetStreamCommandBus`,
    :class:`JetStreamCommandInbox` and :class:`JetStreamCommandFeed` at once.

    Publishing is idempotent per command id; delivery is in order, at least once: a fetched
    command comes back after ``ack_wait_s`` unless acknowledged. Time is ``clock``
    (default: anyio's, which a virtual-clock event loop drives).

    Args:
        ack_wait_s: how long a fetched command may stay unacknowledged.
        clock: seconds, monotonic.
    """

    def __init__(
        self, *, ack_wait_s: float = 30.0, clock: Callable[[], float] | None = None
    ) -> None:
        self._ack_wait_s = ack_wait_s
        self._clock = clock or anyio.current_time
        self._stored: list[_Stored] = []
        self._ids: dict[str, int] = {}
        self._changed = anyio.Event()
        self._listeners: list[tuple[tuple[str, ...], MemoryObjectSendStream[bytes]]] = []
        self.quarantined: list[QuarantinedCommand] = []

    def _signal(self) -> None:
        self._changed.set()
        self._changed = anyio.Event()

    @asynccontextmanager
    async def listen(
        self, subjects: Sequence[str] = (ALL_COMMANDS,)
    ) -> AsyncIterator[AsyncIterator[CommandEnvelope]]:
        """Hear every command stored on ``subjects`` from now on, until the context is left."""
        send, receive = anyio.create_memory_object_stream[bytes](math.inf)
        listener = (tuple(subjects), send)
        self._listeners.append(listener)

        async def decoded() -> AsyncGenerator[CommandEnvelope, None]:
            async for data in receive:
                try:
                    yield decode_command(data)
                except EventDecodeError as exc:
                    _log.warning("undecodable command ignored", error=str(exc))

        try:
            async with aclosing(decoded()) as commands:
                yield commands
        finally:
            self._listeners.remove(listener)
            send.close()
            receive.close()

    async def publish(
        self,
        command: Command,
        *,
        command_id: str,
        now: datetime,
        correlation_id: str | None = None,
    ) -> int:
        """Store ``command`` once per ``command_id``; returns its sequence."""
        if command_id in self._ids:
            return self._ids[command_id]
        envelope = wrap_command(
            command,
            command_id=command_id,
            now=now,
            correlation_id=correlation_id or str(getattr(command, "run_id", "") or command_id),
        )
        seq = self.inject_raw(command_subject(command), encode(envelope))
        self._ids[command_id] = seq
        return seq

    def inject_raw(self, subject: str, data: bytes) -> int:
        """Store raw bytes on ``subject``, as a foreign publisher could; returns the sequence."""
        seq = len(self._stored) + 1
        self._stored.append(_Stored(seq=seq, subject=subject, data=data))
        for subjects, listener in self._listeners:
            if any(subject_matches(pattern, subject) for pattern in subjects):
                listener.send_nowait(data)
        self._signal()
        return seq

    async def fetch(self, batch: int, *, wait_s: float) -> list[InboundCommand]:
        """Up to ``batch`` deliverable commands, oldest first; [] after ``wait_s``."""
        deadline = self._clock() + wait_s
        while True:
            now = self._clock()
            fetched: list[InboundCommand] = []
            next_due = math.inf
            for stored in self._stored:
                if stored.done:
                    continue
                if stored.due > now:
                    next_due = min(next_due, stored.due)
                    continue
                if len(fetched) >= batch:
                    break
                stored.delivered += 1
                stored.due = now + self._ack_wait_s
                try:
                    envelope = decode_command(stored.data)
                except EventDecodeError as exc:
                    self._quarantine(stored, str(exc))
                    continue
                fetched.append(_MemoryInbound(envelope, stored.delivered, self, stored))
            if fetched or now >= deadline:
                return fetched
            changed = self._changed
            with anyio.move_on_after(min(deadline, next_due) - now):
                await changed.wait()

    def _give_back(self, stored: _Stored, delay_s: float) -> None:
        if not stored.done:
            stored.due = self._clock() + delay_s
            self._signal()

    def _quarantine(self, stored: _Stored, reason: str) -> None:
        _log.warning("command quarantined", subject=stored.subject, reason=reason)
        stored.done = True
        self.quarantined.append(QuarantinedCommand(stored.subject, stored.data, reason))
