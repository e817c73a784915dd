"""Names of the directories a worker makes: one per attempt, one per slot, never shared.

Ids are subject tokens (:func:`~claudecluster.events.model.is_id`): they hold no dot. Joining
them with dots is therefore injective: two different (run, task, attempt) triples cannot
name the same directory, as joining with ``-`` did (run ``a-b`` task ``c`` and run ``a``
task ``b-c`` were both ``a-b-c-1``).
"""

from __future__ import annotations

from claudecluster.events.model import is_id

__all__ = ["attempt_dir_name", "slot_dir_name"]


def _check(kind: str, value: str) -> str:
    if not is_id(value):
        raise ValueError(f"{kind} {value!r} is not an id (letters, digits, '-', '_')")
    return value


def attempt_dir_name(run_id: str, task_id: str, attempt: int) -> str:
    """The scratch directory of one attempt: ``<run>.<task>.<attempt>``.

    Raises:
        ValueError: an id is not a valid id, or the attempt is below 1.
    """
    if attempt < 1:
        raise ValueError(f"attempt {attempt} is below 1")
    return f"{_check('run', run_id)}.{_check('task', task_id)}.{attempt}"


def slot_dir_name(worker_id: str, slot: int) -> str:
    """The reused workspace directory of one slot of one worker: ``<worker>.slot<n>``.

    Raises:
        ValueError: the worker id is not a valid id.
    """
    return f"{_check('worker', worker_id)}.slot{slot}"
