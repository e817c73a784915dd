"""The work item the driver builds for a dispatched attempt, free of I/O."""

from __future__ import annotations

import json

from claudecluster.actors.driver import Dispatch
from claudecluster.actors.work_items import work_item
from claudecluster.domain.kinds import KIND_PROFILES
from claudecluster.events import TaskQueued, TaskSpec
from claudecluster.events.model import ArtifactRef, McpServer, TaskLimits
from claudecluster.events.work import BaseSegment

_SEGMENTS = (
    BaseSegment(
        commit="c0",
        bundle=ArtifactRef(bucket="cc_artifacts", key="repo/0", name="seg", size=1, sha256="x"),
    ),
)


def _dispatch(spec: TaskSpec, queued: TaskQueued) -> Dispatch:
    return Dispatch(
        key="task:r:t", run_id="r", spec=spec, queued=queued, event_id="queued-r-t-1",
        expected_last=0, repo="/repo", integration_branch="claudecluster/r",
    )  # fmt: skip


def test_a_first_attempt_carries_the_spec_the_base_and_its_kinds_tools() -> None:
    spec = TaskSpec(task_id="t", title="T", prompt="do it", kind="review")
    queued = TaskQueued(run_id="r", task_id="t", attempt=1, pool="gpu", base_commit="c0")
    item = work_item(_dispatch(spec, queued), queued, repo_key="root", segments=_SEGMENTS)
    assert (item.run_id, item.task_id, item.attempt, item.pool) == ("r", "t", 1, "gpu")
    assert (item.base_commit, item.repo_key, item.base_segments) == ("c0", "root", _SEGMENTS)
    assert item.spec == spec
    assert item.allowed_tools == KIND_PROFILES["review"].allowed_tools
    assert item.append_system_prompt == KIND_PROFILES["review"].system_prompt


def test_a_retry_gets_its_new_limits_and_its_note_before_the_prompt() -> None:
    spec = TaskSpec(task_id="t", title="T", prompt="do it")
    limits = TaskLimits(max_turns=60)
    queued = TaskQueued(
        run_id="r", task_id="t", attempt=2, base_commit="c0", limits=limits,
        note="This is attempt 2: retry after max_turns.", resume_session_id="s1",
    )  # fmt: skip
    item = work_item(_dispatch(spec, queued), queued, repo_key="root", segments=())
    assert item.spec.limits == limits
    assert item.spec.prompt == "This is attempt 2: retry after max_turns.\n\ndo it"
    assert item.resume_session_id == "s1"


def test_a_shell_tasks_command_is_never_prefixed_with_a_note() -> None:
    spec = TaskSpec(task_id="t", title="T", prompt="make test", executor="shell")
    queued = TaskQueued(run_id="r", task_id="t", attempt=2, note="This is attempt 2: x.")
    item = work_item(_dispatch(spec, queued), queued, repo_key="root", segments=())
    assert item.spec.prompt == "make test"


def test_a_resolution_runs_with_the_resolve_profile_from_the_conflicted_merge() -> None:
    spec = TaskSpec(task_id="t", title="T", prompt="do it", kind="test")
    queued = TaskQueued(run_id="r", task_id="t", attempt=3, resolves_conflict=True)
    recorded = TaskQueued(
        run_id="r", task_id="t", attempt=3, resolves_conflict=True, base_commit="merge1"
    )
    item = work_item(_dispatch(spec, queued), recorded, repo_key="root", segments=())
    assert item.base_commit == "merge1"
    assert item.allowed_tools == KIND_PROFILES["resolve"].allowed_tools


def test_a_tasks_mcp_servers_become_claude_codes_config_but_not_a_resolutions() -> None:
    servers = {"probe": McpServer(command="python3", args=("probe.py",), env={"LEVEL": "1"})}
    spec = TaskSpec(task_id="t", title="T", prompt="do it", mcp_servers=servers)
    queued = TaskQueued(run_id="r", task_id="t", attempt=1, base_commit="c0")
    item = work_item(_dispatch(spec, queued), queued, repo_key="root", segments=())
    assert json.loads(item.mcp_config) == {
        "mcpServers": {
            "probe": {"type": "stdio", "command": "python3", "args": ["probe.py"],
                      "env": {"LEVEL": "1"}}
        }
    }  # fmt: skip
    resolving = TaskQueued(run_id="r", task_id="t", attempt=2, resolves_conflict=True)
    resolution = work_item(_dispatch(spec, resolving), resolving, repo_key="root", segments=())
    assert resolution.mcp_config == ""
    plain = TaskSpec(task_id="t", title="T", prompt="do it")
    assert (
        work_item(_dispatch(plain, queued), queued, repo_key="root", segments=()).mcp_config == ""
    )
