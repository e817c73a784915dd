"""Worker liveness: workers not seen for too long lose their attempts."""

from __future__ import annotations

from datetime import datetime, timedelta

from claudecluster.actors.driver.effects import Effect
from claudecluster.actors.driver.reconcile import _record
from claudecluster.actors.driver.state import DriverState, _free
from claudecluster.events import event_ids as ids
from claudecluster.events.model import (
    WorkerLost,
)
from claudecluster.projections.views import task_key

# ----------------------------------------------------------------------------------------
# Worker liveness
# ----------------------------------------------------------------------------------------


def _last_seen(state: DriverState, worker_id: str, logged: datetime) -> datetime:
    """When a worker was last known alive: its registry entry, or what the log says (its
    join, or a heartbeat event of an older worker)."""
    seen = state.seen.get(worker_id)
    return logged if seen is None or seen < logged else seen


def _liveness(state: DriverState, now: datetime) -> list[Effect]:
    """Declare lost every active worker silent for longer than ``lost_after_s``."""
    effects: list[Effect] = []
    limit = timedelta(seconds=state.config.lost_after_s)
    # In id order: the workers map iterates in hash order, which changes from process
    # to process, and the order of the losses decides the order of the requeues.
    silent = sorted(
        (
            worker
            for worker in state.view.workers.values()
            if worker.state == "active"
            and worker.last_seen_at is not None
            and now - _last_seen(state, worker.worker_id, worker.last_seen_at) >= limit
        ),
        key=lambda worker: worker.worker_id,
    )
    for worker in silent:
        key = f"worker:{worker.worker_id}"
        if not _free(state, key):
            continue
        orphaned = tuple(
            f"{book.run_id}/{task_id}"
            for book in state.runs.values()
            if not book.ended
            for task_id in sorted(book.active)
            if state.view.tasks[task_key(book.run_id, task_id)].worker_id == worker.worker_id
        )
        event = WorkerLost(
            worker_id=worker.worker_id,
            last_seen_seq=state.scope_seq.get(f"cc.evt._workers.{worker.worker_id}.>", 0),
            reason=f"no heartbeat for {state.config.lost_after_s:g}s",
            orphaned_tasks=orphaned,
        )
        effects.append(
            _record(state, key, event, ids.worker_lost_id(worker.worker_id, event.last_seen_seq))
        )
    return effects
