"""Hypothesis strategies derived from the msgspec types themselves.

Deriving them from ``msgspec.inspect`` keeps the properties honest: a new event class or
field is covered the moment it exists, with exactly the constraints its type declares.
"""

from __future__ import annotations

import functools
from datetime import UTC, datetime
from typing import Any

import msgspec.inspect as mi
from hypothesis import strategies as st

from claudecluster.domain.lifecycle import TASK_TRANSITIONS, TaskState, next_task_state
from claudecluster.events.envelope import EventEnvelope, StoredEvent
from claudecluster.events.model import (
    Event,
    MergeConflict,
    RunPlanned,
    RunSubmitted,
    TaskAssigned,
    TaskCancelled,
    TaskFailed,
    TaskFilesTouched,
    TaskMerged,
    TaskPreempted,
    TaskProgress,
    TaskQueued,
    TaskRateLimited,
    TaskRetryScheduled,
    TaskSkipped,
    TaskSpec,
    TaskStarted,
    TaskSucceeded,
    TokenUsage,
    WorkerHeartbeat,
    WorkerJoined,
)
from claudecluster.events.subjects import event_subject
from tests.fixtures.sample_runs import LogBuilder

__all__ = ["Lifecycle", "envelopes", "events", "for_type", "lifecycle_logs", "stored_logs"]

_TIMES = st.datetimes(
    min_value=datetime(2020, 1, 1), max_value=datetime(2040, 1, 1), timezones=st.just(UTC)
)


def _for(info: mi.Type, ids: st.SearchStrategy[str] | None) -> st.SearchStrategy[Any]:
    match info:
        case mi.StrType(pattern=pattern) if pattern is not None:
            return ids if ids is not None else st.from_regex(pattern, fullmatch=True)
        case mi.StrType():
            return st.text(max_size=40)
        case mi.BoolType():
            return st.booleans()
        case mi.IntType(ge=ge, gt=gt, le=le, lt=lt):
            low = ge if ge is not None else (gt + 1 if gt is not None else -(2**40))
            high = le if le is not None else (lt - 1 if lt is not None else 2**40)
            return st.integers(min_value=low, max_value=high)
        case mi.FloatType(ge=ge, gt=gt):
            return st.floats(
                min_value=ge if ge is not None else gt,
                max_value=1e6,
                allow_nan=False,
                allow_infinity=False,
                exclude_min=gt is not None,
            )
        case mi.NoneType():
            return st.none()
        case mi.LiteralType(values=values):
            return st.sampled_from(values)
        case mi.EnumType(cls=cls):
            return st.sampled_from(list(cls))
        case mi.DateTimeType():
            return _TIMES
        case mi.UnionType(types=types):
            return st.one_of(*(_for(t, ids) for t in types))
        case mi.VarTupleType(item_type=item) | mi.ListType(item_type=item):
            items = st.lists(_for(item, ids), max_size=3)
            return items.map(tuple) if isinstance(info, mi.VarTupleType) else items
        case mi.DictType(key_type=key, value_type=value):
            return st.dictionaries(_for(key, ids), _for(value, ids), max_size=2)
        case mi.StructType(cls=cls, fields=fields):
            return st.builds(cls, **{f.name: _for(f.type, ids) for f in fields})
        case mi.Metadata(type=inner):
            return _for(inner, ids)
    raise NotImplementedError(f"no strategy for {info!r}")


@functools.cache
def for_type(tp: Any, ids: st.SearchStrategy[str] | None = None) -> st.SearchStrategy[Any]:
    """Values of ``tp`` that satisfy every declared constraint.

    Args:
        tp: a msgspec-supported type.
        ids: if given, every constrained string (the ids) is drawn from it, so that
            generated events refer to each other.
    """
    return _for(mi.type_info(tp), ids)


def events(ids: st.SearchStrategy[str] | None = None) -> st.SearchStrategy[Event]:
    """Any event of any type."""
    strategy: st.SearchStrategy[Event] = for_type(Event, ids)
    return strategy


@st.composite
def envelopes(draw: st.DrawFn, ids: st.SearchStrategy[str] | None = None) -> EventEnvelope:
    """An event in an envelope, stamped with its class's current schema version."""
    event = draw(events(ids))
    return EventEnvelope(
        id=draw(st.uuids()).hex,
        occurred_at=draw(_TIMES),
        schema_version=type(event).schema_version,
        correlation_id=draw(st.text(min_size=1, max_size=10)),
        causation_id=draw(st.none() | st.text(max_size=10)),
        payload=event,
    )


_SMALL_IDS = st.sampled_from(["r1", "r2", "a", "b", "w1", "w2"])


@st.composite
def stored_logs(draw: st.DrawFn, max_size: int = 30) -> list[StoredEvent]:
    """A log of events over a small universe of ids, so events hit the same entities.

    Most such logs contain events that do not fit their entity's history: projections
    must treat those deterministically too.
    """
    items = draw(st.lists(envelopes(_SMALL_IDS), max_size=max_size))
    return [
        StoredEvent(seq=index, subject=event_subject(env.payload), envelope=env)
        for index, env in enumerate(items, start=1)
    ]


class Lifecycle:
    """The expected state and live attempt of every task, tracked beside a generated log."""

    def __init__(self, task_ids: list[str]) -> None:
        self.states = dict.fromkeys(task_ids, TaskState.PENDING)
        self.attempts = dict.fromkeys(task_ids, 0)
        self.stale = 0


def _task_event(tag: str, run_id: str, task_id: str, attempt: int, n: int) -> Event:
    r, t, worker = run_id, task_id, f"w{n % 3}"
    match tag:
        case "task.queued":
            return TaskQueued(run_id=r, task_id=t, attempt=attempt + 1)
        case "task.assigned":
            return TaskAssigned(run_id=r, task_id=t, attempt=attempt, worker_id=worker)
        case "task.started":
            return TaskStarted(run_id=r, task_id=t, attempt=attempt, worker_id=worker)
        case "task.progress":
            usage = TokenUsage(input_tokens=n, output_tokens=1)
            return TaskProgress(
                run_id=r, task_id=t, attempt=attempt, kind="usage", text=f"step {n}", usage=usage
            )
        case "task.succeeded":
            return TaskSucceeded(
                run_id=r,
                task_id=t,
                attempt=attempt,
                worker_id=worker,
                cost_usd=n / 1000,
                turns=n % 7,
            )
        case "task.failed":
            return TaskFailed(
                run_id=r,
                task_id=t,
                attempt=attempt,
                reason=f"failure {n}",
                retryable=n % 2 == 0,
                cost_usd=n / 2000,
            )
        case "task.rate_limited":
            return TaskRateLimited(run_id=r, task_id=t, attempt=attempt, status=429)
        case "task.retry_scheduled":
            return TaskRetryScheduled(run_id=r, task_id=t, next_attempt=attempt + 1, delay_s=1.5)
        case "task.cancelled":
            return TaskCancelled(run_id=r, task_id=t, attempt=attempt if n % 2 else 0)
        case "task.skipped":
            return TaskSkipped(run_id=r, task_id=t, reason="dependency failed", blocked_by="x")
        case "task.merged":
            return TaskMerged(
                run_id=r, task_id=t, attempt=attempt, commit=f"c{n}", integration_branch="b"
            )
        case "task.merge_conflict":
            return MergeConflict(
                run_id=r, task_id=t, attempt=attempt, files=("f.py",), ours="o", theirs="t"
            )
        case "task.files_touched":
            return TaskFilesTouched(run_id=r, task_id=t, attempt=attempt, files=(f"f{n}.py",))
        case "task.preempted":
            return TaskPreempted(run_id=r, task_id=t, attempt=attempt, other_task_id=f"o{n}",
                                 files=(f"f{n}.py",))  # fmt: skip
    raise AssertionError(f"unexpected tag {tag}")


_TASK_TAGS = sorted({tag for (_, tag) in TASK_TRANSITIONS if tag.startswith("task.")})


@st.composite
def lifecycle_logs(draw: st.DrawFn) -> tuple[list[StoredEvent], Lifecycle]:
    """A plausible log: tasks walk valid transitions, with stale events and worker noise.

    Returns the log and the lifecycle model's expectation of each task's state.
    """
    task_ids = [f"t{i}" for i in range(draw(st.integers(1, 5)))]
    model = Lifecycle(task_ids)
    log = LogBuilder(prefix="prop")
    log.emit(RunSubmitted(run_id="r1", goal="g", repo="/repo"))
    log.emit(
        RunPlanned(
            run_id="r1",
            tasks=tuple(TaskSpec(task_id=t, title=t, prompt="p") for t in task_ids),
            base_commit="base",
            integration_branch="claudecluster/r1",
        )
    )
    for n in range(draw(st.integers(0, 80))):
        choice = draw(st.integers(0, 9))
        if choice == 0:
            worker = f"w{n % 3}"
            log.emit(
                WorkerJoined(worker_id=worker) if n % 4 == 0 else WorkerHeartbeat(worker_id=worker)
            )
            continue
        task_id = draw(st.sampled_from(task_ids))
        state, attempt = model.states[task_id], model.attempts[task_id]
        if choice == 1 and attempt > 1:
            # A late report from a superseded attempt: must change nothing.
            log.emit(_task_event("task.succeeded", "r1", task_id, attempt - 1, n))
            model.stale += 1
            continue
        allowed = [tag for tag in _TASK_TAGS if next_task_state(state, tag) is not None]
        if not allowed:
            continue
        tag = draw(st.sampled_from(allowed))
        log.emit(_task_event(tag, "r1", task_id, attempt, n))
        target = next_task_state(state, tag)
        assert target is not None
        model.states[task_id] = target
        if tag == "task.queued":
            model.attempts[task_id] = attempt + 1
    return log.stored(), model
