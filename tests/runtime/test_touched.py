"""What a worker reports as touched: every changed path in a real workspace."""

from __future__ import annotations

from pathlib import Path

import anyio

from claudecluster.runtime.touched import touched_files, watch_touched
from tests.support import commit_all, git_output, make_repo


async def test_committed_staged_unstaged_and_untracked_changes_count_ignored_files_do_not(
    tmp_path: Path,
) -> None:
    repo = make_repo(tmp_path / "ws", {"a.txt": "a\n", "b.txt": "b\n", ".gitignore": "*.log\n"})
    base = git_output(repo, "rev-parse", "HEAD").strip()
    assert await touched_files(repo, base) == frozenset()
    (repo / "a.txt").write_text("changed\n")
    (repo / "c.txt").write_text("committed\n")
    commit_all(repo, "agent commit")
    (repo / "b.txt").write_text("unstaged\n")
    (repo / "d.txt").write_text("staged\n")
    git_output(repo, "add", "d.txt")
    (repo / "sub").mkdir()
    (repo / "sub" / "new.py").write_text("untracked\n")
    (repo / "run.log").write_text("ignored\n")
    assert await touched_files(repo, base) == {"a.txt", "b.txt", "c.txt", "d.txt", "sub/new.py"}


async def test_the_watcher_reports_the_whole_set_each_time_it_changed(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "ws", {"a.txt": "a\n"})
    base = git_output(repo, "rev-parse", "HEAD").strip()
    reports: list[tuple[str, ...]] = []
    changed = anyio.Event()

    async def report(files: tuple[str, ...]) -> None:
        reports.append(files)
        changed.set()

    with anyio.fail_after(30):
        async with anyio.create_task_group() as group:
            group.start_soon(lambda: watch_touched(repo, base, report, every_s=0.05))
            (repo / "a.txt").write_text("one\n")
            await changed.wait()
            changed = anyio.Event()
            (repo / "b.txt").write_text("two\n")
            await changed.wait()
            group.cancel_scope.cancel()
    assert reports == [("a.txt",), ("a.txt", "b.txt")]
