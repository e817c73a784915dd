"""The task graph: every invalid graph is refused naming each problem; ordering, critical
paths and predicted file conflicts."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from claudecluster.domain.graph import (
    TaskGraph,
    critical_path,
    patterns_overlap,
    predict_conflicts,
    topological_order,
    validate_graph,
)
from claudecluster.errors import GraphError
from claudecluster.events import TaskSpec


def t(task_id: str, *deps: str, prompt: str = "p", files: tuple[str, ...] = (),
      priority: int = 0) -> TaskSpec:  # fmt: skip
    return TaskSpec(task_id=task_id, title=task_id, prompt=prompt, depends_on=deps,
                    files=files, priority=priority)  # fmt: skip


@pytest.mark.parametrize(
    ("tasks", "message"),
    [
        ([], "the plan has no tasks"),
        ([t("a"), t("a")], "task id 'a' is used twice"),
        ([t("a", prompt="  ")], "task 'a' has an empty prompt"),
        ([t("a", "ghost")], "task 'a' depends on unknown task 'ghost'"),
        ([t("a", "a")], "task 'a' depends on itself"),
        (
            [t("a", "c"), t("b", "a"), t("c", "b")],
            "the dependencies form a cycle: a -> c -> b -> a",
        ),
    ],
)
def test_an_invalid_graph_is_refused_naming_the_problem(
    tasks: list[TaskSpec], message: str
) -> None:
    with pytest.raises(GraphError) as caught:
        validate_graph(tasks)
    assert message in str(caught.value)


def test_every_problem_is_reported_at_once() -> None:
    with pytest.raises(GraphError) as caught:
        validate_graph([t("a", "ghost"), t("a", prompt=""), t("b", "b")])
    text = str(caught.value)
    assert "used twice" in text
    assert "empty prompt" in text
    assert "unknown task 'ghost'" in text
    assert "depends on itself" in text


def test_order_and_critical_path() -> None:
    tasks = [t("side"), t("a"), t("b", "a"), t("c", "b"), t("d", "side", "c")]
    assert topological_order(tasks) == ["side", "a", "b", "c", "d"]
    assert critical_path(tasks) == (4.0, ["a", "b", "c", "d"])
    weighted = critical_path(tasks, {"side": 10.0})
    assert weighted == (11.0, ["side", "d"])
    graph = TaskGraph.build(tasks)
    assert graph.rank["a"] == 4.0
    assert graph.dependents["c"] == ("d",)
    assert graph.descendants("a") == ["b", "c", "d"]


@pytest.mark.parametrize(
    ("a", "b", "overlap"),
    [
        ("src/app.py", "src/app.py", True),
        ("src/*.py", "src/app.py", True),
        ("src", "src/app.py", True),
        ("docs/", "docs/guide.md", True),
        ("src/app.py", "src/api.py", False),
        ("src/*.py", "tests/test_app.py", False),
    ],
)
def test_declared_paths_overlap(a: str, b: str, overlap: bool) -> None:
    assert patterns_overlap(a, b) is overlap
    assert patterns_overlap(b, a) is overlap


def test_overlapping_unordered_tasks_are_serialized_most_urgent_first() -> None:
    tasks = [
        t("x", files=("app.py",)),
        t("y", files=("src/*.py", "app.py"), priority=5),
        t("z", "x", files=("app.py",)),  # ordered after x already: not a prediction
        t("free", files=("other.py",)),
    ]
    ordered, conflicts = predict_conflicts(tasks, serialize=True)
    # x goes first: it heads a longer chain (x -> z) than y, whose priority only breaks
    # ties; then y and z tie on path length and y's priority puts it first.
    assert [(c.first, c.second, c.files, c.serialized) for c in conflicts] == [
        ("x", "y", ("app.py",), True),
        ("y", "z", ("app.py",), True),
    ]
    by_id = {s.task_id: s for s in ordered}
    assert "x" in by_id["y"].depends_on
    assert "y" in by_id["z"].depends_on
    validate_graph(ordered)
    unchanged, warned = predict_conflicts(tasks, serialize=False)
    assert unchanged == tuple(tasks)
    assert all(not c.serialized for c in warned)


@given(
    st.lists(st.lists(st.integers(0, 30), max_size=3), min_size=1, max_size=30),
    st.lists(st.sampled_from(["a.py", "b.py", "src/*.py", "src/c.py"]), max_size=30),
)
def test_random_dags_order_dependencies_first_and_stay_valid_when_serialized(
    parents: list[list[int]], files: list[str]
) -> None:
    tasks = [
        t(
            f"t{i}",
            *sorted({f"t{p}" for p in ps if p < i}),
            files=(files[i],) if i < len(files) else (),
        )
        for i, ps in enumerate(parents)
    ]
    order = topological_order(tasks)
    position = {task_id: n for n, task_id in enumerate(order)}
    for task in tasks:
        assert all(position[d] < position[task.task_id] for d in task.depends_on)
    serialized, _ = predict_conflicts(tasks, serialize=True)
    validate_graph(serialized)  # adding order never makes a cycle
