"""Workers on one host against workers over two hosts; driver failover; the chaos run.

Hosts are network namespaces on a bridge (tests/hosts/netns.py: needs root and
iproute2), each with its own directories and HOME; every client speaks TLS to NATS with
its own role's nkey, and repositories reach workers only as bundles through NATS.

1. **Spread.** The same plan (independent real Claude Code tasks on the scripted model,
   ``--latency`` seconds per turn) on N workers all on one host (with the NATS server and
   the driver), and on N workers split over two hosts (half moved to a second namespace
   host). Rounds alternate so machine noise hits both alike. Wall is submit to
   ``run.completed`` as the observer sees it; the ratio is two hosts over one.
2. **Failover.** Two drivers on the driver's host (one leads, one stands by), workers on
   two hosts, a chained plan; the leader is killed (-9) once some tasks merged. Failover
   is the kill to the first decision the standby records after its fence.
3. **Chaos.** The chaos run of tests/hosts/chaos.py (3 hosts, a 3-server cluster, 30
   tasks, a cut link, a killed host, a 20 s partition): its completion rate.

    sudo .venv/bin/python benchmarks/bench_multi_host.py [--quick] [--workers N] [--tasks T]

Prints a table and writes benchmarks/results/multi_host.json.
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import anyio

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/hosts: the harness

from _harness import print_table, write_results
from tests.faults.rig import FaultRig, open_rig
from tests.hosts.actors import start_driver, start_worker
from tests.hosts.chaos import run_chaos
from tests.hosts.cluster import open_host_cluster
from tests.hosts.netns import netns_available, open_hosts
from tests.support import make_repo

from claudecluster.events import (
    DriverLeaseTaken,
    MergeConflict,
    RunCompleted,
    RunPlanned,
    RunPolicy,
    TaskMerged,
    TaskQueued,
    TaskRetryScheduled,
    TaskSkipped,
    TaskSpec,
    WorkerJoined,
)
from claudecluster.scripted_model import Script, open_scripted_model

NAME = "multi_host"
ACK_WAIT_S = 5.0
#: generous: a shared 2-core machine is slow at times; a stuck run fails all the same
RUN_WITHIN_S = 600.0
DRIVER_DECISIONS = (TaskQueued, TaskMerged, MergeConflict, TaskSkipped, TaskRetryScheduled,
                    RunPlanned, RunCompleted)  # fmt: skip


def _script(names: list[str], latency_s: float) -> Script:
    def scripted(name: str) -> dict[str, Any]:
        tool = {"name": "Write", "input": {"file_path": f"{{cwd}}/{name}.txt", "content": "ok\n"}}
        return {
            "marker": f"[[task:{name}]]",
            "turns": [{"text": "Writing.", "tools": [tool]}, {"text": f"Wrote {name}.txt."}],
        }

    return Script.model_validate({"latency_s": latency_s, "tasks": [scripted(n) for n in names]})


def _tasks(prefix: str, count: int, chains: int | None = None) -> list[TaskSpec]:
    return [
        TaskSpec(
            task_id=f"{prefix}{i}",
            title=f"{prefix}{i}",
            prompt=f"[[task:{prefix}{i}]] write {prefix}{i}.txt",
            depends_on=((f"{prefix}{i - chains}",) if chains is not None and i >= chains else ()),
        )
        for i in range(count)
    ]


async def _wait_completed(rig: FaultRig, run_id: str) -> RunCompleted:
    events = await rig.wait_end(run_id, limit_s=RUN_WITHIN_S)
    done = next((e for e in events if isinstance(e, RunCompleted) and e.run_id == run_id), None)
    if done is None:
        raise RuntimeError(f"run {run_id} failed")
    return done


async def spread_round(
    where: Path, *, two_hosts: bool, workers: int, tasks: int, latency_s: float, round_: int
) -> dict[str, Any]:
    """One run of the plan on ``workers`` workers, on one host or split over two."""
    names = ["h1", "h2"] if two_hosts else ["h1"]
    plan = _tasks("t", tasks)
    async with open_hosts(where / "hosts", names) as network:
        h1 = network["h1"]
        repo = make_repo(h1.root / "repo", {"README.md": "bench\n"})
        async with (
            open_host_cluster(network, where / "operator", ["h1"]) as cluster,
            open_scripted_model(
                _script([t.task_id for t in plan], latency_s), host=network.gateway
            ) as model,
            open_rig(where, repo, cluster.url, credentials=cluster.credentials,
                     auth=cluster.auth("admin"), ack_wait_s=ACK_WAIT_S) as rig,
        ):  # fmt: skip
            api = {"ANTHROPIC_BASE_URL": model.url, "ANTHROPIC_API_KEY": "sk-scripted"}
            for n in range(workers):
                host = network[names[n % len(names)]]
                await start_worker(cluster, host, api, where / "logs" / f"w{n}.log",
                                   ack_wait_s=ACK_WAIT_S)  # fmt: skip
            await start_driver(cluster, h1, where / "logs" / "driver.log")
            # Every worker has joined before the clock starts: the layouts differ in where
            # the workers are, not in how long they took to start.
            await rig.watch.wait_for(
                lambda es: sum(isinstance(e, WorkerJoined) for e in es) >= workers,
                RUN_WITHIN_S,
            )
            started = time.perf_counter()
            await rig.submit("spread", plan, RunPolicy(backoff_base_s=0.2, backoff_max_s=2.0))
            done = await _wait_completed(rig, "spread")
            wall = time.perf_counter() - started
    return {
        "layout": "two hosts" if two_hosts else "one host",
        "round": round_,
        "wall_s": round(wall, 3),
        "tasks_succeeded": done.tasks_succeeded,
    }


async def failover_round(where: Path, *, workers: int, tasks: int, latency_s: float) -> float:
    """Kill -9 the leading driver mid-run; seconds to the standby's first decision."""
    plan = _tasks("f", tasks, chains=2)
    async with open_hosts(where / "hosts", ["dh", "w1", "w2"]) as network:
        dh = network["dh"]
        repo = make_repo(dh.root / "repo", {"README.md": "bench\n"})
        async with (
            open_host_cluster(network, where / "operator", ["dh"]) as cluster,
            open_scripted_model(
                _script([t.task_id for t in plan], latency_s), host=network.gateway
            ) as model,
            open_rig(where, repo, cluster.url, credentials=cluster.credentials,
                     auth=cluster.auth("admin"), ack_wait_s=ACK_WAIT_S) as rig,
        ):  # fmt: skip
            api = {"ANTHROPIC_BASE_URL": model.url, "ANTHROPIC_API_KEY": "sk-scripted"}
            for n in range(workers):
                host = network["w1" if n % 2 == 0 else "w2"]
                await start_worker(cluster, host, api, where / "logs" / f"w{n}.log",
                                   ack_wait_s=ACK_WAIT_S)  # fmt: skip
            leader = await start_driver(cluster, dh, where / "logs" / "d1.log", work_dir="d1")

            def lease_of(pid: int) -> int | None:
                found = None
                for i, e in enumerate(rig.watch.events):
                    if isinstance(e, DriverLeaseTaken) and e.pid == pid:
                        found = i
                return found

            await rig.watch.wait_for(lambda _: lease_of(leader.pid) is not None, RUN_WITHIN_S)
            standby = await start_driver(cluster, dh, where / "logs" / "d2.log", work_dir="d2")
            await rig.submit("fo", plan, RunPolicy(backoff_base_s=0.2, backoff_max_s=2.0))
            await rig.watch.wait_for(lambda _: rig.merged_count("fo") >= 2, RUN_WITHIN_S)
            struck = anyio.current_time()
            leader.send_signal(signal.SIGKILL)
            await rig.watch.wait_for(lambda _: lease_of(standby.pid) is not None, RUN_WITHIN_S)
            index = lease_of(standby.pid)
            assert index is not None
            await rig.watch.wait_for(
                lambda es: any(isinstance(e, DRIVER_DECISIONS) for e in es[index + 1 :]),
                RUN_WITHIN_S,
            )
            decision = next(
                i for i in range(index + 1, len(rig.watch.events))
                if isinstance(rig.watch.events[i], DRIVER_DECISIONS)
            )  # fmt: skip
            failover = rig.watch.seen_at[decision] - struck
            await _wait_completed(rig, "fo")
    return failover


async def main(args: argparse.Namespace) -> None:
    reason = netns_available()
    if reason is not None:
        raise SystemExit(f"bench_multi_host needs network namespaces: {reason}")
    rounds: list[dict[str, Any]] = []
    failovers: list[float] = []
    chaos: dict[str, Any] | None = None
    with tempfile.TemporaryDirectory(prefix="bench-multi-host-") as scratch:
        base = Path(scratch)
        count = 0
        for round_ in range(args.rounds):
            for two_hosts in (False, True) if round_ % 2 == 0 else (True, False):
                count += 1
                where = base / f"spread-{count}"
                (where / "logs").mkdir(parents=True)
                rounds.append(await spread_round(
                    where, two_hosts=two_hosts, workers=args.workers, tasks=args.tasks,
                    latency_s=args.latency, round_=round_,
                ))  # fmt: skip
                print(rounds[-1], flush=True)
        for n in range(args.failovers):
            where = base / f"failover-{n}"
            (where / "logs").mkdir(parents=True)
            failovers.append(await failover_round(
                where, workers=args.workers, tasks=max(6, args.tasks // 2),
                latency_s=args.latency,
            ))  # fmt: skip
            print(f"failover {failovers[-1]:.2f}s", flush=True)
        if args.chaos:
            where = base / "chaos"
            where.mkdir()
            outcome = await run_chaos(where)
            chaos = {
                "tasks": len(outcome.verdict.planned),
                "completion_rate": outcome.verdict.completion_rate,
                "attempts_started": sum(outcome.verdict.started.values()),
                "lost_events": len(outcome.lost),
                "driver_survived": outcome.driver_exit is None,
            }
    walls = {
        layout: statistics.median(r["wall_s"] for r in rounds if r["layout"] == layout)
        for layout in ("one host", "two hosts")
    }
    ratio = walls["two hosts"] / walls["one host"]
    print_table(
        ["figure", "value", "target"],
        [
            ["wall, one host (median s)", f"{walls['one host']:.2f}", ""],
            ["wall, two hosts (median s)", f"{walls['two hosts']:.2f}", ""],
            ["wall ratio two/one", f"{ratio:.3f}", "<= 1.1"],
            ["driver failover (max s)", f"{max(failovers):.2f}" if failovers else "-", "< 10"],
            ["chaos completion rate",
             f"{chaos['completion_rate']:.0%}" if chaos else "not run", "100%"],
        ],
    )  # fmt: skip
    path = write_results(
        NAME,
        {
            "workers": args.workers,
            "tasks": args.tasks,
            "model_latency_s": args.latency,
            "rounds": rounds,
            "wall_median_s": walls,
            "wall_ratio": round(ratio, 4),
            "failover_s": [round(f, 3) for f in failovers],
            "chaos": chaos,
            "targets": {"wall_ratio": 1.1, "failover_s": 10.0, "chaos_completion_rate": 1.0},
        },
        quick=args.quick,
    )
    print(f"wrote {path}")


def _arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke size: 2 workers, 4 tasks")
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--tasks", type=int, default=16)
    parser.add_argument("--latency", type=float, default=1.0, help="model seconds per turn")
    parser.add_argument("--rounds", type=int, default=2, help="rounds of each layout")
    parser.add_argument("--failovers", type=int, default=2)
    parser.add_argument("--no-chaos", dest="chaos", action="store_false")
    args = parser.parse_args()
    if args.quick:
        args.workers, args.tasks, args.rounds, args.failovers, args.chaos = 2, 4, 1, 1, False
        args.latency = 0.3
    return args


if __name__ == "__main__":
    if os.geteuid() != 0:
        raise SystemExit("bench_multi_host needs root (network namespaces)")
    anyio.run(main, _arguments())
