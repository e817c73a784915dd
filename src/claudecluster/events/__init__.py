"""The event catalogue: typed events and commands, envelopes, codec, subjects, schemas.

This package is pure: it performs no I/O and reads no clock, so the same types serve the
live actors, replay, the simulations and external tools (through the exported schemas).
"""

from claudecluster.events.codec import (
    COMMAND_TYPES,
    EVENT_TYPES,
    decode_command,
    decode_event,
    decode_stored_event,
    encode,
)
from claudecluster.events.envelope import (
    CommandEnvelope,
    EventEnvelope,
    StoredEvent,
    wrap_command,
    wrap_event,
)
from claudecluster.events.model import *  # noqa: F403 - the model's __all__ is curated
from claudecluster.events.model import __all__ as _model_all
from claudecluster.events.subjects import (
    command_subject,
    event_subject,
    run_filter,
    task_filter,
    worker_filter,
)

__all__ = [
    "COMMAND_TYPES",
    "EVENT_TYPES",
    "CommandEnvelope",
    "EventEnvelope",
    "StoredEvent",
    "command_subject",
    "decode_command",
    "decode_event",
    "decode_stored_event",
    "encode",
    "event_subject",
    "run_filter",
    "task_filter",
    "worker_filter",
    "wrap_command",
    "wrap_event",
    *_model_all,
]
