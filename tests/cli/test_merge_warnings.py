"""A task counted as merged although its merge changed nothing is shown as a warning in
the lines a run prints as it goes, its summary, the status table and the report."""

from __future__ import annotations

import io

from rich.console import Console

from claudecluster.cli.follow import RunEnd, renderer_for
from claudecluster.cli.render import merge_warning_lines, tasks_table
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
    wrap_event,
)
from claudecluster.events.envelope import StoredEvent
from claudecluster.events.model import Event
from claudecluster.events.subjects import event_subject
from claudecluster.projections.cluster import ClusterView, apply
from claudecluster.reporting import render_html, render_markdown, run_record
from tests.support import T0

_KEPT = "the resolution kept the integration side: both wrote the same line"


def _log() -> list[Event]:
    tasks = (
        TaskSpec(task_id="one", title="one", prompt="p"),
        TaskSpec(task_id="two", title="two", prompt="p"),
        TaskSpec(task_id="look", title="look", prompt="p", kind="review"),
    )
    events: list[Event] = [
        RunSubmitted(run_id="r", goal="g", repo="/r"),
        RunPlanned(run_id="r", tasks=tasks, base_commit="b0", integration_branch="claudecluster/r"),
    ]
    for task in tasks:
        t = task.task_id
        changed = t == "one"
        events += [
            TaskQueued(run_id="r", task_id=t, attempt=1),
            TaskStarted(run_id="r", task_id=t, attempt=1, worker_id="w"),
            TaskSucceeded(run_id="r", task_id=t, attempt=1, worker_id="w"),
            TaskMerged(
                run_id="r", task_id=t, attempt=1, commit="c1", integration_branch="claudecluster/r",
                brought_changes=changed,
                note="" if changed else (_KEPT if t == "two" else "the task changed no file"),
            ),
        ]  # fmt: skip
    events.append(RunCompleted(run_id="r", head_commit="c1", tasks_succeeded=3))
    return events


def _stored(events: list[Event]) -> list[StoredEvent]:
    return [
        StoredEvent(
            seq=n, subject=event_subject(e), envelope=wrap_event(e, event_id=f"e{n}", now=T0)
        )
        for n, e in enumerate(events, 1)
    ]


def _view(stored: list[StoredEvent]) -> ClusterView:
    view = ClusterView()
    for s in stored:
        view = apply(view, s)
    return view


def test_the_progress_lines_and_the_summary_say_which_task_merged_without_changes() -> None:
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
    assert f"two: merged WITHOUT CHANGES, the branch stays at c1: {_KEPT}" in text
    assert "run completed: 3 merged (1 without changes)" in text
    assert "run r completed: 3 merged (1 without changes), 0 failed, 0 skipped" in text
    assert f"warning: two merged without changes: {_KEPT}" in text
    # A review task changes nothing by design: no warning for it.
    assert "warning: look" not in text


def test_status_and_the_report_show_the_warning() -> None:
    stored = _stored(_log())
    view = _view(stored)
    assert merge_warning_lines(view, "r") == [f"warning: two merged without changes: {_KEPT}"]
    out = io.StringIO()
    Console(file=out, width=200).print(tasks_table(view, "r"))
    assert "merged (no change)" in out.getvalue()
    record = run_record(view, stored, "r")
    assert record["warnings"] == [{"task": "two", "detail": f"merged without changes: {_KEPT}"}]
    assert f"merged without changes: {_KEPT}" in render_markdown(record)
    assert '<ul class="warnings"><li><b>two</b>' in render_html(record)
