"""The merge queue's git work on a real repository: a batch stacked, verified once, and
bisected to the one result that breaks the verify command. No NATS: the results are
commits made here, and the recorded events are collected in a list."""

from __future__ import annotations

from pathlib import Path

import pytest

from claudecluster.actors.driver import Merge, MergeBatch
from claudecluster.actors.merging import Bisection
from claudecluster.events import TaskFailed, TaskMerged, TaskSucceeded
from claudecluster.events.model import Event, MergeConflict
from claudecluster.executors.confined import ConfinedVerify
from claudecluster.runtime.merge_queue import BatchMerger
from claudecluster.workspace.integration import Integration
from tests.support import commit_all, git_output, make_repo


def _integration(repo: Path, tmp_path: Path) -> Integration:
    """The run's integration branch, its verify commands confined as the driver's are."""
    return Integration(
        repo, tmp_path / "integration", "claudecluster/r", run_verify=ConfinedVerify()
    )


def _result(repo: Path, base: str, task_id: str, files: dict[str, str]) -> str:
    git_output(repo, "checkout", "-q", "--detach", base)
    for name, text in files.items():
        (repo / name).write_text(text)
    commit_all(repo, task_id)
    return git_output(repo, "rev-parse", "HEAD").strip()


def _item(task_id: str, head: str) -> Merge:
    return Merge(
        key="merge:r", run_id="r", task_id=task_id, attempt=1, title=f"task {task_id}",
        result=TaskSucceeded(run_id="r", task_id=task_id, attempt=1, worker_id="w"),
        head=head, integration_branch="claudecluster/r", verify=True, on_conflict="resolve",
        expected_last=0,
    )  # fmt: skip


class _Log:
    def __init__(self) -> None:
        self.events: list[Event] = []

    async def record(self, event: Event, event_id: str, expected_last: int | None) -> int:
        del event_id, expected_last
        self.events.append(event)
        return len(self.events)


async def _merge(
    tmp_path: Path, results: dict[str, dict[str, str]], verify: str, at_once: int = 1
) -> tuple[_Log, BatchMerger, Path, str]:
    repo = make_repo(tmp_path / "repo", {"app.py": "VERSION = 1\n"})
    base = git_output(repo, "rev-parse", "HEAD").strip()
    commits = {task: _result(repo, base, task, files) for task, files in results.items()}
    git_output(repo, "checkout", "-q", "main")
    integration = _integration(repo, tmp_path)
    await integration.start(base)
    log = _Log()

    async def theirs_of(item: Merge) -> str | None:
        return commits[item.task_id]

    merger = BatchMerger(integration, repo, log.record, theirs_of, verify, 60.0, at_once)
    batch = MergeBatch(
        key="merge:r", run_id="r", items=tuple(_item(t, base) for t in results), head=base,
        verify=True,
    )  # fmt: skip
    await merger.run(batch)
    return log, merger, repo, base


async def test_a_batch_that_passes_is_verified_once_and_merged_as_one_commit_each(
    tmp_path: Path,
) -> None:
    results = {f"t{i}": {f"f{i}.txt": f"{i}\n"} for i in range(6)}
    log, merger, repo, base = await _merge(tmp_path, results, "test -e f5.txt")
    assert merger.verify_runs == 1
    merged = [e for e in log.events if isinstance(e, TaskMerged)]
    assert [m.task_id for m in merged] == list(results)
    assert all(m.brought_changes for m in merged)
    assert [f.path for f in merged[2].files] == ["f2.txt"]
    subjects = git_output(repo, "log", "--format=%s", f"{base}..claudecluster/r").split("\n")
    assert subjects[:6] == [f"t{i}: task t{i}" for i in reversed(range(6))]
    trailers = git_output(repo, "log", "--format=%(trailers:key=ClaudeCluster-Task,valueonly)",
                          f"{base}..claudecluster/r").split()  # fmt: skip
    assert trailers == [f"r/t{i}/1" for i in reversed(range(6))]


async def test_a_failing_batch_is_bisected_to_its_culprit_which_alone_is_rejected(
    tmp_path: Path,
) -> None:
    results = {f"t{i}": {f"f{i}.txt": f"{i}\n"} for i in range(8)}
    results["t5"]["bad.txt"] = "broken\n"
    log, merger, repo, _ = await _merge(tmp_path, results, "echo checking; test ! -e bad.txt")
    # One run on the whole batch, then log2(8) = 3 probes.
    assert merger.verify_runs == 4
    merged = [e.task_id for e in log.events if isinstance(e, TaskMerged)]
    assert merged == ["t0", "t1", "t2", "t3", "t4"]
    (failed,) = [e for e in log.events if isinstance(e, TaskFailed)]
    assert (failed.task_id, failed.failure_class) == ("t5", "verify")
    assert "exited with status 1: checking" in failed.reason
    files = git_output(repo, "ls-tree", "--name-only", "claudecluster/r").split()
    assert "f4.txt" in files
    assert "bad.txt" not in files
    assert "f6.txt" not in files  # after the culprit: merged in the next batch


async def test_a_conflict_after_the_first_result_ends_the_batch_there(tmp_path: Path) -> None:
    results = {
        "a": {"app.py": "VERSION = 2\n"},
        "b": {"b.txt": "b\n"},
        "c": {"app.py": "VERSION = 3\n"},
        "d": {"d.txt": "d\n"},
    }
    log, merger, _, _ = await _merge(tmp_path, results, "true")
    assert [e.task_id for e in log.events if isinstance(e, TaskMerged)] == ["a", "b"]
    assert not any(isinstance(e, MergeConflict) for e in log.events)  # c goes first next time
    assert merger.verify_runs == 1


@pytest.mark.parametrize("size", range(1, 12))
def test_bisection_finds_the_first_breaking_result_of_any_batch(size: int) -> None:
    for culprit in range(size):
        search, probes = Bisection(good=0, bad=size), 0
        while (probe := search.probe) is not None:
            probes += 1
            search = search.record(probe, passed=probe <= culprit)
        assert (search.culprit, search.good) == (culprit, culprit)
        assert probes <= max(size - 1, 0).bit_length()


@pytest.mark.parametrize(("size", "at_once"), [(n, k) for n in (2, 5, 19, 40) for k in (2, 4)])
def test_probes_at_once_find_the_culprit_in_log_k_plus_one_rounds(size: int, at_once: int) -> None:
    for culprit in range(size):
        search, rounds = Bisection(good=0, bad=size), 0
        while probes := search.probes(at_once):
            assert len(probes) <= at_once
            assert all(search.good < p < search.bad for p in probes)
            rounds += 1
            search = search.record_all({p: p <= culprit for p in probes})
        assert search.culprit == culprit
        limit, reach = 0, 1
        while reach < size:  # rounds needed to cut ``size`` into single results
            reach *= at_once + 1
            limit += 1
        assert rounds <= limit + 1


async def test_probes_run_at_once_each_in_its_own_worktree(tmp_path: Path) -> None:
    results = {f"t{i}": {f"f{i}.txt": f"{i}\n"} for i in range(8)}
    results["t5"]["bad.txt"] = "broken\n"
    log, merger, repo, _ = await _merge(tmp_path, results, "test ! -e bad.txt", at_once=4)
    assert [e.task_id for e in log.events if isinstance(e, TaskMerged)] == [
        "t0", "t1", "t2", "t3", "t4",
    ]  # fmt: skip
    assert [e.task_id for e in log.events if isinstance(e, TaskFailed)] == ["t5"]
    assert merger.verify_runs == 5  # the batch, then one round of four probes
    assert "probe-" not in git_output(repo, "worktree", "list")


async def test_probes_of_the_same_commit_at_once_do_not_share_a_worktree(tmp_path: Path) -> None:
    # b changes nothing, so prefixes 1 and 2 are the same commit and may be probed at once.
    results = {
        "a": {"a.txt": "a\n"},
        "b": {"a.txt": "a\n"},
        "c": {"c.txt": "c\n"},
        "d": {"d.txt": "d\n", "bad.txt": "x\n"},
        "e": {"e.txt": "e\n"},
    }
    log, _merger, repo, _ = await _merge(tmp_path, results, "test ! -e bad.txt", at_once=4)
    merged = [e for e in log.events if isinstance(e, TaskMerged)]
    assert [(m.task_id, m.brought_changes) for m in merged] == [
        ("a", True), ("b", False), ("c", True),
    ]  # fmt: skip
    assert merged[1].note == "its changes were already on the integration branch"
    # Recorded at the commit the branch holds at that point, so the driver's idea of the
    # head after the batch is the branch's: the last merge recorded is on it.
    assert merged[1].commit == merged[0].commit
    assert merged[-1].commit == git_output(repo, "rev-parse", "claudecluster/r").strip()
    assert [e.task_id for e in log.events if isinstance(e, TaskFailed)] == ["d"]


async def test_a_batch_carried_out_again_after_a_crash_records_what_is_on_the_branch(
    tmp_path: Path,
) -> None:
    # The driver moved the branch, then died before recording the merges: the batch is
    # asked for again from the old head, and the commits are found by their trailers.
    results = {f"t{i}": {f"f{i}.txt": f"{i}\n"} for i in range(3)}
    first, _, repo, base = await _merge(tmp_path, results, "true")
    head = git_output(repo, "rev-parse", "claudecluster/r").strip()
    again = _Log()
    integration = _integration(repo, tmp_path)

    async def unused(item: Merge) -> str | None:
        raise AssertionError(f"{item.task_id} was fetched again")

    rerun = BatchMerger(integration, repo, again.record, unused, "true", 60.0)
    items = tuple(_item(t, base) for t in results)
    await rerun.run(MergeBatch(key="merge:r", run_id="r", items=items, head=base, verify=True))
    assert again.events == first.events  # the same merges, at the same commits
    assert rerun.verify_runs == 0
    assert git_output(repo, "rev-parse", "claudecluster/r").strip() == head
