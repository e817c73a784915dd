"""The driver core's entry point: :func:`decide` and the guards around what it calls.

The package's docstring (``actors/driver/__init__.py``) says how decisions are made and the
scheduling rules; this module routes a message to the fold, a command, the reconciliation
of the runs it wakes, or liveness, and keeps one bad event or command from stopping the
driver.
"""

from __future__ import annotations

import heapq
from datetime import datetime

import msgspec

from claudecluster.actors.driver.commands import _command, _reject, _rollback_effect
from claudecluster.actors.driver.effects import (
    Dispatch,
    Effect,
    EffectFailed,
    EffectSettled,
    Message,
    PublishCommand,
    Resume,
    Tick,
    WorkerSeen,
)
from claudecluster.actors.driver.fold import _fold, _restore_ready
from claudecluster.actors.driver.liveness import _liveness
from claudecluster.actors.driver.reconcile import _attempt, _reconcile, _record, _republish
from claudecluster.actors.driver.state import (
    DriverState,
    RunBook,
    _free,
    _freeze_finished,
    _thaw,
)
from claudecluster.actors.driver.wakes import (
    _due,
    _may_start,
    _note_wants,
    _release_pending,
    _runs_of_key,
)
from claudecluster.errors import GraphError
from claudecluster.events import event_ids as ids
from claudecluster.events.envelope import CommandEnvelope, StoredEvent
from claudecluster.events.model import (
    CancelTask,
    RunEvent,
    RunFailed,
    WorkerLost,
)


def decide(state: DriverState, message: Message, now: datetime) -> list[Effect]:
    """Fold ``message`` into ``state`` (in place) and return the effects to carry out.

    Deterministic and free of I/O: the same messages at the same times give the same
    effects, which is what replay and the simulations rely on. ``state`` belongs to one
    caller, which feeds stored events in log order. The books of runs the message ended
    leave the live state (see :func:`_freeze_finished`); a finished run the message
    concerns comes back into it first, so the message is decided as if it never left.
    """
    thawed = _thaw_concerned(state, message)
    effects, looked_at = _decide(state, message, now)
    _freeze_finished(state, looked_at | thawed)
    return effects


def _thaw_concerned(state: DriverState, message: Message) -> set[str]:
    """Bring back the finished runs ``message`` concerns; returns them.

    Only the events of a run change its entries of the view (a worker's loss names the
    attempts it held), and only a command naming a run reads them.
    """
    run_ids: set[str] = set()
    match message:
        case StoredEvent(envelope=envelope):
            event = envelope.payload
            if isinstance(event, RunEvent):
                run_ids.add(event.run_id)
            elif isinstance(event, WorkerLost):
                run_ids |= {key.partition("/")[0] for key in event.orphaned_tasks}
        case CommandEnvelope(payload=command):
            run_id = getattr(command, "run_id", None)
            if isinstance(run_id, str):
                run_ids.add(run_id)
        case _:
            return set()
    thawed = {run_id for run_id in run_ids if run_id in state.finished}
    for run_id in sorted(thawed):
        _thaw(state, run_id)
    return thawed


def _decide(state: DriverState, message: Message, now: datetime) -> tuple[list[Effect], set[str]]:
    """:func:`decide`'s work, and the runs it looked at."""
    state.now = now
    touched: set[str] = set()
    effects: list[Effect] = []
    wake: set[str] = set()
    match message:
        case StoredEvent():
            if message.envelope.causation_id is not None:
                # The outcome of a command: a redelivery of that command is a no-op.
                state.commands_seen.add(message.envelope.causation_id)
            touched |= _fold_guarded(state, message)
            touched |= _release_pending(state)
        case CommandEnvelope():
            effects += _command_guarded(state, message)
            run_id = getattr(message.payload, "run_id", None)
            if isinstance(run_id, str):
                touched.add(run_id)
        case EffectSettled(key=key, seq=seq):
            if key in state.pending:
                state.pending[key] = max(seq, 1)
                heapq.heappush(state.settling, (max(seq, 1), key))
            touched |= _release_pending(state)
            touched |= _runs_of_key(key)
        case EffectFailed(key=key):
            state.pending.pop(key, None)
            state.starting.pop(key, None)
            touched |= _runs_of_key(key)
            for run_id in _runs_of_key(key):
                if run_id in state.runs:
                    _restore_ready(state, state.runs[run_id])
            kind, _, scope = key.partition(":")
            run_id, _, task_id = scope.partition(":")
            if kind == "task" and run_id in state.runs and task_id:
                state.runs[run_id].unsent.add(task_id)
        case Resume():
            effects += _republish(state)
            for resumed in state.runs.values():
                _restore_ready(state, resumed)
            touched |= {r for r, book in state.runs.items() if book.roll_back}
            touched |= {r for r, book in state.runs.items() if not book.ended}
        case WorkerSeen(worker_id=worker_id, at=at):
            if worker_id not in state.seen or at > state.seen[worker_id]:
                state.seen[worker_id] = at
        case Tick():
            # Only what time can change: retries that came due, and runs waiting for a
            # slot or the pace. Everything else moves only on a message that touches it.
            touched |= _due(state, now)
            effects += _liveness(state, now)
            if state.active_total() < state.config.max_running:
                wake = state.want_room | state.want_start
    _asked(state, effects)
    asked = len(effects)
    for run_id in sorted(touched | wake):
        book = state.runs.get(run_id)
        if run_id not in touched and not _may_start(state, run_id, now):
            continue  # woken for a start, but the slots or the pace went to runs before it
        if book is not None and not book.ended:
            state.reconciled += 1
            effects += _reconcile_guarded(state, book, now)
        elif book is not None and book.roll_back and _free(state, f"run:{run_id}:rollback"):
            effects.append(_rollback_effect(book, 0, None, ids.rolled_back_on_failure_id(run_id)))
        if book is not None:
            _note_wants_guarded(state, book, now)
        _asked(state, effects[asked:])
        asked = len(effects)
    return effects, touched | wake


# Nothing recorded may stop the driver: the log keeps every event for good, so an event
# that made decide() raise would stop it again at every start. What the core cannot apply
# ends its run (the one thing a bad event can spoil) with the reason, recorded once; every
# other run goes on. The guards catch every Exception on purpose: a bug that lets one
# through here is still a bug, but it costs one run, not the cluster.


def _fold_guarded(state: DriverState, stored: StoredEvent) -> set[str]:
    try:
        return _fold(state, stored)
    except Exception as exc:  # noqa: BLE001 - see above: the run is failed with the reason
        return _reject_run(state, stored, exc)


def _reject_run(state: DriverState, stored: StoredEvent, exc: Exception) -> set[str]:
    """Mark the run of an event the core could not apply as rejected, naming why."""
    event = stored.envelope.payload
    state.view = msgspec.structs.replace(state.view, last_seq=max(state.view.last_seq, stored.seq))
    tag = type(event).__struct_config__.tag
    reason = f"the driver cannot apply {tag} (sequence {stored.seq}): {_problem(exc)}"
    if not isinstance(event, RunEvent):
        return set()  # a worker's event: the projection counted it as an anomaly
    book = state.runs.get(event.run_id)
    if book is None or book.ended:
        return set()
    if not book.rejected:
        book.rejected = reason
    return {event.run_id}


def _problem(exc: Exception) -> str:
    text = str(exc) or type(exc).__name__
    return text if isinstance(exc, GraphError) else f"{type(exc).__name__}: {text}"


def _command_guarded(state: DriverState, envelope: CommandEnvelope) -> list[Effect]:
    try:
        return _command(state, envelope)
    except Exception as exc:  # a poison command is refused, never redelivered (it re-raises)
        command = envelope.payload
        run_id = getattr(command, "run_id", None)
        if not isinstance(run_id, str):
            raise  # only run commands reach the core's handlers; the shell's guard logs it
        tag = str(type(command).__struct_config__.tag)
        reason = f"the driver cannot act on this command: {_problem(exc)}"
        return [_reject(state, run_id, envelope.id, tag, reason)]


def _reconcile_guarded(state: DriverState, book: RunBook, now: datetime) -> list[Effect]:
    if book.rejected:
        return _end_rejected(state, book)
    try:
        return _reconcile(state, book, now)
    except Exception as exc:  # noqa: BLE001 - the run is failed with the reason, once
        book.rejected = f"the driver cannot go on with this run: {_problem(exc)}"
        return _end_rejected(state, book)


def _note_wants_guarded(state: DriverState, book: RunBook, now: datetime) -> None:
    try:
        _note_wants(state, book, now)
    except Exception as exc:  # noqa: BLE001 - the run is failed with the reason, once
        state.want_start.discard(book.run_id)
        state.want_room.discard(book.run_id)
        if not book.ended and not book.rejected:
            book.rejected = f"the driver cannot go on with this run: {_problem(exc)}"
            heapq.heappush(state.timers, (now, book.run_id))  # the next tick ends it


def _end_rejected(state: DriverState, book: RunBook) -> list[Effect]:
    """The rejected run's RunFailed, once: its id is fixed, and once it is in the log the
    run is ended, so neither a replay nor a restart asks for it again."""
    key = f"run:{book.run_id}:end"
    if not _free(state, key):
        return []
    event = RunFailed(run_id=book.run_id, reason=book.rejected)
    return [_record(state, key, event, ids.run_failed_id(book.run_id))]


def _asked(state: DriverState, effects: list[Effect]) -> None:
    """Note effects as asked for: their keys pending, their starts counted.

    Done after each run is looked at, not once at the end, so the next run of the same
    message sees the starts just decided under the global cap.
    """
    for effect in effects:
        state.pending.setdefault(effect.key, 0)
        if isinstance(effect, PublishCommand) and isinstance(effect.command, CancelTask):
            cancelled = state.runs[effect.command.run_id]
            task = effect.command.task_id
            cancelled.cancel_sent.add(f"{task}/{_attempt(state, cancelled, task)}")
        if isinstance(effect, Dispatch) and not effect.republish:
            book = state.runs[effect.run_id]
            if effect.queued.task_id not in book.active:
                state.starting[effect.key] = effect.run_id
