"""Small helpers for tests: ports, waiting, building envelopes."""

from __future__ import annotations

import socket
import subprocess
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from datetime import UTC, datetime, timedelta
from itertools import count
from pathlib import Path

import anyio

from claudecluster.actors.driver import DriverConfig
from claudecluster.events.envelope import EventEnvelope, StoredEvent, wrap_event
from claudecluster.events.model import Event
from claudecluster.events.subjects import ALL_EVENTS
from claudecluster.observability.redaction import Redactor
from claudecluster.runtime.driver import Driver, DriverOptions
from claudecluster.simulation.clock import virtual_now
from claudecluster.simulation.repositories import ScriptedRunRepositories
from claudecluster.transport.base import AppendResult, EventLog, QuarantinedMessage, read_all
from claudecluster.transport.infrastructure import Infrastructure

__all__ = [
    "EnvelopeFactory",
    "commit_all",
    "free_port",
    "git_output",
    "make_repo",
    "wait_for_events",
    "wait_for_port",
]

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def free_port() -> int:
    """A loopback port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_for_port(port: int, timeout: float = 15.0) -> None:
    """Block until something accepts TCP connections on the loopback port."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.02)
    raise TimeoutError(f"nothing listens on port {port} after {timeout}s")


class EnvelopeFactory:
    """Wraps events with unique ids and a clock that ticks one second per event."""

    def __init__(self, prefix: str = "t") -> None:
        self._prefix = prefix
        self._counter = count(1)

    def __call__(self, event: Event, *, event_id: str | None = None) -> EventEnvelope:
        n = next(self._counter)
        return wrap_event(
            event, event_id=event_id or f"{self._prefix}-{n}", now=T0 + timedelta(seconds=n)
        )


def git_output(repo: Path, *args: str) -> str:
    """Run git in ``repo`` (as a test's own setup step) and return its output."""
    return subprocess.run(
        ["git", "-C", str(repo), *args], check=True, capture_output=True, text=True
    ).stdout


def make_repo(path: Path, files: dict[str, str]) -> Path:
    """A git repository at ``path`` on branch main with one commit holding ``files``."""
    path.mkdir(parents=True)
    git_output(path, "init", "-q", "-b", "main")
    for name, text in files.items():
        (path / name).parent.mkdir(parents=True, exist_ok=True)
        (path / name).write_text(text)
    commit_all(path, "base")
    return path


def commit_all(repo: Path, message: str) -> None:
    """Commit everything in ``repo`` as a test user."""
    git_output(repo, "add", "-A")
    git_output(repo, "-c", "user.name=u", "-c", "user.email=u@x", "commit", "-q", "-m", message)


async def wait_for_events(
    log: EventLog, check: Callable[[list[Event]], bool], *, limit_s: float
) -> list[Event]:
    """Every event of ``log`` once ``check`` holds for them: the log as it is then.

    Followed live from the start of the log: each new event is looked at once, instead
    of the whole log being read again every few tenths of a second. Once ``check`` holds,
    what else is stored by then is read too, so the answer is the whole log at that
    moment, as a poll would have seen it.

    Raises:
        TimeoutError: ``check`` did not hold within ``limit_s``.
    """
    seen: list[Event] = []
    with anyio.fail_after(limit_s):
        last = 0
        if not check(seen):
            async with log.open_reader(follow=True) as events:
                async for stored in events:
                    seen.append(stored.envelope.payload)
                    last = stored.seq
                    if check(seen):
                        break
                else:
                    raise AssertionError("the log's following reader ended")
        seen.extend(s.envelope.payload for s in await read_all(log, from_seq=last + 1))
    return seen


def virtual_driver(infra: Infrastructure, *, seed: int, log: EventLog | None = None) -> Driver:
    """The real driver shell for the virtual-clock tests: the in-memory seams, trio's
    clock as its time, scripted repositories drawn from ``seed``, workers lost after 30
    silent seconds, no snapshots (a test's log is short). ``log`` is the driver's view of
    ``infra.log`` when a test stands between the two."""
    return Driver(
        log or infra.log,
        options=DriverOptions(
            config=DriverConfig(lost_after_s=30), tick_s=0.5, now=virtual_now,
            snapshot_every_events=0,
        ),
        infrastructure=infra,
        repositories=ScriptedRunRepositories(seed=seed),
    )  # fmt: skip


class ForwardingLog:
    """An event log that hands every call to ``inner``: a test overrides what it stands
    between (an append to hold, the events a reader is handed)."""

    def __init__(self, inner: EventLog) -> None:
        self.inner = inner

    @property
    def redactor(self) -> Redactor:
        return self.inner.redactor

    async def append(
        self, envelope: EventEnvelope, *, expected_last: int | None = None
    ) -> AppendResult:
        return await self.inner.append(envelope, expected_last=expected_last)

    def open_reader(
        self, *, from_seq: int = 1, subjects: str = ALL_EVENTS, follow: bool = False
    ) -> AbstractAsyncContextManager[AsyncIterator[StoredEvent]]:
        return self.inner.open_reader(from_seq=from_seq, subjects=subjects, follow=follow)

    async def last_seq(self, subjects: str = ALL_EVENTS) -> int:
        return await self.inner.last_seq(subjects)

    async def quarantined(self) -> list[QuarantinedMessage]:
        return await self.inner.quarantined()

    async def quarantine_refused(self, stored: StoredEvent, reason: str) -> None:
        await self.inner.quarantine_refused(stored, reason)
