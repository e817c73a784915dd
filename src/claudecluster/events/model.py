"""The event and command vocabulary: every fact the cluster records, every request it takes.

Events are facts in the past tense (``TaskQueued``); commands are requests in the imperative
(``CancelTask``). Both are frozen msgspec Structs in one tagged union each, discriminated by
a dotted lower-case wire tag in the ``type`` field (``task.queued``). Each tag has exactly two
dot-separated tokens, so it can end a NATS subject and be filtered with ``*.*``.

Rules that keep old logs replayable (docs/events.md has the long form):

* A field added later always has a default; readers ignore fields they do not know.
* A change that would break old readers (rename, retype, re-meaning) bumps the class's
  ``schema_version`` and registers an upcaster in :mod:`claudecluster.events.codec`.
* Events are never edited once written; corrections are new events.
"""

from __future__ import annotations

import re
from typing import Annotated, ClassVar, Final, Literal

import msgspec

__all__ = [
    "ID_PATTERN",
    "ID_REGEX",
    "ArtifactRef",
    "ChangedFile",
    "CancelRun",
    "CancelTask",
    "CommandRejected",
    "Command",
    "CommandBase",
    "DrainWorker",
    "DriverEvent",
    "DriverLeaseTaken",
    "PoolScaleFailed",
    "PoolScaled",
    "Event",
    "EventBase",
    "FailureClass",
    "FanoutSpec",
    "Id",
    "McpServer",
    "MergeConflict",
    "CollisionPredicted",
    "CollisionSettled",
    "TaskFilesTouched",
    "TaskPreempted",
    "PredictedConflict",
    "ProgressKind",
    "RollbackRun",
    "RunBudgetReached",
    "RunCancelled",
    "RunCompleted",
    "RunEvent",
    "RunFailed",
    "RunPlanned",
    "RunPolicy",
    "RetryRun",
    "RunRetried",
    "RunRolledBack",
    "RunSubmitted",
    "SubmitRun",
    "TaskAssigned",
    "TaskCancelled",
    "TaskEvent",
    "TaskFailed",
    "TaskKind",
    "TaskLimits",
    "TaskNetwork",
    "TaskMerged",
    "TaskProgress",
    "TaskQueued",
    "TaskRateLimited",
    "TaskRetryScheduled",
    "TaskSkipped",
    "TaskSpec",
    "TaskStarted",
    "TaskSucceeded",
    "TokenUsage",
    "WorkerEvent",
    "WorkerHeartbeat",
    "WorkerJoined",
    "WorkerLeft",
    "WorkerLost",
    "is_id",
]

#: Ids become NATS subject tokens, so they may hold no dots, wildcards or spaces, and may
#: not start with ``_`` (reserved for our own tokens such as the run-level ``_``).
ID_REGEX: Final = r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}"
#: :data:`ID_REGEX` anchored for ``re.search`` (how msgspec and JSON Schema apply a pattern).
#: Python's ``$`` also matches before a trailing newline, so ``"run\n"`` would pass a plain
#: ``^...$``; the lookahead refuses that, and means nothing to an ECMA regex (JSON Schema),
#: whose ``$`` is already the end of the input.
ID_PATTERN: Final = rf"^{ID_REGEX}$(?!\n)"
_ID_RE: Final = re.compile(ID_REGEX)


def is_id(value: str) -> bool:
    """Whether ``value`` is a valid id: the one check every door and reader uses."""
    return _ID_RE.fullmatch(value) is not None


Id = Annotated[
    str,
    msgspec.Meta(
        pattern=ID_PATTERN,
        description="An id that is also a NATS subject token: letters, digits, '_' and '-', "
        "starting with a letter or digit, at most 64 characters.",
    ),
]
#: The largest integer any event may carry: what msgpack (driver snapshots, frozen run
#: books) can encode. A larger one is refused where the event is decoded, so it can never
#: reach a state that then cannot be stored.
INT_MAX: Final = 2**63 - 1
NonNegative = Annotated[float, msgspec.Meta(ge=0)]
Count = Annotated[int, msgspec.Meta(ge=0, le=INT_MAX)]
#: Any integer an event carries without a range of its own.
Int = Annotated[int, msgspec.Meta(ge=-INT_MAX, le=INT_MAX)]
Attempt = Annotated[
    int,
    msgspec.Meta(
        ge=1, le=INT_MAX, description="1 for the first try; each retry or requeue adds one."
    ),
]

TaskKind = Literal["generate", "refactor", "test", "review", "plan", "resolve"]
FailureClass = Literal[
    "api_error",
    "auth",
    "rate_limit",
    "max_turns",
    "budget",
    "timeout",
    "limit",
    "cancelled",
    "agent_error",
    "infrastructure",
    "verify",
    "setup",
    "configuration",
]
ProgressKind = Literal["text", "tool_use", "tool_result", "usage"]


# ----------------------------------------------------------------------------------------
# Values carried inside events
# ----------------------------------------------------------------------------------------


class TokenUsage(msgspec.Struct, frozen=True, kw_only=True):
    """Tokens one model call or one whole task used, as the Messages API reports them."""

    input_tokens: Count = 0
    output_tokens: Count = 0
    cache_creation_input_tokens: Count = 0
    cache_read_input_tokens: Count = 0

    def __add__(self, other: TokenUsage) -> TokenUsage:
        return TokenUsage(
            input_tokens=self.input_tokens + other.input_tokens,
            output_tokens=self.output_tokens + other.output_tokens,
            cache_creation_input_tokens=(
                self.cache_creation_input_tokens + other.cache_creation_input_tokens
            ),
            cache_read_input_tokens=self.cache_read_input_tokens + other.cache_read_input_tokens,
        )


class TaskLimits(msgspec.Struct, frozen=True, kw_only=True):
    """Limits a worker enforces on one attempt; ``None`` means the configured default."""

    wall_time_s: Annotated[float, msgspec.Meta(gt=0)] | None = None
    max_turns: Annotated[int, msgspec.Meta(ge=1, le=INT_MAX)] | None = None
    max_cost_usd: Annotated[float, msgspec.Meta(gt=0)] | None = None
    memory_mb: Annotated[int, msgspec.Meta(ge=1, le=INT_MAX)] | None = None
    max_processes: (
        Annotated[
            int,
            msgspec.Meta(
                ge=1, le=INT_MAX, description="pids.max of the attempt's cgroup (threads count)."
            ),
        ]
        | None
    ) = None
    cpus: (
        Annotated[
            float, msgspec.Meta(gt=0, description="CPUs the attempt may use (cgroup cpu.max).")
        ]
        | None
    ) = None


class TaskNetwork(msgspec.Struct, frozen=True, kw_only=True):
    """Network a confined attempt may reach besides the model API (none by default)."""

    allow: Annotated[
        tuple[str, ...],
        msgspec.Meta(
            description="host:port destinations (a host name or a loopback address), each "
            "forwarded into the attempt's sandbox; at most 32."
        ),
    ] = ()


class McpServer(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """One MCP server a task's agent gets: a command Claude Code starts (stdio), or a URL.

    A stdio server runs inside the attempt's confinement, as the agent's child; a URL
    server is reached through the sandbox's network, so its ``host:port`` must be in the
    task's ``network.allow`` (checked at every door).
    """

    command: Annotated[
        str, msgspec.Meta(max_length=4096, description="The program to start (stdio).")
    ] = ""
    args: Annotated[tuple[str, ...], msgspec.Meta(max_length=64, description="Its arguments.")] = ()
    env: Annotated[
        dict[str, str],
        msgspec.Meta(description="Extra environment variables for the server (stdio)."),
    ] = {}
    url: Annotated[
        str,
        msgspec.Meta(max_length=4096, description="An http(s) URL of a streamable-HTTP server."),
    ] = ""


class TaskSpec(msgspec.Struct, frozen=True, kw_only=True):
    """One node of a run's task graph, as the planner produced it."""

    task_id: Id
    title: str
    prompt: str
    depends_on: tuple[Id, ...] = ()
    kind: TaskKind = "generate"
    executor: Literal["claude_code", "shell"] = "claude_code"
    files: Annotated[
        tuple[str, ...],
        msgspec.Meta(description="Paths or globs the task expects to change (conflict hints)."),
    ] = ()
    priority: Int = 0
    limits: TaskLimits = TaskLimits()
    model: Annotated[
        str,
        msgspec.Meta(
            max_length=200,
            description="The Claude model this task runs on (an alias such as 'sonnet' or "
            "a full name); empty: the run's.",
        ),
    ] = ""
    allowed_tools: Annotated[
        tuple[str, ...],
        msgspec.Meta(
            max_length=64,
            description="Claude Code tools this task may use; empty: those of its kind.",
        ),
    ] = ()
    network: Annotated[
        TaskNetwork,
        msgspec.Meta(description="What the attempt may reach besides the model API."),
    ] = TaskNetwork()
    mcp_servers: Annotated[
        dict[str, McpServer],
        msgspec.Meta(
            description="MCP servers this task's agent gets, by name (its tools are "
            "mcp__NAME__TOOL); at most 16. Workers run them only with "
            "worker.allow_plan_mcp_servers."
        ),
    ] = {}


class RunPolicy(msgspec.Struct, frozen=True, kw_only=True):
    """How the driver runs one run: what it retries, how it merges, when it gives up.

    Recorded in RunSubmitted, so a restarted driver and a replay follow the same rules.
    """

    max_attempts: Annotated[
        int,
        msgspec.Meta(
            ge=1, le=INT_MAX, description="Attempts a task gets before it fails for good."
        ),
    ] = 3
    retry_classes: Annotated[
        tuple[FailureClass, ...],
        msgspec.Meta(description="Failure classes that are retried (while attempts remain)."),
    ] = ("api_error", "rate_limit", "max_turns", "timeout", "infrastructure", "verify")
    backoff_base_s: Annotated[float, msgspec.Meta(ge=0)] = 2.0
    backoff_max_s: Annotated[float, msgspec.Meta(ge=0)] = 60.0
    on_task_failure: Annotated[
        Literal["skip_dependents", "fail_run"],
        msgspec.Meta(
            description="A task that failed for good: skip what depends on it, or "
            "stop the whole run."
        ),
    ] = "skip_dependents"
    on_conflict: Annotated[
        Literal["resolve", "stop"],
        msgspec.Meta(description="A merge conflict: hand it to a resolution attempt, or stop."),
    ] = "resolve"
    file_overlap: Annotated[
        Literal["serialize", "warn"],
        msgspec.Meta(
            description="Independent tasks that declare the same files: order them "
            "one after the other, or only record the predicted conflict."
        ),
    ] = "serialize"
    verify_command: Annotated[
        str,
        msgspec.Meta(description="Shell command run on the integration branch; empty for none."),
    ] = ""
    verify_when: Literal["each", "end"] = "each"
    merge_batch: Annotated[
        int,
        msgspec.Meta(
            ge=1,
            le=INT_MAX,
            description="With verify_when 'each': how many ready results are merged and "
            "verified together at most; a failing batch is bisected to its culprit. "
            "1 verifies every result on its own.",
        ),
    ] = 8
    verify_parallel: Annotated[
        int,
        msgspec.Meta(
            ge=1,
            le=INT_MAX,
            description="Verify runs at once while bisecting a failed batch, each in its own "
            "worktree: k runs find the culprit in log_(k+1) of the batch size rounds.",
        ),
    ] = 4
    verify_timeout_s: Annotated[float, msgspec.Meta(gt=0)] = 600.0
    on_collision: Annotated[
        Literal["let_both", "restart_later"],
        msgspec.Meta(
            description="Two running attempts predicted to collide (they touched the same "
            "file): let both finish and merge the second through a rebase or a resolution, "
            "or stop the later one at once and run it again on top of the earlier one's "
            "merge. A stopped attempt is not a failure and counts against no attempt limit."
        ),
    ] = "let_both"
    rollback_on_failure: bool = False
    pool: Id = "default"
    task_limits: Annotated[
        TaskLimits,
        msgspec.Meta(
            description="Limits of the run's tasks that leave them unset (a task's own "
            "limits win, field by field); from the limits section of claudecluster.yaml."
        ),
    ] = TaskLimits()
    model: Annotated[
        str,
        msgspec.Meta(
            max_length=200,
            description="The Claude model of the run's tasks that name none; empty: "
            "Claude Code's default.",
        ),
    ] = ""


class FanoutSpec(msgspec.Struct, frozen=True, kw_only=True):
    """One task per repository file matching ``glob``, its prompt from ``prompt_template``.

    The template may use ``{path}`` (the file), ``{stem}`` and ``{goal}``.
    """

    glob: str
    prompt_template: str
    kind: TaskKind = "refactor"
    max_tasks: Annotated[int, msgspec.Meta(ge=1, le=INT_MAX)] = 500


class PredictedConflict(msgspec.Struct, frozen=True, kw_only=True):
    """Two tasks with no order between them declared overlapping files."""

    first: Id
    second: Id
    files: tuple[str, ...]
    serialized: Annotated[
        bool, msgspec.Meta(description="The driver made ``second`` wait for ``first``.")
    ] = False


class ChangedFile(msgspec.Struct, frozen=True, kw_only=True):
    """One file a commit changed, with the lines added and deleted (None for binary)."""

    path: str
    added: Count | None = None
    deleted: Count | None = None


class ArtifactRef(msgspec.Struct, frozen=True, kw_only=True):
    """Where a task's output (a git bundle, a log, a report) is stored."""

    name: str
    bucket: str
    key: str
    size: Count = 0
    sha256: str = ""


# ----------------------------------------------------------------------------------------
# Events
# ----------------------------------------------------------------------------------------


class EventBase(msgspec.Struct, frozen=True, kw_only=True, tag_field="type"):
    """Base of every event. ``schema_version`` is per class, bumped on breaking change."""

    schema_version: ClassVar[int] = 1


class RunEvent(EventBase, frozen=True, kw_only=True):
    """An event about one run; its subject is ``cc.evt.<run_id>._.<type>``."""

    run_id: Id


class TaskEvent(RunEvent, frozen=True, kw_only=True):
    """An event about one task of a run; subject ``cc.evt.<run_id>.<task_id>.<type>``.

    All of a task's events share the subject prefix, so a writer can append with an
    expected last sequence on ``cc.evt.<run_id>.<task_id>.>`` and lose a race cleanly.
    """

    task_id: Id


class WorkerEvent(EventBase, frozen=True, kw_only=True):
    """An event about one worker; subject ``cc.evt._workers.<worker_id>.<type>``."""

    worker_id: Id


class DriverEvent(EventBase, frozen=True, kw_only=True):
    """An event of the control plane outside any run: the driver's lease, the size of a
    pool; subject ``cc.evt._driver.<driver_id>.<type>``.

    Only the driver role may publish there (the autoscaler runs with it), and every append
    of a driver holding the lease is conditional on the last DriverLeaseTaken's sequence
    (the fence, see :mod:`claudecluster.transport.fenced`).
    """

    driver_id: Id


class RunSubmitted(RunEvent, frozen=True, kw_only=True, tag="run.submitted"):
    """A user asked for a goal to be reached; nothing is planned yet."""

    goal: str
    repo: Annotated[str, msgspec.Meta(description="Repository path or URL the run works on.")]
    base_ref: str = "HEAD"
    planner: Literal["plan_file", "claude", "fanout", "inline"] = "inline"
    budget_usd: Annotated[float, msgspec.Meta(gt=0)] | None = None
    max_parallel: Annotated[int, msgspec.Meta(ge=1, le=INT_MAX)] | None = None
    submitted_by: str = ""
    policy: RunPolicy = RunPolicy()
    plan: Annotated[
        tuple[TaskSpec, ...] | None,
        msgspec.Meta(
            description="The task graph given with the run (inline or from a plan "
            "file); None when a planner makes it."
        ),
    ] = None
    plan_source: Annotated[
        str, msgspec.Meta(description="Where the plan came from (a file name), for people.")
    ] = ""
    fanout: FanoutSpec | None = None
    idempotency_key: Annotated[
        str,
        msgspec.Meta(
            max_length=200,
            description="The client's key for this submission (empty: none); a retry with "
            "the same key and run id is the same run.",
        ),
    ] = ""


class RunPlanned(RunEvent, frozen=True, kw_only=True, tag="run.planned"):
    """The run's task graph was fixed; it is validated before this is recorded."""

    tasks: tuple[TaskSpec, ...]
    base_commit: str
    integration_branch: str
    predicted_conflicts: tuple[PredictedConflict, ...] = ()


class RunCompleted(RunEvent, frozen=True, kw_only=True, tag="run.completed"):
    """Every task ended and the integration branch holds the merged result."""

    head_commit: str
    tasks_succeeded: Count
    tasks_failed: Count = 0
    tasks_skipped: Count = 0
    wall_time_s: NonNegative = 0.0
    task_time_s: Annotated[
        float, msgspec.Meta(ge=0, description="Sum of every task's attempt durations.")
    ] = 0.0
    speedup: Annotated[
        float,
        msgspec.Meta(
            ge=0,
            description="task_time_s / wall_time_s: the parallelism (how many tasks ran at "
            "once on average), not a speedup against one worker: tasks that slow each "
            "other down lengthen task_time_s and so inflate it. The name is kept for "
            "readers of older logs.",
        ),
    ] = 0.0
    model_time_s: Annotated[
        float,
        msgspec.Meta(
            ge=0,
            description="Sum of the merged tasks' last attempts' time waiting on the model "
            "(their model_time_ms): an estimate of the time one after another that "
            "contention does not inflate. It leaves tool and start-up time out, so it is "
            "low; 0 when not known (shell tasks).",
        ),
    ] = 0.0
    cost_usd: NonNegative = 0.0
    preempted_attempts: Annotated[
        int,
        msgspec.Meta(
            ge=0,
            le=INT_MAX,
            description="Attempts stopped early because they were predicted to collide "
            "with an earlier task's, and run again on top of its merge (on_collision: "
            "restart_later). Not failures; their tasks are counted by how they ended.",
        ),
    ] = 0


class RunBudgetReached(RunEvent, frozen=True, kw_only=True, tag="run.budget_reached"):
    """The run spent its budget: no further task starts; running ones finish."""

    budget_usd: NonNegative
    spent_usd: NonNegative


class CommandRejected(RunEvent, frozen=True, kw_only=True, tag="run.command_rejected"):
    """The driver refused a command (unknown task, invalid plan, run in the wrong state)."""

    command_id: str
    command_type: str
    reason: str


class RunFailed(RunEvent, frozen=True, kw_only=True, tag="run.failed"):
    """The run stopped without reaching its goal."""

    reason: str
    failed_tasks: tuple[Id, ...] = ()


class RunCancelled(RunEvent, frozen=True, kw_only=True, tag="run.cancelled"):
    """The run was cancelled on request; running tasks were told to stop."""

    reason: str = ""
    requested_by: str = ""


class RunRolledBack(RunEvent, frozen=True, kw_only=True, tag="run.rolled_back"):
    """The integration branch was moved back to a commit an earlier event recorded."""

    to_commit: str
    to_sequence: Annotated[int, msgspec.Meta(ge=0, le=INT_MAX)] | None = None
    reverted_tasks: tuple[Id, ...] = ()


class TaskQueued(TaskEvent, frozen=True, kw_only=True, tag="task.queued"):
    """An attempt of the task was put on a pool's work queue."""

    attempt: Attempt = 1
    pool: str = "default"
    base_commit: Annotated[
        str, msgspec.Meta(description="The commit the attempt starts from; empty if unknown.")
    ] = ""
    limits: TaskLimits | None = None
    resume_session_id: str = ""
    note: Annotated[
        str, msgspec.Meta(description="Added to the prompt: why this attempt differs.")
    ] = ""
    resolves_conflict: Annotated[
        bool,
        msgspec.Meta(
            description="The attempt starts from a merge with conflict markers "
            "(``base_commit``) and must resolve them."
        ),
    ] = False


class TaskAssigned(TaskEvent, frozen=True, kw_only=True, tag="task.assigned"):
    """A worker took the attempt off the work queue.

    ``worker_key`` (added later, empty in older logs) is the public key of the worker
    process's nkey: every later event of the attempt must be signed by it, so a result
    from anyone else is refused. An attempt claimed without a key is not checked.
    """

    attempt: Attempt
    worker_id: Id
    worker_key: Annotated[
        str,
        msgspec.Meta(
            description="The claiming worker's nkey public key (U...); the attempt's later "
            "events are signed with it. Empty: an older worker, not checked."
        ),
    ] = ""


class TaskStarted(TaskEvent, frozen=True, kw_only=True, tag="task.started"):
    """The executor process for the attempt started in its workspace."""

    attempt: Attempt
    worker_id: Id
    session_id: str = ""
    resumed: bool = False


class TaskProgress(TaskEvent, frozen=True, kw_only=True, tag="task.progress"):
    """Live output of a running attempt: agent text, a tool call, a tool result, or usage."""

    attempt: Attempt
    kind: ProgressKind
    text: Annotated[str, msgspec.Meta(description="Text, or a short summary for tool calls.")] = ""
    tool: str = ""
    usage: TokenUsage | None = None


class TaskRateLimited(TaskEvent, frozen=True, kw_only=True, tag="task.rate_limited"):
    """The API refused a running attempt for rate limits (429) or overload (529).

    The attempt goes on (the agent retries); the driver slows every start fleet-wide.
    """

    attempt: Attempt
    status: Annotated[int, msgspec.Meta(ge=100, le=599)]
    retry_after_s: NonNegative | None = None
    worker_id: Id | None = None


class TaskSucceeded(TaskEvent, frozen=True, kw_only=True, tag="task.succeeded"):
    """The attempt finished and produced a result ready to merge."""

    attempt: Attempt
    worker_id: Id
    summary: str = ""
    cost_usd: NonNegative = 0.0
    usage: TokenUsage = TokenUsage()
    turns: Count = 0
    duration_ms: Count = 0
    model_time_ms: Annotated[
        int,
        msgspec.Meta(
            ge=0,
            le=INT_MAX,
            description="The part of duration_ms spent waiting on the model (0: not "
            "known, as for shell tasks). Other attempts running beside it slow the machine, "
            "not the model, so this is the attempt's time that contention does not inflate.",
        ),
    ] = 0
    artifacts: tuple[ArtifactRef, ...] = ()


class TaskFailed(TaskEvent, frozen=True, kw_only=True, tag="task.failed"):
    """The attempt ended without a usable result."""

    attempt: Attempt
    reason: str
    failure_class: FailureClass = "agent_error"
    retryable: bool = False
    worker_id: Id | None = None
    cost_usd: NonNegative = 0.0
    usage: TokenUsage = TokenUsage()


class TaskRetryScheduled(TaskEvent, frozen=True, kw_only=True, tag="task.retry_scheduled"):
    """The driver will queue another attempt ``delay_s`` after this event occurred."""

    next_attempt: Attempt
    delay_s: NonNegative
    reason: str = ""


class TaskCancelled(TaskEvent, frozen=True, kw_only=True, tag="task.cancelled"):
    """The task will not run (further); its workspace was cleaned.

    ``run_cancel`` is the id of the run's cancel command when that is what stopped the
    attempt: the worker and the driver both act on the command, and whichever records
    first, the driver then knows the run is being cancelled (it ends it as cancelled,
    not as completed with every task cancelled).
    """

    attempt: Annotated[int, msgspec.Meta(ge=0, le=INT_MAX)] = 0
    reason: str = ""
    run_cancel: Annotated[str, msgspec.Meta(max_length=200)] = ""


class TaskSkipped(TaskEvent, frozen=True, kw_only=True, tag="task.skipped"):
    """The task never ran because a task it depends on did not succeed."""

    reason: str
    blocked_by: Id


class TaskMerged(TaskEvent, frozen=True, kw_only=True, tag="task.merged"):
    """The task's commits were merged into the integration branch.

    With ``brought_changes`` false the branch did not move (``commit`` is the head it was
    already at): the task changed nothing, or a resolution kept the integration side on
    purpose. ``note`` says which; status displays show it as a warning.
    """

    attempt: Attempt
    commit: str
    integration_branch: str
    files: Annotated[
        tuple[ChangedFile, ...],
        msgspec.Meta(
            description="What the merge changed on the integration branch: for a resolution "
            "attempt this is the task's change, not the edit that removed conflict markers."
        ),
    ] = ()
    brought_changes: Annotated[
        bool,
        msgspec.Meta(
            description="The merge changed the integration branch. False when the task "
            "changed nothing or a resolution kept the integration side; logs written "
            "before this field existed read as true."
        ),
    ] = True
    note: Annotated[
        str, msgspec.Meta(description="Why a merge brought no change; empty otherwise.")
    ] = ""


class MergeConflict(TaskEvent, frozen=True, kw_only=True, tag="task.merge_conflict"):
    """Merging the task's commits conflicted; the run's policy decides what follows."""

    attempt: Attempt
    files: tuple[str, ...]
    ours: Annotated[str, msgspec.Meta(description="Integration branch commit.")]
    theirs: Annotated[str, msgspec.Meta(description="The task's commit.")]
    policy: Literal["resolve", "stop"] = "stop"
    problem: Annotated[
        str,
        msgspec.Meta(
            description="Why the merge was refused although git merged it: a resolution "
            "that changed nothing or left conflict markers, or markers in the task's own "
            "result. Empty for a conflict git reported."
        ),
    ] = ""


class TaskFilesTouched(TaskEvent, frozen=True, kw_only=True, tag="task.files_touched"):
    """The files a running attempt has changed so far, as its worker last saw them.

    Reported while the attempt runs, only when the set changed (and at most every few
    seconds), so the driver can see two attempts heading for the same file before either
    finishes. ``files`` is the whole set so far, not the change since the last report.
    """

    attempt: Attempt
    files: tuple[str, ...] = ()


class TaskPreempted(TaskEvent, frozen=True, kw_only=True, tag="task.preempted"):
    """The driver stopped a live attempt early: it was predicted to collide with an
    earlier task's attempt (``other_task_id``), and the run's policy is ``restart_later``.

    Not a failure and not an end: the attempt's work is dropped, it counts against no
    attempt limit, and the task is queued again as a new attempt once ``other_task_id``
    has merged, on top of that merge (at once if that task will never merge). Recorded by
    the driver, conditional on the task's history, so an attempt that finished first is
    never preempted; its worker is told to stop the agent (an attempt-scoped CancelTask)
    and records nothing more for it.
    """

    attempt: Attempt
    other_task_id: Id
    files: tuple[str, ...] = ()
    reason: str = ""


class CollisionPredicted(RunEvent, frozen=True, kw_only=True, tag="run.collision_predicted"):
    """Two running attempts with no order between them touched the same files.

    ``task_id`` is the attempt that started later, ``other_task_id`` the earlier one.
    ``action`` is what the run's policy chose: ``let_both`` lets both finish and merges
    the second through a rebase or a resolution; ``restart_later`` stops the later
    attempt (``TaskPreempted`` follows, unless it finished first) and runs it again on top
    of the earlier one's merge. A run-level event, so recording it never races the
    workers' conditional appends on the tasks' own subjects.
    """

    task_id: Id
    attempt: Attempt
    other_task_id: Id
    other_attempt: Attempt
    files: tuple[str, ...]
    action: Literal["let_both", "restart_later"] = "let_both"


class CollisionSettled(RunEvent, frozen=True, kw_only=True, tag="run.collision_settled"):
    """What became of a predicted collision, once the merges of both tasks are known.

    ``came_true``: one of the two merges conflicted (git, or a result refused for markers).
    ``outcome`` says how it ended: ``conflicted``, ``merged_clean`` (both merged without a
    conflict), ``restarted`` (the later attempt was preempted and its re-run merged on
    top of the earlier one's merge with no conflict: whether the collision would have
    happened is not known, so ``came_true`` is false), or ``moot`` (one of the two never
    reached a merge: failed, cancelled, skipped, or the run ended first).
    """

    task_id: Id
    attempt: Attempt
    other_task_id: Id
    files: tuple[str, ...] = ()
    came_true: bool = False
    outcome: Literal["conflicted", "merged_clean", "restarted", "moot"] = "merged_clean"


class DriverLeaseTaken(DriverEvent, frozen=True, kw_only=True, tag="driver.lease_taken"):
    """A driver took the driver lease and, from this event on, alone records decisions.

    The new holder's first act: every append of the previous holder was conditional on
    the fence it knew (the last ``cc.evt._driver.*.driver.lease_taken`` sequence), so
    once this event is stored none of them can succeed.
    """

    epoch: Annotated[
        int,
        msgspec.Meta(ge=1, le=INT_MAX, description="The lease's revision in the cc_leases bucket."),
    ]
    host: str = ""
    pid: Count = 0


class PoolScaled(DriverEvent, frozen=True, kw_only=True, tag="pool.scaled"):
    """The autoscaler changed a pool's size through its backend; ``driver_id`` names the
    autoscaler that decided."""

    pool: str
    backend: Annotated[str, msgspec.Meta(description="Which backend: 'local' or 'command'.")]
    workers_before: Count
    workers_after: Count
    reason: Annotated[str, msgspec.Meta(description="Why: the demand the size follows.")]


class PoolScaleFailed(DriverEvent, frozen=True, kw_only=True, tag="pool.scale_failed"):
    """The autoscaler asked its backend for a size and the backend did not make it (the
    operator's command failed or timed out); the pool stays as it was."""

    pool: str
    backend: str
    workers_before: Count
    workers_wanted: Count
    reason: str
    error: Annotated[str, msgspec.Meta(description="What the backend said, cut short.")]


class WorkerJoined(WorkerEvent, frozen=True, kw_only=True, tag="worker.joined"):
    """A worker started and will take tasks from its pool."""

    pool: str = "default"
    host: str = ""
    pid: Count = 0
    slots: Annotated[int, msgspec.Meta(ge=1, le=INT_MAX)] = 1
    capabilities: tuple[str, ...] = ()
    version: str = ""
    reason: Annotated[
        str, msgspec.Meta(description="Why it started, when something decided to start it.")
    ] = ""


class WorkerHeartbeat(WorkerEvent, frozen=True, kw_only=True, tag="worker.heartbeat"):
    """A worker is alive; what it is doing and how loaded its machine is.

    Version 2 replaced v1's ``memory_mb`` (float, MiB) with ``memory_bytes`` and added
    ``slots_free``; the codec upcasts v1 records.
    """

    schema_version: ClassVar[int] = 2

    cpu_percent: NonNegative = 0.0
    memory_bytes: Count = 0
    load_avg: NonNegative = 0.0
    running_tasks: Annotated[
        tuple[str, ...], msgspec.Meta(description="Running attempts as 'run_id/task_id'.")
    ] = ()
    slots_free: Count = 0


class WorkerLeft(WorkerEvent, frozen=True, kw_only=True, tag="worker.left"):
    """A worker stopped gracefully after draining."""

    reason: str = ""


class WorkerLost(WorkerEvent, frozen=True, kw_only=True, tag="worker.lost"):
    """The driver stopped hearing from a worker and no longer counts on it."""

    last_seen_seq: Annotated[int, msgspec.Meta(ge=0, le=INT_MAX)] = 0
    reason: str = "heartbeats stopped"
    orphaned_tasks: tuple[str, ...] = ()


class RunRetried(RunEvent, frozen=True, kw_only=True, tag="run.retried"):
    """An ended run was opened again: ``task_ids`` are pending again and are queued from
    ``head_commit``, the integration branch's head when the retry was recorded."""

    task_ids: tuple[Id, ...]
    head_commit: str


Event = (
    RunSubmitted
    | RunPlanned
    | RunCompleted
    | RunBudgetReached
    | CommandRejected
    | RunFailed
    | RunCancelled
    | RunRolledBack
    | RunRetried
    | TaskQueued
    | TaskAssigned
    | TaskStarted
    | TaskProgress
    | TaskRateLimited
    | TaskSucceeded
    | TaskFailed
    | TaskRetryScheduled
    | TaskCancelled
    | TaskSkipped
    | TaskMerged
    | MergeConflict
    | TaskFilesTouched
    | TaskPreempted
    | CollisionPredicted
    | CollisionSettled
    | WorkerJoined
    | WorkerHeartbeat
    | WorkerLeft
    | WorkerLost
    | DriverLeaseTaken
    | PoolScaled
    | PoolScaleFailed
)
"""Every event type, as one tagged union for decoding and ``match``."""


# ----------------------------------------------------------------------------------------
# Commands
# ----------------------------------------------------------------------------------------


class CommandBase(msgspec.Struct, frozen=True, kw_only=True, tag_field="type"):
    """Base of every command: a request some actor may accept or refuse."""

    schema_version: ClassVar[int] = 1


class SubmitRun(CommandBase, frozen=True, kw_only=True, tag="run.submit"):
    """Start a run toward a goal, with an explicit plan or a planner to make one."""

    run_id: Id
    goal: str
    repo: str
    base_ref: str = "HEAD"
    plan: tuple[TaskSpec, ...] | None = None
    planner: Literal["plan_file", "claude", "fanout", "inline"] = "inline"
    budget_usd: Annotated[float, msgspec.Meta(gt=0)] | None = None
    max_parallel: Annotated[int, msgspec.Meta(ge=1, le=INT_MAX)] | None = None
    policy: RunPolicy = RunPolicy()
    plan_source: str = ""
    fanout: FanoutSpec | None = None
    idempotency_key: Annotated[
        str,
        msgspec.Meta(
            max_length=200,
            description="A key the client chose so that a retried submission is the same "
            "run (empty: none). The run id is derived from it when none is given.",
        ),
    ] = ""


class CancelRun(CommandBase, frozen=True, kw_only=True, tag="run.cancel"):
    """Stop a run: no new tasks start and running ones are cancelled."""

    run_id: Id
    reason: str = ""


class CancelTask(CommandBase, frozen=True, kw_only=True, tag="task.cancel"):
    """Stop one task; its dependents are skipped.

    With ``attempt``, only that attempt: a worker holding another attempt of the task
    ignores it, and so does the driver once that attempt is no longer live (the driver
    sends such a cancel to stop a preempted attempt's agent, which ends no task).
    """

    run_id: Id
    task_id: Id
    reason: str = ""
    attempt: Annotated[
        int, msgspec.Meta(ge=0, le=INT_MAX, description="Only this attempt; 0: whichever is live.")
    ] = 0


class RollbackRun(CommandBase, frozen=True, kw_only=True, tag="run.rollback"):
    """Move a run's integration branch back to before a task, or to an event sequence."""

    run_id: Id
    to_task: Id | None = None
    to_sequence: Annotated[int, msgspec.Meta(ge=0, le=INT_MAX)] | None = None


class RetryRun(CommandBase, frozen=True, kw_only=True, tag="run.retry"):
    """Run an ended run's unfinished tasks again (or only ``task_ids``) on its integration
    branch as it is now; the run is open again until it ends anew."""

    run_id: Id
    task_ids: Annotated[
        tuple[Id, ...],
        msgspec.Meta(description="The tasks to run again; empty: every task not merged."),
    ] = ()


class DrainWorker(CommandBase, frozen=True, kw_only=True, tag="worker.drain"):
    """Ask a worker to take no new tasks and leave once its running ones end."""

    worker_id: Id
    deadline_s: Annotated[float, msgspec.Meta(gt=0)] = 300.0


Command = SubmitRun | CancelRun | CancelTask | RollbackRun | RetryRun | DrainWorker
"""Every command type, as one tagged union."""
