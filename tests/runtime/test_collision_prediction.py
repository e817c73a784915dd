"""Two running tasks that collide: predicted while they run, and settled by the merges.

Real NATS, real workers in this process, real git; shell tasks stand in for agents. Each
task writes its file, then holds until the test has seen what it waits for (a file the
test creates), so both attempts are live at once whatever the machine's speed.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from claudecluster.events import RunCompleted, TaskMerged
from claudecluster.events.model import (
    CollisionPredicted,
    CollisionSettled,
    Event,
    MergeConflict,
    TaskFilesTouched,
)
from claudecluster.executors.confinement import Confinement
from claudecluster.runtime.local_workers import open_local_workers
from claudecluster.runtime.worker import WorkerConfig
from claudecluster.transport.jetstream import JetStreamEventLog
from tests.runtime.test_driver import Cluster, running_driver, shell
from tests.support import make_repo

#: How long a task holds for the test's go-ahead before it gives up (and fails).
_HOLD_LIMIT_S = 120

_LINES = "".join(f"line {i}\n" for i in range(1, 21))


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    return make_repo(tmp_path / "repo", {"notes.txt": "base\n", "long.txt": _LINES})


@asynccontextmanager
async def _cluster(
    world: tuple[JetStreamEventLog, Any], repo: Path, tmp_path: Path
) -> AsyncIterator[Cluster]:
    log, client = world
    template = WorkerConfig(
        worker_id="template",
        workspace_root=tmp_path / "workspaces",
        heartbeat_s=1.0,
        touched_every_s=0.3,
        # The tasks wait on a file of the test's, outside their workspaces: a sandbox
        # would hide it (confinement has tests of its own).
        confinement=Confinement.unconfined(),
    )
    async with open_local_workers(3, template, log, client):
        yield Cluster(log, client, repo, tmp_path)


def _held(task_id: str, edit: str, go: Path) -> Any:
    """A task that makes its edit, then waits for ``go`` (a resolution attempt, which
    finds conflict markers, keeps both sides instead)."""
    wait = f"for i in $(seq {_HOLD_LIMIT_S * 10}); do [ -e {go} ] && break; sleep 0.1; done"
    resolve = "printf 'one\\ntwo\\n' > notes.txt"
    command = (
        f"if grep -q '^<<<<<<<' notes.txt; then {resolve}; else {edit} && {wait} && [ -e {go} ]; fi"
    )
    return shell(task_id, command)


def _of(events: list[Event], kind: type[Any]) -> list[Any]:
    return [e for e in events if isinstance(e, kind)]


async def test_two_running_tasks_that_edit_one_line_are_predicted_and_the_prediction_comes_true(
    world: tuple[JetStreamEventLog, Any], repo: Path, tmp_path: Path
) -> None:
    go = tmp_path / "go"
    tasks = [
        _held("one", "echo one > notes.txt", go),
        _held("two", "echo two > notes.txt", go),
        _held("other", "echo other > other.txt", go),
    ]
    async with _cluster(world, repo, tmp_path) as cluster, running_driver(cluster):
        await cluster.submit("clash", tasks)
        seen = await cluster.wait_for(lambda es: bool(_of(es, CollisionPredicted)))
        go.touch()
        events = await cluster.wait_end("clash")
    # Reported while running, before either result existed.
    touched = {(e.task_id, e.files) for e in _of(seen, TaskFilesTouched)}
    assert {("one", ("notes.txt",)), ("two", ("notes.txt",))} <= touched
    (predicted,) = _of(events, CollisionPredicted)
    assert {predicted.task_id, predicted.other_task_id} == {"one", "two"}
    assert (predicted.files, predicted.action) == (("notes.txt",), "let_both")
    # let_both: both finished; the second to merge conflicted and was resolved.
    (conflict,) = _of(events, MergeConflict)
    assert conflict.files == ("notes.txt",)
    (settled,) = _of(events, CollisionSettled)
    assert (settled.task_id, settled.other_task_id) == (predicted.task_id, predicted.other_task_id)
    assert (settled.came_true, settled.outcome) == (True, "conflicted")
    assert {m.task_id for m in _of(events, TaskMerged)} == {"one", "two", "other"}
    assert cluster.branch_file("clash", "notes.txt") == "one\ntwo\n"
    # The settlement is recorded before the run's end.
    kinds = [type(e) for e in events]
    assert kinds.index(CollisionSettled) < kinds.index(RunCompleted)


async def test_two_running_tasks_on_distant_lines_are_predicted_and_settle_as_a_false_alarm(
    world: tuple[JetStreamEventLog, Any], repo: Path, tmp_path: Path
) -> None:
    go = tmp_path / "go"
    tasks = [
        _held("top", "sed -i 's/^line 1$/top/' long.txt", go),
        _held("bottom", "sed -i 's/^line 20$/bottom/' long.txt", go),
    ]
    async with _cluster(world, repo, tmp_path) as cluster, running_driver(cluster):
        await cluster.submit("near", tasks)
        await cluster.wait_for(lambda es: bool(_of(es, CollisionPredicted)))
        go.touch()
        events = await cluster.wait_end("near")
    (predicted,) = _of(events, CollisionPredicted)
    assert predicted.files == ("long.txt",)
    assert _of(events, MergeConflict) == []
    (settled,) = _of(events, CollisionSettled)
    assert (settled.came_true, settled.outcome) == (False, "merged_clean")
    text = cluster.branch_file("near", "long.txt")
    assert text.startswith("top\n")
    assert text.endswith("bottom\n")
    (completed,) = _of(events, RunCompleted)
    assert completed.tasks_succeeded == 2
