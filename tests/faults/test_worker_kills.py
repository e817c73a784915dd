"""kill -9 a random worker every few seconds during a 24-task run.

Every task must still complete and be merged exactly once: a killed worker's item comes
back after the ack wait and another worker takes it over as a new attempt, and the dead
attempt's fence keeps anything it might still say out of the log.
"""

from __future__ import annotations

import os
import random
from pathlib import Path

import anyio
import anyio.abc
import pytest

from claudecluster.runtime.embedded_nats import EmbeddedNats
from tests.faults.rig import (
    RUN_ENDS_WITHIN_S,
    RecordProperty,
    chained_shell_tasks,
    kill_9,
    logs_on_failure,
    open_rig,
)

pytestmark = pytest.mark.faults

TASKS = 24
WORKERS = 4
KILL_EVERY_S = 2.0
#: Tasks merged since the last kill before the next: a loaded machine's run lasts longer,
#: and a kill every 2 s of it (each a worker start and an attempt done again) was most of
#: what the test cost there; with this, a run has at most TASKS / 2 kills however slow.
MERGES_PER_KILL = 2


async def test_a_run_survives_a_worker_killed_every_few_seconds(
    server: tuple[anyio.abc.Process, EmbeddedNats],
    repo: Path,
    tmp_path: Path,
    record_property: RecordProperty,
) -> None:
    seed = int(os.environ.get("FAULT_SEED", random.randrange(2**32)))
    print(f"worker kills: seed {seed} (FAULT_SEED={seed} reproduces the choice of victims)")
    record_property("seed", seed)
    chooser = random.Random(seed)
    # Eight chains of three: later tasks need their predecessor's file, so a task that ran
    # before its dependency merged, or ran twice, shows in the files as well as the log.
    # Each task sleeps a second, so the run lasts at least 6 s of work per worker however
    # fast the rest is: long enough for several kills on a quiet machine too, and each
    # attempt is long enough for a kill to land in it. (What a task costs is its worker's
    # and the driver's work on it, not its sleep: forty of half a second cost 1.7x this.)
    tasks = chained_shell_tasks("t", TASKS, chains=8, pause_s=1.0)
    _, nats = server
    kills = 0
    async with open_rig(tmp_path, repo, nats.url, credentials=nats.credentials) as rig:
        for _ in range(WORKERS):
            await rig.start_worker()
        await rig.start_driver()
        await rig.submit("kills", tasks)

        async def keep_killing() -> None:
            nonlocal kills
            merged_at_last_kill = -MERGES_PER_KILL
            while True:
                await anyio.sleep(KILL_EVERY_S)  # the pace of the faults, not a wait for one
                if rig.merged_count("kills") < merged_at_last_kill + MERGES_PER_KILL:
                    # Too little merged since the last kill: on a loaded machine a kill
                    # every 2 s can outpace the workers starting, and then nothing runs.
                    continue
                merged_at_last_kill = rig.merged_count("kills")
                victim = chooser.choice([w for w in rig.workers if w.returncode is None])
                await kill_9(victim)
                kills += 1
                await rig.start_worker()

        ended = True
        try:
            async with anyio.create_task_group() as group:
                group.start_soon(keep_killing)
                await rig.wait_end("kills", limit_s=RUN_ENDS_WITHIN_S)
                group.cancel_scope.cancel()
        except* TimeoutError:  # the task group wraps it
            ended = False
        if not ended:
            pytest.fail(f"the run did not end\n{logs_on_failure(rig)}", pytrace=False)
        verdict = rig.verdict("kills", tasks)
    verdict.report(f"worker kills ({kills} workers killed)", record_property)
    assert kills >= 3, "the run ended before the faults it is meant to survive"
    assert verdict.completed is not None
    assert verdict.completed.tasks_succeeded == TASKS
    assert verdict.completion_rate == 1.0, verdict
    assert set(verdict.merges.values()) == {1}
    assert set(verdict.trailers.values()) == {1}
    assert sorted(verdict.trailers) == sorted(verdict.planned)
