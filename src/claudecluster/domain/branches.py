"""The names of the git branches and refs a run uses, in one place.

The driver, the workers, the simulations and the sample logs all name the same branches;
each asks here. Ids are subject tokens (no dot, no slash), so these names cannot collide
between runs or tasks.
"""

from __future__ import annotations

__all__ = ["integration_branch", "result_ref", "task_branch"]


def integration_branch(run_id: str) -> str:
    """The branch a run's results are merged onto, in the run's repository."""
    return f"claudecluster/{run_id}"


def task_branch(run_id: str, task_id: str) -> str:
    """The branch an attempt's work is committed on, in the worker's workspace."""
    return f"claudecluster/{run_id}/{task_id}"


def result_ref(run_id: str, task_id: str, attempt: int) -> str:
    """Where the driver keeps an attempt's result, fetched from its bundle."""
    return f"refs/claudecluster/results/{run_id}/{task_id}/{attempt}"
