"""Hosts for real on one machine: network namespaces on a bridge, each with its own files.

A *host* is a network namespace (``ip netns``) joined to a private bridge by a veth pair,
with its own address, its own loopback, and its own directory that serves as its HOME,
TMPDIR and working directory. Nothing one host's processes use is on another's
directory: repositories travel as bundles through NATS, as they would between machines.
(The namespaces separate the network only; the filesystem is kept apart by giving each
host its own tree and never handing one host's paths to another.)

The faults are the network's own: a host's link goes down (``ip link set down`` on its
bridge port), a host is partitioned from chosen others (blackhole routes both ways, so
TCP to them times out rather than being refused), and every process of a host is killed
(``ip netns pids`` and everything they started, frozen first: see
:meth:`Host.kill_everything`). Every name carries a unique prefix (the test process's pid
and a random tag), so parallel runs do not clash, and :func:`open_hosts` removes what it
made on every path, leftovers of dead runs included.
"""

from __future__ import annotations

import os
import random
import re
import shutil
import signal
import subprocess
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path

import anyio
import anyio.abc
import psutil
import pytest

__all__ = ["Host", "HostNetwork", "netns_available", "open_hosts"]

#: Prefix of every interface and namespace this harness makes: ``cch<pid>x<tag>...``
#: (interface names hold at most 15 characters).
_PREFIX = "cch"
_STOP_GRACE_S = 15.0
#: How many looks for processes started while the host was being frozen, at most: each
#: look stops what it finds, and a stopped process starts nothing, so two or three do.
_FREEZE_ROUNDS = 50


def netns_available() -> str | None:
    """Why hosts cannot be made here (``None``: they can): root and iproute2 are needed."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    if shutil.which("ip") is None:
        return "iproute2 ('ip') is not installed"
    probe = f"{_PREFIX}probe{os.getpid()}"
    done = subprocess.run(["ip", "netns", "add", probe], capture_output=True, check=False)
    if done.returncode != 0:
        return f"'ip netns add' fails: {done.stderr.decode(errors='replace').strip()}"
    subprocess.run(["ip", "netns", "del", probe], capture_output=True, check=False)
    return None


def _ip(*args: str, netns: str | None = None) -> None:
    argv = ["ip", *(("-n", netns) if netns else ()), *args]
    done = subprocess.run(argv, capture_output=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)}: {done.stderr.decode(errors='replace').strip()}")


@dataclass
class Host:
    """One namespace host: its name, network identity and directory.

    Attributes:
        name: what the test calls it (``driver``, ``w1``).
        netns: the namespace's name.
        address: its IPv4 address on the bridge.
        port: its veth end on the bridge (in the root namespace): down cuts its link.
        root: its directory (HOME, TMPDIR and cwd of everything it runs).
        processes: what was started on it, in start order.
    """

    name: str
    netns: str
    address: str
    port: str
    root: Path
    processes: list[anyio.abc.Process] = field(default_factory=list)

    def env(self, base: dict[str, str]) -> dict[str, str]:
        """``base`` with this host's HOME and TMPDIR."""
        return {**base, "HOME": str(self.root / "home"), "TMPDIR": str(self.root / "tmp")}

    async def start(
        self, argv: Sequence[str], *, env: dict[str, str], log: Path
    ) -> anyio.abc.Process:
        """Run ``argv`` in this host's namespace, cwd its directory, output to ``log``.

        ``ip netns exec`` execs the command itself, so the process handed back is the
        command: a signal to it is a signal to the program.
        """
        with log.open("ab") as out:
            process = await anyio.open_process(
                ["ip", "netns", "exec", self.netns, *argv],
                env=self.env(env),
                cwd=self.root,
                stdout=out,
                stderr=out,
            )
        self.processes.append(process)
        return process

    def pids(self) -> list[int]:
        """Every process in this host's namespace, whoever started it."""
        done = subprocess.run(
            ["ip", "netns", "pids", self.netns], capture_output=True, check=False, text=True
        )
        return [int(p) for p in done.stdout.split()]

    def tree(self) -> set[int]:
        """The host's processes and every descendant of theirs, in any namespace.

        An agent's sandbox has a network namespace of its own (``--unshare-net``), so
        ``ip netns pids`` does not list what runs inside it; on a real host that dies,
        those die too.
        """
        found = set(self.pids())
        for pid in list(found):
            with suppress(psutil.Error):
                found.update(child.pid for child in psutil.Process(pid).children(recursive=True))
        return found

    def _kill_tree(self) -> list[int]:
        """SIGSTOP the whole tree until no look finds more, then SIGKILL all of it.

        Killing from one list races what the processes start meanwhile: a sandbox forked
        just before the list is taken, whose parent is killed before the kernel's
        parent-death signal is armed in it, would outlive the host. Stopped processes
        start nothing, so the tree is frozen first and killed whole.
        """
        stopped: set[int] = set()
        for _ in range(_FREEZE_ROUNDS):
            fresh = self.tree() - stopped
            if not fresh:
                break
            for pid in fresh:
                with suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGSTOP)
            stopped |= fresh
        for pid in stopped:
            with suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        return sorted(stopped)

    async def kill_everything(self) -> list[int]:
        """SIGKILL every process of the host (its children too) and reap those we started.

        Returns:
            The pids killed.
        """
        killed = self._kill_tree()
        for process in self.processes:
            with anyio.fail_after(10):
                await process.wait()
        return killed

    async def stop_all(self) -> None:
        """SIGTERM what we started, SIGKILL what is left after a grace; shielded."""
        with anyio.CancelScope(shield=True):
            for process in self.processes:
                if process.returncode is None:
                    process.send_signal(signal.SIGTERM)
            with anyio.move_on_after(_STOP_GRACE_S):
                for process in self.processes:
                    await process.wait()
            self._kill_tree()
            for process in self.processes:
                if process.returncode is None:
                    process.kill()
                await process.wait()
                await process.aclose()


@dataclass
class HostNetwork:
    """The bridge and its hosts; the root namespace is the outside (test, model API).

    Attributes:
        bridge: the bridge's name.
        gateway: the root namespace's address on the bridge (what the hosts reach the
            test's own servers on, such as the scripted model).
        hosts: by name.
    """

    bridge: str
    gateway: str
    hosts: dict[str, Host]

    def __getitem__(self, name: str) -> Host:
        return self.hosts[name]

    def cut(self, host: Host) -> None:
        """Take the host's link down: it reaches nothing and nothing reaches it."""
        _ip("link", "set", host.port, "down")

    def restore(self, host: Host) -> None:
        """Bring the host's link back up."""
        _ip("link", "set", host.port, "up")

    def partition(self, host: Host, others: Sequence[Host]) -> None:
        """Drop every packet between ``host`` and each of ``others``, both ways.

        Blackhole routes, not rejections: a peer across a partition is silent, as one
        across a broken network is, so each side learns only by timing out.
        """
        for other in others:
            _ip("route", "add", "blackhole", f"{other.address}/32", netns=host.netns)
            _ip("route", "add", "blackhole", f"{host.address}/32", netns=other.netns)

    def heal(self, host: Host, others: Sequence[Host]) -> None:
        """Undo :meth:`partition`."""
        for other in others:
            _ip("route", "del", "blackhole", f"{other.address}/32", netns=host.netns)
            _ip("route", "del", "blackhole", f"{host.address}/32", netns=other.netns)


def _sweep_leftovers() -> None:
    """Remove namespaces and bridges of runs whose process is gone (a killed pytest)."""
    names = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=False)
    links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True, check=False)
    found = re.findall(rf"\b({_PREFIX}(\d+)x[0-9a-f]{{2}}\w*)", names.stdout + links.stdout)
    for name, pid in found:
        if not Path(f"/proc/{pid}").exists():
            subprocess.run(["ip", "netns", "del", name], capture_output=True, check=False)
            subprocess.run(["ip", "link", "del", name], capture_output=True, check=False)


def _used_subnets() -> set[str]:
    shown = subprocess.run(["ip", "-o", "-4", "addr"], capture_output=True, text=True, check=False)
    return set(re.findall(r"inet (10\.\d+\.\d+)\.", shown.stdout))


def _teardown(bridge: str, namespaces: Iterator[str], ports: Iterator[str]) -> None:
    for netns in namespaces:
        subprocess.run(["ip", "netns", "del", netns], capture_output=True, check=False)
    # A namespace goes once its last process has; its veth pair with it. Removing the
    # bridge's ends too leaves nothing behind even while one lingers.
    for port in ports:
        subprocess.run(["ip", "link", "del", port], capture_output=True, check=False)
    subprocess.run(["ip", "link", "del", bridge], capture_output=True, check=False)


@asynccontextmanager
async def open_hosts(directory: Path, names: Sequence[str]) -> AsyncIterator[HostNetwork]:
    """Hosts ``names`` on a fresh bridge, each with a directory under ``directory``.

    Every process started on a host is ended, then every namespace, veth and the bridge
    removed, on every path out (a failed test included).

    Raises:
        RuntimeError: an ``ip`` command failed while building the network.
    """
    _sweep_leftovers()
    tag = f"{_PREFIX}{os.getpid()}x{random.randbytes(1).hex()}"
    used = _used_subnets()
    subnet = next(
        s
        for s in (f"10.{random.randint(64, 250)}.{random.randint(0, 255)}" for _ in range(100))
        if s not in used
    )
    bridge = f"{tag}b"
    network = HostNetwork(bridge=bridge, gateway=f"{subnet}.1", hosts={})
    namespaces: list[str] = []
    try:
        _ip("link", "add", bridge, "type", "bridge")
        _ip("addr", "add", f"{network.gateway}/24", "dev", bridge)
        _ip("link", "set", bridge, "up")
        for index, name in enumerate(names, start=1):
            netns = f"{tag}{name}"
            port = f"{tag}{index}"
            _ip("netns", "add", netns)
            namespaces.append(netns)
            _ip("link", "add", port, "type", "veth", "peer", "name", "eth0", "netns", netns)
            _ip("link", "set", port, "master", bridge)
            _ip("link", "set", port, "up")
            address = f"{subnet}.{index + 1}"
            _ip("addr", "add", f"{address}/24", "dev", "eth0", netns=netns)
            _ip("link", "set", "eth0", "up", netns=netns)
            _ip("link", "set", "lo", "up", netns=netns)
            root = directory / name
            for sub in ("home", "tmp", "logs"):
                (root / sub).mkdir(parents=True, exist_ok=True)
            network.hosts[name] = Host(
                name=name, netns=netns, address=address, port=port, root=root
            )
        yield network
    finally:
        with anyio.CancelScope(shield=True):
            for host in network.hosts.values():
                await host.stop_all()
            _teardown(bridge, iter(namespaces), (h.port for h in network.hosts.values()))


def require_netns() -> None:
    """Skip the calling test where hosts cannot be made, failing instead under CI."""
    reason = netns_available()
    if reason is not None:
        if os.environ.get("CI"):
            pytest.fail(f"hosts cannot be made here: {reason}")
        pytest.skip(reason)
