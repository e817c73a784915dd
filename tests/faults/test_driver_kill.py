"""kill -9 the driver mid-run, twice, and start a new one each time.

The driver keeps nothing but the log: a new one replays it, republishes the items of
queued attempts (deduplicated per attempt), and finds merges it made but did not record
by their trailers. So the run completes, no task runs again after it succeeded, and
nothing is merged twice.
"""

from __future__ import annotations

from pathlib import Path

import anyio.abc
import pytest

from claudecluster.events import TaskStarted, TaskSucceeded
from claudecluster.runtime.embedded_nats import EmbeddedNats
from tests.faults.rig import (
    PROGRESS_WITHIN_S,
    RUN_ENDS_WITHIN_S,
    RecordProperty,
    chained_shell_tasks,
    kill_9,
    logs_on_failure,
    open_rig,
)

pytestmark = pytest.mark.faults

TASKS = 16
KILL_AT_MERGED = (4, 10)


async def test_a_run_completes_across_driver_kills_without_rerunning_a_success(
    server: tuple[anyio.abc.Process, EmbeddedNats],
    repo: Path,
    tmp_path: Path,
    record_property: RecordProperty,
) -> None:
    # Four chains of six, so merges and releases keep happening while the driver dies.
    tasks = chained_shell_tasks("d", TASKS, chains=4)
    _, nats = server
    merged_at_kill: list[int] = []
    async with open_rig(tmp_path, repo, nats.url, credentials=nats.credentials) as rig:
        for _ in range(3):
            await rig.start_worker()
        driver = await rig.start_driver()
        await rig.submit("drv", tasks)
        try:
            for merged in KILL_AT_MERGED:

                def reached(_: object, n: int = merged) -> bool:
                    return rig.merged_count("drv") >= n

                await rig.watch.wait_for(reached, PROGRESS_WITHIN_S)
                await kill_9(driver)
                merged_at_kill.append(rig.merged_count("drv"))
                driver = await rig.start_driver()
            await rig.wait_end("drv", limit_s=RUN_ENDS_WITHIN_S)
        except TimeoutError:
            pytest.fail(f"the run did not end\n{logs_on_failure(rig)}", pytrace=False)
        verdict = rig.verdict("drv", tasks)
        events = [e for e in rig.watch.events if getattr(e, "run_id", None) == "drv"]
    verdict.report(f"driver kills (at {merged_at_kill} merged)", record_property)
    assert max(merged_at_kill) < TASKS, "the driver died after the run, not during it"
    assert verdict.completed is not None
    assert verdict.completed.tasks_succeeded == TASKS
    assert verdict.completion_rate == 1.0, verdict
    # No task started again once it had succeeded: with only the driver dying, every
    # task ran exactly one attempt.
    assert verdict.started == {(t.task_id, 1): 1 for t in tasks}
    done: set[str] = set()
    for event in events:
        if isinstance(event, TaskSucceeded):
            done.add(event.task_id)
        assert not (isinstance(event, TaskStarted) and event.task_id in done), event
