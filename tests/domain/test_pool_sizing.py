"""The autoscaler's sizing: from queued and running work and the remaining graph's shape."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime, timedelta

from hypothesis import given, settings
from hypothesis import strategies as st

from claudecluster.actors.scaling import (
    PoolBounds,
    PoolDemand,
    ScalerState,
    decide_pool_size,
    pool_demand,
)
from claudecluster.events import (
    RunCompleted,
    RunPlanned,
    RunSubmitted,
    TaskAssigned,
    TaskQueued,
    TaskSpec,
    TaskStarted,
    wrap_event,
)
from claudecluster.events.envelope import StoredEvent
from claudecluster.events.model import Event
from claudecluster.events.subjects import event_subject
from claudecluster.projections import replay
from claudecluster.projections.cluster import ClusterView

T0 = datetime(2026, 3, 1, tzinfo=UTC)
BOUNDS = PoolBounds(min_workers=0, max_workers=4, slots_per_worker=1, settle_s=10,
                    scale_down_after_s=60)  # fmt: skip


def _view(*events: Event) -> ClusterView:
    return replay(
        StoredEvent(seq=i, subject=event_subject(e),
                    envelope=wrap_event(e, event_id=f"e{i}", now=T0))
        for i, e in enumerate(events, 1)
    )  # fmt: skip


def _run(
    deps: Mapping[str, tuple[str, ...]], queued: tuple[str, ...], running: tuple[str, ...] = ()
) -> list[Event]:
    tasks = tuple(TaskSpec(task_id=t, title=t, prompt="p", depends_on=d) for t, d in deps.items())
    events: list[Event] = [
        RunSubmitted(run_id="r", goal="g", repo="/r"),
        RunPlanned(run_id="r", tasks=tasks, base_commit="b", integration_branch="cc/r"),
    ]
    for t in (*queued, *running):
        events.append(TaskQueued(run_id="r", task_id=t))
    for t in running:
        events += [TaskAssigned(run_id="r", task_id=t, attempt=1, worker_id="w0"),
                   TaskStarted(run_id="r", task_id=t, attempt=1, worker_id="w0")]  # fmt: skip
    return events


def test_a_chain_needs_one_worker_however_long_it_is() -> None:
    chain = {"a": (), "b": ("a",), "c": ("b",), "d": ("c",), "e": ("d",)}
    demand = pool_demand(_view(*_run(chain, queued=("a",))), "default")
    assert demand == PoolDemand(queued=1, running=0, waiting=4, widest_layer=1, layers=5)
    _, target = decide_pool_size(ScalerState(), demand, 0, BOUNDS, T0)
    assert target is not None
    assert target.workers == 1
    assert target.reason == (
        "1 queued, 0 running, 4 waiting; widest layer 1 of 5: 1 slot(s) at 1 per worker"
    )


def test_a_diamond_is_sized_by_its_widest_layer_before_that_layer_is_queued() -> None:
    diamond = {"a": (), "b": ("a",), "c": ("a",), "d": ("a",), "e": ("b", "c", "d")}
    demand = pool_demand(_view(*_run(diamond, queued=(), running=("a",))), "default")
    assert (demand.running, demand.widest_layer, demand.layers) == (1, 3, 3)
    _, target = decide_pool_size(ScalerState(), demand, 1, BOUNDS, T0)
    assert target is not None
    assert target.workers == 3  # the three middle tasks, ready as soon as a merges


def test_a_wide_fan_out_is_held_at_the_maximum_and_slots_divide_it() -> None:
    fan = {f"t{i}": () for i in range(10)}
    demand = pool_demand(_view(*_run(fan, queued=tuple(fan))), "default")
    _, target = decide_pool_size(ScalerState(), demand, 1, BOUNDS, T0)
    assert target is not None
    assert target.workers == 4
    assert target.reason.endswith("10 slot(s) at 1 per worker, held at the maximum of 4")
    two_slots = PoolBounds(max_workers=20, slots_per_worker=3)
    _, target = decide_pool_size(ScalerState(), demand, 1, two_slots, T0)
    assert target is not None
    assert target.workers == 4  # ceil(10 / 3)


def test_finished_runs_and_other_pools_need_no_worker() -> None:
    fan = {f"t{i}": () for i in range(3)}
    events = [
        *_run(fan, queued=tuple(fan)),
        RunCompleted(run_id="r", tasks_succeeded=3, head_commit="h"),
    ]
    assert pool_demand(_view(*events), "default") == PoolDemand()
    assert pool_demand(_view(*_run(fan, queued=tuple(fan))), "gpu") == PoolDemand()
    _, target = decide_pool_size(ScalerState(), PoolDemand(), 0, BOUNDS, T0)
    assert target is None  # nothing to do, and already at the minimum of 0


def test_growth_waits_for_the_last_change_to_settle() -> None:
    demand = PoolDemand(queued=3, widest_layer=3, layers=1)
    recent = ScalerState(last_change=T0 - timedelta(seconds=5))
    assert decide_pool_size(recent, demand, 1, BOUNDS, T0)[1] is None
    state, target = decide_pool_size(recent, demand, 1, BOUNDS, T0 + timedelta(seconds=5))
    assert target is not None
    assert target.workers == 3
    assert state == ScalerState(last_change=T0 + timedelta(seconds=5))


def test_shrinking_waits_until_the_smaller_size_has_been_enough_for_a_while() -> None:
    idle = PoolDemand()
    state, target = decide_pool_size(ScalerState(), idle, 3, BOUNDS, T0)
    assert target is None
    assert state.smaller_since == T0
    state, target = decide_pool_size(state, idle, 3, BOUNDS, T0 + timedelta(seconds=59))
    assert target is None
    # Work came back in between: the clock starts again.
    busy = PoolDemand(queued=3, widest_layer=3, layers=1)
    state, target = decide_pool_size(state, busy, 3, BOUNDS, T0 + timedelta(seconds=61))
    assert target is None
    assert state.smaller_since is None
    later = T0 + timedelta(seconds=70)
    state, target = decide_pool_size(state, idle, 3, BOUNDS, later)
    assert target is None
    state, target = decide_pool_size(state, idle, 3, BOUNDS, later + timedelta(seconds=60))
    assert target is not None
    assert target.workers == 0


def test_bounds_that_cannot_hold_are_named() -> None:
    assert PoolBounds(min_workers=3, max_workers=2).problem() is not None
    assert PoolBounds(slots_per_worker=0).problem() == "slots_per_worker must be at least 1"
    assert PoolBounds().problem() is None


@st.composite
def _graphs(draw: st.DrawFn) -> tuple[dict[str, tuple[str, ...]], tuple[str, ...], tuple[str, ...]]:
    n = draw(st.integers(1, 12))
    names = [f"t{i}" for i in range(n)]
    deps = {
        name: tuple(sorted(draw(st.sets(st.sampled_from(names[:i]), max_size=3)) if i else ()))
        for i, name in enumerate(names)
    }
    roots = [t for t, d in deps.items() if not d]
    started = draw(st.sets(st.sampled_from(roots)))
    running = tuple(sorted(draw(st.sets(st.sampled_from(sorted(started))))) if started else ())
    queued = tuple(sorted(started - set(running)))
    return deps, queued, running


@given(graph=_graphs(), current=st.integers(0, 30), lo=st.integers(0, 5), span=st.integers(0, 10))
@settings(max_examples=150, deadline=None)
def test_every_decision_stays_in_bounds_and_counts_every_task_once(
    graph: tuple[dict[str, tuple[str, ...]], tuple[str, ...], tuple[str, ...]],
    current: int,
    lo: int,
    span: int,
) -> None:
    deps, queued, running = graph
    demand = pool_demand(_view(*_run(deps, queued=queued, running=running)), "default")
    assert demand.queued + demand.running + demand.waiting == len(deps)
    assert demand.widest_layer >= demand.queued + demand.running
    assert 1 <= demand.layers <= len(deps)
    bounds = PoolBounds(min_workers=lo, max_workers=max(1, lo + span), settle_s=0,
                        scale_down_after_s=0)  # fmt: skip
    _, target = decide_pool_size(ScalerState(), demand, current, bounds, T0)
    if target is not None:
        assert bounds.min_workers <= target.workers <= bounds.max_workers
        assert target.workers != current
