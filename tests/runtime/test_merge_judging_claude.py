"""Resolutions judged with the real Claude Code CLI on the scripted model: real NATS, real
workers, real git. Three runs at once, each of two tasks writing the same line of its own
file, so that the second to merge conflicts and a resolution attempt follows:

* ``nothing``: every resolution answers "done" without touching a file; it is refused,
  retried once with what was wrong, and the run stops naming the task and the file;
* ``markers``: the first resolution rewrites the file but leaves the markers in; it is
  refused, the next attempt is told so and resolves it, keeping both sides;
* ``keep``: the resolution keeps the integration side and says so; the task is recorded
  as merged without changes and shown as a warning in the status and the report.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import anyio

from claudecluster.actors.merging import KEEP_DECLARATION
from claudecluster.events import (
    MergeConflict,
    RunCompleted,
    RunFailed,
    RunPolicy,
    SubmitRun,
    TaskFailed,
    TaskMerged,
    TaskQueued,
    TaskSpec,
)
from claudecluster.projections.cluster import replay
from claudecluster.reporting import render_html, run_record
from claudecluster.runtime.local_workers import open_local_workers
from claudecluster.runtime.worker import WorkerConfig
from claudecluster.scripted_model import Script, open_scripted_model
from claudecluster.transport.base import read_all
from claudecluster.transport.jetstream import JetStreamEventLog
from tests.runtime.test_driver import Cluster, running_driver
from tests.support import git_output, make_repo

CLI = str(Path(sys.executable).parent / "claudecluster")
_KEEP_OURS = "sed -n '/^<<<<<<</,/^=======/p' keep.txt | sed '1d;$d' > t && mv t keep.txt"


def _write(path: str, content: str, text: str = "Done.") -> dict[str, Any]:
    tool = {"name": "Write", "input": {"file_path": "{cwd}/" + path, "content": content}}
    return {"turns": [{"tools": [tool]}, {"text": text}]}


SCRIPT = Script.model_validate(
    {
        "latency_s": 0.1,
        "tasks": [
            # Resolutions first: their prompts also hold their task's marker.
            {
                "marker": "are left in markers.txt",
                **_write("markers.txt", "one\ntwo\n", "Resolved, keeping both lines."),
            },
            {
                "marker": "conflicted in markers.txt",
                **_write("markers.txt", "<<<<<<< HEAD\none\n=======\ntwo\n>>>>>>> x\nmore\n"),
            },
            {"marker": "conflicted in nothing.txt", "turns": [{"text": "Done, all resolved."}]},
            {
                "marker": "conflicted in keep.txt",
                "turns": [
                    {"tools": [{"name": "Bash", "input": {"command": _KEEP_OURS}}]},
                    {"text": f"{KEEP_DECLARATION} both tasks wrote the same note."},
                ],
            },
            *(
                {"marker": f"[[task:{run}-{side}]]", **_write(f"{run}.txt", f"{side}\n")}
                for run in ("nothing", "markers", "keep")
                for side in ("one", "two")
            ),
        ],
    }
)


def _run(run_id: str, repo: Path, **policy: Any) -> SubmitRun:
    plan = tuple(
        TaskSpec(task_id=side, title=f"{side} side", prompt=f"[[task:{run_id}-{side}]] write")
        for side in ("one", "two")
    )
    return SubmitRun(
        run_id=run_id, goal=run_id, repo=str(repo), plan=plan, policy=RunPolicy(**policy)
    )


async def test_claude_resolutions_are_judged_refused_retried_and_kept_on_purpose(
    world: tuple[JetStreamEventLog, Any], tmp_path: Path, nats_url: str
) -> None:
    log, client = world
    repo = make_repo(
        tmp_path / "repo", {f"{run}.txt": "base\n" for run in ("nothing", "markers", "keep")}
    )
    async with open_scripted_model(SCRIPT) as model:
        template = WorkerConfig(
            worker_id="template",
            workspace_root=tmp_path / "workspaces",
            heartbeat_s=1.0,
            api_environment={"ANTHROPIC_BASE_URL": model.url, "ANTHROPIC_API_KEY": "sk-x"},
        )
        async with open_local_workers(4, template, log, client):
            cluster = Cluster(log, client, repo, tmp_path)
            async with running_driver(cluster):
                for command in (
                    _run("nothing", repo, max_attempts=2),
                    _run("markers", repo),
                    _run("keep", repo),
                ):
                    await cluster.send(command)
                ends = (RunCompleted, RunFailed)
                events = await cluster.wait_for(
                    lambda es: sum(isinstance(e, ends) for e in es) == 3, limit_s=240
                )
            status = await anyio.run_process(
                [CLI, "status", "keep", "--nats", nats_url], check=False
            )

    def of(run_id: str, kind: type[Any]) -> list[Any]:
        return [e for e in events if isinstance(e, kind) and e.run_id == run_id]

    # nothing: refused twice, never merged, the run stops naming the task and the file.
    refused = [c for c in of("nothing", MergeConflict) if c.problem]
    assert len(refused) == 2
    assert all("changed nothing" in c.problem for c in refused)
    loser = refused[0].task_id
    assert loser not in {m.task_id for m in of("nothing", TaskMerged)}
    (failed,) = of("nothing", RunFailed)
    assert f"task {loser!r} still conflicts in nothing.txt" in failed.reason
    assert "by hand" in failed.reason

    # markers: refused once, the next attempt was told and resolved it keeping both sides.
    (left,) = [c for c in of("markers", MergeConflict) if c.problem]
    assert "conflict markers" in left.problem
    told = [q for q in of("markers", TaskQueued) if "Your last resolution was refused" in q.note]
    assert [q.task_id for q in told] == [left.task_id]
    assert all(m.brought_changes for m in of("markers", TaskMerged))
    assert git_output(repo, "show", "claudecluster/markers:markers.txt") == "one\ntwo\n"

    # keep: merged without changes, on purpose, and said so wherever the run is shown.
    merged = of("keep", TaskMerged)
    assert [m.brought_changes for m in merged] == [True, False]
    assert merged[1].commit == merged[0].commit
    assert "both tasks wrote the same note" in merged[1].note
    (completed,) = of("keep", RunCompleted)
    assert completed.tasks_succeeded == 2
    assert git_output(repo, "show", "claudecluster/keep:keep.txt") == f"{merged[0].task_id}\n"
    shown = status.stdout.decode()
    assert status.returncode == 0, status.stderr.decode()
    assert f"warning: {merged[1].task_id} merged without changes" in " ".join(shown.split())
    stored = await read_all(log)
    page = render_html(run_record(replay(stored), stored, "keep"))
    assert "merged without changes: the resolution kept the integration side" in page
    # Nothing that reached a branch holds a conflict marker.
    for run in ("nothing", "markers", "keep"):
        assert "<<<<<<<" not in git_output(repo, "show", f"claudecluster/{run}:{run}.txt")


def _writes(*files: tuple[str, str]) -> dict[str, Any]:
    tools = [
        {"name": "Write", "input": {"file_path": "{cwd}/" + path, "content": content}}
        for path, content in files
    ]
    return {"turns": [{"tools": tools}, {"text": "Done."}]}


BATCH_SCRIPT = Script.model_validate(
    {
        "latency_s": 0.1,
        "tasks": [
            {"marker": "[[task:gate]]", **_writes(("gate.txt", "gate\n"))},
            *(
                {
                    "marker": f"[[task:t{i}]]",
                    **_writes((f"t{i}.txt", f"{i}\n"), *([("bad.txt", "x\n")] if i == 2 else [])),
                }
                for i in range(4)
            ),
        ],
    }
)


async def test_claude_results_verified_in_a_batch_reject_only_the_member_that_breaks_it(
    world: tuple[JetStreamEventLog, Any], tmp_path: Path
) -> None:
    log, client = world
    repo = make_repo(tmp_path / "repo", {"README.md": "demo\n"})
    plan = (
        TaskSpec(task_id="gate", title="gate", prompt="[[task:gate]] write"),
        *(
            TaskSpec(task_id=f"t{i}", title=f"t{i}", prompt=f"[[task:t{i}]] write",
                     depends_on=("gate",))
            for i in range(4)
        ),
    )  # fmt: skip
    policy = RunPolicy(verify_command="test ! -e bad.txt", max_attempts=1)
    async with open_scripted_model(BATCH_SCRIPT) as model:
        template = WorkerConfig(
            worker_id="template",
            workspace_root=tmp_path / "workspaces",
            heartbeat_s=1.0,
            api_environment={"ANTHROPIC_BASE_URL": model.url, "ANTHROPIC_API_KEY": "sk-x"},
        )
        async with open_local_workers(4, template, log, client):
            cluster = Cluster(log, client, repo, tmp_path)
            async with running_driver(cluster):
                await cluster.send(
                    SubmitRun(run_id="batch", goal="batch", repo=str(repo), plan=plan,
                              policy=policy)
                )  # fmt: skip
                events = await cluster.wait_end("batch", limit_s=180)
    merged = [e.task_id for e in events if isinstance(e, TaskMerged)]
    assert merged[0] == "gate"
    assert sorted(merged) == ["gate", "t0", "t1", "t3"]
    failed = [(e.task_id, e.failure_class) for e in events if isinstance(e, TaskFailed)]
    assert failed == [("t2", "verify")]
    files = git_output(repo, "ls-tree", "--name-only", "claudecluster/batch").split()
    assert {"gate.txt", "t0.txt", "t1.txt", "t3.txt"} <= set(files)
    assert "bad.txt" not in files
    subjects = git_output(repo, "log", "--format=%s", "claudecluster/batch").splitlines()
    assert subjects[: len(merged)] == [f"{t}: {t}" for t in reversed(merged)]
