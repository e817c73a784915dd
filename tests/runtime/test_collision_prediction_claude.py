"""Two running Claude Code attempts that collide, on the scripted model: real NATS, real
workers, real git, the real CLI.

Each agent writes the same line of ``clash.txt``, then (a Bash call) holds until the test
has seen the collision predicted, then says it is done. The second to merge conflicts and
its resolution attempt keeps both lines; the prediction settles as come true. The agents
run confined to their workspace (``/tmp`` is their own), so the go-ahead is a file the
test puts in each workspace, ignored by git so that no result carries it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from claudecluster.events import RunCompleted, SubmitRun, TaskMerged, TaskSpec
from claudecluster.events.model import CollisionPredicted, CollisionSettled, MergeConflict
from claudecluster.runtime.local_workers import open_local_workers
from claudecluster.runtime.worker import WorkerConfig
from claudecluster.scripted_model import Script, open_scripted_model
from claudecluster.transport.jetstream import JetStreamEventLog
from tests.runtime.test_driver import Cluster, running_driver
from tests.support import make_repo

#: How long an agent's Bash call holds for the test's go-ahead before it gives up.
_HOLD_LIMIT_S = 100

#: The go-ahead, in the workspace the agent runs in (git ignores it).
_GO = "go-ahead"


def _script() -> Script:
    hold = f"for i in $(seq {_HOLD_LIMIT_S * 10}); do [ -e {_GO} ] && break; sleep 0.1; done"

    def write(content: str) -> dict[str, Any]:
        return {"name": "Write", "input": {"file_path": "{cwd}/clash.txt", "content": content}}

    return Script.model_validate(
        {
            "latency_s": 0.1,
            "tasks": [
                # The resolution first: its prompt also holds its task's marker.
                {
                    "marker": "conflicted in clash.txt",
                    "turns": [{"tools": [write("one\ntwo\n")]}, {"text": "Kept both lines."}],
                },
                *(
                    {
                        "marker": f"[[task:{side}]]",
                        "turns": [
                            {"tools": [write(f"{side}\n")]},
                            {"tools": [{"name": "Bash", "input": {"command": hold}}]},
                            {"text": "Done."},
                        ],
                    }
                    for side in ("one", "two")
                ),
            ],
        }
    )


async def test_two_running_claude_attempts_on_one_line_are_predicted_and_it_comes_true(
    world: tuple[JetStreamEventLog, Any], tmp_path: Path
) -> None:
    log, client = world
    repo = make_repo(tmp_path / "repo", {"clash.txt": "base\n", ".gitignore": f"{_GO}\n"})
    plan = tuple(
        TaskSpec(task_id=side, title=f"{side} side", prompt=f"[[task:{side}]] write")
        for side in ("one", "two")
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
                await cluster.send(SubmitRun(run_id="clash", goal="g", repo=str(repo), plan=plan))
                await cluster.wait_for(
                    lambda es: any(isinstance(e, CollisionPredicted) for e in es), limit_s=180
                )
                for workspace in (tmp_path / "workspaces").glob("**/clash.txt"):
                    (workspace.parent / _GO).touch()
                events = await cluster.wait_end("clash", limit_s=240)

    def of(kind: type[Any]) -> list[Any]:
        return [e for e in events if isinstance(e, kind)]

    (predicted,) = of(CollisionPredicted)
    assert {predicted.task_id, predicted.other_task_id} == {"one", "two"}
    assert predicted.files == ("clash.txt",)
    (conflict,) = of(MergeConflict)
    assert conflict.files == ("clash.txt",)
    (settled,) = of(CollisionSettled)
    assert (settled.came_true, settled.outcome) == (True, "conflicted")
    assert {m.task_id for m in of(TaskMerged)} == {"one", "two"}
    (completed,) = of(RunCompleted)
    assert completed.tasks_succeeded == 2
    assert cluster.branch_file("clash", "clash.txt") == "one\ntwo\n"
