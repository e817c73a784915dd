"""The autoscaler's shell: follow the log, size the pool, tell a backend, record why.

``claudecluster autoscale`` runs one of these per pool. It decides with
:func:`~claudecluster.actors.scaling.decide_pool_size` from its own cluster view (it
shares nothing with the driver) and carries the decision out through a
:class:`PoolBackend`:

- :class:`LocalProcessBackend` starts and stops ``claudecluster worker`` processes on this
  host (a stopped worker drains: it finishes or hands back what it holds);
- :class:`CommandBackend` runs an operator's command with the wanted count, such as
  ``docker compose up -d --scale worker={n}`` or
  ``kubectl scale deployment/worker --replicas={n}``.

Every change is recorded as ``pool.scaled`` with its reason, every refused one as
``pool.scale_failed`` with what the backend said, so ``claudecluster replay`` and the
event stream show why the pool has the size it has.
"""

from __future__ import annotations

import secrets
import shlex
import signal
import sys
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from itertools import count
from pathlib import Path
from typing import Final, Protocol

import anyio
import anyio.abc

from claudecluster.actors.scaling import (
    PoolBounds,
    PoolTarget,
    ScalerState,
    decide_pool_size,
    pool_demand,
)
from claudecluster.errors import ClusterError, EventStoreError
from claudecluster.events import EventEnvelope, PoolScaled, PoolScaleFailed, wrap_event
from claudecluster.events.event_ids import pool_scale_id
from claudecluster.observability.logging import get_logger
from claudecluster.projections.cluster import ClusterView
from claudecluster.runtime.live_view import LiveView
from claudecluster.transport.base import EventLog

__all__ = [
    "CommandBackend",
    "LocalProcessBackend",
    "PoolAutoscaler",
    "PoolBackend",
    "PoolBackendError",
    "RecordingBackend",
]

_log = get_logger(__name__)

#: How long an operator's command may take (``docker compose`` pulling an image is slow).
COMMAND_TIMEOUT_S: Final = 300.0
#: How long a stopped local worker may take to drain before it is killed.
DRAIN_TIMEOUT_S: Final = 120.0
#: How long a decision already carried out may wait for the log to record it.
APPEND_PATIENCE_S: Final = 60.0
#: How much of a failing command's output an event carries.
_ERROR_CHARS: Final = 500


class PoolBackendError(ClusterError):
    """A backend could not make the size it was asked for."""


class PoolBackend(Protocol):
    """What starts and stops a pool's workers."""

    name: str

    def size(self) -> int | None:
        """The size it last made, or None when it does not know (then the cluster view's
        count of the pool's active workers is used)."""
        ...

    async def scale_to(self, workers: int) -> None:
        """Make the pool ``workers`` big.

        Raises:
            PoolBackendError: it could not.
        """
        ...

    async def aclose(self) -> None:
        """Stop what it started, if anything; the autoscaler is ending."""
        ...


class RecordingBackend:
    """The in-memory twin: remembers every size asked for, and can be told to fail."""

    name = "recording"

    def __init__(self, *, fail_with: str | None = None) -> None:
        self.asked: list[int] = []
        self.fail_with = fail_with
        self._size: int | None = None

    def size(self) -> int | None:
        return self._size

    async def scale_to(self, workers: int) -> None:
        self.asked.append(workers)
        if self.fail_with is not None:
            raise PoolBackendError(self.fail_with)
        self._size = workers

    async def aclose(self) -> None:
        """Nothing to stop."""


class CommandBackend:
    """Runs an operator's command with the wanted count.

    The template is split like a shell would (``shlex``) and run without one; ``{n}`` and
    ``{pool}`` are replaced inside each word, so a count can never become more words or a
    second command. The command must be idempotent in ``n`` (``--scale worker={n}`` and
    ``--replicas={n}`` are), since the size is what it is asked for, not a difference.
    """

    name = "command"

    def __init__(
        self,
        template: str,
        *,
        pool: str,
        timeout_s: float = COMMAND_TIMEOUT_S,
        env: Mapping[str, str] | None = None,
    ) -> None:
        words = shlex.split(template)
        if not words:
            raise ValueError("the scale command is empty")
        if not any("{n}" in word for word in words):
            raise ValueError(f"the scale command never says {{n}}: {template!r}")
        self._words = words
        self._pool = pool
        self._timeout_s = timeout_s
        self._env = dict(env) if env is not None else None
        self._size: int | None = None

    def command_for(self, workers: int) -> list[str]:
        """The command line that asks for ``workers``."""
        return [w.replace("{n}", str(workers)).replace("{pool}", self._pool) for w in self._words]

    def size(self) -> int | None:
        return self._size

    async def scale_to(self, workers: int) -> None:
        command = self.command_for(workers)
        try:
            with anyio.fail_after(self._timeout_s):
                done = await anyio.run_process(command, check=False, env=self._env)
        except TimeoutError as exc:
            raise PoolBackendError(
                f"{shlex.join(command)} did not finish within {self._timeout_s:g}s"
            ) from exc
        except OSError as exc:
            raise PoolBackendError(f"{shlex.join(command)} could not start: {exc}") from exc
        if done.returncode != 0:
            said = (done.stderr or done.stdout).decode(errors="replace").strip()
            raise PoolBackendError(
                f"{shlex.join(command)} exited {done.returncode}: {said[-_ERROR_CHARS:]}"
            )
        self._size = workers

    async def aclose(self) -> None:
        """Nothing to stop: the workers the command started are the operator's."""


class LocalProcessBackend:
    """``claudecluster worker`` processes on this host, started and stopped to size.

    Args:
        worker_args: the worker's arguments after ``claudecluster worker`` (NATS URL,
            credentials, pool, slots, workspace root ...).
        env: their environment (default: this process's).
        log_dir: where each worker's output goes (``worker-<n>.log``).
    """

    name = "local"

    def __init__(
        self,
        worker_args: Sequence[str],
        *,
        log_dir: Path,
        env: Mapping[str, str] | None = None,
        executable: Sequence[str] = (sys.executable, "-m", "claudecluster"),
    ) -> None:
        self._command = [*executable, "worker", *worker_args]
        self._env = dict(env) if env is not None else None
        self._log_dir = log_dir
        self._started = count(1)
        self._processes: list[anyio.abc.Process] = []

    def size(self) -> int:
        self._processes = [p for p in self._processes if p.returncode is None]
        return len(self._processes)

    async def scale_to(self, workers: int) -> None:
        while self.size() < workers:
            self._log_dir.mkdir(parents=True, exist_ok=True)
            path = self._log_dir / f"worker-{next(self._started)}.log"
            try:
                with path.open("ab") as out:
                    process = await anyio.open_process(
                        self._command, env=self._env, stdout=out, stderr=out
                    )
            except OSError as exc:
                raise PoolBackendError(f"cannot start a worker: {exc}") from exc
            self._processes.append(process)
        # The newest first: the oldest have the warmest repository caches.
        surplus = self._processes[workers:]
        self._processes = self._processes[:workers]
        for process in surplus:
            process.send_signal(signal.SIGTERM)  # drains: see claudecluster worker
        async with anyio.create_task_group() as group:
            for process in surplus:
                group.start_soon(_reap, process)

    async def aclose(self) -> None:
        with anyio.CancelScope(shield=True):
            await self.scale_to(0)


async def _reap(process: anyio.abc.Process) -> None:
    """Wait for a stopped worker to drain; kill it if it does not in time."""
    with anyio.move_on_after(DRAIN_TIMEOUT_S):
        await process.wait()
    if process.returncode is None:
        process.kill()
        await process.wait()
    await process.aclose()


class PoolAutoscaler:
    """Keeps one pool sized to its work, within bounds, through a backend.

    Args:
        log: the event log (followed for the view, appended to for the decisions).
        backend: what starts and stops the workers.
        pool: the pool.
        bounds: what it may do.
        scaler_id: who decides, in the events (``driver_id``).
        interval_s: how often to decide.
    """

    def __init__(
        self,
        log: EventLog,
        backend: PoolBackend,
        *,
        pool: str,
        bounds: PoolBounds,
        scaler_id: str,
        interval_s: float = 1.0,
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        problem = bounds.problem()
        if problem is not None:
            raise ValueError(problem)
        self._log = log
        self._backend = backend
        self._pool = pool
        self._bounds = bounds
        self._scaler_id = scaler_id
        self._interval_s = interval_s
        self._now = now
        self._live = LiveView(log)
        self._state = ScalerState()
        self._counter = count(1)
        self._nonce = secrets.token_hex(3)
        self.decisions: list[PoolScaled | PoolScaleFailed] = []

    async def run(
        self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Size the pool until cancelled; then the backend stops what it started."""
        try:
            async with anyio.create_task_group() as group:
                await group.start(self._live.follow)
                await self.step()  # the minimum, before anyone waits on it
                task_status.started()
                while True:
                    await anyio.sleep(self._interval_s)
                    await self.step()
        finally:
            await self._backend.aclose()

    @property
    def _view(self) -> ClusterView:
        return self._live.view

    def current(self) -> int:
        """The pool's size: the backend's own count, else the view's active workers."""
        known = self._backend.size()
        if known is not None:
            return known
        return sum(
            1 for w in self._view.workers.values() if w.pool == self._pool and w.state == "active"
        )

    async def step(self) -> PoolTarget | None:
        """Decide once, and carry out and record the decision; returns it (None: none)."""
        now = self._now()
        before = self.current()
        demand = pool_demand(self._view, self._pool)
        self._state, target = decide_pool_size(self._state, demand, before, self._bounds, now)
        if target is None:
            return None
        _log.info("scaling the pool", pool=self._pool, backend=self._backend.name,
                  before=before, after=target.workers, reason=target.reason)  # fmt: skip
        event: PoolScaled | PoolScaleFailed
        try:
            await self._backend.scale_to(target.workers)
        except PoolBackendError as exc:
            _log.warning("the pool could not be scaled", pool=self._pool, error=str(exc))
            event = PoolScaleFailed(
                driver_id=self._scaler_id, pool=self._pool, backend=self._backend.name,
                workers_before=before, workers_wanted=target.workers, reason=target.reason,
                error=str(exc)[:_ERROR_CHARS],
            )  # fmt: skip
        else:
            event = PoolScaled(
                driver_id=self._scaler_id, pool=self._pool, backend=self._backend.name,
                workers_before=before, workers_after=target.workers, reason=target.reason,
            )  # fmt: skip
        event_id = pool_scale_id(self._scaler_id, self._pool, next(self._counter), self._nonce)
        await self._record(wrap_event(event, event_id=event_id, now=now))
        self.decisions.append(event)
        return target

    async def _record(self, envelope: EventEnvelope) -> None:
        """Append a decision already carried out, the same envelope again while the
        server is away (its id makes a repeat harmless), for up to ``APPEND_PATIENCE_S``."""
        with anyio.fail_after(APPEND_PATIENCE_S):
            while True:
                try:
                    await self._log.append(envelope)
                except EventStoreError as exc:
                    _log.warning("recording a pool decision failed; trying again",
                                 event=envelope.id, error=str(exc))  # fmt: skip
                    await anyio.sleep(0.5)
                else:
                    return
