"""A cluster view kept current by following the log: what a scaler decides on."""

from __future__ import annotations

import anyio
import anyio.abc

from claudecluster.projections.cluster import ClusterView, apply
from claudecluster.transport.base import EventLog

__all__ = ["LiveView"]


class LiveView:
    """The view of every event of ``log`` so far; :meth:`follow` keeps it current.

    (The front doors start from a snapshot of the view instead, see
    :func:`~claudecluster.runtime.reads.open_view_from_snapshot`.)
    """

    def __init__(self, log: EventLog) -> None:
        self._log = log
        self.view = ClusterView()

    async def follow(
        self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Fold every event into :attr:`view` until cancelled; started once reading.

        Raises:
            EventStoreError: the log could not be read.
        """
        async with self._log.open_reader(follow=True) as events:
            task_status.started()
            async for stored in events:
                self.view = apply(self.view, stored)
