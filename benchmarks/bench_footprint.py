"""Footprint: resident memory of an idle worker, of the driver, and of a running Claude Code.

Each is measured as the real process an operator runs, sampled with psutil (the process
and its children):

* an idle ``claudecluster worker``: after it joined and refreshed its registry entry (a heartbeat);
* ``claudecluster driver``: idle, then during a run of ``--driver-tasks`` no-op shell
  tasks (10,000 by default) worked by in-process workers in this benchmark's process;
  the peak is taken while the run is planned, dispatched and merged, until it ends or
  ``--driver-window`` seconds pass (how far it got is reported);
* one Claude Code CLI process running a two-turn task against the scripted model (one
  second per turn, so it is sampled while it waits as well as while it works).

    .venv/bin/python benchmarks/bench_footprint.py [--quick] [--driver-tasks N]

Prints a table and writes benchmarks/results/footprint.json.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import anyio
import anyio.abc
import psutil
from _harness import open_private_cluster, print_table, sample_repo, write_results

from claudecluster.events.model import (
    Event,
    RunCompleted,
    SubmitRun,
    TaskMerged,
    TaskSpec,
    WorkerJoined,
)
from claudecluster.executors.claude_code import bundled_claude
from claudecluster.executors.process import tree_rss
from claudecluster.runtime.connection import Connection
from claudecluster.runtime.worker import Worker, WorkerConfig
from claudecluster.scripted_model import Script, open_scripted_model
from claudecluster.transport.commands import publish_command
from claudecluster.transport.liveness import JetStreamWorkerRegistry

_MB = 2**20


async def _wait_for_event(
    conn: Connection, kind: type[Event], timeout_s: float, **match: object
) -> Event:
    """The first event of ``kind`` in the log whose fields equal ``match``.

    Raises:
        TimeoutError: none within ``timeout_s``.
    """
    with anyio.fail_after(timeout_s):
        async with conn.log.open_reader(follow=True) as events:
            async for stored in events:
                event = stored.envelope.payload
                if isinstance(event, kind) and all(
                    getattr(event, k) == v for k, v in match.items()
                ):
                    return event
    raise TimeoutError(f"the log ended without a {kind.__name__}")


async def _start(command: list[str], where: Path) -> anyio.abc.Process:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CLAUDECLUSTER_")}
    env["CLAUDECLUSTER_DRIVER__STARTS_PER_S"] = "1000000"
    env["CLAUDECLUSTER_DRIVER__START_BURST"] = "1000000"
    env["CLAUDECLUSTER_DRIVER__MAX_RUNNING"] = "64"
    log = (where / f"{Path(command[3]).name}-{time.monotonic_ns()}.log").open("wb")
    with log:  # the child has its own copy of the descriptor
        return await anyio.open_process(command, cwd=where, env=env, stdout=log, stderr=log)


async def _stop(process: anyio.abc.Process) -> None:
    process.terminate()
    with anyio.move_on_after(20):
        await process.wait()
        return
    process.kill()
    await process.wait()


async def idle_worker(conn: Connection, where: Path, *, heartbeat: bool) -> int:
    """RSS of a ``claudecluster worker`` once it joined, or (``heartbeat``) after its first
    heartbeat, 5 s later, when it has settled."""
    cli = [sys.executable, "-m", "claudecluster", "worker", "--nats", conn.url,
           "--workspace-root", str(where / "ws")]  # fmt: skip
    process = await _start(cli, where)
    try:
        joined = await _wait_for_event(conn, WorkerJoined, 60, pid=process.pid)
        worker_id = getattr(joined, "worker_id", "")
        if heartbeat:
            # Heartbeats refresh the worker's registry entry (liveness is not in the log):
            # wait for one that carries its measured memory, as the first refresh does.
            registry = JetStreamWorkerRegistry(conn.client.jetstream())
            with anyio.fail_after(60):
                async for beat in registry.watch():
                    if beat.worker_id == worker_id and beat.memory_bytes > 0:
                        break
        return tree_rss(process.pid)
    finally:
        await _stop(process)


async def driver(
    conn: Connection, where: Path, tasks: int, window_s: float, workers: int
) -> dict[str, Any]:
    """RSS of ``claudecluster driver`` idle, and its peak during a ``tasks``-task run."""
    cli = [sys.executable, "-m", "claudecluster", "driver", "--nats", conn.url,
           "--work-dir", str(where / "driver")]  # fmt: skip
    repo = await sample_repo(where / "repo")
    process = await _start(cli, where)
    merged = 0
    ended = False
    try:
        watched = psutil.Process(process.pid)
        with anyio.fail_after(60):  # its durable consumer exists once it serves
            # it records nothing while idle: its command consumer appearing is the sign
            while not await _driver_serving(conn):  # noqa: ASYNC110
                await anyio.sleep(0.1)
        idle = tree_rss(watched)
        plan = tuple(
            TaskSpec(task_id=f"n{i:05d}", title="no-op", prompt="true", executor="shell")
            for i in range(tasks)
        )
        command = SubmitRun(run_id="footprint", goal="footprint", repo=str(repo), plan=plan)
        first = await conn.log.last_seq() + 1
        await publish_command(
            conn.client.jetstream(), command, command_id="footprint", now=datetime.now(UTC)
        )
        peak = idle
        pool = [
            Worker(
                WorkerConfig(worker_id=f"fp-{i}", workspace_root=where / "ws", slots=4),
                conn.log,
                conn.client,
            )
            for i in range(workers)
        ]
        started = time.perf_counter()
        async with anyio.create_task_group() as group:
            for worker in pool:
                await group.start(worker.serve)

            async def sample() -> None:
                nonlocal peak
                while True:
                    peak = max(peak, tree_rss(watched))
                    await anyio.sleep(0.2)

            group.start_soon(sample)
            with anyio.move_on_after(window_s):
                async with conn.log.open_reader(from_seq=first, follow=True) as events:
                    async for stored in events:
                        event = stored.envelope.payload
                        if isinstance(event, TaskMerged):
                            merged += 1
                        elif isinstance(event, RunCompleted):
                            ended = True
                            break
            for worker in pool:
                worker.stop("footprint measured")
            group.cancel_scope.cancel()
        return {
            "driver_idle_mb": round(idle / _MB, 1),
            "driver_peak_mb": round(max(peak, tree_rss(watched)) / _MB, 1),
            "driver_run_tasks": tasks,
            "driver_run_tasks_merged_in_window": merged,
            "driver_run_completed": ended,
            "driver_window_s": round(time.perf_counter() - started, 1),
        }
    finally:
        await _stop(process)


async def _driver_serving(conn: Connection) -> bool:
    try:
        await conn.client.jetstream().consumer_info("CC_COMMANDS", "driver")
    except Exception:  # noqa: BLE001 - not there yet is the only expected failure
        return False
    return True


async def claude_process(where: Path, latency_s: float, runs: int) -> list[int]:
    """Peak RSS of the Claude Code CLI doing a two-turn task, per run."""
    script = Script.model_validate({"latency_s": latency_s, "tasks": [{
        "marker": "[[footprint]]",
        "turns": [{"text": "Writing.", "tools": [{"name": "Write", "input": {
            "file_path": "{cwd}/f.txt", "content": "f\n"}}]}, {"text": "Done."}],
    }]})  # fmt: skip
    peaks = []
    async with open_scripted_model(script) as model:
        for index in range(runs):
            cwd, home = where / f"claude-{index}", where / f"home-{index}"
            cwd.mkdir(parents=True)
            home.mkdir()
            env = {k: v for k, v in os.environ.items() if k != "CLAUDECODE"}
            env.update(
                ANTHROPIC_BASE_URL=model.url, ANTHROPIC_API_KEY="sk-bench-offline",
                CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC="1", HOME=str(home),
                CLAUDE_CONFIG_DIR=str(home / ".claude"),
            )  # fmt: skip
            command = [str(bundled_claude()), "-p", "[[footprint]] write f.txt",
                       "--output-format", "stream-json", "--verbose",
                       "--permission-mode", "acceptEdits", "--allowedTools", "Write"]  # fmt: skip
            out = (where / f"claude-{index}.jsonl").open("wb")
            process = await anyio.open_process(command, cwd=cwd, env=env, stdout=out, stderr=out)
            watched = psutil.Process(process.pid)
            peak = 0
            with anyio.fail_after(120):
                while process.returncode is None:
                    peak = max(peak, tree_rss(watched))
                    with anyio.move_on_after(0.05):
                        await process.wait()
            out.close()
            output = (where / f"claude-{index}.jsonl").read_text(errors="replace")
            if process.returncode != 0 or '"is_error":false' not in output:
                raise RuntimeError(f"claude exited {process.returncode}: {output[-300:]}")
            peaks.append(peak)
    return peaks


async def run(args: argparse.Namespace) -> dict[str, Any]:
    """Every measure; returns the report."""
    with tempfile.TemporaryDirectory(prefix="bench-footprint-") as tmp_name:
        tmp = Path(tmp_name)
        async with open_private_cluster(tmp) as conn:
            worker_rss = await idle_worker(conn, tmp, heartbeat=not args.quick)
            driver_figures = await driver(
                conn, tmp, args.driver_tasks, args.driver_window, args.workers
            )
        claude = await claude_process(tmp, args.latency, args.claude_runs)
    return {
        "results": {
            "idle_worker_mb": round(worker_rss / _MB, 1),
            **driver_figures,
            "claude_process_peak_mb": round(max(claude) / _MB, 1),
            "claude_runs": len(claude),
        },
    }


def main() -> None:
    """Run the benchmark, print the table, write the JSON."""
    parser = argparse.ArgumentParser(description="Resident memory of our processes")
    parser.add_argument("--quick", action="store_true", help="a small run")
    parser.add_argument("--driver-tasks", type=int, default=None)
    parser.add_argument("--driver-window", type=float, default=None, help="seconds at most")
    parser.add_argument("--workers", type=int, default=4, help="in-process workers, 4 slots")
    parser.add_argument("--latency", type=float, default=None, help="scripted s per turn")
    parser.add_argument("--claude-runs", type=int, default=None)
    args = parser.parse_args()
    args.driver_tasks = args.driver_tasks or (20 if args.quick else 10_000)
    # Quick: 20 no-op tasks took 30.7 s on an idle 2-core machine at this commit, just
    # over the 30 s this window had (why the path got slower is not yet found).
    args.driver_window = args.driver_window or (120.0 if args.quick else 240.0)
    args.latency = args.latency if args.latency is not None else (0.2 if args.quick else 1.0)
    args.claude_runs = args.claude_runs or (1 if args.quick else 3)
    report = anyio.run(run, args)
    print_table(["measure", "value"], list(report["results"].items()))
    print(f"written {write_results('footprint', report, quick=args.quick)}")


if __name__ == "__main__":
    main()
