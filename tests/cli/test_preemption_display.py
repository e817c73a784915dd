"""An attempt stopped early for a predicted collision (restart_later) is shown, as what it
is, in the lines a run prints as it goes, its summary, the status table and the report."""

from __future__ import annotations

import io

from rich.console import Console

from claudecluster.cli.follow import RunEnd, renderer_for
from claudecluster.cli.render import preemption_lines, tasks_table
from claudecluster.cli.run_cmd import print_summary
from claudecluster.events import (
    RunCompleted,
    RunPlanned,
    RunSubmitted,
    TaskMerged,
    TaskQueued,
    TaskSpec,
    TaskStarted,
    TaskSucceeded,
)
from claudecluster.events.model import CollisionPredicted, Event, TaskPreempted
from claudecluster.projections.cluster import ClusterView, apply
from claudecluster.projections.progress import preemptions
from claudecluster.reporting import render_html, render_markdown, run_record
from tests.cli.test_merge_warnings import _stored, _view


def _attempt(task_id: str, attempt: int) -> list[Event]:
    return [
        TaskQueued(run_id="r", task_id=task_id, attempt=attempt),
        TaskStarted(run_id="r", task_id=task_id, attempt=attempt, worker_id="w"),
    ]


def _merged(task_id: str, attempt: int, commit: str) -> list[Event]:
    return [
        TaskSucceeded(run_id="r", task_id=task_id, attempt=attempt, worker_id="w"),
        TaskMerged(run_id="r", task_id=task_id, attempt=attempt, commit=commit,
                   integration_branch="claudecluster/r"),
    ]  # fmt: skip


def _log(*, finished: bool = True) -> list[Event]:
    tasks = tuple(TaskSpec(task_id=t, title=t, prompt="p") for t in ("one", "two"))
    events: list[Event] = [
        RunSubmitted(run_id="r", goal="g", repo="/r"),
        RunPlanned(run_id="r", tasks=tasks, base_commit="b0", integration_branch="claudecluster/r"),
        *_attempt("one", 1),
        *_attempt("two", 1),
        CollisionPredicted(run_id="r", task_id="two", attempt=1, other_task_id="one",
                           other_attempt=1, files=("x.py",), action="restart_later"),
        TaskPreempted(run_id="r", task_id="two", attempt=1, other_task_id="one",
                      files=("x.py",), reason="predicted to collide"),
    ]  # fmt: skip
    if finished:
        events += [
            *_merged("one", 1, "c1"),
            *_attempt("two", 2),
            *_merged("two", 2, "c2"),
            RunCompleted(run_id="r", head_commit="c2", tasks_succeeded=2, preempted_attempts=1),
        ]
    return events


def test_the_progress_lines_and_the_summary_say_an_attempt_was_stopped_and_rerun() -> None:
    stored = _stored(_log())
    out = io.StringIO()
    console = Console(file=out, width=200, force_terminal=False)
    renderer = renderer_for(console, "r", json=False)
    view = ClusterView()
    for s in stored:
        view = apply(view, s)
        renderer.event(s, view)
    end = stored[-1].envelope.payload
    assert isinstance(end, RunCompleted)
    print_summary(console, RunEnd(event=end, view=view))
    text = out.getvalue()
    assert "two: predicted to collide with one in x.py; policy: restart_later" in text
    assert (
        "two: attempt 1 stopped early, predicted to collide with one in x.py; "
        "it runs again once one merged"
    ) in text
    assert "run completed: 2 merged, 1 attempt(s) stopped early and re-run" in text
    assert (
        "run r completed: 2 merged, 0 failed, 0 skipped; 1 attempt(s) stopped early for a "
        "predicted collision and re-run"
    ) in text
    assert (
        "note: two: 1 attempt(s) stopped early, predicted to collide with one; re-run on "
        "top of one's merge, now merged"
    ) in text


def test_status_shows_a_preempted_task_waiting_and_the_report_lists_the_stopped_attempt() -> None:
    waiting = _view(_stored(_log(finished=False)))
    assert preemptions(waiting, "r") == [("two", 1, "one", "preempted")]
    out = io.StringIO()
    Console(file=out, width=200).print(tasks_table(waiting, "r"))
    assert "preempted (waits for one)" in out.getvalue()
    assert "1 (1 stopped early)" in out.getvalue()
    assert preemption_lines(waiting, "r") == [
        "note: two: 1 attempt(s) stopped early, predicted to collide with one; waits for one "
        "to merge"
    ]
    stored = _stored(_log())
    record = run_record(_view(stored), stored, "r")
    assert [(a["task"], a["attempt"], a["outcome"]) for a in record["attempts"]] == [
        ("one", 1, "succeeded"), ("two", 1, "preempted"), ("two", 2, "succeeded"),
    ]  # fmt: skip
    (stopped,) = record["preemptions"]
    assert (stopped["task"], stopped["attempt"], stopped["other"]) == ("two", 1, "one")
    assert [t["preempted"] for t in record["tasks"]] == [0, 1]
    markdown = render_markdown(record)
    assert "## Attempts stopped early" in markdown
    assert "- two (attempt 1): predicted to collide with one in x.py" in markdown
    assert "<h2>Attempts stopped early</h2><ul><li>two (attempt 1)" in render_html(record)
