"""Workers in this process: what the embedded default runs next to the driver.

Each worker is the same :class:`~claudecluster.runtime.worker.Worker` a remote machine
runs; in-process they share one NATS connection and serve until the context exits, when
they drain and leave.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import replace

import anyio
from nats.aio.client import Client

from claudecluster.runtime.worker import Worker, WorkerConfig, new_worker_id
from claudecluster.transport.base import EventLog

__all__ = ["open_local_workers"]


@asynccontextmanager
async def open_local_workers(
    count: int, template: WorkerConfig, log: EventLog, client: Client
) -> AsyncIterator[list[Worker]]:
    """Run ``count`` workers configured like ``template`` (each with its own id).

    Raises:
        ValueError: ``count`` is below 1.
        EventStoreError: the event log or the work queue failed.
    """
    if count < 1:
        raise ValueError("at least one local worker is needed")
    workers = [
        Worker(replace(template, worker_id=new_worker_id()), log, client) for _ in range(count)
    ]
    async with anyio.create_task_group() as group:
        for worker in workers:
            await group.start(worker.serve)
        try:
            yield workers
        finally:
            for worker in workers:
                worker.stop()
