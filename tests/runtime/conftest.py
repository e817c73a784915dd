"""Fixtures for the worker tests: a repository, a clean event log, a stand-in driver."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from claudecluster.events import (
    RunPlanned,
    RunSubmitted,
    TaskNetwork,
    TaskQueued,
    TaskSpec,
    wrap_event,
)
from claudecluster.events.model import Event
from claudecluster.events.work import WorkItem
from claudecluster.runtime.base_transfer import RepositoryChains
from claudecluster.runtime.connection import open_nats
from claudecluster.transport.artifacts import JetStreamArtifactStore
from claudecluster.transport.jetstream import JetStreamEventLog
from claudecluster.transport.work_queue import JetStreamWorkQueue
from claudecluster.workspace.git import resolve_commit
from tests.conftest import fresh_jetstream_log
from tests.support import make_repo


@pytest.fixture
def source(tmp_path: Path) -> Path:
    return make_repo(tmp_path / "source", {"app.py": "VERSION = 'v1'\n"})


class Driver:
    """Just enough of a driver to hand a worker one task."""

    def __init__(self, log: JetStreamEventLog, js: Any, source: Path, tmp_path: Path) -> None:
        self.log = log
        self.js = js
        self.source = source
        self.tmp_path = tmp_path
        self.n = 0
        self.chains = RepositoryChains(JetStreamArtifactStore(js))

    async def record(self, event: Event) -> int:
        """Append ``event``; returns its sequence."""
        self.n += 1
        envelope = wrap_event(event, event_id=f"driver-{self.n}", now=datetime.now(UTC))
        return (await self.log.append(envelope)).seq

    async def submit(
        self,
        run_id: str,
        task_id: str,
        prompt: str,
        *,
        executor: str = "claude_code",
        **item: Any,
    ) -> WorkItem:
        network: tuple[str, ...] = item.pop("network", ())  # the spec's network.allow
        base = await resolve_commit(self.source, "HEAD")
        key, segments = await self.chains.segments_for(self.source, base, self.tmp_path)
        spec = TaskSpec(
            task_id=task_id,
            title="Add the feature",
            prompt=prompt,
            executor=executor,  # type: ignore[arg-type]
            network=TaskNetwork(allow=network),
        )
        await self.record(RunSubmitted(run_id=run_id, goal="feature", repo=str(self.source)))
        await self.record(
            RunPlanned(run_id=run_id, tasks=(spec,), base_commit=base,
                       integration_branch=f"claudecluster/{run_id}")
        )  # fmt: skip
        await self.record(TaskQueued(run_id=run_id, task_id=task_id, attempt=1))
        work = WorkItem(
            run_id=run_id, attempt=1, spec=spec, base_commit=base, repo_key=key,
            base_segments=segments, **item,
        )  # fmt: skip
        await JetStreamWorkQueue(self.js).publish(work)
        return work


@pytest.fixture
async def world(nats_url: str) -> AsyncIterator[tuple[JetStreamEventLog, Any]]:
    async with fresh_jetstream_log(nats_url) as log, open_nats(nats_url) as client:
        yield log, client
