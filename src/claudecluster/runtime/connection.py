"""Connecting to NATS and opening the event log, for every actor and command.

One place decides how we connect (reconnect forever with a short wait, a client name
that shows in server monitoring) and that the topology is applied before anything is read
or written.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import anyio
import nats
import nats.errors
from nats.aio.client import Client

from claudecluster.errors import NatsServerError
from claudecluster.observability.logging import get_logger
from claudecluster.observability.redaction import Redactor, redact_url
from claudecluster.runtime.embedded_nats import open_embedded_nats
from claudecluster.settings import Settings
from claudecluster.transport.jetstream import JetStreamEventLog
from claudecluster.transport.topology import Topology, apply_topology, load_topology

__all__ = [
    "Connection",
    "open_configured_cluster",
    "open_configured_log",
    "open_jetstream_log",
    "open_nats",
]

_log = get_logger(__name__)
_DEFAULT_PORTS = {"nats": 4222, "tls": 4222, "ws": 80, "wss": 443}


async def _any_reachable(url: str, connect_timeout: float) -> bool:
    """Whether any server of a (comma-separated) NATS URL accepts a TCP connection.

    nats-py retries a first connection forever when reconnects are unlimited, so an
    unreachable URL is detected here, at once, with a clear message.
    """
    for part in url.split(","):
        address = urlsplit(part.strip() if "://" in part else f"nats://{part.strip()}")
        port = address.port or _DEFAULT_PORTS.get(address.scheme, 4222)
        try:
            with anyio.fail_after(connect_timeout):
                stream = await anyio.connect_tcp(address.hostname or "127.0.0.1", port)
        except (OSError, TimeoutError):
            continue
        await stream.aclose()
        return True
    return False


@asynccontextmanager
async def open_nats(
    url: str, *, name: str = "claudecluster", connect_timeout: float = 5.0
) -> AsyncIterator[Client]:
    """A connected client that reconnects by itself; drained and closed on exit.

    Raises:
        NatsServerError: the server at ``url`` cannot be reached.
    """

    shown = redact_url(url)

    async def on_error(exc: Exception) -> None:
        # Disconnects during a server restart land here; the client reconnects by itself.
        _log.warning("nats connection error", url=shown, error=repr(exc))

    async def on_disconnected() -> None:
        _log.debug("nats disconnected", url=shown)

    async def on_reconnected() -> None:
        _log.info("nats reconnected", url=shown)

    if not await _any_reachable(url, connect_timeout):
        raise NatsServerError(
            f"cannot reach NATS at {shown}: nothing accepts connections there; start the "
            "server, fix nats.url, or unset it to use the embedded server"
        )
    try:
        with anyio.fail_after(connect_timeout * 2):
            client = await nats.connect(
                # nats-py takes a list of servers; a comma-separated string is one bad URL.
                [part.strip() for part in url.split(",") if part.strip()],
                name=name,
                error_cb=on_error,
                disconnected_cb=on_disconnected,
                reconnected_cb=on_reconnected,
                connect_timeout=connect_timeout,
                max_reconnect_attempts=-1,
                reconnect_time_wait=0.25,
                allow_reconnect=True,
            )
    except (nats.errors.Error, OSError, TimeoutError) as exc:
        raise NatsServerError(f"cannot connect to NATS at {shown}: {exc!r}") from None
    try:
        yield client
    finally:
        if not client.is_closed:
            await client.close()


@asynccontextmanager
async def open_jetstream_log(
    url: str,
    *,
    name: str = "claudecluster",
    topology: Topology | None = None,
    redactor: Redactor | None = None,
    replicas: int | None = None,
) -> AsyncIterator[tuple[Client, JetStreamEventLog]]:
    """Connect, apply the topology, and hand back the client and the event log.

    Raises:
        NatsServerError: the server cannot be reached.
        EventStoreError: the topology could not be applied.
        ConfigError: the topology file is invalid.
    """
    async with open_nats(url, name=name) as client:
        js = client.jetstream()
        await apply_topology(js, topology or load_topology(), replicas=replicas)
        yield client, JetStreamEventLog(js, redactor=redactor)


@dataclass(frozen=True, slots=True)
class Connection:
    """An open connection to the cluster's NATS and its event log.

    Attributes:
        url: the NATS URL in use.
        client: the NATS client (for JetStream: work queue, commands, artifacts).
        log: the event log.
        embedded: the server was started by this process (it stops when the process does).
    """

    url: str
    client: Client
    log: JetStreamEventLog
    embedded: bool


@asynccontextmanager
async def open_configured_cluster(
    settings: Settings, *, project_dir: Path | None = None, name: str = "claudecluster"
) -> AsyncIterator[Connection]:
    """Connect to what the configuration names: an external NATS URL, or the embedded
    server (started, or adopted if this project's server already runs).

    Raises:
        NatsServerError: the server cannot be started or reached.
        EventStoreError: the topology could not be applied.
    """
    redactor = Redactor(settings.secret_values())
    if settings.nats.url:
        async with open_jetstream_log(
            settings.nats.url, name=name, redactor=redactor, replicas=settings.nats.replicas
        ) as (client, log):
            yield Connection(settings.nats.url, client, log, embedded=False)
        return
    store_dir = settings.nats.store_dir
    if not store_dir.is_absolute():
        store_dir = (project_dir or Path.cwd()) / store_dir
    async with (
        open_embedded_nats(
            store_dir, port=settings.nats.port, binary=settings.nats.server_binary
        ) as server,
        open_jetstream_log(server.url, name=name, redactor=redactor) as (client, log),
    ):
        yield Connection(server.url, client, log, embedded=True)


@asynccontextmanager
async def open_configured_log(
    settings: Settings, *, project_dir: Path | None = None, name: str = "claudecluster"
) -> AsyncIterator[tuple[str, JetStreamEventLog]]:
    """The event log the configuration names: an external NATS URL, or the embedded server.

    Yields the URL in use and the log. The embedded server's store directory is resolved
    against ``project_dir`` (default: the working directory).

    Raises:
        NatsServerError: the server cannot be started or reached.
        EventStoreError: the topology could not be applied.
    """
    async with open_configured_cluster(settings, project_dir=project_dir, name=name) as conn:
        yield conn.url, conn.log
