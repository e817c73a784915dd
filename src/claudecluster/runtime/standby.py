"""A driver that drives only while it holds the driver lease, and waits as a standby else.

Any number of ``claudecluster driver`` processes may run; one holds the ``driver`` key
of the ``cc_leases`` bucket (a KV entry with a TTL, taken by create, renewed by a
compare-and-set update on its revision) and drives, the others watch the key and take it
when it expires: within the TTL (plus a poll) of the holder dying or being cut off.

A term, from taking the lease to losing it:

1. take the lease (:mod:`claudecluster.actors.lease` decides when);
2. fence the log with DriverLeaseTaken (:func:`~claudecluster.transport.fenced.take_fence`):
   from then on no append of an earlier holder is stored;
3. run a fresh :class:`~claudecluster.runtime.driver.Driver` on the fenced log: it
   replays the whole log (including everything the previous holder recorded), then
   drives; it pulls commands only while the lease is held;
4. renew the lease every third of the TTL; when a renewal is refused, when the TTL runs
   out unrenewed, or when an append finds the fence moved, the term ends: the driver is
   cancelled and this process is a standby again.

A paused holder that wakes after losing the lease has effects in flight; their appends
fail on the fence, and the first renewal (refused) or the lease's own clock ends the term.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Final, Protocol

import anyio
import anyio.abc
import msgspec
from nats.js import JetStreamContext

from claudecluster.actors.lease import (
    LeaseConfig,
    LeaseDecision,
    LeaseFact,
    LeaseState,
    Refused,
    Renewed,
    Took,
    Unreachable,
    decide_lease,
    holds,
)
from claudecluster.errors import ClusterError, EventStoreError, LeaseLostError
from claudecluster.events.envelope import wrap_event
from claudecluster.events.model import DriverLeaseTaken
from claudecluster.observability.logging import get_logger
from claudecluster.transport.base import EventLog
from claudecluster.transport.fenced import FencedEventLog, take_fence
from claudecluster.transport.leases import LeaseStore

__all__ = ["DRIVER_LEASE_KEY", "LeaseHolder", "Runner", "StandbyDriver", "default_driver_id"]

DRIVER_LEASE_KEY: Final = "driver"
_log = get_logger(__name__)


class LeaseHolder(msgspec.Struct, frozen=True, kw_only=True):
    """The value of the lease entry: who holds it (for operators and for a reclaim)."""

    driver_id: str
    host: str = ""
    pid: int = 0


def default_driver_id() -> str:
    """``<host>-<pid>``, made a valid id: unique per process, so two drivers never reclaim
    each other's lease."""
    raw = f"{socket.gethostname()}-{os.getpid()}".lower()
    cleaned = "".join(c if c.isalnum() or c == "-" else "-" for c in raw).strip("-")
    return (cleaned or f"driver-{os.getpid()}")[:60]


class Runner(Protocol):
    """What a term runs: ``Driver.run`` of a driver built on the fenced log."""

    async def run(
        self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Drive until cancelled."""
        ...


@dataclass(slots=True)
class _Term:
    epoch: int
    fence_seq: int
    scope: anyio.CancelScope


class StandbyDriver:
    """Drives while holding the lease, stands by while not; see the module docstring.

    Args:
        store: the lease bucket.
        js: the JetStream context appends are published with.
        log: the event log (unfenced: the fence wraps it per term).
        make_driver: builds the driver of one term from the fenced log and a ``holding``
            check (the driver pulls commands only while it returns True).
        config: the lease's timings.
        driver_id: this process's id in the lease and in DriverLeaseTaken.
        clock: monotonic seconds (a test may drive it).
        on_change: told ``"standby"`` or ``"leading <epoch>"`` at each change (the CLI
            prints it).
    """

    def __init__(
        self,
        *,
        store: LeaseStore,
        js: JetStreamContext,
        log: EventLog,
        make_driver: Callable[[EventLog, Callable[[], bool]], Runner],
        config: LeaseConfig,
        driver_id: str | None = None,
        clock: Callable[[], float] = time.monotonic,
        on_change: Callable[[str], None] = lambda _: None,
    ) -> None:
        self._store = store
        self._js = js
        self._log = log
        self._make_driver = make_driver
        self._clock = clock
        self._on_change = on_change
        self.driver_id = driver_id or default_driver_id()
        self.state = LeaseState(config=config)
        self._value = msgspec.json.encode(
            LeaseHolder(driver_id=self.driver_id, host=socket.gethostname(), pid=os.getpid())
        )
        self._term: _Term | None = None
        #: terms led so far (for tests and logs)
        self.terms = 0

    def holding(self) -> bool:
        """Whether this process may act as the holder right now."""
        return self._term is not None and holds(self.state, self._clock())

    async def run(
        self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Stand by and drive, turn by turn, until cancelled.

        ``task_status.started()`` is called once this process knows whether it leads.
        """
        started = False
        decision = await self._attempt(LeaseDecision(action="take", at=self._clock()))
        try:
            async with anyio.create_task_group() as group:
                while True:
                    if decision.stop is not None:
                        self._end_term(decision.stop)
                    if decision.lead is not None:
                        await self._begin_term(group, decision.lead)
                    if not started:
                        started = True
                        if self._term is None:
                            self._on_change("standby")
                        task_status.started()
                    decision = await self._wait_and_attempt(decision)
        finally:
            with anyio.CancelScope(shield=True), anyio.move_on_after(5):
                await self._release()

    async def _release(self) -> None:
        """A holder that stops cleanly hands the lease over at once instead of at expiry."""
        if self._term is not None and self.state.revision:
            await self._store.release(DRIVER_LEASE_KEY, last=self.state.revision)
            _log.info("driver lease released", epoch=self._term.epoch)

    async def _wait_and_attempt(self, decision: LeaseDecision) -> LeaseDecision:
        if decision.action == "renew" and self._term is None:
            # The term ended between (the fence moved): stand by.
            decision = LeaseDecision(action="take", at=self._clock() + self.state.config.poll_s)
        delay = max(0.0, decision.at - self._clock())
        if decision.action == "take":
            await self._store.wait_change(DRIVER_LEASE_KEY, delay)
        else:
            await anyio.sleep(delay)
            if self._term is not None and not holds(self.state, self._clock()):
                # Woken late (a pause): the lease ran out on our own clock.
                return decide_lease(self.state, None, self._clock())
        return await self._attempt(decision)

    async def _attempt(self, decision: LeaseDecision) -> LeaseDecision:
        sent_at = self._clock()
        fact: LeaseFact
        config = self.state.config
        try:
            if decision.action == "take":
                fact = await self._take(sent_at)
            else:
                revision = await self._store.renew(
                    DRIVER_LEASE_KEY, self._value, config.ttl_s, last=self.state.revision
                )
                fact = Refused() if revision is None else Renewed(revision, sent_at)
        except EventStoreError as exc:
            fact = Unreachable(str(exc))
        return decide_lease(self.state, fact, self._clock())

    async def _take(self, sent_at: float) -> LeaseFact:
        ttl = self.state.config.ttl_s
        current = await self._store.current(DRIVER_LEASE_KEY)
        over = 0
        if current is not None:
            try:
                holder = msgspec.json.decode(current.value, type=LeaseHolder)
            except msgspec.DecodeError:
                holder = LeaseHolder(driver_id="?")
            if holder.driver_id != self.driver_id:
                return Refused(holder=holder.driver_id)
            over = current.revision  # our own entry, from before a restart: take it back
        revision = await self._store.take(DRIVER_LEASE_KEY, self._value, ttl, over=over)
        return Refused() if revision is None else Took(revision, sent_at)

    async def _begin_term(self, group: anyio.abc.TaskGroup, epoch: int) -> None:
        scope = anyio.CancelScope()
        self._term = _Term(epoch=epoch, fence_seq=0, scope=scope)
        self.terms += 1
        group.start_soon(self._drive, self._term)

    def _end_term(self, reason: str) -> None:
        term = self._term
        self._term = None
        if term is not None:
            _log.warning("driver lease lost; standing by", epoch=term.epoch, reason=reason)
            term.scope.cancel()
            self._on_change(f"standby ({reason})")

    def _fenced_out(self, term: _Term) -> None:
        """An append found the fence moved: end the term now, before the next renewal."""
        if self._term is term:
            decide_lease(self.state, Refused(holder="a later fence"), self._clock())
            self._end_term("another driver fenced the log")

    async def _drive(self, term: _Term) -> None:
        with term.scope:
            lease = DriverLeaseTaken(
                driver_id=self.driver_id, epoch=term.epoch, host=socket.gethostname(),
                pid=os.getpid(),
            )  # fmt: skip
            envelope = wrap_event(
                lease, event_id=f"lease-{self.driver_id}-{term.epoch}", now=datetime.now(UTC)
            )
            try:
                term.fence_seq = await take_fence(self._js, self._log, envelope)
            except (LeaseLostError, EventStoreError) as exc:
                _log.warning("could not fence the log; standing by", error=str(exc))
                self._fenced_out(term)
                return
            fenced = FencedEventLog(
                self._log, self._js, term.fence_seq, on_lost=lambda: self._fenced_out(term),
                driver_id=self.driver_id, epoch=term.epoch,
            )  # fmt: skip
            self._on_change(f"leading (epoch {term.epoch}, fence {term.fence_seq})")
            _log.info("driver lease taken", epoch=term.epoch, fence=term.fence_seq)
            driver = self._make_driver(fenced, self.holding)
            try:
                await driver.run()
            except ClusterError as exc:
                # The log failed under the driver (a partition, say): stand by; the lease
                # is renewed meanwhile if it can be, and the next term starts afresh.
                _log.warning("the driver stopped; standing by", error=str(exc))
                self._fenced_out(term)
