"""The gateway's request and response bodies: msgspec Structs, validated at the edge.

They are the single source of the OpenAPI document's schemas, so what the gateway checks
and what it documents cannot drift apart. Views (runs, tasks, workers) are the
projections' own records, served as they are.
"""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec

from claudecluster.domain.submission import MAX_TASKS_CEILING
from claudecluster.events.model import FanoutSpec, Id, RunPolicy, TaskKind, TaskLimits
from claudecluster.events.plan import PlanFile, PlanTask
from claudecluster.projections.views import CostView, RunView, TaskView, WorkerView

__all__ = [
    "CancelBody",
    "CancelledBody",
    "HealthBody",
    "LogLine",
    "LogsBody",
    "PreviewPlanBody",
    "ProblemBody",
    "ProblemField",
    "RollbackBody",
    "RolledBackBody",
    "RunDetailBody",
    "RunsBody",
    "SubmissionBody",
    "SubmitRunBody",
    "SubmitTaskBody",
    "WorkersBody",
]

Text = Annotated[str, msgspec.Meta(min_length=1, max_length=100_000)]
# A path relative to the driver's working directory means nothing to an HTTP client.
Repo = Annotated[
    str,
    msgspec.Meta(
        pattern=r"^(/|[A-Za-z][A-Za-z0-9+.-]*://|[^@/\s]+@[^:/\s]+:)[^\x00-\x1f\x7f]*$",
        max_length=4096,
        description="Absolute repository path on the driver's machine (a git URL is refused: "
        "the driver does not clone).",
    ),
]


class SubmitRunBody(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A run to submit: a goal and exactly one way of planning it."""

    goal: Annotated[Text, msgspec.Meta(description="What the run should achieve.")]
    repo: Repo
    plan: Annotated[
        Annotated[list[PlanTask], msgspec.Meta(min_length=1, max_length=MAX_TASKS_CEILING)] | None,
        msgspec.Meta(
            description="Explicit tasks (a task graph), with a plan file's field names: "
            "each task named by id or task_id, title optional; at most the driver's "
            "configured max_tasks (500 unless configured)."
        ),
    ] = None
    fanout: Annotated[
        FanoutSpec | None, msgspec.Meta(description="One task per file matching a glob.")
    ] = None
    claude_planner: Annotated[
        bool, msgspec.Meta(description="Let a read-only Claude Code agent plan the tasks.")
    ] = False
    run_id: Annotated[Id | None, msgspec.Meta(description="Default: a fresh id.")] = None
    budget_usd: Annotated[float, msgspec.Meta(gt=0)] | None = None
    max_parallel: Annotated[int, msgspec.Meta(ge=1, le=10_000)] | None = None
    policy: RunPolicy | None = None


class PreviewPlanBody(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A plan to preview (nothing starts): a plan as a plan file states it, a fan-out, or
    a goal for the Claude planner (where the gateway runs one)."""

    goal: Annotated[str, msgspec.Meta(max_length=100_000)] = ""
    repo: Annotated[
        Repo | None,
        msgspec.Meta(description="Needed for a fan-out or the planner, which read it at HEAD."),
    ] = None
    plan: Annotated[
        PlanFile | None,
        msgspec.Meta(description="A plan in the plan file's form (id, prompt, size, ...)."),
    ] = None
    fanout: FanoutSpec | None = None
    claude_planner: bool = False
    workers: Annotated[
        Annotated[int, msgspec.Meta(ge=1, le=10_000)] | None,
        msgspec.Meta(description="The pool the estimate assumes; default: its slots now."),
    ] = None
    budget_usd: Annotated[float, msgspec.Meta(gt=0)] | None = None
    policy: Annotated[
        RunPolicy | None, msgspec.Meta(description="Default: the plan's policy, then defaults.")
    ] = None


class SubmitTaskBody(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A single task, submitted as a run of one task."""

    repo: Repo
    prompt: Annotated[
        Text, msgspec.Meta(description="The agent's prompt, or the shell executor's command.")
    ]
    title: Annotated[str, msgspec.Meta(max_length=500)] = ""
    task_id: Id = "task"
    kind: TaskKind = "generate"
    executor: Literal["claude_code", "shell"] = "claude_code"
    limits: TaskLimits | None = None
    run_id: Annotated[Id | None, msgspec.Meta(description="Default: a fresh id.")] = None
    policy: RunPolicy | None = None


class SubmissionBody(msgspec.Struct, frozen=True, kw_only=True):
    """A submission the driver recorded; where to follow it."""

    run_id: str
    command_id: str
    command_seq: Annotated[int, msgspec.Meta(description="Sequence in the commands stream.")]
    task_id: str | None = None
    status_url: str
    events_url: Annotated[str, msgspec.Meta(description="WebSocket of the run's events.")]


class RunsBody(msgspec.Struct, frozen=True, kw_only=True):
    """Every run, oldest first."""

    runs: list[RunView]
    last_seq: Annotated[int, msgspec.Meta(description="The log sequence this reflects.")]


class RunDetailBody(msgspec.Struct, frozen=True, kw_only=True):
    """One run with its tasks in plan order and its spend."""

    run: RunView
    tasks: list[TaskView]
    cost: CostView | None = None
    last_seq: int


class CancelBody(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Why a run or task is cancelled (optional body of DELETE)."""

    reason: Annotated[str, msgspec.Meta(max_length=2000)] = ""


class CancelledBody(msgspec.Struct, frozen=True, kw_only=True):
    """The driver's answer to a cancellation."""

    event: Annotated[str, msgspec.Meta(description="The answering event's wire type.")]
    run_id: str
    task_id: str | None = None
    reason: str = ""


class RollbackBody(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Where to move a finished run's branch back to (neither: its base commit)."""

    to_task: Id | None = None
    to_sequence: Annotated[int, msgspec.Meta(ge=0)] | None = None


class RolledBackBody(msgspec.Struct, frozen=True, kw_only=True):
    """The driver's answer to a rollback."""

    run_id: str
    to_commit: str
    reverted_tasks: list[str]


class LogLine(msgspec.Struct, frozen=True, kw_only=True):
    """One line of a task's log: agent text, a tool call or result, or a task event."""

    seq: int
    occurred_at: str
    type: Annotated[str, msgspec.Meta(description="The event's wire type.")]
    attempt: int | None = None
    kind: str = ""
    tool: str = ""
    text: str = ""


class LogsBody(msgspec.Struct, frozen=True, kw_only=True):
    """A task's log, oldest first."""

    run_id: str
    task_id: str
    lines: list[LogLine]


class WorkersBody(msgspec.Struct, frozen=True, kw_only=True):
    """Every worker the log knows."""

    workers: list[WorkerView]


class HealthBody(msgspec.Struct, frozen=True, kw_only=True):
    """The gateway is up and following the log."""

    status: Literal["ok"] = "ok"
    last_seq: int


class ProblemField(msgspec.Struct, frozen=True, kw_only=True):
    """One invalid field of a request."""

    field: Annotated[str, msgspec.Meta(description="JSON path, e.g. $.plan[0].task_id.")]
    problem: str


class ProblemBody(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """An error, as RFC 9457 problem details (application/problem+json)."""

    type: str = "about:blank"
    title: str
    status: int
    detail: str
    errors: list[ProblemField] = []
