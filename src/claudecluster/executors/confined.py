"""Starting one confined process: its cgroup, its sandbox, its way to the model API.

:func:`open_confined_process` is the one place every executor, the worker's setup command
and the driver's verify command start code they do not trust. It puts together what
:mod:`.confinement` (the pure sandbox description) and :mod:`.cgroups` (limits) describe,
and for an agent serves the unix socket its in-sandbox forwarder leads to: each connection
on it is piped to the model API's address, and to nothing else.

On every exit path the cgroup is killed and removed, and the forwarder stops.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Final

import anyio
import anyio.abc

from claudecluster.events.model import TaskLimits
from claudecluster.executors.cgroups import (
    AttemptCgroup,
    CgroupLimits,
    cgroup_prefix,
    create_attempt_cgroup,
)
from claudecluster.executors.confinement import Confinement, Sandbox, api_inside, bwrap_command
from claudecluster.observability.logging import get_logger

__all__ = ["ConfinedProcess", "cgroup_limits", "open_confined_process", "serve_api_tunnel"]

_CONNECT_TIMEOUT_S: Final = 30.0
_CHUNK: Final = 65536
_log = get_logger(__name__)


@dataclass
class ConfinedProcess:
    """A started confined process and what was applied to it.

    Attributes:
        process: the process (the outermost one: the cgroup entry, reaper or bwrap).
        cgroup: its cgroup, or None where none could be made.
        env: the environment it was started with.
        confined: whether it runs in the sandbox.
    """

    process: anyio.abc.Process
    cgroup: AttemptCgroup | None
    env: dict[str, str] = field(default_factory=dict)
    confined: bool = False

    def oom_killed(self) -> bool:
        """Whether the kernel ended a member for its memory limit."""
        return self.cgroup is not None and self.cgroup.oom_killed()


def cgroup_limits(limits: TaskLimits, confinement: Confinement) -> CgroupLimits:
    """The cgroup limits of an attempt with the task's ``limits``."""
    return CgroupLimits(
        memory_bytes=limits.memory_mb * 2**20 if limits.memory_mb is not None else None,
        max_processes=limits.max_processes or confinement.max_processes,
        cpus=limits.cpus,
    )


async def _pipe(source: anyio.abc.ByteStream, sink: anyio.abc.ByteStream) -> None:
    with suppress(anyio.EndOfStream, anyio.BrokenResourceError, anyio.ClosedResourceError):
        while True:
            sink_data = await source.receive(_CHUNK)
            await sink.send(sink_data)
    with suppress(anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
        await sink.send_eof()


async def serve_api_tunnel(
    socket_path: Path,
    host: str,
    port: int,
    *,
    task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
) -> None:
    """Listen on ``socket_path`` and pipe each connection to ``host:port`` (TCP).

    Bytes pass untouched (TLS included). A connection the API refuses is closed.
    """
    listener = await anyio.create_unix_listener(socket_path)

    async def handle(client: anyio.abc.SocketStream) -> None:
        async with client:
            try:
                with anyio.fail_after(_CONNECT_TIMEOUT_S):
                    upstream = await anyio.connect_tcp(host, port)
            except (OSError, TimeoutError) as exc:
                _log.warning("model API unreachable through the tunnel", host=host, port=port,
                             error=str(exc))  # fmt: skip
                return
            async with upstream, anyio.create_task_group() as group:
                group.start_soon(_pipe, client, upstream)
                group.start_soon(_pipe, upstream, client)

    async with listener:
        task_status.started()
        await listener.serve(handle)


@asynccontextmanager
async def open_confined_process(
    confinement: Confinement,
    sandbox: Sandbox,
    command: list[str],
    *,
    prefix: list[str],
    env: Mapping[str, str],
    limits: CgroupLimits,
    api_base_url: str | None = None,
    **popen: Any,
) -> AsyncIterator[ConfinedProcess]:
    """Start ``command`` confined by ``sandbox`` (or only cgrouped, without a mechanism).

    Args:
        confinement: the operator's choice and the tools.
        sandbox: what the process may touch; ``network="api"`` needs ``api_base_url``.
        command: what to run.
        prefix: goes between the cgroup entry and the sandbox (the reaper, ``nice``).
        env: the environment (already minimal). With the API network its
            ``ANTHROPIC_BASE_URL`` is rewritten to the in-sandbox forwarder.
        limits: the cgroup's limits.
        api_base_url: the model API the agent may reach.
        **popen: passed to :func:`anyio.open_process` (stdio, cwd, start_new_session).

    Raises:
        OSError: the process could not be started.
    """
    environment = dict(env)
    cgroup = create_attempt_cgroup(limits) if confinement.cgroups else None
    try:
        async with anyio.create_task_group() as group:
            if confinement.mechanism is None:
                argv = [*cgroup_prefix(cgroup), *prefix, *command]
            else:
                sandbox = await _with_api(sandbox, group, environment, api_base_url)
                argv = [
                    *cgroup_prefix(cgroup),
                    *prefix,
                    *bwrap_command(sandbox, command, confinement.mechanism),
                ]
            process = await anyio.open_process(argv, env=environment, **popen)
            try:
                yield ConfinedProcess(
                    process=process,
                    cgroup=cgroup,
                    env=environment,
                    confined=confinement.mechanism is not None,
                )
            finally:
                group.cancel_scope.cancel()
    finally:
        if cgroup is not None:
            await cgroup.close()


async def _remove_when_cancelled(directory: Path) -> None:
    try:
        await anyio.sleep_forever()
    finally:
        shutil.rmtree(directory, ignore_errors=True)


async def _with_api(
    sandbox: Sandbox,
    group: anyio.abc.TaskGroup,
    environment: dict[str, str],
    api_base_url: str | None,
) -> Sandbox:
    """Serve the tunnel for an ``api`` sandbox and point the environment at its inside end."""
    if sandbox.network != "api":
        return sandbox
    if not api_base_url:
        # No API configured: the agent's requests have nowhere to go, confined or not.
        return replace(sandbox, network="none")
    try:
        url, host, port, inside_port, mapped = api_inside(api_base_url)
    except ValueError as exc:
        # Not a URL anything could connect to: the agent gets no network at all, and its
        # requests fail in the CLI with its own clear error.
        _log.warning("no model API to forward to", error=str(exc))
        return replace(sandbox, network="none")
    # A short directory of its own: a unix socket's path is limited to 107 bytes, which a
    # deep workspace root would exceed. It goes when the tunnel stops.
    directory = Path(tempfile.mkdtemp(prefix="cc-api-"))
    socket_path = directory / "api.sock"
    group.start_soon(_remove_when_cancelled, directory)
    await group.start(serve_api_tunnel, socket_path, host, port)
    environment["ANTHROPIC_BASE_URL"] = url
    hosts_file = None
    if mapped is not None:
        hosts_file = directory / "hosts"
        await anyio.Path(hosts_file).write_text(
            f"127.0.0.1 localhost {mapped}\n::1 localhost\n", encoding="utf-8"
        )
    return replace(sandbox, api_socket=socket_path, api_port=inside_port, hosts_file=hosts_file)
