"""The reaper ends an attempt's whole process tree, even when its worker is killed."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil

from claudecluster.executors.process import launcher


def _sleepers(marker: str, where: Path) -> list[psutil.Process]:
    """The living sleep with this marker started in ``where``, and the reaper supervising it.

    Matched by working directory too: other test runs on the machine start the same
    commands, and their processes are not this test's.
    """
    found = []
    for process in psutil.process_iter(["cmdline", "cwd"]):
        cmdline = process.info["cmdline"] or []
        mine = (process.info["cwd"] or "").startswith(str(where))
        if mine and (
            cmdline == ["sleep", marker] or any(f"sleep {marker}" in part for part in cmdline)
        ):
            try:
                if process.status() != psutil.STATUS_ZOMBIE:
                    found.append(process)
            except psutil.Error:  # it ended while we looked: gone is what we wait for
                continue
    return found


# How long a loaded machine may take to end a tree, and to start one (reaper, bash, sleep).
GONE_WITHIN_S = 30.0
STARTED_WITHIN_S = 30.0


def _wait_gone(marker: str, where: Path) -> list[psutil.Process]:
    deadline = time.monotonic() + GONE_WITHIN_S
    while time.monotonic() < deadline:
        if not _sleepers(marker, where):
            return []
        time.sleep(0.05)
    return _sleepers(marker, where)


def test_background_processes_the_command_left_are_ended_when_it_exits(tmp_path: Path) -> None:
    done = subprocess.run(
        [*launcher(), "bash", "-c", "sleep 301 & exit 3"], cwd=tmp_path, check=False, timeout=30
    )
    assert done.returncode == 3  # the command's status comes through
    assert _wait_gone("301", tmp_path) == []


def test_a_killed_worker_takes_the_grandchildren_of_its_attempt_with_it(tmp_path: Path) -> None:
    # A stand-in worker starts an attempt whose shell starts a sleep, then is killed -9.
    worker_code = (
        "import subprocess, time\n"
        "from claudecluster.executors.process import launcher\n"
        "subprocess.Popen([*launcher(), 'bash', '-c', 'sleep 302; true'])\n"
        "time.sleep(300)\n"
    )
    worker = subprocess.Popen([sys.executable, "-c", worker_code], cwd=tmp_path)
    try:
        deadline = time.monotonic() + STARTED_WITHIN_S

        def attempt() -> list[psutil.Process]:
            return [p for p in _sleepers("302", tmp_path) if p.pid != worker.pid]

        while len(attempt()) < 3 and time.monotonic() < deadline:
            time.sleep(0.05)  # the reaper, its bash and the sleep
        assert len(attempt()) == 3, "the attempt never started"
        worker.send_signal(signal.SIGKILL)
        worker.wait(timeout=10)
        assert [p for p in _wait_gone("302", tmp_path) if p.pid != worker.pid] == []
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait()


def test_an_attempt_whose_worker_died_before_the_reaper_started_does_not_run(
    tmp_path: Path,
) -> None:
    # The reaper is told its worker's pid; a different parent means the worker is gone.
    prefix = launcher()
    position = prefix.index("--parent") + 1
    prefix[position] = "1"  # not this process: as if the worker had died meanwhile
    done = subprocess.run(
        [*prefix, "bash", "-c", "touch ran"], cwd=tmp_path, check=False, timeout=30
    )
    assert done.returncode == 143
    assert not (tmp_path / "ran").exists()
