"""Shared fixtures: a real nats-server for the session, a clean event log per test.

Tests that touch nats-py run on asyncio only (nats-py has no trio support); pure and
in-memory tests may ask for both backends with the ``both_backends`` fixture params.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path

import nats.js.errors
import psutil
import pytest
from hypothesis import HealthCheck, settings

from claudecluster.executors.confinement import (
    SANDBOX_ENABLED_VARIABLE,
    Mechanism,
    probe_mechanism,
)
from claudecluster.runtime.connection import open_jetstream_log
from claudecluster.runtime.embedded_nats import find_nats_server, render_server_config
from claudecluster.transport.jetstream import JetStreamEventLog
from claudecluster.transport.topology import load_topology
from tests.support import free_port, wait_for_port

# CI explores the same examples every run (a red build is reproducible from its log);
# developers' runs keep exploring new ones.
settings.register_profile(
    "ci",
    derandomize=True,
    deadline=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile("dev", deadline=None)
settings.load_profile("ci" if os.environ.get("CI") else "dev")

# Attempts run confined by default. Where bubblewrap cannot work (no package, no root to
# install it) the suite runs everything else unconfined, as an operator's --no-sandbox
# would, and the confinement tests skip with the reason; under CI that is a failure
# (see `sandbox` below), so CI cannot pass by skipping them.
SANDBOX_MISSING = probe_mechanism()
if isinstance(SANDBOX_MISSING, str) and not os.environ.get("CI"):
    os.environ[SANDBOX_ENABLED_VARIABLE] = "false"


@pytest.fixture
def sandbox() -> Mechanism:
    """This machine's confinement mechanism; skips without one, or fails under CI."""
    if isinstance(SANDBOX_MISSING, str):
        if os.environ.get("CI"):
            pytest.fail(f"CI must confine attempts: {SANDBOX_MISSING}")
        pytest.skip(f"agents cannot be confined here: {SANDBOX_MISSING}")
    return SANDBOX_MISSING


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Under pytest-xdist, the fault suite runs on one worker, one test after another.

    Each fault test runs a driver, four or more workers and its own servers, and kills
    them on a schedule while waiting out ack waits: two at once on two cores starve each
    other's processes into timeouts, while beside one fault test the light tests still
    fit. (Every fault test kills only processes it started itself.)
    """
    for item in items:
        if item.get_closest_marker("faults"):
            item.add_marker(pytest.mark.xdist_group("faults"))


#: Where to append one JSON line per test with the CPU it cost (itself and the processes
#: it started and waited for). Wall durations (--durations) lie on a loaded machine;
#: CPU seconds say what a test costs wherever it runs, so this is what to cut by.
CPU_REPORT_VARIABLE = "CC_TEST_CPU_REPORT"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item: pytest.Item) -> Iterator[None]:
    """With ``CC_TEST_CPU_REPORT=FILE``, record each test's CPU seconds into FILE."""
    report = os.environ.get(CPU_REPORT_VARIABLE)
    if not report:
        yield
        return
    before = os.times()
    yield
    after = os.times()
    own = (after.user - before.user) + (after.system - before.system)
    children = (after.children_user - before.children_user) + (
        after.children_system - before.children_system
    )
    line = {
        "test": item.nodeid,
        "cpu_s": round(own + children, 3),
        "children_s": round(children, 3),
    }
    with open(report, "a", encoding="utf-8") as sink:
        sink.write(json.dumps(line) + "\n")


@pytest.fixture
def anyio_backend() -> str:
    """Async tests run on asyncio unless a module asks for more."""
    return "asyncio"


@pytest.fixture(scope="session")
def nats_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """One real nats-server with JetStream for the whole session."""
    store = tmp_path_factory.mktemp("nats-session")
    port = free_port()
    config = store / "nats.conf"
    config.write_text(render_server_config(port, store), encoding="utf-8")
    with (store / "server.log").open("wb") as log:
        process = subprocess.Popen(
            [str(find_nats_server()), "-c", str(config)], stdout=log, stderr=log
        )
    try:
        wait_for_port(port)
        yield f"nats://127.0.0.1:{port}"
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@asynccontextmanager
async def fresh_jetstream_log(nats_url: str) -> AsyncIterator[JetStreamEventLog]:
    """A JetStream event log on freshly recreated, empty streams."""
    topology = load_topology()
    async with open_jetstream_log(nats_url, name="test", topology=topology) as (client, _):
        js = client.jetstream()
        for stream in topology.streams:
            with contextlib.suppress(nats.js.errors.NotFoundError):
                await js.delete_stream(stream.name)
        async with open_jetstream_log(nats_url, name="test", topology=topology) as (_, fresh):
            yield fresh


@pytest.fixture
async def jetstream_log(nats_url: str) -> AsyncIterator[JetStreamEventLog]:
    """A JetStream event log on fresh, empty streams."""
    async with fresh_jetstream_log(nats_url) as log:
        yield log


@pytest.fixture
def repo_root() -> Path:
    """The repository this test suite belongs to."""
    return Path(__file__).resolve().parents[1]


#: How long a process already on its way out (a sandbox whose worker was just killed gets
#: its parent-death signal only as the worker dies) may take to vanish before it counts as
#: left behind. Anything still running after that is a leak and fails the test.
EXITING_WITHIN_S = 10.0


@pytest.fixture(autouse=True)
def _no_process_left_behind(tmp_path: Path) -> Iterator[None]:
    """After every test, nothing it started still runs in its directories."""
    yield
    found = []
    for process in psutil.process_iter(["cwd"]):
        try:
            cwd = process.info["cwd"] or ""
            alive = process.status() != psutil.STATUS_ZOMBIE
        except psutil.Error:
            continue
        if alive and cwd.startswith(str(tmp_path)):
            found.append(process)
    _, still_running = psutil.wait_procs(found, timeout=EXITING_WITHIN_S)
    leftovers = []
    for process in still_running:
        try:
            if process.status() != psutil.STATUS_ZOMBIE:
                leftovers.append(process.cmdline())
        except psutil.Error:
            continue  # ended between the wait and this look
    assert leftovers == [], f"processes left behind: {leftovers}"
