"""Simulation scenarios: YAML data under simulations/scenarios/, run by
``claudecluster simulate``.

A scenario names a graph shape, a cluster and the faults to inject; each of its seeds is
one deterministic run of the real driver and worker shells in
:class:`~claudecluster.simulation.shells.ShellCluster`. The report puts the makespan next
to the critical-path lower bound (what infinitely many workers could do) and the work
bound (total work over the worker count), so scheduling quality shows as a ratio,
whatever the machine.
"""

from __future__ import annotations

import dataclasses
import random
import time
from pathlib import Path
from typing import Any

import pydantic
import yaml

from claudecluster.actors.driver import DriverConfig
from claudecluster.domain.submission import DEFAULT_MAX_TASKS
from claudecluster.errors import ConfigError
from claudecluster.events.model import FailureClass, RunPolicy
from claudecluster.simulation.graphs import random_graph
from claudecluster.simulation.shells import ShellCluster

__all__ = ["Scenario", "load_scenario", "run_scenario"]


class Scenario(pydantic.BaseModel):
    """One simulation scenario: the real driver and worker shells on the in-memory twins
    of every seam (:class:`~claudecluster.simulation.shells.ShellCluster`), with the same
    claims, fencing, keep-alives, redeliveries and effect carrying as on NATS."""

    model_config = pydantic.ConfigDict(extra="forbid", frozen=True)

    name: str
    description: str = ""
    tasks: int = pydantic.Field(ge=1)
    workers: int = pydantic.Field(ge=1)
    edge_chance: float = pydantic.Field(default=0.05, ge=0, le=1)
    max_parents: int = pydantic.Field(default=3, ge=0)
    duration_s: tuple[float, float] = (5.0, 60.0)
    failure_chance: float = pydantic.Field(default=0.0, ge=0, le=1)
    failure_classes: tuple[FailureClass, ...] = ("api_error", "timeout")
    conflict_chance: float = pydantic.Field(default=0.0, ge=0, le=1)
    death_chance: float = pydantic.Field(default=0.0, ge=0, le=1)
    max_running: int = pydantic.Field(default=1000, ge=1)
    starts_per_s: float = pydantic.Field(default=100.0, gt=0)
    #: How often each worker beats, and so how often a death is drawn (``death_chance``
    #: is per beat); a worker is declared lost after four silent beats. Real workers beat
    #: every 5 s; a longer beat makes a very large simulation affordable on the shells,
    #: where every beat of every worker is real work for the machine.
    heartbeat_s: float = pydantic.Field(default=5.0, gt=0)
    seeds: list[int] = pydantic.Field(default=[1], min_length=1)


def load_scenario(path: Path) -> Scenario:
    """Read a scenario file.

    Raises:
        ConfigError: the file is missing, not YAML, or does not fit the schema.
    """
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError("scenario", str(path), f"cannot read it: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise ConfigError("scenario", str(path), f"not valid YAML: {exc}") from None
    try:
        return Scenario.model_validate(data)
    except pydantic.ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "(top)"
        raise ConfigError(f"scenario {where}", str(path), first["msg"]) from None


def run_scenario(scenario: Scenario, seed: int) -> dict[str, Any]:
    """One seeded run; the invariants are checked after every event.

    Raises:
        InvariantBrokenError: the driver broke a promise (names the event).
    """
    low, high = scenario.duration_s
    graph = random_graph(
        random.Random(seed),  # noqa: S311 - a seeded simulation, not secrets
        scenario.tasks,
        edge_chance=scenario.edge_chance,
        max_parents=scenario.max_parents,
    )
    config = DriverConfig(
        max_running=scenario.max_running,
        starts_per_s=scenario.starts_per_s,
        start_burst=max(1, int(scenario.starts_per_s)),
        # A scenario's one run holds all its tasks: the per-run cap is what an
        # operator would configure for such a run (driver.max_tasks).
        max_tasks=max(DEFAULT_MAX_TASKS, scenario.tasks),
        lost_after_s=4 * scenario.heartbeat_s,
    )
    started = time.perf_counter()
    shell_cluster = ShellCluster(
        seed=seed, workers=scenario.workers, config=config,
        duration=lambda rng, _task: rng.uniform(low, high),
        failure_chance=scenario.failure_chance, failure_classes=scenario.failure_classes,
        conflict_chance=scenario.conflict_chance, death_chance=scenario.death_chance,
        heartbeat_s=scenario.heartbeat_s,
    )  # fmt: skip
    report = shell_cluster.run(graph, policy=RunPolicy(backoff_base_s=1.0))
    work = shell_cluster.work_s
    elapsed = time.perf_counter() - started
    lower = max(report.critical_path_s, work / scenario.workers)
    return {
        "seed": seed,
        **dataclasses.asdict(report),
        "work_bound_s": round(work / scenario.workers, 3),
        "lower_bound_s": round(lower, 3),
        "makespan_over_bound": round(report.makespan_s / lower, 3) if lower else 0.0,
        # Tasks merged over tasks planned: failures the policy gave up on and the
        # dependents they skipped count against it.
        "completion_rate": round(report.merged / scenario.tasks, 4),
        "events_per_s": round(report.events / elapsed, 1) if elapsed else 0.0,
        "simulated_in_s": round(elapsed, 3),
    }
