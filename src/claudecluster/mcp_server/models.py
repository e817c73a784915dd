"""What the MCP tools take and give back: pydantic models, converted once at this edge.

The tool arguments are declared with the ``Annotated`` types below, so the SDK builds one
pydantic arguments model per tool from them: the JSON Schema a client sees carries the
same patterns and bounds that validation enforces, and a bad argument comes back as a
tool error that names the argument and the rule it broke. Results are the ``*Result``
models; the SDK returns each as structured content (checked against the tool's output
schema) and as its JSON text, which is what Claude Code shows the model.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Final

import msgspec
from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from claudecluster.domain.preview import PlanPreview
from claudecluster.events.model import ID_REGEX, is_id
from claudecluster.projections.views import RunView, TaskView, WorkerView

__all__ = [
    "NO_NUL",
    "CancelResult",
    "Goal",
    "LogLine",
    "PlanPreviewResult",
    "RepoPath",
    "RollbackResult",
    "RunId",
    "RunStatusResult",
    "SubmittedResult",
    "TaskLogsResult",
    "TaskRef",
    "TaskStatusResult",
    "WorkerResult",
    "WorkersResult",
    "run_result",
    "preview_result",
    "task_result",
    "worker_result",
]


def _run_id(value: str) -> str:
    """The one id check (the pattern below is what the schema shows a client)."""
    if not is_id(value):
        raise ValueError("use 1-64 letters, digits, '_' or '-', starting with one of the first two")
    return value


def _task_ref(value: str) -> str:
    if not all(is_id(part) for part in value.split("/", 1)):
        raise ValueError("give RUN/TASK or TASK, each 1-64 letters, digits, '_' or '-'")
    return value


RunId = Annotated[
    str,
    Field(
        pattern=f"^{ID_REGEX}$",
        description="A run id, e.g. run-20261124-101500-1a2b3c (letters, digits, - and _).",
    ),
    AfterValidator(_run_id),
]
TaskRef = Annotated[
    str,
    Field(
        min_length=1,
        max_length=129,
        pattern=f"^{ID_REGEX}(/{ID_REGEX})?$",
        description="A task as RUN/TASK, or a task id that only one run has.",
    ),
    AfterValidator(_task_ref),
]
#: Free text that goes on to prompts, files and command lines, where the OS refuses a NUL.
NO_NUL: Final = r"^[^\x00]*$"
Goal = Annotated[
    str,
    Field(
        min_length=1,
        max_length=20_000,
        pattern=NO_NUL,
        description="What the run should achieve.",
    ),
]
RepoPath = Annotated[
    str,
    Field(
        # As the gateway's bodies: a relative path would resolve against the driver's
        # working directory, which an MCP client cannot know.
        pattern=r"^(/|[A-Za-z][A-Za-z0-9+.-]*://|[^@/\s]+@[^:/\s]+:)[^\x00-\x1f\x7f]*$",
        max_length=4096,
        description="The repository the run works on: an absolute path on the driver's "
        "machine (a git URL is refused: the driver does not clone). Default: the directory "
        "the MCP server was started in.",
    ),
]


class _Result(BaseModel):
    model_config = ConfigDict(frozen=True)


class TaskStatusResult(_Result):
    """One task: where it is, who runs it, what it cost, and why it failed if it did."""

    run_id: str
    task_id: str
    title: str
    kind: str
    state: str
    depends_on: list[str]
    attempt: int = Field(description="The live attempt (0 before the task was first queued).")
    worker_id: str | None
    started_at: datetime | None
    finished_at: datetime | None
    turns: int
    cost_usd: float
    last_progress: str
    failure: str | None
    failure_class: str | None
    merged_commit: str | None
    conflict_files: list[str]


class RunStatusResult(_Result):
    """One run: its state, its branch and every task."""

    run_id: str
    goal: str
    repo: str
    state: str
    reason: str = Field(description="Why the run ended as it did (empty while it runs).")
    submitted_at: datetime
    finished_at: datetime | None
    integration_branch: str
    head_commit: str
    counts: dict[str, int] = Field(description="How many tasks are in each state.")
    tasks: list[TaskStatusResult]


class SubmittedResult(_Result):
    """A run the driver accepted; with ``wait``, also where it ended."""

    run_id: str
    accepted: bool = Field(description="The driver recorded the run before the tool returned.")
    status: RunStatusResult | None = Field(
        default=None, description="The run's status when the tool returned."
    )


class LogLine(_Result):
    """One line of a task's output: an agent message, a tool call, a result."""

    seq: int = Field(description="Its sequence number in the event log.")
    attempt: int
    at: datetime
    text: str


class TaskLogsResult(_Result):
    """The latest lines of a task's output, oldest first."""

    run_id: str
    task_id: str
    state: str
    lines: list[LogLine]
    truncated: bool = Field(description="Older lines exist that this result leaves out.")


class CancelResult(_Result):
    """The driver's answer to a cancellation."""

    target: str
    outcome: str = Field(description="run.cancelled, task.cancelled or task.skipped.")
    reason: str


class RollbackResult(_Result):
    """Where a rollback moved the run's integration branch."""

    run_id: str
    to_commit: str
    reverted_tasks: list[str]


class WorkerResult(_Result):
    """One worker as the log knows it."""

    worker_id: str
    pool: str
    host: str
    state: str
    slots: int
    slots_free: int
    running_tasks: list[str]
    last_seen_at: datetime | None
    reason: str


class WorkersResult(_Result):
    """Every worker the log knows, by id."""

    workers: list[WorkerResult]


def task_result(task: TaskView) -> TaskStatusResult:
    """The tool result for a task record."""
    return TaskStatusResult(
        run_id=task.run_id,
        task_id=task.task_id,
        title=task.title,
        kind=task.kind,
        state=task.state.value,
        depends_on=list(task.depends_on),
        attempt=task.attempt,
        worker_id=task.worker_id,
        started_at=task.started_at,
        finished_at=task.finished_at,
        turns=task.turns,
        cost_usd=round(task.cost_usd, 6),
        last_progress=task.last_progress,
        failure=task.failure,
        failure_class=task.failure_class,
        merged_commit=task.merged_commit,
        conflict_files=list(task.conflict_files),
    )


def run_result(run: RunView, tasks: list[TaskView]) -> RunStatusResult:
    """The tool result for a run record and its tasks."""
    counts: dict[str, int] = {}
    for task in tasks:
        counts[task.state.value] = counts.get(task.state.value, 0) + 1
    return RunStatusResult(
        run_id=run.run_id,
        goal=run.goal,
        repo=run.repo,
        state=run.state.value,
        reason=run.reason,
        submitted_at=run.submitted_at,
        finished_at=run.finished_at,
        integration_branch=run.integration_branch,
        head_commit=run.head_commit,
        counts=counts,
        tasks=[task_result(task) for task in tasks],
    )


def worker_result(worker: WorkerView) -> WorkerResult:
    """The tool result for a worker record."""
    return WorkerResult(
        worker_id=worker.worker_id,
        pool=worker.pool,
        host=worker.host,
        state=worker.state,
        slots=worker.slots,
        slots_free=worker.slots_free,
        running_tasks=list(worker.running_tasks),
        last_seen_at=worker.last_seen_at,
        reason=worker.reason,
    )


class PlanPreviewResult(_Result):
    """What a plan would do, before anything starts (nothing was started).

    The content of :class:`~claudecluster.domain.preview.PlanPreview`, as the CLI's
    preview and the gateway's ``POST /plans/preview`` give it.
    """

    goal: str
    tasks: list[dict[str, Any]] = Field(
        description="Each task: task_id, title, size, depends_on, model, limits, mcp_servers."
    )
    overlaps: list[dict[str, Any]] = Field(
        description="Tasks naming the same files: first, second, files, and serialized "
        "(true: the second waits for the first; false: their merges may conflict)."
    )
    max_attempts: int
    budget_usd: float | None
    estimate: dict[str, Any] = Field(
        description="workers, minutes (on that pool), sequential_minutes, cost_usd, "
        "critical_path, and the typical figures each size stands for (not measurements)."
    )
    plan: dict[str, Any] = Field(description="The plan itself, to edit and submit_plan.")
    started: bool = Field(default=False, description="Always false: a preview starts nothing.")


def preview_result(preview: PlanPreview) -> PlanPreviewResult:
    """The tool's result for ``preview``."""
    data = msgspec.to_builtins(preview)
    return PlanPreviewResult(**data)
