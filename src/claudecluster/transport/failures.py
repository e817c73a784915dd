"""Which store failures are worth waiting out: the one place the adapters ask.

A call to JetStream that got no answer (a timeout, no responders, a connection being
re-established) or was told "temporarily unavailable" (503, a stream without a leader
while one is elected) is expected to succeed once the cluster has settled:
:class:`~claudecluster.errors.StoreUnavailableError`. Anything else the server said (a
bad request, a limit, a permission) would be said again: a plain
:class:`~claudecluster.errors.EventStoreError`, which nobody retries.
"""

from __future__ import annotations

from typing import Final

import nats.errors
import nats.js.errors

from claudecluster.errors import EventStoreError, StoreUnavailableError

__all__ = ["store_failure"]

_UNAVAILABLE: Final = (
    TimeoutError,  # nats-py's own TimeoutError is one too
    nats.errors.NoRespondersError,
    nats.errors.ConnectionClosedError,
    nats.errors.ConnectionReconnectingError,
    nats.errors.StaleConnectionError,
    nats.errors.NoServersError,
    nats.js.errors.NoStreamResponseError,
    nats.js.errors.ServiceUnavailableError,
)


def store_failure(message: str, exc: BaseException) -> EventStoreError:
    """The error to raise for ``exc``, with ``message``: unavailable, or not."""
    if isinstance(exc, _UNAVAILABLE):
        return StoreUnavailableError(message)
    return EventStoreError(message)
