"""A worker's attempts are confined: a shell task that tries every escape is denied each,
and the log records what it tried; the setup command sees none of the worker's secrets.

Real NATS, a real worker, real git; the escape script is :mod:`tests.escapes`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import anyio
import anyio.abc
import pytest

from claudecluster.events import TaskFailed, TaskProgress, TaskSucceeded
from claudecluster.events.envelope import StoredEvent
from claudecluster.executors.confinement import Confinement, Mechanism
from claudecluster.runtime.worker import Worker, WorkerConfig
from claudecluster.transport.jetstream import JetStreamEventLog
from tests.escapes import PROBES, EscapeTargets, network_script, parse_network_report, parse_report
from tests.runtime.conftest import Driver


async def _until_finished(log: JetStreamEventLog, task_id: str) -> list[StoredEvent]:
    seen: list[StoredEvent] = []
    with anyio.fail_after(90):
        async with log.open_reader(follow=True) as events:
            async for stored in events:
                seen.append(stored)
                payload = stored.envelope.payload
                if isinstance(payload, TaskSucceeded | TaskFailed) and payload.task_id == task_id:
                    return seen
    raise AssertionError("unreachable")


async def test_every_escape_of_a_shell_task_is_denied_and_recorded(
    sandbox: Mechanism,
    world: tuple[JetStreamEventLog, Any],
    source: Path,
    tmp_path: Path,
    nats_url: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    log, client = world
    port = int(nats_url.rsplit(":", 1)[1])  # the bus itself is the loopback port to reach
    targets = EscapeTargets.make(tmp_path / "host", port)
    monkeypatch.setenv("CLAUDECLUSTER_TEST_SECRET", targets.secret)
    driver = Driver(log, client.jetstream(), source, tmp_path)
    config = WorkerConfig(worker_id="w-confined", workspace_root=tmp_path / "workspaces")
    worker = Worker(config, log, client)
    async with anyio.create_task_group() as group:
        await group.start(worker.serve)
        await driver.submit("run-esc", "escape", targets.script(), executor="shell")
        history = await _until_finished(log, "escape")
        worker.stop()
    recorded = [
        s.envelope.payload.text
        for s in history
        if isinstance(s.envelope.payload, TaskProgress) and s.envelope.payload.task_id == "escape"
    ]
    report = parse_report(recorded)
    assert set(report) == set(PROBES), recorded
    assert {k: v for k, v in report.items() if k != "outlive"} == dict.fromkeys(
        set(PROBES) - {"outlive"}, "denied"
    )
    assert not targets.outside.exists()
    assert isinstance(history[-1].envelope.payload, TaskSucceeded)


async def test_the_setup_command_gets_a_minimal_environment_and_no_network(
    sandbox: Mechanism,
    world: tuple[JetStreamEventLog, Any],
    source: Path,
    tmp_path: Path,
    nats_url: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    log, client = world
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "cloud-key-of-the-worker")
    port = nats_url.rsplit(":", 1)[1]
    # The setup fails (and says why) if it sees the secret or reaches the bus.
    setup = (
        "if env | grep -q cloud-key-of-the-worker; then echo saw-the-secret >&2; exit 3; fi; "
        f"if timeout 5 bash -c 'echo > /dev/tcp/127.0.0.1/{port}' 2>/dev/null; then "
        "echo reached-the-bus >&2; exit 4; fi; echo prepared > prepared.txt"
    )
    driver = Driver(log, client.jetstream(), source, tmp_path)
    config = WorkerConfig(
        worker_id="w-setup", workspace_root=tmp_path / "workspaces", setup_command=setup
    )
    worker = Worker(config, log, client)
    async with anyio.create_task_group() as group:
        await group.start(worker.serve)
        await driver.submit("run-setup", "prep", "cat prepared.txt", executor="shell")
        history = await _until_finished(log, "prep")
        worker.stop()
    finished = history[-1].envelope.payload
    assert isinstance(finished, TaskSucceeded), finished
    assert finished.summary == "prepared"


async def test_an_unconfined_task_that_plants_git_programs_does_not_get_them_run(
    world: tuple[JetStreamEventLog, Any],
    source: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Even with --no-sandbox (the task can write .git), the worker's commit, bundle and
    diff run none of a core.fsmonitor, a post-commit hook or a filter the task planted."""
    log, client = world
    monkeypatch.setenv("CLAUDECLUSTER_NATS__URL", "nats://u:hunter2-password@127.0.0.1:4222")
    markers = tmp_path / "markers"
    markers.mkdir()
    evil = markers / "evil.sh"
    evil.write_text('#!/bin/sh\nenv > "$1"\n')
    evil.chmod(0o755)
    plant = (
        f"git config core.fsmonitor '{evil} {markers}/fsmonitor' && "
        f"git config filter.evil.clean '{evil} {markers}/filter; cat' && "
        "echo '* filter=evil' > .gitattributes && mkdir -p .git/hooks && "
        f"printf '#!/bin/sh\\n{evil} {markers}/hook\\n' > .git/hooks/post-commit && "
        "chmod +x .git/hooks/post-commit && echo changed > app.py && echo planted"
    )
    driver = Driver(log, client.jetstream(), source, tmp_path)
    config = WorkerConfig(
        worker_id="w-open",
        workspace_root=tmp_path / "workspaces",
        confinement=Confinement.unconfined(),
    )
    worker = Worker(config, log, client)
    async with anyio.create_task_group() as group:
        await group.start(worker.serve)
        await driver.submit("run-plant", "plant", plant, executor="shell")
        history = await _until_finished(log, "plant")
        worker.stop()
    finished = history[-1].envelope.payload
    assert isinstance(finished, TaskSucceeded), finished
    assert finished.summary == "planted"  # the plants were in place when the worker committed
    assert sorted(p.name for p in markers.iterdir()) == ["evil.sh"]


async def test_a_task_reaches_what_its_plan_allows_through_a_real_worker_and_no_more(
    sandbox: Mechanism,
    world: tuple[JetStreamEventLog, Any],
    source: Path,
    tmp_path: Path,
    nats_url: str,
) -> None:
    """The allowance travels from the recorded spec in the work item to the sandbox."""
    log, client = world
    bus = int(nats_url.rsplit(":", 1)[1])  # the bus: a loopback port nobody allowed
    accepted: list[str] = []
    listener = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=0)
    allowed = listener.extra(anyio.abc.SocketAttribute.local_port)

    async def greet(stream: anyio.abc.SocketStream) -> None:
        async with stream:
            accepted.append("connected")
            await stream.send(b"hello\n")

    driver = Driver(log, client.jetstream(), source, tmp_path)
    config = WorkerConfig(worker_id="w-net", workspace_root=tmp_path / "workspaces")
    worker = Worker(config, log, client)
    script = network_script([("127.0.0.1", allowed)], [("127.0.0.1", bus)])
    async with listener, anyio.create_task_group() as group:
        group.start_soon(listener.serve, greet)
        await group.start(worker.serve)
        await driver.submit(
            "run-net", "net", script, executor="shell", network=(f"127.0.0.1:{allowed}",)
        )
        history = await _until_finished(log, "net")
        worker.stop()
        group.cancel_scope.cancel()
    recorded = [
        s.envelope.payload.text
        for s in history
        if isinstance(s.envelope.payload, TaskProgress) and s.envelope.payload.task_id == "net"
    ]
    report = parse_network_report(recorded)
    assert report[f"127.0.0.1:{allowed}"] == "reached", recorded
    assert report[f"127.0.0.1:{bus}"] == "denied", recorded
    assert accepted == ["connected"]
    assert isinstance(history[-1].envelope.payload, TaskSucceeded)


async def test_a_work_item_with_an_allowance_outside_the_rules_is_refused_with_the_reason(
    world: tuple[JetStreamEventLog, Any], source: Path, tmp_path: Path
) -> None:
    log, client = world
    driver = Driver(log, client.jetstream(), source, tmp_path)
    config = WorkerConfig(worker_id="w-net-bad", workspace_root=tmp_path / "workspaces")
    worker = Worker(config, log, client)
    async with anyio.create_task_group() as group:
        await group.start(worker.serve)
        await driver.submit("run-bad", "bad", "true", executor="shell", network=("*:443",))
        history = await _until_finished(log, "bad")
        worker.stop()
    failed = history[-1].envelope.payload
    assert isinstance(failed, TaskFailed)
    assert "network.allow is refused: entry 0: '*:443'" in failed.reason
