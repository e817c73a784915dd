"""What a task's kind means for how it runs.

A kind is a short word in the plan (``generate``, ``review`` ...) that stands for a bundle
of defaults: which tools the agent may use, what is added to its system prompt, and
whether the run's verify command checks the result after it merges. A planner then only
has to say what a task is for, and a review task cannot edit files by accident.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from claudecluster.events.model import TaskKind

__all__ = ["KIND_PROFILES", "KindProfile", "READ_ONLY_TOOLS", "WRITE_TOOLS"]

READ_ONLY_TOOLS: Final = ("Read", "Glob", "Grep")
WRITE_TOOLS: Final = ("Read", "Write", "Edit", "Bash", "Glob", "Grep")


@dataclass(frozen=True, slots=True)
class KindProfile:
    """The defaults a task kind brings.

    Attributes:
        allowed_tools: the tools the agent may use without asking.
        system_prompt: appended to Claude Code's system prompt.
        verify: the run's verify command runs after this task's result merges.
    """

    allowed_tools: tuple[str, ...]
    system_prompt: str
    verify: bool


_COMMON: Final = (
    "You are one of several agents working in parallel on separate copies of one "
    "repository; your changes are merged with theirs afterwards. Change only what your "
    "task needs, keep unrelated files as they are, and do not commit: the workspace is "
    "committed for you when you finish."
)

KIND_PROFILES: Final[dict[TaskKind, KindProfile]] = {
    "generate": KindProfile(
        WRITE_TOOLS, _COMMON + " Write the new code the task asks for, with tests.", True
    ),
    "refactor": KindProfile(
        WRITE_TOOLS,
        _COMMON + " Keep behaviour exactly as it is; change structure only.",
        True,
    ),
    "test": KindProfile(
        WRITE_TOOLS,
        _COMMON + " Add or fix tests; change production code only if a test "
        "shows a real bug, and say so.",
        True,
    ),
    "review": KindProfile(
        READ_ONLY_TOOLS,
        _COMMON + " Review only: read the code and report findings; do not edit files.",
        False,
    ),
    "plan": KindProfile(
        READ_ONLY_TOOLS,
        "Explore the repository read-only and answer with the task graph asked for.",
        False,
    ),
    "resolve": KindProfile(
        WRITE_TOOLS,
        _COMMON + " The workspace holds a merge with conflict markers (<<<<<<<, =======, "
        ">>>>>>>). Keep the intent of both sides, remove every marker, and make the code "
        "work.",
        True,
    ),
}
