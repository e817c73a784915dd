"""The subject map: where each event and command lives on NATS.

::

    cc.evt.<run_id>._.<tag>              run-level events      cc.evt.r1._.run.planned
    cc.evt.<run_id>.<task_id>.<tag>      task events           cc.evt.r1.lint.task.queued
    cc.evt._workers.<worker_id>.<tag>    worker events         cc.evt._workers.w1.worker.joined
    cc.evt._driver.<driver_id>.<tag>     driver lease events   cc.evt._driver.d1.driver.lease_taken
    cc.cmd.<tag>                         commands              cc.cmd.run.cancel
    cc.quarantine.<origin>               undecodable messages  cc.quarantine.evt

Every tag has two tokens, so ``cc.evt.*.*.task.failed`` selects one event type across all
runs, ``cc.evt.r1.>`` one run, and ``cc.evt.r1.lint.>`` one task. Ids cannot start with
``_``, so the reserved tokens ``_``, ``_workers`` and ``_driver`` never collide with a real id.
"""

from __future__ import annotations

from typing import Final

from claudecluster.errors import InvalidIdError
from claudecluster.events.model import (
    CommandBase,
    DriverEvent,
    EventBase,
    RunEvent,
    TaskEvent,
    WorkerEvent,
    is_id,
)

__all__ = [
    "ALL_COMMANDS",
    "ALL_EVENTS",
    "COMMAND_PREFIX",
    "DRIVER_FENCE",
    "DRIVER_SCOPE",
    "EVENT_PREFIX",
    "QUARANTINE_PREFIX",
    "RUN_SCOPE",
    "WORKER_SCOPE",
    "check_id",
    "scope_filter",
    "subject_matches",
    "subject_problem",
    "command_subject",
    "event_subject",
    "run_filter",
    "run_level_filter",
    "task_filter",
    "worker_filter",
]

EVENT_PREFIX: Final = "cc.evt"
COMMAND_PREFIX: Final = "cc.cmd"
QUARANTINE_PREFIX: Final = "cc.quarantine"
RUN_SCOPE: Final = "_"
WORKER_SCOPE: Final = "_workers"
DRIVER_SCOPE: Final = "_driver"
#: Every driver lease event: the filter every fenced driver append is conditional on.
DRIVER_FENCE: Final = f"{EVENT_PREFIX}.{DRIVER_SCOPE}.*.driver.lease_taken"
ALL_EVENTS: Final = f"{EVENT_PREFIX}.>"
ALL_COMMANDS: Final = f"{COMMAND_PREFIX}.>"


def check_id(kind: str, value: str) -> str:
    """Return ``value`` if it is a valid id, so it is safe as a subject token.

    Raises:
        InvalidIdError: it is not.
    """
    if not is_id(value):
        raise InvalidIdError(kind, value)
    return value


def _tag(message: EventBase | CommandBase | type[CommandBase]) -> str:
    kind = message if isinstance(message, type) else type(message)
    tag = kind.__struct_config__.tag
    assert isinstance(tag, str)
    return tag


def event_subject(event: EventBase) -> str:
    """The subject an event is published on.

    Raises:
        InvalidIdError: an id in the event cannot be a subject token.
    """
    if isinstance(event, TaskEvent):
        scope = f"{check_id('run', event.run_id)}.{check_id('task', event.task_id)}"
    elif isinstance(event, RunEvent):
        scope = f"{check_id('run', event.run_id)}.{RUN_SCOPE}"
    elif isinstance(event, WorkerEvent):
        scope = f"{WORKER_SCOPE}.{check_id('worker', event.worker_id)}"
    elif isinstance(event, DriverEvent):
        scope = f"{DRIVER_SCOPE}.{check_id('driver', event.driver_id)}"
    else:  # pragma: no cover - every event class derives from one of the three scopes
        raise TypeError(f"{type(event).__name__} has no subject scope")
    return f"{EVENT_PREFIX}.{scope}.{_tag(event)}"


def command_subject(command: CommandBase | type[CommandBase]) -> str:
    """The subject a command (or every command of a kind) is published on."""
    return f"{COMMAND_PREFIX}.{_tag(command)}"


def task_filter(run_id: str, task_id: str) -> str:
    """Every event of one task: the filter for its expected-last-sequence check.

    Raises:
        InvalidIdError: an id cannot be a subject token.
    """
    return f"{EVENT_PREFIX}.{check_id('run', run_id)}.{check_id('task', task_id)}.>"


def run_filter(run_id: str) -> str:
    """Every event of one run, run-level and task events alike.

    Raises:
        InvalidIdError: the id cannot be a subject token.
    """
    return f"{EVENT_PREFIX}.{check_id('run', run_id)}.>"


def run_level_filter(run_id: str) -> str:
    """Only a run's own events (submitted, planned, completed, ...), no task events.

    Raises:
        InvalidIdError: the id cannot be a subject token.
    """
    return f"{EVENT_PREFIX}.{check_id('run', run_id)}.{RUN_SCOPE}.>"


def worker_filter(worker_id: str = "*") -> str:
    """Every event of one worker, or of all workers with the default ``*``.

    Raises:
        InvalidIdError: the id cannot be a subject token.
    """
    token = worker_id if worker_id == "*" else check_id("worker", worker_id)
    return f"{EVENT_PREFIX}.{WORKER_SCOPE}.{token}.>"


def scope_filter(event: EventBase) -> str:
    """The subject filter an optimistic append of ``event`` checks its expected sequence on.

    A task event is checked against all of its task's events, a run-level event against
    the run-level events, a worker event against that worker's events.
    """
    subject = event_subject(event)
    return subject.rsplit(".", 2)[0] + ".>"


def subject_matches(pattern: str, subject: str) -> bool:
    """NATS subject matching: ``*`` is one token, a final ``>`` is one or more tokens."""
    want = pattern.split(".")
    have = subject.split(".")
    for index, token in enumerate(want):
        if token == ">":
            return index == len(want) - 1 and len(have) > index
        if index >= len(have) or (token != "*" and token != have[index]):
            return False
    return len(want) == len(have)


def subject_problem(subject: str, event: EventBase) -> str | None:
    """Why ``event`` does not belong on ``subject``, or None when it does.

    The server's permissions are per subject (a worker may publish task results, not run
    plans), so a reader must hold every message to the subject it arrived on: a payload
    published where it does not belong is refused, whatever it says.
    """
    try:
        expected = event_subject(event)
    except InvalidIdError as exc:
        return str(exc)
    if expected != subject:
        return (
            f"published on {subject!r}, but a {_tag(event)} of this scope belongs on {expected!r}"
        )
    return None
