"""Resolutions are judged before they count, and no conflict marker reaches the branch.

Real NATS, real workers in this process, real git; shell tasks stand in for agents so the
outcome of each resolution attempt is chosen by the test (the same cases with the real
Claude Code CLI are in tests/runtime/test_merge_judging_claude.py).

Each plan has two tasks writing the same line of ``notes.txt``: whichever merges second
conflicts, and its resolution attempt starts from the conflicted merge, markers and all.
The shell command tells the two situations apart by the markers in the file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from claudecluster.events import (
    MergeConflict,
    RunCompleted,
    RunFailed,
    RunPolicy,
    TaskFailed,
    TaskMerged,
    TaskQueued,
)
from claudecluster.executors.confinement import Confinement
from claudecluster.transport.jetstream import JetStreamEventLog
from tests.runtime.test_driver import open_cluster, running_driver, shell
from tests.support import git_output, make_repo

_CONFLICTED = "grep -q '^<<<<<<<' notes.txt"


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    return make_repo(tmp_path / "repo", {"notes.txt": "base\n"})


def _pair(on_resolve: str) -> list[Any]:
    """Two tasks writing their name over notes.txt; ``on_resolve`` runs when a resolution
    attempt finds the markers."""
    return [
        shell(name, f"if {_CONFLICTED}; then {on_resolve}; else echo {name} > notes.txt; fi")
        for name in ("one", "two")
    ]


def _merged(events: list[Any]) -> list[TaskMerged]:
    return [e for e in events if isinstance(e, TaskMerged)]


async def test_a_resolution_that_changes_nothing_is_refused_retried_and_stops_the_run(
    world: tuple[JetStreamEventLog, Any], repo: Path, tmp_path: Path
) -> None:
    # The bug this guards against: the attempt changed nothing, and TaskMerged used to be
    # recorded at the integration head (the other task's commit) as if it had merged.
    policy = RunPolicy(max_attempts=2)
    async with open_cluster(world, repo, tmp_path) as cluster, running_driver(cluster):
        await cluster.submit("nothing", _pair("true"), policy=policy)
        events = await cluster.wait_end("nothing")
    conflicts = [e for e in events if isinstance(e, MergeConflict)]
    loser = conflicts[0].task_id
    assert [c.problem != "" for c in conflicts] == [False, True, True]
    assert all(c.task_id == loser and c.files == ("notes.txt",) for c in conflicts)
    assert "changed nothing" in conflicts[1].problem
    assert "conflict markers are still in notes.txt" in conflicts[1].problem
    # The next attempt is told what was wrong.
    retry = next(e for e in events if isinstance(e, TaskQueued) and e.attempt == 3)
    assert retry.resolves_conflict
    assert "Your last resolution was refused: the resolution attempt changed nothing" in retry.note
    # Never recorded as merged; the run stops naming the task, the file and what to do.
    assert [m.task_id for m in _merged(events)] == [next(t for t in ("one", "two") if t != loser)]
    failed = next(e for e in events if isinstance(e, RunFailed))
    assert f"task {loser!r} still conflicts in notes.txt after 3 attempts" in failed.reason
    assert "by hand" in failed.reason
    assert "<<<<<<<" not in cluster.branch_file("nothing", "notes.txt")


async def test_a_resolution_that_leaves_markers_is_refused_and_the_next_one_counts(
    world: tuple[JetStreamEventLog, Any], repo: Path, tmp_path: Path
) -> None:
    # The first resolution appends a line and keeps the markers; the second (it finds the
    # flag the first left outside the workspaces) resolves by keeping both names. That flag
    # is state shared between attempts, which confinement forbids by design, so these
    # workers run unconfined: what is judged here is the merge, not the sandbox.
    flag = tmp_path / "tried"
    resolve = (
        f"if [ -e {flag} ]; then grep -v '^[<=>]\\{{7\\}}' notes.txt > t && mv t notes.txt; "
        f"else touch {flag} && echo extra >> notes.txt; fi"
    )
    unconfined = Confinement.unconfined()
    async with (
        open_cluster(world, repo, tmp_path, confinement=unconfined) as cluster,
        running_driver(cluster),
    ):
        await cluster.submit("markers", _pair(resolve))
        events = await cluster.wait_end("markers")
    refused = [e for e in events if isinstance(e, MergeConflict) and e.problem]
    assert len(refused) == 1
    assert (
        "conflict markers (<<<<<<<, =======, >>>>>>>) are left in notes.txt" in refused[0].problem
    )
    completed = next(e for e in events if isinstance(e, RunCompleted))
    assert completed.tasks_succeeded == 2
    assert all(m.brought_changes for m in _merged(events))
    assert sorted(cluster.branch_file("markers", "notes.txt").split()) == ["one", "two"]


async def test_a_resolution_that_keeps_the_integration_side_on_purpose_is_recorded_as_such(
    world: tuple[JetStreamEventLog, Any], repo: Path, tmp_path: Path
) -> None:
    # Keep the integration side ("ours", the first block) and say so.
    keep = (
        "sed -n '/^<<<<<<</,/^=======/p' notes.txt | sed '1d;$d' > t && mv t notes.txt && "
        "echo 'KEPT INTEGRATION SIDE: both tasks record the same note'"
    )
    async with open_cluster(world, repo, tmp_path) as cluster, running_driver(cluster):
        await cluster.submit("keep", _pair(keep))
        events = await cluster.wait_end("keep")
    merged = _merged(events)
    assert [m.brought_changes for m in merged] == [True, False]
    first, kept = merged
    assert kept.commit == first.commit  # the branch did not move
    assert kept.note == "the resolution kept the integration side: both tasks record the same note"
    completed = next(e for e in events if isinstance(e, RunCompleted))
    assert completed.tasks_succeeded == 2
    assert cluster.branch_file("keep", "notes.txt").split() == [first.task_id]


async def test_markers_in_a_task_s_own_result_never_reach_the_branch(
    world: tuple[JetStreamEventLog, Any], repo: Path, tmp_path: Path
) -> None:
    markers = "printf '<<<<<<< a\\nx\\n=======\\ny\\n>>>>>>> b\\n' > merged.txt"
    # A Markdown heading underlined with ======= is no conflict.
    heading = "printf 'Title\\n=======\\n\\ntext\\n' > README.md"
    tasks = [shell("heading", heading), shell("dirty", markers, "heading")]
    async with open_cluster(world, repo, tmp_path) as cluster, running_driver(cluster):
        await cluster.submit("dirty", tasks, policy=RunPolicy(on_conflict="stop"))
        events = await cluster.wait_end("dirty")
    refused = next(e for e in events if isinstance(e, MergeConflict))
    assert (refused.task_id, refused.files) == ("dirty", ("merged.txt",))
    assert "conflict markers" in refused.problem
    assert [m.task_id for m in _merged(events)] == ["heading"]
    failed = next(e for e in events if isinstance(e, RunFailed))
    assert "task 'dirty' conflicts with the integration branch in merged.txt" in failed.reason
    files = git_output(repo, "ls-tree", "--name-only", "claudecluster/dirty").split()
    assert "merged.txt" not in files
    assert "README.md" in files


async def test_a_batch_whose_verify_fails_in_one_member_rejects_only_that_member(
    world: tuple[JetStreamEventLog, Any], repo: Path, tmp_path: Path
) -> None:
    # Five results released together by "gate"; whatever batches they merge in, the one
    # that breaks the verify command is found and rejected, the others merge once each.
    tasks = [shell("gate", "echo gate > gate.txt")] + [
        shell(f"t{i}", f"echo {i} > t{i}.txt" + (" && echo broken > bad.txt" if i == 3 else ""),
              "gate")
        for i in range(5)
    ]  # fmt: skip
    policy = RunPolicy(verify_command="test ! -e bad.txt", max_attempts=1)
    async with open_cluster(world, repo, tmp_path, workers=5) as cluster, running_driver(cluster):
        await cluster.submit("batch", tasks, policy=policy)
        events = await cluster.wait_end("batch")
    merged = [m.task_id for m in _merged(events)]
    assert merged[0] == "gate"
    assert sorted(merged) == ["gate", "t0", "t1", "t2", "t4"]
    failed = [e for e in events if isinstance(e, TaskFailed)]
    assert [(f.task_id, f.failure_class) for f in failed] == [("t3", "verify")]
    completed = next(e for e in events if isinstance(e, RunCompleted))
    assert (completed.tasks_succeeded, completed.tasks_failed) == (5, 1)
    files = git_output(repo, "ls-tree", "--name-only", "claudecluster/batch").split()
    assert {"t0.txt", "t1.txt", "t2.txt", "t4.txt", "gate.txt"} <= set(files)
    assert "bad.txt" not in files
    # One squashed commit per merged task, in the order the merges were recorded.
    subjects = git_output(repo, "log", "--format=%s", "claudecluster/batch").splitlines()
    assert subjects[: len(merged)] == [f"{t}: task {t}" for t in reversed(merged)]
