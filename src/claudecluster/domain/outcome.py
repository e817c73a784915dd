"""How one attempt of a task ended, whatever executed it."""

from __future__ import annotations

import msgspec

from claudecluster.events.model import FailureClass, TokenUsage

__all__ = ["Outcome"]


class Outcome(msgspec.Struct, frozen=True, kw_only=True):
    """How one agent run ended, with what it cost.

    ``rate_limited`` is set when the API refused for rate limits (429) or overload (529),
    so the driver can slow every worker down, not only retry this task.
    """

    succeeded: bool
    summary: str = ""
    #: the agent's whole final answer (``summary`` is clipped to one line for events)
    result_text: str = ""
    reason: str = ""
    failure_class: FailureClass | None = None
    retryable: bool = False
    rate_limited: bool = False
    api_error_status: int | None = None
    cost_usd: float = 0.0
    usage: TokenUsage = TokenUsage()
    turns: int = 0
    duration_ms: int = 0
    #: the part of duration_ms spent waiting on the model (Claude Code's duration_api_ms)
    model_time_ms: int = 0
    session_id: str = ""
