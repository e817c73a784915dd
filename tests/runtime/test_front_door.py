"""The front door's pure part: building a checked SubmitRun from what a client gave."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from claudecluster.errors import ConfigError, GraphError
from claudecluster.events.model import FanoutSpec, TaskSpec
from claudecluster.runtime.front_door import new_run_id, submit_run_command

NOW = datetime(2026, 12, 1, 6, 30, tzinfo=UTC)
TASK = TaskSpec(task_id="a", title="a", prompt="p")


def test_a_plan_from_a_file_is_a_plan_file_run_and_an_inline_plan_is_inline() -> None:
    from_file = submit_run_command("g", repo="/r", plan=[TASK], plan_source="plan.yaml", now=NOW)
    assert from_file.planner == "plan_file"
    assert (from_file.plan_source, from_file.plan) == ("plan.yaml", (TASK,))
    assert submit_run_command("g", repo="/r", plan=[TASK], now=NOW).planner == "inline"
    fanout = FanoutSpec(glob="*.py", prompt_template="doc {path}")
    assert submit_run_command("g", repo="/r", fanout=fanout, now=NOW).planner == "fanout"
    assert submit_run_command("g", repo="/r", claude_planner=True, now=NOW).planner == "claude"


@pytest.mark.parametrize(
    "choices",
    [{}, {"plan": [TASK], "claude_planner": True},
     {"plan": [TASK], "fanout": FanoutSpec(glob="*", prompt_template="x")}],
)  # fmt: skip
def test_exactly_one_way_of_planning_must_be_chosen(choices: dict[str, object]) -> None:
    with pytest.raises(ConfigError, match="exactly one") as refused:
        submit_run_command("g", repo="/r", now=NOW, source="request", **choices)  # type: ignore[arg-type]
    assert refused.value.key == "plan"


def test_a_run_id_must_be_a_subject_token_and_defaults_to_a_fresh_one() -> None:
    with pytest.raises(ConfigError, match="letters, digits"):
        submit_run_command("g", repo="/r", plan=[TASK], run_id="a.b", now=NOW)
    first = submit_run_command("g", repo="/r", plan=[TASK], now=NOW).run_id
    second = submit_run_command("g", repo="/r", plan=[TASK], now=NOW).run_id
    assert first.startswith("run-20261201-063000-")
    assert first != second  # two submissions in the same instant get different ids
    assert new_run_id(NOW).startswith("run-20261201-063000-")


def test_two_runs_started_in_the_same_instant_get_distinct_ids() -> None:
    """The CLI used to format its own second-stamped id, so two runs in one second collided."""
    assert new_run_id(NOW) != new_run_id(NOW)
    # The demo's ids too: two demos started side by side got one directory between them.
    demo = new_run_id(NOW, prefix="demo")
    assert demo.startswith("demo-20261201-063000-")
    assert demo != new_run_id(NOW, prefix="demo")


def test_an_invalid_graph_fails_before_anything_is_published() -> None:
    cyclic = [TaskSpec(task_id="a", title="a", prompt="p", depends_on=("b",)),
              TaskSpec(task_id="b", title="b", prompt="p", depends_on=("a",))]  # fmt: skip
    with pytest.raises(GraphError, match="cycle"):
        submit_run_command("g", repo="/r", plan=cyclic, now=NOW)
