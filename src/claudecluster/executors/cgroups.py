"""Control groups: limits an attempt cannot escape, and an end it cannot outlive.

Each attempt gets its own cgroup below the worker's, with ``memory.max``, ``pids.max`` and
``cpu.max`` from the task's limits; the process enters it before anything else runs, so
everything it spawns (``setsid``, double forks, a killed reaper) stays inside, and the
attempt is ended with ``cgroup.kill``, which the kernel applies to every member at once.

Machines differ. A pure cgroup v2 host with delegated controllers gets all of that from
v2. A hybrid host (v2 mounted at ``/sys/fs/cgroup/unified`` with the memory, pids and cpu
controllers still bound to v1 hierarchies, as on this project's CI machine) gets
``cgroup.kill`` from v2 and the limits from the v1 controllers (``memory.limit_in_bytes``,
``pids.max``, ``cpu.cfs_quota_us``). Where nothing is writable (an unprivileged user
without delegation), :func:`create_attempt_cgroup` returns None and the reaper
(:mod:`.reaper`) and the worker's own RSS watch remain the only limits; the worker says so
once in its log.
"""

from __future__ import annotations

import contextlib
import functools
import os
import signal
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import anyio

from claudecluster.observability.logging import get_logger

__all__ = ["AttemptCgroup", "CgroupLimits", "cgroup_prefix", "create_attempt_cgroup"]

_PARENT: Final = "claudecluster"
_CPU_PERIOD_US: Final = 100_000
_EMPTY_WAIT_S: Final = 10.0
#: How often a hierarchy's parent is swept of dead processes' attempt cgroups. Not at
#: every attempt: on a busy host the sweep (a listing and a liveness check per entry)
#: was a part of each no-op attempt's cost, on the event loop.
_SWEEP_EVERY_S: Final = 60.0
_log = get_logger(__name__)


@dataclass(frozen=True, slots=True)
class CgroupLimits:
    """The limits one attempt's cgroup enforces (None: not limited)."""

    memory_bytes: int | None = None
    max_processes: int | None = None
    cpus: float | None = None


@dataclass(frozen=True, slots=True)
class _Layout:
    unified: Path | None  # this process's cgroup in the v2 hierarchy
    v1: dict[str, Path]  # controller -> this process's cgroup in its v1 hierarchy


@dataclass
class AttemptCgroup:
    """One attempt's cgroup directories (one in v2, one per v1 controller used).

    Attributes:
        unified: the v2 directory (``cgroup.kill``), if any.
        v1: controller name -> its v1 directory.
        limited: the limits that are actually enforced (names, for the record).
    """

    unified: Path | None
    v1: dict[str, Path]
    limited: tuple[str, ...]

    @property
    def procs_files(self) -> tuple[Path, ...]:
        """The ``cgroup.procs`` files the attempt's first process writes its pid to."""
        dirs = [self.unified] if self.unified is not None else []
        return tuple(d / "cgroup.procs" for d in [*dirs, *self.v1.values()])

    def members(self) -> set[int]:
        """Pids still in the cgroup."""
        found: set[int] = set()
        for procs in self.procs_files:
            with contextlib.suppress(OSError):
                found |= {int(pid) for pid in procs.read_text().split()}
        return found

    def oom_killed(self) -> bool:
        """Whether the kernel killed a member for going over the memory limit."""
        candidates = []
        if "memory" in self.v1:
            candidates.append(self.v1["memory"] / "memory.oom_control")
        if self.unified is not None:
            candidates.append(self.unified / "memory.events")
        for path in candidates:
            with contextlib.suppress(OSError):
                for line in path.read_text().splitlines():
                    name, _, value = line.partition(" ")
                    if name == "oom_kill" and value.strip() not in ("", "0"):
                        return True
        return False

    def kill(self) -> None:
        """SIGKILL every member: by ``cgroup.kill`` where the kernel has it, else one by one."""
        if self.unified is not None:
            with contextlib.suppress(OSError):
                (self.unified / "cgroup.kill").write_text("1")
                return
        for _ in range(100):  # members may fork while being killed; pids.max bounds that
            pids = self.members()
            if not pids:
                return
            for pid in pids:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGKILL)

    async def close(self) -> None:
        """Kill what is left and remove the directories (never cancelled)."""
        with anyio.CancelScope(shield=True):
            self.kill()
            with anyio.move_on_after(_EMPTY_WAIT_S):
                while self.members():
                    await anyio.sleep(0.01)
                    self.kill()
            for directory in [*self.v1.values(), *([self.unified] if self.unified else [])]:
                try:
                    directory.rmdir()
                except OSError as exc:
                    _log.warning("attempt cgroup not removed", path=str(directory),
                                 error=str(exc))  # fmt: skip


def cgroup_prefix(cgroup: AttemptCgroup | None) -> list[str]:
    """A command prefix that puts the process in ``cgroup`` and then runs the command.

    The shell writes its own pid into each ``cgroup.procs`` and ``exec``-s the command,
    so the command and all its descendants start inside. Failing to enter is an error
    (exit 126), never a silent run without limits.
    """
    if cgroup is None:
        return []
    script = 'while [ "$1" != -- ]; do echo $$ > "$1" || exit 126; shift; done; shift; exec "$@"'
    return ["/bin/sh", "-c", script, "cgroup-enter", *map(str, cgroup.procs_files), "--"]


def _mounts() -> tuple[Path | None, dict[str, Path]]:
    unified: Path | None = None
    v1: dict[str, Path] = {}
    try:
        lines = Path("/proc/self/mountinfo").read_text().splitlines()
    except OSError:
        return None, {}
    for line in lines:
        head, _, tail = line.partition(" - ")
        fields, extra = head.split(), tail.split()
        if len(fields) < 5 or len(extra) < 3:
            continue
        root, point, fstype = fields[3], Path(fields[4]), extra[0]
        if root != "/":
            continue  # a bind of a sub-tree: paths in /proc/self/cgroup would not match
        if fstype == "cgroup2" and unified is None:
            unified = point
        elif fstype == "cgroup":
            for option in extra[2].split(","):
                if option in ("memory", "pids", "cpu"):
                    v1.setdefault(option, point)
    return unified, v1


@functools.cache
def _layout() -> _Layout:
    unified_mount, v1_mounts = _mounts()
    unified: Path | None = None
    v1: dict[str, Path] = {}
    try:
        lines = Path("/proc/self/cgroup").read_text().splitlines()
    except OSError:
        lines = []
    for line in lines:
        _, controllers, path = line.split(":", 2)
        relative = path.lstrip("/")
        if controllers == "" and unified_mount is not None:
            unified = unified_mount / relative
        for controller in controllers.split(","):
            if controller in v1_mounts:
                v1[controller] = v1_mounts[controller] / relative
    return _Layout(unified=unified, v1=v1)


def _write(path: Path, value: str) -> bool:
    try:
        path.write_text(value)
    except OSError:
        return False
    return True


def _controllers(directory: Path) -> set[str]:
    try:
        return set((directory / "cgroup.controllers").read_text().split())
    except OSError:
        return set()


def _sweep(parent: Path) -> None:
    """Remove empty attempt cgroups of processes that died without removing them."""
    try:
        entries = list(parent.glob("attempt-*-*"))
    except OSError:
        return
    for entry in entries:
        owner = entry.name.split("-")[1]
        if owner.isdigit() and not _alive(int(owner)):
            with contextlib.suppress(OSError):  # not empty: something still runs there
                entry.rmdir()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


#: parent directory -> when it was last swept (monotonic seconds), in this process
_swept: dict[Path, float] = {}
#: v2 directories whose ``claudecluster`` sub-tree was handed the controllers
_delegated: set[Path] = set()


def _make(parent: Path, name: str) -> Path | None:
    home = parent / _PARENT
    now = time.monotonic()
    last = _swept.get(home)
    if last is None or now - last >= _SWEEP_EVERY_S:
        if home.is_dir():
            _sweep(home)
        _swept[home] = now
    try:
        home.mkdir(exist_ok=True)
        directory = home / name
        directory.mkdir()
    except OSError:
        return None
    return directory


def _delegate(top: Path) -> None:
    """Hand the controllers this host has in v2 down to our sub-tree, once per process
    (again if the sub-tree was removed meanwhile). Best effort: refused where our own
    cgroup holds processes; then v1 or nothing is used."""
    if top in _delegated and (top / _PARENT).is_dir():
        return
    with contextlib.suppress(OSError):
        (top / _PARENT).mkdir(exist_ok=True)
        for controller in sorted(_controllers(top) & {"memory", "pids", "cpu"}):
            _write(top / "cgroup.subtree_control", f"+{controller}")
            _write(top / _PARENT / "cgroup.subtree_control", f"+{controller}")
        _delegated.add(top)


_said: list[bool] = []


def _say_no_cgroup_once(layout: _Layout) -> None:
    if _said:
        return
    _said.append(True)
    _log.warning(
        "no writable cgroup hierarchy: attempts run without memory, pids and CPU cgroup "
        "limits; the wall time, the RSS watch and the reaper remain",
        unified=str(layout.unified),
        v1=sorted(layout.v1),
    )


def create_attempt_cgroup(limits: CgroupLimits) -> AttemptCgroup | None:
    """A new cgroup for one attempt with ``limits``, or None where none can be made.

    Limits go to v2 controllers where the attempt's v2 cgroup has them, else to the v1
    hierarchy of that controller.
    """
    layout = _layout()
    name = f"attempt-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    unified = None
    v2_has: set[str] = set()
    if layout.unified is not None:
        top = layout.unified
        _delegate(top)
        unified = _make(top, name)
        if unified is not None:
            v2_has = _controllers(unified)
    v1: dict[str, Path] = {}
    limited: list[str] = []

    def place(controller: str) -> Path | None:
        if unified is not None and controller in v2_has:
            return unified
        if controller in layout.v1:
            directory = v1.get(controller) or _make(layout.v1[controller], name)
            if directory is not None:
                v1[controller] = directory
            return directory
        return None

    if limits.memory_bytes is not None and (where := place("memory")) is not None:
        if where == unified:
            ok = _write(where / "memory.max", str(limits.memory_bytes))
            _write(where / "memory.swap.max", "0")
        else:
            ok = _write(where / "memory.limit_in_bytes", str(limits.memory_bytes))
            _write(where / "memory.memsw.limit_in_bytes", str(limits.memory_bytes))
        if ok:
            limited.append("memory")
    if (
        limits.max_processes is not None
        and (where := place("pids")) is not None
        and _write(where / "pids.max", str(limits.max_processes))
    ):
        limited.append("pids")
    if limits.cpus is not None and (where := place("cpu")) is not None:
        quota = max(1000, int(limits.cpus * _CPU_PERIOD_US))
        if where == unified:
            ok = _write(where / "cpu.max", f"{quota} {_CPU_PERIOD_US}")
        else:
            ok = _write(where / "cpu.cfs_period_us", str(_CPU_PERIOD_US)) and _write(
                where / "cpu.cfs_quota_us", str(quota)
            )
        if ok:
            limited.append("cpu")
    if unified is None and not v1:
        _say_no_cgroup_once(layout)
        return None
    return AttemptCgroup(unified=unified, v1=v1, limited=tuple(limited))
