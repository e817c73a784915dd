"""Unit tests of the task graph module: validation messages, orders, paths, overlaps and
predicted conflicts, plus a property over random DAGs."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from claudecluster.domain.graph import (
    TaskGraph,
    critical_path,
    find_cycle,
    patterns_overlap,
    predict_conflicts,
    remaining_path,
    topological_order,
    validate_graph,
)
from claudecluster.errors import GraphError
from claudecluster.events.model import PredictedConflict, TaskSpec


def spec(
    task_id: str,
    *deps: str,
    prompt: str = "do it",
    files: tuple[str, ...] = (),
    priority: int = 0,
) -> TaskSpec:
    return TaskSpec(
        task_id=task_id,
        title=task_id,
        prompt=prompt,
        depends_on=deps,
        files=files,
        priority=priority,
    )


# A chain a -> b -> c -> d (each depends on the one before) and a side branch s on a.
CHAIN_WITH_BRANCH = [spec("a"), spec("b", "a"), spec("c", "b"), spec("d", "c"), spec("s", "a")]


# ----------------------------------------------------------------------------------------
# validate_graph
# ----------------------------------------------------------------------------------------


def test_an_empty_plan_is_refused() -> None:
    with pytest.raises(GraphError, match=r"^the plan has no tasks$"):
        validate_graph([])


def test_a_duplicate_id_is_named() -> None:
    with pytest.raises(GraphError) as caught:
        validate_graph([spec("a"), spec("b"), spec("a")])
    assert str(caught.value) == "invalid task graph: task id 'a' is used twice"


@pytest.mark.parametrize("prompt", ["", "   ", "\n\t "])
def test_an_empty_or_blank_prompt_is_named(prompt: str) -> None:
    with pytest.raises(GraphError) as caught:
        validate_graph([spec("a"), spec("b", prompt=prompt)])
    assert str(caught.value) == "invalid task graph: task 'b' has an empty prompt"


def test_an_unknown_dependency_is_named() -> None:
    with pytest.raises(GraphError) as caught:
        validate_graph([spec("a", "ghost")])
    assert str(caught.value) == "invalid task graph: task 'a' depends on unknown task 'ghost'"


def test_a_self_dependency_is_named() -> None:
    with pytest.raises(GraphError) as caught:
        validate_graph([spec("a"), spec("b", "b")])
    assert str(caught.value) == "invalid task graph: task 'b' depends on itself"


def test_a_three_cycle_is_named_in_dependency_order() -> None:
    tasks = [spec("a", "c"), spec("b", "a"), spec("c", "b")]
    assert find_cycle(tasks) == ["a", "c", "b", "a"]
    with pytest.raises(GraphError) as caught:
        validate_graph(tasks)
    assert (
        str(caught.value) == "invalid task graph: the dependencies form a cycle: a -> c -> b -> a"
    )


def test_a_cycle_hanging_off_an_acyclic_part_is_found() -> None:
    tasks = [spec("root"), spec("x", "root", "z"), spec("y", "x"), spec("z", "y")]
    assert find_cycle(tasks) == ["x", "z", "y", "x"]
    assert find_cycle(CHAIN_WITH_BRANCH) == []


def test_several_problems_are_reported_together() -> None:
    tasks = [spec("a"), spec("a", prompt=" "), spec("b", "b", "ghost")]
    with pytest.raises(GraphError) as caught:
        validate_graph(tasks)
    assert str(caught.value) == (
        "invalid task graph: task id 'a' is used twice; "
        "task 'a' has an empty prompt; "
        "task 'b' depends on itself; "
        "task 'b' depends on unknown task 'ghost'"
    )


def test_a_valid_graph_passes() -> None:
    validate_graph(CHAIN_WITH_BRANCH)


# ----------------------------------------------------------------------------------------
# topological_order
# ----------------------------------------------------------------------------------------


def test_topological_order_puts_dependencies_first_and_keeps_plan_order_among_equals() -> None:
    tasks = [spec("late", "base"), spec("free1"), spec("base"), spec("free2"), spec("mid", "base")]
    assert topological_order(tasks) == ["free1", "base", "late", "free2", "mid"]


def test_topological_order_of_independent_tasks_is_plan_order() -> None:
    assert topological_order([spec("z"), spec("y"), spec("x")]) == ["z", "y", "x"]


def test_topological_order_tolerates_a_repeated_dependency() -> None:
    assert topological_order([spec("b", "a", "a"), spec("a")]) == ["a", "b"]


def test_topological_order_refuses_a_cycle() -> None:
    with pytest.raises(GraphError, match=r"cycle: a -> b -> a"):
        topological_order([spec("a", "b"), spec("b", "a")])


# ----------------------------------------------------------------------------------------
# remaining_path and critical_path
# ----------------------------------------------------------------------------------------


def test_remaining_path_counts_one_per_task_without_weights() -> None:
    assert remaining_path(CHAIN_WITH_BRANCH) == {"a": 4.0, "b": 3.0, "c": 2.0, "d": 1.0, "s": 1.0}


def test_remaining_path_adds_weights_and_defaults_unnamed_tasks_to_one() -> None:
    weights = {"a": 2.0, "s": 10.0, "d": 0.5}
    assert remaining_path(CHAIN_WITH_BRANCH, weights) == {
        "a": 12.0,
        "b": 2.5,
        "c": 1.5,
        "d": 0.5,
        "s": 10.0,
    }


def test_critical_path_follows_the_longest_chain_without_weights() -> None:
    assert critical_path(CHAIN_WITH_BRANCH) == (4.0, ["a", "b", "c", "d"])


def test_critical_path_switches_to_the_heavier_side_branch_with_weights() -> None:
    assert critical_path(CHAIN_WITH_BRANCH, {"s": 10.0}) == (11.0, ["a", "s"])


def test_critical_path_starts_at_the_heaviest_root() -> None:
    tasks = [spec("light"), spec("heavy"), spec("after", "heavy")]
    assert critical_path(tasks) == (2.0, ["heavy", "after"])
    assert critical_path(tasks, {"light": 5.0}) == (5.0, ["light"])


# ----------------------------------------------------------------------------------------
# TaskGraph
# ----------------------------------------------------------------------------------------


def test_task_graph_build_indexes_the_graph() -> None:
    tasks = [spec("s", "a"), spec("a"), spec("b", "a"), spec("c", "b", "s")]
    graph = TaskGraph.build(tasks, {"s": 3.0})
    assert list(graph.specs) == ["s", "a", "b", "c"]
    assert graph.specs["b"] is tasks[2]
    assert graph.dependents == {"s": ("c",), "a": ("s", "b"), "b": ("c",), "c": ()}
    assert graph.rank == {"a": 5.0, "s": 4.0, "b": 2.0, "c": 1.0}
    assert graph.order == ("a", "s", "b", "c")
    assert graph.position == {"s": 0, "a": 1, "b": 2, "c": 3}


def test_task_graph_descendants_are_transitive_and_in_topological_order() -> None:
    tasks = [spec("d", "c"), spec("c", "b", "x"), spec("b", "a"), spec("a"), spec("x")]
    graph = TaskGraph.build(tasks)
    assert graph.order == ("a", "b", "x", "c", "d")
    assert graph.descendants("a") == ["b", "c", "d"]
    assert graph.descendants("x") == ["c", "d"]
    assert graph.descendants("d") == []
    assert graph.descendants("unknown") == []


def test_task_graph_build_validates() -> None:
    with pytest.raises(GraphError, match="depends on unknown task 'ghost'"):
        TaskGraph.build([spec("a", "ghost")])


# ----------------------------------------------------------------------------------------
# patterns_overlap
# ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ("src/app.py", "src/app.py"),
        ("src/app.py", "/src/app.py/"),
        ("src/*.py", "src/app.py"),
        ("src/app.py", "src/*.py"),
        ("src", "src/pkg/app.py"),
        ("src/pkg/app.py", "src/"),
        ("docs/**", "docs/guide/index.md"),
    ],
)
def test_patterns_that_may_name_the_same_file_overlap(a: str, b: str) -> None:
    assert patterns_overlap(a, b)


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ("src/app.py", "src/api.py"),
        ("src/app.py", "tests/app.py"),
        ("src/*.py", "src/app.txt"),
        ("src", "srcx/app.py"),
        ("src/app", "src/app.py"),
    ],
)
def test_disjoint_patterns_do_not_overlap(a: str, b: str) -> None:
    assert not patterns_overlap(a, b)


# ----------------------------------------------------------------------------------------
# predict_conflicts
# ----------------------------------------------------------------------------------------


def test_serialize_makes_the_task_with_the_shorter_remaining_path_wait() -> None:
    # b has a dependent, so its remaining path (2) is longer than a's (1): b goes first.
    tasks = [spec("a", files=("src/app.py",)), spec("b", files=("src/*.py",)), spec("c", "b")]
    ordered, conflicts = predict_conflicts(tasks, serialize=True)
    assert conflicts == (
        PredictedConflict(first="b", second="a", files=("src/*.py", "src/app.py"), serialized=True),
    )
    assert [t.task_id for t in ordered] == ["a", "b", "c"]
    assert ordered[0].depends_on == ("b",)
    assert ordered[1] is tasks[1]
    assert ordered[2] is tasks[2]
    validate_graph(ordered)


def test_serialize_breaks_equal_paths_by_higher_priority() -> None:
    tasks = [spec("a", files=("x.py",)), spec("b", files=("x.py",), priority=5)]
    ordered, conflicts = predict_conflicts(tasks, serialize=True)
    assert [(c.first, c.second) for c in conflicts] == [("b", "a")]
    assert ordered[0].depends_on == ("b",)
    assert ordered[1].depends_on == ()


def test_serialize_breaks_full_ties_by_plan_order() -> None:
    tasks = [spec("a", files=("x.py",)), spec("b", files=("x.py",))]
    ordered, conflicts = predict_conflicts(tasks, serialize=True)
    assert conflicts == (
        PredictedConflict(first="a", second="b", files=("x.py",), serialized=True),
    )
    assert ordered[0].depends_on == ()
    assert ordered[1].depends_on == ("a",)


def test_serialize_keeps_existing_dependencies_and_appends_the_new_one() -> None:
    tasks = [spec("base"), spec("a", files=("x.py",)), spec("b", "base", files=("x.py",))]
    ordered, _ = predict_conflicts(tasks, serialize=True)
    # a and b both have remaining path 1 and priority 0: a is first in plan order.
    assert ordered[2].depends_on == ("base", "a")


def test_without_serialize_the_conflict_is_recorded_and_tasks_are_unchanged() -> None:
    tasks = (spec("a", files=("src",)), spec("b", files=("src/app.py",)))
    ordered, conflicts = predict_conflicts(tasks, serialize=False)
    assert ordered == tasks
    assert conflicts == (
        PredictedConflict(first="a", second="b", files=("src", "src/app.py"), serialized=False),
    )


def test_pairs_already_ordered_by_a_dependency_are_not_reported() -> None:
    tasks = [
        spec("a", files=("x.py",)),
        spec("mid", "a"),
        spec("b", "mid", files=("x.py",)),
    ]
    for serialize in (True, False):
        ordered, conflicts = predict_conflicts(tasks, serialize=serialize)
        assert conflicts == ()
        assert ordered == tuple(tasks)


def test_every_unordered_pair_of_a_shared_file_is_serialized() -> None:
    tasks = [spec("a", files=("x.py",)), spec("b", files=("x.py",)), spec("c", files=("x.py",))]
    ordered, conflicts = predict_conflicts(tasks, serialize=True)
    assert [(c.first, c.second) for c in conflicts] == [("a", "b"), ("a", "c"), ("b", "c")]
    assert [t.depends_on for t in ordered] == [(), ("a",), ("a", "b")]
    validate_graph(ordered)


def test_a_pair_ordered_by_an_edge_added_for_an_earlier_pair_is_left_alone() -> None:
    # (a, b) makes b wait for a; (a, c) makes a wait for c (higher priority); then b and c
    # are already ordered (b -> a -> c), so their overlap on z.py adds nothing.
    tasks = [
        spec("a", files=("x.py", "y.py"), priority=1),
        spec("b", files=("x.py", "z.py"), priority=0),
        spec("c", files=("y.py", "z.py"), priority=2),
    ]
    ordered, conflicts = predict_conflicts(tasks, serialize=True)
    assert [(c.first, c.second, c.files) for c in conflicts] == [
        ("a", "b", ("x.py",)),
        ("c", "a", ("y.py",)),
    ]
    assert [t.depends_on for t in ordered] == [("c",), ("a",), ()]
    validate_graph(ordered)
    # Without serializing, nothing orders b and c, so their overlap is reported too.
    _, unserialized = predict_conflicts(tasks, serialize=False)
    assert [(c.first, c.second) for c in unserialized] == [("a", "b"), ("c", "a"), ("c", "b")]


def test_tasks_without_files_are_ignored() -> None:
    tasks = [spec("a", files=("x.py",)), spec("b"), spec("c")]
    assert predict_conflicts(tasks, serialize=True) == (tuple(tasks), ())
    tasks = [spec("a", files=("x.py",)), spec("b"), spec("c", files=("y.py",))]
    assert predict_conflicts(tasks, serialize=True) == (tuple(tasks), ())


# ----------------------------------------------------------------------------------------
# A property over random DAGs
# ----------------------------------------------------------------------------------------

FILES = ("src/a.py", "src/b.py", "src/*.py", "src", "docs/x.md", "tests/test_a.py")


@st.composite
def random_dags(draw: st.DrawFn) -> list[TaskSpec]:
    """Tasks t0..tn-1 in plan order (shuffled), each depending only on earlier-made ones."""
    size = draw(st.integers(min_value=1, max_value=10))
    made: list[TaskSpec] = []
    for i in range(size):
        earlier = [t.task_id for t in made]
        deps = draw(st.lists(st.sampled_from(earlier), unique=True)) if earlier else []
        files = draw(st.lists(st.sampled_from(FILES), max_size=2, unique=True))
        priority = draw(st.integers(min_value=-2, max_value=2))
        made.append(spec(f"t{i}", *deps, files=tuple(files), priority=priority))
    return draw(st.permutations(made))


@given(random_dags())
def test_random_dags_order_dependencies_first_and_stay_valid_when_serialized(
    tasks: list[TaskSpec],
) -> None:
    order = topological_order(tasks)
    assert sorted(order) == sorted(t.task_id for t in tasks)
    where = {task_id: i for i, task_id in enumerate(order)}
    for task in tasks:
        for dep in task.depends_on:
            assert where[dep] < where[task.task_id]

    ordered, conflicts = predict_conflicts(tasks, serialize=True)
    validate_graph(ordered)
    assert [t.task_id for t in ordered] == [t.task_id for t in tasks]
    by_id = {t.task_id: t for t in ordered}
    for conflict in conflicts:
        assert conflict.serialized
        assert conflict.first in by_id[conflict.second].depends_on
    # Serializing only ever drops pairs that the added edges already ordered.
    _, unserialized = predict_conflicts(tasks, serialize=False)
    plain = {(c.first, c.second, c.files) for c in unserialized}
    assert {(c.first, c.second, c.files) for c in conflicts} <= plain
