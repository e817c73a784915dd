"""The workers projection: one :class:`WorkerView` per worker id, keyed by worker id."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Final

import msgspec
from immutables import Map

from claudecluster.domain.lifecycle import next_worker_state
from claudecluster.events.envelope import EventEnvelope
from claudecluster.events.liveness import WorkerLiveness
from claudecluster.events.model import (
    EventBase,
    WorkerHeartbeat,
    WorkerJoined,
    WorkerLeft,
    WorkerLost,
)
from claudecluster.projections.views import WorkerView

__all__ = ["WORKERS_READS", "Workers", "apply_workers", "with_liveness"]

Workers = Map[str, WorkerView]

#: The event types :func:`apply_workers` folds; any other leaves the projection as it is,
#: so the cluster fold does not call it for them (property-tested).
WORKERS_READS: Final[frozenset[type[EventBase]]] = frozenset(
    {WorkerJoined, WorkerHeartbeat, WorkerLeft, WorkerLost}
)


def apply_workers(workers: Workers, envelope: EventEnvelope) -> tuple[Workers, str | None]:
    """Fold one event into the workers projection.

    A worker that joins again (a restart with the same id) becomes active again. A
    heartbeat from a worker that left or was declared lost is an anomaly: the driver has
    already stopped counting on it, and only a new join changes that.

    Returns:
        The new projection and, if the event did not fit, the reason (then it is unchanged).
    """
    event = envelope.payload
    at = envelope.occurred_at
    match event:
        case WorkerJoined():
            view = WorkerView(
                worker_id=event.worker_id,
                pool=event.pool,
                host=event.host,
                pid=event.pid,
                slots=event.slots,
                slots_free=event.slots,
                version=event.version,
                joined_at=at,
                last_seen_at=at,
            )
            return workers.set(event.worker_id, view), None
        case WorkerHeartbeat():
            known = workers.get(event.worker_id)
            if known is None:
                # The log may start after the join (a trimmed or filtered stream): adopt it.
                known = WorkerView(worker_id=event.worker_id, joined_at=None)
            elif next_worker_state(known.state, "worker.heartbeat") is None:
                return workers, f"heartbeat from worker {event.worker_id!r} that is {known.state}"
            view = msgspec.structs.replace(
                known,
                last_seen_at=at,
                cpu_percent=event.cpu_percent,
                memory_bytes=event.memory_bytes,
                load_avg=event.load_avg,
                running_tasks=event.running_tasks,
                slots_free=event.slots_free,
            )
            return workers.set(event.worker_id, view), None
        case WorkerLeft() | WorkerLost():
            known = workers.get(event.worker_id)
            if known is None:
                return workers, f"worker {event.worker_id!r} never joined"
            state = next_worker_state(known.state, str(type(event).__struct_config__.tag))
            if state is None:
                return workers, f"worker {event.worker_id!r} is already {known.state}"
            view = msgspec.structs.replace(
                known, state=state, running_tasks=(), slots_free=0, reason=event.reason
            )
            return workers.set(event.worker_id, view), None
        case _:
            return workers, None


def with_liveness(workers: Workers, live: Iterable[WorkerLiveness]) -> Workers:
    """The workers with what their registry entries say now: when each was last seen, its
    load and what it runs.

    Liveness is not in the log, so a view folded from it alone shows each worker as it
    joined. Only active workers take an entry (one the driver declared lost stays lost
    until it joins again), and only an entry newer than what the log says.
    """
    for record in live:
        known = workers.get(record.worker_id)
        if known is None or known.state != "active":
            continue
        if known.last_seen_at is not None and record.at < known.last_seen_at:
            continue
        workers = workers.set(
            record.worker_id,
            msgspec.structs.replace(
                known,
                last_seen_at=record.at,
                cpu_percent=record.cpu_percent,
                memory_bytes=record.memory_bytes,
                load_avg=record.load_avg,
                running_tasks=record.running_tasks,
                slots_free=record.slots_free,
            ),
        )
    return workers
