"""The model API fails in bursts: 429s, 500s and streams cut mid-answer.

Real Claude Code CLIs on the scripted model. Two layers of retries meet here: the CLI
retries a failed request itself (the worker allows it two retries), and when a burst
outlasts those, the attempt fails as retryable and the driver retries it with backoff,
pausing every start after a rate-limit report. Every task must complete.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import anyio.abc
import pytest

from claudecluster.events import (
    RunPolicy,
    TaskFailed,
    TaskRateLimited,
    TaskRetryScheduled,
    TaskSpec,
)
from claudecluster.runtime.embedded_nats import EmbeddedNats
from claudecluster.scripted_model import Script, open_scripted_model
from tests.faults.rig import RUN_ENDS_WITHIN_S, RecordProperty, logs_on_failure, open_rig

pytestmark = pytest.mark.faults


def _writes(name: str, errors: list[dict[str, Any]]) -> dict[str, Any]:
    tool = {"name": "Write", "input": {"file_path": "{cwd}/" + f"{name}.txt", "content": "ok\n"}}
    return {
        "marker": f"[[task:{name}]]",
        "turns": [{"text": "Writing.", "tools": [tool]}, {"text": f"Wrote {name}.txt."}],
        "errors": errors,
    }


SCRIPT = Script.model_validate(
    {
        "tasks": [
            # Absorbed by the CLI's own retries (two allowed).
            _writes("cut", [{"turn": 0, "kind": "cut_stream", "times": 2}]),
            _writes("brief429", [{"turn": 1, "kind": "http_429", "times": 2, "retry_after_s": 0}]),
            # Outlast the CLI's retries: the attempt fails and the driver retries the task.
            _writes("burst429", [{"turn": 0, "kind": "http_429", "times": 4, "retry_after_s": 0}]),
            _writes("burst500", [{"turn": 1, "kind": "http_500", "times": 4}]),
            _writes("calm", []),
        ]
    }
)
NAMES = ["cut", "brief429", "burst429", "burst500", "calm"]


async def test_every_task_completes_through_bursts_of_api_errors_and_cut_streams(
    server: tuple[anyio.abc.Process, EmbeddedNats],
    repo: Path,
    tmp_path: Path,
    record_property: RecordProperty,
) -> None:
    tasks = [
        TaskSpec(task_id=name, title=name, prompt=f"[[task:{name}]] write {name}.txt")
        for name in NAMES
    ]
    policy = RunPolicy(max_attempts=3, backoff_base_s=0.5, backoff_max_s=2.0)
    _, nats = server
    async with open_scripted_model(SCRIPT) as model:
        api = {"ANTHROPIC_BASE_URL": model.url, "ANTHROPIC_API_KEY": "sk-scripted"}
        async with open_rig(tmp_path, repo, nats.url, env=api, credentials=nats.credentials) as rig:
            for _ in range(2):
                await rig.start_worker()
            await rig.start_driver()
            await rig.submit("api", tasks, policy)
            try:
                await rig.wait_end("api", limit_s=RUN_ENDS_WITHIN_S)
            except TimeoutError:
                pytest.fail(f"the run did not end\n{logs_on_failure(rig)}", pytrace=False)
            verdict = rig.verdict("api", tasks)
            events = list(rig.watch.events)
        served = Counter(s.error for s in model.served if s.error)
    verdict.report(f"model errors (served {dict(served)})", record_property)
    assert verdict.completed is not None
    assert verdict.completion_rate == 1.0, verdict
    # Every scripted error was served: the faults happened.
    assert served == {"cut_stream": 2, "http_429": 6, "http_500": 4}
    failed = {(e.task_id, e.failure_class) for e in events if isinstance(e, TaskFailed)}
    assert failed == {("burst429", "rate_limit"), ("burst500", "api_error")}
    assert any(isinstance(e, TaskRateLimited) for e in events)
    # The driver's retries waited: each was scheduled with the run's backoff.
    retries = {(e.task_id, e.next_attempt, e.delay_s) for e in events
               if isinstance(e, TaskRetryScheduled)}  # fmt: skip
    assert retries == {("burst429", 2, 0.5), ("burst500", 2, 0.5)}
    # The bursts cost one more attempt each; the rest ran once.
    assert {task for (task, attempt) in verdict.started if attempt > 1} == {"burst429", "burst500"}
