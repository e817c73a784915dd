"""Install anywhere: a wheel built from this checkout, installed into a fresh virtual
environment in a temporary directory, gives a working ``claudecluster`` with its own
nats-server and Claude Code CLI; ``doctor`` passes and a bare-goal run completes from a
directory outside the checkout.

The wheel is built the way ``pip wheel`` / ``python -m build`` build it (an isolated build
environment with hatchling); the install takes the pinned versions of constraints.txt and
may reuse pip's cache, so it is what a user gets, only faster. Not skipped: it needs PyPI
(or pip's configured index) to be reachable, as every install does.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import anyio

from claudecluster.scripted_model import open_scripted_model
from tests.cli.test_cli import branch_file, clean_env
from tests.cli.test_preview import MODEL
from tests.support import make_repo

_CHECKOUT = Path(__file__).parents[2]

#: Building the wheel and installing it with every dependency on a loaded machine.
_INSTALL_WITHIN_S = 900
#: Planning and running four tasks on the scripted model on a loaded machine.
_RUN_WITHIN_S = 300


async def _pip(python: Path, *args: str) -> None:
    with anyio.fail_after(_INSTALL_WITHIN_S):
        done = await anyio.run_process(
            [str(python), "-m", "pip", "--disable-pip-version-check", *args], check=False
        )
    assert done.returncode == 0, (done.stdout[-3000:] + done.stderr[-3000:]).decode()


async def test_a_wheel_installed_into_a_fresh_venv_runs_doctor_and_a_goal_outside_the_checkout(
    tmp_path: Path,
) -> None:
    dist = tmp_path / "dist"
    await _pip(
        Path(sys.executable), "wheel", "--no-deps", "--quiet", "-w", str(dist), str(_CHECKOUT)
    )
    (wheel,) = dist.glob("claudecluster-*.whl")
    venv = tmp_path / "venv"
    await anyio.run_process([sys.executable, "-m", "venv", str(venv)])
    python = venv / "bin" / "python"
    # --no-compile: pip would byte-compile every module of every dependency; the run
    # below imports a fraction of them, which Python compiles on first use. Nothing else
    # about the installed package differs (pip does not fail an install on what it
    # cannot compile either).
    await _pip(
        python, "install", "--quiet", "--no-compile",
        "-c", str(_CHECKOUT / "constraints.txt"), str(wheel),
    )  # fmt: skip
    # Only the new environment's commands: nothing of the checkout's .venv on PATH.
    path = f"{venv / 'bin'}:/usr/local/bin:/usr/bin:/bin"
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    where = await anyio.run_process(
        [str(python), "-c", "import claudecluster, shutil; print(claudecluster.__file__); "
         "print(shutil.which('nats-server'))"],
        cwd=outside, env=clean_env(PATH=path),
    )  # fmt: skip
    module, nats_server = where.stdout.decode().split()
    assert module.startswith(str(venv)), module
    assert nats_server == str(venv / "bin" / "nats-server")

    repo = make_repo(outside / "project", {"notes.txt": "notes\n"})
    command = str(venv / "bin" / "claudecluster")
    async with open_scripted_model(MODEL) as model:
        env = clean_env(PATH=path, ANTHROPIC_BASE_URL=model.url, ANTHROPIC_API_KEY="sk-scripted")
        doctor = await anyio.run_process(
            [command, "doctor"], cwd=repo, env=env, check=False, stdin=subprocess.DEVNULL
        )
        report = doctor.stdout.decode() + doctor.stderr.decode()
        assert doctor.returncode == 0, report
        assert "(Claude Code)" in report  # the bundled CLI, found and its version read
        assert f"at {venv / 'bin' / 'nats-server'}" in report
        with anyio.fail_after(_RUN_WITHIN_S):
            done = await anyio.run_process(
                [command, "run", "write the notes", "--yes", "--workers", "2", "--run-id", "i1"],
                cwd=repo, env=env, check=False, stdin=subprocess.DEVNULL,
            )  # fmt: skip
    out = done.stdout.decode() + done.stderr.decode()
    assert done.returncode == 0, out
    assert "completed: 4 merged" in out
    assert branch_file(repo, "summary.txt") == "one and two\n"
