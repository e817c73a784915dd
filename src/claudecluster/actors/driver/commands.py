"""Commands to the driver: submit, cancel a run or a task, roll back, retry."""

from __future__ import annotations

from claudecluster.actors.driver.effects import (
    _ACTIVE,
    _HELD_BY_WORKER,
    _OPEN_RUN,
    Effect,
    Record,
    Retry,
    Rollback,
)
from claudecluster.actors.driver.reconcile import (
    _record,
    cancel_effects,
    cancel_event,
    caused_by,
)
from claudecluster.actors.driver.state import DriverState, RunBook, _free, _live_book
from claudecluster.domain.graph import TaskGraph
from claudecluster.domain.lifecycle import (
    RunState,
    TaskState,
)
from claudecluster.domain.submission import submission_problem
from claudecluster.errors import GraphError
from claudecluster.events import event_ids as ids
from claudecluster.events.envelope import CommandEnvelope
from claudecluster.events.model import (
    CancelRun,
    CancelTask,
    CommandRejected,
    RetryRun,
    RollbackRun,
    RunRetried,
    RunRolledBack,
    RunSubmitted,
    SubmitRun,
)
from claudecluster.projections.views import task_key

# ----------------------------------------------------------------------------------------
# Commands
# ----------------------------------------------------------------------------------------


def _command(state: DriverState, envelope: CommandEnvelope) -> list[Effect]:
    if envelope.id in state.commands_seen:
        return []
    state.commands_seen.add(envelope.id)
    command = envelope.payload
    match command:
        case SubmitRun():
            effects = _submit(state, envelope.id, command)
        case CancelRun():
            effects = _cancel_run(state, envelope.id, command)
        case CancelTask():
            effects = _cancel_task(state, envelope.id, command)
        case RollbackRun():
            effects = _rollback(state, envelope.id, command)
        case RetryRun():
            effects = _retry(state, envelope.id, command)
        case _:
            return []  # DrainWorker: the workers act on it themselves
    return caused_by(envelope.id, effects)


def _reject(state: DriverState, run_id: str, command_id: str, kind: str, reason: str) -> Record:
    event = CommandRejected(run_id=run_id, command_id=command_id, command_type=kind, reason=reason)
    return _record(state, f"reject:{command_id}", event, ids.command_rejected_id(command_id))


def _submit(state: DriverState, command_id: str, command: SubmitRun) -> list[Effect]:
    def reject(reason: str) -> list[Effect]:
        return [_reject(state, command.run_id, command_id, "run.submit", reason)]

    exists = command.run_id in state.view.runs or not _free(state, f"run:{command.run_id}:submit")
    key = command.idempotency_key
    if exists and key and state.idempotency.get(command.run_id) == key:
        return []  # a retry of a submission already recorded (or being recorded): that run
    if exists:
        return reject(f"run {command.run_id!r} already exists; choose another run id")
    if not command.repo.strip():
        return reject("the run names no repository: give repo as a path")
    for name, value in (("repo", command.repo), ("base_ref", command.base_ref)):
        if any(ord(char) < 32 for char in value):
            return reject(f"{name} {value!r} contains a control character")
    bound = submission_problem(command, max_tasks=state.config.max_tasks)
    if bound is not None:
        return reject(f"{bound[0]}: {bound[1]}")
    if command.plan is not None:
        try:
            TaskGraph.build(command.plan)
        except GraphError as exc:
            return reject(str(exc))
    elif command.fanout is None and command.planner != "claude":
        return reject("the run has no plan: give tasks, a fan-out, or the claude planner")
    event = RunSubmitted(
        run_id=command.run_id,
        goal=command.goal,
        repo=command.repo,
        base_ref=command.base_ref,
        planner=command.planner,
        budget_usd=command.budget_usd,
        max_parallel=command.max_parallel,
        policy=command.policy,
        plan=command.plan,
        plan_source=command.plan_source,
        fanout=command.fanout,
        idempotency_key=key,
    )
    if key:
        state.idempotency[command.run_id] = key
    return [
        _record(state, f"run:{command.run_id}:submit", event, ids.run_submitted_id(command.run_id))
    ]


def _cancel_run(state: DriverState, command_id: str, command: CancelRun) -> list[Effect]:
    run = state.view.runs.get(command.run_id)
    if run is None:
        return [
            _reject(
                state,
                command.run_id,
                command_id,
                "run.cancel",
                f"there is no run {command.run_id!r}",
            )
        ]
    if run.state not in _OPEN_RUN:
        return [
            _reject(
                state,
                command.run_id,
                command_id,
                "run.cancel",
                f"run {command.run_id!r} already ended ({run.state.value})",
            )
        ]
    reason = command.reason or "the run was cancelled"
    book = state.runs.get(command.run_id)
    if book is not None:
        if book.cancel_command and not _free(state, f"run:{command.run_id}:end"):
            # Already being recorded (a worker that stopped a task for a cancel told the
            # driver first): that RunCancelled is this command's answer too.
            return []
        book.cancel_command, book.cancelling = command_id, reason
    return cancel_effects(state, command.run_id, reason)


def _cancel_task(state: DriverState, command_id: str, command: CancelTask) -> list[Effect]:
    task = state.view.tasks.get(task_key(command.run_id, command.task_id))

    def reject(reason: str) -> list[Effect]:
        return [_reject(state, command.run_id, command_id, "task.cancel", reason)]

    if task is None:
        return reject(f"run {command.run_id!r} has no task {command.task_id!r}")
    if command.attempt and (command.attempt != task.attempt or task.state is TaskState.PREEMPTED):
        return []  # that attempt is no longer live: nothing of the task to cancel
    if task.state.terminal:
        return reject(f"task {command.task_id!r} already ended ({task.state.value})")
    if task.state in _HELD_BY_WORKER:
        return []  # its worker got the same command: it stops the agent and records it
    return [cancel_event(state, task, command.reason or "cancelled on request")]


def _rollback(state: DriverState, command_id: str, command: RollbackRun) -> list[Effect]:
    book = _live_book(state, command.run_id)
    run = state.view.runs.get(command.run_id)

    def reject(reason: str) -> list[Effect]:
        return [_reject(state, command.run_id, command_id, "run.rollback", reason)]

    if book is None or run is None or book.graph is None:
        return reject(f"there is no planned run {command.run_id!r}")
    if run.state in _OPEN_RUN:
        return reject(f"run {command.run_id!r} is still {run.state.value}: cancel it first")
    if (command.to_task is None) == (command.to_sequence is None):
        return reject("give exactly one of a task id or a sequence number to roll back to")
    if command.to_task is not None:
        index = next((i for i, m in enumerate(book.merges) if m[1] == command.to_task), None)
        if index is None:
            return reject(f"task {command.to_task!r} of run {command.run_id!r} is not merged")
    else:
        index = sum(1 for m in book.merges if m[0] <= (command.to_sequence or 0))
    return [_rollback_effect(book, index, command.to_sequence, ids.rolled_back_id(command_id))]


def _rollback_effect(book: RunBook, index: int, to_sequence: int | None, event_id: str) -> Rollback:
    """Back to before the merge at ``index`` of the run's merge history."""
    target = book.merges[index - 1][2] if index > 0 else book.base_commit
    event = RunRolledBack(
        run_id=book.run_id,
        to_commit=target,
        to_sequence=to_sequence,
        reverted_tasks=tuple(m[1] for m in book.merges[index:]),
    )
    return Rollback(
        key=f"run:{book.run_id}:rollback",
        integration_branch=book.integration_branch,
        event=event,
        event_id=event_id,
        repo=book.submitted.repo,
    )


#: The run states a retry opens again: ended, and not rolled back (a rolled-back run's
#: branch no longer holds what it merged, so "the rest of the run" means nothing).
_RETRYABLE_RUN: frozenset[RunState] = frozenset(
    {RunState.COMPLETED, RunState.FAILED, RunState.CANCELLED}
)
#: The task states a retry moves back to pending: everything that did not merge and is
#: not running. Pending tasks stay pending (a failed run leaves its blocked ones so).
_RETRYABLE_TASK: frozenset[TaskState] = frozenset(
    {
        TaskState.FAILED,
        TaskState.RETRY_WAIT,
        TaskState.CANCELLED,
        TaskState.SKIPPED,
        TaskState.CONFLICTED,
        TaskState.SUCCEEDED,
        TaskState.PREEMPTED,
    }
)


def _retry(state: DriverState, command_id: str, command: RetryRun) -> list[Effect]:
    """Open an ended run again: its unfinished tasks (or the named ones) run once more.

    Refused for an open run (it still runs: nothing to retry yet), a rolled-back one, a
    run whose budget is spent, a run still stopping an attempt, and for task ids the
    run does not have or that merged. The RunRetried names exactly the tasks that go back
    to pending, so every reader moves the same ones.
    """
    run = state.view.runs.get(command.run_id)

    def reject(reason: str) -> list[Effect]:
        return [_reject(state, command.run_id, command_id, "run.retry", reason)]

    if run is None:
        return reject(f"there is no run {command.run_id!r}")
    if run.state in _OPEN_RUN:
        return reject(f"run {command.run_id!r} is still {run.state.value}: it has not ended")
    if run.state not in _RETRYABLE_RUN:
        return reject(f"run {command.run_id!r} was {run.state.value}: it cannot be retried")
    book = _live_book(state, command.run_id)
    if book is None or book.graph is None:
        return reject(f"run {command.run_id!r} was never planned: submit it again")
    if book.rejected:
        return reject(f"run {command.run_id!r} cannot be retried: {book.rejected}")
    if book.budget_reached:
        return reject(f"run {command.run_id!r} spent its budget: submit a new run")
    if book.roll_back or not _free(state, f"run:{command.run_id}:rollback"):
        return reject(f"run {command.run_id!r} is being rolled back")
    if not _free(state, f"run:{command.run_id}:retry"):
        return []  # a retry is being recorded: this one would retry the same tasks
    tasks = {t.task_id: t for t in state.view.tasks_of(command.run_id)}
    unknown = sorted({t for t in command.task_ids if t not in tasks})
    if unknown:
        return reject(f"run {command.run_id!r} has no task {', '.join(map(repr, unknown))}")
    merged = sorted(
        t for t in set(command.task_ids) if tasks[t].state in (TaskState.MERGED, TaskState.REVERTED)
    )
    if merged:
        return reject(f"task {', '.join(map(repr, merged))} merged already: nothing to retry")
    running = sorted(t for t, task in tasks.items() if task.state in _ACTIVE)
    if running:
        return reject(f"task {', '.join(map(repr, running))} still runs: try again once it ends")
    wanted = set(command.task_ids) or set(tasks)
    chosen = tuple(sorted(t for t in wanted if tasks[t].state in _RETRYABLE_TASK))
    pending = any(tasks[t].state is TaskState.PENDING for t in wanted)
    if not chosen and not pending:
        return reject(f"run {command.run_id!r} has no task left to retry")
    event = RunRetried(run_id=command.run_id, task_ids=chosen, head_commit=book.head)
    return [
        Retry(
            key=f"run:{command.run_id}:retry",
            integration_branch=book.integration_branch,
            event=event,
            event_id=ids.run_retried_id(command_id),
            repo=book.submitted.repo,
        )
    ]
