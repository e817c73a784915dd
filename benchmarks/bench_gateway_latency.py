"""How fast the gateway answers: submission latency and event-to-WebSocket latency.

Starts, as separate processes the way they run in production, a nats-server (the
embedded default's configuration, fsync on every write), a driver (``claudecluster
driver``) and the gateway (``claudecluster gateway --nats``); this process is only the
client. No workers run, so the submitted runs are planned and their tasks stay queued.

* submission: N sequential ``POST /runs`` (a one-task plan on a real repository), each
  timed from sending the request until the 202 arrives. The gateway answers 202 once the
  driver has recorded ``run.submitted``, so this is the full round trip through NATS and
  the driver, not just the publish.
* status: one WebSocket client follows a run; N times an event is appended to the log
  (as a worker reports progress) and timed from just before the append until the client
  receives it.

    .venv/bin/python benchmarks/bench_gateway_latency.py [--requests N]

Prints a p50/p99 table and writes benchmarks/results/gateway_latency.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import anyio
import httpx
import msgspec
from bench_append_durability import _free_port, _wait_ready  # a script beside this one
from websockets.asyncio.client import connect

from claudecluster.auth import TokenSigner
from claudecluster.events import TaskProgress, wrap_event
from claudecluster.runtime.connection import open_jetstream_log
from claudecluster.runtime.embedded_nats import find_nats_server, render_server_config

RESULTS = Path(__file__).resolve().parent / "results"
CLI = str(Path(sys.executable).parent / "claudecluster")
SECRET = "benchmark-secret-" + "0123456789abcdef" * 3
TARGETS_MS = {"submission": 50.0, "status": 250.0}
SCENARIOS = {
    "planned": "runs on a real repository: each is planned and its task queued, so the "
    "driver's open state grows by one run per request",
    "unplannable": "runs on a path that is not a repository: each fails at planning, so "
    "the driver's open state stays small and the gateway's own cost shows",
}


def _git(repo: Path, *args: str) -> None:
    subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True)


def _repo(path: Path) -> Path:
    path.mkdir()
    _git(path, "init", "-q", "-b", "main")
    (path / "app.py").write_text("VERSION = 1\n")
    _git(path, "add", "-A")
    _git(path, "-c", "user.name=bench", "-c", "user.email=bench@local", "commit", "-qm", "base")
    return path


def _summary(name: str, seconds: list[float]) -> dict[str, Any]:
    ordered = sorted(seconds)
    p99 = ordered[max(0, int(len(ordered) * 0.99) - 1)] * 1000
    return {
        "measure": name,
        "samples": len(ordered),
        "p50_ms": round(statistics.median(ordered) * 1000, 3),
        "p99_ms": round(p99, 3),
        "max_ms": round(ordered[-1] * 1000, 3),
        "target_p99_ms": TARGETS_MS[name],
        "met": p99 < TARGETS_MS[name],
    }


async def _submissions(http: httpx.AsyncClient, repo: Path, count: int, prefix: str) -> list[float]:
    plan = [{"task_id": "t1", "title": "t1", "prompt": "true", "executor": "shell"}]
    latencies = []
    for index in range(count):
        body = {"goal": "bench", "repo": str(repo), "plan": plan, "run_id": f"{prefix}-{index}"}
        start = time.perf_counter()
        answer = await http.post("/runs", json=body)
        latencies.append(time.perf_counter() - start)
        if answer.status_code != 202:
            raise RuntimeError(f"submission {index} answered {answer.status_code}: {answer.text}")
    return latencies


async def _status(url: str, nats_url: str, token: str, count: int) -> list[float]:
    latencies = []
    async with open_jetstream_log(nats_url, name="bench-reporter") as (_, log):
        start_seq = await log.last_seq() + 1
        ws_url = url.replace("http://", "ws://") + f"/runs/bench-0/events?from_seq={start_seq}"
        headers = {"Authorization": f"Bearer {token}"}
        async with connect(ws_url, additional_headers=headers, open_timeout=30) as ws:
            for index in range(count):
                event = TaskProgress(run_id="bench-0", task_id="t1", attempt=1, kind="text",
                                     text=f"progress {index}")  # fmt: skip
                envelope = wrap_event(event, event_id=f"bench-status-{index}",
                                      now=datetime.now(UTC))  # fmt: skip
                start = time.perf_counter()
                await log.append(envelope)
                with anyio.fail_after(30):
                    while True:
                        got = msgspec.json.decode(await ws.recv())
                        if got["envelope"]["id"] == envelope.id:
                            break
                latencies.append(time.perf_counter() - start)
    return latencies


def _start(argv: list[str], cwd: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
    # Started once, before anything is measured: a blocking spawn costs nothing here.
    return subprocess.Popen(
        argv, cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )


async def run(count: int, scenario: str) -> list[dict[str, Any]]:
    """Start the processes, measure both latencies, stop everything."""
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        repo = _repo(root / "repo") if scenario == "planned" else root / "not-a-repo"
        nats_port, gateway_port = _free_port(), _free_port()
        (root / "nats").mkdir()
        (root / "nats" / "nats.conf").write_text(render_server_config(nats_port, root / "nats"))
        nats_url = f"nats://127.0.0.1:{nats_port}"
        env = {**os.environ, "CLAUDECLUSTER_GATEWAY__JWT_SECRET": SECRET,
               "CLAUDECLUSTER_LOGGING__LEVEL": "WARNING"}  # fmt: skip
        server = [str(find_nats_server()), "-c", str(root / "nats" / "nats.conf")]
        processes = [_start(server, root, os.environ.copy())]
        try:
            await _wait_ready(nats_url)
            gateway = [CLI, "gateway", "--nats", nats_url, "--port", str(gateway_port)]
            for argv in ([CLI, "driver", "--nats", nats_url], gateway):
                processes.append(_start(argv, root, env))
            await _wait_ready(f"http://127.0.0.1:{gateway_port}")
            signer = TokenSigner("HS256", SECRET, "claudecluster", "claudecluster-gateway")
            token = signer.mint(subject="bench", scope="submit", ttl=timedelta(hours=1),
                                now=datetime.now(UTC))  # fmt: skip
            url = f"http://127.0.0.1:{gateway_port}"
            async with httpx.AsyncClient(
                base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=60
            ) as http:
                await _submissions(http, repo, 5, "bench")  # warm up: connections, caches
                submitted = await _submissions(http, repo, count, "run")
            status = await _status(url, nats_url, token, count)
        finally:
            for process in reversed(processes):
                process.terminate()
                try:
                    process.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()
    return [_summary("submission", submitted), _summary("status", status)]


def main() -> None:
    """Run the benchmark, print the table, write the JSON."""
    parser = argparse.ArgumentParser(description="Gateway submission and status latency")
    parser.add_argument("--requests", type=int, default=1000, help="samples per measure")
    parser.add_argument(
        "--scenario", choices=sorted(SCENARIOS), default="unplannable",
        help="planned: runs on a real repository, planned and queued (the driver's open "
        "state grows with every run); unplannable: a path that is not a repository, so "
        "each run fails at planning and the driver's open state stays small",
    )  # fmt: skip
    args = parser.parse_args()
    rows = anyio.run(run, args.requests, args.scenario)
    print(f"{'measure':<11} {'samples':>7} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8} "
          f"{'target':>7}  met")  # fmt: skip
    for row in rows:
        print(f"{row['measure']:<11} {row['samples']:>7} {row['p50_ms']:>8} {row['p99_ms']:>8} "
              f"{row['max_ms']:>8} {row['target_p99_ms']:>7}  {row['met']}")  # fmt: skip
    RESULTS.mkdir(exist_ok=True)
    load = os.getloadavg()
    target = RESULTS / "gateway_latency.json"
    scenarios = json.loads(target.read_text())["scenarios"] if target.is_file() else {}
    scenarios[args.scenario] = {
        "description": SCENARIOS[args.scenario],
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "load_avg_1m_at_end": round(load[0], 2),
        },
        "results": rows,
    }
    report = {
        "benchmark": "gateway_latency",
        "setup": "nats-server, driver and gateway as separate processes on one machine; "
        "sequential requests from one client; no workers",
        "scenarios": scenarios,
    }
    target.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
