"""What the MCP server offers a person at an MCP client: completions and prompts.

Completions fill in run and task ids wherever a prompt argument or a resource template
takes one (``run_id``; ``task`` as ``RUN/TASK``), from the front door's live view: newest
runs first, and for a task the failed ones first (the usual reason to name one). The
prompts are the three questions people ask most: plan this goal (preview, then start
only on a yes), summarise this run (from its report) and why did this task fail (from
its status and the end of its log). The texts are built here from what the server read.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Final

import mcp.types as mcp_types
from mcp.server.mcpserver.prompts.base import Message, UserMessage

from claudecluster.domain.lifecycle import TaskState
from claudecluster.mcp_server.models import TaskStatusResult
from claudecluster.runtime.front_door import FrontDoor

__all__ = ["completion_for", "plan_goal_prompt", "summarise_run_prompt", "why_failed_prompt"]

#: At most this many values per completion (the spec's limit).
_MAX_VALUES: Final = 100


def _completion(values: Sequence[str]) -> mcp_types.Completion:
    shown = list(values[:_MAX_VALUES])
    return mcp_types.Completion(values=shown, total=len(values), has_more=len(values) > len(shown))


def completion_for(
    door: FrontDoor, argument: str, value: str, given: Mapping[str, str]
) -> mcp_types.Completion | None:
    """Ids that complete ``value`` for ``argument``, or None for an argument we do not know.

    Args:
        door: the front door whose view holds the runs and tasks.
        argument: the argument's name (``run_id`` or ``task``).
        value: what the user typed so far.
        given: the arguments already filled in (a ``run_id`` narrows ``task``).
    """
    runs = list(reversed(door.runs()))  # newest first
    if argument == "run_id":
        return _completion([r.run_id for r in runs if r.run_id.startswith(value)])
    if argument != "task":
        return None
    in_run = given.get("run_id")
    refs: list[tuple[bool, str]] = []
    for run in runs:
        if in_run and run.run_id != in_run:
            continue
        for task in door.view.tasks_of(run.run_id):
            ref = f"{run.run_id}/{task.task_id}"
            if ref.startswith(value) or (in_run and task.task_id.startswith(value)):
                refs.append((task.state != TaskState.FAILED, ref))
    # Failed tasks first, each group in the order above (newest run first, plan order).
    return _completion([ref for _, ref in sorted(refs, key=lambda pair: pair[0])])


def plan_goal_prompt(goal: str) -> str:
    """Ask the model to preview a plan for ``goal``, show it, and start it only on a yes."""
    return (
        f"I want ClaudeCluster to work on this goal:\n\n{goal}\n\n"
        "First call the preview_plan tool with this goal and claude_planner=true (or, if "
        "you can write a better task graph yourself, with your own plan). Show me the "
        "tasks, their dependencies, the predicted overlaps, the limits and budget, and "
        "the estimate of time and cost, in a short table. Then ask me whether to start "
        "it. Only if I say yes, call submit_plan with the previewed plan (as YAML or "
        "JSON text); never start a run without my yes."
    )


def summarise_run_prompt(run_id: str, report: str) -> list[Message]:
    """Ask for a summary of a run, with its report."""
    return [
        UserMessage(
            f"Summarise ClaudeCluster run {run_id} for me in a few sentences: what it set "
            "out to do, what merged, what failed or was skipped and why, and what it cost. "
            "Then list what I should look at or do next. Here is the run's report:\n\n"
            f"{report}"
        )
    ]


def why_failed_prompt(task: TaskStatusResult, lines: Sequence[str]) -> list[Message]:
    """Ask why a task failed, with its status and the end of its log."""
    ref = f"{task.run_id}/{task.task_id}"
    if task.state != TaskState.FAILED.value:
        situation = f"Task {ref} has not failed: it is {task.state}."
    else:
        situation = (
            f"Task {ref} failed on attempt {task.attempt}"
            + (f" ({task.failure_class})" if task.failure_class else "")
            + (f": {task.failure}" if task.failure else ".")
        )
    log = "\n".join(lines) if lines else "(no agent output was recorded)"
    return [
        UserMessage(
            f"{situation}\n\nExplain why, from its status and the end of its agent's log "
            "below, and say what to change (the prompt, its limits, its plan) so a retry "
            f"succeeds.\n\nStatus:\n{task.model_dump_json(indent=1)}\n\n"
            f"The last lines of its log:\n{log}"
        )
    ]
