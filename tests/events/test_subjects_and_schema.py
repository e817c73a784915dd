"""The subject map and the exported JSON Schema catalogue."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from claudecluster.cli.events_cmd import write_schemas
from claudecluster.errors import InvalidIdError
from claudecluster.events import (
    COMMAND_TYPES,
    EVENT_TYPES,
    CancelRun,
    RunPlanned,
    TaskQueued,
    WorkerJoined,
    command_subject,
    event_subject,
    run_filter,
    task_filter,
    worker_filter,
)
from claudecluster.events.model import DriverEvent, DriverLeaseTaken, Event
from claudecluster.events.schema import render_schemas
from claudecluster.events.subjects import DRIVER_FENCE, check_id, scope_filter, subject_matches
from tests.strategies import events


def test_task_run_and_worker_events_have_their_documented_subjects() -> None:
    assert event_subject(TaskQueued(run_id="r1", task_id="lint")) == "cc.evt.r1.lint.task.queued"
    planned = RunPlanned(run_id="r1", tasks=(), base_commit="c", integration_branch="b")
    assert event_subject(planned) == "cc.evt.r1._.run.planned"
    assert event_subject(WorkerJoined(worker_id="w1")) == "cc.evt._workers.w1.worker.joined"
    lease = DriverLeaseTaken(driver_id="d1", epoch=3)
    assert event_subject(lease) == "cc.evt._driver.d1.driver.lease_taken"
    assert command_subject(CancelRun(run_id="r1")) == "cc.cmd.run.cancel"


def test_filters_select_a_task_a_run_or_workers() -> None:
    assert task_filter("r1", "lint") == "cc.evt.r1.lint.>"
    assert run_filter("r1") == "cc.evt.r1.>"
    assert worker_filter() == "cc.evt._workers.*.>"
    assert worker_filter("w1") == "cc.evt._workers.w1.>"


@given(events())
def test_every_event_lies_inside_its_own_scope_and_run_filters(event: Event) -> None:
    subject = event_subject(event)
    assert subject_matches(scope_filter(event), subject)
    assert subject_matches("cc.evt.>", subject)
    run_id = getattr(event, "run_id", None)
    if run_id is not None:
        assert subject_matches(run_filter(run_id), subject)
        assert not subject_matches(worker_filter(), subject)
    elif isinstance(event, DriverEvent):
        assert subject_matches("cc.evt._driver.>", subject)
        assert subject_matches(DRIVER_FENCE, subject) == isinstance(event, DriverLeaseTaken)
        assert not subject_matches(worker_filter(), subject)
    else:
        assert subject_matches(worker_filter(), subject)
        assert not subject_matches(DRIVER_FENCE, subject)


@pytest.mark.parametrize(
    ("pattern", "subject", "expected"),
    [
        ("a.b", "a.b", True),
        ("a.*", "a.b", True),
        ("a.*", "a.b.c", False),
        ("a.>", "a.b.c", True),
        ("a.>", "a", False),
        ("a.*.c", "a.b.c", True),
        ("a.b", "a.b.c", False),
        ("a.b.c", "a.b", False),
    ],
)
def test_subject_matching_follows_nats_wildcards(
    pattern: str, subject: str, expected: bool
) -> None:
    assert subject_matches(pattern, subject) is expected


@pytest.mark.parametrize("bad", ["", "a.b", "a*", "_x", "a b", "x" * 65, ">"])
def test_ids_that_would_break_subjects_are_rejected_by_name(bad: str) -> None:
    with pytest.raises(InvalidIdError) as caught:
        check_id("task", bad)
    assert caught.value.value == bad
    with pytest.raises(InvalidIdError):
        event_subject(TaskQueued(run_id="r1", task_id=bad))


@given(st.from_regex(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$", fullmatch=True))
def test_every_valid_id_is_one_subject_token(value: str) -> None:
    assert check_id("run", value) == value
    assert len(event_subject(TaskQueued(run_id=value, task_id=value)).split(".")) == 6


def test_there_is_one_schema_per_event_and_command_plus_envelopes_and_plan() -> None:
    files = render_schemas()
    assert {f"events/{tag}.json" for tag in EVENT_TYPES} <= files.keys()
    assert {f"commands/{tag}.json" for tag in COMMAND_TYPES} <= files.keys()
    others = {"event-envelope.json", "command-envelope.json", "stored-event.json", "plan.json"}
    assert others <= files.keys()
    assert len(files) == len(EVENT_TYPES) + len(COMMAND_TYPES) + len(others)
    plan = json.loads(files["plan.json"])
    assert plan["title"] == "PlanFile"
    assert "tasks" in plan["$defs"]["PlanFile"]["required"]
    heartbeat = json.loads(files["events/worker.heartbeat.json"])
    assert heartbeat["x-schema-version"] == 2
    assert heartbeat["x-subject"] == "cc.evt._workers.<worker_id>.worker.heartbeat"


def test_the_committed_schema_catalogue_is_current(repo_root: Path) -> None:
    committed = repo_root / "events" / "schema"
    rendered = render_schemas()
    on_disk = {p.relative_to(committed).as_posix() for p in committed.rglob("*.json")}
    assert on_disk == set(rendered), "run 'claudecluster events schema' and commit the result"
    for rel, text in rendered.items():
        assert (committed / rel).read_text(encoding="utf-8") == text, (
            f"events/schema/{rel} is stale: run 'claudecluster events schema'"
        )


def test_writing_schemas_removes_files_of_types_that_no_longer_exist(tmp_path: Path) -> None:
    stale = tmp_path / "events" / "task.teleported.json"
    stale.parent.mkdir(parents=True)
    stale.write_text("{}", encoding="utf-8")
    written = write_schemas(tmp_path)
    assert not stale.exists()
    assert len(written) == len(render_schemas())
