"""What `sync_interval: always` costs: appends fsynced per write vs nats-server's default.

Starts two nats-servers side by side (same binary, machine and run): one with the embedded
default's config, one with the same config minus the sync line (nats-server then fsyncs
every 2 minutes). Appends through our JetStreamEventLog, one at a time as actors do, and
alternates rounds between the two so machine noise hits both alike.

    .venv/bin/python benchmarks/bench_append_durability.py [--events N] [--rounds R]

Prints a table and writes benchmarks/results/append_durability.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import anyio
from _harness import REPOSITORY  # noqa: F401  (puts the repository on sys.path: tests.fixtures)
from tests.fixtures.sample_runs import LogBuilder

from claudecluster.events import TaskProgress
from claudecluster.runtime.connection import open_jetstream_log
from claudecluster.runtime.embedded_nats import find_nats_server, render_server_config

RESULTS = Path(__file__).resolve().parent / "results"


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _start(store: Path, *, sync_always: bool) -> tuple[subprocess.Popen[bytes], str]:
    port = _free_port()
    store.mkdir(parents=True)
    config = render_server_config(port, store)
    if not sync_always:
        config = "\n".join(line for line in config.splitlines() if "sync_interval" not in line)
    (store / "nats.conf").write_text(config)
    process = subprocess.Popen(
        [str(find_nats_server()), "-c", str(store / "nats.conf")],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    return process, f"nats://127.0.0.1:{port}"


async def _append_round(url: str, label: str, count: int, offset: int) -> list[float]:
    builder = LogBuilder(prefix=f"{label}-{offset}")
    envelopes = [
        builder.emit(
            TaskProgress(run_id="bench", task_id="t1", attempt=1, kind="text", text=f"{i}")
        )
        for i in range(count)
    ]
    latencies = []
    async with open_jetstream_log(url, name=f"bench-{label}") as (_, log):
        for envelope in envelopes:
            start = time.perf_counter()
            await log.append(envelope)
            latencies.append(time.perf_counter() - start)
    return latencies


async def _wait_ready(url: str) -> None:
    port = int(url.rsplit(":", 1)[1])
    with anyio.fail_after(15):
        while True:
            try:
                stream = await anyio.connect_tcp("127.0.0.1", port)
            except OSError:
                await anyio.sleep(0.05)
                continue
            await stream.aclose()
            return


def _summary(label: str, latencies: list[float]) -> dict[str, float | str | int]:
    ordered = sorted(latencies)
    return {
        "setting": label,
        "events": len(ordered),
        "events_per_s": round(len(ordered) / sum(ordered), 1),
        "p50_ms": round(statistics.median(ordered) * 1000, 3),
        "p99_ms": round(ordered[max(0, int(len(ordered) * 0.99) - 1)] * 1000, 3),
    }


async def run(events: int, rounds: int) -> list[dict[str, float | str | int]]:
    """Measure both settings; returns one summary row per setting."""
    with tempfile.TemporaryDirectory() as tmp:
        servers = {
            "always": _start(Path(tmp) / "always", sync_always=True),
            "default": _start(Path(tmp) / "default", sync_always=False),
        }
        try:
            for _, url in servers.values():
                await _wait_ready(url)
            samples: dict[str, list[float]] = {label: [] for label in servers}
            per_round = max(1, events // rounds)
            for index in range(rounds):
                for label, (_, url) in servers.items():
                    samples[label] += await _append_round(url, label, per_round, index)
        finally:
            for process, _ in servers.values():
                process.terminate()
                process.wait(timeout=10)
    return [_summary(label, values) for label, values in samples.items()]


def main() -> None:
    """Run the benchmark, print the table, write the JSON."""
    parser = argparse.ArgumentParser(description="Cost of sync_interval: always")
    parser.add_argument("--events", type=int, default=2000, help="appends per setting")
    parser.add_argument("--rounds", type=int, default=4, help="alternating rounds")
    args = parser.parse_args()
    rows = anyio.run(run, args.events, args.rounds)
    print(f"{'setting':<8} {'events':>7} {'events/s':>10} {'p50 ms':>8} {'p99 ms':>8}")
    for row in rows:
        print(
            f"{row['setting']:<8} {row['events']:>7} {row['events_per_s']:>10} "
            f"{row['p50_ms']:>8} {row['p99_ms']:>8}"
        )
    ratio = float(rows[0]["events_per_s"]) / float(rows[1]["events_per_s"])
    print(f"throughput always / default: {ratio:.2f}")
    RESULTS.mkdir(exist_ok=True)
    report = {
        "benchmark": "append_durability",
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
        "results": rows,
        "throughput_ratio_always_over_default": round(ratio, 3),
    }
    (RESULTS / "append_durability.json").write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
