"""Reads of one run that read one run: the server filters the log to the run's subjects.

A run's events are all on ``cc.evt.<run>.>`` (its own and its tasks'), and the projections
of runs, tasks and costs need nothing else, so ``status RUN``, ``logs RUN/TASK``,
``export RUN`` and ``replay --run`` ask for that filter and cost what the run wrote, not
what the whole log holds (which, a cluster's lifetime on, is mostly other runs).
"""

from __future__ import annotations

from claudecluster.errors import InvalidIdError
from claudecluster.events.envelope import StoredEvent
from claudecluster.events.subjects import run_filter
from claudecluster.projections.cluster import ClusterView, replay
from claudecluster.transport.base import EventLog, read_all

__all__ = ["read_run", "run_of_ref"]


async def read_run(
    log: EventLog, run_id: str, *, until_seq: int | None = None
) -> list[StoredEvent]:
    """Every stored event of run ``run_id`` (up to stream sequence ``until_seq``).

    Raises:
        InvalidIdError: ``run_id`` cannot be a run id (so no run has it).
        EventStoreError: the log could not be read.
    """
    stored = await read_all(log, subjects=run_filter(run_id))
    if until_seq is not None:
        stored = [event for event in stored if event.seq <= until_seq]
    return stored


async def run_of_ref(log: EventLog, ref: str) -> tuple[str, ClusterView, list[StoredEvent]] | None:
    """The run a reference names on its own (``RUN`` or ``RUN/TASK``), its view and events.

    None when the reference does not name a run the log knows: a bare task id, whose run
    only the view of every run can tell, or nothing at all.

    Raises:
        EventStoreError: the log could not be read.
    """
    run_id = ref.partition("/")[0]
    try:
        stored = await read_run(log, run_id)
    except InvalidIdError:
        return None
    view = replay(stored)
    if run_id not in view.runs:
        return None
    return run_id, view, stored
