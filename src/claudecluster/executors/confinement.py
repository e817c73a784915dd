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
  to the model API and nowhere else (:func:`.confined.serve_api_tunnel`);
* one more forwarder per destination its plan allows (``network.allow``): each listens on
  a loopback address of its own inside (:func:`forward_layout`), the destination's name
  maps to that address in the sandbox's ``/etc/hosts``, and the worker pipes it to that
  one host and port;
* no capabilities (``--cap-drop ALL``), even when the worker runs as root, and new
  IPC, UTS and cgroup namespaces; it dies with its parent (``--die-with-parent``). An
  allowed destination on a port below 1024 needs its forwarder to bind that port: then
  the sandbox starts with ``CAP_NET_BIND_SERVICE`` and ``CAP_SETPCAP`` only, the
  forwarders start, and ``setpriv`` drops every capability (bounding set included)
  before the command runs, so the command itself still has none.
"""

from __future__ import annotations

import functools
import ipaddress
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Literal
from urllib.parse import urlsplit, urlunsplit

from claudecluster.domain.network import Destination

__all__ = [
    "ENV_PASSED",
    "SANDBOX_ENABLED_VARIABLE",
    "SYSTEM_ETC",
    "Confinement",
    "Forward",
    "Mechanism",
    "Sandbox",
    "SandboxUnavailableError",
    "api_inside",
    "attempt_sandbox",
    "bwrap_command",
    "confined_environment",
    "default_confinement",
    "forward_layout",
    "hosts_text",
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
        setpriv: util-linux's setpriv, which drops the capabilities a forwarder on a port
            below 1024 needed before the command runs (None: such ports cannot be allowed).
    """

    bwrap: str
    socat: str | None
    system: tuple[tuple[str, ...], ...]
    setpriv: str | None = None


@dataclass(frozen=True, slots=True)
class Forward:
    """One TCP address inside the sandbox that leads to one destination outside.

    Attributes:
        address: the loopback address the forwarder listens on inside.
        port: its port (the destination's own, so the agent's URLs stay as they are).
        socket: the unix socket outside it connects to; the worker pipes that to the
            destination and nowhere else.
    """

    address: str
    port: int
    socket: Path


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
        forwards: the forwarders to the destinations its plan allows (any network but
            ``host``).
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
    forwards: tuple[Forward, ...] = ()


def bwrap_command(sandbox: Sandbox, command: list[str], mechanism: Mechanism) -> list[str]:
    """The bubblewrap command line that runs ``command`` confined by ``sandbox``.

    Raises:
        ValueError: ``api`` network without a socket, a port or socat; forwards without
            socat; a forward to a port below 1024 without setpriv.
    """
    forwards = _forwards(sandbox)
    if forwards and mechanism.socat is None:
        raise ValueError("forwarding into the sandbox needs socat")
    low_ports = any(forward.port < 1024 for forward in forwards)
    if low_ports and mechanism.setpriv is None:
        raise ValueError(
            "a destination on a port below 1024 needs setpriv (util-linux) to drop the "
            "capability its forwarder binds with"
        )
    argv = [
        mechanism.bwrap,
        "--die-with-parent",
        "--new-session",
        "--cap-drop",
        "ALL",
        *(["--cap-add", "CAP_NET_BIND_SERVICE", "--cap-add", "CAP_SETPCAP"] if low_ports else []),
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
    if forwards:
        assert mechanism.socat is not None  # checked above
        argv += ["--ro-bind", mechanism.socat, "/run/cc/socat"]
        spec: list[str] = [str(len(forwards)), "1" if low_ports else "0"]
        for index, forward in enumerate(forwards):
            inside = "/run/cc/api.sock" if index == 0 and _has_api(sandbox) else (
                f"/run/cc/fwd-{index}.sock"
            )  # fmt: skip
            argv += ["--bind", str(forward.socket), inside]
            spec += [forward.address, str(forward.port), inside, _listening(forward)]
        if low_ports:
            assert mechanism.setpriv is not None  # checked above
            argv += ["--ro-bind", mechanism.setpriv, "/run/cc/setpriv"]
        inner = ["/bin/sh", "-c", _FORWARDER, "forwarder", *spec, *command]
    return [*argv, "--", *inner]


def _has_api(sandbox: Sandbox) -> bool:
    return sandbox.network == "api"


def _forwards(sandbox: Sandbox) -> tuple[Forward, ...]:
    """The API's forwarder (first, with ``api`` network), then the allowed ones."""
    if sandbox.network == "host":
        return ()
    found: list[Forward] = []
    if sandbox.network == "api":
        if sandbox.api_socket is None or sandbox.api_port is None:
            raise ValueError("api network needs a socket, a port and socat")
        found.append(Forward(address="127.0.0.1", port=sandbox.api_port, socket=sandbox.api_socket))
    found += sandbox.forwards
    seen: set[tuple[str, int]] = set()
    for forward in found:
        if (forward.address, forward.port) in seen:
            raise ValueError(
                f"two forwarders on {forward.address}:{forward.port} inside the sandbox"
            )
        seen.add((forward.address, forward.port))
    return tuple(found)


def _listening(forward: Forward) -> str:
    """How ``/proc/net/tcp`` shows a socket bound to the forward's address and port."""
    packed = ipaddress.IPv4Address(forward.address).packed
    return f"{int.from_bytes(packed, sys.byteorder):08X}:{forward.port:04X}"


# Inside the sandbox: start each forwarder, wait (bounded) until each listens, then become
# the command (through setpriv, which drops every capability, when a forwarder needed one
# to bind a low port). Arguments: the count, whether to drop, then per forwarder its
# address, port, unix socket and /proc/net/tcp pattern, then the command. /proc/net/tcp
# lists only this network namespace's sockets, so the check needs no connection; socat's
# own errors go to stderr, never to the command's stdout, which carries Claude Code's
# stream.
_FORWARDER: Final = (
    'n="$1"; drop="$2"; shift 2; patterns=""; '
    'while [ "$n" -gt 0 ]; do '
    '/run/cc/socat -lf /dev/stderr TCP-LISTEN:"$2",bind="$1",fork,reuseaddr '
    'UNIX-CONNECT:"$3" </dev/null >/dev/null & '
    'patterns="$patterns $4"; shift 4; n=$((n-1)); done; '
    "for pattern in $patterns; do i=0; "
    'until grep -q "$pattern" /proc/net/tcp 2>/dev/null; do '
    "i=$((i+1)); if [ $i -gt 1000 ]; then echo 'a network forwarder did not start' >&2; "
    "exit 125; fi; sleep 0.01; done; done; "
    'if [ "$drop" = 1 ]; then exec /run/cc/setpriv --inh-caps=-all --ambient-caps=-all '
    '--bounding-set=-all -- "$@"; fi; '
    'exec "$@"'
)

#: The first loopback address an allowed host name gets inside the sandbox (127.0.0.1
#: stays the API's and ``localhost``'s); each further name gets the next.
_FIRST_NAME_ADDRESS: Final = ipaddress.IPv4Address("127.0.1.1")


def forward_layout(
    allowed: Iterable[Destination], *, api_name: str | None = None
) -> tuple[tuple[Destination, str], ...]:
    """Where each allowed destination listens inside the sandbox: ``(destination, address)``.

    A loopback destination keeps its address (``localhost`` is ``127.0.0.1``); the API's
    own name (an ``https`` API's, mapped to ``127.0.0.1``) keeps that; every other name
    gets a loopback address of its own, the same for all its ports. Two destinations
    at one inside address and port (``localhost:P`` and ``127.0.0.1:P``) get one forwarder.
    """
    addresses: dict[str, str] = {"localhost": "127.0.0.1"}
    if api_name is not None:
        addresses[api_name.lower()] = "127.0.0.1"
    layout: list[tuple[Destination, str]] = []
    taken: set[tuple[str, int]] = set()
    next_address = _FIRST_NAME_ADDRESS
    for destination in dict.fromkeys(allowed):
        if destination.host not in addresses:
            if destination.loopback:
                addresses[destination.host] = destination.host
            else:
                addresses[destination.host] = str(next_address)
                next_address += 1
        inside = (addresses[destination.host], destination.port)
        if inside in taken:
            continue  # localhost:P after 127.0.0.1:P: the same place, one forwarder
        taken.add(inside)
        layout.append((destination, inside[0]))
    return tuple(layout)


def hosts_text(layout: Iterable[tuple[Destination, str]], *, api_name: str | None = None) -> str:
    """The sandbox's ``/etc/hosts``: loopback, the API's name, each allowed name's address."""
    names: dict[str, str] = {}
    for destination, address in layout:
        if not destination.loopback and destination.host != api_name:
            names.setdefault(destination.host, address)
    lines = [f"127.0.0.1 localhost{' ' + api_name if api_name else ''}", "::1 localhost"]
    lines += [f"{address} {name}" for name, address in names.items()]
    return "\n".join(lines) + "\n"


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
    mechanism = Mechanism(
        bwrap=bwrap, socat=socat, system=_system_layout(), setpriv=shutil.which("setpriv")
    )
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
