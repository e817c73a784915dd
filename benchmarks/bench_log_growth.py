"""Log growth: what a long-lived cluster's reads and restarts cost as CC_EVENTS grows.

Logs of several sizes (0, 100,000 and 1,000,000 events by default), shaped like a real
cluster's: 20 workers joined, then copies of the recorded sample run ``happy_path`` (a
plan of six tasks, their queueing, progress, results and merges; its heartbeat events
left out, since liveness is no longer logged; without the sample's causation chain),
each copy a new run with its own ids, published pre-encoded in batches of plain publishes
(a million events load in seconds). For each size, side by side on the same machine:

* ``claudecluster status RUN`` (the last run) p50 and its peak RSS, as a subprocess, and
  the CPU time (user + system) of each CLI command, the figure to compare on a shared
  machine;
* ``claudecluster status`` (every run) p50, from the runs index a front door wrote beside
  its snapshot, plus the tail;
* ``claudecluster --help`` p50;
* driver restart to its first decision, twice: a Driver with no snapshot (it replays the
  whole log, as every restart did before driver snapshots; it then writes one), and,
  after a tail of further runs is appended (half the default snapshot interval), a Driver
  restarting from that snapshot plus the tail;
* a front door ready: from the snapshot a previous front door wrote, plus the tail.

The CLI runs as an installed package does, with bytecode caches (pip writes them at
install; an environment with ``PYTHONDONTWRITEBYTECODE`` set compiles every module on
every call, which is measured beside it as ``status_run_nocache_p50_ms``). With
``--baseline-src DIR`` (say, a copy of main's ``src``) ``status RUN`` and ``--help`` are
also timed on that code, interleaved with this one's, for ratios measured side by side.

And once: the events an idle cluster of 20 workers adds to CC_EVENTS, measured over a
window (heartbeats refresh the registry, not the log) and scaled to a day.

The benchmark's own nats-server runs the embedded configuration minus
``sync_interval: always`` (loading a million events one fsync at a time would take long).

    .venv/bin/python benchmarks/bench_log_growth.py [--quick] [--sizes 0,100000,1000000]

Prints a table and writes benchmarks/results/log_growth.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import zlib
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import anyio
import msgspec
from _harness import open_unsynced_server, percentile, print_table, write_results
from tests.fixtures.sample_runs import happy_path

from claudecluster.actors.driver_snapshots import DRIVER_SNAPSHOT
from claudecluster.events.codec import encode
from claudecluster.events.envelope import wrap_event
from claudecluster.events.model import WorkerHeartbeat, WorkerJoined
from claudecluster.events.subjects import event_subject
from claudecluster.projections.snapshots import RUNS_SNAPSHOT
from claudecluster.runtime.connection import Connection, open_jetstream_log
from claudecluster.runtime.driver import Driver, DriverOptions
from claudecluster.runtime.front_door import open_front_door
from claudecluster.runtime.reads import write_view_snapshot
from claudecluster.runtime.worker import Worker, WorkerConfig
from claudecluster.transport.snapshots import JetStreamSnapshotStore, SnapshotStore

_RUN = "bench-r000000"
_PREFIX = "e000000"
_WORKERS = 20
_CLI = [sys.executable, "-m", "claudecluster"]
#: events published between flushes while loading a log
_BATCH = 5_000


def _template() -> list[tuple[str, bytes]]:
    """The sample run as (subject, bytes), without its workers' joins and heartbeats.

    Without causation ids: the sample chains each event to the one before, but in a
    cluster only what a command caused carries one (the driver's answer to a cancel, a
    rollback), and the driver keeps every causation id it reads.
    """
    return [
        (event_subject(e.payload), encode(msgspec.structs.replace(e, causation_id=None)))
        for e in happy_path(_RUN, _PREFIX).envelopes
        if not isinstance(e.payload, WorkerJoined | WorkerHeartbeat)
    ]


def cluster_log(count: int, *, first_run: int = 0) -> Iterator[tuple[str, bytes, str]]:
    """``count`` events: 20 workers join, then runs; yields (subject, bytes, run id).

    With ``first_run`` the runs are numbered from there and no worker joins (a tail
    appended to a log made before).
    """
    made = 0
    for n in range(min(_WORKERS, count) if not first_run else 0):
        event = WorkerJoined(worker_id=f"bench-w{n:02d}", pool="default", slots=2)
        envelope = wrap_event(event, event_id=f"join-{n}", now=datetime.now(UTC))
        yield event_subject(event), encode(envelope), ""
        made += 1
    rest = _template()
    copy = first_run
    while made < count:
        run, prefix = f"bench-r{copy:06d}", f"e{copy:06d}"
        for subject, data in rest[: count - made]:
            new = data.replace(_RUN.encode(), run.encode()).replace(
                _PREFIX.encode(), prefix.encode()
            )
            yield subject.replace(_RUN, run), new, run
        made += min(len(rest), count - made)
        copy += 1


def timed_cli(
    *args: str, repeat: int, env: dict[str, str], ok: tuple[int, ...] = (0,)
) -> tuple[list[float], int, list[float]]:
    """:func:`timed_program` of ``claudecluster ARGS``."""
    return timed_program([*_CLI, *args], repeat=repeat, env=env, ok=ok)


def timed_program(
    argv: list[str], *, repeat: int, env: dict[str, str], ok: tuple[int, ...] = (0,)
) -> tuple[list[float], int, list[float]]:
    """Wall seconds of each run of ``argv``, the largest peak RSS (bytes), and the CPU
    seconds (user + system) of each run.

    The CPU time is what to compare on a shared machine: the wall time there is mostly
    waiting for a core. One unmeasured run first: it writes the bytecode caches when the
    environment allows.
    """
    times: list[float] = []
    cpu: list[float] = []
    peak = 0
    for n in range(repeat + 1):
        started = time.perf_counter()
        # GNU time prints the process's own peak RSS (KiB) and CPU, nothing of this one's.
        done = subprocess.run(
            ["/usr/bin/time", "-f", "%M %U %S", *argv],
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, check=False,
        )  # fmt: skip
        elapsed = time.perf_counter() - started
        if done.returncode not in ok:
            raise RuntimeError(f"{' '.join(argv)} exited {done.returncode}: {done.stderr}")
        if n:
            rss, user, system = done.stderr.strip().splitlines()[-1].split()
            times.append(elapsed)
            cpu.append(float(user) + float(system))
            peak = max(peak, int(rss) * 1024)
    return times, peak, cpu


class _Noticing:
    """A snapshot store that says when a snapshot was written to it."""

    def __init__(self, inner: SnapshotStore) -> None:
        self._inner = inner
        self.written = anyio.Event()

    async def put(self, name: str, data: bytes) -> None:
        await self._inner.put(name, data)
        if name == DRIVER_SNAPSHOT:
            self.written.set()

    async def get(self, name: str) -> bytes | None:
        return await self._inner.get(name)


async def _driver_ready_s(log: Any, js: Any, store: SnapshotStore, every: int) -> float:
    """Seconds until a new Driver has recovered and is ready to decide."""
    driver = Driver(log, js, DriverOptions(snapshot_every_events=every), snapshots=store)
    started = time.perf_counter()
    async with anyio.create_task_group() as group:
        await group.start(driver.run)
        ready = time.perf_counter() - started
        if isinstance(store, _Noticing):
            with anyio.fail_after(600):
                await store.written.wait()
        group.cancel_scope.cancel()
    return ready


async def _publish(client: Any, log: Any, events: Iterator[tuple[str, bytes, str]]) -> str:
    """Publish ``events`` pre-encoded, in batches, without a per-event ack; the last run's id.

    The stream captures its subjects' plain publishes as it does JetStream ones (same
    sequence, same stored bytes); leaving out the per-event ack is what makes a million
    events load in seconds rather than minutes on two cores. Plain publishes from one
    connection arrive in order; the stream is then asked for its last sequence until it
    holds every event published, and a count short or over is an error.
    """
    last_run = ""
    expected = await log.last_seq()
    for n, (subject, data, run) in enumerate(events, start=1):
        await client.publish(subject, data)
        last_run = run or last_run
        expected += 1
        if n % _BATCH == 0:
            # The server has read the batch: the client's buffer stays bounded.
            await client.flush(timeout=120)
    await client.flush(timeout=120)
    with anyio.fail_after(1200):
        # The stream's count is only known by asking (no event says it caught up).
        while (seq := await log.last_seq()) < expected:  # noqa: ASYNC110
            await anyio.sleep(0.1)
    if seq != expected:
        raise RuntimeError(f"the stream holds {seq} events, expected {expected}")
    return last_run


async def measure(
    count: int, where: Path, repeat: int, baseline: Path | None = None
) -> dict[str, Any]:
    """Load a log of ``count`` events, then measure every read and restart on it."""
    async with (
        open_unsynced_server(where) as url,
        open_jetstream_log(url, name="bench-log-growth") as (client, log),
    ):
        js = client.jetstream()
        loading = time.perf_counter()
        last_run = await _publish(client, log, cluster_log(count))
        load_s = time.perf_counter() - loading
        if await log.last_seq() != count:
            raise RuntimeError(f"loaded {await log.last_seq()} events, expected {count}")
        conn = Connection(url, client, log, embedded=False)
        # A front door that read the whole log writes a snapshot, as a running one does.
        async with open_front_door(conn) as door:
            if door.view.last_seq:
                last = await log.last_seq()
                async with log.open_reader(from_seq=last) as events:
                    last_id = [e.envelope.id async for e in events][-1]
                await write_view_snapshot(JetStreamSnapshotStore(js), door.view, last_id)
        index = await JetStreamSnapshotStore(js).get(RUNS_SNAPSHOT) or b""
        started = time.perf_counter()
        async with open_front_door(conn):
            front_door_s = time.perf_counter() - started
        store = JetStreamSnapshotStore(js)
        # No driver snapshot yet: the whole log is replayed (every restart before driver
        # snapshots); the driver then writes one.
        cold_s = await _driver_ready_s(log, js, _Noticing(store) if count else store, 1)
        # A restart finds the snapshot and the tail written since (half the interval).
        tail = min(5_000, count // 2)
        if tail:
            await _publish(client, log, cluster_log(tail, first_run=1_000_000))
        snapshot = await store.get(DRIVER_SNAPSHOT) or b""
        snapshot_mb = len(snapshot) / 2**20
        # What the bucket holds: the store compresses it so (zlib, level 1).
        stored_mb = len(zlib.compress(snapshot, 1)) / 2**20
        driver_s = await _driver_ready_s(log, js, store, DriverOptions().snapshot_every_events)
        env = {k: v for k, v in os.environ.items() if not k.startswith("CLAUDECLUSTER_")}
        nocache_env = {**env, "PYTHONDONTWRITEBYTECODE": "1", "COLUMNS": "200"}
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        env["COLUMNS"] = "200"
        # On the empty log there is no run to show: the same command asks for one that
        # does not exist (exit 2), the same connect and read.
        ref = last_run or "no-such-run"
        run_times, run_rss, run_cpu = await anyio.to_thread.run_sync(
            lambda: timed_cli("status", ref, "--nats", url, repeat=repeat, env=env, ok=(0, 2))
        )
        all_times, all_rss, all_cpu = await anyio.to_thread.run_sync(
            lambda: timed_cli("status", "--nats", url, repeat=repeat, env=env)
        )
        every_times, every_rss, _ = await anyio.to_thread.run_sync(
            lambda: timed_cli("status", "--all", "--nats", url, repeat=repeat, env=env)
        )
        help_times, _, help_cpu = await anyio.to_thread.run_sync(
            lambda: timed_cli("--help", repeat=repeat, env=env)
        )
        nocache_times, _, _ = await anyio.to_thread.run_sync(
            lambda: timed_cli(
                "status", ref, "--nats", url, repeat=repeat, env=nocache_env, ok=(0, 2)
            )
        )
        side: dict[str, Any] = {}
        if baseline is not None:
            side = await anyio.to_thread.run_sync(
                lambda: side_by_side(ref, url, env, baseline, repeat)
            )
    return {
        "events": count,
        "status_run_p50_ms": round(percentile(run_times, 50) * 1000),
        "status_run_cpu_p50_ms": round(percentile(run_cpu, 50) * 1000),
        "status_run_rss_mb": round(run_rss / 2**20, 1),
        "status_all_p50_ms": round(percentile(all_times, 50) * 1000),
        "status_all_cpu_p50_ms": round(percentile(all_cpu, 50) * 1000),
        "status_all_rss_mb": round(all_rss / 2**20, 1),
        "status_every_p50_ms": round(percentile(every_times, 50) * 1000),
        "status_every_rss_mb": round(every_rss / 2**20, 1),
        "help_p50_ms": round(percentile(help_times, 50) * 1000),
        "help_cpu_p50_ms": round(percentile(help_cpu, 50) * 1000),
        "status_run_nocache_p50_ms": round(percentile(nocache_times, 50) * 1000),
        "driver_restart_s": round(driver_s, 2),
        "driver_restart_no_snapshot_s": round(cold_s, 2),
        "driver_snapshot_mb": round(snapshot_mb, 1),
        "driver_snapshot_stored_mb": round(stored_mb, 1),
        "driver_tail_events": tail,
        "runs_index_mb": round(len(index) / 2**20, 1),
        "front_door_ready_s": round(front_door_s, 2),
        "load_events_per_s": round(count / load_s) if count else 0,
        **side,
    }


def side_by_side(
    ref: str, url: str, env: dict[str, str], baseline: Path, repeat: int
) -> dict[str, Any]:
    """``status RUN`` and ``--help`` p50 on this code and on ``baseline``, interleaved."""
    ours: dict[str, list[float]] = {"status": [], "help": []}
    theirs: dict[str, list[float]] = {"status": [], "help": []}
    base_env = {**env, "PYTHONPATH": str(baseline)}
    for _ in range(repeat):
        for times, run_env in ((ours, env), (theirs, base_env)):
            times["status"] += timed_cli(
                "status", ref, "--nats", url, repeat=1, env=run_env, ok=(0, 2)
            )[0]
            times["help"] += timed_cli("--help", repeat=1, env=run_env)[0]
    result: dict[str, Any] = {}
    for what in ("status", "help"):
        mine, base = percentile(ours[what], 50), percentile(theirs[what], 50)
        result[f"side_{what}_p50_ms"] = round(mine * 1000)
        result[f"side_{what}_baseline_p50_ms"] = round(base * 1000)
        result[f"side_{what}_over_baseline"] = round(mine / base, 2)
    return result


async def idle_workers(where: Path, workers: int, window_s: float) -> dict[str, Any]:
    """Events an idle pool of ``workers`` adds to CC_EVENTS over ``window_s``, per day."""
    async with (
        open_unsynced_server(where) as url,
        open_jetstream_log(url, name="bench-idle") as (client, log),
        anyio.create_task_group() as group,
    ):
        for n in range(workers):
            config = WorkerConfig(worker_id=f"idle-{n:02d}", workspace_root=where / f"w{n}")
            await group.start(Worker(config, log, client).serve)
        joined = await log.last_seq()
        await anyio.sleep(window_s)  # the measurement window itself, not a synchronisation
        during = await log.last_seq() - joined
        kv = await client.jetstream().key_value("cc_workers")
        status = await kv.status()
        group.cancel_scope.cancel()
    return {
        "workers": workers,
        "window_s": window_s,
        "events_at_join": joined,
        "events_during_window": during,
        "events_per_day_idle": round(during / window_s * 86_400),
        "registry_entries": status.values,
    }


async def run(args: argparse.Namespace) -> dict[str, Any]:
    """Every size, then the idle pool; returns the report."""
    sizes = [int(s) for s in args.sizes.split(",")]
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-log-growth-") as tmp:
        for count in sizes:
            rows.append(
                await measure(count, Path(tmp) / f"log-{count}", args.repeat, args.baseline_src)
            )
            # A long run stopped later keeps the rows it finished.
            print(json.dumps(rows[-1]), flush=True)
            partial = {"sizes": sizes, "results": rows, "complete": False}
            write_results("log_growth", partial, quick=args.quick)
        idle = await idle_workers(Path(tmp) / "idle", args.workers, args.window)
    floor = import_floor(args.repeat)
    empty = rows[0]
    for row in rows:
        base = empty["status_run_p50_ms"] or row["status_run_p50_ms"]
        row["status_run_over_empty"] = round(row["status_run_p50_ms"] / base, 2) if base else None
    return {
        "sizes": sizes, "results": rows, "idle_cluster": idle, "import_floor": floor,
        "complete": True,
    }  # fmt: skip


#: What ``status RUN --nats URL`` cannot start without: the packages the design fixes for
#: the bus (nats-py, anyio, msgspec), the configuration (pydantic) and the CLI (cyclopts,
#: rich for its tables).
FLOOR_MODULES = ("nats.js", "anyio", "msgspec", "pydantic", "cyclopts", "rich.table")


def import_floor(repeat: int) -> dict[str, Any]:
    """The interpreter importing only :data:`FLOOR_MODULES`: the part of every CLI read
    that is not this project's code or its I/O, on this machine."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    code = "import " + ", ".join(FLOOR_MODULES)
    bare_times, _, bare_cpu = timed_program([sys.executable, "-c", "pass"], repeat=repeat, env=env)
    times, rss, cpu = timed_program([sys.executable, "-c", code], repeat=repeat, env=env)
    return {
        "modules": list(FLOOR_MODULES),
        "interpreter_p50_ms": round(percentile(bare_times, 50) * 1000),
        "interpreter_cpu_p50_ms": round(percentile(bare_cpu, 50) * 1000),
        "p50_ms": round(percentile(times, 50) * 1000),
        "cpu_p50_ms": round(percentile(cpu, 50) * 1000),
        "rss_mb": round(rss / 2**20, 1),
    }


def main() -> None:
    """Parse the flags, run, print and write the report."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes (the smoke test)")
    parser.add_argument("--sizes", default="0,100000,1000000", help="log sizes, comma-separated")
    parser.add_argument("--repeat", type=int, default=7, help="runs of each CLI command")
    parser.add_argument("--workers", type=int, default=_WORKERS, help="idle pool size")
    parser.add_argument("--window", type=float, default=30.0, help="idle window seconds")
    parser.add_argument(
        "--baseline-src", type=Path, default=None,
        help="another version's src directory: status RUN and --help timed side by side",
    )  # fmt: skip
    args = parser.parse_args()
    if args.quick:
        # One timed run of each command (after its unmeasured first): the smoke test checks
        # every measurement is made and is sane, and each CLI call costs about a second of
        # CPU under the suite's coverage, so repeats there buy nothing but time.
        args.sizes, args.repeat, args.workers, args.window = "0,2000", 1, 3, 6.0
    report = anyio.run(run, args)
    print_table(
        ["events", "status RUN p50 ms", "xempty", "no bytecode ms", "RSS MB", "status p50 ms",
         "--help p50 ms", "driver restart s", "without snapshot s", "front door s"],
        [[r["events"], r["status_run_p50_ms"], r["status_run_over_empty"],
          r["status_run_nocache_p50_ms"], r["status_run_rss_mb"], r["status_all_p50_ms"],
          r["help_p50_ms"], r["driver_restart_s"], r["driver_restart_no_snapshot_s"],
          r["front_door_ready_s"]]
         for r in report["results"]],
    )  # fmt: skip
    floor = report["import_floor"]
    print(f"import floor ({', '.join(floor['modules'])}): {floor['p50_ms']} ms p50, "
          f"{floor['cpu_p50_ms']} ms CPU; bare {floor['interpreter_p50_ms']} ms")  # fmt: skip
    idle = report["idle_cluster"]
    print(f"idle {idle['workers']} workers: {idle['events_during_window']} events in "
          f"{idle['window_s']:g}s -> {idle['events_per_day_idle']} a day")  # fmt: skip
    path = write_results("log_growth", report, quick=args.quick)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
