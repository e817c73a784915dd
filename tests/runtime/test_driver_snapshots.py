"""A restarted driver starts from its snapshot and the tail, on real NATS, workers and git.

The decision core's half (a snapshot plus the tail is a full replay, at any cut) is
tests/domain/test_driver_snapshots.py; here the shell: snapshots are written as the log
grows, a restart restores the newest one, and one that does not match the log is dropped.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import msgspec
import pytest

from claudecluster.actors.driver import DriverConfig
from claudecluster.actors.driver_snapshots import (
    DRIVER_SNAPSHOT,
    decode_driver_snapshot,
    encode_driver_snapshot,
)
from claudecluster.events import RunCompleted, TaskStarted
from claudecluster.runtime.driver import Driver, DriverOptions
from claudecluster.runtime.driver_snapshots import decision_code_digest
from claudecluster.transport.jetstream import JetStreamEventLog
from claudecluster.transport.snapshots import JetStreamSnapshotStore, SnapshotStore
from tests.runtime.test_driver import Cluster, open_cluster, shell
from tests.support import make_repo

CONFIG = DriverConfig(lost_after_s=30)
MARK = "only-in-the-snapshot"
TASKS = [
    shell("first", "echo 1 > first.txt"),
    shell("slow", "sleep 2 && echo 2 > slow.txt", "first"),
    shell("last", "cat first.txt slow.txt > last.txt", "slow"),
]


WRITE_TIMEOUT_S = 30.0


class _Noticing:
    """A snapshot store that says when something was written to it."""

    def __init__(self, inner: SnapshotStore) -> None:
        self._inner = inner
        self.written = anyio.Event()

    async def put(self, name: str, data: bytes) -> None:
        await self._inner.put(name, data)
        self.written.set()

    async def get(self, name: str) -> bytes | None:
        return await self._inner.get(name)


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    return make_repo(tmp_path / "repo", {"app.py": "VERSION = 1\n"})


@asynccontextmanager
async def driving(cluster: Cluster, store: SnapshotStore, every: int) -> AsyncIterator[Driver]:
    options = DriverOptions(
        config=CONFIG, work_dir=cluster.tmp_path / "driver", tick_s=0.1,
        snapshot_every_events=every,
    )  # fmt: skip
    driver = Driver(cluster.log, cluster.js, options, snapshots=store)
    async with anyio.create_task_group() as group:
        await group.start(driver.run)
        yield driver
        group.cancel_scope.cancel()


async def _crash_mid_run(cluster: Cluster, store: SnapshotStore) -> None:
    async with driving(cluster, store, every=1):
        await cluster.submit("crash", TASKS)
        await cluster.wait_for(
            lambda es: any(isinstance(e, TaskStarted) and e.task_id == "slow" for e in es)
        )


async def _marked(store: SnapshotStore, *, last_id: str | None = None) -> int:
    """Put a mark into the stored snapshot that no replay of the log could produce (and,
    with ``last_id``, claim it ends with another event); the sequence it covers."""
    data = await store.get(DRIVER_SNAPSHOT)
    assert data is not None, "the driver wrote no snapshot"
    code = decision_code_digest()
    snapshot, why = decode_driver_snapshot(data, config=CONFIG, code=code)
    assert snapshot is not None, why
    snapshot.state.commands_seen.add(MARK)
    data = encode_driver_snapshot(snapshot.state, last_id or snapshot.last_id, code=code)
    await store.put(DRIVER_SNAPSHOT, data)
    return snapshot.seq


async def test_a_restarted_driver_starts_from_its_snapshot_and_finishes_the_run(
    world: tuple[JetStreamEventLog, Any], repo: Path, tmp_path: Path
) -> None:
    async with open_cluster(world, repo, tmp_path) as cluster:
        store = JetStreamSnapshotStore(cluster.js)
        await _crash_mid_run(cluster, store)
        covered = await _marked(store)
        assert covered > 0
        async with driving(cluster, store, every=1) as driver:
            assert MARK in driver.state.commands_seen
            assert driver.state.view.last_seq >= covered
            events = await cluster.wait_end("crash")
    completed = next(e for e in events if isinstance(e, RunCompleted))
    assert completed.tasks_succeeded == 3
    started = Counter(e.task_id for e in events if isinstance(e, TaskStarted))
    assert started == {"first": 1, "slow": 1, "last": 1}
    assert cluster.branch_file("crash", "last.txt") == "1\n2\n"


async def test_a_snapshot_that_does_not_match_the_log_is_dropped_and_the_log_replayed(
    world: tuple[JetStreamEventLog, Any], repo: Path, tmp_path: Path
) -> None:
    async with open_cluster(world, repo, tmp_path) as cluster:
        store = JetStreamSnapshotStore(cluster.js)
        await _crash_mid_run(cluster, store)
        await _marked(store, last_id="an-event-this-log-never-had")
        async with driving(cluster, store, every=0) as driver:
            assert MARK not in driver.state.commands_seen
            assert "crash" in driver.state.runs
            events = await cluster.wait_end("crash")
    started = Counter(e.task_id for e in events if isinstance(e, TaskStarted))
    assert started == {"first": 1, "slow": 1, "last": 1}


async def test_a_snapshot_is_written_once_enough_events_were_decided(
    world: tuple[JetStreamEventLog, Any], repo: Path, tmp_path: Path
) -> None:
    async with open_cluster(world, repo, tmp_path) as cluster:
        store = _Noticing(JetStreamSnapshotStore(cluster.js))
        async with driving(cluster, store, every=5):
            await cluster.submit("snap", TASKS)
            await cluster.wait_end("snap")
            with anyio.fail_after(WRITE_TIMEOUT_S):
                await store.written.wait()
        data = await store.get(DRIVER_SNAPSHOT)
        assert data is not None
        snapshot, why = decode_driver_snapshot(data, config=CONFIG, code=decision_code_digest())
        assert snapshot is not None, why
        assert snapshot.seq >= 5
        assert "snap" in snapshot.state.runs
        record = msgspec.msgpack.decode(data)
        assert record["seq"] == snapshot.seq
