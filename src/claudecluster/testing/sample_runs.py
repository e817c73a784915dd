"""Deterministic sample runs: realistic event histories built without any I/O.

They feed the recorded logs in ``events/samples/``, the golden projections in
``projections/golden/``, the demo, and tests. Time and ids are explicit, so the same call
always builds the same history.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Final

import msgspec

from claudecluster.domain.branches import integration_branch
from claudecluster.events.envelope import EventEnvelope, StoredEvent, wrap_event
from claudecluster.events.model import (
    Event,
    MergeConflict,
    RunCompleted,
    RunPlanned,
    RunRolledBack,
    RunSubmitted,
    TaskFailed,
    TaskMerged,
    TaskProgress,
    TaskQueued,
    TaskRetryScheduled,
    TaskSkipped,
    TaskSpec,
    TaskStarted,
    TaskSucceeded,
    TokenUsage,
    WorkerHeartbeat,
    WorkerJoined,
    WorkerLeft,
    WorkerLost,
)
from claudecluster.events.subjects import event_subject

__all__ = [
    "SAMPLE_START",
    "SCENARIOS",
    "LogBuilder",
    "conflict_and_rollback",
    "failover",
    "happy_path",
    "legacy_heartbeats",
]

SAMPLE_START: Final = datetime(2026, 1, 5, 9, 0, 0, tzinfo=UTC)


@dataclass
class LogBuilder:
    """Builds an event history on a virtual clock with predictable ids.

    Attributes:
        now: the virtual time the next event gets.
        prefix: event ids are ``<prefix>-<n>``.
    """

    now: datetime = SAMPLE_START
    prefix: str = "evt"
    envelopes: list[EventEnvelope] = field(default_factory=list)

    def wait(self, seconds: float) -> LogBuilder:
        """Advance the virtual clock."""
        self.now += timedelta(seconds=seconds)
        return self

    def emit(self, event: Event, *, after: float = 0.0) -> EventEnvelope:
        """Record ``event`` ``after`` seconds from now; its cause is the previous event."""
        self.wait(after)
        causation = self.envelopes[-1].id if self.envelopes else None
        envelope = wrap_event(
            event,
            event_id=f"{self.prefix}-{len(self.envelopes) + 1:05d}",
            now=self.now,
            causation_id=causation,
        )
        self.envelopes.append(envelope)
        return envelope

    def stored(self) -> list[StoredEvent]:
        """The history as a log would store it, sequences from 1."""
        return [
            StoredEvent(seq=index, subject=event_subject(env.payload), envelope=env)
            for index, env in enumerate(self.envelopes, start=1)
        ]


def _usage(scale: int) -> TokenUsage:
    return TokenUsage(input_tokens=1200 * scale, output_tokens=300 * scale)


def _run_task(
    log: LogBuilder,
    run_id: str,
    task_id: str,
    worker_id: str,
    *,
    attempt: int = 1,
    seconds: float = 20.0,
    file: str = "",
    queue: bool = True,
) -> None:
    """Queue (optionally), start, report progress on and finish one task attempt."""
    if queue:
        log.emit(TaskQueued(run_id=run_id, task_id=task_id, attempt=attempt), after=0.1)
    log.emit(
        TaskStarted(
            run_id=run_id,
            task_id=task_id,
            attempt=attempt,
            worker_id=worker_id,
            session_id=f"session-{task_id}-{attempt}",
        ),
        after=0.3,
    )
    target = file or f"src/{task_id}.py"
    log.emit(
        TaskProgress(
            run_id=run_id,
            task_id=task_id,
            attempt=attempt,
            kind="text",
            text=f"I'll implement {task_id} in {target}.",
        ),
        after=seconds / 4,
    )
    log.emit(
        TaskProgress(
            run_id=run_id,
            task_id=task_id,
            attempt=attempt,
            kind="tool_use",
            tool="Write",
            text=f"Write {target}",
        ),
        after=seconds / 4,
    )
    log.emit(
        TaskProgress(
            run_id=run_id,
            task_id=task_id,
            attempt=attempt,
            kind="tool_result",
            tool="Write",
            text=f"File created successfully at: {target}",
        ),
        after=0.2,
    )
    log.emit(
        TaskProgress(
            run_id=run_id, task_id=task_id, attempt=attempt, kind="usage", usage=_usage(2)
        ),
        after=seconds / 4,
    )


def _succeed(log: LogBuilder, run_id: str, task_id: str, worker_id: str, attempt: int = 1) -> None:
    log.emit(
        TaskSucceeded(
            run_id=run_id,
            task_id=task_id,
            attempt=attempt,
            worker_id=worker_id,
            summary=f"{task_id} done",
            cost_usd=0.0125,
            usage=_usage(2),
            turns=2,
            duration_ms=20_000,
        ),
        after=2.0,
    )


def _merge(log: LogBuilder, run_id: str, task_id: str, commit: str, attempt: int = 1) -> None:
    log.emit(
        TaskMerged(
            run_id=run_id,
            task_id=task_id,
            attempt=attempt,
            commit=commit,
            integration_branch=integration_branch(run_id),
        ),
        after=0.4,
    )


def _join(log: LogBuilder, *workers: str) -> None:
    for index, worker in enumerate(workers):
        log.emit(
            WorkerJoined(
                worker_id=worker,
                host="devbox",
                pid=4100 + index,
                slots=1,
                capabilities=("claude_code", "shell"),
                version="0.1.0",
            ),
            after=0.2,
        )


def _beat(log: LogBuilder, worker: str, running: tuple[str, ...] = ()) -> None:
    log.emit(
        WorkerHeartbeat(
            worker_id=worker,
            cpu_percent=35.0 if running else 2.0,
            memory_bytes=(240 if running else 60) * 1024 * 1024,
            load_avg=0.8,
            running_tasks=running,
            slots_free=0 if running else 1,
        ),
        after=0.1,
    )


def _plan(log: LogBuilder, run_id: str, goal: str, specs: tuple[TaskSpec, ...]) -> None:
    log.emit(
        RunSubmitted(
            run_id=run_id,
            goal=goal,
            repo="/work/sample-repo",
            planner="plan_file",
            budget_usd=5.0,
        ),
        after=1.0,
    )
    log.emit(
        RunPlanned(
            run_id=run_id,
            tasks=specs,
            base_commit="a1b2c3d",
            integration_branch=integration_branch(run_id),
        ),
        after=0.5,
    )


def _spec(task_id: str, title: str, *deps: str, files: tuple[str, ...] = ()) -> TaskSpec:
    return TaskSpec(
        task_id=task_id,
        title=title,
        prompt=f"{title}. Keep the change small and add a test.",
        depends_on=deps,
        files=files or (f"src/{task_id}.py",),
    )


def happy_path(run_id: str = "sample-happy", prefix: str = "happy") -> LogBuilder:
    """Six tasks in three waves on three workers; everything succeeds and merges."""
    log = LogBuilder(prefix=prefix)
    _join(log, "w1", "w2", "w3")
    specs = (
        _spec("schema", "Define the data schema"),
        _spec("api", "Add the HTTP API", "schema"),
        _spec("cli", "Add the command line", "schema"),
        _spec("docs", "Write the user guide", "schema"),
        _spec("tests", "Add integration tests", "api", "cli"),
        _spec("release", "Prepare the release notes", "tests", "docs"),
    )
    _plan(log, run_id, "Build a small inventory service", specs)
    waves = (("schema",), ("api", "cli", "docs"), ("tests",), ("release",))
    commit = 0
    for wave in waves:
        pairs = list(zip(wave, ("w1", "w2", "w3"), strict=False))
        for task_id, worker in pairs:
            _run_task(log, run_id, task_id, worker)
        for task_id, worker in pairs:
            _beat(log, worker, (f"{run_id}/{task_id}",))
        for task_id, worker in pairs:
            _succeed(log, run_id, task_id, worker)
            commit += 1
            _merge(log, run_id, task_id, f"c{commit:06d}")
    log.emit(
        RunCompleted(run_id=run_id, head_commit=f"c{commit:06d}", tasks_succeeded=6), after=0.5
    )
    for worker in ("w1", "w2", "w3"):
        _beat(log, worker)
    return log


def failover(run_id: str = "sample-failover", prefix: str = "failover") -> LogBuilder:
    """A worker dies mid-task, its late result is fenced off, a task fails after a retry."""
    log = LogBuilder(prefix=prefix)
    _join(log, "w1", "w2")
    specs = (
        _spec("parse", "Parse the input format"),
        _spec("index", "Build the search index", "parse"),
        _spec("fetch", "Fetch remote data"),
        _spec("report", "Render the report", "fetch"),
    )
    _plan(log, run_id, "Add search over imported data", specs)
    _run_task(log, run_id, "parse", "w1")
    _succeed(log, run_id, "parse", "w1")
    _merge(log, run_id, "parse", "f000001")
    _run_task(log, run_id, "index", "w1")
    _run_task(log, run_id, "fetch", "w2")
    log.emit(
        WorkerLost(
            worker_id="w1", reason="no heartbeat for 15s", orphaned_tasks=(f"{run_id}/index",)
        ),
        after=15.0,
    )
    _run_task(log, run_id, "index", "w2", attempt=2, seconds=10.0)
    # The dead worker's attempt finishes after all: fenced off as stale, but it cost money.
    _succeed(log, run_id, "index", "w1", attempt=1)
    _succeed(log, run_id, "index", "w2", attempt=2)
    _merge(log, run_id, "index", "f000002", attempt=2)
    log.emit(
        TaskFailed(
            run_id=run_id,
            task_id="fetch",
            attempt=1,
            worker_id="w2",
            reason="API error 429: rate limited",
            failure_class="rate_limit",
            retryable=True,
            cost_usd=0.002,
        ),
        after=1.0,
    )
    log.emit(
        TaskRetryScheduled(run_id=run_id, task_id="fetch", next_attempt=2, delay_s=4.0),
        after=0.1,
    )
    _run_task(log, run_id, "fetch", "w2", attempt=2, seconds=8.0)
    log.emit(
        TaskFailed(
            run_id=run_id,
            task_id="fetch",
            attempt=2,
            worker_id="w2",
            reason="the agent gave up: the remote API needs credentials",
            failure_class="agent_error",
            cost_usd=0.004,
        ),
        after=1.0,
    )
    log.emit(
        TaskSkipped(
            run_id=run_id, task_id="report", reason="dependency 'fetch' failed", blocked_by="fetch"
        ),
        after=0.1,
    )
    # The default policy skips what depends on a failed task; the run ends with the rest.
    log.emit(
        RunCompleted(
            run_id=run_id, head_commit="f000002", tasks_succeeded=2, tasks_failed=1,
            tasks_skipped=1,
        )
    )  # fmt: skip
    log.emit(WorkerLeft(worker_id="w2", reason="drained"), after=1.0)
    return log


def conflict_and_rollback(run_id: str = "sample-conflict", prefix: str = "conflict") -> LogBuilder:
    """Two tasks edit one file; the merge conflicts, is resolved, and the run is rolled back."""
    log = LogBuilder(prefix=prefix)
    _join(log, "w1", "w2")
    specs = (
        _spec("greet", "Add a greeting command", files=("src/app.py",)),
        _spec("farewell", "Add a farewell command", files=("src/app.py",)),
        _spec("readme", "Document both commands", "greet", "farewell"),
    )
    _plan(log, run_id, "Add greeting and farewell commands", specs)
    _run_task(log, run_id, "greet", "w1", file="src/app.py")
    _run_task(log, run_id, "farewell", "w2", file="src/app.py")
    _succeed(log, run_id, "greet", "w1")
    _merge(log, run_id, "greet", "m000001")
    _succeed(log, run_id, "farewell", "w2")
    log.emit(
        MergeConflict(
            run_id=run_id,
            task_id="farewell",
            attempt=1,
            files=("src/app.py",),
            ours="m000001",
            theirs="t000002",
            policy="resolve",
        ),
        after=0.3,
    )
    # The resolution attempt, as the driver queues it: from the conflicted merge.
    log.emit(
        TaskQueued(
            run_id=run_id, task_id="farewell", attempt=2, base_commit="x000001",
            resolves_conflict=True, note="Merging your previous result conflicted.",
        ),
        after=0.1,
    )  # fmt: skip
    _run_task(log, run_id, "farewell", "w2", attempt=2, file="src/app.py", queue=False)
    _succeed(log, run_id, "farewell", "w2", attempt=2)
    _merge(log, run_id, "farewell", "m000002", attempt=2)
    _run_task(log, run_id, "readme", "w1", file="README.md")
    _succeed(log, run_id, "readme", "w1")
    _merge(log, run_id, "readme", "m000003")
    log.emit(RunCompleted(run_id=run_id, head_commit="m000003", tasks_succeeded=3), after=0.5)
    log.emit(
        RunRolledBack(
            run_id=run_id,
            to_commit="a1b2c3d",
            to_sequence=0,
            reverted_tasks=("greet", "farewell", "readme"),
        ),
        after=30.0,
    )
    return log


def legacy_heartbeats() -> list[dict[str, Any]]:
    """Log records as an early worker wrote them: ``worker.heartbeat`` v1 with ``memory_mb``.

    Returned as plain records (not typed events), because today's types can only write v2.
    """
    log = LogBuilder(prefix="legacy")
    _join(log, "w-old")
    records: list[dict[str, Any]] = [msgspec.to_builtins(s) for s in log.stored()]
    for index, (cpu, memory_mb) in enumerate(((12.5, 64.0), (40.0, 256.5), (3.0, 80.25)), 2):
        at = SAMPLE_START + timedelta(seconds=5 * index)
        records.append(
            {
                "seq": index,
                "subject": "cc.evt._workers.w-old.worker.heartbeat",
                "envelope": {
                    "id": f"legacy-{index:05d}",
                    "occurred_at": at.isoformat().replace("+00:00", "Z"),
                    "schema_version": 1,
                    "correlation_id": "w-old",
                    "causation_id": None,
                    "payload": {
                        "type": "worker.heartbeat",
                        "worker_id": "w-old",
                        "cpu_percent": cpu,
                        "memory_mb": memory_mb,
                        "load_avg": 0.5,
                        "running_tasks": [],
                    },
                },
            }
        )
    return records


#: Recorded sample logs by file stem: each builds its JSON-compatible records.
SCENARIOS: Final[dict[str, Callable[[], list[dict[str, Any]]]]] = {
    "happy-path": lambda: [msgspec.to_builtins(s) for s in happy_path().stored()],
    "failover": lambda: [msgspec.to_builtins(s) for s in failover().stored()],
    "conflict-rollback": lambda: [msgspec.to_builtins(s) for s in conflict_and_rollback().stored()],
    "legacy-v1-heartbeats": legacy_heartbeats,
}
