"""The worker's disk and executor, scripted: what a simulation puts behind the real
worker shell.

The worker shell (:class:`~claudecluster.runtime.worker.Worker`) claims, records and
keeps its work item alive itself; what it hands off is the disk
(:class:`~claudecluster.runtime.worker.disk.AttemptDisk`) and the agent
(:class:`~claudecluster.executors.base.Executor`). Here neither touches a disk or starts
a process, so the shell runs on trio's ``MockClock``: an attempt "runs" by sleeping a
sampled virtual time, and succeeds or fails as drawn. Each draw comes from the seed and
the attempt alone (not from the order attempts start in), so a seed gives the same
durations and failures whatever the scheduling order.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from pathlib import Path

import anyio

from claudecluster.domain.outcome import Outcome
from claudecluster.events.model import ArtifactRef, FailureClass
from claudecluster.events.work import WorkItem
from claudecluster.executors.base import AttemptRun, ProgressSink
from claudecluster.runtime.worker.disk import PreparedWorkspace
from claudecluster.transport.artifacts import ArtifactStore, artifact_key

__all__ = ["ScriptedDisk", "ScriptedExecutor"]

#: samples an attempt's duration in virtual seconds from its own random source
Duration = Callable[[random.Random, str], float]


class ScriptedDisk:
    """A disk that holds nothing: workspaces are paths no one creates, and a result is a
    stand-in bundle in the (in-memory) artifact store, so the driver sees a result to
    merge as it would from a real worker.

    Args:
        artifacts: where results are stored.
    """

    def __init__(self, artifacts: ArtifactStore) -> None:
        self._artifacts = artifacts

    async def sweep(self, root: Path) -> None:
        return None

    async def remove(self, path: Path) -> None:
        return None

    async def prepare(
        self, item: WorkItem, branch: str, scratch: Path, where: Path, *, empty: bool
    ) -> PreparedWorkspace:
        return PreparedWorkspace(workspace=where, objects=where / ".git" / "objects")

    def transcript(self, scratch: Path, workspace: Path, session_id: str) -> Path | None:
        return None  # the scripted agent keeps none: nothing to mirror or resume

    async def collect(
        self, item: WorkItem, attempt: int, prepared: PreparedWorkspace, branch: str
    ) -> tuple[ArtifactRef, ...]:
        key = artifact_key(item.run_id, item.task_id, attempt, "result.bundle")
        return (await self._artifacts.put(key, "result.bundle", b"simulated"),)

    async def clean(self, scratch: Path) -> None:
        return None


class ScriptedExecutor:
    """An agent that takes a sampled virtual time and succeeds or fails as drawn.

    Args:
        seed: the source of every draw.
        duration: samples an attempt's duration in seconds (default: 5 to 60).
        failure_chance: chance an attempt fails.
        failure_classes: the classes a failure is drawn from (``agent_error`` is final,
            the others retryable, as real executors report them).
    """

    def __init__(
        self,
        *,
        seed: int,
        duration: Duration | None = None,
        failure_chance: float = 0.0,
        failure_classes: tuple[FailureClass, ...] = ("api_error", "timeout"),
    ) -> None:
        self._seed = seed
        self._duration = duration
        self._failure_chance = failure_chance
        self._failure_classes = failure_classes
        #: attempts run so far, for reports
        self.started = 0

    async def run(self, job: AttemptRun, on_progress: ProgressSink) -> Outcome:
        draw = random.Random(f"{self._seed}:{job.run_id}:{job.task_id}:{job.attempt}")  # noqa: S311 - a seeded simulation
        seconds = self._duration(draw, job.task_id) if self._duration else draw.uniform(5, 60)
        fails = draw.random() < self._failure_chance
        kind = draw.choice(self._failure_classes) if fails else None
        self.started += 1
        await anyio.sleep(seconds)  # a CancelTask ends it here, as it ends a real agent
        if kind is not None:
            return Outcome(
                succeeded=False, reason=f"simulated {kind}", failure_class=kind,
                retryable=kind != "agent_error", duration_ms=int(seconds * 1000),
            )  # fmt: skip
        return Outcome(
            succeeded=True, summary="simulated", cost_usd=0.01, duration_ms=int(seconds * 1000)
        )
