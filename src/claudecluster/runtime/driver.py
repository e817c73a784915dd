"""The driver actor's shell: reads the log and the commands, carries out the core's effects.

One loop owns the :class:`~claudecluster.actors.driver.DriverState` and calls
:func:`~claudecluster.actors.driver.decide` for each message, in order: the events of the
log (from a following reader), commands (from the driver's durable consumer), clock
ticks, and the outcomes of effects. Effects run concurrently in the same task group and
report back through the loop's inbox, so decisions never race each other.

On start the driver restores its state from the newest usable snapshot (``cc_snapshots``,
see :mod:`claudecluster.runtime.driver_snapshots`) and replays the log after it (the
whole log when there is none) with effects discarded (they were decided on a partial
picture), then asks the core to :class:`~claudecluster.actors.driver.Resume`:
work items of queued attempts are published again (deduplicated per attempt), and every
open run is reconciled. That is the whole of crash recovery.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from contextlib import aclosing
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Final

import anyio
import anyio.abc
import msgspec
from anyio.streams.memory import MemoryObjectSendStream
from nats.js import JetStreamContext

from claudecluster.actors.driver import (
    Dispatch,
    DriverConfig,
    DriverState,
    Effect,
    EffectFailed,
    EffectSettled,
    Merge,
    MergeBatch,
    Message,
    Plan,
    PublishCommand,
    Record,
    Resume,
    Retry,
    Rollback,
    Tick,
    Verify,
    WorkerSeen,
    decide,
)
from claudecluster.actors.driver_snapshots import DRIVER_SNAPSHOT, encode_driver_snapshot
from claudecluster.actors.merge_outcomes import merge_key, merge_record
from claudecluster.actors.work_items import work_item
from claudecluster.domain.branches import integration_branch
from claudecluster.errors import (
    ClusterError,
    ConcurrencyError,
    EventStoreError,
    GraphError,
    WorkspaceError,
    WorkspaceSetupError,
)
from claudecluster.events import event_ids as ids
from claudecluster.events.envelope import CommandEnvelope, StoredEvent, wrap_event
from claudecluster.events.model import (
    Event,
    MergeConflict,
    RunCancelled,
    RunCompleted,
    RunFailed,
    RunPlanned,
)
from claudecluster.executors.base import Executor
from claudecluster.executors.confinement import Confinement
from claudecluster.observability.logging import get_logger
from claudecluster.projections.tasks import NOT_THE_HOLDER
from claudecluster.runtime.driver_snapshots import decision_code_digest, open_driver_state
from claudecluster.runtime.planners import finish_plan, planner_for
from claudecluster.runtime.run_repositories import GitRunRepositories, RunRepositories
from claudecluster.transport.artifacts import ArtifactStore, JetStreamArtifactStore
from claudecluster.transport.base import EventLog
from claudecluster.transport.commands import (
    DRIVER_CONSUMER,
    CommandBus,
    CommandInbox,
    InboundCommand,
    JetStreamCommandBus,
    JetStreamCommandInbox,
)
from claudecluster.transport.infrastructure import Infrastructure
from claudecluster.transport.liveness import JetStreamWorkerRegistry, WorkerRegistry
from claudecluster.transport.snapshots import JetStreamSnapshotStore, SnapshotStore
from claudecluster.transport.work_queue import JetStreamWorkQueue, WorkQueue

__all__ = ["DRIVER_CONSUMER", "Driver", "DriverOptions"]

_log = get_logger(__name__)
_COMMAND_BATCH: Final = 16


@dataclass(frozen=True, slots=True)
class DriverOptions:
    """How one driver process works.

    Attributes:
        config: the fleet-wide limits of the decision core.
        work_dir: integration worktrees and bundles (default ``<repo>/.claudecluster/driver``).
        tick_s: how often timers (retries, liveness, pacing) are looked at.
        api_environment: ANTHROPIC_* settings for the Claude planner.
        planner_executor: runs the Claude planner's agent (None: planning with Claude fails
            with a clear error).
        now: the clock (a test may pin it).
        confinement: how verify commands are confined (None: this machine's sandbox).
        snapshot_every_events: write a snapshot of the state once this many events were
            decided since the last one (0: never); a restart replays only what came after.
    """

    config: DriverConfig = field(default_factory=DriverConfig)
    work_dir: Path | None = None
    tick_s: float = 0.5
    api_environment: dict[str, str] = field(default_factory=dict)
    planner_executor: Executor | None = None
    now: Callable[[], datetime] = lambda: datetime.now(UTC)
    confinement: Confinement | None = None
    #: whether this driver holds the driver lease (None: it drives alone); commands are
    #: pulled only while it does (see runtime/standby.py)
    holding: Callable[[], bool] | None = None
    #: how long a pulled command may stay unacknowledged before it is delivered again
    command_ack_wait_s: float = 30.0
    snapshot_every_events: int = 10_000
    #: called with the state, the message and the time after each decision, before its
    #: effects start: the simulator's checks of the core's promises (it must not change
    #: the state; what it raises ends the driver)
    observe: Callable[[DriverState, Message, datetime], None] | None = None


@dataclass(slots=True)
class _CommandMessage:
    envelope: CommandEnvelope
    msg: InboundCommand


@dataclass(frozen=True, slots=True)
class _Carried:
    """An effect carried out (or not), with its outcome for the core."""

    effect: Effect
    outcome: EffectSettled | EffectFailed


#: What the driver's loop takes, one at a time: the core's messages, the commands, and
#: the outcomes of the effects it started.
_Inbound = Message | _CommandMessage | _Carried


@dataclass(slots=True)
class _Unacked:
    """A command decided but not yet acknowledged: its effects are not all settled.

    The effects themselves, not their keys: another decision may have an effect with the
    same key in flight (a run's end decided on a task's last event while a cancel of the
    run was being decided), and that one settling says nothing of this command's.
    """

    msgs: list[InboundCommand]
    effects: list[Effect]


class Driver:
    """The driver actor: owns runs from submission to merged result.

    Args:
        log: the event log.
        js: the JetStream context the real seams are opened on, when ``infrastructure``
            is not given.
        options: see :class:`DriverOptions`.
        registry: the live worker registry (default: the ``cc_workers`` bucket of ``js``).
        snapshots: where the state's snapshots are kept (default: the ``cc_snapshots``
            bucket of ``js``).
        infrastructure: the work queue, artifacts, command bus and inbox (read, and
            acknowledged once each command's outcome is recorded), registry and
            snapshots; given, ``js`` is not used (``registry`` and ``snapshots`` still
            override its own). Default: the real ones on ``js``.
        repositories: the git half of the effects (default: git on this machine, in
            ``options.work_dir``).
    """

    def __init__(
        self,
        log: EventLog,
        js: JetStreamContext | None = None,
        options: DriverOptions | None = None,
        *,
        registry: WorkerRegistry | None = None,
        snapshots: SnapshotStore | None = None,
        infrastructure: Infrastructure | None = None,
        repositories: RunRepositories | None = None,
    ):
        self._log = log
        self._options = options or DriverOptions()
        self.state = DriverState(config=self._options.config)
        self._queue: WorkQueue
        self._artifacts: ArtifactStore
        self._bus: CommandBus
        self._inbox: CommandInbox
        self._registry: WorkerRegistry
        self._snapshots: SnapshotStore
        if infrastructure is not None:
            self._queue, self._artifacts = infrastructure.queue, infrastructure.artifacts
            self._bus, self._inbox = infrastructure.commands, infrastructure.inbox
            self._registry = registry or infrastructure.registry
            self._snapshots = snapshots or infrastructure.snapshots
        elif js is not None:
            # The driver reads no live command feed, so a context is enough to build its seams.
            self._queue, self._artifacts = JetStreamWorkQueue(js), JetStreamArtifactStore(js)
            self._bus = JetStreamCommandBus(js)
            self._inbox = JetStreamCommandInbox(js, ack_wait_s=self._options.command_ack_wait_s)
            self._registry = registry or JetStreamWorkerRegistry(js)
            self._snapshots = snapshots or JetStreamSnapshotStore(js)
        else:
            raise ValueError("a driver needs a JetStream context or an Infrastructure")
        self._repos: RunRepositories = repositories or GitRunRepositories(
            self._artifacts,
            work_dir=self._options.work_dir,
            confinement=self._options.confinement,
        )
        self._stopped = anyio.Event()
        #: commands whose outcome is not recorded yet, by command id
        self._unacked: dict[str, _Unacked] = {}
        #: the id of the last event decided, and the sequence of the last snapshot written
        self._last_id = ""
        self._snapshot_seq = 0
        self._snapshot_writing = False

    # -- the loop ------------------------------------------------------------------------

    async def run(
        self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Recover from the log, then drive until cancelled.

        Raises:
            EventStoreError: the log cannot be read.
        """
        async with open_driver_state(self._log, self._snapshots, self._options.config) as (
            state,
            events,
        ):
            self.state = state
            self._snapshot_seq = state.view.last_seq
            async for stored in events:
                self._decide(stored)
                self._last_id = stored.envelope.id
                # Nothing decided while replaying is carried out, so nothing is in flight
                # (as after the replay, below). Left to pile up, the keys were scanned by
                # every decision of the replay (the caps count the starts, a run's end
                # looks for its pending effects): recovery took the square of the log.
                self.state.pending.clear()
                self.state.starting.clear()
        # What the replay decided was decided on a partial picture: decide again.
        self.state.pending.clear()
        self.state.starting.clear()
        # Who is alive is in the registry, not the log: know it before the first tick, or
        # every worker would look silent since its join.
        for record in (await self._registry.current()).values():
            self._decide(WorkerSeen(worker_id=record.worker_id, at=record.at))
        _log.info("driver recovered", last_seq=self.state.view.last_seq, runs=len(self.state.runs))
        send, receive = anyio.create_memory_object_stream[_Inbound](math.inf)
        async with anyio.create_task_group() as group, send, receive:
            group.start_soon(self._follow, self.state.view.last_seq + 1, send.clone())
            group.start_soon(self._watch_liveness, send.clone())
            group.start_soon(self._commands, send.clone())
            group.start_soon(self._ticker, send.clone())
            await send.send(Resume())
            task_status.started()
            async for message in receive:
                if isinstance(message, _CommandMessage):
                    effects = await self._decide_command(message)
                elif isinstance(message, _Carried):
                    effects = self._decide(message.outcome)
                    await self._settle_commands(message)
                else:
                    anomalies = self.state.view.anomaly_count
                    effects = self._decide(message)
                    if isinstance(message, StoredEvent):
                        self._last_id = message.envelope.id
                        await self._quarantine_forged(message, anomalies)
                for effect in effects:
                    group.start_soon(self._carry_out, effect, send.clone())
                # After the effects are under way: a long replay is snapshotted once the
                # restart's Resume is decided, not before the first decision.
                if isinstance(message, StoredEvent | Resume):
                    self._snapshot_if_due(group)

    def _snapshot_if_due(self, group: anyio.abc.TaskGroup) -> None:
        """Snapshot the state once enough events were decided since the last snapshot.

        Encoded here, between two decisions, because the state changes with the next one;
        stored in the background, one write at a time, so decisions do not wait for the
        store. A failed write is logged and tried again after as many events again (a
        snapshot only shortens restarts).
        """
        every = self._options.snapshot_every_events
        seq = self.state.view.last_seq
        if every <= 0 or self._snapshot_writing or not self._last_id:
            return
        if seq - self._snapshot_seq < every:
            return
        data = encode_driver_snapshot(self.state, self._last_id, code=decision_code_digest())
        self._snapshot_seq = seq
        self._snapshot_writing = True
        group.start_soon(self._write_snapshot, data, seq)

    async def _write_snapshot(self, data: bytes, seq: int) -> None:
        try:
            await self._snapshots.put(DRIVER_SNAPSHOT, data)
        except ClusterError as exc:
            _log.warning("driver snapshot not written; trying again later", error=str(exc))
        else:
            _log.info("driver snapshot written", seq=seq, size=len(data))
        finally:
            self._snapshot_writing = False

    async def _quarantine_forged(self, stored: StoredEvent, anomalies_before: int) -> None:
        """A result the core refused as not its attempt's holder's goes to quarantine."""
        view = self.state.view
        if view.anomaly_count == anomalies_before or not view.recent_anomalies:
            return
        anomaly = view.recent_anomalies[-1]
        if anomaly.seq == stored.seq and anomaly.reason.startswith(NOT_THE_HOLDER):
            _log.warning("forged event refused", seq=stored.seq, reason=anomaly.reason)
            await self._log.quarantine_refused(stored, anomaly.reason)

    def _decide(self, message: Message) -> list[Effect]:
        """The core's decision, or none if it failed: the driver goes on with the rest.

        The core already turns what it cannot apply into the end of that run (recorded
        once); this is the last line for a defect that escapes it. The state may then miss
        this one message, which is logged with the error: better than a driver that stops
        at the same message at every start.
        """
        now = self._options.now()
        try:
            effects = decide(self.state, message, now)
        except Exception as exc:  # noqa: BLE001 - logged with the message; see above
            _log.exception(
                "the driver core failed on a message; skipped",
                message=repr(message)[:500],
                error=repr(exc),
            )
            return []
        if self._options.observe is not None:
            self._options.observe(self.state, message, now)
        return effects

    async def _decide_command(self, message: _CommandMessage) -> list[Effect]:
        """Decide a command; acknowledge it once its outcome (or refusal) is recorded.

        A command whose effects are in flight is acknowledged when the last of them
        settles (:meth:`_settle_commands`); one that decides nothing is acknowledged now.
        A copy delivered again while the first is in flight waits with it. Had the
        driver died in between, the copy is decided by the next driver, which knows it
        done from the log (the outcome's causation id) and only acknowledges it.

        A command the core fails on is terminated and quarantined with the reason, so it
        is never redelivered.
        """
        command_id = message.envelope.id
        waiting = self._unacked.get(command_id)
        if waiting is not None:
            waiting.msgs.append(message.msg)
            return []
        now = self._options.now()
        try:
            effects = decide(self.state, message.envelope, now)
        except Exception as exc:  # noqa: BLE001 - quarantined with the reason, never redelivered
            reason = f"the driver core failed on this command: {type(exc).__name__}: {exc}"
            _log.exception("poison command", command_id=command_id, error=reason)
            await message.msg.term(reason)
            return []
        if self._options.observe is not None:
            self._options.observe(self.state, message.envelope, now)
        if not effects:
            await message.msg.ack()
            return effects
        self._unacked[command_id] = _Unacked(msgs=[message.msg], effects=list(effects))
        return effects

    async def _settle_commands(self, carried: _Carried) -> None:
        """Acknowledge the commands whose outcome is now recorded; on a failed one, ask
        for the command again (it is decided afresh, nothing of it was recorded)."""
        outcome = carried.outcome
        for command_id, waiting in list(self._unacked.items()):
            if not any(effect is carried.effect for effect in waiting.effects):
                continue
            if isinstance(outcome, EffectFailed):
                del self._unacked[command_id]
                self.state.commands_seen.discard(command_id)
                for msg in waiting.msgs:
                    await msg.nak(1.0)
                continue
            waiting.effects = [e for e in waiting.effects if e is not carried.effect]
            if not waiting.effects:
                del self._unacked[command_id]
                for msg in waiting.msgs:
                    await msg.ack()

    async def _follow(self, from_seq: int, send: MemoryObjectSendStream[_Inbound]) -> None:
        async with send, self._log.open_reader(from_seq=from_seq, follow=True) as events:
            async for stored in events:
                await send.send(stored)

    async def _watch_liveness(self, send: MemoryObjectSendStream[_Inbound]) -> None:
        # Closed here, on every path: an async generator left to the garbage collector is
        # closed whenever that runs (trio warns of it), not when the driver stops.
        async with send, aclosing(self._registry.watch()) as records:
            async for record in records:
                await send.send(WorkerSeen(worker_id=record.worker_id, at=record.at))

    async def _ticker(self, send: MemoryObjectSendStream[_Inbound]) -> None:
        async with send:
            while True:
                await anyio.sleep(self._options.tick_s)
                await send.send(Tick())

    async def _commands(self, send: MemoryObjectSendStream[_Inbound]) -> None:
        """Commands from the durable consumer every driver shares; acked once decided."""
        async with send:
            holding = self._options.holding
            while True:
                if holding is not None and not holding():
                    # Not the lease holder (or not sure it still is): leave them to it.
                    await anyio.sleep(self._options.tick_s)
                    continue
                try:
                    inbound = await self._inbox.fetch(_COMMAND_BATCH, wait_s=5)
                except EventStoreError as exc:
                    # Also a consumer JetStream cannot make yet: a driver that takes the
                    # lease while the cluster has no quorum (healed from a partition, a
                    # server catching up) is answered 503. The cluster is recovering,
                    # which is no reason to stop driving: ask again (tests/hosts/test_chaos.py).
                    _log.warning("command fetch failed; retrying", error=str(exc))
                    await anyio.sleep(1)
                    continue
                for command in inbound:
                    await send.send(_CommandMessage(command.envelope, command))

    # -- effects -------------------------------------------------------------------------

    async def _carry_out(self, effect: Effect, send: MemoryObjectSendStream[_Inbound]) -> None:
        async with send:
            try:
                seq = await self._effect(effect)
            except ConcurrencyError as exc:
                # Lost a race (a worker took over, the log moved on): decide again.
                await send.send(_Carried(effect, EffectFailed(key=effect.key, reason=str(exc))))
            except ClusterError as exc:
                _log.warning("driver effect failed; it will be retried", key=effect.key,
                             error=str(exc))  # fmt: skip
                await anyio.sleep(1.0)  # a failing store or git: do not spin
                await send.send(_Carried(effect, EffectFailed(key=effect.key, reason=str(exc))))
            else:
                await send.send(_Carried(effect, EffectSettled(key=effect.key, seq=seq)))

    async def _effect(self, effect: Effect) -> int:
        match effect:
            case Record():
                seq = await self._record(
                    effect.event, effect.event_id, effect.expected_last, effect.causation_id
                )
                if isinstance(effect.event, RunCompleted | RunFailed | RunCancelled):
                    await self._repos.clean_run(effect.event.run_id)
                return seq
            case Plan():
                return await self._plan(effect)
            case Dispatch():
                return await self._dispatch(effect)
            case Merge():
                return await self._merge(effect)
            case MergeBatch():
                return await self._merge_batch(effect)
            case Verify():
                return await self._verify(effect)
            case Rollback():
                await self._repos.move_to(
                    effect.event.run_id, Path(effect.repo), effect.event.to_commit
                )
                return await self._record(effect.event, effect.event_id, None, effect.causation_id)
            case Retry():
                head = await self._repos.head(effect.event.run_id, Path(effect.repo))
                retried = msgspec.structs.replace(effect.event, head_commit=head)
                return await self._record(retried, effect.event_id, None, effect.causation_id)
            case PublishCommand():
                await self._bus.publish(
                    effect.command, command_id=effect.command_id, now=self._options.now()
                )
                return 0

    async def _record(
        self,
        event: Event,
        event_id: str,
        expected_last: int | None,
        causation_id: str | None = None,
    ) -> int:
        envelope = wrap_event(
            event, event_id=event_id, now=self._options.now(), causation_id=causation_id
        )
        return (await self._log.append(envelope, expected_last=expected_last)).seq

    # -- planning ------------------------------------------------------------------------

    async def _plan(self, effect: Plan) -> int:
        submitted = effect.submitted
        run_id = submitted.run_id
        repo = Path(submitted.repo)
        try:
            base = await self._repos.base_of(run_id, repo, submitted.base_ref)
            planner = planner_for(
                submitted,
                executor=self._options.planner_executor,
                work_dir=self._repos.run_dir(run_id, repo),
                api_environment=dict(self._options.api_environment),
            )
            tasks = await planner.tasks(submitted, repo, base)
            tasks_final, conflicts = finish_plan(
                tasks, serialize_overlaps=submitted.policy.file_overlap == "serialize"
            )
            await self._repos.open_integration(run_id, repo, base)
        except (GraphError, WorkspaceError, WorkspaceSetupError) as exc:
            _log.warning("run cannot be planned", run=run_id, error=str(exc))
            failed = RunFailed(run_id=run_id, reason=f"planning failed: {exc}")
            return await self._record(failed, ids.run_failed_id(run_id), None)
        except ClusterError:
            raise  # the store or the bus: the effect is retried
        except Exception as exc:  # noqa: BLE001 - the run fails once, with the reason
            # Anything else the planner raises would do so again on the same submission:
            # let it out and every restart's Resume asks for the same plan and stops again.
            _log.exception("the planner failed", run=run_id, error=repr(exc))
            reason = f"planning failed: {type(exc).__name__}: {exc}"[:2_000]
            failed = RunFailed(run_id=run_id, reason=reason)
            return await self._record(failed, ids.run_failed_id(run_id), None)
        planned = RunPlanned(
            run_id=run_id,
            tasks=tasks_final,
            base_commit=base,
            integration_branch=integration_branch(run_id),
            predicted_conflicts=conflicts,
        )
        return await self._record(planned, ids.run_planned_id(run_id), None)

    # -- dispatch ------------------------------------------------------------------------

    async def _dispatch(self, effect: Dispatch) -> int:
        queued = effect.queued
        repo = Path(effect.repo)
        if effect.conflict is not None:
            ours, theirs = effect.conflict
            base = await self._repos.conflicted_merge(
                effect.run_id, repo, ours, theirs,
                f"Conflict of {queued.task_id} with {effect.integration_branch}",
            )  # fmt: skip
            queued = msgspec.structs.replace(queued, base_commit=base)
        repo_key, segments = await self._repos.segments(effect.run_id, repo, queued.base_commit)
        if effect.republish:
            seq = 0
        else:
            seq = await self._record(queued, effect.event_id, effect.expected_last)
        item = work_item(effect, queued, repo_key=repo_key, segments=segments, queued_seq=seq)
        await self._queue.publish(item)
        return seq

    # -- merging -------------------------------------------------------------------------

    async def _merge(self, effect: Merge) -> int:
        record = merge_record(effect, await self._repos.merge(effect))
        if isinstance(record.event, MergeConflict) and record.event.problem:
            _log.warning("merge refused", task=merge_key(effect), problem=record.event.problem)
        return await self._record(record.event, record.event_id, record.expected_last)

    async def _merge_batch(self, effect: MergeBatch) -> int:
        return await self._repos.merge_batch(effect, self._record)

    async def _verify(self, effect: Verify) -> int:
        verdict = await self._repos.verify_head(
            effect.run_id, Path(effect.repo), effect.verify_command, effect.verify_timeout_s
        )
        if verdict.passed:
            return await self._record(
                effect.done, ids.run_completed_id(effect.run_id, effect.retries), None
            )
        failed = RunFailed(
            run_id=effect.run_id, reason=f"the final verify failed: {verdict.output}"
        )
        return await self._record(failed, ids.run_failed_id(effect.run_id, effect.retries), None)
