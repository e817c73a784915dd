"""``claudecluster simulate``: the real driver and worker shells on a virtual clock, at scale."""

from __future__ import annotations

import json
import platform
from pathlib import Path

from rich.console import Console
from rich.table import Table

from claudecluster.cli.app import EXIT_FAILED, EXIT_OK
from claudecluster.simulation.scenarios import load_scenario, run_scenario
from claudecluster.simulation.shells import InvariantBrokenError

__all__ = ["simulate"]


def simulate(
    scenarios: list[Path],
    *,
    out: str = "simulations/results",
    seed: int | None = None,
) -> int:
    """Run simulation scenarios of the driver's scheduler and check its invariants.

    Each seed of each scenario is one deterministic run of the real driver and worker
    shells on the in-memory seams and a virtual clock, against a simulated agent, disk and git
    whose attempts fail, whose workers die (kill -9) and whose merges conflict. Prints
    makespan against the lower bound (the critical path, or the total work over the
    workers, whichever is longer) and exits 1 if an invariant broke.

    Examples:
        claudecluster simulate simulations/scenarios/scheduler-1k.yaml
        claudecluster simulate simulations/scenarios/*.yaml --out /tmp/results
        claudecluster simulate simulations/scenarios/scheduler-1k.yaml --seed 7

    Args:
        scenarios: Scenario YAML files.
        out: Directory for one JSON result file per scenario; none with --out "".
        seed: Run only this seed instead of the scenario's list (to replay a failure: a
            broken invariant prints the command that reproduces it).
    """
    console = Console(highlight=False)
    table = Table(title="Scheduler simulations (virtual time)")
    for column in ("scenario", "seed", "tasks/workers", "makespan", "critical path", "bound",
                   "ratio", "completed", "attempts", "merged/failed/skipped", "lost",
                   "events/s"):  # fmt: skip
        table.add_column(column, justify="left" if column == "scenario" else "right")
    broken = 0
    for path in scenarios:
        scenario = load_scenario(path)
        results = []
        for one in scenario.seeds if seed is None else [seed]:
            try:
                result = run_scenario(scenario, one)
            except InvariantBrokenError as exc:
                broken += 1
                console.print(
                    f"{scenario.name} seed {one}: INVARIANT BROKEN: {exc}\n"
                    f"  reproduce: claudecluster simulate {path} --seed {one} --out ''",
                    markup=False,
                    soft_wrap=True,  # one line per fact, whatever the terminal's width
                )
                continue
            results.append(result)
            table.add_row(
                scenario.name, str(one), f"{scenario.tasks}/{scenario.workers}",
                f"{result['makespan_s']:.0f}s", f"{result['critical_path_s']:.0f}s",
                f"{result['lower_bound_s']:.0f}s", f"{result['makespan_over_bound']:.2f}",
                f"{result['completion_rate']:.1%}", str(result["attempts"]),
                f"{result['merged']}/{result['failed']}/{result['skipped']}",
                str(result["workers_lost"]), f"{result['events_per_s']:.0f}",
            )  # fmt: skip
        # A string, not a Path: Path("") is ".", so --out "" would write here.
        if out and results:
            Path(out).mkdir(parents=True, exist_ok=True)
            record = {
                "scenario": scenario.model_dump(mode="json"),
                "machine": {"python": platform.python_version(), "platform": platform.platform()},
                "results": results,
            }
            target = Path(out) / f"{scenario.name}.json"
            target.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    console.print(table)
    return EXIT_FAILED if broken else EXIT_OK
