"""Reconciling a run: collisions, preemption, retries, starts, the merge lane, budget, the end."""

from __future__ import annotations

import dataclasses
import heapq
from datetime import datetime

import msgspec

from claudecluster.actors import collisions
from claudecluster.actors.driver.effects import (
    _ACTIVE,
    _DEFAULT_MAX_TURNS,
    _DEFAULT_WALL_TIME_S,
    _HELD_BY_WORKER,
    _OPEN_RUN,
    Dispatch,
    Effect,
    Merge,
    MergeBatch,
    Plan,
    PublishCommand,
    Record,
    Retry,
    Rollback,
    Verify,
)
from claudecluster.actors.driver.state import DriverState, RunBook, _free
from claudecluster.actors.merging import resolution_note, stop_reason
from claudecluster.domain.kinds import KIND_PROFILES
from claudecluster.domain.lifecycle import (
    RunState,
    TaskState,
)
from claudecluster.domain.limits import with_default_limits
from claudecluster.events import event_ids as ids
from claudecluster.events.model import (
    CancelTask,
    CollisionPredicted,
    CollisionSettled,
    Event,
    MergeConflict,
    RunBudgetReached,
    RunCancelled,
    RunCompleted,
    RunFailed,
    TaskCancelled,
    TaskLimits,
    TaskPreempted,
    TaskQueued,
    TaskRetryScheduled,
    TaskSkipped,
    TaskSpec,
)
from claudecluster.events.subjects import scope_filter
from claudecluster.projections.views import TaskView, task_key

# ----------------------------------------------------------------------------------------
# Reconciling a run
# ----------------------------------------------------------------------------------------


def _record(state: DriverState, key: str, event: Event, event_id: str) -> Record:
    return Record(
        key=key,
        event=event,
        event_id=event_id,
        expected_last=state.scope_seq.get(scope_filter(event), 0),
    )


def caused_by(command_id: str, effects: list[Effect]) -> list[Effect]:
    """Mark the command's outcome record with its id (the envelope's causation id).

    Only the last record is marked, the one that settles the command (a cancel's
    RunCancelled comes after its tasks' TaskCancelled): once it is in the log, a
    redelivered copy of the command is recognised and skipped; until then a redelivery
    is decided again, and what was recorded already is deduplicated by its event id.
    """
    for index in range(len(effects) - 1, -1, -1):
        effect = effects[index]
        if isinstance(effect, Record | Rollback | Retry):
            effects[index] = dataclasses.replace(effect, causation_id=command_id)
            break
    return effects


def cancel_effects(state: DriverState, run_id: str, reason: str) -> list[Effect]:
    """A run's cancel: its tasks no worker holds are cancelled, then the run.

    Running attempts are not: their workers got the same command and stop them themselves.
    """
    effects: list[Effect] = []
    for task in state.view.tasks_of(run_id):
        if not task.state.terminal and task.state not in _HELD_BY_WORKER:
            effects.append(cancel_event(state, task, reason))
    event = RunCancelled(run_id=run_id, reason=reason)
    event_id = ids.run_cancelled_id(run_id, retries_of(state, run_id))
    effects.append(_record(state, f"run:{run_id}:end", event, event_id))
    return effects


def cancel_event(state: DriverState, task: TaskView, reason: str) -> Record:
    """The record of one task's cancel (once per round of the run)."""
    event = TaskCancelled(run_id=task.run_id, task_id=task.task_id, reason=reason)
    key = f"task:{task.run_id}:{task.task_id}"
    event_id = ids.task_cancelled_id(task.run_id, task.task_id, retries_of(state, task.run_id))
    return _record(state, key, event, event_id)


def retries_of(state: DriverState, run_id: str) -> int:
    """How many times the open run was retried (0 for one the driver has no book of)."""
    book = state.runs.get(run_id)
    return book.retries if book is not None else 0


def _reconcile(state: DriverState, book: RunBook, now: datetime) -> list[Effect]:
    run = state.view.runs.get(book.run_id)
    if run is None:
        return []
    if book.cancel_command and run.state in _OPEN_RUN:
        # Being cancelled and not ended yet: the cancel's record lost a race for the log
        # (to a worker recording the task it stopped for the same command), or the worker
        # told first. Decided again on what the log holds now; nothing else is started.
        if not _free(state, f"run:{book.run_id}:end"):
            return []
        return caused_by(book.cancel_command, cancel_effects(state, book.run_id, book.cancelling))
    if run.state is RunState.SUBMITTED:
        key = f"run:{book.run_id}:plan"
        return [Plan(key=key, submitted=book.submitted)] if _free(state, key) else []
    if run.state not in _OPEN_RUN or book.graph is None:
        return []
    effects: list[Effect] = _resend_unsent(state, book) if book.unsent else []
    attended = _attend(state, book, now)
    effects += attended
    starting = sum(
        1 for e in attended if isinstance(e, Dispatch) and e.queued.task_id not in book.active
    )
    effects += _start_ready(state, book, now, starting)
    effects += _preempt(state, book)
    effects += _merge_lane(state, book)
    effects += _budget(state, book)
    collided = _collisions(state, book)
    effects += collided
    # Both are run-level appends: one at a time. And a run does not end in the decision
    # that starts one of its tasks: the start is not pending until this decision returns,
    # so the end would not see it, and its TaskQueued would land after the run's end (a
    # retry that came due as another task's last failure stopped a fail_run run did).
    started = any(isinstance(e, Dispatch) for e in effects)
    if not collided and not started:
        effects += _ending(state, book)
    return effects


def _collisions(state: DriverState, book: RunBook) -> list[Effect]:
    """Settle a prediction whose outcome is known, else predict a new collision.

    At most one record per call: each is a conditional append on the run's own subject,
    so two in one go would refuse each other; the next one follows when the log has it.
    """
    key = f"run:{book.run_id}:collision"
    if not _free(state, key) or book.graph is None:
        return []
    for pair, (seq, prediction) in sorted(book.predicted.items()):
        outcome = collisions.settle(
            *(_side(state, book, t, seq, prediction) for t in pair),
            restarted=pair in book.preempted_pairs or pair[::-1] in book.preempted_pairs,
        )
        if outcome is None:
            continue
        settled = CollisionSettled(
            run_id=book.run_id,
            task_id=pair[0],
            attempt=max(_attempt(state, book, pair[0]), 1),
            other_task_id=pair[1],
            files=prediction.files,
            came_true=outcome == "conflicted",
            outcome=outcome,
        )
        return [_record(state, key, settled, ids.collision_settled_id(book.run_id, *pair))]
    if not book.touched_fresh:
        return []
    live = [
        collisions.LiveAttempt(
            task_id=task_id,
            attempt=attempt,
            order=book.queued_seq.get(task_id, 0),
            files=files,
        )
        for task_id, (attempt, files) in book.touched.items()
        if task_id in book.active and attempt == _attempt(state, book, task_id)
    ]
    if len(live) < 2:
        book.touched_fresh = False
        return []
    graph = book.graph

    def ordered(a: str, b: str) -> bool:
        return b in graph.descendants(a) or a in graph.descendants(b)

    known = set(book.predicted) | book.settled
    found = collisions.predict(live, ordered, known)
    # One record per call; stay fresh until a comparison finds nothing new, so the
    # others follow, and a record whose append failed is asked for again.
    book.touched_fresh = bool(found)
    for collision in found[:1]:
        later, earlier = collision.later, collision.earlier
        event = CollisionPredicted(
            run_id=book.run_id,
            task_id=later.task_id,
            attempt=later.attempt,
            other_task_id=earlier.task_id,
            other_attempt=earlier.attempt,
            files=collision.files,
            action=book.policy.on_collision,
        )
        event_id = ids.collision_predicted_id(book.run_id, later.task_id, earlier.task_id)
        return [_record(state, key, event, event_id)]
    return []


def _side(
    state: DriverState, book: RunBook, task_id: str, since: int, prediction: CollisionPredicted
) -> collisions.Side:
    """Where one task of a predicted pair stands, for :func:`collisions.settle`."""
    task = state.view.tasks[task_key(book.run_id, task_id)]
    conflicted = any(
        seq > since and collisions.conflict_hits(files, prediction.files)
        for seq, files in book.conflicts_seen.get(task_id, ())
    )
    return collisions.Side(
        merged=task.state is TaskState.MERGED,
        conflicted=conflicted,
        gone=task.state in {TaskState.CANCELLED, TaskState.SKIPPED} or task_id in book.failed,
    )


def _standing(state: DriverState, book: RunBook, task_id: str) -> collisions.Standing:
    """Where one task of a predicted pair stands, for the ``restart_later`` policy."""
    task_state = state.view.tasks[task_key(book.run_id, task_id)].state
    if task_state in _ACTIVE:
        return "live"
    if task_state in (TaskState.SUCCEEDED, TaskState.CONFLICTED):
        return "finishing"
    if task_state is TaskState.MERGED:
        return "merged"
    if task_state is TaskState.PREEMPTED:
        return "preempted"
    return "gone"  # failed (retried or not), cancelled, skipped


def _preempt(state: DriverState, book: RunBook) -> list[Effect]:
    """restart_later: stop the later attempt of each predicted pair, and tell its worker.

    Level-triggered like the rest: a preemption is recorded (conditional on the task's
    history, so it loses to a result that came first, and is then decided again on what
    won) while the prediction stands and the later attempt is live; once it is recorded,
    the worker holding the attempt is sent an attempt-scoped cancel that stops the agent.
    """
    effects: list[Effect] = []
    chosen: set[str] = set()
    for _, prediction in sorted(book.predicted.values(), key=lambda p: p[0]):
        if prediction.action != "restart_later" or book.stopping:
            continue  # a failing run stops nothing more for later: _ending cancels it all
        runners = [
            collisions.Runner(
                task_id=task_id,
                order=book.queued_seq.get(task_id, 0),
                attempt=_attempt(state, book, task_id),
                predicted_attempt=attempt,
                standing=_standing(state, book, task_id),
            )
            for task_id, attempt in (
                (prediction.task_id, prediction.attempt),
                (prediction.other_task_id, prediction.other_attempt),
            )
        ]
        stop = collisions.to_preempt(*runners)
        if stop is None:
            continue
        later, earlier = stop
        key = f"task:{book.run_id}:{later.task_id}"
        if (
            later.task_id in chosen
            or later.task_id in book.attention  # a lost worker's requeue goes first
            or later.task_id in book.unsent  # its work item is being published again
            or not _free(state, key)
        ):
            continue
        chosen.add(later.task_id)
        files = ", ".join(prediction.files)
        event = TaskPreempted(
            run_id=book.run_id,
            task_id=later.task_id,
            attempt=later.attempt,
            other_task_id=earlier.task_id,
            files=prediction.files,
            reason=(
                f"predicted to collide with {earlier.task_id!r} in {files}: stopped, to run "
                f"again on top of its merge"
            ),
        )
        event_id = f"preempted-{book.run_id}-{later.task_id}-{later.attempt}"
        effects.append(_record(state, key, event, event_id))
    for task_id, preemption in sorted(book.preempted.items()):
        task = state.view.tasks[task_key(book.run_id, task_id)]
        sent = f"{task_id}/{preemption.attempt}"
        key = f"cancel:{book.run_id}:{task_id}"
        if (
            task.state is not TaskState.PREEMPTED
            or task.worker_id is None  # still only a queued message: no agent to stop
            or sent in book.cancel_sent
            or not _free(state, key)
        ):
            continue
        command = CancelTask(
            run_id=book.run_id,
            task_id=task_id,
            reason=preemption.reason or "preempted",
            attempt=preemption.attempt,
        )
        effects.append(
            PublishCommand(
                key=key,
                command=command,
                command_id=f"preempt-{book.run_id}-{task_id}-{preemption.attempt}",
            )
        )
    return effects


def _requeue_due(state: DriverState, book: RunBook, task_id: str) -> bool:
    """Whether a preempted task may be queued again: the task it waits for merged, or
    will not merge (then at once)."""
    preemption = book.preempted.get(task_id)
    if preemption is None:
        return True  # preempted before this driver knew why (an older log): go on
    return collisions.may_requeue(_standing(state, book, preemption.other_task_id))


def _rerun_why(book: RunBook, task_id: str) -> str:
    """The note of a preempted task's new attempt."""
    preemption = book.preempted.get(task_id)
    if preemption is None:
        return "the previous attempt was stopped early"
    return (
        f"the previous attempt was stopped early because it was predicted to collide with "
        f"{preemption.other_task_id!r} in {', '.join(preemption.files) or 'the same files'}; "
        f"this one starts from the integration branch after that task"
    )


def _counted(task: TaskView) -> int:
    """The task's attempts that count against max_attempts: preempted ones do not."""
    return task.attempt - task.preemptions


def _attend(state: DriverState, book: RunBook, now: datetime) -> list[Effect]:
    """Tasks whose state asks for a decision: retry, requeue, resolve, skip or stop."""
    policy = book.policy
    effects: list[Effect] = []
    requeues: list[Effect] = []
    cap = book.submitted.max_parallel or state.config.max_running
    total = state.active_total()
    active = state.active_in(book)

    def room() -> bool:
        # A retry or a resolution is a start like any other: the caps apply to it.
        starts = sum(1 for e in effects if isinstance(e, Dispatch))
        return active + starts < cap and total + starts < state.config.max_running

    for task_id in sorted(book.attention):
        task = state.view.tasks[task_key(book.run_id, task_id)]
        key = f"task:{book.run_id}:{task_id}"
        if not _free(state, key):
            continue
        match task.state:
            case TaskState.FAILED if task_id not in book.failed:
                if (
                    task.failure_class in policy.retry_classes
                    and _counted(task) < policy.max_attempts
                ):
                    delay = min(
                        policy.backoff_base_s * 2 ** (task.attempt - 1), policy.backoff_max_s
                    )
                    event = TaskRetryScheduled(
                        run_id=book.run_id,
                        task_id=task_id,
                        next_attempt=task.attempt + 1,
                        delay_s=delay,
                        reason=f"{task.failure_class}: {task.failure}",
                    )
                    effects.append(
                        _record(
                            state,
                            key,
                            event,
                            ids.task_retry_id(book.run_id, task_id, task.attempt + 1),
                        )
                    )
                else:
                    book.failed.add(task_id)
                    if policy.on_task_failure == "fail_run":
                        book.stopping = book.stopping or f"task {task_id!r} failed: {task.failure}"
            case TaskState.RETRY_WAIT:
                due = book.retry_at.get(task_id)
                if due is not None and now >= due and not book.stopping and room():
                    effects.append(
                        _dispatch(state, book, task, f"retry after {task.failure_class}")
                    )
            case TaskState.CONFLICTED:
                conflict = book.conflicts.get(task_id)
                if policy.on_conflict == "stop":
                    files = ", ".join(task.conflict_files) or "unknown files"
                    problem = f" ({conflict.problem})" if conflict and conflict.problem else ""
                    book.stopping = book.stopping or (
                        f"task {task_id!r} conflicts with the integration branch in "
                        f"{files}{problem}"
                    )
                elif _counted(task) > policy.max_attempts:
                    book.stopping = book.stopping or stop_reason(
                        task_id, conflict, task.conflict_files, _counted(task),
                        book.integration_branch,
                    )  # fmt: skip
                elif conflict is not None and not book.stopping and room():
                    effects.append(_dispatch(state, book, task, "resolve", conflict=conflict))
            case TaskState.PREEMPTED:
                if _requeue_due(state, book, task_id) and not book.stopping and room():
                    effects.append(_dispatch(state, book, task, _rerun_why(book, task_id)))
            case TaskState.QUEUED | TaskState.ASSIGNED | TaskState.RUNNING:
                worker = state.view.workers.get(task.worker_id or "")
                if worker is not None and worker.state == "lost":
                    # Replaces an attempt already counted as active: no room needed.
                    requeues.append(
                        _dispatch(state, book, task, "its worker was lost", resume=task.session_id)
                    )
            case _:
                pass
    for task_id in sorted(book.attention):
        task = state.view.tasks[task_key(book.run_id, task_id)]
        cancelled = task.state is TaskState.CANCELLED
        failed = task_id in book.failed and policy.on_task_failure != "fail_run"
        if (cancelled or failed) and task_id not in book.skipped_for:
            effects += _skip_descendants(state, book, task)
    return effects + requeues


def _skip_descendants(state: DriverState, book: RunBook, blocker: TaskView) -> list[Effect]:
    assert book.graph is not None
    effects: list[Effect] = []
    waiting = False
    for task_id in book.graph.descendants(blocker.task_id):
        task = state.view.tasks[task_key(book.run_id, task_id)]
        key = f"task:{book.run_id}:{task_id}"
        if task.state is not TaskState.PENDING:
            continue
        if not _free(state, key):
            waiting = True
            continue
        why = (
            "was cancelled"
            if blocker.state is TaskState.CANCELLED
            else f"failed: {blocker.failure}"
        )
        event = TaskSkipped(
            run_id=book.run_id,
            task_id=task_id,
            reason=f"depends on {blocker.task_id!r}, which {why}",
            blocked_by=blocker.task_id,
        )
        event_id = ids.task_skipped_id(book.run_id, task_id, book.retries)
        effects.append(_record(state, key, event, event_id))
    if not effects and not waiting:
        book.skipped_for.add(blocker.task_id)
    return effects


def retry_limits(spec: TaskSpec, failure_class: str | None, attempt: int) -> TaskLimits | None:
    """The limits of a retry: more room for what ran out, None (unchanged) otherwise."""
    limits = spec.limits
    if failure_class == "max_turns":
        turns = limits.max_turns or _DEFAULT_MAX_TURNS
        return msgspec.structs.replace(limits, max_turns=turns * 2 ** (attempt - 1))
    if failure_class == "timeout":
        wall = limits.wall_time_s or _DEFAULT_WALL_TIME_S
        return msgspec.structs.replace(limits, wall_time_s=wall * 1.5 ** (attempt - 1))
    return None


def _take_token(state: DriverState, now: datetime) -> bool:
    """Pace starts: a token bucket, and a full stop while the API reports rate limits."""
    config = state.config
    if state.throttle_until is not None and now < state.throttle_until:
        return False
    if state.tokens_at is None:
        state.tokens, state.tokens_at = float(config.start_burst), now
    elapsed = max((now - state.tokens_at).total_seconds(), 0.0)
    state.tokens = min(float(config.start_burst), state.tokens + elapsed * config.starts_per_s)
    state.tokens_at = now
    if state.tokens < 1.0:
        return False
    state.tokens -= 1.0
    return True


def _start_ready(state: DriverState, book: RunBook, now: datetime, starting: int) -> list[Effect]:
    """Start released tasks, most urgent first, as far as the caps and the pace allow."""
    if book.stopping or book.budget_reached or not book.ready:
        return []
    effects: list[Effect] = []
    running = state.active_in(book) + starting
    total = state.active_total() + starting
    run_cap = book.submitted.max_parallel or state.config.max_running
    while book.ready:
        task_id = book.ready[0][3]
        task = state.view.tasks[task_key(book.run_id, task_id)]
        if task.state is not TaskState.PENDING:
            heapq.heappop(book.ready)  # skipped or cancelled meanwhile
            continue
        if not _free(state, f"task:{book.run_id}:{task_id}"):
            break
        if running >= run_cap or total >= state.config.max_running:
            break
        if not _take_token(state, now):
            break
        heapq.heappop(book.ready)
        effects.append(_dispatch(state, book, task, ""))
        running += 1
        total += 1
    return effects


def _dispatch(
    state: DriverState,
    book: RunBook,
    task: TaskView,
    why: str,
    *,
    resume: str = "",
    conflict: MergeConflict | None = None,
) -> Dispatch:
    assert book.graph is not None
    spec = with_default_limits(book.graph.specs[task.task_id], book.policy.task_limits)
    attempt = task.attempt + 1
    if conflict is not None:
        note = resolution_note(conflict)
    else:
        note = f"This is attempt {attempt}: {why}." if why else ""
    queued = TaskQueued(
        run_id=book.run_id,
        task_id=task.task_id,
        attempt=attempt,
        pool=book.policy.pool,
        base_commit="" if conflict is not None else book.head,
        limits=retry_limits(spec, task.failure_class, attempt) if why.startswith("retry") else None,
        resume_session_id=resume,
        note=note,
        resolves_conflict=conflict is not None,
    )
    return Dispatch(
        key=f"task:{book.run_id}:{task.task_id}",
        run_id=book.run_id,
        spec=spec,
        queued=queued,
        event_id=ids.task_queued_id(book.run_id, task.task_id, attempt),
        expected_last=state.scope_seq.get(scope_filter(queued), 0),
        conflict=(conflict.ours, conflict.theirs) if conflict is not None else None,
        repo=book.submitted.repo,
        integration_branch=book.integration_branch,
        model=book.policy.model,
    )


def _republish(state: DriverState) -> list[Effect]:
    """After a restart: put the work item of every queued attempt back on its queue.

    The driver may have died between recording TaskQueued and publishing the item; the
    item's id is per attempt, so an item that did get out is not duplicated.
    """
    effects: list[Effect] = []
    for book in state.runs.values():
        if book.ended or book.graph is None:
            continue
        for task_id in sorted(book.active):
            resent = _resend(state, book, task_id)
            if resent is not None:
                effects.append(resent)
    return effects


def _resend(state: DriverState, book: RunBook, task_id: str) -> Dispatch | None:
    """The work item of the task's queued attempt, published again; None if not queued."""
    assert book.graph is not None
    task = state.view.tasks[task_key(book.run_id, task_id)]
    queued = book.queued.get(task_id)
    if task.state is not TaskState.QUEUED or queued is None or queued.attempt != task.attempt:
        return None
    return Dispatch(
        key=f"task:{book.run_id}:{task_id}",
        run_id=book.run_id,
        spec=with_default_limits(book.graph.specs[task_id], book.policy.task_limits),
        queued=queued,
        event_id=ids.task_queued_id(book.run_id, task_id, queued.attempt),
        expected_last=state.scope_seq.get(scope_filter(queued), 0),
        republish=True,
        repo=book.submitted.repo,
        integration_branch=book.integration_branch,
        model=book.policy.model,
    )


def _resend_unsent(state: DriverState, book: RunBook) -> list[Effect]:
    """Work items whose publish failed after their TaskQueued was recorded.

    A Dispatch records TaskQueued, then publishes the item; when the publish fails (the
    work stream's leader is being elected, say) the task is queued with no message for any
    worker to take. Until its TaskQueued is read back the task still looks pending (and
    is released again); once it reads as queued, the item is published again, and again
    after each failure, until it gets out or the task moves on.
    """
    effects: list[Effect] = []
    for task_id in sorted(book.unsent):
        task = state.view.tasks[task_key(book.run_id, task_id)]
        if task.state is TaskState.PENDING:
            continue  # its TaskQueued, if it was recorded, is not read back yet
        if not _free(state, f"task:{book.run_id}:{task_id}"):
            continue
        book.unsent.discard(task_id)
        resent = _resend(state, book, task_id)
        if resent is not None:
            effects.append(resent)
    return effects


def _merge_lane(state: DriverState, book: RunBook) -> list[Effect]:
    """One merge at a time per run, in the order results arrived.

    With a verify command run after each merge, the results waiting at the front of the
    lane (up to the policy's ``merge_batch``) go together, verified once.
    """
    key = f"merge:{book.run_id}"
    if not book.to_merge or not _free(state, key) or book.stopping:
        return []
    policy = book.policy
    limit = policy.merge_batch if policy.verify_command and policy.verify_when == "each" else 1
    items: list[Merge] = []
    for task_id in book.to_merge[:limit]:
        item = _merge_item(state, book, task_id, key)
        if item is None:
            break
        items.append(item)
    if len(items) > 1:
        verify = any(item.verify for item in items)
        return [
            MergeBatch(key=key, run_id=book.run_id, items=tuple(items), head=book.head,
                       verify=verify, repo=book.submitted.repo,
                       verify_command=policy.verify_command,
                       verify_timeout_s=policy.verify_timeout_s,
                       verify_parallel=policy.verify_parallel)
        ]  # fmt: skip
    return list(items)


def _merge_item(state: DriverState, book: RunBook, task_id: str, key: str) -> Merge | None:
    """The merge of the task's result, or None if the task has no current result."""
    assert book.graph is not None
    task = state.view.tasks[task_key(book.run_id, task_id)]
    result = book.results.get(task_id)
    if task.state is not TaskState.SUCCEEDED or result is None or result.attempt != task.attempt:
        return None
    spec = book.graph.specs[task_id]
    queued = book.queued.get(task_id)
    resolving = book.resolving.get(task_id)
    resolves = resolving is not None and queued is not None and queued.attempt == task.attempt
    verify = (
        bool(book.policy.verify_command)
        and book.policy.verify_when == "each"
        and KIND_PROFILES[spec.kind].verify
    )
    return Merge(
        key=key,
        run_id=book.run_id,
        task_id=task_id,
        attempt=task.attempt,
        title=spec.title,
        result=result,
        head=book.head,
        integration_branch=book.integration_branch,
        verify=verify,
        on_conflict=book.policy.on_conflict,
        expected_last=state.scope_seq.get(f"cc.evt.{book.run_id}.{task_id}.>", 0),
        resolving=resolving if resolves else None,
        resolution_base=queued.base_commit if resolves and queued is not None else "",
        repo=book.submitted.repo,
        verify_command=book.policy.verify_command,
        verify_timeout_s=book.policy.verify_timeout_s,
    )


def _budget(state: DriverState, book: RunBook) -> list[Effect]:
    budget = book.submitted.budget_usd
    if budget is None or book.budget_reached:
        return []
    cost = state.view.costs.get(book.run_id)
    spent = cost.cost_usd if cost is not None else 0.0
    key = f"run:{book.run_id}:budget"
    if spent < budget or not _free(state, key):
        return []
    event = RunBudgetReached(run_id=book.run_id, budget_usd=budget, spent_usd=spent)
    return [_record(state, key, event, ids.budget_reached_id(book.run_id))]


def _ending(state: DriverState, book: RunBook) -> list[Effect]:
    """Record the run's end once nothing runs, nothing waits and nothing is in flight."""
    assert book.graph is not None
    key = f"run:{book.run_id}:end"
    if book.stopping and book.active:
        # Stop what still runs: the run is failing and its results would not be merged.
        return [
            PublishCommand(
                key=f"cancel:{book.run_id}:{task_id}",
                command=CancelTask(run_id=book.run_id, task_id=task_id, reason=book.stopping),
                command_id=ids.cancel_task_command_id(
                    book.run_id, task_id, _attempt(state, book, task_id)
                ),
            )
            for task_id in sorted(book.active)
            if _free(state, f"cancel:{book.run_id}:{task_id}")
            and f"{task_id}/{_attempt(state, book, task_id)}" not in book.cancel_sent
        ]
    busy = (
        book.active
        or (book.to_merge and not book.stopping)  # a failing run merges nothing more
        or any(
            k.startswith(
                (f"task:{book.run_id}:", f"merge:{book.run_id}", f"run:{book.run_id}:collision")
            )
            for k in state.pending
        )
    )
    if busy or not _free(state, key):
        return []
    waiting_retry = any(
        state.view.tasks[task_key(book.run_id, t)].state is TaskState.RETRY_WAIT
        for t in book.attention
    )
    unfinished = len(book.graph.specs) - len(book.done) - len(book.failed)
    # A retry of some of a fail_run run's tasks leaves the others failed: once the rest
    # is done, the run fails (in a run never retried a failure there stops it at once).
    left_failed = (
        book.policy.on_task_failure == "fail_run"
        and bool(book.failed)
        and unfinished == 0
        and not waiting_retry
    )
    if book.stopping or left_failed or (book.budget_reached and unfinished > 0):
        reason = book.stopping or (
            f"task {', '.join(map(repr, sorted(book.failed)))} failed"
            if left_failed
            else f"the run's budget of ${book.submitted.budget_usd or 0:.2f} was spent with "
            f"{unfinished} tasks not done"
        )
        event = RunFailed(
            run_id=book.run_id, reason=reason, failed_tasks=tuple(sorted(book.failed))
        )
        return [_record(state, key, event, ids.run_failed_id(book.run_id, book.retries))]
    if unfinished > 0 or waiting_retry:
        return []
    done = _summary(state, book)
    if book.policy.verify_command and book.policy.verify_when == "end":
        return [
            Verify(key=key, run_id=book.run_id, head=book.head, done=done,
                   repo=book.submitted.repo, verify_command=book.policy.verify_command,
                   verify_timeout_s=book.policy.verify_timeout_s, retries=book.retries)
        ]  # fmt: skip
    return [_record(state, key, done, ids.run_completed_id(book.run_id, book.retries))]


def _attempt(state: DriverState, book: RunBook, task_id: str) -> int:
    return state.view.tasks[task_key(book.run_id, task_id)].attempt


def _summary(state: DriverState, book: RunBook) -> RunCompleted:
    tasks = state.view.tasks_of(book.run_id)
    wall = (state.now - book.submitted_at).total_seconds() if state.now else 0.0
    busy = sum(
        (t.finished_at - t.started_at).total_seconds()
        for t in tasks
        if t.started_at is not None and t.finished_at is not None
    )
    model_time = sum(t.model_time_s for t in tasks if t.state is TaskState.MERGED)
    cost = state.view.costs.get(book.run_id)
    return RunCompleted(
        run_id=book.run_id,
        head_commit=book.head,
        tasks_succeeded=sum(1 for t in tasks if t.state is TaskState.MERGED),
        tasks_failed=sum(1 for t in tasks if t.state is TaskState.FAILED),
        tasks_skipped=sum(1 for t in tasks if t.state in (TaskState.SKIPPED, TaskState.CANCELLED)),
        wall_time_s=round(max(wall, 0.0), 3),
        task_time_s=round(busy, 3),
        speedup=round(busy / wall, 3) if wall > 0 else 0.0,
        model_time_s=round(model_time, 3),
        cost_usd=round(cost.cost_usd, 6) if cost is not None else 0.0,
        preempted_attempts=sum(t.preemptions for t in tasks),
    )
