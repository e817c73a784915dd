"""ClaudeCluster: many Claude Code agents in parallel on one goal, over NATS JetStream.

The curated public API. Everything else is importable from its module but may change.
"""

from claudecluster.errors import (
    ClusterError,
    ConcurrencyError,
    ConfigError,
    EventDecodeError,
    EventStoreError,
    LocalError,
    RemoteError,
)
from claudecluster.events import (
    CommandEnvelope,
    EventEnvelope,
    StoredEvent,
    decode_command,
    decode_event,
    encode,
    wrap_command,
    wrap_event,
)
from claudecluster.projections import ClusterView, apply, replay
from claudecluster.transport import EventLog, MemoryEventLog, read_all

__all__ = [
    "ClusterError",
    "ClusterView",
    "CommandEnvelope",
    "ConcurrencyError",
    "ConfigError",
    "EventDecodeError",
    "EventEnvelope",
    "EventLog",
    "EventStoreError",
    "LocalError",
    "MemoryEventLog",
    "RemoteError",
    "StoredEvent",
    "apply",
    "decode_command",
    "decode_event",
    "encode",
    "read_all",
    "replay",
    "wrap_command",
    "wrap_event",
]

__version__ = "0.1.0"
