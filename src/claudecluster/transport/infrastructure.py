"""Every I/O seam an actor shell uses, in one object: the real set on NATS, or the twins.

The driver and worker shells take an :class:`Infrastructure` instead of a NATS client, so
the same shells run on JetStream in production and on :func:`memory_infrastructure` in a
single process (a simulator on a virtual clock, a fast test). Each seam is a Protocol with a
contract suite run against both implementations (``tests/transport/test_*contract*.py``,
``test_liveness.py``, ``test_snapshots.py``, ``test_transcripts.py``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import anyio
from nats.aio.client import Client

from claudecluster.transport.artifacts import (
    ArtifactStore,
    JetStreamArtifactStore,
    MemoryArtifactStore,
)
from claudecluster.transport.base import EventLog
from claudecluster.transport.commands import (
    CommandBus,
    CommandFeed,
    CommandInbox,
    JetStreamCommandBus,
    JetStreamCommandFeed,
    JetStreamCommandInbox,
    MemoryCommands,
)
from claudecluster.transport.leases import JetStreamLeaseStore, LeaseStore, MemoryLeaseStore
from claudecluster.transport.liveness import (
    JetStreamWorkerRegistry,
    MemoryWorkerRegistry,
    WorkerRegistry,
)
from claudecluster.transport.memory import MemoryEventLog
from claudecluster.transport.snapshots import (
    JetStreamSnapshotStore,
    MemorySnapshotStore,
    SnapshotStore,
)
from claudecluster.transport.transcripts import JetStreamTranscriptStore, MemoryTranscriptStore
from claudecluster.transport.work_queue import JetStreamWorkQueue, MemoryWorkQueue, WorkQueue

if TYPE_CHECKING:
    from claude_agent_sdk import SessionStore

__all__ = ["Infrastructure", "jetstream_infrastructure", "memory_infrastructure"]


@dataclass(frozen=True, slots=True)
class Infrastructure:
    """The seams of one process's actors.

    Attributes:
        log: the event log.
        queue: pools' work queues.
        artifacts: bundles, diffstats, archives.
        commands: where commands are published.
        inbox: the driver's durable read of the commands (ack once recorded).
        feed: the workers' live view of the commands.
        registry: who is alive (``cc_workers``).
        transcripts: Claude Code session transcripts (``CC_SESSIONS``/``cc_sessions``).
        snapshots: the driver state's snapshots.
        leases: the driver lease a standby waits on.
    """

    log: EventLog
    queue: WorkQueue
    artifacts: ArtifactStore
    commands: CommandBus
    inbox: CommandInbox
    feed: CommandFeed
    registry: WorkerRegistry
    transcripts: SessionStore
    snapshots: SnapshotStore
    leases: LeaseStore


def jetstream_infrastructure(
    log: EventLog,
    client: Client,
    *,
    transfer_client: Client | None = None,
    work_ack_wait_s: float = 30.0,
    command_ack_wait_s: float = 30.0,
) -> Infrastructure:
    """The real seams on ``client``'s JetStream (the topology applied).

    Args:
        log: the event log (its redactor also redacts transcripts).
        client: the connection for everything but big transfers.
        transfer_client: a second connection for artifacts, so big transfers never queue
            ahead of heartbeats and events (default: ``client``).
        work_ack_wait_s: how long a fetched work item stays with its worker.
        command_ack_wait_s: how long a fetched command stays with its driver.
    """
    js = client.jetstream()
    return Infrastructure(
        log=log,
        queue=JetStreamWorkQueue(js, ack_wait_s=work_ack_wait_s),
        artifacts=JetStreamArtifactStore((transfer_client or client).jetstream()),
        commands=JetStreamCommandBus(js),
        inbox=JetStreamCommandInbox(js, ack_wait_s=command_ack_wait_s),
        feed=JetStreamCommandFeed(client),
        registry=JetStreamWorkerRegistry(js),
        transcripts=JetStreamTranscriptStore(js, redactor=log.redactor),
        snapshots=JetStreamSnapshotStore(js),
        leases=JetStreamLeaseStore(js),
    )


def memory_infrastructure(
    *,
    log: EventLog | None = None,
    work_ack_wait_s: float = 30.0,
    command_ack_wait_s: float = 30.0,
    clock: Callable[[], float] | None = None,
) -> Infrastructure:
    """The in-memory twins, sharing one clock (default: anyio's, so a virtual clock works).

    One object is the command bus, inbox and feed, as one stream is in JetStream.
    """
    now = clock or anyio.current_time
    commands = MemoryCommands(ack_wait_s=command_ack_wait_s, clock=now)
    memory_log = log or MemoryEventLog()
    return Infrastructure(
        log=memory_log,
        queue=MemoryWorkQueue(ack_wait_s=work_ack_wait_s, clock=now),
        artifacts=MemoryArtifactStore(),
        commands=commands,
        inbox=commands,
        feed=commands,
        registry=MemoryWorkerRegistry(),
        transcripts=MemoryTranscriptStore(redactor=memory_log.redactor),
        snapshots=MemorySnapshotStore(),
        leases=MemoryLeaseStore(now),
    )
