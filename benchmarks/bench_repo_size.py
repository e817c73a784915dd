"""Repository size: does a task's cost grow with the repository's history?

For each size the benchmark generates a repository with git fast-import (commits of random
blobs, so the pack does not compress away), starts a fresh private cluster (a new
nats-server, a driver and ``--workers`` in-process workers with one slot each and an
empty repository cache: a fresh host), and measures side by side, on the same machine
and the same repository:

* **first task on a fresh host**: the first workspace preparation (which brings the
  history into the host's cache: the driver's segment through the object store and a
  fetch) against ``git clone --mirror --no-local`` of the repository (git packing and
  indexing the same history, without NATS), and a local ``git clone --mirror`` (which
  hardlinks the object files; no transfer at all);
* **per-task workspace preparation p50** over the tasks of a run of 8 and of 32 no-op
  tasks (the cache already filled), against ``git worktree add`` of the same commit;
* **whole-run wall** for 8 and 32 no-op tasks against a naive worktree runner (per task:
  ``git worktree add``, the shell command, ``git status``, ``git worktree remove``,
  ``--workers`` at once);
* **RSS** of this process (the driver and every worker live in it) sampled every 50 ms
  while the first run moves the history;
* on the smallest size only: **no-op throughput** and **added latency p50** through the
  whole path with the stage split of bench_overhead.py, and the **process starts** per
  no-op task (every process the driver's and workers' code starts, counted).

    .venv/bin/python benchmarks/bench_repo_size.py [--quick] [--full]

``--quick`` is the smoke test (a ~2 MB repository, few tasks); the default runs ~20 MB
and ~200 MB; ``--full`` adds ~2 GB, and ``--sizes 2GB`` runs that one alone. At 2 GB only
the first task on a fresh host is measured (one worker, one no-op task, beside the two
``clone --mirror`` baselines), with the RSS while the history moves: the worktree
baselines and the 8- and 32-task runs would write a 2 GB tree per task and per naive
worktree, about 100 GB in all. Prints a table and writes benchmarks/results/repo_size.json.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import anyio
import psutil
from _harness import open_private_cluster, percentile, print_table, submit_and_wait, write_results
from bench_overhead import noop_plan, whole_path

from claudecluster.actors.driver import DriverConfig
from claudecluster.events.model import RunCompleted, SubmitRun
from claudecluster.runtime.connection import Connection
from claudecluster.runtime.driver import Driver, DriverOptions
from claudecluster.runtime.worker import Worker, WorkerConfig

_MB = 1 << 20

#: name -> (commits, bytes of the random blob each commit adds)
SIZES: dict[str, tuple[int, int]] = {
    "2MB": (20, 100_000),
    "20MB": (100, 200_000),
    "200MB": (1000, 200_000),
    "2GB": (2000, 1_000_000),
}


def generate(path: Path, commits: int, blob_bytes: int) -> tuple[Path, int]:
    """A repository of ``commits`` commits of one random blob each; returns it and its
    pack size in bytes."""
    path.mkdir(parents=True)
    subprocess.run(["git", "-C", str(path), "init", "-q", "-b", "main"], check=True)
    importer = subprocess.Popen(
        ["git", "-C", str(path), "fast-import", "--quiet"], stdin=subprocess.PIPE
    )
    assert importer.stdin is not None
    for n in range(1, commits + 1):
        message = f"commit {n}\n".encode()
        head = b"commit refs/heads/main\n"
        head += b"committer Gen <gen@example.com> %d +0000\n" % (1_700_000_000 + n)
        head += b"data %d\n%s" % (len(message), message)
        if n == 1:
            head += b"M 100644 inline README.md\ndata 10\ngenerated\n\n"
        blob = os.urandom(blob_bytes)
        importer.stdin.write(head + b"M 100644 inline blobs/%05d.bin\ndata %d\n" % (n, len(blob)))
        importer.stdin.write(blob + b"\n")
    importer.stdin.close()
    if importer.wait() != 0:
        raise RuntimeError("git fast-import failed")
    subprocess.run(["git", "-C", str(path), "checkout", "-q", "main"], check=True)
    counted = subprocess.run(["git", "-C", str(path), "count-objects", "-v"],
                             capture_output=True, text=True, check=True).stdout  # fmt: skip
    fields = dict(line.split(": ", 1) for line in counted.splitlines())
    return path, (int(fields["size"]) + int(fields["size-pack"])) * 1024


def timed(command: list[str]) -> float:
    """Seconds one command took."""
    started = time.perf_counter()
    subprocess.run(command, check=True, capture_output=True)
    return time.perf_counter() - started


def git_baselines(repo: Path, tmp: Path, tasks: int, parallel: int) -> dict[str, float]:
    """What plain git does with the same repository, timed here."""
    no_local = timed(["git", "clone", "-q", "--mirror", "--no-local", str(repo), str(tmp / "m1")])
    local = timed(["git", "clone", "-q", "--mirror", str(repo), str(tmp / "m2")])
    adds = []
    for n in range(8):
        where = tmp / f"wt-{n}"
        adds.append(timed(["git", "-C", str(repo), "worktree", "add", "-q", "--detach",
                           str(where), "HEAD"]))  # fmt: skip
        subprocess.run(["git", "-C", str(repo), "worktree", "remove", "--force", str(where)],
                       check=True)  # fmt: skip
    return {
        "clone_mirror_no_local_s": no_local,
        "clone_mirror_local_s": local,
        "worktree_add_p50_s": statistics.median(adds),
        f"naive_runner_{tasks}_s": naive_runner(repo, tmp, tasks, parallel),
    }


def naive_runner(repo: Path, tmp: Path, tasks: int, parallel: int) -> float:
    """Wall seconds for ``tasks`` no-op tasks, ``parallel`` at once, each in a worktree.

    git 2.39's worktree commands race with each other ("failed to read
    .git/worktrees/<name>/commondir" while another is being removed), so registering and
    removing a worktree take a lock (``flock``); the checkout, nearly all of the cost,
    runs outside it, ``parallel`` at once.
    """
    script = (
        'set -e; w="$1"; l="$0/.git/naive.lock"; '
        'flock "$l" git -C "$0" worktree add -q --no-checkout --detach "$w" HEAD; '
        'git -C "$w" reset -q --hard; '
        '(cd "$w" && true && git status --porcelain >/dev/null); '
        'flock "$l" git -C "$0" worktree remove --force "$w"'
    )
    started = time.perf_counter()
    subprocess.run(
        ["xargs", "-P", str(parallel), "-n", "1", "bash", "-c", script, str(repo)],
        input="".join(f"{tmp}/naive-{n}\n" for n in range(tasks)).encode(),
        check=True,
    )
    return time.perf_counter() - started


class Preparations:
    """Times every workspace preparation of the benchmark's workers."""

    def __init__(self) -> None:
        self.samples: list[tuple[float, float]] = []  # (started, seconds)
        #: the first preparation of the worker whose cache the history was fetched into
        self.filler: float | None = None

    def wrap(self, worker: Worker) -> None:
        prepare: Callable[..., Awaitable[Path]] = worker.preparation.workspace

        async def timed_prepare(*args: Any) -> Path:
            started = time.perf_counter()
            moved = worker.preparation.transferred.bytes
            try:
                return await prepare(*args)
            finally:
                seconds = time.perf_counter() - started
                self.samples.append((started, seconds))
                if self.filler is None and worker.preparation.transferred.bytes > moved:
                    self.filler = seconds

        worker.preparation.workspace = timed_prepare  # type: ignore[method-assign]

    def since(self, mark: float) -> list[float]:
        return [seconds for started, seconds in self.samples if started >= mark]


class ProcessCounter:
    """Counts the processes the actors start: every ``subprocess.Popen``, which anyio's
    ways of starting one go through and so does a worker thread's ``subprocess.run`` (the
    commit step's ``git status``)."""

    def __init__(self) -> None:
        self.count = 0
        self._init = subprocess.Popen.__init__
        self._lock = threading.Lock()

    def __enter__(self) -> ProcessCounter:
        init = self._init

        def counted(popen: subprocess.Popen[Any], args: Any, *rest: Any, **kwargs: Any) -> None:
            # The fallback reaper is a process and starts one more: the command under it
            # (setpriv, the guard shell, nice and bubblewrap exec one into the other).
            with self._lock:
                self.count += 2 if "reaper.py" in " ".join(map(str, args)) else 1
            init(popen, args, *rest, **kwargs)

        subprocess.Popen.__init__ = counted  # type: ignore[assignment,method-assign]
        return self

    def __exit__(self, *exc: object) -> None:
        subprocess.Popen.__init__ = self._init  # type: ignore[method-assign]


async def peak_rss(stop: anyio.Event, into: list[int]) -> None:
    """The largest RSS of this process so far in ``into[0]``, sampled every 50 ms."""
    me = psutil.Process()
    while not stop.is_set():
        into[0] = max(into[0], me.memory_info().rss)
        with anyio.move_on_after(0.05):
            await stop.wait()


async def measure_first_task(name: str, tmp: Path) -> dict[str, Any]:
    """At 2 GB: the first task on a fresh host and the RSS meanwhile, nothing else."""
    commits, blob = SIZES[name]
    repo, pack = await anyio.to_thread.run_sync(generate, tmp / "repo", commits, blob)
    row: dict[str, Any] = {"size": name, "commits": commits, "pack_mb": round(pack / _MB, 1)}
    row["clone_mirror_no_local_s"] = await anyio.to_thread.run_sync(
        timed, ["git", "clone", "-q", "--mirror", "--no-local", str(repo), str(tmp / "m1")]
    )
    await anyio.to_thread.run_sync(shutil.rmtree, tmp / "m1")
    row["clone_mirror_local_s"] = await anyio.to_thread.run_sync(
        timed, ["git", "clone", "-q", "--mirror", str(repo), str(tmp / "m2")]
    )
    timings = Preparations()
    async with open_private_cluster(tmp / "cluster") as conn:
        driver = Driver(
            conn.log, conn.client.jetstream(),
            DriverOptions(config=DriverConfig(max_running=16), work_dir=tmp / "d"),
        )  # fmt: skip
        worker = Worker(
            WorkerConfig(worker_id="bench-0", workspace_root=tmp / "ws", slots=1),
            conn.log,
            conn.client,
        )
        timings.wrap(worker)
        async with anyio.create_task_group() as group:
            await group.start(driver.run)
            await group.start(worker.serve)
            stop, rss = anyio.Event(), [psutil.Process().memory_info().rss]
            row["rss_before_mb"] = round(rss[0] / _MB, 1)
            group.start_soon(peak_rss, stop, rss)
            row["wall_s_1"] = await _run(conn, repo, 1, f"{name.lower()}-1")
            stop.set()
            row["first_task_s"] = timings.filler or max(timings.since(0.0))
            row["rss_peak_mb_first_run"] = round(rss[0] / _MB, 1)
            row["history_moved_mb"] = round(worker.preparation.transferred.bytes / _MB, 1)
            worker.stop("benchmark done")
            group.cancel_scope.cancel()
    return row


async def measure_size(name: str, args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    """Every figure for one repository size."""
    if name == "2GB":
        return await measure_first_task(name, tmp)
    commits, blob = SIZES[name]
    repo, pack = await anyio.to_thread.run_sync(generate, tmp / "repo", commits, blob)
    row: dict[str, Any] = {"size": name, "commits": commits, "pack_mb": round(pack / _MB, 1)}
    for tasks in args.task_counts:
        base = await anyio.to_thread.run_sync(
            git_baselines, repo, tmp / f"git-{tasks}", tasks, args.workers
        )
        row.update({k: v for k, v in base.items() if k.startswith("naive")})
        row.setdefault("worktree_add_p50_s", base["worktree_add_p50_s"])
        row.setdefault("clone_mirror_no_local_s", base["clone_mirror_no_local_s"])
        row.setdefault("clone_mirror_local_s", base["clone_mirror_local_s"])
    timings = Preparations()
    async with open_private_cluster(tmp / "cluster") as conn:
        driver = Driver(
            conn.log, conn.client.jetstream(),
            DriverOptions(config=DriverConfig(max_running=256, starts_per_s=1e6,
                                              start_burst=1_000_000), work_dir=tmp / "d"),
        )  # fmt: skip
        workers = [
            Worker(
                WorkerConfig(worker_id=f"bench-{i}", workspace_root=tmp / "ws", slots=1),
                conn.log,
                conn.client,
            )
            for i in range(args.workers)
        ]
        for worker in workers:
            timings.wrap(worker)
        async with anyio.create_task_group() as group:
            await group.start(driver.run)
            for worker in workers:
                await group.start(worker.serve)
            for index, tasks in enumerate(args.task_counts):
                stop, rss = anyio.Event(), [psutil.Process().memory_info().rss]
                group.start_soon(peak_rss, stop, rss)
                mark = time.perf_counter()
                wall = await _run(conn, repo, tasks, f"{name.lower()}-{tasks}")
                stop.set()
                prepared = timings.since(mark)
                if index == 0:
                    # The task whose preparation brought the history (its fetch and its
                    # checkout), and the slowest of the first wave: the other slots wait
                    # for that fetch, then check out their trees at the same time.
                    row["first_task_s"] = timings.filler or max(prepared)
                    row["first_wave_slowest_s"] = max(prepared)
                    row["rss_peak_mb_first_run"] = round(rss[0] / _MB, 1)
                    row["history_moved_mb"] = round(
                        sum(w.preparation.transferred.bytes for w in workers) / _MB, 1
                    )
                    prepared = sorted(prepared)[:-1]  # the others waited on that fill
                row[f"prepare_p50_s_{tasks}"] = statistics.median(prepared)
                row[f"wall_s_{tasks}"] = wall
            if args.overhead:
                row["overhead"] = await _overhead(conn, repo, args, workers)
            for worker in workers:
                worker.stop("benchmark done")
            group.cancel_scope.cancel()
    return row


async def _run(conn: Connection, repo: Path, tasks: int, run_id: str) -> float:
    command = SubmitRun(run_id=run_id, goal="size", repo=str(repo), plan=noop_plan(tasks, "t"))
    timing = await submit_and_wait(conn, command, timeout_s=1800)
    if not isinstance(timing.end, RunCompleted) or timing.end.tasks_succeeded != tasks:
        raise RuntimeError(f"run {run_id} did not complete: {timing.end!r}")
    return timing.wall_s


async def _overhead(
    conn: Connection, repo: Path, args: argparse.Namespace, workers: list[Worker]
) -> dict[str, Any]:
    """Throughput, added latency with its stage split, and process starts per task."""
    wall, _, _ = await whole_path(
        conn, repo, noop_plan(args.throughput_tasks, "x"), "overhead-throughput",
        max_parallel=None, timeout_s=600,
    )  # fmt: skip
    with ProcessCounter() as counter:
        _, added, stages = await whole_path(
            conn, repo, noop_plan(args.latency_tasks, "l"), "overhead-latency",
            max_parallel=1, timeout_s=600,
        )  # fmt: skip
    ms = 1000.0
    return {
        "throughput_tasks": args.throughput_tasks,
        "tasks_per_s": round(args.throughput_tasks / wall, 1),
        "added_latency_p50_ms": round(percentile(added, 50) * ms, 2),
        "added_latency_p99_ms": round(percentile(added, 99) * ms, 2),
        "process_starts_per_task": round(counter.count / args.latency_tasks, 2),
        "latency_stage_p50_ms": {
            f"to {name}": round(percentile(values, 50) * ms, 2) for name, values in stages.items()
        },
    }


async def run(args: argparse.Namespace) -> dict[str, Any]:
    """Every size, one after the other, each in its own temporary directory."""
    rows = []
    for index, name in enumerate(args.sizes):
        with tempfile.TemporaryDirectory(prefix=f"bench-repo-{name}-") as tmp:
            args.overhead = index == 0 and name != "2GB"
            rows.append(await measure_size(name, args, Path(tmp)))
            print(f"{name} done", flush=True)
    return {"workers": args.workers, "task_counts": args.task_counts, "results": rows}


def _ratio(a: float, b: float) -> float:
    return round(a / b, 2) if b else 0.0


def main() -> None:
    """Run the benchmark, print the table, write the JSON."""
    parser = argparse.ArgumentParser(description="Task cost against repository size")
    parser.add_argument("--quick", action="store_true", help="a ~2 MB repository, few tasks")
    parser.add_argument("--full", action="store_true", help="add the ~2 GB repository")
    parser.add_argument("--workers", type=int, default=4, help="in-process workers")
    parser.add_argument(
        "--sizes", dest="only", nargs="+", choices=sorted(SIZES), help="only these sizes"
    )
    args = parser.parse_args()
    if args.quick:
        args.sizes, args.task_counts = ["2MB"], [4, 8]
        args.throughput_tasks, args.latency_tasks = 16, 4
    else:
        args.sizes = ["20MB", "200MB", *(["2GB"] if args.full else [])]
        args.task_counts = [8, 32]
        args.throughput_tasks, args.latency_tasks = 300, 50
    if args.only:
        args.sizes = args.only
    report = anyio.run(run, args)
    for row in report["results"]:
        small, big = args.task_counts
        if "wall_s_1" in row:  # the 2 GB row: the first task only
            row["ratios"] = {
                "first_task_over_clone_mirror_no_local": _ratio(
                    row["first_task_s"], row["clone_mirror_no_local_s"]
                ),
            }
            continue
        row["ratios"] = {
            "first_task_over_clone_mirror_no_local": _ratio(
                row["first_task_s"], row["clone_mirror_no_local_s"]
            ),
            "first_task_over_clone_mirror_local": _ratio(
                row["first_task_s"], row["clone_mirror_local_s"]
            ),
            f"prepare_p50_over_worktree_add_{small}": _ratio(
                row[f"prepare_p50_s_{small}"], row["worktree_add_p50_s"]
            ),
            f"prepare_p50_over_worktree_add_{big}": _ratio(
                row[f"prepare_p50_s_{big}"], row["worktree_add_p50_s"]
            ),
            f"wall_over_naive_{small}": _ratio(
                row[f"wall_s_{small}"], row[f"naive_runner_{small}_s"]
            ),
            f"wall_over_naive_{big}": _ratio(row[f"wall_s_{big}"], row[f"naive_runner_{big}_s"]),
        }
    ms = 1000.0
    table = []
    for row in report["results"]:
        small, big = args.task_counts
        ratios = row["ratios"]
        if "wall_s_1" in row:
            table.append([
                row["size"], row["pack_mb"],
                f"{row['first_task_s']:.2f} / {row['clone_mirror_no_local_s']:.2f}",
                "-", "-", "-", "-", row["rss_peak_mb_first_run"],
            ])  # fmt: skip
            continue
        table.append([
            row["size"], row["pack_mb"],
            f"{row['first_task_s']:.2f} / {row['clone_mirror_no_local_s']:.2f}",
            f"{row[f'prepare_p50_s_{big}'] * ms:.0f} / {row['worktree_add_p50_s'] * ms:.0f}",
            ratios[f"prepare_p50_over_worktree_add_{big}"],
            f"{row[f'wall_s_{small}']:.2f} / {row[f'naive_runner_{small}_s']:.2f}",
            f"{row[f'wall_s_{big}']:.2f} / {row[f'naive_runner_{big}_s']:.2f}",
            row["rss_peak_mb_first_run"],
        ])  # fmt: skip
    print_table(
        ["repo", "pack MB", "first task / clone --mirror s", "prepare p50 / worktree add ms",
         "ratio", f"wall {small} / naive s", f"wall {big} / naive s", "RSS peak MB"],
        table,
    )  # fmt: skip
    overhead = report["results"][0].get("overhead")
    if overhead is None:
        print(f"written {write_results('repo_size_2gb', report, quick=args.quick)}")
        return
    print_table(
        ["measure", "value"], [(k, v) for k, v in overhead.items() if k != "latency_stage_p50_ms"]
    )
    print_table(["stage (p50)", "ms"], list(overhead["latency_stage_p50_ms"].items()))
    print(f"written {write_results('repo_size', report, quick=args.quick)}")


if __name__ == "__main__":
    main()
