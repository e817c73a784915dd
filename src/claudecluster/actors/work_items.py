"""The work item of a dispatched attempt, free of I/O.

The driver's core decides a :class:`~claudecluster.actors.driver.Dispatch` (the task's
spec and the TaskQueued it records); the shell finds where the base commit's history is
(the repository's chain of bundles, which takes the object store) and, for a conflict's
resolution, makes the conflicted merge it starts from. Everything else a worker is told
follows from those facts, here: the limits of a retry, the note in front of the prompt,
the model (the task's, else the run's), the tools (the task's, else its kind's), the
task's MCP servers as Claude Code's config, and the kind's system prompt.
"""

from __future__ import annotations

import msgspec

from claudecluster.actors.driver import Dispatch
from claudecluster.domain.kinds import KIND_PROFILES
from claudecluster.domain.mcp_servers import mcp_config_json
from claudecluster.events.model import TaskQueued
from claudecluster.events.work import BaseSegment, WorkItem

__all__ = ["work_item"]


def work_item(
    dispatch: Dispatch,
    queued: TaskQueued,
    *,
    repo_key: str,
    segments: tuple[BaseSegment, ...],
    queued_seq: int = 0,
) -> WorkItem:
    """The work item of ``dispatch``'s attempt.

    Args:
        dispatch: the core's decision.
        queued: the TaskQueued as recorded (a resolution's base commit filled in).
        repo_key: the repository's cache key on worker hosts.
        segments: the repository's chain of history bundles up to the base commit.
        queued_seq: where ``queued`` was recorded in the log (0: not known, as for a
            republished item). While it is still the task's last event, the attempt is
            queued as the item says, so a worker can claim it conditional on that
            sequence without reading the task's history first.
    """
    profile = KIND_PROFILES["resolve" if queued.resolves_conflict else dispatch.spec.kind]
    spec = dispatch.spec
    if queued.limits is not None:
        spec = msgspec.structs.replace(spec, limits=queued.limits)
    if queued.note and spec.executor == "claude_code":
        # A shell task's prompt is a command: a note would break it.
        spec = msgspec.structs.replace(spec, prompt=f"{queued.note}\n\n{spec.prompt}")
    return WorkItem(
        run_id=dispatch.run_id,
        attempt=queued.attempt,
        spec=spec,
        base_commit=queued.base_commit,
        repo_key=repo_key,
        base_segments=segments,
        pool=queued.pool,
        resume_session_id=queued.resume_session_id,
        # The task's own model and tools, else the run's model and the kind's tools (a
        # resolution always gets the resolving kind's: it must edit, whatever the task).
        model=spec.model or dispatch.model,
        allowed_tools=(() if queued.resolves_conflict else spec.allowed_tools)
        or profile.allowed_tools,
        append_system_prompt=profile.system_prompt,
        # A resolution attempt only merges: it gets none of the task's servers.
        mcp_config="" if queued.resolves_conflict else mcp_config_json(spec.mcp_servers),
        queued_seq=queued_seq,
    )
