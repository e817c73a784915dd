"""A worker end to end: real NATS, the real Claude Code CLI on the scripted model, real git.

The test plays the driver: it records the plan, queues the attempt and publishes the work
item, then follows the log as any reader would.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import anyio
import msgspec
import psutil
import pytest

from claudecluster.actors.worker import admit
from claudecluster.domain.branches import task_branch
from claudecluster.domain.outcome import Outcome
from claudecluster.errors import EventStoreError
from claudecluster.events import (
    CancelRun,
    CancelTask,
    TaskAssigned,
    TaskCancelled,
    TaskFailed,
    TaskProgress,
    TaskQueued,
    TaskRetryScheduled,
    TaskSucceeded,
    WorkerJoined,
    WorkerLeft,
    command_subject,
    encode,
    wrap_command,
)
from claudecluster.events.envelope import StoredEvent
from claudecluster.events.work import encode_work_item
from claudecluster.executors.base import AttemptRun
from claudecluster.runtime.local_workers import open_local_workers
from claudecluster.runtime.worker import Worker, WorkerConfig
from claudecluster.scripted_model import Script, open_scripted_model
from claudecluster.transport.artifacts import JetStreamArtifactStore
from claudecluster.transport.base import read_all
from claudecluster.transport.jetstream import JetStreamEventLog
from claudecluster.transport.liveness import JetStreamWorkerRegistry
from claudecluster.transport.work_queue import JetStreamWorkQueue
from claudecluster.workspace.git import fetch_result
from tests.runtime.conftest import Driver
from tests.support import commit_all, git_output, wait_for_events

WORKERS = "cc.evt._workers.>"
# A work item whose base is missing fails its attempt; generous for a loaded machine.
_BROKEN_ITEM_FAILS_WITHIN_S = 60.0
SCRIPT = Script.model_validate(
    {
        "tasks": [
            {
                "marker": "[[task:feature]]",
                "turns": [
                    {
                        "text": "Reading the app first.",
                        "tools": [{"name": "Read", "input": {"file_path": "{cwd}/app.py"}}],
                    },
                    {
                        "text": "Now the change.",
                        "tools": [
                            {
                                "name": "Edit",
                                "input": {
                                    "file_path": "{cwd}/app.py",
                                    "old_string": "v1",
                                    "new_string": "v2",
                                },
                            },
                            {
                                "name": "Write",
                                "input": {"file_path": "{cwd}/lib/a.py", "content": "A = 1\n"},
                            },
                            {
                                "name": "Write",
                                "input": {"file_path": "{cwd}/lib/b.py", "content": "B = 2\n"},
                            },
                        ],
                    },
                    {"text": "Edited app.py and added lib/a.py and lib/b.py."},
                ],
            }
        ]
    }
)


async def _until_finished(log: JetStreamEventLog, task_id: str) -> list[StoredEvent]:
    seen: list[StoredEvent] = []
    with anyio.fail_after(90):
        async with log.open_reader(follow=True) as events:
            async for stored in events:
                seen.append(stored)
                payload = stored.envelope.payload
                if isinstance(payload, TaskSucceeded | TaskFailed) and payload.task_id == task_id:
                    return seen
    raise AssertionError("unreachable")


async def test_a_worker_turns_a_queued_task_into_a_reviewable_bundle(
    world: tuple[JetStreamEventLog, Any], source: Path, tmp_path: Path
) -> None:
    log, client = world
    js = client.jetstream()
    driver = Driver(log, js, source, tmp_path)
    async with open_scripted_model(SCRIPT) as model:
        config = WorkerConfig(
            worker_id="w-test",
            workspace_root=tmp_path / "workspaces",
            heartbeat_s=0.5,
            api_environment={"ANTHROPIC_BASE_URL": model.url, "ANTHROPIC_API_KEY": "sk-x"},
        )
        worker = Worker(config, log, client)
        async with anyio.create_task_group() as group:
            await group.start(worker.serve)
            item = await driver.submit("run1", "feature", "[[task:feature]] add the feature")
            history = await _until_finished(log, "feature")
            worker.stop()
    tags = [str(s.envelope.payload.__struct_config__.tag) for s in history]
    task_tags = [t for t in tags if t.startswith("task.")]
    assert task_tags[:3] == ["task.queued", "task.assigned", "task.started"]
    assert task_tags[-1] == "task.succeeded"
    # Between start and result: live output, and (an attempt that ran longer than the
    # worker's look interval) the files it touched so far, for collision prediction.
    assert "task.progress" in task_tags[3:-1]
    assert set(task_tags[3:-1]) <= {"task.progress", "task.files_touched"}
    progress = [s.envelope.payload for s in history]
    # Coalesced (a bounded number of events a second): each call is a line, in order.
    calls = [
        line.split()[0]
        for p in progress
        if isinstance(p, TaskProgress) and p.kind == "tool_use"
        for line in p.text.splitlines()
    ]
    assert calls == ["Read", "Edit", "Write", "Write"]

    succeeded = history[-1].envelope.payload
    assert isinstance(succeeded, TaskSucceeded)
    assert succeeded.worker_id == "w-test"
    names = [a.name for a in succeeded.artifacts]
    assert names == ["result.bundle", "diffstat.json"]
    bundle = await JetStreamArtifactStore(js).get_file(
        succeeded.artifacts[0], tmp_path / "r.bundle"
    )
    branch = task_branch("run1", "feature")
    await fetch_result(source, bundle, branch)
    changed = git_output(source, "diff", "--name-status", item.base_commit, branch).split()
    assert changed == ["M", "app.py", "A", "lib/a.py", "A", "lib/b.py"]
    assert git_output(source, "show", f"{branch}:app.py") == "VERSION = 'v2'\n"
    # Nothing is left behind: no workspace, no agent process.
    assert list((tmp_path / "workspaces").iterdir()) == []
    assert not [p for p in psutil.process_iter(["cwd"]) if str(tmp_path) in (p.info["cwd"] or "")]
    left = [
        s for s in await read_all(log) if s.envelope.payload.__struct_config__.tag == "worker.left"
    ]
    assert len(left) == 1


async def _run_worker_until(
    log: JetStreamEventLog, client: Any, tmp_path: Path, url: str, done: Any
) -> None:
    config = WorkerConfig(
        worker_id="w-test",
        workspace_root=tmp_path / "workspaces",
        heartbeat_s=0.5,
        api_environment={"ANTHROPIC_BASE_URL": url, "ANTHROPIC_API_KEY": "sk-x"},
    )
    worker = Worker(config, log, client)
    async with anyio.create_task_group() as group:
        await group.start(worker.serve)
        await done()
        worker.stop()


async def test_stale_and_malformed_work_is_dropped_and_the_worker_keeps_serving(
    world: tuple[JetStreamEventLog, Any], source: Path, tmp_path: Path
) -> None:
    log, client = world
    js = client.jetstream()
    driver = Driver(log, js, source, tmp_path)
    async with open_scripted_model(SCRIPT) as model:

        async def scenario() -> None:
            item = await driver.submit("run2", "feature", "[[task:feature]] go")
            await _until_finished(log, "feature")
            # The same attempt again (a duplicate) and garbage on the pool's subject.
            stale = msgspec.structs.replace(item, pool="default")
            await js.publish("cc.work.default", b"{not a work item", stream="CC_WORK")
            await js.publish(
                "cc.work.default", encode_work_item(stale), stream="CC_WORK",
                headers={"Nats-Msg-Id": "another-copy"},
            )  # fmt: skip
            with anyio.fail_after(30):
                # The queue empties once the worker acked or terminated both; the server
                # offers no event for that, so its state is polled.
                while (await js.stream_info("CC_WORK")).state.messages:  # noqa: ASYNC110
                    await anyio.sleep(0.1)

        await _run_worker_until(log, client, tmp_path, model.url, scenario)
    events = [s.envelope.payload for s in await read_all(log)]
    finished = [e for e in events if isinstance(e, TaskSucceeded | TaskFailed)]
    assert len(finished) == 1  # the duplicate did not run the task again
    quarantined = await log.quarantined()
    assert quarantined == []  # event log clean; the work item went to its own record
    info = await js.stream_info("CC_QUARANTINE", subjects_filter="cc.quarantine.work")
    assert info.state.messages == 1


async def test_a_missing_base_bundle_is_a_retryable_infrastructure_failure(
    world: tuple[JetStreamEventLog, Any], source: Path, tmp_path: Path
) -> None:
    log, client = world
    js = client.jetstream()
    driver = Driver(log, js, source, tmp_path)
    async with open_scripted_model(SCRIPT) as model:

        async def scenario() -> None:
            item = await driver.submit("run3", "feature", "[[task:feature]] go")
            broken = msgspec.structs.replace(
                item,
                attempt=2,
                repo_key="another-repository",
                base_segments=tuple(
                    msgspec.structs.replace(
                        segment,
                        bundle=msgspec.structs.replace(segment.bundle, key="run3/_/0/missing"),
                    )
                    for segment in item.base_segments
                ),
            )
            await driver.record(TaskAssigned(run_id="run3", task_id="feature", attempt=1,
                                             worker_id="gone"))  # fmt: skip
            await driver.record(
                TaskFailed(run_id="run3", task_id="feature", attempt=1, reason="x",
                           retryable=True)
            )  # fmt: skip
            await driver.record(
                TaskRetryScheduled(run_id="run3", task_id="feature", next_attempt=2, delay_s=0)
            )
            await driver.record(TaskQueued(run_id="run3", task_id="feature", attempt=2))
            await JetStreamWorkQueue(js).publish(broken)
            await wait_for_events(
                log,
                lambda es: any(isinstance(e, TaskFailed) and e.attempt == 2 for e in es),
                limit_s=_BROKEN_ITEM_FAILS_WITHIN_S,
            )

        await _run_worker_until(log, client, tmp_path, model.url, scenario)
    failed = [
        s.envelope.payload
        for s in await read_all(log)
        if isinstance(s.envelope.payload, TaskFailed) and s.envelope.payload.attempt == 2
    ]
    assert len(failed) == 1
    assert failed[0].failure_class == "infrastructure"
    assert failed[0].retryable
    assert "not in bucket" in failed[0].reason


SLOW = Script.model_validate(
    {"tasks": [{"marker": "[[task:slow]]", "latency_s": 60, "turns": [{"text": "never"}]}]}
)


@pytest.mark.parametrize(
    ("cancel", "run_cancel"),
    [(CancelTask(run_id="run4", task_id="slow", reason="user changed their mind"), ""),
     # A run's cancel is named in the record: the driver ends the run as cancelled even
     # when this record reaches the log before the driver decided the command.
     (CancelRun(run_id="run4", reason="user changed their mind"), "cancel-1")],
)  # fmt: skip
async def test_a_cancel_command_stops_the_agent_and_records_the_cancellation(
    world: tuple[JetStreamEventLog, Any],
    source: Path,
    tmp_path: Path,
    cancel: CancelTask | CancelRun,
    run_cancel: str,
) -> None:
    log, client = world
    js = client.jetstream()
    driver = Driver(log, js, source, tmp_path)
    async with open_scripted_model(SLOW) as model:

        async def scenario() -> None:
            await driver.submit("run4", "slow", "[[task:slow]] take your time")
            with anyio.fail_after(30):
                await model.wait_requests(1)  # the agent is waiting on the model
            command = wrap_command(
                cancel,
                command_id="cancel-1",
                now=datetime.now(UTC),
                correlation_id="run4",
            )
            await client.publish(command_subject(command.payload), encode(command))
            await _until_finished_or_cancelled(log, "slow")

        await _run_worker_until(log, client, tmp_path, model.url, scenario)
    events = [s.envelope.payload for s in await read_all(log)]
    cancelled = [e for e in events if isinstance(e, TaskCancelled)]
    assert [(c.attempt, c.reason, c.run_cancel) for c in cancelled] == [
        (1, "user changed their mind", run_cancel)
    ]
    assert not any(isinstance(e, TaskSucceeded | TaskFailed) for e in events)
    assert list((tmp_path / "workspaces").iterdir()) == []
    assert not [p for p in psutil.process_iter(["cwd"]) if str(tmp_path) in (p.info["cwd"] or "")]


async def _until_finished_or_cancelled(log: JetStreamEventLog, task_id: str) -> None:
    with anyio.fail_after(60):
        async with log.open_reader(follow=True) as events:
            async for stored in events:
                payload = stored.envelope.payload
                if isinstance(payload, TaskCancelled) and payload.task_id == task_id:
                    return


def _get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


async def test_health_and_metrics_report_the_worker_and_its_work(
    world: tuple[JetStreamEventLog, Any], source: Path, tmp_path: Path
) -> None:
    log, client = world
    driver = Driver(log, client.jetstream(), source, tmp_path)
    async with open_scripted_model(SCRIPT) as model:
        config = WorkerConfig(
            worker_id="w-health",
            workspace_root=tmp_path / "workspaces",
            heartbeat_s=0.2,
            health_port=0,
            slots=2,
            api_environment={"ANTHROPIC_BASE_URL": model.url, "ANTHROPIC_API_KEY": "sk-x"},
        )
        worker = Worker(config, log, client)
        async with anyio.create_task_group() as group:
            await group.start(worker.serve)
            base = f"http://127.0.0.1:{worker.health_port}"
            status, body = await anyio.to_thread.run_sync(_get, f"{base}/health")
            assert status == 200
            report = json.loads(body)
            assert (report["status"], report["worker_id"], report["slots_free"]) == (
                "ok",
                "w-health",
                2,
            )
            registry = JetStreamWorkerRegistry(client.jetstream())
            entry = (await registry.current())["w-health"]
            assert (entry.pool, entry.slots) == ("default", 2)
            await driver.submit("run6", "feature", "[[task:feature]] go")
            await _until_finished(log, "feature")
            with anyio.fail_after(30):
                # Liveness is refreshed every heartbeat_s, with the machine's load in it.
                async for beat in registry.watch():
                    if beat.worker_id == "w-health" and beat.memory_bytes > 0:
                        break
            _, metrics = await anyio.to_thread.run_sync(_get, f"{base}/metrics")
            worker.stop()
            assert worker.health()["status"] == "draining"
    assert "claudecluster_worker_slots 2.0" in metrics
    recorded = [type(s.envelope.payload).__name__ for s in await read_all(log, subjects=WORKERS)]
    # Liveness is not history: the log holds the join and the leave, no heartbeat.
    assert recorded == ["WorkerJoined", "WorkerLeft"]
    assert "claudecluster_worker_attempts_started_total 1.0" in metrics
    assert 'claudecluster_worker_attempts_finished_total{outcome="succeeded"} 1.0' in metrics


PREPARED = Script.model_validate(
    {
        "tasks": [
            {
                "marker": "[[task:prepared]]",
                "turns": [
                    {
                        "tools": [
                            {
                                "name": "Bash",
                                "input": {
                                    "command": "cat .env setup.log > seen.txt",
                                    "description": "use the local config",
                                },
                            }
                        ]
                    },
                    {"text": "Used the local config."},
                ],
            }
        ]
    }
)


async def test_untracked_files_are_copied_in_and_setup_runs_but_neither_is_committed(
    world: tuple[JetStreamEventLog, Any], source: Path, tmp_path: Path
) -> None:
    log, client = world
    (source / ".gitignore").write_text("setup.log\n")
    commit_all(source, "ignore setup output")
    local = tmp_path / "local"
    local.mkdir()
    (local / ".env").write_text("API_TOKEN=local-only-value\n")
    driver = Driver(log, client.jetstream(), source, tmp_path)
    async with open_scripted_model(PREPARED) as model:
        config = WorkerConfig(
            worker_id="w-prep",
            workspace_root=tmp_path / "workspaces",
            copy_from=local,
            copy_files=(".env",),
            setup_command="echo dependencies installed > setup.log",
            api_environment={"ANTHROPIC_BASE_URL": model.url, "ANTHROPIC_API_KEY": "sk-x"},
        )
        worker = Worker(config, log, client)
        async with anyio.create_task_group() as group:
            await group.start(worker.serve)
            item = await driver.submit("run7", "prepared", "[[task:prepared]] go")
            history = await _until_finished(log, "prepared")
            worker.stop()
    succeeded = history[-1].envelope.payload
    assert isinstance(succeeded, TaskSucceeded)
    bundle = await JetStreamArtifactStore(client.jetstream()).get_file(
        succeeded.artifacts[0], tmp_path / "r.bundle"
    )
    branch = task_branch("run7", "prepared")
    await fetch_result(source, bundle, branch)
    changed = git_output(source, "diff", "--name-only", item.base_commit, branch).split()
    assert changed == ["seen.txt"]  # neither .env nor setup.log travels
    seen = git_output(source, "show", f"{branch}:seen.txt")
    assert seen == "API_TOKEN=local-only-value\ndependencies installed\n"


async def test_git_works_inside_the_sandbox_on_a_workspace_borrowing_the_cache(
    world: tuple[JetStreamEventLog, Any], source: Path, tmp_path: Path, sandbox: object
) -> None:
    """A slot's workspace borrows the host cache's objects, which live outside it: the
    confined setup command and task must still read the history (the cache's objects are
    mounted read-only), and the worker's commit after the agent must still find them."""
    log, client = world
    (source / ".gitignore").write_text("setup-saw.txt\n")
    commit_all(source, "the last commit before the run")
    driver = Driver(log, client.jetstream(), source, tmp_path)
    config = WorkerConfig(
        worker_id="w-git",
        workspace_root=tmp_path / "workspaces",
        setup_command="git log --format=%s -1 > setup-saw.txt",
    )
    worker = Worker(config, log, client)
    async with anyio.create_task_group() as group:
        await group.start(worker.serve)
        item = await driver.submit(
            "run9",
            "gitty",
            "{ cat setup-saw.txt; git log --format=%s -1; git cat-file -t HEAD~1; } > seen.txt",
            executor="shell",
        )
        history = await _until_finished(log, "gitty")
        worker.stop()
    finished = history[-1].envelope.payload
    assert isinstance(finished, TaskSucceeded), finished
    bundle = await JetStreamArtifactStore(client.jetstream()).get_file(
        finished.artifacts[0], tmp_path / "r.bundle"
    )
    branch = task_branch("run9", "gitty")
    await fetch_result(source, bundle, branch)
    assert git_output(source, "show", f"{branch}:seen.txt") == (
        "the last commit before the run\nthe last commit before the run\ncommit\n"
    )
    assert git_output(source, "diff", "--name-only", item.base_commit, branch).split() == [
        "seen.txt"
    ]


async def test_local_workers_share_the_pool_and_leave_when_done(
    world: tuple[JetStreamEventLog, Any], source: Path, tmp_path: Path
) -> None:
    log, client = world
    driver = Driver(log, client.jetstream(), source, tmp_path)
    template = WorkerConfig(worker_id="template", workspace_root=tmp_path / "workspaces")
    async with open_scripted_model(SCRIPT) as model:
        template = replace(
            template,
            api_environment={"ANTHROPIC_BASE_URL": model.url, "ANTHROPIC_API_KEY": "sk-x"},
        )
        async with open_local_workers(2, template, log, client) as workers:
            assert len({w.config.worker_id for w in workers}) == 2
            await driver.submit("run8", "feature", "[[task:feature]] go")
            await _until_finished(log, "feature")
    events = [s.envelope.payload for s in await read_all(log)]
    joined = {e.worker_id for e in events if isinstance(e, WorkerJoined)}
    left = {e.worker_id for e in events if isinstance(e, WorkerLeft)}
    assert joined == left == {w.config.worker_id for w in workers}
    with pytest.raises(ValueError, match="at least one"):
        async with open_local_workers(0, template, log, client):
            pass


HESITANT = Script.model_validate(
    {
        "tasks": [
            {
                "marker": "[[task:hesitant]]",
                "latency_s": 2,
                "turns": [
                    {
                        "tools": [
                            {
                                "name": "Write",
                                "input": {"file_path": "{cwd}/x.txt", "content": "x\n"},
                            }
                        ]
                    },
                    {"text": "Wrote x.txt."},
                ],
            }
        ]
    }
)


async def test_a_draining_worker_hands_back_what_outlasts_its_deadline(
    world: tuple[JetStreamEventLog, Any], source: Path, tmp_path: Path
) -> None:
    log, client = world
    driver = Driver(log, client.jetstream(), source, tmp_path)
    async with open_scripted_model(HESITANT) as model:
        api = {"ANTHROPIC_BASE_URL": model.url, "ANTHROPIC_API_KEY": "sk-x"}
        first = Worker(
            WorkerConfig(worker_id="w-drain", workspace_root=tmp_path / "w", drain_deadline_s=0.2,
                         ack_wait_s=30, api_environment=api),
            log, client,
        )  # fmt: skip
        async with anyio.create_task_group() as group:
            await group.start(first.serve)
            await driver.submit("run9", "hesitant", "[[task:hesitant]] go")
            with anyio.fail_after(30):
                await model.wait_requests(1)
            first.stop()  # the attempt outlasts the 0.2 s deadline: it is handed back
        second = Worker(
            WorkerConfig(worker_id="w-next", workspace_root=tmp_path / "w", api_environment=api),
            log, client,
        )  # fmt: skip
        async with anyio.create_task_group() as group:
            await group.start(second.serve)
            history = await _until_finished(log, "hesitant")
            second.stop()
    finished = history[-1].envelope.payload
    assert isinstance(finished, TaskSucceeded)
    assert (finished.worker_id, finished.attempt) == ("w-next", 2)


async def test_a_take_over_decided_before_the_task_finished_is_refused_and_records_nothing(
    world: tuple[JetStreamEventLog, Any], source: Path, tmp_path: Path
) -> None:
    # A copy of a running attempt's item arrives; the worker reads the task as running and
    # decides to take it over. Before it records the claim, the holder records success.
    # The claim is conditional on the history the decision saw, so it must fail.
    log, client = world
    driver = Driver(log, client.jetstream(), source, tmp_path)
    item = await driver.submit("race", "feature", "[[task:feature]] go")
    await driver.record(TaskAssigned(run_id="race", task_id="feature", attempt=1,
                                     worker_id="holder"))  # fmt: skip
    worker = Worker(WorkerConfig(worker_id="w-late", workspace_root=tmp_path / "ws"), log, client)
    task, seen = await worker._task_view(item)
    admission = admit(task, item.attempt)
    assert admission.action == "take_over"
    await driver.record(TaskSucceeded(run_id="race", task_id="feature", attempt=1,
                                      worker_id="holder"))  # fmt: skip
    assert await worker._claim(item, admission, seen) is None
    events = [s.envelope.payload for s in await read_all(log)]
    assert [e.attempt for e in events if isinstance(e, TaskQueued)] == [1]
    assert not [e for e in events if isinstance(e, TaskAssigned) and e.worker_id == "w-late"]


class _CountsReads:
    """The event log, counting the readers opened on it."""

    def __init__(self, log: JetStreamEventLog) -> None:
        self._log = log
        self.reads = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._log, name)

    def open_reader(self, **kw: Any) -> Any:
        self.reads += 1
        return self._log.open_reader(**kw)


async def test_an_item_still_as_dispatched_is_claimed_without_reading_the_log(
    world: tuple[JetStreamEventLog, Any], source: Path, tmp_path: Path
) -> None:
    log, client = world
    driver = Driver(log, client.jetstream(), source, tmp_path)
    item = await driver.submit("fast", "feature", "[[task:feature]] go")
    queued = (await read_all(log))[-1]
    assert isinstance(queued.envelope.payload, TaskQueued)
    counting = _CountsReads(log)
    worker = Worker(WorkerConfig(worker_id="w-fast", workspace_root=tmp_path / "ws"),
                    counting, client)  # fmt: skip
    dispatched = msgspec.structs.replace(item, queued_seq=queued.seq)
    live = await worker._claim_as_dispatched(dispatched)
    assert live is not None
    assert counting.reads == 0
    history = await read_all(log)
    claim = history[-1]
    assert isinstance(claim.envelope.payload, TaskAssigned)
    assert (claim.envelope.payload.worker_id, claim.envelope.payload.attempt) == ("w-fast", 1)
    assert (live.attempt, live.last_seq) == (1, claim.seq)
    # What the fast path decided is what reading the whole history decides.
    task, _ = await worker._task_view(item)
    assert task is not None
    assert (task.state.value, task.worker_id) == ("assigned", "w-fast")


@pytest.mark.parametrize(
    "moved_on",
    [
        TaskAssigned(run_id="moved", task_id="feature", attempt=1, worker_id="other"),
        TaskCancelled(run_id="moved", task_id="feature", attempt=1, reason="on request"),
    ],
    ids=["claimed by another worker", "cancelled"],
)
async def test_an_item_whose_task_moved_on_is_decided_on_its_history_instead(
    world: tuple[JetStreamEventLog, Any],
    source: Path,
    tmp_path: Path,
    moved_on: TaskAssigned | TaskCancelled,
) -> None:
    log, client = world
    js = client.jetstream()
    driver = Driver(log, js, source, tmp_path)
    item = await driver.submit("moved", "feature", "true", executor="shell")
    queued_seq = (await read_all(log))[-1].seq
    await driver.record(moved_on)
    worker = Worker(WorkerConfig(worker_id="w-late", workspace_root=tmp_path / "ws"), log, client)
    dispatched = msgspec.structs.replace(item, queued_seq=queued_seq)
    before = await read_all(log)
    assert await worker._claim_as_dispatched(dispatched) is None
    assert await read_all(log) == before  # the conditional claim recorded nothing
    # An item that names no sequence (republished) takes the reading path at once.
    assert await worker._claim_as_dispatched(item) is None
    # Served, only this item on the queue, it is decided on the history: cancelled ->
    # dropped; held -> taken over as attempt 2 (a redelivery means the holder went silent).
    await js.purge_stream("CC_WORK")
    await js.publish(
        "cc.work.default", encode_work_item(dispatched), stream="CC_WORK",
        headers={"Nats-Msg-Id": "dispatched-again"},
    )  # fmt: skip

    async def scenario() -> None:
        with anyio.fail_after(60):
            # The server offers no event for an emptied queue: its state is polled.
            while (await js.stream_info("CC_WORK")).state.messages:  # noqa: ASYNC110
                await anyio.sleep(0.1)
        if isinstance(moved_on, TaskAssigned):
            await _until_finished(log, "feature")

    await _run_worker_until(log, client, tmp_path, "http://127.0.0.1:9", scenario)
    events = [s.envelope.payload for s in await read_all(log)]
    mine = [e for e in events if isinstance(e, TaskAssigned) and e.worker_id != "other"]
    if isinstance(moved_on, TaskCancelled):
        assert mine == []
    else:
        assert [(e.worker_id, e.attempt) for e in mine] == [("w-test", 2)]
        assert [e.attempt for e in events if isinstance(e, TaskSucceeded)] == [2]


class _ReadFailsOnce(_CountsReads):
    """The event log, except that the first read of a run's events fails, as a store
    failing over does."""

    failed = False

    def open_reader(self, **kw: Any) -> Any:
        if not self.failed and kw.get("subjects", "").endswith("._.>"):
            self.failed = True
            raise EventStoreError("cannot read CC_EVENTS: TimeoutError()")
        return super().open_reader(**kw)


async def test_a_store_failure_under_one_item_does_not_end_the_worker(
    world: tuple[JetStreamEventLog, Any], source: Path, tmp_path: Path
) -> None:
    log, client = world
    driver = Driver(log, client.jetstream(), source, tmp_path)
    flaky = _ReadFailsOnce(log)
    async with open_scripted_model(SCRIPT) as model:
        config = WorkerConfig(
            worker_id="w-flaky", workspace_root=tmp_path / "workspaces", ack_wait_s=2.0,
            api_environment={"ANTHROPIC_BASE_URL": model.url, "ANTHROPIC_API_KEY": "sk-x"},
        )  # fmt: skip
        worker = Worker(config, flaky, client)
        async with anyio.create_task_group() as group:
            await group.start(worker.serve)
            await driver.submit("flaky", "feature", "[[task:feature]] go")
            # The first delivery fails in the worker; it is handed back and runs again.
            history = await _until_finished(log, "feature")
            worker.stop()
    assert flaky.failed
    assert isinstance(history[-1].envelope.payload, TaskSucceeded)


class _MustNotRun:
    """An executor that records being asked: a refused item must never reach it."""

    def __init__(self) -> None:
        self.jobs: list[AttemptRun] = []

    async def run(self, job: AttemptRun, on_progress: Any) -> Outcome:
        self.jobs.append(job)
        return Outcome(succeeded=True)


@pytest.mark.parametrize(
    ("fields", "reason"),
    [
        ({"permission_mode": "bypassPermissions"}, "permission mode 'bypassPermissions'"),
        ({"mcp_config": '{"mcpServers": {"x": {"command": "sh"}}}'}, "MCP servers"),
    ],
    ids=["a permission mode not allowed", "plan-provided MCP servers"],
)
async def test_a_work_item_asking_for_what_the_worker_does_not_allow_is_refused_with_the_reason(
    world: tuple[JetStreamEventLog, Any],
    source: Path,
    tmp_path: Path,
    fields: dict[str, str],
    reason: str,
) -> None:
    log, client = world
    driver = Driver(log, client.jetstream(), source, tmp_path)
    executor = _MustNotRun()
    config = WorkerConfig(worker_id="w-strict", workspace_root=tmp_path / "ws", heartbeat_s=0.5)
    worker = Worker(config, log, client, executor=executor)
    async with anyio.create_task_group() as group:
        await group.start(worker.serve)
        await driver.submit("run-refused", "feature", "go", **fields)
        history = await _until_finished(log, "feature")
        worker.stop()
    failed = [s.envelope.payload for s in history if isinstance(s.envelope.payload, TaskFailed)]
    assert len(failed) == 1
    assert reason in failed[0].reason
    assert failed[0].reason.startswith("refused by worker w-strict")
    assert not failed[0].retryable
    assert executor.jobs == []
