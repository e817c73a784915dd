"""The simulation scenarios under simulations/ load, and `claudecluster simulate` runs
one end to end: a table, a JSON result, and exit 1 when an invariant breaks."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pydantic
import pytest

from claudecluster.cli import run
from claudecluster.errors import ConfigError
from claudecluster.simulation.scenarios import Scenario, load_scenario, run_scenario
from claudecluster.simulation.shells import InvariantBrokenError


@pytest.mark.parametrize(
    "name", ["scheduler-1k.yaml", "scheduler-10k.yaml", "chains-under-faults.yaml"]
)
def test_the_committed_scenarios_load(repo_root: Path, name: str) -> None:
    scenario = load_scenario(repo_root / "simulations" / "scenarios" / name)
    assert scenario.name == name.removesuffix(".yaml")


def test_a_scenario_naming_an_engine_is_refused_now_that_the_shells_run_every_one() -> None:
    with pytest.raises(pydantic.ValidationError, match="engine"):
        Scenario.model_validate({"name": "old", "tasks": 1, "workers": 1, "engine": "core"})


def test_a_scenario_runs_deterministically_and_within_its_bounds() -> None:
    scenario = Scenario(name="small", tasks=60, workers=6, failure_chance=0.1,
                        conflict_chance=0.1, death_chance=0.02, seeds=[5])  # fmt: skip
    first = run_scenario(scenario, 5)
    again = run_scenario(scenario, 5)
    for volatile in ("events_per_s", "simulated_in_s"):
        first.pop(volatile)
        again.pop(volatile)
    assert first == again
    assert first["run_state"] == "completed"
    assert first["makespan_s"] >= first["lower_bound_s"]
    assert first["merged"] + first["failed"] + first["skipped"] == 60


def test_simulate_prints_a_table_and_writes_json(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    scenario = tmp_path / "tiny.yaml"
    scenario.write_text("name: tiny\ntasks: 30\nworkers: 4\nseeds: [1, 2]\n")
    assert run(["simulate", str(scenario), "--out", str(tmp_path / "results")]) == 0
    assert "tiny" in capsys.readouterr().out
    record = json.loads((tmp_path / "results" / "tiny.json").read_text())
    assert [r["seed"] for r in record["results"]] == [1, 2]
    assert all(r["merged"] == 30 for r in record["results"])


def test_a_broken_invariant_prints_the_command_that_replays_its_seed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    scenario = tmp_path / "tiny.yaml"
    scenario.write_text("name: tiny\ntasks: 20\nworkers: 3\nseeds: [1, 2]\n")
    real = run_scenario

    def breaks_on_seed_2(loaded: Scenario, seed: int) -> dict[str, object]:
        if seed == 2:
            raise InvariantBrokenError("task t3 merged twice (event 41)")
        return real(loaded, seed)

    monkeypatch.setattr("claudecluster.cli.simulate_cmd.run_scenario", breaks_on_seed_2)
    monkeypatch.chdir(tmp_path)
    assert run(["simulate", str(scenario), "--out", ""]) == 1
    assert not (tmp_path / "tiny.json").exists()  # --out "" writes no results
    printed = capsys.readouterr().out
    assert "tiny seed 2: INVARIANT BROKEN: task t3 merged twice (event 41)" in printed
    assert f"reproduce: claudecluster simulate {scenario} --seed 2" in printed
    # The printed command runs that seed alone.
    assert run(["simulate", str(scenario), "--seed", "1", "--out", str(tmp_path / "r")]) == 0
    record = json.loads((tmp_path / "r" / "tiny.json").read_text())
    assert [(r["seed"], r["completion_rate"]) for r in record["results"]] == [(1, 1.0)]


# Each simulation (the real shells, 1,000 tasks) takes ~30 s of one core; a loaded 2-core
# machine may take several times that.
SIMULATION_ENDS_WITHIN_S = 300.0


#: The committed 1k scenario cut to a quarter, with deaths twice as likely: dozens of
#: workers lost, several at the same virtual moment, where order mattered; in 7 s of one
#: core on the real shells instead of about 50 (the 1k scenario's cost since it moved
#: onto them).
_DETERMINISM_SCENARIO = """\
name: determinism
tasks: 250
workers: 50
edge_chance: 0.03
max_parents: 3
duration_s: [5, 120]
failure_chance: 0.02
death_chance: 0.004
seeds: [1]
"""


def test_a_seed_gives_the_same_run_in_every_process(tmp_path: Path) -> None:
    # "Reproducible from the printed seed" must hold in a fresh process, whose string
    # hashes (and so the iteration order of sets and maps) differ from this one's.
    scenario = tmp_path / "determinism.yaml"
    scenario.write_text(_DETERMINISM_SCENARIO)
    # Both processes at once: each is one core's work, and nothing ties them together.
    running = {}
    for hash_seed in ("1", "2"):
        out = tmp_path / f"out-{hash_seed}"
        with (tmp_path / f"err-{hash_seed}").open("wb") as err:  # the child has its own copy
            running[hash_seed] = subprocess.Popen(
                [sys.executable, "-m", "claudecluster", "simulate", str(scenario), "--seed", "1",
                 "--out", str(out)],
                env={**os.environ, "PYTHONHASHSEED": hash_seed},
                stdout=subprocess.DEVNULL, stderr=err,
            )  # fmt: skip
    try:
        for process in running.values():
            process.wait(timeout=SIMULATION_ENDS_WITHIN_S)
    finally:
        for process in running.values():  # on every path, neither outlives the test
            if process.poll() is None:
                process.kill()
                process.wait()
    results = []
    for hash_seed, process in running.items():
        assert process.returncode == 0, (tmp_path / f"err-{hash_seed}").read_text()[-2000:]
        out = tmp_path / f"out-{hash_seed}"
        (result,) = json.loads((out / "determinism.json").read_text())["results"]
        for volatile in ("events_per_s", "simulated_in_s"):
            result.pop(volatile)
        results.append(result)
    assert results[0] == results[1]
    assert results[0]["workers_lost"] >= 10  # the faults that could reorder things happened
    assert results[0]["merged"] == 250


def test_a_bad_scenario_is_a_clear_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: bad\ntasks: 0\nworkers: 1\n")
    with pytest.raises(ConfigError, match="tasks"):
        load_scenario(bad)
    assert run(["simulate", str(bad)]) == 2
