"""ClaudeCluster: many Claude Code agents in parallel on one goal, over NATS JetStream.

The curated public API. Everything else is importable from its module but may change.
The names are imported on first use (PEP 562), so a program that needs one part (the
command line's ``--help``) does not load the others.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
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

#: public name -> the module that defines it
_HOMES: dict[str, str] = {
    **dict.fromkeys(
        ("ClusterError", "ConcurrencyError", "ConfigError", "EventDecodeError",
         "EventStoreError", "LocalError", "RemoteError"),
        "claudecluster.errors",
    ),
    **dict.fromkeys(
        ("CommandEnvelope", "EventEnvelope", "StoredEvent", "decode_command", "decode_event",
         "encode", "wrap_command", "wrap_event"),
        "claudecluster.events",
    ),
    **dict.fromkeys(("ClusterView", "apply", "replay"), "claudecluster.projections"),
    **dict.fromkeys(("EventLog", "MemoryEventLog", "read_all"), "claudecluster.transport"),
}  # fmt: skip


def __getattr__(name: str) -> Any:
    """Import a public name from its module on first use."""
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'claudecluster' has no attribute {name!r}")
    value = getattr(importlib.import_module(home), name)
    globals()[name] = value
    return value
