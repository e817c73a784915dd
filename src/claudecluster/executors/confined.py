"""Starting one confined process: its cgroup, its sandbox, its way to the model API.

:func:`open_confined_process` is the one place every executor, the worker's setup command
and the driver's verify command start code they do not trust. It puts together what
:mod:`.confinement` (the pure sandbox description) and :mod:`.cgroups` (limits) describe,
and for an agent serves the unix socket its in-sandbox forwarder leads to: each connection
on it is piped to the model API's address, and to nothing else.

On every exit path the cgroup is killed and removed, and the forwarder stops.
"""

from __future__ import annotations

import functools
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Final

import anyio
import anyio.abc

from claudecluster.domain.network import Destination
from claudecluster.events.model import TaskLimits
from claudecluster.executors.cgroups import (
    AttemptCgroup,
    CgroupLimits,
    cgroup_prefix,
    create_attempt_cgroup,
)
from claudecluster.executors.confinement import (
    Confinement,
    Forward,
    Sandbox,
    api_inside,
    bwrap_command,
    confined_environment,
    default_confinement,
    forward_layout,
    hosts_text,
)
from claudecluster.executors.process import end_tree, launcher
from claudecluster.executors.unix_socket import UnixStream, serve_unix
from claudecluster.observability.logging import get_logger
from claudecluster.observability.redaction import REDACTED, SECRET_KEY_PATTERN

__all__ = [
    "CommandResult",
    "ConfinedVerify",
    "ConfinedProcess",
    "cgroup_limits",
    "mask_secrets",
    "open_confined_process",
    "run_confined",
    "serve_api_tunnel",
]

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
    what: str = "model API",
    task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
) -> None:
    """Listen on ``socket_path`` and pipe each connection to ``host:port`` (TCP).

    Bytes pass untouched (TLS included). A connection the destination refuses is closed.
    ``what`` names the destination in the log (the model API, an allowed destination).
    The unix side is :func:`.unix_socket.serve_unix`, not AnyIO's listener: an attempt
    cancelled as its last bytes arrive must not make the loop report an error (see there).
    """

    async def handle(client: UnixStream) -> None:
        try:
            with anyio.fail_after(_CONNECT_TIMEOUT_S):
                upstream = await anyio.connect_tcp(host, port)
        except (OSError, TimeoutError) as exc:
            _log.warning(f"{what} unreachable through the tunnel", host=host, port=port,
                         error=str(exc))  # fmt: skip
            return
        async with upstream, anyio.create_task_group() as group:
            group.start_soon(_pipe, client, upstream)
            group.start_soon(_pipe, upstream, client)

    await serve_unix(socket_path, handle, task_status=task_status)


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
    allow: tuple[Destination, ...] = (),
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
        allow: more destinations it may reach (its plan's ``network.allow``), each through
            a forwarder of its own; unconfined, the process has the whole network anyway.
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
                sandbox = await _with_network(sandbox, group, environment, api_base_url, allow)
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


async def _with_network(
    sandbox: Sandbox,
    group: anyio.abc.TaskGroup,
    environment: dict[str, str],
    api_base_url: str | None,
    allow: tuple[Destination, ...],
) -> Sandbox:
    """Serve the tunnels of a sandbox's network: the API's (``api``) and each allowed one.

    The environment's ``ANTHROPIC_BASE_URL`` is pointed at the API's inside end. Each
    allowed destination gets a unix socket piped to it alone, a forwarder inside on the
    address :func:`forward_layout` gives it, and its name in the sandbox's ``/etc/hosts``.
    """
    if sandbox.network == "host":
        return sandbox
    api: tuple[str, str, int, int, str | None] | None = None
    if sandbox.network == "api":
        if not api_base_url:
            # No API configured: the agent's requests have nowhere to go, confined or not.
            sandbox = replace(sandbox, network="none")
        else:
            try:
                api = api_inside(api_base_url)
            except ValueError as exc:
                # Not a URL anything could connect to: the agent gets no API at all, and
                # its requests fail in the CLI with its own clear error.
                _log.warning("no model API to forward to", error=str(exc))
                sandbox = replace(sandbox, network="none")
    if api is None and not allow:
        return sandbox
    # A short directory of its own: a unix socket's path is limited to 107 bytes, which a
    # deep workspace root would exceed. It goes when the tunnels stop.
    directory = _socket_directory()
    group.start_soon(_remove_when_cancelled, directory)
    api_name = api[4] if api is not None else None
    if api is not None:
        url, host, port, inside_port, _ = api
        socket_path = directory / "api.sock"
        await group.start(serve_api_tunnel, socket_path, host, port)
        environment["ANTHROPIC_BASE_URL"] = url
        sandbox = replace(sandbox, api_socket=socket_path, api_port=inside_port)
    forwards: list[Forward] = []
    layout = forward_layout(allow, api_name=api_name)
    for index, (destination, address) in enumerate(layout):
        if api is not None and (address, destination.port) == ("127.0.0.1", api[3]):
            if (destination.host, destination.port) in ((api[1], api[2]), ("localhost", api[2])):
                continue  # the API itself, already forwarded
            raise ValueError(
                f"the allowed destination {destination} would take the model API's port "
                f"{api[3]} inside the sandbox"
            )
        socket_path = directory / f"fwd-{index}.sock"
        await group.start(
            functools.partial(serve_api_tunnel, what=f"allowed destination {destination}"),
            socket_path,
            destination.host,
            destination.port,
        )
        forwards.append(Forward(address=address, port=destination.port, socket=socket_path))
    hosts_file = None
    if api_name is not None or any(not d.loopback for d, _ in layout):
        hosts_file = directory / "hosts"
        await anyio.Path(hosts_file).write_text(
            hosts_text(layout, api_name=api_name), encoding="utf-8"
        )
    return replace(sandbox, forwards=tuple(forwards), hosts_file=hosts_file)


@dataclass(frozen=True, slots=True)
class CommandResult:
    """How a confined one-shot command (setup, verify) ended.

    Attributes:
        returncode: its exit status (None: it ran out of time and was ended).
        output: the end of its combined stdout and stderr.
    """

    returncode: int | None
    output: str


async def run_confined(
    confinement: Confinement,
    sandbox: Sandbox,
    command: list[str],
    *,
    env: Mapping[str, str],
    timeout_s: float,
    limits: CgroupLimits | None = None,
    output_tail: int = 4000,
    kill_grace_s: float = 2.0,
) -> CommandResult:
    """Run ``command`` confined to its end or ``timeout_s``; the whole tree ends either way.

    Raises:
        OSError: the command could not be started.
    """
    tail = b""
    async with open_confined_process(
        confinement,
        sandbox,
        command,
        prefix=launcher(sandboxed=confinement.confined),
        env=env,
        limits=limits or CgroupLimits(max_processes=confinement.max_processes),
        cwd=sandbox.workspace,
        stdin=subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    ) as confined:
        process = confined.process
        try:
            with anyio.move_on_after(timeout_s) as deadline:
                assert process.stdout is not None
                async for chunk in process.stdout:
                    tail = (tail + chunk)[-output_tail:]
                await process.wait()
        finally:
            await end_tree(process, kill_grace_s)
    text = tail.decode(errors="replace")
    return CommandResult(None if deadline.cancelled_caught else process.returncode, text)


#: ``NAME=value`` or ``NAME: value`` where NAME says it holds a secret (an ``env`` dump).
_ASSIGNMENT: Final = re.compile(
    r"(?P<name>[A-Za-z_][A-Za-z0-9_.-]*)(?P<sep>\s*[=:]\s*)(?P<value>\S+)"
)


def mask_secrets(text: str) -> str:
    """``text`` with the values of secret-named assignments (``API_TOKEN=...``) replaced.

    Configured secrets are replaced by value when an event is stored; this catches the
    ones nobody configured, as an ``env`` or a config dump prints them.
    """

    def mask(match: re.Match[str]) -> str:
        if SECRET_KEY_PATTERN.search(match["name"]):
            return f"{match['name']}{match['sep']}{REDACTED}"
        return match[0]

    return _ASSIGNMENT.sub(mask, text)


@dataclass(frozen=True, slots=True)
class ConfinedVerify:
    """Runs verify commands confined: a :class:`~claudecluster.workspace.integration.VerifyRunner`.

    The worktree is writable, the repository's git directory readable, home and temp dir
    private (next to the worktree), no network, a minimal environment, its own cgroup.

    Attributes:
        confinement: how to confine (None: this machine's sandbox, which must work).
    """

    confinement: Confinement | None = None

    async def __call__(
        self, worktree: Path, git_dir: Path, command: str, timeout_s: float
    ) -> tuple[int | None, str]:
        """Run ``command``; see the protocol."""
        confinement = self.confinement or default_confinement()
        private = worktree.parent / f"{worktree.name}.verify"
        sandbox = Sandbox(
            workspace=worktree, home=private / "home", tmp=private / "tmp", readable=(git_dir,)
        )
        for directory in (sandbox.home, sandbox.tmp):
            await anyio.Path(directory).mkdir(parents=True, exist_ok=True)
        done = await run_confined(
            confinement,
            sandbox,
            ["/bin/bash", "-c", command],
            env=confined_environment(
                os.environ, home=sandbox.home, tmp=sandbox.tmp, passed=confinement.pass_env
            ),
            timeout_s=timeout_s,
        )
        return done.returncode, mask_secrets(done.output)


#: The longest path a unix socket may have (``sun_path`` holds 108 bytes, NUL included).
_UNIX_PATH_MAX: Final = 107
#: The longest name a socket gets in its directory (``fwd-<index>.sock``, up to 999).
_LONGEST_SOCKET_NAME: Final = "fwd-999.sock"


def _socket_directory() -> Path:
    """A private directory for the tunnels' sockets, short enough for every one of them.

    The temporary directory (``TMPDIR``) where its paths fit, else ``/tmp``: a deep
    ``TMPDIR`` (a test host's own tree, a CI runner's workspace) would otherwise fail every
    attempt with "AF_UNIX path too long".
    """
    probe = "cc-net-" + "x" * 8  # mkdtemp's prefix and its 8 random characters
    # /tmp is only the parent: mkdtemp makes a private (0700), unpredictable directory in it.
    for base in dict.fromkeys((tempfile.gettempdir(), "/tmp")):  # noqa: S108
        longest = os.path.join(base, probe, _LONGEST_SOCKET_NAME)
        if len(os.fsencode(longest)) <= _UNIX_PATH_MAX:
            return Path(tempfile.mkdtemp(prefix="cc-net-", dir=base))
    raise OSError(f"no directory short enough for a unix socket: {tempfile.gettempdir()}")
