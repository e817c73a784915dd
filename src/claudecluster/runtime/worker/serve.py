"""The worker actor's shell: fetch work, run it in a private workspace, record the result.

Everything that decides is pure (:mod:`claudecluster.actors.worker`); this module does the
I/O around it with structured concurrency: one task group for the worker, one loop per
slot, and for each attempt a ticker that keeps the work message alive while it runs.

Fencing. Every event of an attempt is appended conditionally on the task's scope: the
worker knows the sequence of the task's last event (its own), and if anything else lands
there (the driver re-queued the task, another worker took it over, a cancel), the next
append raises ``ConcurrencyError``. The worker then knows its attempt is superseded: it
stops the agent and records nothing more. So a late result of a silent worker is never
recorded for the live attempt. What landed may also be a forgery (an event naming our
attempt that our key did not sign): readers refuse those, so the worker appends after it
and the attempt goes on.

Signing. Each worker has an nkey of its own, made when it starts and never written
anywhere; its claim (``task.assigned``) names the public key, and every later event of
the attempt is signed with it (:mod:`claudecluster.events.signing`), over the envelope as
the log will store it (after redaction).

Holding. Once a claim is recorded, the attempt is this worker's until it records how it
ended: nothing else will. A redelivered item of a taken-over attempt is dropped (its
attempt number is behind the task's), and the driver declares an attempt lost only when
its holder goes silent. So every failure after the claim (a transcript that cannot be
read, a workspace that cannot be built) is recorded as the attempt's retryable failure,
and an attempt's append that fails while the store fails over (the log's leader being
elected) is tried again, the same event, until it lands or :data:`_APPEND_PATIENCE_S`
runs out.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

import anyio
import anyio.abc
import msgspec
import nats.errors
import nkeys
import psutil
from nats.aio.client import Client

from claudecluster.actors.worker import (
    WORKER_COMMAND_SUBJECTS,
    Admission,
    admit,
    claim_events,
    item_problem,
    only_forgeries,
    rejoin_reason,
    resumable_session,
    stops_for,
)
from claudecluster.errors import (
    ClusterError,
    ConcurrencyError,
    EventStoreError,
)
from claudecluster.events.codec import decode_event, encode
from claudecluster.events.envelope import EventEnvelope, StoredEvent, wrap_event
from claudecluster.events.event_ids import worker_event_id
from claudecluster.events.liveness import WorkerLiveness
from claudecluster.events.model import (
    CancelRun,
    CancelTask,
    Event,
    RunPlanned,
    RunRetried,
    TaskCancelled,
    TaskFailed,
    WorkerJoined,
    WorkerLeft,
)
from claudecluster.events.signing import signature_of, signed_bytes
from claudecluster.events.subjects import run_level_filter, task_filter, worker_filter
from claudecluster.events.work import WorkItem
from claudecluster.executors.base import Executor
from claudecluster.executors.claude_code import ClaudeCodeExecutor
from claudecluster.executors.confinement import (
    default_confinement,
)
from claudecluster.executors.shell import ShellExecutor
from claudecluster.observability.logging import get_logger
from claudecluster.observability.redaction import Redactor
from claudecluster.projections.cluster import ClusterView, replay
from claudecluster.projections.views import TaskView, task_key
from claudecluster.runtime.http_server import open_http_server
from claudecluster.runtime.worker_health import WorkerMetrics, health_app
from claudecluster.runtime.workspace_preparation import Preparation
from claudecluster.transport.artifacts import ArtifactStore
from claudecluster.transport.base import EventLog, read_all
from claudecluster.transport.commands import CommandFeed
from claudecluster.transport.infrastructure import Infrastructure, jetstream_infrastructure
from claudecluster.transport.liveness import WorkerRegistry
from claudecluster.transport.work_queue import Delivery, WorkQueue
from claudecluster.workspace.naming import slot_dir_name

if TYPE_CHECKING:
    # claude_agent_sdk loads the mcp package (about 30 MB and 0.3-0.8 s): an idle worker
    # should not carry it, nor every CLI command that imports this module. It is imported
    # when the first attempt runs.
    from claude_agent_sdk import SessionStore
from claudecluster.runtime.patience import PatientArtifacts, PatientSessions, patiently
from claudecluster.runtime.worker.attempt import AttemptRunner
from claudecluster.runtime.worker.config import (
    _APPEND_PATIENCE_S,
    _CAPABILITIES,
    _FORGERIES_STEPPED_OVER,
    _LOST_CHECK_EVERY_BEATS,
    _LOST_RECHECK_BEATS,
    _RUNS_KEPT,
    Origin,
    Superseded,
    WorkerConfig,
    _Attempt,
    this_process,
)
from claudecluster.runtime.worker.disk import AttemptDisk, GitAttemptDisk
from claudecluster.runtime.worker.failures import _leaf_errors

__all__ = ["Worker"]

_log = get_logger(__name__)


class Worker(AttemptRunner):
    """One worker: joins, heartbeats (in the registry), serves its pool's queue, drains on stop.

    Args:
        config: how to run.
        log: the event log.
        client: the NATS connection the real seams are opened on, when ``infrastructure``
            is not given.
        transfer_client: a second connection for the repository's history and result
            bundles, so big transfers never queue ahead of heartbeats and events (default:
            ``client``).
        infrastructure: every seam (work queue, artifacts, commands, registry,
            transcripts); given, ``client`` and ``transfer_client`` are not used.
        executor: runs agent tasks (the Claude Code CLI by default); shell tasks always
            run in a shell.
        clock: the current time (injected so tests and simulations can control it).
        disk: what attempts do on disk (default: git workspaces under
            ``config.workspace_root``; a simulation's twin touches no disk).
        load: samples the machine's load for each heartbeat (default: psutil's reading
            of this machine; a simulation, whose thousands of workers share one process,
            reports none instead of reading /proc for each beat).
        origin: the host, pid, attempt key and event-id nonces it draws from its process
            (default: this process's, a fresh key, random nonces; a simulation's are
            seeded).
    """

    def __init__(
        self,
        config: WorkerConfig,
        log: EventLog,
        client: Client | None = None,
        *,
        executor: Executor | None = None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        transfer_client: Client | None = None,
        infrastructure: Infrastructure | None = None,
        disk: AttemptDisk | None = None,
        load: Callable[[], HostLoad] | None = None,
        origin: Origin | None = None,
    ) -> None:
        self.config = config
        self._origin = origin or this_process()
        self._log = log
        if infrastructure is None:
            if client is None:
                raise ValueError("a worker needs a NATS client or an Infrastructure")
            infrastructure = jetstream_infrastructure(
                log, client, transfer_client=transfer_client, work_ack_wait_s=config.ack_wait_s
            )
        self._queue: WorkQueue = infrastructure.queue
        # Patient through a store's failover, as the appends to the log are (patience.py).
        self._artifacts: ArtifactStore = PatientArtifacts(infrastructure.artifacts)
        self._feed: CommandFeed = infrastructure.feed
        self.preparation = Preparation(
            self._artifacts,
            config.repo_cache or config.workspace_root.parent / "repo-cache",
            remotes=config.repo_remotes,
        )
        self._sessions: SessionStore = PatientSessions(infrastructure.transcripts)
        # Refuses to start where the sandbox is missing, unless the operator chose none.
        self._confinement = config.confinement or default_confinement()
        self._executor: Executor = executor or ClaudeCodeExecutor(confinement=self._confinement)
        self._shell: Executor = ShellExecutor(confinement=self._confinement)
        self._disk: AttemptDisk = disk or GitAttemptDisk(
            config, self.preparation, self._confinement, self._artifacts
        )
        self._registry: WorkerRegistry = infrastructure.registry
        self._clock = clock
        self._load = load
        self._running: dict[str, _Attempt] = {}
        self._draining = anyio.Event()
        self._stop_reason = "stopped"
        self._ids = 0
        #: run id -> its run-level events so far, oldest run first (see _run_level)
        self._run_events: dict[str, list[StoredEvent]] = {}
        self.metrics = WorkerMetrics()
        self.metrics.slots.set(config.slots)
        self.health_port: int | None = None
        # This process's attempt key: in memory only, new at every start.
        self._key = nkeys.from_seed(self._origin.key_seed)
        self.public_key: str = self._key.public_key.decode()
        found = getattr(log, "redactor", None)
        self._redactor = found if isinstance(found, Redactor) else Redactor()

    # -- events -----------------------------------------------------------------------

    async def _record(
        self,
        event: Event,
        *,
        expected_last: int | None = None,
        signed: bool = False,
        patience_s: float = 0.0,
    ) -> int:
        """Append ``event``; while the store fails, the same envelope again for up to
        ``patience_s`` seconds.

        The same envelope, not a new one: if the store kept the first try and only its
        acknowledgement was lost, the retry is its duplicate (same ``Nats-Msg-Id``, or
        found by id after the expected sequence moved), not a second event that would
        read as someone else's.

        Raises:
            ConcurrencyError: the scope moved on (never tried again: that is a decision).
            EventStoreError: the store still failed after ``patience_s``.
        """
        self._ids += 1
        envelope = wrap_event(
            event,
            event_id=worker_event_id(self.config.worker_id, self._ids, self._origin.nonce()),
            now=self._clock(),
        )
        if signed:
            envelope = self._sign(envelope)
        return (
            await patiently(
                lambda: self._log.append(envelope, expected_last=expected_last),
                what=f"append of {type(event).__name__}",
                patience_s=patience_s,
                retrying=EventStoreError,
            )
        ).seq

    def _sign(self, envelope: EventEnvelope) -> EventEnvelope:
        """The envelope as the log will store it (redacted), signed with our attempt key."""
        stored = decode_event(self._redactor.data(encode(envelope)))
        signature = signature_of(self._key.sign(signed_bytes(stored)))
        return msgspec.structs.replace(stored, signature=signature)

    async def _record_for(self, live: _Attempt, event: Event) -> None:
        """Append an attempt's event only if nothing else happened to its task meanwhile,
        forgeries apart (readers refuse them; the append goes after them).

        Raises:
            Superseded: something else did.
        """
        item = live.item
        async with live.appending:  # progress, touched files and the outcome chain sequences
            for _ in range(_FORGERIES_STEPPED_OVER):
                try:
                    live.last_seq = await self._record(
                        event,
                        expected_last=live.last_seq,
                        signed=True,
                        patience_s=_APPEND_PATIENCE_S,
                    )
                except ConcurrencyError:
                    scope = task_filter(item.run_id, item.task_id)
                    newer = await read_all(self._log, from_seq=live.last_seq + 1, subjects=scope)
                    envelopes = [stored.envelope for stored in newer]
                    if not only_forgeries(envelopes, live.attempt, self.public_key):
                        break
                    _log.warning("stepping over forged events", item=item.message_id,
                                 seqs=[stored.seq for stored in newer])  # fmt: skip
                    live.last_seq = newer[-1].seq
                else:
                    return
        key = task_key(item.run_id, item.task_id)
        raise Superseded(f"{key} moved on; {type(event).__name__} not recorded")

    # -- serving ----------------------------------------------------------------------

    async def serve(
        self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Join, serve until :meth:`stop` (then drain), and leave.

        Raises:
            EventStoreError: the event log or the work queue failed.
        """
        await self._join(self.config.join_reason)
        await self._register()
        await self._disk.sweep(self.config.workspace_root)
        try:
            async with anyio.create_task_group() as group:
                if self.config.health_port is not None:
                    await group.start(self._serve_health)
                task_status.started()
                group.start_soon(self._heartbeats)
                group.start_soon(self._commands)
                async with anyio.create_task_group() as slots:
                    for n in range(self.config.slots):
                        slots.start_soon(self._slot, n)
                group.cancel_scope.cancel()  # slots are done: stop heartbeating
        finally:
            with anyio.CancelScope(shield=True):
                await self._queue.close()
                if not self.config.keep_workspaces:
                    for n in range(self.config.slots):
                        await self._disk.remove(self._slot_dir(n))
                await self._record(
                    WorkerLeft(worker_id=self.config.worker_id, reason=self._stop_reason)
                )
                await self._unregister()

    async def _join(self, reason: str) -> None:
        await self._record(
            WorkerJoined(
                worker_id=self.config.worker_id,
                pool=self.config.pool,
                host=self._origin.host,
                pid=self._origin.pid,
                slots=self.config.slots,
                capabilities=_CAPABILITIES,
                reason=reason,
            ),
            # A loaded server (a stream still electing its leader) may answer late: the
            # same event again is deduplicated, and a worker must not die of one slow reply.
            patience_s=_APPEND_PATIENCE_S,
        )

    async def _serve_health(
        self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        assert self.config.health_port is not None
        app = health_app(self, self.metrics)
        async with open_http_server(
            app, host=self.config.health_host, port=self.config.health_port
        ) as port:
            self.health_port = port
            task_status.started()
            await anyio.sleep_forever()

    def health(self) -> dict[str, object]:
        """The /health report: 'ok' while serving, 'draining' once stopping."""
        return {
            "status": "draining" if self._draining.is_set() else "ok",
            "worker_id": self.config.worker_id,
            "pool": self.config.pool,
            "slots": self.config.slots,
            "slots_free": max(0, self.config.slots - len(self._running)),
            "running": sorted(self._running),
            "capabilities": list(_CAPABILITIES),
        }

    def stop(self, reason: str = "stopped") -> None:
        """Stop taking work; running attempts finish (up to the drain deadline).

        ``reason`` is recorded in WorkerLeft.
        """
        self._stop_reason = reason
        self._draining.set()

    def _slot_dir(self, n: int) -> Path:
        return self.config.workspace_root / slot_dir_name(self.config.worker_id, n)

    async def _slot(self, n: int = 0) -> None:
        while not self._draining.is_set():
            try:
                wait_s = self.config.fetch_wait_s
                delivery = await self._queue.fetch(self.config.pool, wait_s=wait_s)
            except ClusterError as exc:
                # The queue's server is failing over or restarting: wait, then ask again.
                _log.warning("work fetch failed; trying again", error=str(exc))
                await anyio.sleep(1.0)
                continue
            if delivery is None:
                continue
            try:
                await self._handle_until_drained(delivery, n)
            except* (ClusterError, nats.errors.Error) as failed:
                # The log or the queue failed under this item; unless it was acked it is
                # delivered again. The slot goes on with the next one. (except*: the
                # failure arrives wrapped in the task group's ExceptionGroup.)
                _log.error("work item failed", item=delivery.item.message_id,
                           error="; ".join(_leaf_errors(failed)))  # fmt: skip

    async def _handle_until_drained(self, delivery: Delivery, slot: int = 0) -> None:
        async with anyio.create_task_group() as group:

            async def deadline() -> None:
                await self._draining.wait()
                await anyio.sleep(self.config.drain_deadline_s)
                group.cancel_scope.cancel()  # past the drain deadline: hand the item back

            group.start_soon(deadline)
            await self._handle(delivery, slot)
            group.cancel_scope.cancel()

    # -- one delivery ----------------------------------------------------------------

    async def _task_view(self, item: WorkItem) -> tuple[TaskView | None, int]:
        """The task as its history tells it, and the last sequence of that history.

        The sequence is what a claim must be conditional on: the decision was taken on
        exactly that history, so anything recorded after it voids the decision.
        """
        run_level = [_one_task(s, item.task_id) for s in await self._run_level(item.run_id)]
        task_level = await read_all(self._log, subjects=task_filter(item.run_id, item.task_id))
        view: ClusterView = replay(sorted([*run_level, *task_level], key=lambda s: s.seq))
        last = max((s.seq for s in task_level), default=0)
        return view.tasks.get(task_key(item.run_id, item.task_id)), last

    async def _run_level(self, run_id: str) -> list[StoredEvent]:
        """The run's run-level events, read once and then only what is new.

        They hold the plan, which for thousands of tasks is megabytes: fetched and decoded
        for every work item, it made each pickup cost in proportion to the plan. Events
        never change, so the ones already read are kept, for the latest few runs. Each
        list is complete from the run's first event: of two slots that read at once, the
        one that saw more is kept, and neither empties the cache for the other meanwhile.
        """
        known = self._run_events.get(run_id, [])
        start = known[-1].seq + 1 if known else 1
        known = known + await read_all(self._log, from_seq=start, subjects=run_level_filter(run_id))
        kept = self._run_events.pop(run_id, [])  # re-inserted: the latest run goes last
        self._run_events[run_id] = known if len(known) >= len(kept) else kept
        while len(self._run_events) > _RUNS_KEPT:
            del self._run_events[next(iter(self._run_events))]
        return known

    async def _handle(self, delivery: Delivery, slot: int = 0) -> None:
        item = delivery.item
        settled = False
        try:
            live = await self._claim_as_dispatched(item)
            if live is not None:
                await self._serve_claimed(delivery, live, slot)
                settled = True
                return
            task, seen = await self._task_view(item)
            admission = admit(task, item.attempt)
            if admission.action == "drop":
                _log.info("work item dropped", item=item.message_id, reason=admission.reason)
                await delivery.ack()
                settled = True
                return
            if admission.action == "retry_later":
                await delivery.nak(delay_s=1.0)
                settled = True
                return
            live = await self._claim(item, admission, seen)
            if live is None:
                await delivery.nak(delay_s=0.5)  # someone else moved the task: decide again
                settled = True
                return
            await self._serve_claimed(delivery, live, slot)
            settled = True
        finally:
            if not settled:  # failed or cancelled mid-way: give the item back at once
                with anyio.CancelScope(shield=True):
                    await delivery.nak()

    async def _claim_as_dispatched(self, item: WorkItem) -> _Attempt | None:
        """Claim the item's attempt on the history the driver published it on, if that
        is still the task's whole history; None when it is not known or moved on.

        An item published with its TaskQueued's sequence says what the task's history
        was: that TaskQueued last, so the attempt queued, as the item says. While the
        task's last event is still that one, :func:`admit` would find exactly that and
        run it, so the claim can be conditional on it without reading the history (two
        reads of the log per task). Anything recorded for the task since (another
        worker's claim, a cancel, a forgery) makes the conditional append fail, and
        the item is then decided on its history as read.
        """
        if item.queued_seq <= 0:
            return None
        admission = Admission(action="run", attempt=item.attempt, reason="queued")
        return await self._claim(item, admission, item.queued_seq)

    async def _serve_claimed(self, delivery: Delivery, live: _Attempt, slot: int) -> None:
        """Run a claimed attempt (or refuse it) and acknowledge its item."""
        item = live.item
        refused = item_problem(
            item,
            permission_modes=self.config.permission_modes,
            allow_mcp_config=self.config.allow_plan_mcp_servers,
        )
        if refused is not None:
            await self._refuse(live, refused)
            await delivery.ack()
            return
        async with anyio.create_task_group() as group:
            group.start_soon(self._keep_alive, delivery)
            try:
                with live.scope:  # cancelled by a CancelTask command
                    await self._run_attempt(live, slot)
                if live.scope.cancelled_caught:
                    await self._record_cancelled(live)
            except Superseded as exc:
                _log.info("attempt superseded", item=item.message_id, reason=str(exc))
            group.cancel_scope.cancel()
        await delivery.ack()

    async def _claim(self, item: WorkItem, admission: Admission, seen: int) -> _Attempt | None:
        """Record the claim of the attempt, conditional on the history ``admission`` saw.

        Returns None when the task moved on since (another holder finished or took it
        over): the caller hands the item back to be decided again.
        """
        # Not a fresh read of the last sequence: a result recorded between the admission
        # and the claim would then be overwritten by a take-over of a finished task.
        expected = seen
        claim = claim_events(
            admission, run_id=item.run_id, task_id=item.task_id,
            worker_id=self.config.worker_id, worker_key=self.public_key, pool=item.pool,
            base_commit=item.base_commit,
        )  # fmt: skip
        try:
            for event in claim:
                expected = await self._record(
                    event, expected_last=expected, patience_s=_APPEND_PATIENCE_S
                )
        except ConcurrencyError:
            return None
        # Whether the interrupted attempt's transcript can be continued is looked up once
        # the attempt runs (_attempt_in), where a store that fails is the attempt's
        # recorded failure: failing here, after the claim, left the task held by a live
        # worker that was not running it, with nothing to redeliver it.
        return _Attempt(
            item=item,
            attempt=admission.attempt,
            last_seq=expected,
            session_id=self._origin.session_id(),
            resume_from=resumable_session(admission, item.resume_session_id),
        )

    async def _refuse(self, live: _Attempt, reason: str) -> None:
        """Record that this worker will not run the item as it is (it would be the same
        on a retry, so the failure is final)."""
        _log.warning("work item refused", item=live.item.message_id, reason=reason)
        try:
            await self._record_for(
                live,
                TaskFailed(
                    run_id=live.item.run_id,
                    task_id=live.item.task_id,
                    attempt=live.attempt,
                    worker_id=self.config.worker_id,
                    reason=f"refused by worker {self.config.worker_id}: {reason}",
                    failure_class="agent_error",
                    retryable=False,
                ),
            )
        except Superseded as exc:
            _log.info("attempt superseded", item=live.item.message_id, reason=str(exc))

    async def _record_cancelled(self, live: _Attempt) -> None:
        """The agent was stopped on request (its process tree ended, its workspace removed)."""
        await self._record_for(
            live,
            TaskCancelled(
                run_id=live.item.run_id,
                task_id=live.item.task_id,
                attempt=live.attempt,
                reason=live.cancel_reason or "cancelled on request",
                run_cancel=live.run_cancel,
            ),
        )

    async def _commands(self) -> None:
        """Act on commands for this worker: cancel a running task, drain."""
        async with self._feed.listen(WORKER_COMMAND_SUBJECTS) as commands:
            async for envelope in commands:
                command = envelope.payload
                stops = stops_for(command, self._running, self.config.worker_id)
                for key, reason in stops.attempts:
                    live = self._running.get(key)
                    # An attempt-scoped cancel (a preempted attempt) spares any other.
                    scoped = command.attempt if isinstance(command, CancelTask) else 0
                    if live is not None and scoped in (0, live.attempt):
                        live.cancel_reason = reason
                        if isinstance(command, CancelRun):
                            live.run_cancel = envelope.id
                        live.scope.cancel()
                if stops.drain:
                    self.stop("drained on request")

    async def _keep_alive(self, delivery: Delivery) -> None:
        while True:
            await anyio.sleep(self.config.ack_wait_s / 3)
            try:
                await delivery.in_progress()
            except (nats.errors.Error, TimeoutError) as exc:
                # A server failing over: the attempt goes on, the next tick tries again
                # (two more before the ack wait runs out).
                _log.warning("in-progress ack failed", item=delivery.item.message_id,
                             error=repr(exc))  # fmt: skip

    # -- membership -------------------------------------------------------------------

    async def _heartbeats(self) -> None:
        """Refresh this worker's registry entry every ``heartbeat_s``.

        Liveness goes to the registry (KV, with a TTL), not to the event log: it is not
        history, and as events it was most of the log. The log keeps the join, the leave
        and the attempts this worker held.

        A beat missed or late (the link cut, the process stopped, the store failing over)
        may have got this worker declared lost; the beats after it ask the log, and join
        again if so (:func:`~claudecluster.actors.worker.rejoin_reason`). Every
        ``_LOST_CHECK_EVERY_BEATS`` beats it asks anyway: the driver may have missed beats
        that reached the registry.
        """
        sample = self._load or host_load()
        last_beat = anyio.current_time()
        recheck = 0
        beats = 0
        while True:
            await anyio.sleep(self.config.heartbeat_s)
            try:
                await self._register(load=sample())
            except (ClusterError, nats.errors.Error, TimeoutError) as exc:
                # The store is failing over or restarting. A missed beat is harmless (the
                # driver waits lost_after_s); ending the worker over it is not.
                _log.warning("heartbeat not recorded; trying again", error=str(exc))
                recheck = _LOST_RECHECK_BEATS
                continue
            now = anyio.current_time()
            if now - last_beat > 2 * self.config.heartbeat_s:
                recheck = _LOST_RECHECK_BEATS
            last_beat = now
            beats += 1
            if recheck or beats % _LOST_CHECK_EVERY_BEATS == 0:
                recheck = max(0, recheck - 1)
                await self._rejoin_if_lost()

    async def _rejoin_if_lost(self) -> None:
        """Join again if the last event about this worker declares it lost."""
        scope = worker_filter(self.config.worker_id)
        try:
            seq = await self._log.last_seq(scope)
            last = await read_all(self._log, from_seq=seq, subjects=scope) if seq else []
            reason = rejoin_reason(last[-1].envelope.payload if last else None)
            if reason is not None:
                _log.warning("this worker was declared lost; joining again", reason=reason)
                await self._join(reason)
        except (ClusterError, nats.errors.Error, TimeoutError) as exc:
            # The next beat asks again (the recheck window is still open).
            _log.warning("could not ask the log whether this worker was lost", error=str(exc))

    async def _register(self, *, load: HostLoad | None = None) -> None:
        running = tuple(sorted(self._running))
        if load is None:  # joining: no CPU share measured yet
            load = HostLoad(cpu_percent=0.0, memory_bytes=0, load_avg=_load_avg())
        await self._registry.put(
            WorkerLiveness(
                worker_id=self.config.worker_id,
                at=self._clock(),
                pool=self.config.pool,
                slots=self.config.slots,
                slots_free=max(0, self.config.slots - len(running)),
                running_tasks=running,
                cpu_percent=load.cpu_percent,
                memory_bytes=load.memory_bytes,
                load_avg=load.load_avg,
            )
        )

    async def _unregister(self) -> None:
        try:
            await self._registry.delete(self.config.worker_id)
        except ClusterError as exc:
            # The entry expires by its TTL anyway; say so rather than fail the shutdown.
            _log.warning("worker registry entry not removed", error=str(exc))


class HostLoad(NamedTuple):
    """How loaded this worker's machine is, as a heartbeat reports it."""

    cpu_percent: float
    memory_bytes: int
    load_avg: float


def _load_avg() -> float:
    try:
        return os.getloadavg()[0]
    except OSError:
        return 0.0


def host_load() -> Callable[[], HostLoad]:
    """Samples this machine's CPU share (since the last sample), this process's memory
    and the load average."""
    process = psutil.Process()
    process.cpu_percent(None)

    def sample() -> HostLoad:
        return HostLoad(
            cpu_percent=psutil.cpu_percent(None),
            memory_bytes=process.memory_info().rss,
            load_avg=_load_avg(),
        )

    return sample


def _one_task(stored: StoredEvent, task_id: str) -> StoredEvent:
    """``stored``, with a plan cut down to ``task_id``'s own entry.

    Admission looks at one task; folding a plan of thousands to find it would build a
    view of every one of them for each work item.
    """
    event = stored.envelope.payload
    payload: RunPlanned | RunRetried
    if isinstance(event, RunPlanned):
        mine = tuple(spec for spec in event.tasks if spec.task_id == task_id)
        payload = msgspec.structs.replace(event, tasks=mine)
    elif isinstance(event, RunRetried):
        # Cut the same way: a retried task the cut plan does not have would be an anomaly
        # that voids the whole retry, and this task with it.
        ids = tuple(t for t in event.task_ids if t == task_id)
        payload = msgspec.structs.replace(event, task_ids=ids)
    else:
        return stored
    return msgspec.structs.replace(
        stored, envelope=msgspec.structs.replace(stored.envelope, payload=payload)
    )
