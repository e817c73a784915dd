"""The driver lease's decisions: when to take it, when to renew it, when it is lost.

Pure: the shell (:mod:`claudecluster.runtime.standby`) tries what this module asks for
against the ``cc_leases`` bucket and hands back what happened, with the monotonic time
it *sent* the request. Counting the lease's life from the send, not from the answer,
makes the holder's belief end no later than the server's entry: the server starts the
entry's TTL when it stores it, which is after the send. So a holder stops leading at
the latest when a standby may start, whatever the network did in between; the fence in
the event log (:mod:`claudecluster.transport.fenced`) covers the rest (a holder that
was paused between checking and writing).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import Enum

__all__ = [
    "LeaseConfig",
    "LeaseDecision",
    "LeaseFact",
    "LeasePhase",
    "LeaseState",
    "Refused",
    "Renewed",
    "Took",
    "Unreachable",
    "decide_lease",
    "holds",
]


@dataclass(frozen=True, slots=True)
class LeaseConfig:
    """How long a lease lasts and how often it is looked at.

    Attributes:
        ttl_s: the lease's life from its last write.
        renew_s: the holder renews this often (0: a third of ``ttl_s``).
        poll_s: a standby tries to take the lease this often (it also watches the key).
    """

    ttl_s: float = 10.0
    renew_s: float = 0.0
    poll_s: float = 1.0

    @property
    def renew_every_s(self) -> float:
        """The renewal period: a third of the TTL unless configured (never above half)."""
        return min(self.renew_s or self.ttl_s / 3, self.ttl_s / 2)


class LeasePhase(Enum):
    """Whether this driver waits or leads."""

    STANDBY = "standby"
    LEADING = "leading"


@dataclass(frozen=True, slots=True)
class Took:
    """The create (or the holder's own reclaim) succeeded at ``revision``."""

    revision: int
    sent_at: float


@dataclass(frozen=True, slots=True)
class Renewed:
    """The compare-and-set update on our revision succeeded at ``revision``."""

    revision: int
    sent_at: float


@dataclass(frozen=True, slots=True)
class Refused:
    """Another holder has the key, or our revision is no longer the key's last."""

    holder: str = ""


@dataclass(frozen=True, slots=True)
class Unreachable:
    """The bucket could not be asked (a partition, a server down)."""

    error: str = ""


LeaseFact = Took | Renewed | Refused | Unreachable | None
"""What the shell observed; None: only time passed."""


@dataclass(slots=True)
class LeaseState:
    """One driver's view of the lease.

    Attributes:
        config: the lease's timings.
        phase: standby or leading.
        revision: the key's revision this driver wrote last (0 in standby).
        epoch: the revision the current term began with: the fence's epoch.
        valid_until: monotonic time the lease is ours until, counted from the send.
    """

    config: LeaseConfig
    phase: LeasePhase = LeasePhase.STANDBY
    revision: int = 0
    epoch: int = 0
    valid_until: float = -math.inf


@dataclass(frozen=True, slots=True)
class LeaseDecision:
    """What to do next.

    Attributes:
        action: ``take`` (try to create the key) or ``renew`` (update on ``revision``).
        at: monotonic time to do it at (a standby also wakes on a change of the key).
        lead: start a term with this epoch (the driver's first act: fence the log).
        stop: end the term now, for this reason.
    """

    action: str
    at: float
    lead: int | None = None
    stop: str | None = None


def holds(state: LeaseState, now: float) -> bool:
    """Whether this driver may act as the holder at monotonic time ``now``."""
    return state.phase is LeasePhase.LEADING and now < state.valid_until


def _standby(state: LeaseState, now: float, stop: str | None) -> LeaseDecision:
    state.phase = LeasePhase.STANDBY
    state.revision = 0
    state.valid_until = -math.inf
    return LeaseDecision(action="take", at=now + state.config.poll_s, stop=stop)


def decide_lease(state: LeaseState, fact: LeaseFact, now: float) -> LeaseDecision:
    """Fold ``fact`` (observed at monotonic ``now``) into ``state``; say what comes next."""
    config = state.config
    if state.phase is LeasePhase.STANDBY:
        if isinstance(fact, Took):
            state.phase = LeasePhase.LEADING
            state.revision = state.epoch = fact.revision
            state.valid_until = fact.sent_at + config.ttl_s
            return LeaseDecision(
                action="renew", at=fact.sent_at + config.renew_every_s, lead=fact.revision
            )
        return LeaseDecision(action="take", at=now + config.poll_s)
    match fact:
        case Renewed(revision=revision, sent_at=sent_at):
            state.revision = revision
            state.valid_until = max(state.valid_until, sent_at + config.ttl_s)
            if now >= state.valid_until:  # the answer came after the lease ran out
                return _standby(state, now, "the lease ran out before its renewal was confirmed")
            return LeaseDecision(action="renew", at=sent_at + config.renew_every_s)
        case Refused(holder=holder):
            who = f" by {holder}" if holder else ""
            return _standby(state, now, f"the lease was taken over{who} or expired")
        case Took():
            return LeaseDecision(action="renew", at=now)  # not asked for while leading
        case _ if now >= state.valid_until:
            return _standby(state, now, f"the lease could not be renewed within {config.ttl_s}s")
        case Unreachable():
            retry = min(config.poll_s, config.renew_every_s / 2)
            return LeaseDecision(action="renew", at=min(now + retry, state.valid_until))
        case _:
            return LeaseDecision(action="renew", at=now)
