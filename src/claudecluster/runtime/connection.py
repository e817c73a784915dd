"""Connecting to NATS and opening the event log, for every actor and command.

One place decides how we connect (reconnect forever with a short wait, a client name
that shows in server monitoring) and that the topology is applied before anything is read
or written.
"""

from __future__ import annotations

import dataclasses
import ssl
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import anyio
import nats
import nats.errors
from nats.aio.client import Client

from claudecluster.errors import ConfigError, NatsServerError
from claudecluster.observability.logging import get_logger
from claudecluster.observability.redaction import Redactor, redact_url
from claudecluster.settings import Settings
from claudecluster.transport.jetstream import JetStreamEventLog

if TYPE_CHECKING:
    # Imported where used, not here: the permission and topology files are YAML read
    # into pydantic models (about 100 ms of imports), and a read from an open server
    # needs neither (``claudecluster status`` is on this path).
    from claudecluster.runtime.credentials import Credentials
    from claudecluster.transport.permissions import Role
    from claudecluster.transport.topology import Topology

__all__ = [
    "BusAuth",
    "Connection",
    "configured_auth",
    "embedded_auth",
    "open_configured_cluster",
    "open_configured_log",
    "open_jetstream_log",
    "open_nats",
    "open_role_log",
]

_JWT_MARKER = b"-----BEGIN NATS USER JWT-----"


@dataclass(frozen=True, slots=True)
class BusAuth:
    """How a client proves who it is to NATS, and which servers it trusts.

    Secrets stay in files (a creds or seed file, which nats-py reads itself) or in this
    object (a password from the environment); none is ever part of a URL, a command line
    or a log line.

    Attributes:
        creds_file: a NATS ``.creds`` file (user JWT and nkey seed).
        nkey_seed_file: a file holding an nkey seed (``SU...``).
        user: a user name (with ``password``).
        password: its password.
        inbox_prefix: the reply-subject prefix the role's permissions allow.
        tls_ca: CA certificate(s) the server must chain to.
        tls_cert: a client certificate.
        tls_key: its key.
    """

    creds_file: Path | None = None
    nkey_seed_file: Path | None = None
    user: str | None = None
    password: str | None = field(default=None, repr=False)
    inbox_prefix: str | None = None
    tls_ca: Path | None = None
    tls_cert: Path | None = None
    tls_key: Path | None = None

    @property
    def authenticated(self) -> bool:
        """Whether this names an identity (otherwise the server must admit anyone)."""
        return bool(self.creds_file or self.nkey_seed_file or self.user)

    def tls_context(self) -> ssl.SSLContext | None:
        """The TLS context for the CA and client certificate, or None for the defaults.

        Raises:
            ConfigError: a certificate or key file cannot be loaded.
        """
        if self.tls_ca is None and self.tls_cert is None:
            return None
        try:
            context = ssl.create_default_context(cafile=str(self.tls_ca) if self.tls_ca else None)
            if self.tls_cert is not None:
                context.load_cert_chain(
                    str(self.tls_cert), str(self.tls_key) if self.tls_key else None
                )
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError("nats.tls", "settings", f"cannot load TLS files: {exc}") from None
        return context

    def connect_options(self) -> dict[str, Any]:
        """Keyword arguments for ``nats.connect``.

        Raises:
            ConfigError: a credentials file is unreadable, or a TLS file cannot be loaded.
        """
        options: dict[str, Any] = {}
        if self.creds_file is not None:
            try:
                head = self.creds_file.read_bytes()[:4096]
            except OSError as exc:
                raise ConfigError(
                    "nats.creds", str(self.creds_file), f"cannot read it: {exc.strerror}"
                ) from None
            if _JWT_MARKER in head:
                options["user_credentials"] = str(self.creds_file)
            else:
                options["nkeys_seed"] = str(self.creds_file)
        if self.nkey_seed_file is not None:
            options["nkeys_seed"] = str(self.nkey_seed_file)
        if self.user is not None:
            options["user"] = self.user
            options["password"] = self.password or ""
        if self.inbox_prefix:
            options["inbox_prefix"] = self.inbox_prefix
        context = self.tls_context()
        if context is not None:
            options["tls"] = context
        return options


def configured_auth(settings: Settings, role: Role) -> BusAuth:
    """The configuration's way onto ``nats.url``, for a process acting as ``role``.

    An identity gets its role's reply prefix (its permissions allow no other); an
    anonymous client of an open server keeps nats-py's own, as no permission binds it.
    """
    nats_settings = settings.nats
    password = nats_settings.password.get_secret_value() if nats_settings.password else None
    auth = BusAuth(
        creds_file=nats_settings.creds,
        nkey_seed_file=nats_settings.nkey_seed,
        user=nats_settings.user,
        password=password,
        inbox_prefix=nats_settings.inbox_prefix,
        tls_ca=nats_settings.tls.ca,
        tls_cert=nats_settings.tls.cert,
        tls_key=nats_settings.tls.key,
    )
    if auth.authenticated and auth.inbox_prefix is None:
        from claudecluster.transport.permissions import inbox_prefix

        auth = dataclasses.replace(auth, inbox_prefix=inbox_prefix(role))
    return auth


def embedded_auth(credentials: Credentials, role: Role, pool: str = "default") -> BusAuth:
    """The embedded server's identity for ``role``: its seed file and inbox prefix.

    Raises:
        ConfigError: no identity was minted for that role and pool.
    """
    from claudecluster.transport.permissions import inbox_prefix

    return BusAuth(
        nkey_seed_file=credentials.seed_file(role, pool), inbox_prefix=inbox_prefix(role)
    )


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
    url: str,
    *,
    name: str = "claudecluster",
    connect_timeout: float = 5.0,
    auth: BusAuth | None = None,
) -> AsyncIterator[Client]:
    """A connected client that reconnects by itself; drained and closed on exit.

    Args:
        url: one server or several, comma-separated.
        name: the client name the server shows.
        connect_timeout: seconds for the first connection.
        auth: credentials, inbox prefix and TLS; None connects anonymously.

    Raises:
        NatsServerError: the server at ``url`` cannot be reached or refused us.
        ConfigError: a credentials or TLS file cannot be read.
    """

    shown = redact_url(url)

    async def on_error(exc: Exception) -> None:
        # Disconnects during a server restart land here; the client reconnects by itself.
        _log.warning("nats connection error", url=shown, error=repr(exc))

    async def on_disconnected() -> None:
        _log.debug("nats disconnected", url=shown)

    async def on_reconnected() -> None:
        _log.info("nats reconnected", url=shown)

    options = (auth or BusAuth()).connect_options()
    refusals: list[str] = []

    async def on_first_error(exc: Exception) -> None:
        refusals.append(str(exc))
        await on_error(exc)

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
                error_cb=on_first_error,
                disconnected_cb=on_disconnected,
                reconnected_cb=on_reconnected,
                connect_timeout=connect_timeout,
                max_reconnect_attempts=-1,
                reconnect_time_wait=0.25,
                allow_reconnect=True,
                **options,
            )
    except (nats.errors.Error, OSError, TimeoutError) as exc:
        # The first refusal is the server's reason (an authorization violation, a TLS
        # failure); what follows is mostly the connection being closed after it.
        why = f"{exc!r}" + (f" ({refusals[0]})" if refusals else "")
        raise NatsServerError(f"cannot connect to NATS at {shown}: {why}") from None
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
    auth: BusAuth | None = None,
    apply: bool = True,
) -> AsyncIterator[tuple[Client, JetStreamEventLog]]:
    """Connect, apply the topology, and hand back the client and the event log.

    Args:
        url: the server or servers.
        name: the client name.
        topology: what to apply (default: ``nats/topology.yaml``).
        redactor: secrets to strip from every event.
        replicas: overrides every replica count.
        auth: credentials (see :class:`BusAuth`).
        apply: apply the topology; only a role allowed to manage it (the driver) can,
            so other roles with credentials find it in place instead.

    Raises:
        NatsServerError: the server cannot be reached.
        EventStoreError: the topology could not be applied.
        ConfigError: the topology file is invalid.
    """
    async with open_nats(url, name=name, auth=auth) as client:
        js = client.jetstream()
        if apply:
            from claudecluster.transport.topology import apply_topology, load_topology

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
        role_auth: how another actor of this process connects as its own role (the
            embedded server's identities); None: every actor shares ``client``.
        redactor: the secrets every connection of this process strips from events.
    """

    url: str
    client: Client
    log: JetStreamEventLog
    embedded: bool
    role_auth: Callable[[Role], BusAuth] | None = None
    redactor: Redactor | None = None


@asynccontextmanager
async def open_role_log(
    conn: Connection, role: Role, *, name: str
) -> AsyncIterator[tuple[Client, JetStreamEventLog]]:
    """Another connection to ``conn``'s server, as ``role`` (its own identity and rights).

    Without per-role identities (an anonymous test server), ``conn``'s own client and log
    are handed back, as before there were roles.

    Raises:
        NatsServerError: the server cannot be reached or refused the identity.
    """
    if conn.role_auth is None:
        yield conn.client, conn.log
        return
    async with open_jetstream_log(
        conn.url, name=name, redactor=conn.redactor, auth=conn.role_auth(role), apply=False
    ) as opened:
        yield opened


@asynccontextmanager
async def open_configured_cluster(
    settings: Settings,
    *,
    project_dir: Path | None = None,
    name: str = "claudecluster",
    role: Role = "frontdoor",
    read_only: bool = False,
) -> AsyncIterator[Connection]:
    """Connect to what the configuration names as ``role``: an external NATS URL (with
    the configured credentials), or the embedded server (started, or adopted if this
    project's server already runs) with the embedded identity of ``role``.

    The topology is applied by the driver's identity: on the embedded server over a
    short connection of its own, on an external server only when ``role`` is the driver
    or no credentials are configured (an open server, where anyone may). A caller that
    only reads (``read_only``: ``status``, ``logs``, ``export``) applies nothing to an
    external server: whoever writes there applies the topology first, and a read of a
    server without it finds no runs; checking a dozen streams and buckets on every
    read was a fifth of what such a command cost.

    Raises:
        NatsServerError: the server cannot be started or reached.
        EventStoreError: the topology could not be applied.
        ConfigError: a credentials or TLS file cannot be read.
    """
    redactor = Redactor(settings.secret_values())
    if settings.nats.url:
        url = settings.nats.url
        auth = configured_auth(settings, role)

        def external(other: Role) -> BusAuth:
            return configured_auth(settings, other)

        async with open_jetstream_log(
            url,
            name=name,
            redactor=redactor,
            replicas=settings.nats.replicas,
            auth=auth,
            apply=not read_only and (role == "driver" or not auth.authenticated),
        ) as (client, log):
            yield Connection(
                url,
                client,
                log,
                embedded=False,
                role_auth=external if auth.authenticated else None,
                redactor=redactor,
            )
        return
    store_dir = settings.nats.store_dir
    if not store_dir.is_absolute():
        store_dir = (project_dir or Path.cwd()) / store_dir
    # Imported here: the embedded server's module loads psutil (a third of a second of a
    # CLI command's start on a busy machine), which a command given a URL never uses.
    from claudecluster.runtime.embedded_nats import open_embedded_nats

    async with open_embedded_nats(
        store_dir, port=settings.nats.port, binary=settings.nats.server_binary
    ) as server:
        credentials = server.credentials
        if credentials is None:  # a server another process started without authorization
            async with open_jetstream_log(server.url, name=name, redactor=redactor) as (c, log):
                yield Connection(server.url, c, log, embedded=True, redactor=redactor)
            return

        def embedded(other: Role) -> BusAuth:
            return embedded_auth(credentials, other)

        from claudecluster.transport.topology import apply_topology, load_topology

        async with open_nats(server.url, name=f"{name}-topology", auth=embedded("driver")) as admin:
            await apply_topology(admin.jetstream(), load_topology())
        async with open_jetstream_log(
            server.url, name=name, redactor=redactor, auth=embedded(role), apply=False
        ) as (client, log):
            yield Connection(
                server.url, client, log, embedded=True, role_auth=embedded, redactor=redactor
            )


@asynccontextmanager
async def open_configured_log(
    settings: Settings,
    *,
    project_dir: Path | None = None,
    name: str = "claudecluster",
    role: Role = "frontdoor",
) -> AsyncIterator[tuple[str, JetStreamEventLog]]:
    """The event log the configuration names: an external NATS URL, or the embedded server.

    Yields the URL in use and the log. The embedded server's store directory is resolved
    against ``project_dir`` (default: the working directory).

    Raises:
        NatsServerError: the server cannot be started or reached.
        EventStoreError: the topology could not be applied.
    """
    async with open_configured_cluster(
        settings, project_dir=project_dir, name=name, role=role
    ) as conn:
        yield conn.url, conn.log
