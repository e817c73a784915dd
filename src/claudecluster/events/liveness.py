"""A worker's liveness record: what it puts in the ``cc_workers`` registry every few seconds.

Liveness is not history. A ``worker.heartbeat`` event every 5 s per worker was 345,000
events a day for 20 idle workers, and every reader of the log replayed them. So the
heartbeat lives in the JetStream KV bucket ``cc_workers`` (one key per worker, a TTL, one
revision kept), and the event log keeps what matters later: a worker joined, left or was
lost, and which attempt it held (``task.assigned``). Old logs that hold heartbeat events
still read: the projections fold them as before.

The record is versioned like an event: new fields get defaults, and a reader skips an
entry it cannot decode (naming it) rather than trusting it.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Final

import msgspec

from claudecluster.errors import EventDecodeError

__all__ = ["LIVENESS_VERSION", "WorkerLiveness", "decode_liveness", "encode_liveness"]

#: The layout version of :class:`WorkerLiveness` (bumped on an incompatible change).
LIVENESS_VERSION: Final = 1

_NonNegative = Annotated[float, msgspec.Meta(ge=0)]
_Count = Annotated[int, msgspec.Meta(ge=0)]


class WorkerLiveness(msgspec.Struct, frozen=True, kw_only=True):
    """A worker is alive at ``at``; what it is doing and how loaded its machine is.

    The fields are those the ``worker.heartbeat`` event carried, plus when and which pool.
    """

    worker_id: str
    at: Annotated[datetime, msgspec.Meta(tz=True)]
    pool: str = "default"
    slots: Annotated[int, msgspec.Meta(ge=1)] = 1
    slots_free: _Count = 0
    running_tasks: tuple[str, ...] = ()
    cpu_percent: _NonNegative = 0.0
    memory_bytes: _Count = 0
    load_avg: _NonNegative = 0.0
    version: int = LIVENESS_VERSION


_DECODER: Final = msgspec.json.Decoder(WorkerLiveness)
_ENCODER: Final = msgspec.json.Encoder()


def encode_liveness(record: WorkerLiveness) -> bytes:
    """The registry value for ``record`` (JSON, so ``nats kv get`` shows it readably)."""
    return _ENCODER.encode(record)


def decode_liveness(data: bytes) -> WorkerLiveness:
    """The record in a registry value.

    Raises:
        EventDecodeError: the value is not a liveness record of this version (an entry
            written by a worker of another layout, or not by a worker at all).
    """
    try:
        record = _DECODER.decode(data)
    except msgspec.DecodeError as exc:
        raise EventDecodeError("$", f"not a worker liveness record: {exc}") from None
    if record.version != LIVENESS_VERSION:
        raise EventDecodeError(
            "$.version",
            f"worker liveness record of version {record.version}, "
            f"this reader knows {LIVENESS_VERSION}",
        )
    return record
