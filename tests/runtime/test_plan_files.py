"""Plan files from disk and the choice of planning strategy."""

from __future__ import annotations

from pathlib import Path

import pytest

from claudecluster.domain.graph import validate_graph
from claudecluster.errors import GraphError
from claudecluster.events import FanoutSpec, RunSubmitted, TaskSpec
from claudecluster.events.plan import plan_to_specs
from claudecluster.executors.shell import ShellExecutor
from claudecluster.runtime.planners import (
    ClaudeCodePlanner,
    FanoutPlanner,
    GivenPlan,
    load_plan_file,
    planner_for,
)


def test_the_documented_example_plan_loads_and_is_a_valid_graph(repo_root: Path) -> None:
    plan = load_plan_file(repo_root / "docs" / "examples" / "plan.yaml")
    specs = plan_to_specs(plan)
    validate_graph(specs)
    assert [s.task_id for s in specs] == ["models", "storage", "api", "tests", "review"]
    assert specs[3].limits.max_turns == 40
    assert specs[4].kind == "review"


def test_a_json_plan_file_loads_too(tmp_path: Path) -> None:
    path = tmp_path / "plan.json"
    path.write_text('{"tasks": [{"id": "a", "prompt": "do a"}]}')
    assert [t.id for t in load_plan_file(path).tasks] == ["a"]


@pytest.mark.parametrize(
    ("name", "text", "message"),
    [
        ("missing.yaml", None, "cannot read the plan file"),
        ("broken.yaml", "tasks: [", "not valid YAML"),
        ("broken.json", '{"tasks": [}', "not valid JSON"),
        (
            "shape.yaml",
            "tasks:\n  - id: a\n",
            r"tasks\[0\]: Object missing required field `prompt`",
        ),
    ],
)
def test_a_bad_plan_file_is_an_error_naming_the_file(
    tmp_path: Path, name: str, text: str | None, message: str
) -> None:
    path = tmp_path / name
    if text is not None:
        path.write_text(text)
    with pytest.raises(GraphError, match=message) as caught:
        load_plan_file(path)
    assert str(path) in str(caught.value)


def test_the_strategy_follows_what_the_run_brought(tmp_path: Path) -> None:
    given = RunSubmitted(run_id="r", goal="g", repo="/r",
                         plan=(TaskSpec(task_id="a", title="a", prompt="p"),))  # fmt: skip
    fanout = RunSubmitted(run_id="r", goal="g", repo="/r",
                          fanout=FanoutSpec(glob="*.py", prompt_template="fix {path}"))  # fmt: skip
    claude = RunSubmitted(run_id="r", goal="g", repo="/r", planner="claude")

    def choose(submitted: RunSubmitted, executor: ShellExecutor | None = None) -> object:
        return planner_for(submitted, executor=executor, work_dir=tmp_path, api_environment={})

    assert isinstance(choose(given), GivenPlan)
    assert isinstance(choose(fanout), FanoutPlanner)
    assert isinstance(choose(claude, ShellExecutor()), ClaudeCodePlanner)
    with pytest.raises(GraphError, match="Claude planner is not available"):
        choose(claude)
