"""The merge queue: verify in batches against verify-each-in-turn, and colliding tasks.

Part 1 (verify): 20 independent shell tasks and a verify command that takes
``--verify-seconds`` (30 by default; it sleeps, then checks that no ``bad.txt`` exists).
One task deliberately writes ``bad.txt``. The same plan runs twice at once in one
cluster, side by side: with ``merge_batch: 1`` (every result merged and verified in
turn, the old behaviour) and with the batched queue (``merge_batch: 20``,
``verify_parallel: 4``). Each run must find and reject the bad task and merge the other
19; the table shows each wall time, its verify runs, and the ratio.

Part 2 (collisions): 16 shell tasks in 8 pairs, the two of a pair writing the same line
of the same file (written first, then ``--task-seconds`` of work). Run once with no
prediction (workers report no touched files; every pair collides at merge and a
resolution attempt follows), once with the files declared in the plan (the driver orders
each pair at plan time), side by side in one cluster, and then once with live prediction
(workers report the files attempts touch; the driver predicts each collision while the
pair runs, with the ``let_both`` action) in a second cluster of the same size, and once
more with live prediction under ``on_collision: restart_later`` (the later attempt of a
predicted pair is stopped and re-run on top of the other's merge) in a third. The table
shows the conflicts, the resolution attempts, the attempts preempted, the task-seconds
of attempts whose work was thrown away (wasted: results that conflicted, and preempted
attempts up to their stop), the wall time, and for live prediction how many collisions
were predicted and how many came true.

    .venv/bin/python benchmarks/bench_merge_queue.py [--quick] [--verify-seconds S]
        [--task-seconds S] [--only collisions]

Prints two tables and writes benchmarks/results/merge_queue.json (with ``--only
collisions``, the verify rows already in that file are kept).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import anyio
from _harness import RESULTS, open_private_cluster, print_table, sample_repo, write_results

from claudecluster.actors.driver import DriverConfig
from claudecluster.events.model import (
    CollisionPredicted,
    CollisionSettled,
    MergeConflict,
    RunCompleted,
    RunFailed,
    RunPolicy,
    SubmitRun,
    TaskFailed,
    TaskMerged,
    TaskPreempted,
    TaskQueued,
    TaskSpec,
    TaskStarted,
    TaskSucceeded,
)
from claudecluster.executors.confinement import Confinement
from claudecluster.runtime.connection import Connection
from claudecluster.runtime.driver import Driver, DriverOptions
from claudecluster.runtime.local_workers import open_local_workers
from claudecluster.runtime.worker import WorkerConfig
from claudecluster.transport.base import read_all
from claudecluster.transport.commands import publish_command

_BAD = 13  # the task that breaks the verify command
_RESOLVE = (
    "if grep -q '^<<<<<<<' {file}; then grep -v '^[<=>]\\{{7\\}}' {file} > t && mv t {file}; "
    "else echo {name} > {file}; sleep {s}; fi"
)


def verify_plan(tasks: int) -> tuple[TaskSpec, ...]:
    """Independent tasks each writing a file; one also writes bad.txt."""
    return tuple(
        TaskSpec(
            task_id=f"t{i:02d}",
            title=f"task {i}",
            executor="shell",
            prompt=f"echo {i} > f{i:02d}.txt" + (" && echo x > bad.txt" if i == _BAD else ""),
        )
        for i in range(tasks)
    )


def collision_plan(pairs: int, seconds: float, *, declared: bool) -> tuple[TaskSpec, ...]:
    """Two tasks per file writing the same line; with ``declared`` their files are named."""
    return tuple(
        TaskSpec(
            task_id=f"p{p}-{side}",
            title=f"pair {p} {side}",
            executor="shell",
            prompt=_RESOLVE.format(file=f"pair{p}.txt", s=seconds, name=f"{side}{p}"),
            files=(f"pair{p}.txt",) if declared else (),
        )
        for p in range(pairs)
        for side in ("a", "b")
    )


async def _submit(conn: Connection, command: SubmitRun) -> float:
    await publish_command(
        conn.client.jetstream(), command, command_id=f"submit-{command.run_id}",
        now=datetime.now(UTC),
    )  # fmt: skip
    return time.perf_counter()


async def _wait_ends(
    conn: Connection, run_ids: Sequence[str], timeout_s: float
) -> dict[str, float]:
    """When (perf_counter) each run's end was read back."""
    ended: dict[str, float] = {}
    with anyio.fail_after(timeout_s):
        async with conn.log.open_reader(follow=True) as events:
            async for stored in events:
                event = stored.envelope.payload
                if isinstance(event, RunCompleted | RunFailed) and event.run_id in run_ids:
                    ended[event.run_id] = time.perf_counter()
                    if len(ended) == len(run_ids):
                        return ended
    raise TimeoutError("the runs never ended")


async def _cluster_runs(
    where: Path,
    commands: Sequence[SubmitRun],
    workers: int,
    timeout_s: float,
    touched_every_s: float = 0.0,
) -> tuple[dict[str, float], list[Any]]:
    """Run the commands at once on one cluster; returns each wall time and the events.

    Workers report touched files every ``touched_every_s`` seconds (0: never, so the
    driver predicts nothing). When attempts started and were preempted is noted in ``_AT``.
    """
    async with open_private_cluster(where) as conn:
        template = WorkerConfig(
            worker_id="bench", workspace_root=where / "workspaces", heartbeat_s=2.0,
            touched_every_s=touched_every_s,
        )  # fmt: skip
        driver = Driver(
            conn.log, conn.client.jetstream(),
            # Verify commands count their runs in a file outside the worktree, which a
            # confined verify may not write: this measures the queue, not the sandbox.
            DriverOptions(config=DriverConfig(max_running=64), work_dir=where / "driver",
                          tick_s=0.2, confinement=Confinement.unconfined()),
        )  # fmt: skip
        async with (
            open_local_workers(workers, template, conn.log, conn.client),
            anyio.create_task_group() as group,
        ):
            await group.start(driver.run)
            started = {c.run_id: await _submit(conn, c) for c in commands}
            ended = await _wait_ends(conn, [c.run_id for c in commands], timeout_s)
            group.cancel_scope.cancel()
        stored = await read_all(conn.log)
        events = [s.envelope.payload for s in stored]
    for s in stored:
        payload = s.envelope.payload
        if isinstance(payload, TaskStarted | TaskPreempted):
            _AT[(type(payload).__name__, payload.run_id, payload.task_id, payload.attempt)] = (
                s.envelope.occurred_at
            )
    return {r: ended[r] - started[r] for r in started}, events


#: (event type, run, task, attempt) -> when it was recorded, for TaskStarted and
#: TaskPreempted: how long a preempted attempt ran before it was stopped.
_AT: dict[tuple[str, str, str, int], datetime] = {}


def _preempted_seconds(events: list[Any], run_id: str) -> float:
    """Task-seconds of the run's preempted attempts, from their start to their stop."""
    total = 0.0
    for stop in _of(events, run_id, TaskPreempted):
        started = _AT.get(("TaskStarted", run_id, stop.task_id, stop.attempt))
        stopped = _AT.get(("TaskPreempted", run_id, stop.task_id, stop.attempt))
        if started is not None and stopped is not None:
            total += max((stopped - started).total_seconds(), 0.0)
    return total


def _of(events: list[Any], run_id: str, kind: type[Any]) -> list[Any]:
    return [e for e in events if isinstance(e, kind) and e.run_id == run_id]


async def verify_part(tmp: Path, tasks: int, seconds: float) -> list[dict[str, Any]]:
    """Part 1: verify-each-in-turn and the batched queue, side by side."""
    repo = await sample_repo(tmp / "verify-repo")
    counters = tmp / "verify-runs"
    counters.mkdir()
    configs = {"each_in_turn": 1, "batched": 20}  # merge_batch
    commands = [
        SubmitRun(
            run_id=name.replace("_", "-"),
            goal=name,
            repo=str(repo),
            plan=verify_plan(tasks),
            policy=RunPolicy(
                verify_command=f"echo x >> {counters / name}; sleep {seconds}; test ! -e bad.txt",
                max_attempts=1,
                verify_parallel=4,
                merge_batch=batch,
            ),
        )
        for name, batch in configs.items()
    ]
    timeout = seconds * tasks * 2 + 300
    walls, events = await _cluster_runs(tmp / "verify", commands, workers=10, timeout_s=timeout)
    rows: list[dict[str, Any]] = []
    for name in configs:
        run_id = name.replace("_", "-")
        rejected = [e.task_id for e in _of(events, run_id, TaskFailed)]
        rows.append(
            {
                "queue": name,
                "wall_s": round(walls[run_id], 2),
                "verify_runs": len((counters / name).read_text().split()),
                "merged": len(_of(events, run_id, TaskMerged)),
                "rejected": rejected,
            }
        )
    serial = rows[0]["wall_s"]
    for row in rows:
        row["wall_over_each_in_turn"] = round(row["wall_s"] / serial, 3)
    return rows


def _attempt_seconds(events: list[Any], run_id: str) -> dict[tuple[str, int], float]:
    started = {(e.task_id, e.attempt): e for e in _of(events, run_id, TaskStarted)}
    seconds: dict[tuple[str, int], float] = {}
    for done in _of(events, run_id, TaskSucceeded):
        if (done.task_id, done.attempt) in started:
            seconds[(done.task_id, done.attempt)] = done.duration_ms / 1000
    return seconds


async def collision_part(tmp: Path, pairs: int, seconds: float) -> list[dict[str, Any]]:
    """Part 2: colliding pairs with no prediction, with files declared in the plan (side
    by side), then with live prediction (workers reporting touched files)."""
    repo = await sample_repo(tmp / "collide-repo", {f"pair{p}.txt": "base\n" for p in range(pairs)})
    configs = {"no_prediction": False, "declared_files": True}
    commands = [
        SubmitRun(
            run_id=name.replace("_", "-"),
            goal=name,
            repo=str(repo),
            plan=collision_plan(pairs, seconds, declared=declared),
        )
        for name, declared in configs.items()
    ]
    timeout = seconds * pairs * 4 + 300
    walls, events = await _cluster_runs(
        tmp / "collide", commands, workers=2 * pairs, timeout_s=timeout
    )
    live = SubmitRun(
        run_id="live-prediction", goal="live_prediction", repo=str(repo),
        plan=collision_plan(pairs, seconds, declared=False),
    )  # fmt: skip
    live_walls, live_events = await _cluster_runs(
        tmp / "collide-live", [live], workers=2 * pairs, timeout_s=timeout,
        touched_every_s=min(1.0, seconds / 3),
    )  # fmt: skip
    walls |= live_walls
    events += live_events
    restart = SubmitRun(
        run_id="restart-later", goal="restart_later", repo=str(repo),
        plan=collision_plan(pairs, seconds, declared=False),
        policy=RunPolicy(on_collision="restart_later"),
    )  # fmt: skip
    restart_walls, restart_events = await _cluster_runs(
        tmp / "collide-restart", [restart], workers=2 * pairs, timeout_s=timeout,
        touched_every_s=min(1.0, seconds / 3),
    )  # fmt: skip
    walls |= restart_walls
    events += restart_events
    rows = []
    for name in [*configs, "live_prediction", "restart_later"]:
        run_id = name.replace("_", "-")
        seconds_of = _attempt_seconds(events, run_id)
        conflicts = _of(events, run_id, MergeConflict)
        resolutions = [q for q in _of(events, run_id, TaskQueued) if q.resolves_conflict]
        wasted = sum(seconds_of.get((c.task_id, c.attempt), 0.0) for c in conflicts)
        wasted += _preempted_seconds(events, run_id)
        resolving = sum(seconds_of.get((q.task_id, q.attempt), 0.0) for q in resolutions)
        rows.append(
            {
                "prediction": name,
                "wall_s": round(walls[run_id], 2),
                "conflicts": len(conflicts),
                "resolution_attempts": len(resolutions),
                "preempted": len(_of(events, run_id, TaskPreempted)),
                "wasted_task_s": round(wasted, 2),
                "resolution_task_s": round(resolving, 2),
                "merged": len(_of(events, run_id, TaskMerged)),
                "predicted": len(_of(events, run_id, CollisionPredicted)),
                "came_true": sum(e.came_true for e in _of(events, run_id, CollisionSettled)),
            }
        )
    return rows


async def run(args: argparse.Namespace) -> dict[str, Any]:
    """Both parts; returns the report."""
    with tempfile.TemporaryDirectory(prefix="bench-merge-queue-") as tmp_name:
        tmp = Path(tmp_name)
        if args.only == "collisions":
            kept = json.loads((RESULTS / "merge_queue.json").read_text(encoding="utf-8"))
            verify = kept["verify"]
            args.verify_seconds, args.tasks = kept["verify_seconds"], kept["tasks"]
            args.verify_measured_at = kept.get("verify_measured_at") or kept["machine"]["at"]
        else:
            verify = await verify_part(tmp, args.tasks, args.verify_seconds)
        print_table(list(verify[0]), [list(r.values()) for r in verify])
        collide = await collision_part(tmp, args.pairs, args.task_seconds)
        print_table(list(collide[0]), [list(r.values()) for r in collide])
    return {
        "verify_seconds": args.verify_seconds,
        "tasks": args.tasks,
        "bad_task": f"t{_BAD:02d}",
        "verify": verify,
        "verify_measured_at": getattr(args, "verify_measured_at", None),
        "pairs": args.pairs,
        "task_seconds": args.task_seconds,
        "collisions": collide,
        "live_prediction_action": "let_both",
        "live_prediction_note": (
            "measured in a second cluster after the other two rows; with let_both a "
            "prediction changes nothing about the run, so its conflicts match no_prediction"
        ),
        "restart_later_note": (
            "measured in a third cluster of the same size: live prediction with "
            "on_collision restart_later; a pair whose later attempt finished before the "
            "prediction or its preemption landed merges as with let_both"
        ),
    }


def main() -> None:
    """Run the benchmark, print the tables, write the JSON."""
    parser = argparse.ArgumentParser(description="The merge queue against verify-each")
    parser.add_argument("--quick", action="store_true", help="small and fast: a smoke test")
    parser.add_argument("--verify-seconds", type=float, default=None)
    parser.add_argument("--task-seconds", type=float, default=None)
    parser.add_argument(
        "--only", choices=["collisions"], default=None,
        help="run only the collision part; keep the verify rows of the checked-in results",
    )  # fmt: skip
    args = parser.parse_args()
    args.verify_seconds = args.verify_seconds if args.verify_seconds is not None else (
        0.2 if args.quick else 30.0
    )  # fmt: skip
    args.task_seconds = args.task_seconds if args.task_seconds is not None else (
        1.0 if args.quick else 3.0
    )  # fmt: skip
    args.tasks = 20 if not args.quick else 16
    args.pairs = 8 if not args.quick else 2
    report = anyio.run(run, args)
    print(f"written {write_results('merge_queue', report, quick=args.quick)}")


if __name__ == "__main__":
    main()
