"""A driver's /health and /metrics: what a container health check and Prometheus read.

Two real ``claudecluster driver`` processes on one private nats-server: one leads, the
other stands by, both are healthy, and the metrics say which one drives.
"""

from __future__ import annotations

import json
import os
import sys
import urllib.error
import urllib.request
from pathlib import Path

import anyio
import anyio.abc
import pytest

from claudecluster.runtime.driver_health import DriverHealth
from claudecluster.runtime.embedded_nats import start_nats_server
from tests.support import free_port

CLI = str(Path(sys.executable).parent / "claudecluster")
#: A driver connects, takes or waits for the lease and serves its endpoint well within it.
DRIVERS_UP_WITHIN_S = 60.0


def test_the_phases_the_standby_driver_announces_set_the_gauges() -> None:
    health = DriverHealth(standby=True)
    assert health.report() == {"status": "starting", "phase": "starting", "leading": False}
    health.serving()  # a standby driver does not lead by being up
    health.changed("standby")
    assert health.report() == {"status": "ok", "phase": "standby", "leading": False}
    health.changed("leading (epoch 4, fence 17)")
    assert health.report()["leading"] is True
    assert health.registry.get_sample_value("claudecluster_driver_lease_epoch") == 4
    health.changed("standby (lease lost)")
    assert health.registry.get_sample_value("claudecluster_driver_leading") == 0
    assert health.registry.get_sample_value("claudecluster_driver_lease_epoch") == 0
    alone = DriverHealth(standby=False)
    alone.serving()
    assert alone.report()["leading"] is True


def _get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as answer:
            return answer.status, answer.read().decode()
    except urllib.error.HTTPError as refused:
        return refused.code, refused.read().decode()


async def _health(port: int) -> dict[str, object] | None:
    try:
        code, body = await anyio.to_thread.run_sync(_get, f"http://127.0.0.1:{port}/health")
    except OSError:
        return None  # not listening yet
    return json.loads(body) if code == 200 else None


@pytest.mark.anyio
async def test_a_leading_and_a_standby_driver_are_both_healthy_and_the_metrics_tell_them_apart(
    tmp_path: Path,
) -> None:
    server, nats = await start_nats_server(tmp_path / "nats", auth=False)
    ports = [free_port(), free_port()]
    env = {k: v for k, v in os.environ.items() if not k.startswith("CLAUDECLUSTER_")}
    drivers: list[anyio.abc.Process] = []
    try:
        for n, port in enumerate(ports):
            (tmp_path / f"d{n}").mkdir()
            with (tmp_path / f"driver-{n}.log").open("wb") as out:
                drivers.append(
                    await anyio.open_process(
                        [
                            CLI,
                            "driver",
                            "--nats",
                            nats.url,
                            "--no-sandbox",
                            "--work-dir",
                            str(tmp_path / f"d{n}" / "work"),
                            "--health-port",
                            str(port),
                        ],
                        cwd=tmp_path / f"d{n}",
                        env=env,
                        stdout=out,
                        stderr=out,
                    )
                )
        reports: list[dict[str, object] | None] = [None, None]
        with anyio.move_on_after(DRIVERS_UP_WITHIN_S):
            while sum(1 for r in reports if r and r["leading"]) != 1 or None in reports:
                reports = [await _health(port) for port in ports]
                await anyio.sleep(0.2)  # polling an HTTP endpoint: there is no event to wait on
        logs = "\n".join((tmp_path / f"driver-{n}.log").read_text() for n in range(2))
        assert None not in reports, f"not both healthy: {reports}\n{logs}"
        assert sorted(bool(r and r["leading"]) for r in reports) == [False, True], logs
        metrics = [(await anyio.to_thread.run_sync(_get, f"http://127.0.0.1:{p}/metrics"))[1]
                   for p in ports]  # fmt: skip
        leading = [line for text in metrics for line in text.splitlines()
                   if line.startswith("claudecluster_driver_leading ")]  # fmt: skip
        assert sorted(leading) == ["claudecluster_driver_leading 0.0",
                                   "claudecluster_driver_leading 1.0"]  # fmt: skip
        assert any("claudecluster_driver_lease_epoch " in text for text in metrics)
    finally:
        with anyio.CancelScope(shield=True):
            for process in drivers:
                if process.returncode is None:
                    process.terminate()
            for process in drivers:
                with anyio.move_on_after(20):
                    await process.wait()
                if process.returncode is None:
                    process.kill()
                await process.aclose()
            server.terminate()
            with anyio.move_on_after(15):
                await server.wait()
            if server.returncode is None:
                server.kill()
            await server.aclose()
