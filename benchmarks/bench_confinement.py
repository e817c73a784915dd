"""What confinement costs per attempt: bubblewrap and a cgroup vs the bare reaper.

Runs the same attempts side by side, alternating, so machine noise hits every variant
alike: a shell task that does nothing (``true``: the pure start-and-end cost) and a
one-turn Claude Code attempt on the scripted model (what an agent's attempt pays on top
of its own start-up), each

* unconfined, without a cgroup (the reaper only: what attempts had before),
* unconfined, in a cgroup of its own,
* confined by bubblewrap, in a cgroup (the default).

    .venv/bin/python benchmarks/bench_confinement.py [--shell N] [--agent N] [--quick]

Prints a table (median and p90 wall time per attempt, and the ratio to the first
variant) and writes benchmarks/results/confinement.json.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

import anyio
from _harness import percentile, print_table, write_results

from claudecluster.events import TaskProgress, TaskRateLimited
from claudecluster.executors.base import AttemptRun, Executor
from claudecluster.executors.claude_code import ClaudeCodeExecutor
from claudecluster.executors.confinement import Confinement, probe_mechanism
from claudecluster.executors.shell import ShellExecutor
from claudecluster.scripted_model import Script, open_scripted_model

SCRIPT = Script.model_validate(
    {"tasks": [{"marker": "[[task:one]]", "latency_s": 0, "turns": [{"text": "done"}]}]}
)


async def _ignore(_: TaskProgress | TaskRateLimited) -> None:
    pass


async def _attempt(executor: Executor, root: Path, prompt: str, api: dict[str, str]) -> float:
    scratch = root / uuid.uuid4().hex[:8]
    workspace = scratch / "ws"
    workspace.mkdir(parents=True)
    job = AttemptRun(
        run_id="bench", task_id="t", attempt=1, prompt=prompt, workspace=workspace,
        scratch=scratch, session_id=str(uuid.uuid4()), api_environment=api,
    )  # fmt: skip
    started = time.perf_counter()
    outcome = await executor.run(job, _ignore)
    elapsed = time.perf_counter() - started
    if not outcome.succeeded:
        raise SystemExit(f"an attempt failed: {outcome.reason}")
    return elapsed


async def _measure(shell_n: int, agent_n: int) -> dict[str, dict[str, list[float]]]:
    mechanism = probe_mechanism()
    if isinstance(mechanism, str):
        raise SystemExit(f"cannot measure confinement here: {mechanism}")
    variants = {
        "reaper only": Confinement(mechanism=None, cgroups=False),
        "cgroup": Confinement(mechanism=None),
        "bwrap + cgroup": Confinement(mechanism=mechanism),
    }
    times: dict[str, dict[str, list[float]]] = {"shell": {}, "agent": {}}
    with tempfile.TemporaryDirectory(prefix="bench-confine-") as scratch:
        root = Path(scratch)
        async with open_scripted_model(SCRIPT) as model:
            api = {"ANTHROPIC_BASE_URL": model.url, "ANTHROPIC_API_KEY": "sk-bench"}
            for kind, count in (("shell", shell_n), ("agent", agent_n)):
                for round_ in range(count + 1):  # round 0 warms caches up, unmeasured
                    for name, confinement in variants.items():  # alternating rounds
                        executor: Executor = (
                            ShellExecutor(confinement=confinement)
                            if kind == "shell"
                            else ClaudeCodeExecutor(confinement=confinement)
                        )
                        prompt = "true" if kind == "shell" else "[[task:one]] go"
                        elapsed = await _attempt(executor, root, prompt, api)
                        if round_ > 0:
                            times[kind].setdefault(name, []).append(elapsed)
    return times


def main(argv: list[str]) -> int:
    """Measure, print the table, write the JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shell", type=int, default=30, help="shell attempts per variant")
    parser.add_argument("--agent", type=int, default=5, help="agent attempts per variant")
    parser.add_argument("--quick", action="store_true", help="a smoke run: 3 and 1")
    options = parser.parse_args(argv)
    shell_n, agent_n = (3, 1) if options.quick else (options.shell, options.agent)
    times = anyio.run(_measure, shell_n, agent_n)
    rows, results = [], []
    for kind, variants in times.items():
        baseline = statistics.median(next(iter(variants.values())))
        for name, values in variants.items():
            median = statistics.median(values)
            entry = {
                "attempt": kind,
                "variant": name,
                "n": len(values),
                "median_ms": round(median * 1000, 1),
                "p90_ms": round(percentile(values, 90) * 1000, 1),
                "ratio": round(median / baseline, 3),
            }
            results.append(entry)
            rows.append([kind, name, len(values), entry["median_ms"], entry["p90_ms"],
                         f"{entry['ratio']:.2f}x"])  # fmt: skip
    print_table(["attempt", "variant", "n", "median ms", "p90 ms", "ratio"], rows)
    path = write_results("confinement", {"results": results}, quick=options.quick)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
