"""A workspace the task's own setup cannot prepare fails the task once, naming why.

Real NATS, the real driver and real workers running the setup command confined: a setup
command that fails would fail the same way on every machine, so the driver must not
retry it as if the worker had been at fault.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from claudecluster.events import (
    RunCompleted,
    RunPolicy,
    TaskFailed,
    TaskRetryScheduled,
    TaskStarted,
)
from claudecluster.events.model import Event, TaskAssigned
from claudecluster.runtime.local_workers import open_local_workers
from claudecluster.runtime.worker import WorkerConfig
from claudecluster.transport.jetstream import JetStreamEventLog
from tests.runtime.test_driver import Cluster, running_driver, shell
from tests.support import make_repo


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    return make_repo(tmp_path / "repo", {"app.py": "VERSION = 1\n"})


@asynccontextmanager
async def _cluster(
    world: tuple[JetStreamEventLog, Any], repo: Path, tmp_path: Path, **worker: Any
) -> AsyncIterator[Cluster]:
    log, client = world
    template = WorkerConfig(
        worker_id="template", workspace_root=tmp_path / "workspaces", heartbeat_s=1.0
    )
    async with open_local_workers(2, replace(template, **worker), log, client) as started:
        cluster = Cluster(log, client, repo, tmp_path)
        cluster.workers = started
        yield cluster


def _of(events: list[Event], kind: type[Event]) -> list[Any]:
    return [e for e in events if isinstance(e, kind)]


async def test_a_failing_setup_command_fails_the_task_once_with_its_status_and_output(
    world: tuple[JetStreamEventLog, Any], repo: Path, tmp_path: Path
) -> None:
    setup = "echo 'npm ERR! missing package.json' >&2; exit 3"
    # Three attempts and infrastructure failures retried, as by default: were the setup
    # counted as the machine's fault, the task would run three times.
    policy = RunPolicy(max_attempts=3, backoff_base_s=0.0)
    async with (
        _cluster(world, repo, tmp_path, setup_command=setup) as cluster,
        running_driver(cluster),
    ):
        await cluster.submit("setup", [shell("a", "echo a > a.txt")], policy=policy)
        events = await cluster.wait_end("setup")
    failed = _of(events, TaskFailed)
    assert len(failed) == 1
    assert failed[0].attempt == 1
    assert failed[0].failure_class == "setup"
    assert not failed[0].retryable
    assert "the setup command exited with status 3" in failed[0].reason
    assert "npm ERR! missing package.json" in failed[0].reason
    assert _of(events, TaskRetryScheduled) == []
    assert len(_of(events, TaskAssigned)) == 1
    assert _of(events, TaskStarted) == []  # the agent never ran
    (ended,) = _of(events, RunCompleted)
    assert (ended.tasks_succeeded, ended.tasks_failed) == (0, 1)


async def test_a_copy_files_pattern_matching_nothing_fails_the_task_once_naming_it(
    world: tuple[JetStreamEventLog, Any], repo: Path, tmp_path: Path
) -> None:
    local = tmp_path / "local"
    local.mkdir()
    async with (
        _cluster(world, repo, tmp_path, copy_from=local, copy_files=(".env",)) as cluster,
        running_driver(cluster),
    ):
        await cluster.submit("copy", [shell("a", "true")], policy=RunPolicy(backoff_base_s=0.0))
        events = await cluster.wait_end("copy")
    failed = _of(events, TaskFailed)
    assert [(f.attempt, f.failure_class, f.retryable) for f in failed] == [
        (1, "configuration", False)
    ]
    assert f"copy_files pattern '.env' matches nothing in {local}" in failed[0].reason
    assert _of(events, TaskRetryScheduled) == []
