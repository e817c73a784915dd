"""The costs projection: money and tokens per run, keyed by run id.

Every finished attempt is billed, including failed ones and results of superseded
attempts: the money was spent whether or not the result is used.
"""

from __future__ import annotations

from typing import Final

from immutables import Map

from claudecluster.events.envelope import EventEnvelope
from claudecluster.events.model import EventBase, TaskFailed, TaskSucceeded
from claudecluster.projections.views import CostView

__all__ = ["COSTS_READS", "Costs", "apply_costs"]

Costs = Map[str, CostView]

#: The event types :func:`apply_costs` folds; any other leaves the projection as it is,
#: so the cluster fold does not call it for them (property-tested).
COSTS_READS: Final[frozenset[type[EventBase]]] = frozenset({TaskSucceeded, TaskFailed})


def apply_costs(costs: Costs, envelope: EventEnvelope) -> tuple[Costs, None]:
    """Fold one event into the costs projection; every event fits, so no anomaly."""
    event = envelope.payload
    if not isinstance(event, TaskSucceeded | TaskFailed):
        return costs, None
    known = costs.get(event.run_id) or CostView(run_id=event.run_id)
    view = CostView(
        run_id=event.run_id,
        cost_usd=known.cost_usd + event.cost_usd,
        usage=known.usage + event.usage,
        attempts_billed=known.attempts_billed + 1,
    )
    return costs.set(event.run_id, view), None
