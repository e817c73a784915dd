"""Latency: how fast a submission is answered, and how fast a new event becomes visible.

On one embedded nats-server with a running driver (and no workers, so the runs wait):

* submission: publishing a SubmitRun command until JetStream acknowledges it (what the
  gateway waits for before it answers 202), and until the driver has recorded
  RunSubmitted in the log (what ``claudecluster run --detach`` waits for);
* status update, from the moment an event is appended until it is visible:
  - in a live projection (a following reader folding every event into a ClusterView,
    as the driver, the autoscaler and ``run``'s progress do);
  - in ``claudecluster status`` (its own code path, in this process: connect, read the
    whole log, replay it), so it grows with the log; the log's size is reported;
  - a WebSocket client: measured by the gateway's own benchmark,
    ``benchmarks/bench_gateway_latency.py``, not repeated here.

A separate figure is the wall time of the ``claudecluster status`` process itself, which is
mostly the Python interpreter starting and importing.

    .venv/bin/python benchmarks/bench_latency.py [--quick] [--submissions N] [--updates N]

Prints a table and writes benchmarks/results/latency.json.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import anyio
import anyio.abc
from _harness import (
    bench_settings,
    open_private_cluster,
    percentile,
    print_table,
    sample_repo,
    write_results,
)

from claudecluster.cli.inspect_cmd import _view as status_view
from claudecluster.events.envelope import wrap_event
from claudecluster.events.model import (
    RunSubmitted,
    SubmitRun,
    TaskSpec,
    WorkerHeartbeat,
    WorkerJoined,
)
from claudecluster.projections.cluster import ClusterView, apply
from claudecluster.runtime.connection import Connection
from claudecluster.runtime.driver import Driver, DriverOptions
from claudecluster.settings import Settings
from claudecluster.transport.commands import publish_command

_TASK = (TaskSpec(task_id="t", title="no-op", prompt="true", executor="shell"),)


async def submissions(conn: Connection, repo: Path, count: int) -> dict[str, list[float]]:
    """Submit ``count`` runs one after the other; seconds to the ack and to RunSubmitted."""
    js = conn.client.jetstream()
    acked: list[float] = []
    recorded: list[float] = []
    async with conn.log.open_reader(from_seq=await conn.log.last_seq() + 1, follow=True) as events:
        for i in range(count):
            command = SubmitRun(run_id=f"lat-{i:04d}", goal="latency", repo=str(repo), plan=_TASK)
            started = time.perf_counter()
            await publish_command(js, command, command_id=f"sub-{i}", now=datetime.now(UTC))
            acked.append(time.perf_counter() - started)
            with anyio.fail_after(30):
                async for stored in events:
                    event = stored.envelope.payload
                    if isinstance(event, RunSubmitted) and event.run_id == command.run_id:
                        recorded.append(time.perf_counter() - started)
                        break
    return {"ack": acked, "recorded": recorded}


class _Projection:
    """A live projection that notes when each sequence arrived, and wakes a waiter."""

    def __init__(self) -> None:
        self.view = ClusterView()
        self.arrived_at: dict[int, float] = {}
        self._want = 0
        self._arrived = anyio.Event()

    async def follow(self, conn: Connection, *, task_status: anyio.abc.TaskStatus[None]) -> None:
        async with conn.log.open_reader(from_seq=1, follow=True) as events:
            task_status.started()
            async for stored in events:
                self.view = apply(self.view, stored)
                self.arrived_at[stored.seq] = time.perf_counter()
                if stored.seq >= self._want:
                    self._arrived.set()

    async def wait_for(self, seq: int) -> float:
        """The moment ``seq`` was applied, waiting for it if need be."""
        if seq not in self.arrived_at:
            self._want, self._arrived = seq, anyio.Event()
            if seq not in self.arrived_at:  # it may have come in meanwhile
                with anyio.fail_after(10):
                    await self._arrived.wait()
        return self.arrived_at[seq]


async def status_updates(
    conn: Connection, settings: Settings, count: int, cli_every: int
) -> dict[str, Any]:
    """Append heartbeats; seconds until a live projection and ``status`` show each."""
    live = _Projection()
    projection: list[float] = []
    cli: list[float] = []
    joined = wrap_event(
        WorkerJoined(worker_id="bench-w", slots=1), event_id="bench-w-joined",
        now=datetime.now(UTC),
    )  # fmt: skip
    last = (await conn.log.append(joined)).seq
    async with anyio.create_task_group() as group:
        await group.start(live.follow, conn)
        for i in range(count):
            beat = WorkerHeartbeat(worker_id="bench-w", slots_free=1)
            envelope = wrap_event(beat, event_id=f"bench-w-beat-{i}", now=datetime.now(UTC))
            started = time.perf_counter()
            last = (await conn.log.append(envelope)).seq
            projection.append(await live.wait_for(last) - started)
            if i % cli_every == 0:
                view = await status_view(settings)
                if view.last_seq < last:
                    raise RuntimeError("status did not show an acknowledged event")
                cli.append(time.perf_counter() - started)
        group.cancel_scope.cancel()
    if live.view.workers["bench-w"].state != "active":
        raise RuntimeError(f"the projection lost the worker: {live.view.workers['bench-w']}")
    return {"projection": projection, "cli": cli, "log_events": last}


async def cli_process(url: str, count: int) -> list[float]:
    """Wall seconds of ``claudecluster status`` as a process (start-up included)."""
    samples = []
    for _ in range(count):
        started = time.perf_counter()
        with anyio.fail_after(60):
            await anyio.run_process(
                [sys.executable, "-m", "claudecluster", "status", "--nats", url], check=True
            )
        samples.append(time.perf_counter() - started)
    return samples


async def run(args: argparse.Namespace) -> dict[str, Any]:
    """Every measure, on one server; returns the report."""
    with tempfile.TemporaryDirectory(prefix="bench-latency-") as tmp_name:
        tmp = Path(tmp_name)
        repo = await sample_repo(tmp / "repo")
        async with open_private_cluster(tmp) as conn:
            settings = bench_settings(conn.url, tmp)
            driver = Driver(conn.log, conn.client.jetstream(), DriverOptions(work_dir=tmp / "d"))
            async with anyio.create_task_group() as group:
                await group.start(driver.run)
                submitted = await submissions(conn, repo, args.submissions)
                updates = await status_updates(conn, settings, args.updates, args.cli_every)
                group.cancel_scope.cancel()
            process = await cli_process(conn.url, args.cli_processes)

    def summary(values: list[float]) -> dict[str, float]:
        return {
            "count": len(values),
            "p50_ms": round(percentile(values, 50) * 1000, 2),
            "p99_ms": round(percentile(values, 99) * 1000, 2),
        }

    return {
        "results": {
            "submission_ack": summary(submitted["ack"]),
            "submission_recorded_by_driver": summary(submitted["recorded"]),
            "status_update_projection": summary(updates["projection"]),
            "status_update_cli_status": summary(updates["cli"]),
            "cli_status_process_wall": summary(process),
        },
        "log_events_at_end": updates["log_events"],
        "websocket": "see benchmarks/bench_gateway_latency.py (the gateway's benchmark)",
    }


def main() -> None:
    """Run the benchmark, print the table, write the JSON."""
    parser = argparse.ArgumentParser(description="Submission and status-update latency")
    parser.add_argument("--quick", action="store_true", help="a few samples")
    parser.add_argument("--submissions", type=int, default=None)
    parser.add_argument("--updates", type=int, default=None)
    parser.add_argument("--cli-every", type=int, default=None, help="status every N updates")
    parser.add_argument("--cli-processes", type=int, default=None)
    args = parser.parse_args()
    args.submissions = args.submissions or (5 if args.quick else 200)
    args.updates = args.updates or (20 if args.quick else 1000)
    args.cli_every = args.cli_every or (5 if args.quick else 10)
    args.cli_processes = args.cli_processes or (1 if args.quick else 5)
    report = anyio.run(run, args)
    rows = [[name, *s.values()] for name, s in report["results"].items()]
    print_table(["measure", "count", "p50_ms", "p99_ms"], rows)
    print(f"log events at the end: {report['log_events_at_end']}")
    print(f"written {write_results('latency', report, quick=args.quick)}")


if __name__ == "__main__":
    main()
