"""The plan file: a task graph written by a person or returned by the Claude planner.

YAML or JSON, one schema (exported to ``events/schema/plan.json`` like the events)::

    goal: Add type hints everywhere          # optional
    tasks:
      - id: models                           # a subject token: letters, digits, _ and -
        title: Type the models               # optional, defaults to the id
        prompt: Add type hints to models.py
        kind: refactor                       # generate|refactor|test|review|plan|resolve
        depends_on: []
        files: [src/models.py]               # paths or globs it expects to change
        priority: 0                          # higher first among equally urgent tasks
        executor: claude_code                # or shell (the prompt is then a command)
        limits: {max_turns: 30, wall_time_s: 900, max_cost_usd: 2}
        network: {allow: ["127.0.0.1:5432"]}  # more than the model API (see below)
    network: {allow: ["pypi.org:443", "files.pythonhosted.org:443"]}  # every task's

``network.allow`` lists ``host:port`` destinations a confined attempt may reach besides
the model API: the plan's apply to every task, a task's own are added to them
(:mod:`claudecluster.domain.network` says what an entry may be).

Decoding checks the shape; :func:`claudecluster.domain.graph.validate_graph` checks the
graph (cycles, unknown dependencies, duplicate ids, empty prompts).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec

from claudecluster.errors import GraphError
from claudecluster.events.model import Id, TaskKind, TaskLimits, TaskNetwork, TaskSpec

__all__ = ["PlanFile", "PlanTask", "plan_from_data", "plan_to_specs"]


class PlanTask(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """One task as a plan file states it."""

    id: Id
    prompt: Annotated[str, msgspec.Meta(min_length=1)]
    title: str = ""
    kind: TaskKind = "generate"
    depends_on: tuple[Id, ...] = ()
    files: tuple[str, ...] = ()
    priority: int = 0
    executor: Literal["claude_code", "shell"] = "claude_code"
    limits: TaskLimits = TaskLimits()
    network: TaskNetwork = TaskNetwork()


class PlanFile(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A whole plan: an optional goal and at least one task."""

    tasks: Annotated[tuple[PlanTask, ...], msgspec.Meta(min_length=1)]
    goal: str = ""
    network: TaskNetwork = TaskNetwork()


def plan_from_data(data: Any, source: str) -> PlanFile:
    """Check parsed YAML/JSON against the plan schema.

    Raises:
        GraphError: the data does not fit; the message names ``source`` and the field.
    """
    try:
        return msgspec.convert(data, PlanFile)
    except msgspec.ValidationError as exc:
        raise GraphError(f"{source}: {_readable(str(exc))}") from None


def _readable(message: str) -> str:
    # msgspec says "... - at `$.tasks[1].prompt`"; put the place first, as people read it.
    if " - at `" in message:
        problem, _, where = message.partition(" - at `")
        return f"{where.rstrip('`').removeprefix('$.')}: {problem}"
    return message


def plan_to_specs(plan: PlanFile) -> tuple[TaskSpec, ...]:
    """The plan's tasks as the specs RunPlanned records."""
    return tuple(
        TaskSpec(
            task_id=task.id,
            title=task.title or task.id,
            prompt=task.prompt,
            depends_on=task.depends_on,
            kind=task.kind,
            executor=task.executor,
            files=task.files,
            priority=task.priority,
            limits=task.limits,
            network=_network(plan.network, task.network),
        )
        for task in plan.tasks
    )


def _network(plan: TaskNetwork, task: TaskNetwork) -> TaskNetwork:
    # The plan's destinations, then the task's own, each once (the order is kept so a
    # recorded spec reads like the plan). The bound is checked on the result, at the door.
    merged = tuple(dict.fromkeys((*plan.allow, *task.allow)))
    return TaskNetwork(allow=merged) if merged else TaskNetwork()
