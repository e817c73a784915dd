"""Confinement: what an attempt (shell task or the real Claude Code CLI) cannot reach.

Each escape an agent could try is tried for real, by :mod:`tests.escapes`'s script, and
denied; the host side is checked too (no file written, no connection accepted, no process
left). The pure argv builder is checked on its own.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import anyio
import anyio.abc
import psutil
import pytest

from claudecluster.events import TaskLimits, TaskProgress, TaskRateLimited
from claudecluster.executors import confined
from claudecluster.executors.base import AttemptRun
from claudecluster.executors.cgroups import CgroupLimits, create_attempt_cgroup
from claudecluster.executors.claude_code import ClaudeCodeExecutor
from claudecluster.executors.confined import mask_secrets
from claudecluster.executors.confinement import (
    Confinement,
    Mechanism,
    Sandbox,
    api_inside,
    bwrap_command,
    confined_environment,
)
from claudecluster.executors.shell import ShellExecutor
from claudecluster.scripted_model import Script, open_scripted_model
from tests.escapes import PROBES, EscapeTargets, parse_report

_MECHANISM = Mechanism(bwrap="bwrap", socat="/usr/bin/socat", system=(("bind", "/usr"),))


def _sandbox(root: Path, **changes: Any) -> Sandbox:
    base = Sandbox(workspace=root / "ws", home=root / "home", tmp=root / "tmp")
    return replace(base, **changes)


def test_the_sandbox_has_no_network_its_own_pids_and_no_capabilities(tmp_path: Path) -> None:
    argv = bwrap_command(_sandbox(tmp_path), ["true"], _MECHANISM)
    for flag in ("--unshare-net", "--unshare-pid", "--die-with-parent", "--new-session"):
        assert flag in argv
    assert argv[argv.index("--cap-drop") + 1] == "ALL"
    assert argv[argv.index("--proc") + 1] == "/proc"  # a /proc of its own PID namespace
    assert argv[-2:] == ["--", "true"]


def test_the_git_dir_is_mounted_read_only_over_the_writable_workspace(tmp_path: Path) -> None:
    git_dir = tmp_path / "ws" / ".git"
    argv = bwrap_command(_sandbox(tmp_path, read_only=(git_dir,)), ["true"], _MECHANISM)
    writable = argv.index("--bind", argv.index(str(tmp_path / "ws")) - 1)
    read_only = max(i for i, part in enumerate(argv) if part == str(git_dir))
    assert argv[read_only - 2] == "--ro-bind"
    assert read_only > writable  # later mounts cover earlier ones


def test_the_agent_reaches_only_a_forwarder_to_the_api(tmp_path: Path) -> None:
    sandbox = _sandbox(tmp_path, network="api", api_socket=tmp_path / "api.sock", api_port=4100)
    argv = bwrap_command(sandbox, ["claude", "-p"], _MECHANISM)
    assert "--unshare-net" in argv
    assert argv[argv.index(str(tmp_path / "api.sock")) + 1] == "/run/cc/api.sock"
    inner = argv[argv.index("--") + 1 :]
    assert inner[:2] == ["/bin/sh", "-c"]
    assert "TCP-LISTEN:" in inner[2]
    assert 'UNIX-CONNECT:"$3"' in inner[2]
    # One forwarder (no capability needed for its port), on 127.0.0.1:4100, then the command.
    assert inner[3:9] == ["forwarder", "1", "0", "127.0.0.1", "4100", "/run/cc/api.sock"]
    assert inner[-2:] == ["claude", "-p"]


def test_api_urls_are_rewritten_to_the_loopback_forwarder() -> None:
    assert api_inside("http://127.0.0.1:4123/v1") == (
        "http://127.0.0.1:4123/v1", "127.0.0.1", 4123, 4123, None,
    )  # fmt: skip
    # TLS checks the name: it is kept, and /etc/hosts inside maps it to loopback.
    assert api_inside("https://api.anthropic.com") == (
        "https://api.anthropic.com:8443", "api.anthropic.com", 443, 8443, "api.anthropic.com",
    )  # fmt: skip
    with pytest.raises(ValueError, match="not an http"):
        api_inside("file:///etc/passwd")


def test_a_confined_environment_holds_only_the_allowlist_and_what_was_passed(
    tmp_path: Path,
) -> None:
    parent = {
        "PATH": "/usr/bin", "LANG": "C.UTF-8", "HOME": "/root",
        "CLAUDECLUSTER_NATS__URL": "nats://u:p@h", "AWS_SECRET_ACCESS_KEY": "k",
        "PIP_INDEX_URL": "https://mirror",
    }  # fmt: skip
    env = confined_environment(
        parent, home=tmp_path / "h", tmp=tmp_path / "t", passed=("PIP_INDEX_URL",)
    )
    assert env == {
        "PATH": "/usr/bin", "LANG": "C.UTF-8", "PIP_INDEX_URL": "https://mirror",
        "HOME": str(tmp_path / "h"), "TMPDIR": str(tmp_path / "t"),
        "USER": "sandbox", "LOGNAME": "sandbox",
    }  # fmt: skip


def test_secret_named_assignments_are_masked_in_command_output() -> None:
    text = "ok\nAWS_SECRET_ACCESS_KEY=abc123\napi_token: xyz\nVERSION=1.2\n"
    assert mask_secrets(text) == (
        "ok\nAWS_SECRET_ACCESS_KEY=[REDACTED]\napi_token: [REDACTED]\nVERSION=1.2\n"
    )


@asynccontextmanager
async def _listening() -> AsyncIterator[tuple[int, list[str]]]:
    """A loopback TCP port that records every connection it accepts."""
    accepted: list[str] = []
    listener = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=0)
    port = listener.extra(anyio.abc.SocketAttribute.local_port)

    async def record(stream: anyio.abc.SocketStream) -> None:
        async with stream:
            accepted.append("connected")

    async with listener, anyio.create_task_group() as group:
        group.start_soon(listener.serve, record)
        try:
            yield port, accepted
        finally:
            group.cancel_scope.cancel()


def _job(tmp_path: Path, prompt: str, **limits: Any) -> AttemptRun:
    workspace = tmp_path / "workspaces" / "run-1-t-1" / "ws"
    workspace.mkdir(parents=True)
    subprocess.run(["git", "init", "-q", str(workspace)], check=True)
    return AttemptRun(
        run_id="r1",
        task_id="t1",
        attempt=1,
        prompt=prompt,
        workspace=workspace,
        scratch=workspace.parent,
        session_id=str(uuid.uuid4()),
        limits=TaskLimits(**limits),
    )


def _sleepers(marker: int) -> list[psutil.Process]:
    found = []
    for process in psutil.process_iter(["cmdline"]):
        if process.info["cmdline"] == ["sleep", str(marker)]:
            found.append(process)
    return found


def _assert_nothing_escaped(report: dict[str, str], targets: EscapeTargets) -> None:
    assert set(report) == set(PROBES), report
    assert {k: v for k, v in report.items() if k != "outlive"} == dict.fromkeys(
        set(PROBES) - {"outlive"}, "denied"
    )
    assert not targets.outside.exists()
    assert not _sleepers(targets.sleeper)


async def test_a_shell_task_is_denied_every_escape(
    sandbox: Mechanism, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    lines: list[str] = []

    async def sink(update: TaskProgress | TaskRateLimited) -> None:
        assert isinstance(update, TaskProgress)
        lines.append(update.text)

    async with _listening() as (port, accepted):
        targets = EscapeTargets.make(tmp_path, port)
        monkeypatch.setenv("CC_TEST_WORKER_SECRET", targets.secret)
        job = _job(tmp_path, targets.script())
        outcome = await ShellExecutor(confinement=Confinement(mechanism=sandbox)).run(job, sink)
    assert outcome.succeeded, outcome
    _assert_nothing_escaped(parse_report(lines), targets)
    assert accepted == []


AGENT = Script.model_validate(
    {
        "tasks": [
            {
                "marker": "[[task:escape]]",
                "turns": [
                    {
                        "text": "Trying every way out.",
                        "tools": [
                            {"name": "Bash", "input": {"command": "{prompt}", "description": "x"}}
                        ],
                    },
                    {"text": "Done trying."},
                ],
            }
        ]
    }
)


def _agent_script(command: str) -> Script:
    data = AGENT.model_dump()
    data["tasks"][0]["turns"][0]["tools"][0]["input"]["command"] = command
    return Script.model_validate(data)


async def test_the_claude_code_agent_reaches_its_model_but_nothing_else(
    sandbox: Mechanism, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    lines: list[str] = []

    async def sink(update: TaskProgress | TaskRateLimited) -> None:
        if isinstance(update, TaskProgress) and update.kind == "tool_result":
            lines.append(update.text)

    async with _listening() as (port, accepted):
        targets = EscapeTargets.make(tmp_path, port)
        monkeypatch.setenv("CC_TEST_WORKER_SECRET", targets.secret)
        async with open_scripted_model(_agent_script(targets.script(kill_parent=False))) as model:
            job = replace(
                _job(tmp_path, "[[task:escape]] get out"),
                api_environment={"ANTHROPIC_BASE_URL": model.url, "ANTHROPIC_API_KEY": "sk-x"},
            )
            executor = ClaudeCodeExecutor(confinement=Confinement(mechanism=sandbox))
            outcome = await executor.run(job, sink)
    # It talked to its model through the forwarder (two turns), and got nowhere else.
    assert outcome.succeeded, outcome
    assert outcome.summary == "Done trying."
    _assert_nothing_escaped(parse_report(lines), targets)
    assert accepted == []


async def test_a_process_limit_bounds_a_fork_storm(sandbox: Mechanism, tmp_path: Path) -> None:
    lines: list[str] = []

    async def sink(update: TaskProgress | TaskRateLimited) -> None:
        assert isinstance(update, TaskProgress)
        lines.append(update.text)

    probe = create_attempt_cgroup(CgroupLimits(max_processes=64))
    if probe is None or "pids" not in probe.limited:
        pytest.skip("no writable pids controller here: the reaper is the only limit")
    await probe.close()
    # Python's fork does not retry on EAGAIN as bash's does: the first refusal ends it.
    storm = (
        "python3 -c 'import os, time\n"
        "n = 0\n"
        "for _ in range(200):\n"
        "    try:\n"
        "        pid = os.fork()\n"
        "    except OSError:\n"
        "        break\n"
        "    if pid == 0:\n"
        "        time.sleep(60)\n"
        "        os._exit(0)\n"
        "    n += 1\n"
        'print(f"started={n}")\''
    )
    job = _job(tmp_path, storm, max_processes=64)
    outcome = await ShellExecutor(confinement=Confinement(mechanism=sandbox)).run(job, sink)
    started = next(int(line.split("=")[1]) for line in lines if line.startswith("started="))
    assert started < 64, lines
    assert outcome.succeeded, outcome


async def test_going_over_the_memory_limit_is_a_limit_failure(
    sandbox: Mechanism, tmp_path: Path
) -> None:
    async def ignore(_: TaskProgress | TaskRateLimited) -> None:
        pass

    job = _job(tmp_path, "python3 -c 'x = bytearray(400 * 2**20); print(len(x))'", memory_mb=64)
    outcome = await ShellExecutor(confinement=Confinement(mechanism=sandbox)).run(job, ignore)
    assert (outcome.succeeded, outcome.failure_class) == (False, "limit"), outcome
    assert "memory limit of 64 MiB" in outcome.reason


async def test_without_the_sandbox_the_cgroup_still_ends_what_left_the_session(
    tmp_path: Path,
) -> None:
    """setsid plus killing the reaper escaped the old process-tree kill; not the cgroup."""

    async def ignore(_: TaskProgress | TaskRateLimited) -> None:
        pass

    probe = create_attempt_cgroup(CgroupLimits())
    if probe is None:
        pytest.skip("no writable cgroup hierarchy here: the reaper is the only limit")
    await probe.close()
    marker = 4_000_000 + os.getpid() % 1_000_000
    # Kill every ancestor up to the executor's own child (the reaper and nice), so no
    # process-tree walk from the worker's side can find the sleeper.
    job = _job(
        tmp_path,
        f"setsid sleep {marker} </dev/null >/dev/null 2>&1 & sleep 0.2; kill -9 $PPID; exit 0",
    )
    await ShellExecutor(confinement=Confinement.unconfined()).run(job, ignore)
    assert not _sleepers(marker)


def test_the_tunnels_sockets_get_a_short_directory_whatever_tmpdir_is(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A deep TMPDIR (a test host's own tree, a CI runner's workspace) made every attempt
    fail with "AF_UNIX path too long"; the sockets then go under /tmp instead."""
    deep = tmp_path / ("d" * 60) / ("e" * 60)
    deep.mkdir(parents=True)
    monkeypatch.setattr(tempfile, "tempdir", str(deep))
    chosen = confined._socket_directory()
    try:
        assert chosen.parent == Path("/tmp")
        assert len(os.fsencode(chosen / "fwd-999.sock")) <= 107
        assert (chosen.stat().st_mode & 0o777) == 0o700  # private, as mkdtemp makes it
    finally:
        chosen.rmdir()
    short = Path(tempfile.mkdtemp(dir="/tmp"))
    monkeypatch.setattr(tempfile, "tempdir", str(short))
    try:
        kept = confined._socket_directory()
        assert kept.parent == short  # TMPDIR is kept where its paths fit
        kept.rmdir()
    finally:
        short.rmdir()


def test_a_dead_workers_attempt_cgroups_are_swept_once_a_minute_not_at_every_attempt(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from claudecluster.executors import cgroups

    probe = create_attempt_cgroup(CgroupLimits())
    if probe is None or probe.unified is None:
        pytest.skip("no writable cgroup v2 hierarchy here")
    home = probe.unified.parent
    anyio.run(probe.close)
    # An attempt cgroup a dead worker process left (pid 2**22 + 1 is above pid_max).
    stale = home / f"attempt-{2**22 + 1}-deadbeef"
    stale.mkdir()
    sweeps: list[Path] = []
    real_sweep = cgroups._sweep

    def counting(parent: Path) -> None:
        sweeps.append(parent)
        real_sweep(parent)

    monkeypatch.setattr(cgroups, "_sweep", counting)
    monkeypatch.setattr(cgroups, "_swept", {})
    first = create_attempt_cgroup(CgroupLimits())
    second = create_attempt_cgroup(CgroupLimits())
    assert first is not None
    assert second is not None
    assert not stale.exists()  # the first attempt's sweep removed it
    assert sweeps.count(home) == 1  # the second, within the minute, did not sweep again
    cgroups._swept[home] -= cgroups._SWEEP_EVERY_S  # as if a minute had passed
    third = create_attempt_cgroup(CgroupLimits())
    assert third is not None
    assert sweeps.count(home) == 2  # a minute later it does
    for made in (first, second, third):
        anyio.run(made.close)
        assert made.unified is not None
        assert not made.unified.exists()
