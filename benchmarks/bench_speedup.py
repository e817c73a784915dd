"""Speedup: one plan run with 1, 2, 4, 8, 12 and 20 workers, and by ``xargs -P N claude -p``.

The plan has 24 tasks: 16 independent and 8 in four chains of two. Every task is two turns
of the real Claude Code CLI against the scripted model (write a file, then say done), each
turn answered after a fixed latency (3 s by default), so a task is ~6 s of model time and
the rest is our overhead and the CLI's own start-up. All configurations run one after the
other in this one process tree, on the same machine and load, each on a fresh embedded
nats-server and a fresh repository.

The critical-path bound is the best any scheduler can do with unit-length tasks:
``max(longest chain, ceil(tasks / workers))`` task lengths, so speedup <= tasks / that.

The naive way runs the same prompts with ``xargs -P N``: one line per independent task and
one per chain (its two tasks one after the other, so the order holds), each task in its own
``git worktree`` and its own HOME/CLAUDE_CONFIG_DIR, as our workers do. It merges nothing;
we merge every result into an integration branch, so the naive runner is a lower bound.

    .venv/bin/python benchmarks/bench_speedup.py [--quick] [--latency S] [--workers 1,2,4]
        [--no-naive]

Prints a table and writes benchmarks/results/speedup.json.
"""

from __future__ import annotations

import argparse
import math
import os
import shlex
import tempfile
import time
from pathlib import Path
from typing import Any

import anyio
from _harness import (
    bench_settings,
    open_private_cluster,
    print_table,
    sample_repo,
    submit_and_wait,
    write_results,
)

from claudecluster.events.model import RunCompleted, SubmitRun, TaskSpec
from claudecluster.executors.claude_code import bundled_claude
from claudecluster.runtime.local_cluster import open_local_services
from claudecluster.scripted_model import Script, open_scripted_model
from claudecluster.workspace.git import git

_TOOLS = "Read,Write,Edit,Bash,Glob,Grep"


def plan(independent: int, chains: int, chain_length: int) -> tuple[TaskSpec, ...]:
    """Independent tasks, then ``chains`` chains of ``chain_length`` (each waits on the last)."""
    tasks = [_task(f"ind-{i:02d}") for i in range(1, independent + 1)]
    for c in range(1, chains + 1):
        for step in range(1, chain_length + 1):
            deps = (f"chain{c}-{step - 1}",) if step > 1 else ()
            tasks.append(_task(f"chain{c}-{step}", *deps))
    return tuple(tasks)


def _task(task_id: str, *deps: str) -> TaskSpec:
    return TaskSpec(
        task_id=task_id, title=f"Write {task_id}.txt",
        prompt=f"[[bench:{task_id}]] write the file {task_id}.txt", depends_on=deps,
    )  # fmt: skip


def script(tasks: tuple[TaskSpec, ...], latency_s: float) -> Script:
    """Two turns per task: a Write of the task's own file (no conflicts), then done."""
    return Script.model_validate(
        {
            "latency_s": latency_s,
            "tasks": [
                {
                    "marker": f"[[bench:{t.task_id}]]",
                    "turns": [
                        {
                            "text": f"Writing {t.task_id}.txt.",
                            "tools": [{"name": "Write", "input": {
                                "file_path": "{cwd}/" + f"{t.task_id}.txt",
                                "content": f"{t.task_id}\n"}}],
                        },
                        {"text": "Done."},
                    ],
                }
                for t in tasks
            ],
        }
    )  # fmt: skip


def critical_path(tasks: tuple[TaskSpec, ...]) -> int:
    """The longest chain of dependencies, in tasks."""
    depth: dict[str, int] = {}
    for t in tasks:  # plan order is a topological order here
        depth[t.task_id] = 1 + max((depth[d] for d in t.depends_on), default=0)
    return max(depth.values())


async def ours(
    tmp: Path, tasks: tuple[TaskSpec, ...], workers: int, api: dict[str, str], timeout_s: float
) -> dict[str, Any]:
    """One run of the plan on our cluster with ``workers`` local workers."""
    where = tmp / f"ours-{workers}"
    repo = await sample_repo(where / "repo")
    async with open_private_cluster(where) as conn:
        settings = bench_settings(conn.url, where)
        async with open_local_services(
            conn, settings, workers=workers, project_dir=where, api_environment=api
        ):
            command = SubmitRun(
                run_id=f"speedup-{workers}", goal="speedup", repo=str(repo), plan=tasks
            )
            timing = await submit_and_wait(conn, command, timeout_s=timeout_s)
    end = timing.end
    if not isinstance(end, RunCompleted) or end.tasks_succeeded != len(tasks):
        raise RuntimeError(f"the run with {workers} workers did not complete: {end!r}")
    return {"wall_s": timing.wall_s, "task_time_s": end.task_time_s}


_RUNNER = """#!/bin/sh
# One xargs line: run each task id given, in order, each in its own worktree.
set -e
for id in "$@"; do
  git -C "$REPO" worktree add --quiet "$WT/$id" -b "naive/$id"
  mkdir -p "$SCRATCH/$id/home" "$SCRATCH/$id/config"
  cd "$WT/$id"
  HOME="$SCRATCH/$id/home" CLAUDE_CONFIG_DIR="$SCRATCH/$id/config" \\
    "$CLAUDE" -p "$(cat "$PROMPTS/$id")" --output-format stream-json --verbose \\
    --permission-mode acceptEdits --allowedTools "$TOOLS" > "$SCRATCH/$id/out.jsonl" 2>&1
done
"""


async def naive(
    tmp: Path, tasks: tuple[TaskSpec, ...], workers: int, api: dict[str, str], timeout_s: float
) -> dict[str, Any]:
    """The same tasks through ``xargs -P workers``; chains as one line each, first."""
    where = tmp / f"naive-{workers}"
    repo = await sample_repo(where / "repo")
    prompts = where / "prompts"
    prompts.mkdir()
    for t in tasks:
        (prompts / t.task_id).write_text(t.prompt, encoding="utf-8")
    runner = where / "runner.sh"
    runner.write_text(_RUNNER, encoding="utf-8")
    runner.chmod(0o755)
    chains: dict[str, list[str]] = {}
    lines: list[str] = []
    for t in tasks:
        if t.depends_on:
            chains[t.depends_on[0]].append(t.task_id)
            chains[t.task_id] = chains.pop(t.depends_on[0])
        elif t.task_id.startswith("chain"):
            chains[t.task_id] = [t.task_id]
        else:
            lines.append(t.task_id)
    lines = [" ".join(c) for c in chains.values()] + lines
    env = {k: v for k, v in os.environ.items() if k != "CLAUDECODE"}
    env.update(api)
    env.update(
        REPO=str(repo), WT=str(where / "wt"), SCRATCH=str(where / "scratch"),
        PROMPTS=str(prompts), CLAUDE=str(bundled_claude()), TOOLS=_TOOLS,
        CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC="1", CLAUDE_CODE_MAX_RETRIES="2",
    )  # fmt: skip
    command = f"xargs -P {workers} -L 1 {shlex.quote(str(runner))}"
    started = time.perf_counter()
    with anyio.fail_after(timeout_s):
        done = await anyio.run_process(
            ["sh", "-c", command], input="\n".join(lines).encode() + b"\n", env=env, check=False
        )
    wall = time.perf_counter() - started
    outputs = list((where / "scratch").glob("*/out.jsonl"))
    ok = sum(1 for o in outputs if '"is_error":false' in o.read_text(encoding="utf-8"))
    if done.returncode != 0 or ok != len(tasks):
        raise RuntimeError(
            f"naive run with {workers} failed: exit {done.returncode}, {ok}/{len(tasks)} ok, "
            f"{done.stderr.decode(errors='replace')[-500:]}"
        )
    await git(repo, "worktree", "prune")
    return {"wall_s": wall}


def _first_error(exc: BaseException) -> str:
    """The innermost first error of an exception group, as a line for the report."""
    while isinstance(exc, BaseExceptionGroup):
        exc = exc.exceptions[0]
    return f"{type(exc).__name__}: {exc}"


async def run(args: argparse.Namespace) -> dict[str, Any]:
    """Every configuration, side by side; returns the report."""
    tasks = plan(1, 1, 2) if args.quick else plan(16, 4, 2)
    counts = [int(w) for w in args.workers.split(",")]
    if 1 not in counts:
        counts.insert(0, 1)  # the baseline of every speedup
    cp = critical_path(tasks)
    timeout = len(tasks) * (2 * args.latency + 5) * 3 + 120
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="bench-speedup-") as tmp_name:
        tmp = Path(tmp_name)
        async with open_scripted_model(script(tasks, args.latency)) as model:
            api = {"ANTHROPIC_BASE_URL": model.url, "ANTHROPIC_API_KEY": "sk-bench-offline"}
            for n in counts:
                row: dict[str, Any] = {"workers": n}
                try:
                    row |= await ours(tmp, tasks, n, api, timeout)
                except Exception as exc:  # reported in the row; the others still run
                    row["error"] = _first_error(exc)
                    if n == 1:
                        raise  # no baseline, no speedups
                if not args.no_naive and (n in args.naive_at or not args.naive_at):
                    row["naive_wall_s"] = (await naive(tmp, tasks, n, api, timeout))["wall_s"]
                rows.append(row)
                print(f"  {n} workers: {row}", flush=True)
    base = rows[0]["wall_s"]
    for row in rows:
        n = row["workers"]
        if "error" in row:
            continue
        bound = len(tasks) / max(cp, math.ceil(len(tasks) / n))
        row["speedup"] = round(base / row["wall_s"], 2)
        row["efficiency"] = round(base / row["wall_s"] / n, 3)
        row["critical_path_bound_speedup"] = round(bound, 2)
        row["wall_s"] = round(row["wall_s"], 2)
        row["task_time_s"] = round(row["task_time_s"], 2)
        if "naive_wall_s" in row:
            row["ours_over_naive"] = round(row["wall_s"] / row["naive_wall_s"], 3)
            row["naive_wall_s"] = round(row["naive_wall_s"], 2)
    return {
        "latency_per_turn_s": args.latency,
        "turns_per_task": 2,
        "tasks": len(tasks),
        "independent": sum(1 for t in tasks if t.task_id.startswith("ind")),
        "critical_path_tasks": cp,
        "results": rows,
    }


def main() -> None:
    """Run the benchmark, print the table, write the JSON."""
    parser = argparse.ArgumentParser(description="Speedup with N workers vs xargs -P N")
    parser.add_argument("--quick", action="store_true", help="3 tasks, 1 and 2 workers")
    parser.add_argument("--latency", type=float, default=None, help="model s per turn")
    parser.add_argument("--workers", default=None, help="comma-separated worker counts")
    parser.add_argument("--no-naive", action="store_true", help="skip the xargs runner")
    parser.add_argument("--naive-at", default="", help="worker counts for xargs (default all)")
    args = parser.parse_args()
    args.latency = args.latency if args.latency is not None else (0.05 if args.quick else 3.0)
    args.workers = args.workers or ("1,2" if args.quick else "1,2,4,8,12,20")
    args.naive_at = [int(n) for n in args.naive_at.split(",") if n] or ([2] if args.quick else [])
    report = anyio.run(run, args)
    columns = ["workers", "wall_s", "speedup", "efficiency", "critical_path_bound_speedup",
               "naive_wall_s", "ours_over_naive"]  # fmt: skip
    print_table(columns, [[r.get(c, "-") for c in columns] for r in report["results"]])
    for row in report["results"]:
        if "error" in row:
            print(f"{row['workers']} workers failed: {row['error']}")
    print(f"written {write_results('speedup', report, quick=args.quick)}")


if __name__ == "__main__":
    main()
