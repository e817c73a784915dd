"""Overhead: no-op shell tasks through the whole path, against a bare JetStream round trip.

Every task is ``executor: shell`` with the command ``true``: the submission command, the
driver's decisions and records, the work queue, a worker (the base bundle from the object
store, a git workspace, the shell, commit and result), the events and the driver's merge
step (a task that changed nothing has nothing to merge, so git merging itself is skipped).

Two phases on one embedded nats-server, in one process:

* throughput: ``--tasks`` independent tasks, ``--workers`` in-process workers with
  ``--slots`` each, and the driver's pacing lifted (the token bucket's defaults, 10 starts/s,
  are a protection for the Claude API, not a limit of the machinery);
* latency: ``--latency-tasks`` tasks one at a time (``max_parallel: 1``), so nothing
  queues: a task's added latency is from TaskQueued to TaskMerged minus the time the
  shell itself ran (TaskSucceeded.duration_ms), and the cycle is the wall time per task.

The bare round trip is ``js.publish`` with its ack on a stream like the event log (file
storage, same server, ``sync_interval: always``), one at a time.

    .venv/bin/python benchmarks/bench_overhead.py [--quick] [--tasks N] [--workers W]

Prints a table and writes benchmarks/results/overhead.json.
"""

from __future__ import annotations

import argparse
import resource
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import anyio
import psutil
from _harness import (
    open_private_cluster,
    percentile,
    print_table,
    sample_repo,
    submit_and_wait,
    write_results,
)
from nats.js.api import StorageType, StreamConfig

from claudecluster.actors.driver import DriverConfig
from claudecluster.domain.submission import DEFAULT_MAX_TASKS
from claudecluster.events.model import (
    RunCompleted,
    SubmitRun,
    TaskAssigned,
    TaskMerged,
    TaskQueued,
    TaskSpec,
    TaskStarted,
    TaskSucceeded,
)
from claudecluster.runtime.connection import Connection
from claudecluster.runtime.driver import Driver, DriverOptions
from claudecluster.runtime.worker import Worker, WorkerConfig
from claudecluster.transport.base import read_all


def noop_plan(count: int, prefix: str) -> tuple[TaskSpec, ...]:
    """``count`` independent shell tasks that do nothing."""
    return tuple(
        TaskSpec(task_id=f"{prefix}-{i:05d}", title="no-op", prompt="true", executor="shell")
        for i in range(count)
    )


async def bare_round_trips(conn: Connection, count: int) -> list[float]:
    """Seconds per ``js.publish`` + ack, one at a time, on a file-storage stream."""
    js = conn.client.jetstream()
    await js.add_stream(
        StreamConfig(name="BENCH_BARE", subjects=["bench.bare"], storage=StorageType.FILE)
    )
    payload = b"x" * 300  # about the size of an encoded event envelope
    samples = []
    for _ in range(count):
        started = time.perf_counter()
        await js.publish("bench.bare", payload)
        samples.append(time.perf_counter() - started)
    await js.delete_stream("BENCH_BARE")
    return samples


def cpu_seconds() -> dict[str, float]:
    """CPU seconds used so far: this process (driver and workers), its reaped children
    (git, the sandboxes and what ran in them), and the nats-server."""
    me = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    server = 0.0
    for process in psutil.Process().children(recursive=True):
        try:
            if "nats-server" in process.name():
                times = process.cpu_times()
                server += times.user + times.system
        except psutil.Error:
            continue
    return {
        "python": me.ru_utime + me.ru_stime,
        "children": children.ru_utime + children.ru_stime,
        "nats_server": server,
    }


#: the stages of a task's path, each named by the event that ends it
STAGES = (TaskQueued, TaskAssigned, TaskStarted, TaskSucceeded, TaskMerged)


async def whole_path(
    conn: Connection,
    repo: Path,
    tasks: tuple[TaskSpec, ...],
    run_id: str,
    *,
    max_parallel: int | None,
    timeout_s: float,
) -> tuple[float, list[float], dict[str, list[float]]]:
    """Run ``tasks``; returns the wall time, each task's added latency in seconds, and the
    seconds each stage took (from the previous stage's event to the one naming it)."""
    command = SubmitRun(
        run_id=run_id, goal="overhead", repo=str(repo), plan=tasks, max_parallel=max_parallel
    )
    timing = await submit_and_wait(conn, command, timeout_s=timeout_s)
    if not isinstance(timing.end, RunCompleted) or timing.end.tasks_succeeded != len(tasks):
        raise RuntimeError(f"run {run_id} did not complete: {timing.end!r}")
    seen: dict[tuple[str, type], datetime] = {}
    ran_ms: dict[str, int] = {}
    added = []
    stages: dict[str, list[float]] = {kind.__name__: [] for kind in STAGES[1:]}
    for stored in await read_all(conn.log, from_seq=timing.first_seq):
        event = stored.envelope.payload
        at = stored.envelope.occurred_at
        if not isinstance(event, STAGES) or event.run_id != run_id:
            continue
        seen[event.task_id, type(event)] = at
        index = STAGES.index(type(event))
        if index > 0:
            before = seen[event.task_id, STAGES[index - 1]]
            stages[type(event).__name__].append((at - before).total_seconds())
        if isinstance(event, TaskSucceeded):
            ran_ms[event.task_id] = event.duration_ms
        elif isinstance(event, TaskMerged):
            path = (at - seen[event.task_id, TaskQueued]).total_seconds()
            added.append(path - ran_ms[event.task_id] / 1000)
    return timing.wall_s, added, stages


async def run(args: argparse.Namespace) -> dict[str, Any]:
    """Both phases and the bare round trips; returns the report."""
    with tempfile.TemporaryDirectory(prefix="bench-overhead-") as tmp_name:
        tmp = Path(tmp_name)
        repo = await sample_repo(tmp / "repo")
        async with open_private_cluster(tmp) as conn:
            bare = await bare_round_trips(conn, args.bare)
            config = DriverConfig(
                max_running=args.workers * args.slots * 2,
                starts_per_s=1_000_000.0,
                start_burst=1_000_000,
                # One run holds every task of the throughput phase, however many are asked
                # for (the driver's default refuses more than 500 in a run).
                max_tasks=max(DEFAULT_MAX_TASKS, args.tasks),
            )
            driver = Driver(
                conn.log, conn.client.jetstream(), DriverOptions(config=config, work_dir=tmp / "d")
            )
            workers = [
                Worker(
                    WorkerConfig(
                        worker_id=f"bench-{i}", workspace_root=tmp / "ws", slots=args.slots
                    ),
                    conn.log,
                    conn.client,
                )
                for i in range(args.workers)
            ]
            async with anyio.create_task_group() as group:
                await group.start(driver.run)
                for worker in workers:
                    await group.start(worker.serve)
                # Generous: --quick runs in the test suite, beside the rest of it on 2 cores.
                timeout = 300 + args.tasks * 0.5
                cpu_before = cpu_seconds()
                wall, _, _ = await whole_path(
                    conn, repo, noop_plan(args.tasks, "t"), "overhead-throughput",
                    max_parallel=None, timeout_s=timeout,
                )  # fmt: skip
                cpu_after = cpu_seconds()
                _, added, stages = await whole_path(
                    conn, repo, noop_plan(args.latency_tasks, "l"), "overhead-latency",
                    max_parallel=1, timeout_s=timeout,
                )  # fmt: skip
                for worker in workers:
                    worker.stop("benchmark done")
                group.cancel_scope.cancel()
    ms = 1000.0
    return {
        "tasks": args.tasks,
        "workers": args.workers,
        "slots_per_worker": args.slots,
        "results": {
            "tasks_per_s": round(args.tasks / wall, 1),
            "throughput_wall_s": round(wall, 2),
            "latency_tasks": len(added),
            "added_latency_p50_ms": round(percentile(added, 50) * ms, 2),
            "added_latency_p99_ms": round(percentile(added, 99) * ms, 2),
            "bare_round_trips": len(bare),
            "bare_publish_ack_p50_ms": round(percentile(bare, 50) * ms, 3),
            "bare_publish_ack_p99_ms": round(percentile(bare, 99) * ms, 3),
            "added_p50_over_bare_p50": round(percentile(added, 50) / percentile(bare, 50), 1),
        },
        # What the throughput phase cost, per task: 100 tasks/s on 2 cores is 20 ms in all.
        "throughput_cpu_ms_per_task": {
            name: round((cpu_after[name] - cpu_before[name]) / args.tasks * ms, 2)
            for name in cpu_before
        },
        "latency_stage_p50_ms": {
            f"to {name}": round(percentile(values, 50) * ms, 2) for name, values in stages.items()
        },
    }


def main() -> None:
    """Run the benchmark, print the table, write the JSON."""
    parser = argparse.ArgumentParser(description="No-op tasks through the whole path")
    parser.add_argument("--quick", action="store_true", help="a few tasks")
    parser.add_argument("--tasks", type=int, default=None, help="tasks in the throughput run")
    parser.add_argument("--latency-tasks", type=int, default=None, help="one-at-a-time tasks")
    parser.add_argument("--workers", type=int, default=4, help="in-process workers")
    parser.add_argument("--slots", type=int, default=4, help="attempts per worker at once")
    parser.add_argument("--bare", type=int, default=None, help="bare publish round trips")
    args = parser.parse_args()
    args.tasks = args.tasks or (20 if args.quick else 1000)
    args.latency_tasks = args.latency_tasks or (5 if args.quick else 100)
    args.bare = args.bare or (100 if args.quick else 2000)
    report = anyio.run(run, args)
    results = report["results"]
    print_table(["measure", "value"], list(results.items()))
    print_table(["stage (p50)", "ms"], list(report["latency_stage_p50_ms"].items()))
    print_table(["CPU per task", "ms"], list(report["throughput_cpu_ms_per_task"].items()))
    print(f"written {write_results('overhead', report, quick=args.quick)}")


if __name__ == "__main__":
    main()
