"""Two drivers, one lease: the standby takes over a leader killed (-9) or frozen (SIGSTOP).

Both are real ``claudecluster driver`` processes with the default lease settings. The
leader is struck mid-run; the standby takes the lease once it expires, fences the log
with DriverLeaseTaken, replays and drives on. The frozen leader is woken (SIGCONT) once
the standby has decided something: it still has effects in flight, and every append it
tries is refused by the fence, which the log shows: no event after the standby's fence
carries the old leader's id (every fenced append names its driver in ``Cc-Driver``).

Failover time, leader struck to the first decision the standby records, goes in the
test report.
"""

from __future__ import annotations

import signal
from pathlib import Path

import anyio
import anyio.abc
import pytest

from claudecluster.events import (
    DriverLeaseTaken,
    MergeConflict,
    RunCompleted,
    RunPlanned,
    TaskMerged,
    TaskQueued,
    TaskRetryScheduled,
    TaskSkipped,
)
from claudecluster.events.model import Event
from claudecluster.runtime.embedded_nats import EmbeddedNats
from claudecluster.transport.ordered import open_ordered
from claudecluster.transport.topology import EVENTS_STREAM
from tests.faults.rig import (
    PROGRESS_WITHIN_S,
    RUN_ENDS_WITHIN_S,
    FaultRig,
    RecordProperty,
    chained_shell_tasks,
    kill_9,
    logs_on_failure,
    open_rig,
)

pytestmark = pytest.mark.faults

TASKS = 16
STRIKE_AT_MERGED = 5
#: what only a driver records: the first of these after the standby's fence is its first
#: decision
DRIVER_DECISIONS = (TaskQueued, TaskMerged, MergeConflict, TaskSkipped, TaskRetryScheduled,
                    RunPlanned, RunCompleted)  # fmt: skip


def _lease_of(rig: FaultRig, process: anyio.abc.Process) -> tuple[int, DriverLeaseTaken] | None:
    """The last DriverLeaseTaken of ``process`` (by pid), with its index in the watch."""
    found = None
    for index, event in enumerate(rig.watch.events):
        if isinstance(event, DriverLeaseTaken) and event.pid == process.pid:
            found = (index, event)
    return found


async def _leading(rig: FaultRig, process: anyio.abc.Process) -> tuple[int, DriverLeaseTaken]:
    await rig.watch.wait_for(lambda _: _lease_of(rig, process) is not None, PROGRESS_WITHIN_S)
    lease = _lease_of(rig, process)
    assert lease is not None
    return lease


async def _first_decision_after(rig: FaultRig, index: int) -> int:
    def decided(events: list[Event]) -> bool:
        return any(isinstance(e, DRIVER_DECISIONS) for e in events[index + 1 :])

    await rig.watch.wait_for(decided, PROGRESS_WITHIN_S)
    return next(
        i for i in range(index + 1, len(rig.watch.events))
        if isinstance(rig.watch.events[i], DRIVER_DECISIONS)
    )  # fmt: skip


async def _writers_after(rig: FaultRig, fence_seq: int) -> set[str]:
    """The drivers named by the appends stored after ``fence_seq``."""
    writers: set[str] = set()
    async with open_ordered(rig.js, EVENTS_STREAM, "cc.evt.>", from_seq=fence_seq + 1) as msgs:
        async for msg in msgs:
            writer = (msg.headers or {}).get("Cc-Driver")
            if writer:
                writers.add(writer)
    return writers


async def _failover(
    rig: FaultRig, leader: anyio.abc.Process, standby: anyio.abc.Process, struck_at: float,
    record_property: RecordProperty,
) -> tuple[int, DriverLeaseTaken]:  # fmt: skip
    """Wait for the standby to lead and decide; report both times."""
    index, lease = await _leading(rig, standby)
    decision = await _first_decision_after(rig, index)
    takeover_s = rig.watch.seen_at[index] - struck_at
    failover_s = rig.watch.seen_at[decision] - struck_at
    print(f"lease taken {takeover_s:.2f}s, first decision {failover_s:.2f}s after the strike")
    record_property("takeover_s", round(takeover_s, 3))
    record_property("failover_s", round(failover_s, 3))
    return index, lease


async def _run_with_a_strike(
    rig: FaultRig, record_property: RecordProperty, *, freeze: bool
) -> None:
    tasks = chained_shell_tasks("s", TASKS, chains=4, pause_s=0.3)
    for _ in range(3):
        await rig.start_worker()
    leader = await rig.start_standby_driver()
    _, first_lease = await _leading(rig, leader)
    standby = await rig.start_standby_driver()
    await rig.submit("sb", tasks)
    await rig.watch.wait_for(
        lambda _: rig.merged_count("sb") >= STRIKE_AT_MERGED, PROGRESS_WITHIN_S
    )
    merged_at_strike = rig.merged_count("sb")
    struck_at = anyio.current_time()
    if freeze:
        leader.send_signal(signal.SIGSTOP)
    else:
        await kill_9(leader)
    _, lease = await _failover(rig, leader, standby, struck_at, record_property)
    if freeze:
        leader.send_signal(signal.SIGCONT)
    await rig.wait_end("sb", limit_s=RUN_ENDS_WITHIN_S)
    verdict = rig.verdict("sb", tasks)
    verdict.report(f"standby driver ({'SIGSTOP' if freeze else 'kill -9'})", record_property)
    assert merged_at_strike < TASKS, "the leader was struck after the run, not during it"
    assert verdict.completed is not None
    assert verdict.completed.tasks_succeeded == TASKS
    assert verdict.completion_rate == 1.0, verdict
    fence_seq = next(seq for (seq, _), e in zip(rig.watch.stored, rig.watch.events, strict=True)
                     if e is lease)  # fmt: skip
    writers = await _writers_after(rig, fence_seq)
    assert first_lease.driver_id not in writers, writers
    assert writers == {lease.driver_id}
    if freeze:
        # The woken leader is alive, a standby now, and said why it stopped.
        assert leader.returncode is None
        log = "".join(
            p.read_text(errors="replace") for p in (rig.tmp_path / "logs").glob("driver-*.log")
        )
        assert "driver lease lost" in log or "the driver lease was lost" in log
        for line in log.splitlines():
            if "lease" in line and "debug" not in line:
                print(line[:300])


async def test_a_standby_takes_over_a_killed_leader(
    server: tuple[anyio.abc.Process, EmbeddedNats],
    repo: Path,
    tmp_path: Path,
    record_property: RecordProperty,
) -> None:
    _, nats = server
    async with open_rig(tmp_path, repo, nats.url, credentials=nats.credentials) as rig:
        try:
            await _run_with_a_strike(rig, record_property, freeze=False)
        except TimeoutError:
            pytest.fail(f"the run did not end\n{logs_on_failure(rig)}")


async def test_a_frozen_leader_woken_after_the_takeover_records_nothing(
    server: tuple[anyio.abc.Process, EmbeddedNats],
    repo: Path,
    tmp_path: Path,
    record_property: RecordProperty,
) -> None:
    _, nats = server
    async with open_rig(tmp_path, repo, nats.url, credentials=nats.credentials) as rig:
        try:
            await _run_with_a_strike(rig, record_property, freeze=True)
        except TimeoutError:
            pytest.fail(f"the run did not end\n{logs_on_failure(rig)}")
        finally:
            for driver in rig.drivers:
                if driver.returncode is None:
                    driver.send_signal(signal.SIGCONT)  # never leave one frozen
