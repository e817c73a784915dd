"""Recording a message a reader could not decode or apply, so it can be skipped for good.

The event log's reader (:mod:`claudecluster.transport.jetstream`) and the work queue have
their own subjects under ``cc.quarantine``; this is the same record for any other stream's
message, the command stream's first: the message's bytes with the reason in headers, on
``cc.quarantine.<origin>``, deduplicated per origin stream sequence.
"""

from __future__ import annotations

from typing import Final

import nats.errors
from nats.js import JetStreamContext

from claudecluster.events.subjects import QUARANTINE_PREFIX
from claudecluster.observability.logging import get_logger
from claudecluster.transport.streams import QUARANTINE_STREAM

__all__ = ["quarantine"]

_log = get_logger(__name__)
#: A NATS header value is one line; a reason longer than this is cut.
_MAX_REASON: Final = 1_000


async def quarantine(
    js: JetStreamContext,
    *,
    origin: str,
    origin_stream: str,
    subject: str,
    seq: int,
    reason: str,
    data: bytes,
    timeout_s: float = 5.0,
) -> None:
    """Record ``data`` on ``cc.quarantine.<origin>`` with the reason; never raises.

    The reader goes on past the message whether or not the record is written: the message
    itself stays where it was, so nothing is destroyed, and a lost record is logged.

    Args:
        js: a JetStream context with the topology applied.
        origin: the last subject token (``cmd``, ``evt``, ``work``).
        origin_stream: the stream the message came from (part of the deduplication id).
        subject: the message's subject.
        seq: its sequence in ``origin_stream``.
        reason: why it was skipped.
        data: its bytes.
        timeout_s: seconds to wait for the server.
    """
    one_line = " ".join(reason.split())[:_MAX_REASON]
    _log.warning("message quarantined", subject=subject, seq=seq, reason=one_line)
    try:
        await js.publish(
            f"{QUARANTINE_PREFIX}.{origin}",
            data,
            timeout=timeout_s,
            stream=QUARANTINE_STREAM,
            headers={
                "Nats-Msg-Id": f"quarantine-{origin_stream}-{seq}",
                "Cc-Origin-Subject": subject,
                "Cc-Origin-Seq": str(seq),
                "Cc-Reason": one_line,
            },
        )
    except (nats.errors.Error, TimeoutError) as exc:
        _log.error("quarantine record not written", subject=subject, seq=seq, error=repr(exc))
