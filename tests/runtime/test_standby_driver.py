"""The driver lease: its pure decisions, and two standby drivers on a real nats-server.

The drivers here run a stand-in for the driver (it records one decision per term and
waits), so what is tested is the lease and the fence, not the driver's work; the fault
suite (tests/faults/test_standby_driver.py) runs real driver processes.
"""

from __future__ import annotations

import math
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from itertools import count

import anyio
import anyio.abc
import pytest
from hypothesis import given
from hypothesis import strategies as st

from claudecluster.actors.lease import (
    LeaseConfig,
    LeasePhase,
    LeaseState,
    Refused,
    Renewed,
    Took,
    Unreachable,
    decide_lease,
    holds,
)
from claudecluster.errors import EventStoreError, LeaseLostError
from claudecluster.events import RunPlanned
from claudecluster.events.envelope import EventEnvelope, wrap_event
from claudecluster.runtime.standby import DRIVER_LEASE_KEY, StandbyDriver
from claudecluster.transport.base import EventLog, read_all
from claudecluster.transport.jetstream import JetStreamEventLog
from claudecluster.transport.leases import (
    JetStreamLeaseStore,
    LeaseEntry,
    LeaseStore,
    MemoryLeaseStore,
)

CONFIG = LeaseConfig(ttl_s=10.0, poll_s=1.0)
#: generous bound for a takeover on a loaded machine (the TTL is 2 s below)
TAKEOVER_WITHIN_S = 30.0


# -- the pure core -----------------------------------------------------------------------


def test_a_take_leads_and_a_refused_renewal_stands_by() -> None:
    state = LeaseState(config=CONFIG)
    assert decide_lease(state, Refused("other"), 0.0).action == "take"
    decision = decide_lease(state, Took(revision=7, sent_at=1.0), 1.5)
    assert decision.lead == 7
    assert decision.action == "renew"
    assert decision.at == pytest.approx(1.0 + CONFIG.ttl_s / 3)
    assert holds(state, 10.9)
    assert not holds(state, 11.0)
    renewed = decide_lease(state, Renewed(revision=9, sent_at=4.0), 4.1)
    assert renewed.stop is None
    assert state.revision == 9
    assert state.epoch == 7
    stopped = decide_lease(state, Refused("other"), 5.0)
    assert stopped.stop is not None
    assert stopped.action == "take"
    assert state.phase is LeasePhase.STANDBY
    assert not holds(state, 5.0)


def test_an_unreachable_store_keeps_the_lease_only_until_it_runs_out() -> None:
    state = LeaseState(config=CONFIG)
    decide_lease(state, Took(revision=1, sent_at=0.0), 0.0)
    retry = decide_lease(state, Unreachable("cut"), 5.0)
    assert retry.stop is None
    assert retry.action == "renew"
    assert retry.at <= 10.0
    assert decide_lease(state, Unreachable("cut"), 10.0).stop is not None
    assert state.phase is LeasePhase.STANDBY


def test_a_renewal_confirmed_after_the_lease_ran_out_does_not_revive_it() -> None:
    # Paused between sending the renewal and reading its answer, past the TTL.
    state = LeaseState(config=CONFIG)
    decide_lease(state, Took(revision=1, sent_at=0.0), 0.0)
    late = decide_lease(state, Renewed(revision=2, sent_at=1.0), 30.0)
    assert late.stop is not None
    assert not holds(state, 30.0)


_FACTS = st.one_of(
    st.builds(Took, revision=st.integers(1, 99), sent_at=st.just(0.0)),
    st.builds(Renewed, revision=st.integers(1, 99), sent_at=st.just(0.0)),
    st.builds(Refused),
    st.builds(Unreachable),
    st.none(),
)


@given(st.lists(st.tuples(_FACTS, st.floats(0, 30)), max_size=30))
def test_the_holder_never_believes_in_a_lease_older_than_its_ttl(
    steps: list[tuple[object, float]],
) -> None:
    """Whatever happens, a driver holds only within the TTL of a write it sent that the
    store accepted: never longer than the store's own entry can live."""
    state = LeaseState(config=CONFIG)
    now = 0.0
    last_accepted_send = -math.inf
    for fact, advance in steps:
        now += advance
        if isinstance(fact, Took | Renewed):
            fact = type(fact)(revision=fact.revision, sent_at=now - min(advance, 0.5))
        before = state.phase
        decide_lease(state, fact, now)  # type: ignore[arg-type]
        accepted = isinstance(fact, Renewed) or (
            isinstance(fact, Took) and before is LeasePhase.STANDBY
        )
        if accepted and state.phase is LeasePhase.LEADING:
            assert isinstance(fact, Took | Renewed)
            last_accepted_send = max(last_accepted_send, fact.sent_at)
        if holds(state, now):
            assert now < last_accepted_send + CONFIG.ttl_s


# -- the in-memory twin ------------------------------------------------------------------


@dataclass
class _Clock:
    now: float = 0.0

    def __call__(self) -> float:
        return self.now


@pytest.mark.anyio
async def test_the_memory_twin_expires_and_compares_revisions() -> None:
    clock = _Clock()
    store = MemoryLeaseStore(clock)
    first = await store.take("k", b"a", 10.0)
    assert first is not None
    assert await store.take("k", b"b", 10.0) is None
    assert await store.renew("k", b"a", 10.0, last=first + 1) is None
    renewed = await store.renew("k", b"a", 10.0, last=first)
    assert renewed is not None
    assert renewed > first
    clock.now = 10.0
    assert await store.current("k") is None
    assert await store.renew("k", b"a", 10.0, last=renewed) is None
    taken = await store.take("k", b"b", 10.0)
    assert taken is not None
    assert await store.current("k") == LeaseEntry(taken, b"b")
    store.unreachable = True
    with pytest.raises(EventStoreError):
        await store.current("k")


# -- two standby drivers on a real server --------------------------------------------------


class _CuttableStore:
    """A lease store this test can cut off (a partition of one driver from the lease)."""

    def __init__(self, inner: JetStreamLeaseStore) -> None:
        self.inner = inner
        self.cut = False

    def _check(self) -> None:
        if self.cut:
            raise EventStoreError("cut off by the test")

    async def current(self, key: str) -> LeaseEntry | None:
        self._check()
        return await self.inner.current(key)

    async def take(self, key: str, value: bytes, ttl_s: float, *, over: int = 0) -> int | None:
        self._check()
        return await self.inner.take(key, value, ttl_s, over=over)

    async def renew(self, key: str, value: bytes, ttl_s: float, *, last: int) -> int | None:
        self._check()
        return await self.inner.renew(key, value, ttl_s, last=last)

    async def release(self, key: str, *, last: int) -> None:
        if not self.cut:
            await self.inner.release(key, last=last)

    async def wait_change(self, key: str, timeout_s: float) -> None:
        await self.inner.wait_change(key, timeout_s)


_ids = count(1)


@dataclass
class _Stand:
    """A stand-in driver: records one decision per term, then waits to be cancelled."""

    name: str
    logs: list[EventLog] = field(default_factory=list)
    led: anyio.Event = field(default_factory=anyio.Event)
    led_at: float = 0.0

    def make(self, log: EventLog, holding: Callable[[], bool]) -> _Stand._Term:
        self.logs.append(log)
        return _Stand._Term(self, log, holding)

    @dataclass
    class _Term:
        owner: _Stand
        log: EventLog
        holding: Callable[[], bool]

        async def run(
            self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
        ) -> None:
            assert self.holding()
            await self.log.append(_decision(self.owner.name))
            self.owner.led_at = time.monotonic()
            self.owner.led.set()
            task_status.started()
            await anyio.sleep_forever()


def _decision(name: str) -> EventEnvelope:
    n = next(_ids)
    event = RunPlanned(run_id=f"{name}-{n}", tasks=(), base_commit="a" * 40, integration_branch="b")
    return wrap_event(event, event_id=f"{name}-decision-{n}", now=datetime.now(UTC))


def _standby(log: JetStreamEventLog, stand: _Stand, store: LeaseStore) -> StandbyDriver:
    return StandbyDriver(
        store=store,
        js=log._js,
        log=log,
        make_driver=stand.make,
        config=LeaseConfig(ttl_s=2.0, poll_s=0.2),
        driver_id=stand.name,
    )


@asynccontextmanager
async def _driver(
    log: JetStreamEventLog, stand: _Stand, store: LeaseStore
) -> AsyncIterator[StandbyDriver]:
    standby = _standby(log, stand, store)
    async with anyio.create_task_group() as group:
        await group.start(standby.run)
        yield standby
        group.cancel_scope.cancel()


@pytest.mark.anyio
async def test_a_standby_takes_over_a_cut_off_holder_which_then_records_nothing(
    jetstream_log: JetStreamEventLog,
) -> None:
    js = jetstream_log._js
    lease_store = JetStreamLeaseStore(js)
    cuttable = _CuttableStore(lease_store)
    a, b = _Stand("a"), _Stand("b")
    # The lease of an earlier test may still be live: start from none.
    entry = await lease_store.current(DRIVER_LEASE_KEY)
    if entry is not None:
        await lease_store.release(DRIVER_LEASE_KEY, last=entry.revision)
    async with _driver(jetstream_log, a, cuttable) as first:
        with anyio.fail_after(TAKEOVER_WITHIN_S):
            await a.led.wait()
        async with _driver(jetstream_log, b, lease_store) as second:
            assert first.holding()
            assert not second.holding()
            cuttable.cut = True
            cut_at = time.monotonic()
            with anyio.fail_after(TAKEOVER_WITHIN_S):
                await b.led.wait()
            assert second.holding()
            assert not first.holding()
            assert b.led_at - cut_at >= 0  # after the cut, however fast
            # The cut-off holder's log refuses everything now.
            with pytest.raises(LeaseLostError):
                await a.logs[0].append(_decision("a-late"))
    events = [s.envelope.payload for s in await read_all(jetstream_log)]
    tail = [(type(e).__name__, getattr(e, "driver_id", None) or e.run_id.split("-")[0])  # type: ignore[union-attr]
            for e in events[-4:]]  # fmt: skip
    assert tail == [
        ("DriverLeaseTaken", "a"), ("RunPlanned", "a"), ("DriverLeaseTaken", "b"),
        ("RunPlanned", "b"),
    ]  # fmt: skip
    assert not any(getattr(e, "run_id", "").startswith("a-late") for e in events)
    await lease_store.close()


@pytest.mark.anyio
async def test_a_holder_that_stops_hands_the_lease_over_at_once(
    jetstream_log: JetStreamEventLog,
) -> None:
    js = jetstream_log._js
    store = JetStreamLeaseStore(js)
    entry = await store.current(DRIVER_LEASE_KEY)
    if entry is not None:
        await store.release(DRIVER_LEASE_KEY, last=entry.revision)
    a, b = _Stand("a"), _Stand("b")
    first = _standby(jetstream_log, a, store)
    a_scope = anyio.CancelScope()
    a_done = anyio.Event()

    async def run_a(*, task_status: anyio.abc.TaskStatus[None]) -> None:
        with a_scope:
            await first.run(task_status=task_status)
        a_done.set()

    async with anyio.create_task_group() as group:
        await group.start(run_a)
        with anyio.fail_after(TAKEOVER_WITHIN_S):
            await a.led.wait()
        async with _driver(jetstream_log, b, store) as second:
            assert not second.holding()
            a_scope.cancel()
            with anyio.fail_after(TAKEOVER_WITHIN_S):
                await a_done.wait()
            # a stopped cleanly: its entry is gone at once, not left to expire.
            holder = await store.current(DRIVER_LEASE_KEY)
            assert holder is None or b'"b"' in holder.value
            with anyio.fail_after(TAKEOVER_WITHIN_S):
                await b.led.wait()
            assert second.holding()
        group.cancel_scope.cancel()
    await store.close()
