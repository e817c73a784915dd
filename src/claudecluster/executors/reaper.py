"""A supervisor between a worker and the process tree of one attempt.

Run as a script (``python reaper.py --parent PID -- COMMAND ...``), not imported: it starts in a few
milliseconds and needs only the standard library and psutil.

Why it exists: a worker killed with SIGKILL cannot end what it started. The kernel's
parent-death signal reaches only a direct child, so an agent's own children (a shell the
agent ran, a ``sleep`` in it, a test server) would run on, orphaned. The reaper is that
direct child. It asks for SIGTERM when its parent dies and makes itself the "subreaper"
of everything below it, so orphans are re-parented to it instead of to init. On SIGTERM,
from the dying worker or from the worker ending the attempt, and when the command itself
exits, it ends every descendant it still has. Its exit status is the command's.
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import time
from types import FrameType

import psutil

_PR_SET_PDEATHSIG = 1
_PR_SET_CHILD_SUBREAPER = 36
_GRACE_S = 2.0


def _prctl(option: int, value: int) -> bool:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return bool(libc.prctl(option, value, 0, 0, 0) == 0)
    except (OSError, AttributeError):  # not Linux: no guarantee beyond the worker's own
        return False


def descendants(root: psutil.Process) -> list[psutil.Process]:
    """Every process below ``root`` that could still be listed; none once ``root`` ended.

    The one walk of a process tree (the executors and the benchmarks use it through
    :mod:`claudecluster.executors.process`; it lives here because this script must not
    import the package). A tree changes while it is walked: a member can exit, or turn
    zombie, between being listed and being read, and ``root`` itself can end first. psutil
    says so with ``NoSuchProcess`` (``ZombieProcess`` is one) or ``AccessDenied``; the walk
    returns the members it found instead, and every caller reads each member under the same
    tolerance, since any of them may be gone by then.
    """
    try:
        return root.children(recursive=True)
    except psutil.Error:  # root ended (or was never ours to read): nothing below it to find
        return []


def _end_descendants() -> None:
    """SIGTERM every descendant, SIGKILL what is left after a grace period."""
    members = descendants(psutil.Process())
    for member in members:
        try:
            member.terminate()
        except psutil.Error:
            continue
    _, alive = psutil.wait_procs(members, timeout=_GRACE_S)
    for member in alive:
        try:
            member.kill()
        except psutil.Error:
            continue
    psutil.wait_procs(alive, timeout=_GRACE_S)


def main(argv: list[str]) -> int:
    """Run ``argv`` (after ``--``) under supervision; return its exit status."""
    options = argv[: argv.index("--")] if "--" in argv else []
    command = argv[argv.index("--") + 1 :] if "--" in argv else argv
    if not command:
        sys.stderr.write("reaper: no command given\n")
        return 2
    # The worker's pid comes from the worker: reading getppid() here would be too late if
    # the worker died while this interpreter was still starting.
    parent = int(options[options.index("--parent") + 1]) if "--parent" in options else None
    _prctl(_PR_SET_CHILD_SUBREAPER, 1)
    _prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    if parent is not None and os.getppid() != parent:
        return 143  # the worker died before the signal was armed: run nothing

    stopping = False

    def stop(signum: int, frame: FrameType | None) -> None:
        nonlocal stopping
        del frame
        stopping = True
        _end_descendants()
        sys.exit(128 + signum)

    signal.signal(signal.SIGTERM, stop)
    # SIGINT is the command's to handle (Claude Code ends its turn on it); a handler
    # rather than SIG_IGN, since an ignored signal would stay ignored in the command.
    signal.signal(signal.SIGINT, lambda signum, frame: None)
    try:
        child = subprocess.Popen(command)
    except OSError as exc:
        sys.stderr.write(f"reaper: cannot start {command[0]}: {exc}\n")
        return 127
    status = child.wait()
    if not stopping:
        # The command is done; anything it left running in the background goes with it.
        _end_descendants()
        while True:  # reap adopted orphans that ended on their own
            try:
                if os.waitpid(-1, os.WNOHANG) == (0, 0):
                    break
            except ChildProcessError:
                break
            time.sleep(0)
    return status if status >= 0 else 128 - status


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
