"""Pure projections: folds of the event log into queryable views.

Every reader builds its state with :func:`apply` (one event) or :func:`replay` (many); the
folds never perform I/O, so live state, replayed state and simulated state agree.
"""

from claudecluster.projections.cluster import (
    ClusterView,
    apply,
    from_snapshot,
    replay,
    to_snapshot,
)
from claudecluster.projections.views import (
    Anomaly,
    CostView,
    RunView,
    TaskView,
    WorkerView,
    task_key,
)

__all__ = [
    "Anomaly",
    "ClusterView",
    "CostView",
    "RunView",
    "TaskView",
    "WorkerView",
    "apply",
    "from_snapshot",
    "replay",
    "task_key",
    "to_snapshot",
]
