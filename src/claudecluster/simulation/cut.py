"""A worker's own handle on the shared in-memory infrastructure, which a simulation can cut.

A worker killed outright (kill -9) does nothing more: no event, no ack or nak of the item
it held, no leave, no removal from the registry; its item comes back after the queue's ack
wait and the driver declares it lost when its liveness goes stale. In one process that
is: every seam the worker holds answers the next call (and any call under way, once it
returns) with :class:`WorkerKilled`, which nothing in the worker catches (a
``BaseException``, like a cancellation), and the simulation cancels the worker's task.
The shielded clean-up of a graceful stop then ends at its first call, as a process that
is gone never makes it.
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Awaitable
from typing import Any, cast

from claudecluster.events.work import WorkItem
from claudecluster.transport.infrastructure import Infrastructure
from claudecluster.transport.work_queue import Delivery, WorkQueue

__all__ = ["Link", "WorkerKilled", "cuttable"]


class WorkerKilled(BaseException):
    """The worker's process was killed: it reaches nothing any more."""


class Link:
    """A worker's connection to the infrastructure, until :meth:`cut`."""

    def __init__(self) -> None:
        self.cut_off = False

    def cut(self) -> None:
        """Kill the worker's side: nothing it calls reaches the infrastructure again."""
        self.cut_off = True

    def check(self) -> None:
        """Raises:
        WorkerKilled: the link was cut.
        """
        if self.cut_off:
            raise WorkerKilled


async def _checked(link: Link, pending: Awaitable[Any]) -> Any:
    result = await pending
    link.check()  # an answer that arrives after the kill reaches no one
    return result


class _Seam:
    """Any seam, each call checked against the link (a proxy: the seams are Protocols)."""

    def __init__(self, target: object, link: Link) -> None:
        self._target = target
        self._link = link

    def __getattr__(self, name: str) -> Any:
        value = getattr(self._target, name)
        if not callable(value):
            return value
        link = self._link

        def call(*args: Any, **kwargs: Any) -> Any:
            link.check()
            result = value(*args, **kwargs)
            return _checked(link, result) if inspect.isawaitable(result) else result

        return call


class _Delivery:
    """A work item held through a link: acks and naks die with the worker."""

    def __init__(self, delivery: Delivery, link: Link) -> None:
        self._delivery = delivery
        self._link = link

    @property
    def item(self) -> WorkItem:
        return self._delivery.item

    @property
    def delivered(self) -> int:
        return self._delivery.delivered

    async def in_progress(self) -> None:
        self._link.check()
        await self._delivery.in_progress()

    async def ack(self) -> None:
        self._link.check()
        await self._delivery.ack()

    async def nak(self, delay_s: float | None = None) -> None:
        self._link.check()
        await self._delivery.nak(delay_s)


class _Queue:
    def __init__(self, queue: WorkQueue, link: Link) -> None:
        self._queue = queue
        self._link = link

    async def publish(self, item: WorkItem) -> bool:
        self._link.check()
        return await self._queue.publish(item)

    async def fetch(self, pool: str, *, wait_s: float = 1.0) -> Delivery | None:
        self._link.check()
        delivery = await self._queue.fetch(pool, wait_s=wait_s)
        # Fetched as the worker died: never acked, the item returns after the ack wait.
        self._link.check()
        return None if delivery is None else _Delivery(delivery, self._link)

    async def close(self) -> None:
        self._link.check()
        await self._queue.close()


def cuttable(infra: Infrastructure) -> tuple[Infrastructure, Link]:
    """``infra`` as one worker holds it, and the link that kills that worker's side."""
    link = Link()

    def seam(target: object) -> Any:
        return cast(Any, _Seam(target, link))

    return (
        dataclasses.replace(
            infra,
            log=seam(infra.log),
            queue=_Queue(infra.queue, link),
            artifacts=seam(infra.artifacts),
            feed=seam(infra.feed),
            registry=seam(infra.registry),
            transcripts=seam(infra.transcripts),
        ),
        link,
    )
