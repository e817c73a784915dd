"""Every work message delivered twice: each task still runs once per attempt.

JetStream delivers at least once, and a publish retried after the duplicate window is
stored twice. The test makes that the rule: a copy of every work item is put on the
queue under a new message id as soon as the original appears, so two workers can hold
the same attempt at once. The task's recorded history decides which of them runs it.

Today a copy that arrives while its attempt runs is treated like a redelivery from a
silent worker: it takes the task over as a new attempt (docs/faults.md, "Known limits").
That wastes the running attempt but stays correct, which is what is asserted: one run
per attempt, one recorded success and one merge per task.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import anyio.abc
import pytest

from claudecluster.events import TaskSucceeded
from claudecluster.runtime.embedded_nats import EmbeddedNats
from claudecluster.transport.topology import WORK_STREAM
from tests.faults.rig import (
    RUN_ENDS_WITHIN_S,
    RecordProperty,
    logs_on_failure,
    open_rig,
    shell_task,
)

pytestmark = pytest.mark.faults

TASKS = 12
_COPY = "-copy"


async def test_each_task_runs_once_per_attempt_when_every_work_message_is_duplicated(
    server: tuple[anyio.abc.Process, EmbeddedNats],
    repo: Path,
    tmp_path: Path,
    record_property: RecordProperty,
) -> None:
    tasks = [shell_task(f"w{i}", f"sleep 0.3 && echo {i} > w{i}.txt") for i in range(TASKS)]
    _, nats = server
    copies: list[str] = []
    async with open_rig(tmp_path, repo, nats.url, credentials=nats.credentials) as rig:
        js = rig.js

        async def duplicate(msg: Any) -> None:
            message_id = (msg.headers or {}).get("Nats-Msg-Id", "")
            if message_id.endswith(_COPY):
                return
            await js.publish(
                msg.subject, msg.data, stream=WORK_STREAM,
                headers={**(msg.headers or {}), "Nats-Msg-Id": message_id + _COPY},
            )  # fmt: skip
            copies.append(message_id)

        subscription = await rig.client.subscribe("cc.work.>", cb=duplicate)
        try:
            for _ in range(3):
                await rig.start_worker()
            await rig.start_driver()
            await rig.submit("dup", tasks)
            try:
                await rig.wait_end("dup", limit_s=RUN_ENDS_WITHIN_S)
            except TimeoutError:
                pytest.fail(f"the run did not end\n{logs_on_failure(rig)}", pytrace=False)
        finally:
            await subscription.unsubscribe()
        verdict = rig.verdict("dup", tasks)
        successes = Counter(e.task_id for e in rig.watch.events if isinstance(e, TaskSucceeded))
    takeovers = sum(1 for (_, attempt) in verdict.started if attempt > 1)
    verdict.report(
        f"duplicate deliveries ({len(copies)} copies, {takeovers} attempts taken over)",
        record_property,
    )
    assert len(copies) >= TASKS
    assert verdict.completed is not None
    assert verdict.completion_rate == 1.0, verdict
    assert set(verdict.started.values()) == {1}, verdict.started  # once per attempt
    # Two holders of one attempt never both got to record a result.
    assert successes == Counter(t.task_id for t in tasks)
