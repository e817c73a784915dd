"""restart_later with two running Claude Code attempts on the scripted model: real NATS,
real workers, real git, the real CLI.

Each agent appends its line to ``clash.txt`` (a Bash call), then (another Bash call)
holds until the test says go, then says it is done. Appended at the same place, the two
lines would conflict at merge. With ``on_collision: restart_later`` the driver stops the
attempt that started later while it holds, lets the earlier one finish and merge, and
runs the later task again on top of that merge, where its line goes after the other's:
both lines reach the branch and no resolution attempt runs.

The agents run confined to their workspace (``/tmp`` is their own), so the go-ahead is a
file the test puts in each workspace, ignored by git so that no result carries it. A
re-run's prompt holds the driver's note naming the other task, which the script answers
with the append alone.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from claudecluster.events import (
    RunCompleted,
    RunPolicy,
    SubmitRun,
    TaskCancelled,
    TaskFailed,
    TaskMerged,
    TaskQueued,
    TaskSpec,
    TaskSucceeded,
)
from claudecluster.events.model import (
    CollisionPredicted,
    CollisionSettled,
    MergeConflict,
    TaskPreempted,
)
from claudecluster.runtime.local_workers import open_local_workers
from claudecluster.runtime.worker import WorkerConfig
from claudecluster.scripted_model import Script, open_scripted_model
from claudecluster.transport.jetstream import JetStreamEventLog
from tests.runtime.test_driver import Cluster, running_driver
from tests.support import make_repo

#: How long an agent's Bash call holds for the test's go-ahead before it gives up.
_HOLD_LIMIT_S = 100

_SIDES = ("one", "two")


#: The go-ahead, in the workspace the agent runs in (git ignores it).
_GO = "go-ahead"


def _script() -> Script:
    hold = f"for i in $(seq {_HOLD_LIMIT_S * 10}); do [ -e {_GO} ] && break; sleep 0.1; done"

    def bash(command: str) -> dict[str, Any]:
        return {"tools": [{"name": "Bash", "input": {"command": command}}]}

    # A re-run first: its prompt also holds its task's marker.
    reruns = [
        {
            "marker": f"predicted to collide with {other!r}",
            "turns": [bash(f"echo {side} >> clash.txt"), {"text": "Done."}],
        }
        for side, other in (_SIDES, _SIDES[::-1])
    ]
    firsts = [
        {
            "marker": f"[[task:{side}]]",
            "turns": [bash(f"echo {side} >> clash.txt"), bash(hold), {"text": "Done."}],
        }
        for side in _SIDES
    ]
    return Script.model_validate({"latency_s": 0.1, "tasks": [*reruns, *firsts]})


async def test_the_later_claude_attempt_is_stopped_and_rerun_on_the_first_merge(
    world: tuple[JetStreamEventLog, Any], tmp_path: Path
) -> None:
    log, client = world
    repo = make_repo(tmp_path / "repo", {"clash.txt": "base\n", ".gitignore": f"{_GO}\n"})
    plan = tuple(
        TaskSpec(task_id=side, title=f"{side} side", prompt=f"[[task:{side}]] append")
        for side in _SIDES
    )
    async with open_scripted_model(_script()) as model:
        template = WorkerConfig(
            worker_id="template",
            workspace_root=tmp_path / "workspaces",
            heartbeat_s=1.0,
            touched_every_s=0.5,
            api_environment={"ANTHROPIC_BASE_URL": model.url, "ANTHROPIC_API_KEY": "sk-x"},
        )
        async with open_local_workers(2, template, log, client):
            cluster = Cluster(log, client, repo, tmp_path)
            async with running_driver(cluster):
                policy = RunPolicy(on_collision="restart_later")
                await cluster.send(
                    SubmitRun(run_id="clash", goal="g", repo=str(repo), plan=plan, policy=policy)
                )
                await cluster.wait_for(
                    lambda es: any(isinstance(e, TaskPreempted) for e in es), limit_s=180
                )
                for workspace in (tmp_path / "workspaces").glob("**/clash.txt"):
                    (workspace.parent / _GO).touch()
                events = await cluster.wait_end("clash", limit_s=240)
        turns = model.statistics()

    def of(kind: type[Any]) -> list[Any]:
        return [e for e in events if isinstance(e, kind)]

    (predicted,) = of(CollisionPredicted)
    assert (predicted.files, predicted.action) == (("clash.txt",), "restart_later")
    # The attempt queued later was stopped, for the earlier one.
    (stopped,) = of(TaskPreempted)
    first_queued = [e.task_id for e in of(TaskQueued) if e.attempt == 1]
    later, earlier = stopped.task_id, stopped.other_task_id
    assert first_queued.index(later) > first_queued.index(earlier)
    assert (stopped.attempt, stopped.files) == (1, ("clash.txt",))
    # Stopped, not finished: it never asked the model for its last turn (it was stopped
    # while it held, or before), and nothing was recorded for it after the preemption
    # (no result, no failure, no cancel). The re-run asked for its two turns.
    assert turns[f"[[task:{earlier}]]"] == 3
    assert 1 <= turns.get(f"[[task:{later}]]", 0) <= 2
    assert turns[f"predicted to collide with {earlier!r}"] == 2
    assert not [e for e in of(TaskSucceeded) if (e.task_id, e.attempt) == (later, 1)]
    assert of(TaskFailed) == []
    assert of(TaskCancelled) == []
    # Queued again once the earlier merged, from that merge; no conflict, no resolution.
    merged = {e.task_id: e for e in of(TaskMerged)}
    (rerun,) = [e for e in of(TaskQueued) if e.task_id == later and e.attempt == 2]
    assert rerun.base_commit == merged[earlier].commit
    assert not rerun.resolves_conflict
    assert of(MergeConflict) == []
    assert merged[later].attempt == 2
    assert merged[later].brought_changes
    assert merged[earlier].brought_changes
    (settled,) = of(CollisionSettled)
    assert (settled.outcome, settled.came_true) == ("restarted", False)
    (completed,) = of(RunCompleted)
    assert (completed.tasks_succeeded, completed.tasks_failed) == (2, 0)
    assert completed.preempted_attempts == 1
    # Both changes are on the branch, the earlier's first.
    assert cluster.branch_file("clash", "clash.txt") == f"base\n{earlier}\n{later}\n"
