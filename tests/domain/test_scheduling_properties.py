"""Properties of the real driver and worker shells in the simulated cluster, over random
graphs.

For any DAG, completion order, failures, conflicts and worker deaths: no task is queued
before its dependencies merged, the concurrency caps hold, every task ends, each merges
at most once and in a topological order (the simulator checks these after every event
and raises InvariantBrokenError naming the event that broke one).
"""

from __future__ import annotations

import random

from hypothesis import given, settings
from hypothesis import strategies as st

from claudecluster.actors.driver import DriverConfig
from claudecluster.domain.lifecycle import TaskState
from claudecluster.events import RunPolicy, TaskMerged
from claudecluster.simulation.graphs import random_graph
from claudecluster.simulation.shells import ShellCluster, SimulatedRun


@given(
    seed=st.integers(0, 2**32 - 1),
    size=st.integers(1, 40),
    workers=st.integers(1, 6),
    max_parallel=st.one_of(st.none(), st.integers(1, 5)),
    max_running=st.integers(1, 8),
    failure_chance=st.sampled_from([0.0, 0.1, 0.3]),
    conflict_chance=st.sampled_from([0.0, 0.2]),
    death_chance=st.sampled_from([0.0, 0.05]),
    on_task_failure=st.sampled_from(["skip_dependents", "fail_run"]),
)
def test_scheduling_keeps_its_promises_on_random_graphs(
    seed: int,
    size: int,
    workers: int,
    max_parallel: int | None,
    max_running: int,
    failure_chance: float,
    conflict_chance: float,
    death_chance: float,
    on_task_failure: str,
) -> None:
    tasks = random_graph(random.Random(seed), size)
    cluster = ShellCluster(
        seed=seed,
        workers=workers,
        config=DriverConfig(max_running=max_running, lost_after_s=15),
        failure_chance=failure_chance,
        conflict_chance=conflict_chance,
        death_chance=death_chance,
    )
    policy = RunPolicy(on_task_failure=on_task_failure, backoff_base_s=1)  # type: ignore[arg-type]
    report = cluster.run(tasks, policy=policy, max_parallel=max_parallel)
    states = {t.task_id: t.state for t in cluster.view.tasks_of("sim")}
    if report.run_state == "completed":
        done = {TaskState.MERGED, TaskState.SKIPPED, TaskState.CANCELLED, TaskState.FAILED}
        assert set(states.values()) <= done
        assert report.merged + report.failed + report.skipped == size
    else:
        assert report.run_state == "failed"
        assert failure_chance > 0 or conflict_chance > 0
    merges = [
        e.envelope.payload for e in cluster.history if isinstance(e.envelope.payload, TaskMerged)
    ]
    assert len({m.task_id for m in merges}) == len(merges)
    if report.merged == size:  # the bound holds only when every task ran to the end
        assert report.makespan_s >= report.critical_path_s - 1e-6


def test_without_failures_every_task_of_a_large_graph_merges() -> None:
    tasks = random_graph(random.Random(7), 300, edge_chance=0.05)
    cluster = ShellCluster(seed=7, workers=20, config=DriverConfig(max_running=20))
    report = cluster.run(tasks)
    assert (report.run_state, report.merged) == ("completed", 300)
    assert report.attempts == 300  # nothing ran twice


@settings(max_examples=25, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    runs=st.integers(2, 4),
    size=st.integers(1, 8),
    workers=st.integers(1, 4),
    max_parallel=st.one_of(st.none(), st.integers(1, 3)),
    max_running=st.integers(1, 6),
    starts_per_s=st.sampled_from([0.5, 10.0]),
    failure_chance=st.sampled_from([0.0, 0.3]),
    conflict_chance=st.sampled_from([0.0, 0.2]),
    death_chance=st.sampled_from([0.0, 0.05]),
    on_task_failure=st.sampled_from(["skip_dependents", "fail_run"]),
    rollback=st.booleans(),
)
def test_a_tick_leaves_no_run_with_anything_to_decide(
    seed: int,
    runs: int,
    size: int,
    workers: int,
    max_parallel: int | None,
    max_running: int,
    starts_per_s: float,
    failure_chance: float,
    conflict_chance: float,
    death_chance: float,
    on_task_failure: str,
    rollback: bool,
) -> None:
    # Ticks look only at runs with a timer due or waiting for a slot or the pace; the
    # simulator checks after each one that a look at every open run would decide nothing.
    cluster = ShellCluster(
        seed=seed,
        workers=workers,
        config=DriverConfig(
            max_running=max_running, lost_after_s=15, starts_per_s=starts_per_s, start_burst=2
        ),
        failure_chance=failure_chance,
        conflict_chance=conflict_chance,
        death_chance=death_chance,
        duration=lambda rng, _task: rng.uniform(1, 8),  # fewer ticks, each one checked
        check_ticks=True,
    )
    rng = random.Random(seed)
    submitted = [
        SimulatedRun(
            f"r{n}",
            random_graph(rng, size),
            RunPolicy(
                on_task_failure=on_task_failure,  # type: ignore[arg-type]
                backoff_base_s=1,
                rollback_on_failure=rollback,
            ),
            max_parallel,
        )
        for n in range(runs)
    ]
    reports = cluster.run_all(submitted)
    assert {r.run_state for r in reports.values()} <= {"completed", "failed", "rolled_back"}
