"""Confinement: what one attempt's process (and a setup or verify command) may touch.

Every process that runs code an agent wrote or chose (the Claude Code CLI, a shell task,
the worker's setup command, the driver's verify command) is started inside bubblewrap
(``bwrap``, Debian's ``bubblewrap``), a well-kept setuid-free sandbox built on Linux
namespaces. This module is the pure half: a :class:`Sandbox` says what the process may
read, write and reach; :func:`bwrap_command` turns it into an argument list and
:func:`confined_environment` into an environment. No I/O happens here apart from
:func:`probe_mechanism`, which finds out once whether the mechanism works on this machine.

What the argument list gives the process:

* a fresh root (tmpfs) holding only the system's programs and libraries read-only, an
  allowlist of ``/etc`` files, a fresh ``/dev`` and a ``/proc`` of its own PID namespace
  (the worker's ``/proc/<pid>/environ`` does not exist in it);
* its workspace read-write with the workspace's ``.git`` re-mounted read-only, so the
  agent cannot plant a hook or a config that the worker's own git calls would run;
* a private home and temp directory, and nothing else of the machine: not other
  workspaces, not ``.claudecluster/``, not the user's home, not the worker's credentials;
* no network (``--unshare-net``: only its own loopback), or, for the agent, its own
  loopback with one forwarder (``socat``) to a unix socket the worker serves, which leads
  to the model API and nowhere else (:mod:`.api_tunnel`);
* no capabilities (``--cap-drop ALL``), even when the worker runs as root, and new
  IPC, UTS and cgroup namespaces; it dies with its parent (``--die-with-parent``).
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Literal
from urllib.parse import urlsplit, urlunsplit

__all__ = [
    "ENV_PASSED",
    "SANDBOX_ENABLED_VARIABLE",
    "SYSTEM_ETC",
    "Confinement",
    "Mechanism",
    "Sandbox",
    "SandboxUnavailableError",
    "api_inside",
    "attempt_sandbox",
    "bwrap_command",
    "confined_environment",
    "default_confinement",
    "probe_mechanism",
]

#: Variables of the parent's environment a confined process may see (values copied);
#: HOME and TMPDIR are always the sandbox's private ones.
ENV_PASSED: Final = ("PATH", "LANG", "LC_ALL", "LC_CTYPE", "TZ", "TERM")

#: The ``/etc`` entries a confined process needs to run programs (users, libraries,
#: certificates, time zone, shells); everything else of ``/etc`` stays out.
SYSTEM_ETC: Final = (
    "/etc/passwd",
    "/etc/group",
    "/etc/nsswitch.conf",
    "/etc/ld.so.cache",
    "/etc/ld.so.conf",
    "/etc/ld.so.conf.d",
    "/etc/alternatives",
    "/etc/ssl",
    "/etc/ca-certificates",
    "/etc/ca-certificates.conf",
    "/etc/localtime",
    "/etc/timezone",
    "/etc/bash.bashrc",
    "/etc/profile",
    "/etc/inputrc",
    "/etc/mime.types",
    "/etc/os-release",
    "/etc/debian_version",
    "/etc/terminfo",
    "/etc/protocols",
    "/etc/services",
    "/etc/gai.conf",
    "/etc/host.conf",
)

#: System directories bound read-only (or recreated as the symlinks they are, on
#: merged-/usr systems).
_SYSTEM_DIRS: Final = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")

Network = Literal["none", "api", "host"]

_DEFAULT_PROCESSES: Final = 1024


class SandboxUnavailableError(Exception):
    """The confinement mechanism is missing or does not work on this machine.

    Attributes:
        why: what was measured (no ``bwrap`` on PATH, namespaces refused, ...).
    """

    def __init__(self, why: str) -> None:
        self.why = why
        super().__init__(
            f"agents cannot be confined here: {why}; install Debian's bubblewrap and socat "
            "packages (apt-get install bubblewrap socat), or pass --no-sandbox "
            "(sandbox.enabled: false) to run them unconfined, as the worker's own user"
        )


@dataclass(frozen=True, slots=True)
class Mechanism:
    """The confinement tools found on this machine, and how its system is laid out.

    Attributes:
        bwrap: the bubblewrap executable.
        socat: the socat executable the agent's API forwarder runs (None: not installed,
            so an agent that needs the API cannot run confined).
        system: per system directory, ``("bind", path)`` or ``("symlink", target, path)``.
    """

    bwrap: str
    socat: str | None
    system: tuple[tuple[str, ...], ...]


@dataclass(frozen=True, slots=True)
class Sandbox:
    """What one confined process may touch: the pure description the argv is built from.

    Paths keep their names inside the sandbox, so a working directory, a transcript path
    or an error message means the same thing on both sides.

    Attributes:
        workspace: its working directory, writable.
        home: its private HOME, writable.
        tmp: its private temp directory (TMPDIR), writable; ``/tmp`` is a fresh tmpfs.
        writable: more writable directories (Claude Code's config directory).
        readable: more read-only paths (the CLI's binary, an MCP config, a repository's
            git directory for a verify command).
        read_only: paths inside the writable ones mounted read-only on top (``.git``).
        network: ``none`` (its own loopback only), ``api`` (that plus the forwarder to
            ``api_socket`` on ``127.0.0.1:api_port``) or ``host`` (the machine's network).
        api_socket: with ``api``, the unix socket the worker forwards to the model API.
        api_port: with ``api``, the loopback port the forwarder listens on inside.
        hosts_file: a file mounted as ``/etc/hosts`` (maps the API's name to loopback).
    """

    workspace: Path
    home: Path
    tmp: Path
    writable: tuple[Path, ...] = ()
    readable: tuple[Path, ...] = ()
    read_only: tuple[Path, ...] = ()
    network: Network = "none"
    api_socket: Path | None = None
    api_port: int | None = None
    hosts_file: Path | None = None


def bwrap_command(sandbox: Sandbox, command: list[str], mechanism: Mechanism) -> list[str]:
    """The bubblewrap command line that runs ``command`` confined by ``sandbox``.

    Raises:
        ValueError: ``api`` network without a socket, a port or socat.
    """
    argv = [
        mechanism.bwrap,
        "--die-with-parent",
        "--new-session",
        "--cap-drop",
        "ALL",
        "--unshare-pid",
        "--unshare-ipc",
        "--unshare-uts",
        "--unshare-cgroup-try",
        "--hostname",
        "sandbox",
    ]
    if sandbox.network != "host":
        argv.append("--unshare-net")
    for entry in mechanism.system:
        if entry[0] == "symlink":
            argv += ["--symlink", entry[1], entry[2]]
        else:
            argv += ["--ro-bind", entry[1], entry[1]]
    for etc in SYSTEM_ETC:
        argv += ["--ro-bind-try", etc, etc]
    if sandbox.hosts_file is not None:
        argv += ["--ro-bind", str(sandbox.hosts_file), "/etc/hosts"]
    else:
        argv += ["--ro-bind-try", "/etc/hosts", "/etc/hosts"]
    if sandbox.network == "host":
        argv += ["--ro-bind-try", "/etc/resolv.conf", "/etc/resolv.conf"]
    argv += ["--dev", "/dev", "--proc", "/proc", "--tmpfs", "/run", "--tmpfs", "/tmp"]  # noqa: S108
    for writable in (sandbox.workspace, sandbox.home, sandbox.tmp, *sandbox.writable):
        argv += ["--bind", str(writable), str(writable)]
    for readable in (*sandbox.readable, *sandbox.read_only):
        argv += ["--ro-bind", str(readable), str(readable)]
    argv += ["--chdir", str(sandbox.workspace)]
    inner = list(command)
    if sandbox.network == "api":
        if sandbox.api_socket is None or sandbox.api_port is None or mechanism.socat is None:
            raise ValueError("api network needs a socket, a port and socat")
        argv += ["--ro-bind", mechanism.socat, "/run/cc/socat"]
        argv += ["--bind", str(sandbox.api_socket), "/run/cc/api.sock"]
        inner = ["/bin/sh", "-c", _FORWARDER, "forwarder", str(sandbox.api_port), *command]
    return [*argv, "--", *inner]


# Inside the sandbox: start the forwarder, wait (bounded) until its port listens, then
# become the command. /proc/net/tcp lists only this network namespace's sockets, so the
# check needs no connection; socat's own errors go to stderr, never to the command's
# stdout, which carries Claude Code's stream.
_FORWARDER: Final = (
    'port="$1"; shift; '
    '/run/cc/socat -lf /dev/stderr TCP-LISTEN:"$port",bind=127.0.0.1,fork,reuseaddr '
    "UNIX-CONNECT:/run/cc/api.sock </dev/null >/dev/null & "
    "hex=$(printf ':%04X ' \"$port\"); i=0; "
    'until grep -q "$hex" /proc/net/tcp 2>/dev/null; do '
    "i=$((i+1)); if [ $i -gt 1000 ]; then echo 'the API forwarder did not start' >&2; "
    "exit 125; fi; sleep 0.01; done; "
    'exec "$@"'
)


def api_inside(base_url: str) -> tuple[str, str, int, int, str | None]:
    """How the sandboxed agent reaches the API at ``base_url`` through the forwarder.

    Returns:
        ``(url inside, host, port outside, port inside, name to map to 127.0.0.1)``.
        An ``http`` URL is rewritten to ``127.0.0.1``; an ``https`` one keeps its host
        name (TLS checks it) and ``/etc/hosts`` maps that name to loopback, so the tunnel
        carries TLS untouched.

    Raises:
        ValueError: not an http or https URL with a host.
    """
    split = urlsplit(base_url)
    if split.scheme not in ("http", "https") or not split.hostname:
        raise ValueError(f"the API base URL {base_url!r} is not an http(s) URL with a host")
    port = split.port or (443 if split.scheme == "https" else 80)
    inside_port = port if port >= 1024 else 8443  # no capability to bind low ports inside
    if split.scheme == "http":
        url = urlunsplit(split._replace(netloc=f"127.0.0.1:{inside_port}"))
        return url, split.hostname, port, inside_port, None
    url = urlunsplit(split._replace(netloc=f"{split.hostname}:{inside_port}"))
    return url, split.hostname, port, inside_port, split.hostname


def confined_environment(
    parent: Mapping[str, str],
    *,
    home: Path,
    tmp: Path,
    passed: Iterable[str] = (),
    extra: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """A minimal environment: PATH, locale, time zone, a private HOME and TMPDIR.

    Args:
        parent: the environment to copy the allowlisted values from.
        home: the private home. tmp: the private temp directory.
        passed: more variable names the operator chose to pass (``sandbox.pass_env``).
        extra: values set on top (the run's API settings).
    """
    names = {*ENV_PASSED, *passed}
    env = {key: value for key, value in parent.items() if key in names}
    env.setdefault("PATH", os.defpath)
    env.update(HOME=str(home), TMPDIR=str(tmp), USER="sandbox", LOGNAME="sandbox")
    env.update(extra or {})
    return env


@dataclass(frozen=True, slots=True)
class Confinement:
    """How this process confines what it starts: the operator's choice and the tools.

    Attributes:
        mechanism: the sandbox tools, or None when the operator chose ``--no-sandbox``.
        max_processes: the default ``pids.max`` of an attempt's cgroup (a task's
            ``limits.max_processes`` overrides it).
        pass_env: names of variables passed from the worker's environment to confined
            commands (shell tasks, setup, verify) on top of :data:`ENV_PASSED`.
        setup_network: give the setup command the machine's network (installing
            dependencies); otherwise it gets none.
        cgroups: put each process in a cgroup of its own where a hierarchy is writable
            (also without the sandbox; off only to measure what cgroups cost).
    """

    mechanism: Mechanism | None
    max_processes: int | None = _DEFAULT_PROCESSES
    pass_env: tuple[str, ...] = ()
    setup_network: bool = False
    cgroups: bool = True

    @property
    def confined(self) -> bool:
        """Whether processes run in the sandbox."""
        return self.mechanism is not None

    @classmethod
    def required(cls, **options: object) -> Confinement:
        """Confinement with this machine's mechanism.

        Raises:
            SandboxUnavailableError: the mechanism is missing or does not work here.
        """
        found = probe_mechanism()
        if isinstance(found, str):
            raise SandboxUnavailableError(found)
        return cls(mechanism=found, **options)  # type: ignore[arg-type]

    @classmethod
    def unconfined(cls, **options: object) -> Confinement:
        """No sandbox: the operator said ``--no-sandbox``. Environments stay minimal."""
        return cls(mechanism=None, **options)  # type: ignore[arg-type]


def _system_layout() -> tuple[tuple[str, ...], ...]:
    layout: list[tuple[str, ...]] = []
    for path in _SYSTEM_DIRS:
        if os.path.islink(path):
            layout.append(("symlink", os.readlink(path), path))
        elif os.path.isdir(path):
            layout.append(("bind", path))
    return tuple(layout)


@functools.cache
def probe_mechanism() -> Mechanism | str:
    """The mechanism, after running one confined ``true`` with it; or why it is unusable.

    Cached: the answer does not change while the process runs.
    """
    bwrap = shutil.which("bwrap")
    if bwrap is None:
        return "bubblewrap (bwrap) is not installed"
    socat = shutil.which("socat")
    if socat is None:
        return "socat (the agent's forwarder to the model API) is not installed"
    mechanism = Mechanism(bwrap=bwrap, socat=socat, system=_system_layout())
    with tempfile.TemporaryDirectory(prefix="cc-probe-") as scratch:
        root = Path(scratch)
        for name in ("ws", "home", "tmp"):
            (root / name).mkdir()
        sandbox = Sandbox(workspace=root / "ws", home=root / "home", tmp=root / "tmp")
        try:
            done = subprocess.run(
                bwrap_command(sandbox, ["/bin/true"], mechanism),
                capture_output=True,
                timeout=30,
                check=False,
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            return f"bwrap could not be started: {exc}"
    if done.returncode != 0:
        detail = done.stderr.decode(errors="replace").strip().splitlines()[-1:] or [""]
        return f"bwrap cannot create its namespaces here ({detail[0] or done.returncode})"
    return mechanism


#: The environment variable of the ``sandbox.enabled`` setting; ``false`` is the operator's
#: explicit ``--no-sandbox`` for processes that build executors without the settings.
SANDBOX_ENABLED_VARIABLE: Final = "CLAUDECLUSTER_SANDBOX__ENABLED"


@functools.cache
def default_confinement() -> Confinement:
    """The confinement executors use when none is given: this machine's mechanism.

    Unconfined only when the operator said so (``CLAUDECLUSTER_SANDBOX__ENABLED=false``).

    Raises:
        SandboxUnavailableError: the mechanism is missing and nobody chose to go without.
    """
    if os.environ.get(SANDBOX_ENABLED_VARIABLE, "").strip().lower() in ("false", "0", "no"):
        return Confinement.unconfined()
    return Confinement.required()


def attempt_sandbox(
    workspace: Path,
    scratch: Path,
    *,
    network: Network = "none",
    writable: tuple[Path, ...] = (),
    readable: tuple[Path, ...] = (),
) -> Sandbox:
    """The sandbox of one attempt (or setup command) in ``workspace`` with ``scratch``.

    The workspace's git directory is mounted read-only: the worker's own git calls read
    its config and hooks, so the agent must not be able to write them.
    """
    git_dir = workspace / ".git"
    return Sandbox(
        workspace=workspace,
        home=scratch / "home",
        tmp=scratch / "tmp",
        writable=writable,
        readable=readable,
        read_only=(git_dir,) if git_dir.exists() else (),
        network=network,
    )
