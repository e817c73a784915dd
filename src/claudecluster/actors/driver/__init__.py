"""The driver's decisions, free of I/O: what to record, dispatch, merge and roll back next.

:func:`decide` takes one message (a stored event in log order, a command, the outcome of
an effect, or a clock tick) and returns the effects the shell must carry out. The same
function runs live (runtime/driver.py), after a crash (replay the log, then tick), and in
the deterministic simulations on a virtual clock.

The decisions are level-triggered: after every message the driver looks at where each
touched run stands and asks for whatever is missing (a plan, a dispatch, a merge, a
retry, the run's end). So a restarted driver needs no memory of what it was doing: the
log says where things stand, and every effect is idempotent (deterministic event ids,
appends conditional on the last sequence of their scope, work-message ids per attempt).
While an effect is in flight its key is *pending*, and it stays pending until the log has
caught up with what the effect recorded, so nothing is asked for twice.

A message costs what it concerns, not the number of open runs: a :class:`Tick` looks only
at runs with a timer due (a retry) and, while the caps and the pace allow a start, at
runs waiting for one (``want_start``, ``want_room``). Every other change to a run comes
with a message that touches it, so a tick has nothing to find there.

Scheduling rules, in order:

* a task is released when every dependency has **merged** (not merely succeeded), so its
  workspace starts from a base that contains its dependencies' changes;
* ready tasks go by the longest remaining path first, then priority, then plan order;
* starts are capped per run and globally, paced by a token bucket, slowed fleet-wide
  while the API reports rate limits, and stopped when the run's budget is spent;
* results merge one at a time per run, in the order they succeeded, which is a
  topological order because dependents only start after their dependencies merged.
"""

from __future__ import annotations

from claudecluster.actors.driver.decide import decide
from claudecluster.actors.driver.effects import (
    Dispatch,
    DriverConfig,
    Effect,
    EffectFailed,
    EffectSettled,
    Merge,
    MergeBatch,
    Message,
    Plan,
    PublishCommand,
    Record,
    Resume,
    Retry,
    Rollback,
    Tick,
    Verify,
    WorkerSeen,
)
from claudecluster.actors.driver.reconcile import retry_limits
from claudecluster.actors.driver.state import DriverState, RunBook

__all__ = [
    "Dispatch",
    "DriverConfig",
    "DriverState",
    "Effect",
    "EffectFailed",
    "EffectSettled",
    "Merge",
    "MergeBatch",
    "Message",
    "Plan",
    "PublishCommand",
    "Record",
    "Resume",
    "Retry",
    "Rollback",
    "RunBook",
    "Tick",
    "Verify",
    "WorkerSeen",
    "decide",
    "retry_limits",
]
