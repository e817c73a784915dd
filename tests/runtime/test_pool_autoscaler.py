"""The autoscaler's shell: backends that start real processes, decisions in the real log.

A real nats-server, real ``claudecluster worker`` processes started and drained by the
local backend, and an operator's command run by the command backend.
"""

from __future__ import annotations

import os
import sys
from datetime import UTC, datetime
from pathlib import Path

import anyio
import pytest

from claudecluster.actors.scaling import PoolBounds
from claudecluster.cli import run as cli
from claudecluster.events import (
    PoolScaled,
    PoolScaleFailed,
    RunCompleted,
    RunPlanned,
    RunSubmitted,
    SubmitRun,
    TaskQueued,
    TaskSpec,
    wrap_event,
)
from claudecluster.events.model import Event
from claudecluster.runtime.connection import open_jetstream_log
from claudecluster.runtime.driver import Driver, DriverOptions
from claudecluster.runtime.embedded_nats import start_nats_server
from claudecluster.runtime.pool_scaler import (
    CommandBackend,
    LocalProcessBackend,
    PoolAutoscaler,
    PoolBackendError,
    RecordingBackend,
)
from claudecluster.transport.base import read_all
from claudecluster.transport.commands import publish_command
from claudecluster.transport.jetstream import JetStreamEventLog
from tests.support import make_repo, wait_for_events

T0 = datetime(2026, 3, 1, tzinfo=UTC)
#: Workers start (a Python process each), take four shell tasks and the run merges.
RUN_ENDS_WITHIN_S = 180.0
#: Drained workers leave after the run: scale_down_after plus a decision or two.
POOL_EMPTIES_WITHIN_S = 60.0
PY = sys.executable


async def _append(log: JetStreamEventLog, *events: Event) -> None:
    for n, event in enumerate(events, 1):
        await log.append(wrap_event(event, event_id=f"pool-test-{n}", now=T0))


def _fan(n: int) -> list[Event]:
    tasks = tuple(TaskSpec(task_id=f"t{i}", title="t", prompt="p") for i in range(n))
    return [
        RunSubmitted(run_id="fan", goal="g", repo="/r"),
        RunPlanned(run_id="fan", tasks=tasks, base_commit="b", integration_branch="cc/fan"),
        *(TaskQueued(run_id="fan", task_id=f"t{i}") for i in range(n)),
    ]


async def _decisions(log: JetStreamEventLog) -> list[PoolScaled | PoolScaleFailed]:
    return [
        s.envelope.payload
        for s in await read_all(log)
        if isinstance(s.envelope.payload, PoolScaled | PoolScaleFailed)
    ]


@pytest.mark.anyio
async def test_a_decision_is_carried_out_and_recorded_with_its_reason(
    jetstream_log: JetStreamEventLog,
) -> None:
    await _append(jetstream_log, *_fan(6))
    backend = RecordingBackend()
    bounds = PoolBounds(max_workers=4)
    scaler = PoolAutoscaler(jetstream_log, backend, pool="default", bounds=bounds,
                            scaler_id="as-1", now=lambda: T0)  # fmt: skip
    async with anyio.create_task_group() as group:
        await group.start(scaler.run)
        with anyio.fail_after(30):
            while not scaler.decisions:
                await scaler.step()
                await anyio.sleep(0.05)  # the follower's next event; no event to wait on
        group.cancel_scope.cancel()
    assert backend.asked == [4]
    (recorded,) = await _decisions(jetstream_log)
    assert isinstance(recorded, PoolScaled)
    assert (recorded.pool, recorded.backend, recorded.workers_before, recorded.workers_after) == (
        "default", "recording", 0, 4,
    )  # fmt: skip
    assert recorded.reason == (
        "6 queued, 0 running, 0 waiting; widest layer 6 of 1: 6 slot(s) at 1 per worker, "
        "held at the maximum of 4"
    )
    assert recorded.driver_id == "as-1"


@pytest.mark.anyio
async def test_a_backend_that_fails_leaves_the_pool_and_records_what_it_said(
    jetstream_log: JetStreamEventLog,
) -> None:
    await _append(jetstream_log, *_fan(2))
    backend = RecordingBackend(fail_with="quota exceeded")
    scaler = PoolAutoscaler(jetstream_log, backend, pool="default", bounds=PoolBounds(),
                            scaler_id="as-2", now=lambda: T0)  # fmt: skip
    async with anyio.create_task_group() as group:
        await group.start(scaler.run)
        with anyio.fail_after(30):
            while not scaler.decisions:
                await scaler.step()
                await anyio.sleep(0.05)
        group.cancel_scope.cancel()
    (failed,) = await _decisions(jetstream_log)
    assert isinstance(failed, PoolScaleFailed)
    assert (failed.workers_before, failed.workers_wanted, failed.error) == (
        0, 2, "quota exceeded",
    )  # fmt: skip
    assert backend.size() is None


@pytest.mark.anyio
async def test_the_command_backend_runs_the_operators_command_with_the_count(
    tmp_path: Path,
) -> None:
    out = tmp_path / "asked"
    script = f"import sys; open({str(out)!r}, 'a').write(' '.join(sys.argv[1:]) + '\\n')"
    backend = CommandBackend(f"{PY} -c {script!r} --scale worker={{n}} --pool {{pool}}",
                             pool="gpu; rm -rf /")  # fmt: skip
    await backend.scale_to(3)
    await backend.scale_to(0)
    # One word each, never a shell: the pool's name stays one argument.
    assert out.read_text() == "--scale worker=3 --pool gpu; rm -rf /\n" * 1 + (
        "--scale worker=0 --pool gpu; rm -rf /\n"
    )
    assert backend.size() == 0


@pytest.mark.anyio
async def test_a_failing_or_slow_command_is_refused_with_what_it_said(tmp_path: Path) -> None:
    failing = CommandBackend(
        f"{PY} -c \"import sys; sys.stderr.write('no such deployment'); sys.exit(3)\" {{n}}",
        pool="default",
    )
    with pytest.raises(PoolBackendError, match="exited 3: no such deployment"):
        await failing.scale_to(2)
    assert failing.size() is None
    slow = CommandBackend(f"{PY} -c \"import time; time.sleep(30)\" {{n}}", pool="default",
                          timeout_s=0.5)  # fmt: skip
    with pytest.raises(PoolBackendError, match=r"did not finish within 0\.5s"):
        await slow.scale_to(2)
    missing = CommandBackend(str(tmp_path / "no-such-command") + " {n}", pool="default")
    with pytest.raises(PoolBackendError, match="could not start"):
        await missing.scale_to(1)
    with pytest.raises(ValueError, match="never says"):
        CommandBackend("kubectl scale deployment/worker --replicas=3", pool="default")


def test_the_command_names_a_missing_or_doubled_backend(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli(["autoscale", "--nats", "nats://127.0.0.1:9"]) == 2
    assert "give exactly one backend" in capsys.readouterr().err
    assert cli(["autoscale", "--local", "--command", "x {n}", "--nats", "nats://127.0.0.1:9"]) == 2
    assert cli(["autoscale", "--local", "--min-workers", "5", "--max-workers", "2"]) == 2
    assert "max_workers must be at least" in capsys.readouterr().err


@pytest.mark.anyio
async def test_local_worker_processes_are_started_for_a_run_and_drained_after_it(
    tmp_path: Path,
) -> None:
    """No worker at first; the autoscaler starts two real worker processes for four
    independent tasks, the run completes, and the pool drains back to none."""
    server, nats = await start_nats_server(tmp_path / "nats", auth=False)
    repo = make_repo(tmp_path / "repo", {"README.md": "pool\n"})
    env = {k: v for k, v in os.environ.items() if not k.startswith("CLAUDECLUSTER_")}
    backend = LocalProcessBackend(
        ["--nats", nats.url, "--no-sandbox", "--workspace-root", str(tmp_path / "ws")],
        log_dir=tmp_path / "workers", env=env,
    )  # fmt: skip
    bounds = PoolBounds(min_workers=0, max_workers=2, settle_s=0, scale_down_after_s=1)
    try:
        async with open_jetstream_log(nats.url, name="pool-test") as (client, log):
            driver = Driver(log, client.jetstream(),
                            DriverOptions(work_dir=tmp_path / "driver", tick_s=0.1))  # fmt: skip
            scaler = PoolAutoscaler(log, backend, pool="default", bounds=bounds,
                                    scaler_id="as-local", interval_s=0.2)  # fmt: skip
            async with anyio.create_task_group() as group:
                await group.start(driver.run)
                await group.start(scaler.run)
                plan = tuple(TaskSpec(task_id=f"t{i}", title="t", executor="shell",
                                      prompt=f"echo {i} > f{i}.txt") for i in range(4))  # fmt: skip
                command = SubmitRun(run_id="pooled", goal="g", repo=str(repo), plan=plan)
                await publish_command(client.jetstream(), command, command_id="pooled-1",
                                      now=datetime.now(UTC))  # fmt: skip
                await wait_for_events(
                    log,
                    lambda es: any(isinstance(e, RunCompleted) for e in es),
                    limit_s=RUN_ENDS_WITHIN_S,
                )
                # ... and the scaler's own record of the pool back at none.
                with anyio.fail_after(POOL_EMPTIES_WITHIN_S):
                    while not any(isinstance(d, PoolScaled) and d.workers_after == 0  # noqa: ASYNC110
                                  for d in scaler.decisions):  # fmt: skip
                        await anyio.sleep(0.2)
                group.cancel_scope.cancel()
            decisions = await _decisions(log)
    finally:
        with anyio.CancelScope(shield=True):
            await backend.aclose()
            server.terminate()
            with anyio.move_on_after(15):
                await server.wait()
            if server.returncode is None:
                server.kill()
            await server.aclose()
    scaled = [(d.workers_before, d.workers_after) for d in decisions if isinstance(d, PoolScaled)]
    assert scaled[0] == (0, 2), decisions
    assert scaled[-1][1] == 0, decisions
    assert all(isinstance(d, PoolScaled) and d.backend == "local" for d in decisions)
    logs = sorted((tmp_path / "workers").glob("worker-*.log"))
    assert len(logs) >= 2
    assert all("serving pool 'default'" in p.read_text() for p in logs[:2])
