"""The driver end to end: real NATS, real workers in this process, real git.

Tasks here are shell tasks (a command run in the task's workspace), so what is tested is
the driver: planning, dependency order, merging, conflicts, verify, crash recovery and
rollback. tests/runtime/test_driver_claude.py runs the same driver with Claude Code.
"""

from __future__ import annotations

import os
import signal
import sys
from collections import Counter
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from itertools import count
from pathlib import Path
from typing import Any

import anyio
import pytest

from claudecluster.actors.driver import DriverConfig
from claudecluster.actors.scaling import ScalePolicy
from claudecluster.events import (
    CancelRun,
    CommandRejected,
    FanoutSpec,
    MergeConflict,
    RollbackRun,
    RunCancelled,
    RunCompleted,
    RunFailed,
    RunPlanned,
    RunPolicy,
    RunRolledBack,
    SubmitRun,
    TaskFailed,
    TaskMerged,
    TaskQueued,
    TaskSkipped,
    TaskSpec,
    TaskStarted,
    TaskSucceeded,
    WorkerJoined,
    WorkerLeft,
    WorkerLost,
)
from claudecluster.events.model import Command, Event
from claudecluster.executors.confinement import Confinement
from claudecluster.runtime.autoscaler import LocalAutoscaler
from claudecluster.runtime.driver import Driver, DriverOptions
from claudecluster.runtime.local_workers import open_local_workers
from claudecluster.runtime.worker import Worker, WorkerConfig
from claudecluster.transport.base import read_all
from claudecluster.transport.commands import publish_command
from claudecluster.transport.jetstream import JetStreamEventLog
from tests.support import git_output, make_repo, wait_for_events

_ids = count(1)
CLI = str(Path(sys.executable).parent / "claudecluster")


def shell(task_id: str, command: str, *deps: str, **extra: Any) -> TaskSpec:
    return TaskSpec(
        task_id=task_id, title=f"task {task_id}", prompt=command, executor="shell",
        depends_on=deps, **extra,
    )  # fmt: skip


class Cluster:
    """A driver, local workers and the helpers a test needs to talk to them."""

    def __init__(self, log: JetStreamEventLog, client: Any, repo: Path, tmp_path: Path) -> None:
        self.log = log
        self.client = client
        self.js = client.jetstream()
        self.repo = repo
        self.tmp_path = tmp_path
        self.workers: list[Worker] = []

    async def send(self, command: Command) -> str:
        command_id = f"cmd-{next(_ids)}"
        await publish_command(self.js, command, command_id=command_id, now=datetime.now(UTC))
        return command_id

    async def submit(self, run_id: str, tasks: Sequence[TaskSpec], **kw: Any) -> str:
        return await self.send(
            SubmitRun(run_id=run_id, goal="test", repo=str(self.repo), plan=tuple(tasks), **kw)
        )

    async def events(self) -> list[Event]:
        return [s.envelope.payload for s in await read_all(self.log)]

    async def wait_for(
        self, check: Callable[[list[Event]], bool], limit_s: float = 60
    ) -> list[Event]:
        return await wait_for_events(self.log, check, limit_s=limit_s)

    async def wait_end(self, run_id: str, limit_s: float = 60) -> list[Event]:
        ends = (RunCompleted, RunFailed, RunCancelled)
        return await self.wait_for(
            lambda es: any(isinstance(e, ends) and e.run_id == run_id for e in es), limit_s
        )

    def branch_file(self, run_id: str, path: str) -> str:
        return git_output(self.repo, "show", f"claudecluster/{run_id}:{path}")


@asynccontextmanager
async def running_driver(cluster: Cluster, **options: Any) -> AsyncIterator[Driver]:
    config = options.pop("config", DriverConfig(lost_after_s=30))
    driver = Driver(
        cluster.log, cluster.js,
        DriverOptions(config=config, work_dir=cluster.tmp_path / "driver", tick_s=0.1, **options),
    )  # fmt: skip
    async with anyio.create_task_group() as group:
        await group.start(driver.run)
        yield driver
        group.cancel_scope.cancel()


@asynccontextmanager
async def open_cluster(
    world: tuple[JetStreamEventLog, Any],
    repo: Path,
    tmp_path: Path,
    workers: int = 3,
    confinement: Confinement | None = None,
) -> AsyncIterator[Cluster]:
    log, client = world
    template = WorkerConfig(
        worker_id="template",
        workspace_root=tmp_path / "workspaces",
        heartbeat_s=1.0,
        confinement=confinement,
    )
    async with open_local_workers(workers, template, log, client) as started:
        cluster = Cluster(log, client, repo, tmp_path)
        cluster.workers = started
        yield cluster


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    return make_repo(tmp_path / "repo", {"app.py": "VERSION = 1\n", "notes.txt": "base\n"})


def _merged_order(events: list[Event], run_id: str) -> list[str]:
    return [e.task_id for e in events if isinstance(e, TaskMerged) and e.run_id == run_id]


async def test_a_diamond_runs_in_dependency_order_and_merges_onto_its_own_branch(
    world: tuple[JetStreamEventLog, Any], repo: Path, tmp_path: Path
) -> None:
    user_head = git_output(repo, "rev-parse", "HEAD")
    tasks = [
        shell("a", "echo a > a.txt"),
        # b and c read a's file: they can only succeed if a merged before they started.
        shell("b", "cat a.txt > b.txt && echo b >> b.txt", "a"),
        shell("c", "cat a.txt > c.txt && echo c >> c.txt", "a"),
        shell("d", "cat b.txt c.txt > d.txt", "b", "c"),
    ]
    async with open_cluster(world, repo, tmp_path) as cluster, running_driver(cluster):
        await cluster.submit("diamond", tasks)
        events = await cluster.wait_end("diamond")
    completed = next(e for e in events if isinstance(e, RunCompleted))
    assert (completed.tasks_succeeded, completed.tasks_failed) == (4, 0)
    order = _merged_order(events, "diamond")
    assert order[0] == "a"
    assert order[-1] == "d"
    assert set(order[1:3]) == {"b", "c"}
    assert cluster.branch_file("diamond", "d.txt") == "a\nb\na\nc\n"
    assert completed.head_commit == git_output(repo, "rev-parse", "claudecluster/diamond").strip()
    # One squashed commit per task, each naming its task, on top of the base.
    log = git_output(repo, "log", "--format=%s", "claudecluster/diamond").splitlines()
    assert log[:4] == [f"{t}: task {t}" for t in order][::-1]
    # The user's checkout and branch were not touched.
    assert git_output(repo, "rev-parse", "HEAD") == user_head
    assert git_output(repo, "status", "--porcelain") == ""
    assert completed.speedup > 0
    assert completed.task_time_s > 0


async def test_a_bad_plan_is_rejected_with_the_cycle_named_and_nothing_runs(
    world: tuple[JetStreamEventLog, Any], repo: Path, tmp_path: Path
) -> None:
    tasks = [shell("a", "true", "c"), shell("b", "true", "a"), shell("c", "true", "b")]
    async with open_cluster(world, repo, tmp_path, workers=1) as cluster, running_driver(cluster):
        command_id = await cluster.submit("cyclic", tasks)
        events = await cluster.wait_for(lambda es: any(isinstance(e, CommandRejected) for e in es))
    rejected = next(e for e in events if isinstance(e, CommandRejected))
    assert rejected.command_id == command_id
    assert "cycle: a -> c -> b -> a" in rejected.reason
    assert not any(isinstance(e, (RunPlanned, TaskStarted)) for e in events)


async def test_two_tasks_changing_the_same_lines_stop_the_run_under_the_stop_policy(
    world: tuple[JetStreamEventLog, Any], repo: Path, tmp_path: Path
) -> None:
    tasks = [
        shell("one", "echo one > notes.txt"),
        shell("two", "echo two > notes.txt"),
    ]
    async with open_cluster(world, repo, tmp_path) as cluster, running_driver(cluster):
        await cluster.submit("clash", tasks, policy=RunPolicy(on_conflict="stop"))
        events = await cluster.wait_end("clash")
    conflict = next(e for e in events if isinstance(e, MergeConflict))
    assert conflict.files == ("notes.txt",)
    assert conflict.ours != conflict.theirs
    failed = next(e for e in events if isinstance(e, RunFailed))
    assert f"task {conflict.task_id!r} conflicts" in failed.reason
    assert "notes.txt" in failed.reason
    # The first result merged; the conflicting one did not.
    assert len(_merged_order(events, "clash")) == 1


async def test_a_conflict_is_resolved_by_an_attempt_that_starts_from_the_conflicted_merge(
    world: tuple[JetStreamEventLog, Any], repo: Path, tmp_path: Path
) -> None:
    # The resolving command keeps both sides: it drops the markers and keeps every line.
    resolve = (
        "if grep -q '^<<<<<<<' notes.txt; then grep -v '^[<=>]\\{7\\}' notes.txt > t && "
        "mv t notes.txt; else echo {x} > notes.txt; fi"
    )
    tasks = [
        shell("one", resolve.replace("{x}", "one")),
        shell("two", resolve.replace("{x}", "two")),
    ]
    async with open_cluster(world, repo, tmp_path) as cluster, running_driver(cluster):
        await cluster.submit("resolve", tasks)
        events = await cluster.wait_end("resolve")
    assert any(isinstance(e, MergeConflict) for e in events)
    completed = next(e for e in events if isinstance(e, RunCompleted))
    assert completed.tasks_succeeded == 2
    assert sorted(cluster.branch_file("resolve", "notes.txt").split()) == ["one", "two"]


async def test_a_failing_verify_undoes_the_merge_and_dependents_are_skipped(
    world: tuple[JetStreamEventLog, Any], repo: Path, tmp_path: Path
) -> None:
    tasks = [
        shell("good", "echo fine > good.txt"),
        shell("bad", "echo broken > bad.txt"),
        shell("after", "echo after > after.txt", "bad"),
    ]
    policy = RunPolicy(verify_command="test ! -e bad.txt", max_attempts=2, backoff_base_s=0)
    async with open_cluster(world, repo, tmp_path) as cluster, running_driver(cluster):
        await cluster.submit("verify", tasks, policy=policy)
        events = await cluster.wait_end("verify")
    failures = [e for e in events if isinstance(e, TaskFailed) and e.task_id == "bad"]
    assert [f.failure_class for f in failures] == ["verify", "verify"]  # retried once
    assert "exited with status 1" in failures[0].reason
    skipped = next(e for e in events if isinstance(e, TaskSkipped))
    assert (skipped.task_id, skipped.blocked_by) == ("after", "bad")
    completed = next(e for e in events if isinstance(e, RunCompleted))
    assert (completed.tasks_succeeded, completed.tasks_failed, completed.tasks_skipped) == (1, 1, 1)
    files = git_output(repo, "ls-tree", "--name-only", "claudecluster/verify").split()
    assert "good.txt" in files
    assert "bad.txt" not in files


async def test_a_restarted_driver_finishes_the_run_without_rerunning_or_remerging(
    world: tuple[JetStreamEventLog, Any], repo: Path, tmp_path: Path
) -> None:
    tasks = [
        shell("first", "echo 1 > first.txt"),
        shell("slow", "sleep 2 && echo 2 > slow.txt", "first"),
        shell("last", "cat first.txt slow.txt > last.txt", "slow"),
    ]
    async with open_cluster(world, repo, tmp_path) as cluster:
        async with running_driver(cluster):
            await cluster.submit("crash", tasks)
            await cluster.wait_for(
                lambda es: any(isinstance(e, TaskStarted) and e.task_id == "slow" for e in es)
            )
        # The driver is gone (cancelled mid-run, as a kill would leave it); a new one starts.
        async with running_driver(cluster):
            events = await cluster.wait_end("crash")
    completed = next(e for e in events if isinstance(e, RunCompleted))
    assert completed.tasks_succeeded == 3
    started = Counter(e.task_id for e in events if isinstance(e, TaskStarted))
    assert started == {"first": 1, "slow": 1, "last": 1}
    assert Counter(_merged_order(events, "crash")) == {"first": 1, "slow": 1, "last": 1}
    assert cluster.branch_file("crash", "last.txt") == "1\n2\n"


async def test_rollback_to_a_middle_task_moves_the_branch_back(
    world: tuple[JetStreamEventLog, Any], repo: Path, tmp_path: Path
) -> None:
    tasks = [
        shell("one", "echo 1 > one.txt"),
        shell("two", "echo 2 > two.txt", "one"),
        shell("three", "echo 3 > three.txt", "two"),
    ]
    async with open_cluster(world, repo, tmp_path) as cluster, running_driver(cluster):
        await cluster.submit("rb", tasks)
        events = await cluster.wait_end("rb")
        merged = {e.task_id: e.commit for e in events if isinstance(e, TaskMerged)}
        refused = await cluster.send(RollbackRun(run_id="rb", to_task="nope"))
        await cluster.send(RollbackRun(run_id="rb", to_task="two"))
        events = await cluster.wait_for(lambda es: any(isinstance(e, RunRolledBack) for e in es))
    rolled = next(e for e in events if isinstance(e, RunRolledBack))
    assert rolled.to_commit == merged["one"]
    assert rolled.reverted_tasks == ("two", "three")
    assert git_output(repo, "rev-parse", "claudecluster/rb").strip() == merged["one"]
    rejected = next(e for e in events if isinstance(e, CommandRejected))
    assert rejected.command_id == refused
    assert "'nope'" in rejected.reason


async def test_fanout_plans_one_task_per_matching_file(
    world: tuple[JetStreamEventLog, Any], tmp_path: Path
) -> None:
    repo = make_repo(tmp_path / "fan", {"a.txt": "a\n", "b.txt": "b\n", "src/c.txt": "c\n",
                                        "skip.md": "x\n"})  # fmt: skip
    fanout = FanoutSpec(glob="**/*.txt", prompt_template="Upper-case {path}", kind="refactor")
    async with (
        open_cluster(world, repo, tmp_path, workers=1) as cluster,
        running_driver(cluster),
    ):
        await cluster.send(
            SubmitRun(run_id="fan", goal="caps", repo=str(repo), planner="fanout", fanout=fanout)
        )
        events = await cluster.wait_for(lambda es: any(isinstance(e, RunPlanned) for e in es))
        await cluster.send(CancelRun(run_id="fan", reason="only the plan was wanted"))
        events = await cluster.wait_end("fan")
    planned = next(e for e in events if isinstance(e, RunPlanned))
    assert [(t.task_id, t.prompt, t.files) for t in planned.tasks] == [
        ("a-txt", "Upper-case a.txt", ("a.txt",)),
        ("b-txt", "Upper-case b.txt", ("b.txt",)),
        ("src-c-txt", "Upper-case src/c.txt", ("src/c.txt",)),
    ]
    cancelled = next(e for e in events if isinstance(e, RunCancelled))
    assert cancelled.reason == "only the plan was wanted"


async def test_tasks_declaring_the_same_file_are_ordered_before_they_run(
    world: tuple[JetStreamEventLog, Any], repo: Path, tmp_path: Path
) -> None:
    tasks = [
        shell("x", "echo x >> notes.txt", files=("notes.txt",)),
        shell("y", "echo y >> notes.txt", files=("notes.txt",), priority=5),
    ]
    async with open_cluster(world, repo, tmp_path) as cluster, running_driver(cluster):
        await cluster.submit("overlap", tasks)
        events = await cluster.wait_end("overlap")
    planned = next(e for e in events if isinstance(e, RunPlanned))
    (predicted,) = planned.predicted_conflicts
    assert (predicted.first, predicted.second, predicted.serialized) == ("y", "x", True)
    assert not any(isinstance(e, MergeConflict) for e in events)
    assert cluster.branch_file("overlap", "notes.txt") == "base\ny\nx\n"
    succeeded = [e.task_id for e in events if isinstance(e, TaskSucceeded)]
    assert succeeded == ["y", "x"]


async def test_the_local_pool_grows_while_tasks_wait_and_shrinks_when_idle(
    world: tuple[JetStreamEventLog, Any], repo: Path, tmp_path: Path
) -> None:
    log, client = world
    template = WorkerConfig(
        worker_id="template", workspace_root=tmp_path / "workspaces", heartbeat_s=0.5
    )
    policy = ScalePolicy(min_workers=1, max_workers=3, idle_after_s=1.0, settle_s=0.5)
    scaler = LocalAutoscaler(log, client, template, policy, interval_s=0.25)
    cluster = Cluster(log, client, repo, tmp_path)
    tasks = [shell(f"t{i}", f"sleep 1 && echo {i} > t{i}.txt") for i in range(6)]
    async with anyio.create_task_group() as group, running_driver(cluster):
        await group.start(scaler.run)
        await cluster.submit("scale", tasks)
        events = await cluster.wait_end("scale")
        events = await cluster.wait_for(
            lambda es: sum(isinstance(e, WorkerLeft) for e in es) >= 2, limit_s=30
        )
        assert len(scaler.workers) == 1  # back to the minimum
        group.cancel_scope.cancel()
    joined = [e for e in events if isinstance(e, WorkerJoined)]
    assert joined[0].reason == "keeping the minimum of 1 worker(s)"
    assert len(joined) == 3
    assert all("waiting for a worker" in j.reason for j in joined[1:])
    left = [e for e in events if isinstance(e, WorkerLeft)]
    assert all(w.reason == "idle for 1s with no task waiting" for w in left)
    completed = next(e for e in events if isinstance(e, RunCompleted))
    assert completed.tasks_succeeded == 6


async def test_a_killed_worker_is_declared_lost_and_its_task_requeued_as_a_new_attempt(
    world: tuple[JetStreamEventLog, Any], repo: Path, tmp_path: Path, nats_url: str
) -> None:
    log, client = world
    # The first attempt (on the doomed worker) hangs; the one after the worker's death
    # finishes at once. Attempts are confined to their workspace, so the first one leaves
    # its flag there, under the doomed worker's workspace root, where the test looks.
    command = (
        'case "$PWD" in */doomed/*) touch first-attempt-ran; sleep 300;; '
        "*) echo done > out.txt;; esac"
    )
    cluster = Cluster(log, client, repo, tmp_path)
    env = {k: v for k, v in os.environ.items() if not k.startswith("CLAUDECLUSTER_")}
    doomed = await anyio.open_process(
        [CLI, "worker", "--nats", nats_url, "--workspace-root", str(tmp_path / "doomed")],
        env=env,
    )
    try:
        config = DriverConfig(lost_after_s=8)  # the worker heartbeats every 5 s
        async with running_driver(cluster, config=config):
            await cluster.submit("lost", [shell("slow", command)])
            events = await cluster.wait_for(lambda es: any(isinstance(e, TaskStarted) for e in es))
            victim = next(e for e in events if isinstance(e, TaskStarted)).worker_id
            with anyio.fail_after(30):
                # TaskStarted is recorded just before the command starts: wait for the
                # command itself, or the kill could land before it ran at all.
                while not list((tmp_path / "doomed").rglob("first-attempt-ran")):  # noqa: ASYNC110 - a file, no event to wait on
                    await anyio.sleep(0.05)
            doomed.send_signal(signal.SIGKILL)
            await doomed.wait()
            template = WorkerConfig(worker_id="t", workspace_root=tmp_path / "ws", heartbeat_s=1)
            async with open_local_workers(1, template, log, client):
                events = await cluster.wait_end("lost")
    finally:
        if doomed.returncode is None:
            doomed.kill()
            await doomed.wait()
    lost = next(e for e in events if isinstance(e, WorkerLost))
    assert (lost.worker_id, lost.orphaned_tasks) == (victim, ("lost/slow",))
    requeued = [e for e in events if isinstance(e, TaskQueued) and e.attempt == 2]
    assert [q.note for q in requeued] == ["This is attempt 2: its worker was lost."]
    (succeeded,) = [e for e in events if isinstance(e, TaskSucceeded)]
    assert succeeded.attempt == 2
    assert succeeded.worker_id != victim
    assert cluster.branch_file("lost", "out.txt") == "done\n"
