"""A result is accepted only from the worker holding the attempt: real NATS, a real driver
and worker. A client that never held the attempt publishes a TaskSucceeded for it while the
real worker still runs; the driver refuses and quarantines it, and the live attempt goes
on to its own result, which is merged.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import anyio
import pytest

from claudecluster.events import (
    RunCompleted,
    TaskAssigned,
    TaskMerged,
    TaskStarted,
    TaskSucceeded,
    wrap_event,
)
from claudecluster.executors.confinement import Confinement
from claudecluster.projections.tasks import NOT_THE_HOLDER
from claudecluster.transport.base import QuarantinedMessage
from claudecluster.transport.jetstream import JetStreamEventLog
from tests.runtime.test_driver import open_cluster, running_driver, shell
from tests.support import make_repo

pytestmark = pytest.mark.nats

WAIT_S = 60.0


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    return make_repo(tmp_path / "repo", {"app.py": "VERSION = 1\n"})


async def _refused(log: JetStreamEventLog) -> list[QuarantinedMessage]:
    with anyio.fail_after(WAIT_S):
        while True:
            records = [r for r in await log.quarantined() if NOT_THE_HOLDER in r.reason]
            if records:
                return records
            await anyio.sleep(0.1)


async def test_a_forged_success_is_refused_and_quarantined_and_the_live_attempt_completes(
    world: tuple[JetStreamEventLog, Any], repo: Path, tmp_path: Path
) -> None:
    gate = tmp_path / "go"
    # The real attempt waits until the forgery is on the log, then does its work. The gate
    # is a file outside the workspace, which a confined attempt cannot see, so this worker
    # runs unconfined: what is tested here is the signature check, not the sandbox.
    task = shell("t", f"while [ ! -e {gate} ]; do sleep 0.05; done; echo real > out.txt")
    unconfined = Confinement.unconfined()
    async with (
        open_cluster(world, repo, tmp_path, workers=1, confinement=unconfined) as cluster,
        running_driver(cluster),
    ):
        await cluster.submit("forged", [task])
        events = await cluster.wait_for(
            lambda es: any(isinstance(e, TaskStarted) and e.run_id == "forged" for e in es)
        )
        started = next(e for e in events if isinstance(e, TaskStarted))
        claim = next(e for e in events if isinstance(e, TaskAssigned))
        forged = TaskSucceeded(
            run_id="forged", task_id="t", attempt=started.attempt, worker_id=started.worker_id,
            summary="forged", cost_usd=99.0,
        )  # fmt: skip
        # Appended like any client would: no signature, no expected sequence.
        await cluster.log.append(wrap_event(forged, event_id="forgery", now=datetime.now(UTC)))
        records = await _refused(cluster.log)
        gate.touch()
        events = await cluster.wait_end("forged")

    assert claim.worker_key.startswith("U")
    assert "carries no signature" in records[0].reason
    assert records[0].origin_subject == "cc.evt.forged.t.task.succeeded"
    completed = next(e for e in events if isinstance(e, RunCompleted))
    assert completed.tasks_succeeded == 1
    assert completed.cost_usd < 99.0  # the forged cost was not counted
    successes = [e for e in events if isinstance(e, TaskSucceeded)]
    assert [e.summary for e in successes[:1]] == ["forged"]  # on the log, but refused ...
    assert len([e for e in events if isinstance(e, TaskMerged)]) == 1  # ... the real one merged
    assert cluster.branch_file("forged", "out.txt") == "real\n"
