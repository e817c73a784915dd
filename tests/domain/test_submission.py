"""A submission's bounds and the fan-out template's substitution, at every door and in
the driver's core."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from claudecluster.actors.driver import DriverConfig, Record
from claudecluster.domain.submission import fill_template, submission_problem, template_problem
from claudecluster.errors import ConfigError, GraphError
from claudecluster.events import CommandRejected, FanoutSpec, RunPolicy, SubmitRun, TaskSpec
from claudecluster.runtime.front_door import submit_run_command
from tests.domain.test_driver_core import Log

NOW = datetime(2026, 12, 1, tzinfo=UTC)
VALUES = {"path": "src/a.py", "stem": "a", "goal": "tidy"}


def test_the_documented_placeholders_and_doubled_braces_are_filled() -> None:
    filled = fill_template("{goal}: fix {path} ({stem}) {{literal}}", VALUES)
    assert filled == "tidy: fix src/a.py (a) {literal}"


@pytest.mark.parametrize(
    "template",
    ["{path:>4000000000}", "{path.__class__}", "{path!r}", "{path[0]}", "{0}", "{}", "{file}"],
)
def test_a_format_spec_an_attribute_or_an_unknown_name_is_refused_by_name(template: str) -> None:
    problem = template_problem(f"fix {template} now")
    assert problem is not None
    assert repr(template) in problem
    with pytest.raises(GraphError, match="not allowed") as caught:
        fill_template(f"fix {template}", VALUES)
    assert "{path}, {stem} and {goal}" in str(caught.value)


@pytest.mark.parametrize("template", ["fix {path", "fix path}", "{"])
def test_an_unmatched_brace_is_refused(template: str) -> None:
    assert "unmatched" in (template_problem(template) or "")


def _fanout(**extra: object) -> FanoutSpec:
    return FanoutSpec(glob="*.py", prompt_template=str(extra.pop("template", "fix {path}")),
                      **extra)  # type: ignore[arg-type]  # fmt: skip


@pytest.mark.parametrize(
    ("command", "field"),
    [
        (SubmitRun(run_id="r", goal="g", repo="/r", planner="fanout",
                   fanout=_fanout(template="{path:>4000000000}")), "fanout.prompt_template"),
        (SubmitRun(run_id="r", goal="g", repo="/r", planner="fanout",
                   fanout=_fanout(max_tasks=10**9)), "fanout.max_tasks"),
        (SubmitRun(run_id="r", goal="g", repo="/r",
                   plan=tuple(TaskSpec(task_id=f"t{i}", title="t", prompt="p")
                              for i in range(501))), "plan"),
        (SubmitRun(run_id="r", goal="g", repo="/r", plan=(TaskSpec(task_id="t", title="t",
                   prompt="p"),), max_parallel=10**9), "max_parallel"),
        (SubmitRun(run_id="r", goal="g", repo="/r", plan=(TaskSpec(task_id="t", title="t",
                   prompt="p"),), policy=RunPolicy(max_attempts=10**9)), "policy.max_attempts"),

        # A git URL: the driver does not clone; refused, never accepted and then failed.
        (SubmitRun(run_id="r", goal="g", repo="https://github.com/o/r.git",
                   plan=(TaskSpec(task_id="t", title="t", prompt="p"),)), "repo"),
        (SubmitRun(run_id="r", goal="g", repo="git@github.com:o/r.git",
                   plan=(TaskSpec(task_id="t", title="t", prompt="p"),)), "repo"),
    ],
)  # fmt: skip
def test_every_count_a_client_gives_is_bounded_at_the_doors_and_in_the_core(
    command: SubmitRun, field: str
) -> None:
    found = submission_problem(command, max_tasks=500)
    assert found is not None
    assert found[0] == field
    # The core refuses it too, for a client that publishes on the bus directly.
    log = Log(DriverConfig(max_tasks=500))
    (refusal,) = log.command(command)
    assert isinstance(refusal, Record)
    assert isinstance(refusal.event, CommandRejected)
    assert refusal.event.reason.startswith(field)


def test_a_git_url_repo_is_refused_with_the_way_round_it_and_a_path_is_not() -> None:
    with pytest.raises(ConfigError) as caught:
        submit_run_command("g", repo="ssh://git@host/o/r.git", fanout=_fanout(), now=NOW)
    assert caught.value.key == "repo"
    assert "clone it on the driver's machine" in caught.value.problem
    assert submission_problem(SubmitRun(run_id="r", goal="g", repo="/srv/a:b@c", planner="fanout",
                                        fanout=_fanout()), max_tasks=500) is None  # fmt: skip


def test_the_front_door_refuses_a_bad_template_before_publishing() -> None:
    with pytest.raises(ConfigError) as caught:
        submit_run_command("g", repo="/r", fanout=_fanout(template="{path.__class__}"), now=NOW)
    assert caught.value.key == "fanout.prompt_template"
    assert "'{path.__class__}'" in caught.value.problem


def test_the_task_cap_is_the_configured_one() -> None:
    plan = [TaskSpec(task_id=f"t{i}", title="t", prompt="p") for i in range(3)]
    with pytest.raises(ConfigError, match="limit of 2"):
        submit_run_command("g", repo="/r", plan=plan, now=NOW, max_tasks=2)
    assert submit_run_command("g", repo="/r", plan=plan, now=NOW, max_tasks=3).plan is not None


def test_a_recorded_plan_over_the_cap_fails_its_run_once() -> None:
    log = Log(DriverConfig(max_tasks=2))
    tasks = [TaskSpec(task_id=f"t{i}", title="t", prompt="p") for i in range(3)]
    (end,) = log.plan(tasks)
    assert isinstance(end, Record)
    assert "3 tasks, more than the limit of 2" in getattr(end.event, "reason", "")
