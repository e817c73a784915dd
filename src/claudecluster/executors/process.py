"""Process trees: measuring and ending everything an executor started.

Executors start their process in a new session (its own process group), so one signal
reaches everything it spawned; children that left the group are found and ended too.
"""

from __future__ import annotations

import functools
import os
import shutil
import signal
import subprocess
import sys
from contextlib import suppress
from pathlib import Path
from typing import Final

import anyio
import anyio.abc
import psutil

from claudecluster.executors.reaper import descendants

_REAPER = Path(__file__).with_name("reaper.py")

__all__ = ["end_tree", "launcher", "tree_members", "tree_rss"]


def tree_members(root: int | psutil.Process) -> list[psutil.Process]:
    """``root`` and every process below it that could still be listed; none if it ended.

    Pass a :class:`psutil.Process` held since the process started rather than a pid where
    you can: psutil then notices a pid the system has reused for someone else's process.
    Any member may end right after this returns, so read each one tolerating
    ``psutil.Error`` (as :func:`tree_rss` does).
    """
    try:
        process = root if isinstance(root, psutil.Process) else psutil.Process(root)
    except psutil.Error:
        return []
    below = descendants(process)
    return [process, *below] if below or _listed(process) else []


def _listed(process: psutil.Process) -> bool:
    """Whether ``process`` still exists (a zombie does: it holds its pid until reaped)."""
    try:
        return process.is_running()
    except psutil.Error:
        return False


def tree_rss(root: int | psutil.Process) -> int:
    """Resident bytes of ``root`` and its descendants; members that ended count 0."""
    total = 0
    for member in tree_members(root):
        with suppress(psutil.Error):  # it exited, turned zombie or hid since it was listed
            total += member.memory_info().rss
    return total


async def end_tree(process: anyio.abc.Process, grace_s: float, *, close: bool = True) -> None:
    """SIGTERM the process group (and strays), SIGKILL after ``grace_s``; never cancelled.

    With ``close=False`` the process's pipes stay open for readers still draining them.
    """
    with anyio.CancelScope(shield=True):
        strays = tree_members(process.pid)[1:]
        if process.returncode is None:
            if strays:
                # The members below first: the process held is often a PID namespace's
                # outer end (bubblewrap), whose death SIGKILLs the whole namespace and
                # would leave the command no grace. It exits once the command has.
                for stray in strays:
                    with suppress(psutil.Error):
                        stray.terminate()
            else:
                with suppress(ProcessLookupError, PermissionError):
                    os.killpg(process.pid, signal.SIGTERM)
            with anyio.move_on_after(grace_s):
                await process.wait()
        if process.returncode is None:
            with suppress(ProcessLookupError, PermissionError):
                os.killpg(process.pid, signal.SIGKILL)
            await process.wait()
        for stray in strays:  # children that left the group (setsid) are ended too
            with suppress(psutil.Error):  # ended with the group, or since
                stray.kill()
        if close:
            await process.aclose()


def launcher(nice: int = 0, *, sandboxed: bool = False) -> list[str]:
    """A command prefix that ties the whole tree's life to its worker's, and lowers its
    priority.

    The tree ends when the worker dies (even by ``kill -9``), including processes the
    agent's own tools started, orphaned or moved to a session of their own. Wherever
    this machine allows it, no interpreter is started for that (a Python start is ~50 to
    100 ms of CPU and ~15 MB per attempt):

    * ``setpriv --pdeathsig KILL`` (util-linux) arms the kernel's parent-death signal
      and ``exec``-s a shell that checks the worker is still its parent (the worker may
      have died before the signal was armed; then nothing runs, status 143) and
      ``exec``-s the rest, so the process the worker holds stays one process;
    * the command runs in a PID namespace of its own, made by bubblewrap with
      ``--die-with-parent``: when its first process ends (the command exits, or the
      worker's death kills it) the kernel ends every process in the namespace at once.
      With ``sandboxed`` the caller's sandbox (``bwrap_command``) is that namespace;
      otherwise a bare one is made (the machine's whole filesystem, network and
      users: a PID namespace only, for attempts the operator chose to run unconfined).

    Where ``setpriv`` is missing or bubblewrap cannot make a PID namespace, the prefix
    falls back to :mod:`claudecluster.executors.reaper`, a Python supervisor that does
    the same with a subreaper.

    Args:
        nice: the niceness to run at (0: unchanged; at most 19).
        sandboxed: a ``bwrap --die-with-parent --unshare-pid`` sandbox follows the prefix.
    """
    niced = ["nice", "-n", str(min(nice, 19))] if nice > 0 else []
    setpriv = _setpriv()
    namespace = [] if sandboxed else _bare_namespace()
    if setpriv is None or namespace is None:
        return [sys.executable, str(_REAPER), "--parent", str(os.getpid()), "--", *niced]
    guard = [setpriv, "--pdeathsig", "KILL", "--", "/bin/sh", "-c", _GUARD, "guard"]
    return [*guard, "--parent", str(os.getpid()), "--", *niced, *namespace]


#: The guard shell: its parent (field 4 of /proc/self/stat) must still be the worker
#: whose pid it was given, now that the parent-death signal is armed.
_GUARD: Final = (
    'read -r _ _ _ parent _ < /proc/$$/stat && [ "$parent" = "$2" ] || exit 143; shift 3; exec "$@"'
)

_BARE_NAMESPACE: Final = (
    "--die-with-parent", "--unshare-pid", "--dev-bind", "/", "/", "--proc", "/proc", "--",
)  # fmt: skip


@functools.cache
def _setpriv() -> str | None:
    return shutil.which("setpriv")


@functools.cache
def _bare_namespace() -> list[str] | None:
    """The bare PID-namespace prefix, after one ``true`` ran in it; None where it cannot."""
    bwrap = shutil.which("bwrap")
    if bwrap is None:
        return None
    argv = [bwrap, *_BARE_NAMESPACE]
    try:
        done = subprocess.run([*argv, "/bin/true"], capture_output=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return argv if done.returncode == 0 else None
