"""Subscriptions to a run's resources: a client is told when the run changes.

A client subscribes to ``claudecluster://runs/{run_id}`` (the run's status) or
``claudecluster://runs/{run_id}/report``, or to ``claudecluster://runs``; when an event of
that run reaches the log (every event but the agents' running output, which changes
neither resource), each subscriber gets ``notifications/resources/updated`` for it and
reads it again. Both protocol eras: handshake clients with ``resources/subscribe`` on
their session, 2026-07-28 clients through ``subscriptions/listen`` (the SDK's listen
handler, fed by the bus this object is).

One follower of the log serves every subscriber of this server. It starts with the
first subscription (nothing is read for a server nobody subscribes to) and runs inside
the server's lifespan (:meth:`RunChanges.serve`), so it ends with the server.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any, Final

import anyio
import anyio.abc
from mcp.server.subscriptions import InMemorySubscriptionBus, ResourceUpdated, ServerEvent

from claudecluster.events.model import ID_REGEX, TaskProgress
from claudecluster.events.subjects import ALL_EVENTS
from claudecluster.observability.logging import get_logger
from claudecluster.runtime.front_door import FrontDoor

__all__ = ["RUNS_URI", "RunChanges", "run_uri", "subscribable_run"]

_log = get_logger(__name__)

RUNS_URI: Final = "claudecluster://runs"
_RUN_URI: Final = re.compile(rf"claudecluster://runs/({ID_REGEX})(/report)?")


def run_uri(run_id: str) -> str:
    """The URI of a run's status resource."""
    return f"{RUNS_URI}/{run_id}"


def subscribable_run(uri: str) -> str | None:
    """The run a subscribable URI is about; ``""`` for the list of runs; None: not one."""
    if uri == RUNS_URI:
        return ""
    found = _RUN_URI.fullmatch(uri)
    return found.group(1) if found else None


class RunChanges:
    """Who is subscribed to which run resource, and the follower that tells them.

    It is also the server's subscription bus (``MCPServer(subscriptions=...)``), so a
    2026-07-28 ``subscriptions/listen`` stream gets the same ``ResourceUpdated`` events.

    Args:
        door: the front door whose view the resources are read from.
    """

    def __init__(self, door: FrontDoor) -> None:
        self._door = door
        self._bus = InMemorySubscriptionBus()
        self._sessions: dict[str, list[Any]] = {}
        self._group: anyio.abc.TaskGroup | None = None
        self._following = False

    @asynccontextmanager
    async def serve(self, _: object = None) -> AsyncIterator[None]:
        """Run the follower (once someone subscribes) for the server's lifetime."""
        async with anyio.create_task_group() as group:
            self._group = group
            try:
                yield
            finally:
                self._group = None
                group.cancel_scope.cancel()

    # -- the SubscriptionBus protocol (for subscriptions/listen) -------------------

    async def publish(self, event: ServerEvent) -> None:
        """Hand ``event`` to every open listen stream."""
        await self._bus.publish(event)

    def subscribe(self, listener: Callable[[ServerEvent], None]) -> Callable[[], None]:
        """A listen stream opened: start following the log if nobody did yet."""
        unsubscribe = self._bus.subscribe(listener)
        self._start()
        return unsubscribe

    # -- handshake-era resources/subscribe -----------------------------------------

    def add(self, session: Any, uri: str) -> None:
        """Tell ``session`` when ``uri`` changes (a subscribable URI, already checked)."""
        subscribed = self._sessions.setdefault(uri, [])
        if not any(s is session for s in subscribed):
            subscribed.append(session)
        self._start()

    def remove(self, session: Any, uri: str) -> None:
        """Stop telling ``session`` about ``uri``."""
        subscribed = self._sessions.get(uri, [])
        self._sessions[uri] = [s for s in subscribed if s is not session]

    def statistics(self) -> dict[str, int]:
        """Subscribed sessions per URI (for tests and debugging)."""
        return {uri: len(sessions) for uri, sessions in self._sessions.items() if sessions}

    # -- following -------------------------------------------------------------------

    def _start(self) -> None:
        if self._following or self._group is None:
            return
        self._following = True
        self._group.start_soon(self._follow)

    async def _follow(self) -> None:
        door = self._door
        after = door.view.last_seq
        async with door.connection.log.open_reader(
            from_seq=after + 1, subjects=ALL_EVENTS, follow=True
        ) as events:
            async for stored in events:
                event = stored.envelope.payload
                run_id = getattr(event, "run_id", "")
                if not isinstance(run_id, str) or not run_id or isinstance(event, TaskProgress):
                    continue
                try:
                    # A subscriber reads the resource as soon as it is told: from a view
                    # that has applied this event.
                    await door.wait_caught_up(stored.seq)
                except TimeoutError:
                    _log.warning("view behind the log; notifying anyway", seq=stored.seq)
                for uri in (run_uri(run_id), f"{run_uri(run_id)}/report", RUNS_URI):
                    await self._notify(uri)

    async def _notify(self, uri: str) -> None:
        await self._bus.publish(ResourceUpdated(uri=uri))
        for session in list(self._sessions.get(uri, [])):
            try:
                await session.send_resource_updated(uri)
            except (anyio.ClosedResourceError, anyio.BrokenResourceError):
                # The client went away without unsubscribing: forget it, say so.
                _log.info("subscriber gone", uri=uri)
                self.remove(session, uri)
