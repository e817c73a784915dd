"""The bounds a submitted run must keep, and the fan-out template's safe substitution.

Every door (the CLI, the gateway, the MCP server) checks a submission with
:func:`submission_problem` before it publishes, and the driver's core checks it again
before it records the run, so a client that talks to the bus directly meets the same
rules. A count a client gives is bounded, because the driver acts on it: a plan of a
million tasks, or a fan-out allowed to make one, is a way to keep the driver busy or out
of memory.

The fan-out prompt template used to go through ``str.format``, which is a small language
of its own: ``{path:>4000000000}`` asked for a 4 GB string and ``{path.__class__}`` reached
attributes. :func:`fill_template` knows exactly the documented placeholders and doubled
braces for literal ones, nothing else.

A ``repo`` given as a git URL is refused here, at submission, with the way round it: the
driver works on a repository on its own disk and does not clone, so a URL accepted and
then failed at the first git command would be the worst of both.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Final

from claudecluster.domain.mcp_servers import mcp_servers_problem
from claudecluster.domain.network import allowance_problem
from claudecluster.errors import GraphError
from claudecluster.events.model import SubmitRun, TaskLimits

__all__ = [
    "DEFAULT_MAX_TASKS",
    "MAX_TASKS_CEILING",
    "PLACEHOLDERS",
    "fill_template",
    "repo_problem",
    "submission_problem",
    "template_problem",
]

#: Tasks one run may have (a plan's, a fan-out's, a planner's), unless configured otherwise.
DEFAULT_MAX_TASKS: Final = 500
#: The most ``driver.max_tasks`` may be set to (and what a door's schema lets through).
MAX_TASKS_CEILING: Final = 100_000
#: What a fan-out prompt template may name.
PLACEHOLDERS: Final = ("path", "stem", "goal")

#: Upper bounds of the other counts a client gives (far above any real use).
_MAX_PARALLEL: Final = 10_000
_MAX_ATTEMPTS: Final = 100
_MAX_SECONDS: Final = 7 * 24 * 3600.0
_MAX_TURNS: Final = 10_000
_MAX_MEMORY_MB: Final = 1024 * 1024

#: A URL (``scheme://``) or scp-like git address (``user@host:path``), not a path.
_GIT_URL: Final = re.compile(r"^(?:[A-Za-z][A-Za-z0-9+.-]*://|[^@/\s]+@[^:/\s]+:)")

_TOKEN: Final = re.compile(r"\{\{|\}\}|\{([^{}]*)\}|[{}]")
_LITERAL: Final = {"{{": "{", "}}": "}"}


def template_problem(template: str) -> str | None:
    """What is wrong with a fan-out prompt template, or None if it is fine."""
    *first, last = (f"{{{name}}}" for name in PLACEHOLDERS)
    allowed = f"{', '.join(first)} and {last}"
    for match in _TOKEN.finditer(template):
        token = match.group(0)
        if token in _LITERAL:
            continue
        name = match.group(1)
        if name is None:
            return (
                f"has an unmatched {token!r} at character {match.start()}: it may use only "
                f"{allowed}; write {token * 2} for a literal brace"
            )
        if name not in PLACEHOLDERS:
            return (
                f"uses the placeholder {token!r}, which is not allowed: it may use only "
                f"{allowed} (no format specs, indexes or attributes); write {{{{ and }}}} "
                "for literal braces"
            )
    return None


def fill_template(template: str, values: Mapping[str, str]) -> str:
    """The template with each placeholder replaced by its value.

    Raises:
        GraphError: the template is invalid (see :func:`template_problem`).
    """
    problem = template_problem(template)
    if problem is not None:
        raise GraphError(f"fan-out: the prompt template cannot be filled: it {problem}")

    def substitute(match: re.Match[str]) -> str:
        token = match.group(0)
        return _LITERAL.get(token) or values[match.group(1)]

    return _TOKEN.sub(substitute, template)


def _limits_problem(where: str, limits: TaskLimits) -> tuple[str, str] | None:
    if limits.wall_time_s is not None and limits.wall_time_s > _MAX_SECONDS:
        return f"{where}.limits.wall_time_s", f"at most {_MAX_SECONDS:.0f} seconds"
    if limits.max_turns is not None and limits.max_turns > _MAX_TURNS:
        return f"{where}.limits.max_turns", f"at most {_MAX_TURNS}"
    if limits.memory_mb is not None and limits.memory_mb > _MAX_MEMORY_MB:
        return f"{where}.limits.memory_mb", f"at most {_MAX_MEMORY_MB}"
    return None


def repo_problem(repo: str) -> str | None:
    """Why ``repo`` cannot be worked on as given, or None.

    A git URL is refused with what to do instead: the driver does not clone, it works on
    a repository on its own machine.
    """
    if _GIT_URL.match(repo):
        return (
            "a git URL is not cloned by the driver: clone it on the driver's machine and "
            "give that clone's absolute path (the result is the branch claudecluster/RUN "
            "there; 'claudecluster run --push' pushes it back)"
        )
    return None


def submission_problem(command: SubmitRun, *, max_tasks: int) -> tuple[str, str] | None:
    """The first bound ``command`` breaks, as ``(field, problem)``, or None.

    Args:
        command: the submission.
        max_tasks: the configured cap on a run's tasks.
    """
    repo = repo_problem(command.repo)
    if repo is not None:
        return "repo", repo
    if command.plan is not None and len(command.plan) > max_tasks:
        return "plan", (f"{len(command.plan)} tasks, more than the limit of {max_tasks} per run")
    fanout = command.fanout
    if fanout is not None:
        if fanout.max_tasks > max_tasks:
            return "fanout.max_tasks", (
                f"{fanout.max_tasks} is more than the limit of {max_tasks} tasks per run"
            )
        problem = template_problem(fanout.prompt_template)
        if problem is not None:
            return "fanout.prompt_template", f"the template {problem}"
    if command.max_parallel is not None and command.max_parallel > _MAX_PARALLEL:
        return "max_parallel", f"at most {_MAX_PARALLEL}"
    policy = command.policy
    if policy.max_attempts > _MAX_ATTEMPTS:
        return "policy.max_attempts", f"at most {_MAX_ATTEMPTS}"
    for name in ("backoff_base_s", "backoff_max_s", "verify_timeout_s"):
        if getattr(policy, name) > _MAX_SECONDS:
            return f"policy.{name}", f"at most {_MAX_SECONDS:.0f} seconds"
    for index, spec in enumerate(command.plan or ()):
        found = _limits_problem(f"plan[{index}]", spec.limits)
        if found is not None:
            return found
        network = allowance_problem(spec.network.allow)
        if network is not None:
            return f"plan[{index}].network.allow", network
        servers = mcp_servers_problem(spec.mcp_servers, spec.network.allow)
        if servers is not None:
            field, problem = servers
            return f"plan[{index}].mcp_servers" + (f".{field}" if field else ""), problem
    return None
