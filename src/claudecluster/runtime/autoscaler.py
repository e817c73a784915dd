"""The embedded default's local worker pool, grown and shrunk with the work.

It follows the event log into its own cluster view (it shares nothing with the driver),
asks :func:`~claudecluster.actors.scaling.decide_scale` once a second, and starts or
drains in-process workers. Why it did so is recorded where people look: in the
WorkerJoined event of a started worker and the WorkerLeft event of a stopped one.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime

import anyio
import anyio.abc
from nats.aio.client import Client

from claudecluster.actors.scaling import ScalePolicy, decide_scale
from claudecluster.observability.logging import get_logger
from claudecluster.projections.cluster import ClusterView
from claudecluster.runtime.live_view import LiveView
from claudecluster.runtime.worker import Worker, WorkerConfig, new_worker_id
from claudecluster.transport.base import EventLog
from claudecluster.transport.infrastructure import jetstream_infrastructure

__all__ = ["LocalAutoscaler"]

_log = get_logger(__name__)


class LocalAutoscaler:
    """Keeps between ``policy.min_workers`` and ``policy.max_workers`` local workers.

    Args:
        log: the event log.
        client: the NATS connection the workers share.
        template: how each worker is configured (its id is replaced).
        policy: bounds and tempo.
        interval_s: how often to decide.
        transfer_client: a connection of their own for repository history and results
            (default: ``client``), so big transfers never queue ahead of heartbeats.
    """

    def __init__(
        self,
        log: EventLog,
        client: Client,
        template: WorkerConfig,
        policy: ScalePolicy,
        *,
        interval_s: float = 1.0,
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
        transfer_client: Client | None = None,
    ) -> None:
        if not 1 <= policy.min_workers <= policy.max_workers:
            raise ValueError("need 1 <= min_workers <= max_workers")
        self._log = log
        self._client = client
        self._transfer_client = transfer_client
        self._template = template
        self._policy = policy
        self._interval_s = interval_s
        self._now = now
        self._live = LiveView(log)
        self._workers: dict[str, Worker] = {}
        self._idle_since: dict[str, datetime | None] = {}
        #: workers told to stop and still draining: no longer counted as the pool's
        self._stopping: set[str] = set()
        self._last_change: datetime | None = None

    @property
    def workers(self) -> list[Worker]:
        """The local workers serving now (not the ones draining to stop)."""
        return [w for k, w in self._workers.items() if k not in self._stopping]

    async def run(
        self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Scale until cancelled; the workers drain and leave when it ends."""
        async with anyio.create_task_group() as group:
            await group.start(self._live.follow)
            try:
                await self._scale(group)  # the minimum, before anyone waits on it
                task_status.started()
                while True:
                    await anyio.sleep(self._interval_s)
                    await self._scale(group)
            finally:
                for worker in self._workers.values():
                    worker.stop("the local pool is shutting down")

    @property
    def _view(self) -> ClusterView:
        return self._live.view

    async def _scale(self, group: anyio.abc.TaskGroup) -> None:
        now = self._now()
        for worker_id, worker in self._workers.items():
            if worker_id in self._stopping:
                continue
            busy = bool(worker.health()["running"])
            if busy:
                self._idle_since[worker_id] = None
            elif self._idle_since.get(worker_id) is None:
                self._idle_since[worker_id] = now
        serving = {k: v for k, v in self._idle_since.items() if k not in self._stopping}
        decision = decide_scale(
            self._view, self._template.pool, serving, self._policy, now, self._last_change
        )
        if decision is None:
            return
        self._last_change = now
        _log.info("scaling the local pool", start=decision.start, stop=decision.stop,
                  reason=decision.reason)  # fmt: skip
        for _ in range(decision.start):
            config = replace(self._template, worker_id=new_worker_id(), join_reason=decision.reason)
            seams = jetstream_infrastructure(
                self._log,
                self._client,
                transfer_client=self._transfer_client,
                work_ack_wait_s=config.ack_wait_s,
            )
            worker = Worker(config, self._log, infrastructure=seams)
            self._workers[config.worker_id] = worker
            self._idle_since[config.worker_id] = now
            group.start_soon(self._serve, worker)
        for worker_id in decision.stop:
            self._stopping.add(worker_id)
            self._workers[worker_id].stop(decision.reason)

    async def _serve(self, worker: Worker) -> None:
        worker_id = worker.config.worker_id
        try:
            await worker.serve()
        finally:
            self._workers.pop(worker_id, None)
            self._idle_since.pop(worker_id, None)
            self._stopping.discard(worker_id)
