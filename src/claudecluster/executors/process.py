"""Process trees: measuring and ending everything an executor started.

Executors start their process in a new session (its own process group), so one signal
reaches everything it spawned; children that left the group are found and ended too.
"""

from __future__ import annotations

import os
import signal
import sys
from contextlib import suppress
from pathlib import Path

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


def launcher(nice: int = 0) -> list[str]:
    """A command prefix that ties the whole tree's life to its worker's, and lowers its
    priority.

    The prefix runs the command under :mod:`claudecluster.executors.reaper`, which the
    kernel signals when the worker dies (even by ``kill -9``) and which then ends every
    process below it, including ones the agent's own tools started and orphaned.
    """
    prefix = [sys.executable, str(_REAPER), "--parent", str(os.getpid()), "--"]
    if nice > 0:
        prefix += ["nice", "-n", str(min(nice, 19))]
    return prefix
