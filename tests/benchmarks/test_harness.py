"""The benchmarks' shared harness: a refused submission ends the wait at once, with the
driver's reason, instead of hanging until the run's timeout (a 1,000-task plan against
the driver's 500-task default once waited out bench_overhead's whole 800 s)."""

from __future__ import annotations

import importlib
from pathlib import Path
from types import ModuleType

import anyio
import pytest

from claudecluster.actors.driver import DriverConfig
from claudecluster.events import SubmitRun, TaskSpec
from claudecluster.runtime.driver import Driver, DriverOptions

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"
#: Far longer than a refusal takes: the test fails on the exception, not on this.
_RUN_TIMEOUT_S = 600.0


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"  # nats-py runs on asyncio only


@pytest.fixture
def harness(monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    return importlib.import_module("_harness")


async def test_a_refused_submission_is_raised_with_the_drivers_reason(
    harness: ModuleType, tmp_path: Path
) -> None:
    repo = await harness.sample_repo(tmp_path / "repo")
    plan = tuple(TaskSpec(task_id=f"t{n}", title="t", prompt="true") for n in range(3))
    async with harness.open_private_cluster(tmp_path) as conn:
        options = DriverOptions(config=DriverConfig(max_tasks=2), work_dir=tmp_path / "d")
        driver = Driver(conn.log, conn.client.jetstream(), options)
        async with anyio.create_task_group() as group:
            await group.start(driver.run)
            command = SubmitRun(run_id="too-big", goal="g", repo=str(repo), plan=plan)
            with pytest.raises(harness.SubmissionRejectedError) as refused:
                await harness.submit_and_wait(conn, command, timeout_s=_RUN_TIMEOUT_S)
            group.cancel_scope.cancel()
    assert "too-big" in str(refused.value)
    assert "2" in str(refused.value)  # the driver's limit, in its reason
