"""An attempt's whole process tree ends with it, even when its worker is killed.

Three ways to provide that, each checked: the attempt's own sandbox (bubblewrap's PID
namespace with ``--die-with-parent``), a bare PID namespace for an unconfined attempt, and
the Python reaper where neither ``setpriv`` nor bubblewrap's namespaces are available.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import psutil
import pytest

from claudecluster.executors import process as process_module
from claudecluster.executors.confinement import Mechanism
from claudecluster.executors.process import launcher


def _sleepers(marker: str, where: Path) -> list[psutil.Process]:
    """The living processes with ``sleep <marker>`` in their command line, started in ``where``.

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


def _sleeping(marker: str, where: Path) -> bool:
    """Whether the ``sleep <marker>`` process itself runs (not only a parent naming it)."""
    return any(p.info["cmdline"] == ["sleep", marker] for p in _sleepers(marker, where))


# How long a loaded machine may take to end a tree, and to start one (bwrap, bash, sleep).
GONE_WITHIN_S = 30.0
STARTED_WITHIN_S = 30.0


def _wait_gone(marker: str, where: Path) -> list[psutil.Process]:
    deadline = time.monotonic() + GONE_WITHIN_S
    while time.monotonic() < deadline:
        if not _sleepers(marker, where):
            return []
        time.sleep(0.05)
    return _sleepers(marker, where)


@pytest.fixture(params=["namespace", "python-reaper"])
def way(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Each way an unconfined attempt's tree is tied to its worker."""
    if request.param == "python-reaper":
        monkeypatch.setattr(process_module, "_setpriv", lambda: None)
    elif process_module._setpriv() is None or process_module._bare_namespace() is None:
        pytest.skip("no setpriv or no PID namespaces here: only the Python reaper applies")
    return str(request.param)


def test_no_interpreter_is_started_per_attempt_where_namespaces_work(way: str) -> None:
    prefix = launcher(3)
    if way == "namespace":
        assert sys.executable not in prefix
        assert prefix[prefix.index("--pdeathsig") + 1] == "KILL"
        assert "--die-with-parent" in prefix
        assert "--unshare-pid" in prefix
    else:
        assert prefix[0] == sys.executable
    at = prefix.index("nice")
    assert prefix[at : at + 3] == ["nice", "-n", "3"]
    sandboxed = launcher(sandboxed=True)
    assert "--unshare-pid" not in sandboxed  # the sandbox that follows is the namespace


def test_background_processes_the_command_left_are_ended_when_it_exits(
    tmp_path: Path, way: str
) -> None:
    del way
    done = subprocess.run(
        [*launcher(), "bash", "-c", "setsid sleep 301 & sleep 311 & exit 3"],
        cwd=tmp_path,
        check=False,
        timeout=30,
    )
    assert done.returncode == 3  # the command's status comes through
    assert _wait_gone("301", tmp_path) == []
    assert _wait_gone("311", tmp_path) == []


def _kill_worker_mid_attempt(tmp_path: Path, worker_code: str, marker: str) -> None:
    """Start a stand-in worker running ``worker_code``, kill it -9 mid-attempt, and check
    that nothing of the attempt (its shell, a ``sleep``, a ``setsid sleep``) survives."""
    worker = subprocess.Popen([sys.executable, "-c", worker_code], cwd=tmp_path)
    try:
        deadline = time.monotonic() + STARTED_WITHIN_S
        while not _sleeping(marker, tmp_path) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert _sleeping(marker, tmp_path), "the attempt never started"
        assert worker.poll() is None, "the stand-in worker ended early"
        worker.send_signal(signal.SIGKILL)
        worker.wait(timeout=10)
        assert [p for p in _wait_gone(marker, tmp_path) if p.pid != worker.pid] == []
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait()


def test_a_killed_worker_takes_the_grandchildren_of_its_attempt_with_it(
    tmp_path: Path, way: str
) -> None:
    # A stand-in worker starts an attempt whose shell starts a sleep (one of them in a
    # session of its own), then is killed -9.
    patch = "process._setpriv = lambda: None\n" if way == "python-reaper" else ""
    worker_code = (
        "import subprocess, time\n"
        "from claudecluster.executors import process\n"
        f"{patch}"
        "subprocess.Popen([*process.launcher(), 'bash', '-c',\n"
        "                  'setsid sleep 312 & sleep 302; true'], start_new_session=True)\n"
        "time.sleep(300)\n"
    )
    _kill_worker_mid_attempt(tmp_path, worker_code, "302")
    assert _wait_gone("312", tmp_path) == []


def test_a_killed_worker_takes_its_sandboxed_attempt_with_it(
    sandbox: Mechanism, tmp_path: Path
) -> None:
    # The real path: the shell executor, confined, in a worker that is killed -9.
    del sandbox
    worker_code = textwrap.dedent(
        f"""
        import subprocess, uuid
        from pathlib import Path
        import anyio
        from claudecluster.events import TaskLimits
        from claudecluster.executors.base import AttemptRun
        from claudecluster.executors.confinement import Confinement
        from claudecluster.executors.shell import ShellExecutor

        async def main():
            workspace = Path({str(tmp_path)!r}) / "ws"
            workspace.mkdir()
            subprocess.run(["git", "init", "-q", str(workspace)], check=True)
            job = AttemptRun(run_id="r1", task_id="t1", attempt=1,
                             prompt="setsid sleep 313 & sleep 303; true",
                             workspace=workspace, scratch=Path({str(tmp_path)!r}),
                             session_id=str(uuid.uuid4()), limits=TaskLimits())
            async def ignore(_):
                pass
            await ShellExecutor(confinement=Confinement.required()).run(job, ignore)

        anyio.run(main)
        """
    )
    _kill_worker_mid_attempt(tmp_path, worker_code, "303")
    assert _wait_gone("313", tmp_path) == []


def test_an_attempt_whose_worker_died_before_the_guard_ran_does_not_run(
    tmp_path: Path, way: str
) -> None:
    # The guard is told its worker's pid; a different parent means the worker is gone.
    del way
    prefix = launcher()
    position = prefix.index("--parent") + 1
    prefix[position] = "1"  # not this process: as if the worker had died meanwhile
    done = subprocess.run(
        [*prefix, "bash", "-c", "touch ran"], cwd=tmp_path, check=False, timeout=30
    )
    assert done.returncode == 143
    assert not (tmp_path / "ran").exists()
