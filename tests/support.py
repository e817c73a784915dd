"""Small helpers for tests: ports, waiting, building envelopes."""

from __future__ import annotations

import socket
import time
from datetime import UTC, datetime, timedelta
from itertools import count

from claudecluster.events.envelope import EventEnvelope, wrap_event
from claudecluster.events.model import Event

__all__ = ["EnvelopeFactory", "free_port", "wait_for_port"]

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def free_port() -> int:
    """A loopback port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_for_port(port: int, timeout: float = 15.0) -> None:
    """Block until something accepts TCP connections on the loopback port."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.02)
    raise TimeoutError(f"nothing listens on port {port} after {timeout}s")


class EnvelopeFactory:
    """Wraps events with unique ids and a clock that ticks one second per event."""

    def __init__(self, prefix: str = "t") -> None:
        self._prefix = prefix
        self._counter = count(1)

    def __call__(self, event: Event, *, event_id: str | None = None) -> EventEnvelope:
        n = next(self._counter)
        return wrap_event(
            event, event_id=event_id or f"{self._prefix}-{n}", now=T0 + timedelta(seconds=n)
        )
