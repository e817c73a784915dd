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
        model: opus                          # optional: this task's Claude model
        allowed_tools: [Read, Edit, Grep]    # optional: Claude Code tools it may use
        size: medium                         # small|medium|large: the preview's estimate
        mcp_servers:                         # optional: MCP servers its agent gets
          docs: {command: python3, args: [tools/docs_mcp.py], env: {LEVEL: "1"}}
          search: {url: "http://127.0.0.1:8931/mcp"}   # host:port must be in network.allow
    model: sonnet                            # optional: the model of tasks naming none
    policy:                                  # optional; run's flags win over it
      max_attempts: 3                        # attempts a task gets before it fails
      on_task_failure: skip_dependents       # or fail_run
      rollback_on_failure: false             # a failed run resets its branch to the base
      on_conflict: resolve                   # or stop
      on_collision: let_both                 # or restart_later (collisions while running)
    network: {allow: ["pypi.org:443", "files.pythonhosted.org:443"]}  # every task's

``network.allow`` lists ``host:port`` destinations a confined attempt may reach besides
the model API: the plan's apply to every task, a task's own are added to them
(:mod:`claudecluster.domain.network` says what an entry may be).

Decoding checks the shape; :func:`claudecluster.domain.graph.validate_graph` checks the
graph (cycles, unknown dependencies, duplicate ids, empty prompts).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated, Any, Final, Literal

import msgspec

from claudecluster.errors import GraphError
from claudecluster.events.codec import split_msgspec_error
from claudecluster.events.model import (
    ID_REGEX,
    Id,
    McpServer,
    TaskKind,
    TaskLimits,
    TaskNetwork,
    TaskSpec,
)

__all__ = [
    "PlanFile",
    "PlanPolicy",
    "PlanTask",
    "named_tasks",
    "plan_from_data",
    "plan_to_specs",
]


#: An id (the pattern of :data:`Id`), or nothing: a task says ``id`` or ``task_id``.
_ID_OR_NONE: Final = rf"^(?:{ID_REGEX})?$(?!\n)"


class PlanTask(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """One task as a plan file (or the HTTP API's ``plan``) states it.

    A task is named by ``id`` or by ``task_id`` (the same field under the name the recorded
    events use): either is accepted, in a plan file and over HTTP alike; giving both with
    different values is an error. ``title`` may be left out (the id stands in).
    """

    id: Annotated[
        str, msgspec.Meta(pattern=_ID_OR_NONE, description="The task's id (or give task_id).")
    ] = ""
    task_id: Annotated[
        str, msgspec.Meta(pattern=_ID_OR_NONE, description="The same as id; give one.")
    ] = ""
    prompt: Annotated[str, msgspec.Meta(min_length=1)]
    title: str = ""
    kind: TaskKind = "generate"
    depends_on: tuple[Id, ...] = ()
    files: tuple[str, ...] = ()
    priority: int = 0
    executor: Literal["claude_code", "shell"] = "claude_code"
    limits: TaskLimits = TaskLimits()
    model: Annotated[str, msgspec.Meta(max_length=200)] = ""
    allowed_tools: Annotated[tuple[str, ...], msgspec.Meta(max_length=64)] = ()
    size: Annotated[
        Literal["small", "medium", "large"],
        msgspec.Meta(description="How big the task is, for the preview's time and cost."),
    ] = "medium"
    network: TaskNetwork = TaskNetwork()
    mcp_servers: dict[str, McpServer] = {}


class PlanPolicy(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """What a plan may say about failures and conflicts (flags given to ``run`` win)."""

    max_attempts: Annotated[int, msgspec.Meta(ge=1, le=20)] | None = None
    on_task_failure: Literal["skip_dependents", "fail_run"] | None = None
    rollback_on_failure: bool | None = None
    on_conflict: Literal["resolve", "stop"] | None = None
    on_collision: Literal["let_both", "restart_later"] | None = None


class PlanFile(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A whole plan: an optional goal and at least one task."""

    tasks: Annotated[tuple[PlanTask, ...], msgspec.Meta(min_length=1)]
    goal: str = ""
    model: Annotated[str, msgspec.Meta(max_length=200)] = ""
    policy: PlanPolicy = PlanPolicy()
    network: TaskNetwork = TaskNetwork()


def plan_from_data(data: Any, source: str) -> PlanFile:
    """Check parsed YAML/JSON against the plan schema.

    Raises:
        GraphError: the data does not fit; the message names ``source`` and the field.
    """
    try:
        plan = msgspec.convert(data, PlanFile)
    except msgspec.ValidationError as exc:
        raise GraphError(f"{source}: {_readable(str(exc))}") from None
    return msgspec.structs.replace(plan, tasks=named_tasks(plan.tasks, source))


def named_tasks(tasks: Sequence[PlanTask], source: str) -> tuple[PlanTask, ...]:
    """``tasks`` each named by ``id``, whether it said ``id`` or ``task_id``.

    Raises:
        GraphError: a task names neither, or two different ids, or an id that is not one.
    """
    named = []
    for index, task in enumerate(tasks):
        if task.id and task.task_id and task.id != task.task_id:
            raise GraphError(f"{source}: tasks[{index}]: id {task.id!r} and task_id "
                             f"{task.task_id!r} differ; give one of them")  # fmt: skip
        chosen = task.id or task.task_id
        if not chosen:
            raise GraphError(f"{source}: tasks[{index}]: a task needs an id (or task_id)")
        named.append(msgspec.structs.replace(task, id=chosen, task_id=""))
    return tuple(named)


def _readable(message: str) -> str:
    # msgspec says "... - at `$.tasks[1].prompt`"; put the place first, as people read it.
    problem, where = split_msgspec_error(message)
    return message if where is None else f"{where.removeprefix('$.')}: {problem}"


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
            model=task.model,  # the plan's own default is the run's (its policy's) model
            allowed_tools=task.allowed_tools,
            network=_network(plan.network, task.network),
            mcp_servers=task.mcp_servers,
        )
        for task in plan.tasks
    )


def _network(plan: TaskNetwork, task: TaskNetwork) -> TaskNetwork:
    # The plan's destinations, then the task's own, each once (the order is kept so a
    # recorded spec reads like the plan). The bound is checked on the result, at the door.
    merged = tuple(dict.fromkeys((*plan.allow, *task.allow)))
    return TaskNetwork(allow=merged) if merged else TaskNetwork()
