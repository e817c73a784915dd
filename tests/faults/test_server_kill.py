"""kill -9 the nats-server mid-run and start it again on the same port and store.

Our servers run with ``sync_interval: always``, so whatever JetStream acknowledged is on
disk. Every process reconnects by itself; the run goes on where it was. The test checks
both halves: no acknowledged event is lost (a probe appends events throughout and keeps
the ids the server acknowledged; every event the test had read before the kill is still
there at its sequence), and the run completes with every task merged exactly once.
"""

from __future__ import annotations

import signal
from datetime import UTC, datetime
from itertools import count
from pathlib import Path

import anyio
import anyio.abc
import pytest

from claudecluster.errors import EventStoreError
from claudecluster.events import WorkerHeartbeat, wrap_event
from claudecluster.runtime.embedded_nats import EmbeddedNats, start_nats_server
from claudecluster.transport.base import read_all
from claudecluster.transport.jetstream import JetStreamEventLog
from tests.faults.rig import (
    PROGRESS_WITHIN_S,
    RUN_ENDS_WITHIN_S,
    RecordProperty,
    chained_shell_tasks,
    kill_9,
    logs_on_failure,
    open_rig,
)

pytestmark = pytest.mark.faults

TASKS = 16
KILL_AT_MERGED = 5
#: How long the probe may take, once the run has ended, to have an append acknowledged by
#: the restarted server (a short run can end while an append begun during the outage is
#: still waiting out its own timeout).
PROBE_RECOVERS_WITHIN_S = 60.0


class _Acks:
    """The ids the server acknowledged, in order, and a way to wait for more of them."""

    def __init__(self) -> None:
        self.ids: list[str] = []
        self._grew = anyio.Event()

    def add(self, event_id: str) -> None:
        self.ids.append(event_id)
        self._grew.set()
        self._grew = anyio.Event()

    async def wait_beyond(self, count: int) -> None:
        """Return once more than ``count`` appends were acknowledged."""
        while len(self.ids) <= count:
            await self._grew.wait()


async def _probe(log: JetStreamEventLog, acks: _Acks) -> None:
    """Append events one after another, each retried until the server acknowledges it."""
    for n in count(1):
        envelope = wrap_event(
            WorkerHeartbeat(worker_id="probe"), event_id=f"probe-{n}", now=datetime.now(UTC)
        )
        while True:
            try:
                await log.append(envelope)
            except EventStoreError:
                await anyio.sleep(0.05)  # the server is down: the same envelope again
            else:
                acks.add(envelope.id)
                break
        await anyio.sleep(0.02)


async def test_a_run_completes_across_a_server_kill_and_loses_no_acknowledged_event(
    server: tuple[anyio.abc.Process, EmbeddedNats],
    repo: Path,
    tmp_path: Path,
    record_property: RecordProperty,
) -> None:
    tasks = chained_shell_tasks("s", TASKS, chains=4)
    process, nats = server
    restarted: anyio.abc.Process | None = None
    acks = _Acks()
    acked = acks.ids
    probe_recovered = True
    try:
        async with open_rig(tmp_path, repo, nats.url, credentials=nats.credentials) as rig:
            assert rig.log is not None
            for _ in range(3):
                await rig.start_worker()
            await rig.start_driver()
            await rig.submit("srv", tasks)
            async with anyio.create_task_group() as group:
                group.start_soon(_probe, rig.log, acks)
                try:
                    await rig.watch.wait_for(
                        lambda _: rig.merged_count("srv") >= KILL_AT_MERGED, PROGRESS_WITHIN_S
                    )
                    seen_before = list(rig.watch.stored)
                    acked_before = len(acked)
                    await kill_9(process)
                    restarted, _ = await start_nats_server(nats.store_dir, port=nats.port)
                    await rig.wait_end("srv", limit_s=RUN_ENDS_WITHIN_S)
                except TimeoutError:
                    pytest.fail(f"the run did not end\n{logs_on_failure(rig)}", pytrace=False)
                with anyio.move_on_after(PROBE_RECOVERS_WITHIN_S) as waited:
                    await acks.wait_beyond(acked_before)
                probe_recovered = not waited.cancelled_caught
                group.cancel_scope.cancel()
            verdict = rig.verdict("srv", tasks)
            stored = {s.envelope.id: s.seq for s in await read_all(rig.log)}
            probes = [s for s in await read_all(rig.log) if s.envelope.id.startswith("probe-")]
    finally:
        if restarted is not None and restarted.returncode is None:
            with anyio.CancelScope(shield=True):
                restarted.send_signal(signal.SIGTERM)
                with anyio.fail_after(15):
                    await restarted.wait()
                await restarted.aclose()
    verdict.report(f"server kill (at {KILL_AT_MERGED} merged)", record_property)
    record_property("probe_events_acknowledged", len(acked))
    assert acked_before > 0
    assert probe_recovered, (
        f"no probe append was acknowledged within {PROBE_RECOVERS_WITHIN_S:.0f} s of the run's end"
    )
    assert len(acked) > acked_before
    # Nothing the server acknowledged, or that a reader saw, was lost or moved.
    assert [(seq, stored.get(event_id)) for seq, event_id in seen_before] == [
        (seq, seq) for seq, _ in seen_before
    ]
    probe_ids = [s.envelope.id for s in probes]
    assert len(probe_ids) == len(set(probe_ids))  # a retried append was stored once
    # Every acknowledged append is there. The log may hold one more: the append in flight
    # when the probe was stopped, stored by the server but never acknowledged to it.
    assert set(acked) <= set(probe_ids)
    assert len(probe_ids) - len(acked) <= 1
    assert verdict.completed is not None
    assert verdict.completed.tasks_succeeded == TASKS
    assert verdict.completion_rate == 1.0, verdict
    assert set(verdict.trailers.values()) == {1}
