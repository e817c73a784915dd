"""The driver with real Claude Code: a diamond with a conflict that a resolution attempt
resolves, the driver process killed with SIGKILL mid-run and started again, then a
rollback to a middle task. Real NATS, three workers, the real claude CLI on the scripted
model, real git, the `claudecluster driver` command as its own process.
"""

from __future__ import annotations

import os
import signal
import sys
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import anyio
import anyio.abc

from claudecluster.events import (
    MergeConflict,
    RollbackRun,
    RunCompleted,
    RunFailed,
    RunPolicy,
    RunRolledBack,
    SubmitRun,
    TaskFailed,
    TaskMerged,
    TaskQueued,
    TaskSpec,
    TaskStarted,
    TaskSucceeded,
)
from claudecluster.events.model import Event
from claudecluster.runtime.local_workers import open_local_workers
from claudecluster.runtime.worker import WorkerConfig
from claudecluster.scripted_model import Script, open_scripted_model
from claudecluster.transport.base import read_all
from claudecluster.transport.commands import publish_command
from claudecluster.transport.jetstream import JetStreamEventLog
from tests.support import git_output, make_repo, wait_for_events

CLI = str(Path(sys.executable).parent / "claudecluster")


def _write(path: str, content: str, text: str = "") -> dict[str, Any]:
    tool = {"name": "Write", "input": {"file_path": "{cwd}/" + path, "content": content}}
    return {"turns": [{"text": text, "tools": [tool]}, {"text": f"Wrote {path}."}]}


SCRIPT = Script.model_validate(
    {
        "latency_s": 0.3,
        "tasks": [
            # Listed first: a resolution attempt's prompt also holds its task's marker.
            {"marker": "conflicted in shared.txt", **_write("shared.txt", "left\nright\n")},
            {"marker": "[[task:base]]", **_write("lib.py", "def f():\n    return 1\n")},
            {"marker": "[[task:left]]", **_write("shared.txt", "left\n")},
            # Slow, so that the driver is killed while it runs.
            {"marker": "[[task:right]]", "latency_s": 2, **_write("shared.txt", "right\n")},
            {"marker": "[[task:join]]", **_write("join.txt", "joined\n")},
        ],
    }
)


def _task(task_id: str, *deps: str) -> TaskSpec:
    prompt = f"[[task:{task_id}]] do the {task_id} part"
    return TaskSpec(task_id=task_id, title=f"the {task_id} part", prompt=prompt, depends_on=deps)


async def _start_driver(nats_url: str, work_dir: Path) -> anyio.abc.Process:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CLAUDECLUSTER_")}
    return await anyio.open_process(
        [CLI, "driver", "--nats", nats_url, "--work-dir", str(work_dir)], env=env
    )


async def _events(log: JetStreamEventLog) -> list[Event]:
    return [s.envelope.payload for s in await read_all(log)]


# Claude Code attempts, a driver kill and a restart: generous for a loaded machine.
_PROGRESS_WITHIN_S = 120.0


async def _wait_for(
    log: JetStreamEventLog, check: Any, limit_s: float = _PROGRESS_WITHIN_S
) -> list[Event]:
    return await wait_for_events(log, check, limit_s=limit_s)


async def test_claude_tasks_merge_through_a_conflict_and_a_driver_kill_then_roll_back(
    world: tuple[JetStreamEventLog, Any], tmp_path: Path, nats_url: str
) -> None:
    log, client = world
    js = client.jetstream()
    repo = make_repo(tmp_path / "repo", {"shared.txt": "base\n", "README.md": "demo\n"})
    work_dir = tmp_path / "driver"
    plan = (_task("base"), _task("left", "base"), _task("right", "base"),
            _task("join", "left", "right"))  # fmt: skip
    async with open_scripted_model(SCRIPT) as model:
        template = WorkerConfig(
            worker_id="template",
            workspace_root=tmp_path / "workspaces",
            heartbeat_s=1.0,
            api_environment={"ANTHROPIC_BASE_URL": model.url, "ANTHROPIC_API_KEY": "sk-x"},
        )
        async with open_local_workers(3, template, log, client):
            driver = await _start_driver(nats_url, work_dir)
            try:
                await publish_command(
                    js, SubmitRun(run_id="demo", goal="diamond", repo=str(repo), plan=plan),
                    command_id="submit-demo", now=datetime.now(UTC),
                )  # fmt: skip
                # Kill the driver while "right" runs: "base" has merged by then.
                await _wait_for(log, lambda es: any(
                    isinstance(e, TaskStarted) and e.task_id == "right" for e in es))  # fmt: skip
                driver.send_signal(signal.SIGKILL)
                await driver.wait()
                driver = await _start_driver(nats_url, work_dir)
                events = await _wait_for(
                    log, lambda es: any(isinstance(e, RunCompleted) for e in es)
                )
                merged = {e.task_id: e.commit for e in events if isinstance(e, TaskMerged)}
                await publish_command(
                    js, RollbackRun(run_id="demo", to_task="join"),
                    command_id="rollback-demo", now=datetime.now(UTC),
                )  # fmt: skip
                events = await _wait_for(
                    log, lambda es: any(isinstance(e, RunRolledBack) for e in es)
                )
            finally:
                if driver.returncode is None:
                    driver.send_signal(signal.SIGTERM)
                    with anyio.fail_after(30):
                        await driver.wait()
    # The diamond merged in dependency order, through one conflict and its resolution.
    order = [e.task_id for e in events if isinstance(e, TaskMerged)]
    assert order[0] == "base"
    assert order[-1] == "join"
    assert Counter(order) == {"base": 1, "left": 1, "right": 1, "join": 1}
    (conflict,) = [e for e in events if isinstance(e, MergeConflict)]
    assert conflict.files == ("shared.txt",)
    resolution = [e for e in events if isinstance(e, TaskQueued) and e.resolves_conflict]
    assert [(q.task_id, q.attempt) for q in resolution] == [(conflict.task_id, 2)]
    # No task ran again after it had succeeded, despite the kill.
    succeeded = Counter((e.task_id, e.attempt) for e in events if isinstance(e, TaskSucceeded))
    assert all(n == 1 for n in succeeded.values())
    started = Counter((e.task_id, e.attempt) for e in events if isinstance(e, TaskStarted))
    assert all(n == 1 for n in started.values())
    # The agent resolved the conflict keeping both sides, on the run's branch only.
    completed = next(e for e in events if isinstance(e, RunCompleted))
    shown = git_output(repo, "show", f"{completed.head_commit}:shared.txt")
    assert shown == "left\nright\n"
    assert git_output(repo, "show", f"{completed.head_commit}:join.txt") == "joined\n"
    assert git_output(repo, "show", "HEAD:shared.txt") == "base\n"
    # Rolled back to before "join": the branch is where the last merge before it left it.
    rolled = next(e for e in events if isinstance(e, RunRolledBack))
    assert rolled.reverted_tasks == ("join",)
    assert rolled.to_commit == merged[order[-2]]
    assert git_output(repo, "rev-parse", "claudecluster/demo").strip() == rolled.to_commit


STOP_SCRIPT = Script.model_validate(
    {
        "latency_s": 0.2,
        "tasks": [
            {"marker": "[[task:one]]", **_write("shared.txt", "one\n")},
            {"marker": "[[task:two]]", "latency_s": 1.0, **_write("shared.txt", "two\n")},
            {"marker": "[[task:debug]]", **_write("debug.flag", "on\n")},
            {"marker": "[[task:docs]]", **_write("docs.txt", "documented\n")},
        ],
    }
)


async def test_claude_runs_stop_on_a_conflict_and_undo_a_merge_that_fails_verify(
    world: tuple[JetStreamEventLog, Any], tmp_path: Path, nats_url: str
) -> None:
    """Two runs at once on three workers: one stops at its conflict under the ``stop``
    policy; in the other, the verify command rejects one task's result, which is undone
    and retried, and fails for good while the other task's result stays merged."""
    log, client = world
    js = client.jetstream()
    repo = make_repo(tmp_path / "repo", {"shared.txt": "base\n"})
    stop = SubmitRun(
        run_id="stops", goal="clash", repo=str(repo),
        plan=(_task("one"), _task("two")), policy=RunPolicy(on_conflict="stop"),
    )  # fmt: skip
    verify = SubmitRun(
        run_id="verified", goal="verify", repo=str(repo),
        plan=(_task("debug"), _task("docs")),
        policy=RunPolicy(verify_command="test ! -e debug.flag", max_attempts=2,
                         backoff_base_s=0),
    )  # fmt: skip
    async with open_scripted_model(STOP_SCRIPT) as model:
        template = WorkerConfig(
            worker_id="template",
            workspace_root=tmp_path / "workspaces",
            heartbeat_s=1.0,
            api_environment={"ANTHROPIC_BASE_URL": model.url, "ANTHROPIC_API_KEY": "sk-x"},
        )
        async with open_local_workers(3, template, log, client):
            driver = await _start_driver(nats_url, tmp_path / "driver")
            try:
                for command in (stop, verify):
                    await publish_command(js, command, command_id=f"submit-{command.run_id}",
                                          now=datetime.now(UTC))  # fmt: skip
                ends = (RunCompleted, RunFailed)
                events = await _wait_for(log, lambda es: sum(isinstance(e, ends) for e in es) == 2)
            finally:
                driver.send_signal(signal.SIGTERM)
                with anyio.fail_after(30):
                    await driver.wait()
    stopped = next(e for e in events if isinstance(e, RunFailed) and e.run_id == "stops")
    conflict = next(e for e in events if isinstance(e, MergeConflict) and e.run_id == "stops")
    assert conflict.files == ("shared.txt",)
    assert conflict.policy == "stop"
    assert f"task {conflict.task_id!r} conflicts" in stopped.reason
    assert "shared.txt" in stopped.reason
    rejected = [e for e in events if isinstance(e, TaskFailed) and e.run_id == "verified"]
    assert [(f.task_id, f.attempt, f.failure_class) for f in rejected] == [
        ("debug", 1, "verify"), ("debug", 2, "verify"),
    ]  # fmt: skip
    done = next(e for e in events if isinstance(e, RunCompleted) and e.run_id == "verified")
    assert (done.tasks_succeeded, done.tasks_failed) == (1, 1)
    files = git_output(repo, "ls-tree", "--name-only", "claudecluster/verified").split()
    assert "docs.txt" in files
    assert "debug.flag" not in files
