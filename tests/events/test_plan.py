"""The plan file schema: parsed YAML becomes task specs; a misfit names file and field."""

from __future__ import annotations

import re
from typing import Any

import pytest
import yaml

from claudecluster.errors import GraphError
from claudecluster.events.model import TaskLimits, TaskSpec
from claudecluster.events.plan import PlanFile, PlanTask, plan_from_data, plan_to_specs

PLAN_YAML = """\
goal: Add type hints everywhere
tasks:
  - id: models
    prompt: Add type hints to models.py
  - id: views
    title: Type the views
    prompt: Add type hints to views.py
    kind: refactor
    depends_on: [models]
    files: [src/views.py, "src/views/*.py"]
    priority: 3
    executor: shell
    limits: {max_turns: 30, wall_time_s: 900, max_cost_usd: 2}
"""


def _load(text: str) -> Any:
    return yaml.safe_load(text)


def test_a_minimal_plan_is_accepted_with_defaults() -> None:
    plan = plan_from_data(_load("tasks:\n  - id: only\n    prompt: do it\n"), "plan.yaml")
    assert plan == PlanFile(tasks=(PlanTask(id="only", prompt="do it"),))
    assert plan.goal == ""
    task = plan.tasks[0]
    assert (task.title, task.kind, task.depends_on, task.files) == ("", "generate", (), ())
    assert (task.priority, task.executor, task.limits) == (0, "claude_code", TaskLimits())


def test_plan_to_specs_maps_every_field() -> None:
    plan = plan_from_data(_load(PLAN_YAML), "plan.yaml")
    assert plan.goal == "Add type hints everywhere"
    assert plan_to_specs(plan) == (
        TaskSpec(task_id="models", title="models", prompt="Add type hints to models.py"),
        TaskSpec(
            task_id="views",
            title="Type the views",
            prompt="Add type hints to views.py",
            depends_on=("models",),
            kind="refactor",
            executor="shell",
            files=("src/views.py", "src/views/*.py"),
            priority=3,
            limits=TaskLimits(max_turns=30, wall_time_s=900.0, max_cost_usd=2.0),
        ),
    )


def test_the_title_defaults_to_the_id() -> None:
    plan = plan_from_data({"tasks": [{"id": "a-1", "prompt": "p"}]}, "inline")
    (spec,) = plan_to_specs(plan)
    assert spec.task_id == "a-1"
    assert spec.title == "a-1"


def _error(data: Any, source: str = "plan.yaml") -> str:
    with pytest.raises(GraphError) as caught:
        plan_from_data(data, source)
    return str(caught.value)


def test_a_missing_prompt_names_the_source_and_the_task() -> None:
    message = _error(_load("tasks:\n  - id: a\n    prompt: do a\n  - id: b\n"))
    assert message == "plan.yaml: tasks[1]: Object missing required field `prompt`"


def test_an_empty_prompt_names_the_field_path() -> None:
    message = _error({"tasks": [{"id": "a", "prompt": ""}]})
    assert message.startswith("plan.yaml: tasks[0].prompt: ")
    assert "length >= 1" in message


def test_an_unknown_task_field_is_refused() -> None:
    message = _error(_load("tasks:\n  - id: a\n    prompt: do a\n    colour: blue\n"))
    assert message == "plan.yaml: tasks[0]: Object contains unknown field `colour`"


def test_an_unknown_top_level_field_is_refused() -> None:
    message = _error(_load("owner: me\ntasks:\n  - id: a\n    prompt: do a\n"), "other.yml")
    assert message == "other.yml: Object contains unknown field `owner`"


@pytest.mark.parametrize("bad_id", ["a.b", "-a", "_a", "a b", "x" * 65])
def test_an_id_that_is_not_a_subject_token_is_refused(bad_id: str) -> None:
    message = _error({"tasks": [{"id": "ok", "prompt": "p"}, {"id": bad_id, "prompt": "p"}]})
    assert message.startswith("plan.yaml: tasks[1].id: Expected `str` matching regex")


def test_a_bad_dependency_id_names_its_index() -> None:
    message = _error({"tasks": [{"id": "a", "prompt": "p", "depends_on": ["ok", "b.c"]}]})
    assert message.startswith("plan.yaml: tasks[0].depends_on[1]: ")


def test_an_empty_task_list_is_refused() -> None:
    message = _error(_load("goal: nothing\ntasks: []\n"))
    assert message == "plan.yaml: tasks: Expected `array` of length >= 1"


def test_a_missing_task_list_is_refused() -> None:
    assert _error(_load("goal: nothing\n")) == ("plan.yaml: Object missing required field `tasks`")


def test_a_plan_that_is_not_a_mapping_is_refused() -> None:
    message = _error(_load("- id: a\n  prompt: p\n"))
    assert message.startswith("plan.yaml: Expected `object`, got `array`")


def test_a_wrongly_typed_limit_names_the_nested_field() -> None:
    message = _error({"tasks": [{"id": "a", "prompt": "p", "limits": {"max_turns": 0}}]})
    assert message.startswith("plan.yaml: tasks[0].limits.max_turns: ")


def test_a_plan_task_may_say_id_or_task_id_and_leave_the_title_out() -> None:
    plan = plan_from_data(
        {"tasks": [{"id": "a", "prompt": "p"}, {"task_id": "b", "prompt": "q",
                                                "depends_on": ["a"]}]}, "plan.yaml"
    )  # fmt: skip
    specs = plan_to_specs(plan)
    assert [(s.task_id, s.title) for s in specs] == [("a", "a"), ("b", "b")]


@pytest.mark.parametrize(
    ("task", "message"),
    [({"prompt": "p"}, "a task needs an id (or task_id)"),
     ({"id": "a", "task_id": "b", "prompt": "p"}, "id 'a' and task_id 'b' differ")],
)  # fmt: skip
def test_a_plan_task_without_an_id_or_with_two_is_refused_naming_it(
    task: dict[str, str], message: str
) -> None:
    with pytest.raises(GraphError, match=re.escape(f"plan.yaml: tasks[0]: {message}")):
        plan_from_data({"tasks": [task]}, "plan.yaml")
