"""Serving an ASGI app on loopback (or any address) inside a task group, with uvicorn.

We bind the socket ourselves: uvicorn answers a taken port with ``sys.exit``, and a bound
socket tells us the real port when 0 asked for a free one.

uvicorn's own signal handling is switched off. Left on, it replaces the process's SIGINT
and SIGTERM handlers while it serves, stops only itself on a signal, and then raises the
signal again for whatever handler was there before: the command's own signal receiver
never sees it while uvicorn serves, and a SIGINT re-raised into an anyio run could be
absorbed by a task group and leave the process serving nothing, forever (seen in the
scripted model's command). Signals belong to the command; it stops the server by leaving
this context.
"""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import Final

import anyio
import uvicorn
from starlette.types import ASGIApp

__all__ = ["open_http_server"]

_READY_TIMEOUT_S: Final = 10.0


class _Server(uvicorn.Server):
    """A uvicorn server that leaves the process's signal handlers alone (see above)."""

    @contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


@asynccontextmanager
async def open_http_server(app: ASGIApp, *, host: str, port: int) -> AsyncIterator[int]:
    """Serve ``app`` for the duration of the context; yields the bound port.

    Raises:
        OSError: the address cannot be bound.
        TimeoutError: the server did not start listening in time.
    """
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        log_config=None,
        log_level="critical",  # our handlers log what matters, through structlog
        access_log=False,
        lifespan="off",
        # A request sleeping through a long wait must not hold up shutdown.
        timeout_graceful_shutdown=1,
    )
    server = _Server(config)
    try:
        async with anyio.create_task_group() as group:
            group.start_soon(server.serve, [sock])
            try:
                with anyio.fail_after(_READY_TIMEOUT_S):
                    # uvicorn exposes readiness only as a flag, not as an event to wait on.
                    while not server.started:  # noqa: ASYNC110
                        await anyio.sleep(0.01)
                yield int(sock.getsockname()[1])
            finally:
                server.should_exit = True
    finally:
        sock.close()  # uvicorn does not always close a socket it was handed
