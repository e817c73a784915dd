"""Walking a process tree while it changes: members that end mid-walk are left out, never raised.

Real processes only: a tree whose root forks children that exit at once, so members end
between being listed and being read, as Claude Code's short-lived tool processes do.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time

import psutil

from claudecluster.executors.process import tree_members, tree_rss

# How long a loaded 2-core machine may take to start the tree, and to show the race.
TREE_STARTED_WITHIN_S = 30.0
CHURN_SEEN_WITHIN_S = 60.0

# A root that keeps one long-lived child and, for ever, twenty children that each live a
# few milliseconds: some end, or turn zombie, during every walk however loaded the machine.
_CHURNING_ROOT = """
import os, random, subprocess, time
subprocess.Popen(["sleep", "300"])
alive = 0
while True:
    while alive < 20:
        if os.fork() == 0:
            time.sleep(random.uniform(0.001, 0.02))
            os._exit(0)
        alive += 1
    os.wait()
    alive -= 1
"""


# A root whose only child has exited and is never reaped: a zombie below a live process.
_ZOMBIE_PARENT = """
import os, time
if os.fork() == 0:
    os._exit(0)
time.sleep(300)
"""


def _start(code: str) -> subprocess.Popen[bytes]:
    # Its own session, so one killpg ends the root and everything it started.
    return subprocess.Popen([sys.executable, "-c", code], start_new_session=True)


def _end(root: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError):  # the whole session ended already
        os.killpg(root.pid, signal.SIGKILL)
    root.wait(timeout=TREE_STARTED_WITHIN_S)


def _wait_for_member(root: subprocess.Popen[bytes], wanted: str) -> psutil.Process:
    deadline = time.monotonic() + TREE_STARTED_WITHIN_S
    while time.monotonic() < deadline:
        for member in tree_members(root.pid)[1:]:
            try:
                if member.name() == wanted or member.status() == wanted:
                    return member
            except psutil.Error:
                continue
        time.sleep(0.02)
    raise AssertionError(f"no {wanted} member appeared within {TREE_STARTED_WITHIN_S} s")


def _ended(member: psutil.Process) -> bool:
    """Whether ``member`` exited since it was listed (a zombie has, but keeps its pid)."""
    try:
        return member.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def test_a_walk_while_members_exit_returns_the_survivors_without_raising() -> None:
    root = _start(_CHURNING_ROOT)
    try:
        sleeper = _wait_for_member(root, "sleep")
        watched = psutil.Process(root.pid)
        seen_pids: set[int] = set()
        ended_after_listing = 0
        walks = 0
        deadline = time.monotonic() + CHURN_SEEN_WITHIN_S
        while (ended_after_listing < 5 or walks < 50) and time.monotonic() < deadline:
            members = tree_members(watched)  # must not raise, however the tree changed
            walks += 1
            pids = [member.pid for member in members]
            assert pids[0] == root.pid
            assert sleeper.pid in pids  # the survivors are all there
            seen_pids.update(pids)
            # The race the walk must survive: members it listed that were gone when read.
            ended_after_listing += sum(_ended(member) for member in members)
            assert tree_rss(watched) >= sleeper.memory_info().rss
        assert ended_after_listing >= 5, (
            f"{walks} walks in {CHURN_SEEN_WITHIN_S} s saw only {ended_after_listing} members "
            "end after being listed: the tree did not churn"
        )
        assert len(seen_pids) > 10  # short-lived children came and went between walks
    finally:
        _end(root)


def test_a_walk_of_a_tree_whose_root_has_ended_finds_nothing() -> None:
    root = _start("import subprocess; subprocess.Popen(['sleep', '300'])")
    watched = psutil.Process(root.pid)  # held from before it ended, as a watcher holds it
    try:
        root.wait(timeout=TREE_STARTED_WITHIN_S)  # exited and reaped: its pid is free
        assert tree_members(watched) == []
        assert tree_members(root.pid) == []
        assert tree_rss(watched) == 0
    finally:
        _end(root)  # the orphaned sleep is still in the root's session


def test_a_zombie_member_is_listed_and_read_without_raising() -> None:
    root = _start(_ZOMBIE_PARENT)
    try:
        zombie = _wait_for_member(root, psutil.STATUS_ZOMBIE)
        assert [member.pid for member in tree_members(root.pid)] == [root.pid, zombie.pid]
        assert tree_rss(root.pid) >= psutil.Process(root.pid).memory_info().rss
    finally:
        _end(root)
