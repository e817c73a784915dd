"""What the driver core takes in and gives out: its configuration, messages and effects."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Final, Literal

from claudecluster.domain.lifecycle import (
    ACTIVE_TASK_STATES,
    HELD_TASK_STATES,
    OPEN_RUN_STATES,
    TaskState,
)
from claudecluster.domain.submission import DEFAULT_MAX_TASKS
from claudecluster.events.envelope import CommandEnvelope, StoredEvent
from claudecluster.events.model import (
    Command,
    Event,
    MergeConflict,
    RunCompleted,
    RunRetried,
    RunRolledBack,
    RunSubmitted,
    TaskQueued,
    TaskSpec,
    TaskSucceeded,
)

_ACTIVE: Final = ACTIVE_TASK_STATES
# A worker holds these attempts: it stops the agent on a cancel and records it. A queued
# attempt is still only a message, so the driver records its cancellation; a worker that
# takes the message later finds the task cancelled and drops it (its claim is
# conditional on the history it read, so the two cannot both win).
_HELD_BY_WORKER: Final = HELD_TASK_STATES
_DONE: Final = frozenset({TaskState.MERGED, TaskState.SKIPPED, TaskState.CANCELLED})
_OPEN_RUN: Final = OPEN_RUN_STATES
_DEFAULT_MAX_TURNS: Final = 30
_DEFAULT_WALL_TIME_S: Final = 1800.0


@dataclass(frozen=True, slots=True)
class DriverConfig:
    """Fleet-wide limits the driver applies to every run.

    Attributes:
        max_running: attempts queued or running at once, all runs together.
        max_tasks: tasks one run may have (plan, fan-out or planner).
        starts_per_s: sustained task starts per second (token bucket rate).
        start_burst: starts allowed at once after a quiet spell (bucket size).
        lost_after_s: a worker silent this long is declared lost.
        rate_limit_backoff_s: the first pause of all starts after a rate-limit report.
        rate_limit_backoff_max_s: the longest such pause (the pause doubles per report).
    """

    max_running: int = 64
    #: tasks one run may have; larger submissions are refused, larger plans fail the run
    max_tasks: int = DEFAULT_MAX_TASKS
    starts_per_s: float = 10.0
    start_burst: int = 10
    lost_after_s: float = 20.0
    rate_limit_backoff_s: float = 2.0
    rate_limit_backoff_max_s: float = 60.0


# ----------------------------------------------------------------------------------------
# Messages in, effects out
# ----------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Tick:
    """Time passed; timers (retries, liveness, pacing) may be due."""


@dataclass(frozen=True, slots=True)
class Resume:
    """The driver (re)started and has read the log: redo what may have been cut off."""


@dataclass(frozen=True, slots=True)
class EffectSettled:
    """The shell carried out the effect with ``key``; ``seq`` is the last event it wrote."""

    key: str
    seq: int = 0


@dataclass(frozen=True, slots=True)
class EffectFailed:
    """The shell could not carry out the effect with ``key`` (it will be asked again)."""

    key: str
    reason: str


@dataclass(frozen=True, slots=True)
class WorkerSeen:
    """A worker said it was alive at ``at``: its entry in the live registry.

    Liveness is not in the log (a heartbeat event every few seconds per worker was most
    of it); the shell watches the registry and hands each entry over as this message.
    """

    worker_id: str
    at: datetime


Message = StoredEvent | CommandEnvelope | Tick | Resume | EffectSettled | EffectFailed | WorkerSeen


@dataclass(frozen=True, slots=True)
class Record:
    """Append ``event`` with id ``event_id``, if its scope's last sequence is still
    ``expected_last`` (a lost race is fine: the driver decides again on what won)."""

    key: str
    event: Event
    event_id: str
    expected_last: int | None
    #: the command this records the outcome of: stored as the envelope's causation id,
    #: which is how a redelivered command is known as done (see ``commands_seen``)
    causation_id: str | None = None


@dataclass(frozen=True, slots=True)
class Dispatch:
    """Record ``queued`` and put its work item on the pool's queue.

    With ``queued.resolves_conflict`` the shell first makes the conflicted merge of
    ``conflict`` (ours, theirs) on ``integration_branch`` and uses it as the base commit.
    ``repo`` is the run's repository, whose history the work item names.
    """

    key: str
    run_id: str
    spec: TaskSpec
    queued: TaskQueued
    event_id: str
    expected_last: int
    conflict: tuple[str, str] | None = None
    republish: bool = False
    repo: str = ""
    integration_branch: str = ""
    #: the run's model, for a task that names none
    model: str = ""


@dataclass(frozen=True, slots=True)
class Plan:
    """Turn the submitted run into a validated graph and record RunPlanned (or RunFailed)."""

    key: str
    submitted: RunSubmitted


@dataclass(frozen=True, slots=True)
class Merge:
    """Merge the task's result onto the integration branch, which must be at ``head``;
    run the verify command after it when ``verify``; record TaskMerged, MergeConflict
    or (verify failed) TaskFailed."""

    key: str
    run_id: str
    task_id: str
    attempt: int
    title: str
    result: TaskSucceeded
    head: str
    integration_branch: str
    verify: bool
    on_conflict: Literal["resolve", "stop"]
    expected_last: int
    #: the conflict this attempt was asked to resolve: its result is judged against it
    resolving: MergeConflict | None = None
    #: the commit a resolution attempt started from (what it hands back if it changed nothing)
    resolution_base: str = ""
    #: the run's repository, which holds the integration branch
    repo: str = ""
    #: the run's verify command and its time limit (used when ``verify``)
    verify_command: str = ""
    verify_timeout_s: float = 600.0


@dataclass(frozen=True, slots=True)
class MergeBatch:
    """Merge several results at once, in order, and verify them once together.

    The shell stacks ``items`` as one commit each on ``head``, runs the verify command on
    the top, and on a failure bisects to the first result that breaks it: the results
    before it merge, it alone is recorded as failed (class ``verify``), the ones after it
    wait for the next batch. A result that conflicts, or is refused, after the first one
    ends the batch there: it is merged first in the next batch, onto a verified head.
    """

    key: str
    run_id: str
    items: tuple[Merge, ...]
    head: str
    verify: bool
    repo: str = ""
    verify_command: str = ""
    verify_timeout_s: float = 600.0
    #: verify runs a bisection may make at once
    verify_parallel: int = 1


@dataclass(frozen=True, slots=True)
class Verify:
    """Run the verify command once on the finished integration branch, then record the
    run's end: ``done`` if it passes, RunFailed if not."""

    key: str
    run_id: str
    head: str
    done: RunCompleted
    repo: str = ""
    verify_command: str = ""
    verify_timeout_s: float = 600.0
    #: how many times the run was retried (its end's event id is once per round)
    retries: int = 0


@dataclass(frozen=True, slots=True)
class Rollback:
    """Move the integration branch to ``event.to_commit`` and record ``event``."""

    key: str
    integration_branch: str
    event: RunRolledBack
    event_id: str
    #: the rollback command this records the outcome of (see :class:`Record`)
    causation_id: str | None = None
    repo: str = ""


@dataclass(frozen=True, slots=True)
class Retry:
    """Read the integration branch's head and record ``event`` with it as ``head_commit``:
    the retried tasks start from the branch as it is now, which may have moved since the
    run ended (a commit made on it by hand, a rollback)."""

    key: str
    integration_branch: str
    event: RunRetried
    event_id: str
    #: the retry command this records the outcome of (see :class:`Record`)
    causation_id: str | None = None
    repo: str = ""


@dataclass(frozen=True, slots=True)
class PublishCommand:
    """Publish a command to the workers (say, cancel a failed run's running tasks)."""

    key: str
    command: Command
    command_id: str


Effect = Record | Dispatch | Plan | Merge | MergeBatch | Verify | Rollback | Retry | PublishCommand
