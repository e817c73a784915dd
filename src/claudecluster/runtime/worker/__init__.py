"""The worker actor's shell, by concern: :mod:`.serve` (the serve loop: slots, claims,
commands, membership), :mod:`.attempt` (one attempt: workspace, agent, result),
:mod:`.transcripts` (the transcript mirror), :mod:`.workspaces` (copying files in, sweeping
orphans), :mod:`.failures` (classifying how an attempt ended) and :mod:`.config`. Workspace
preparation from the repository's bundles is :mod:`claudecluster.runtime.workspace_preparation`;
the decisions are pure, in :mod:`claudecluster.actors.worker`.
"""

from claudecluster.runtime.worker.config import (
    Origin,
    Superseded,
    WorkerConfig,
    new_worker_id,
    this_process,
)
from claudecluster.runtime.worker.serve import HostLoad, Worker

__all__ = [
    "HostLoad",
    "Origin",
    "Superseded",
    "Worker",
    "WorkerConfig",
    "new_worker_id",
    "this_process",
]
