"""Live collision prediction as a pure decision: who collides, and what became of it."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from claudecluster.actors.collisions import (
    LiveAttempt,
    Side,
    conflict_hits,
    predict,
    settle,
)


def _live(task_id: str, order: int, *files: str) -> LiveAttempt:
    return LiveAttempt(task_id=task_id, attempt=1, order=order, files=frozenset(files))


def _never(a: str, b: str) -> bool:
    del a, b
    return False


def test_two_attempts_touching_one_file_collide_the_later_named_first() -> None:
    found = predict([_live("b", 7, "x.py", "y.py"), _live("a", 3, "x.py")], _never, set())
    assert [(c.pair, c.files) for c in found] == [(("b", "a"), ("x.py",))]


def test_disjoint_files_dependent_tasks_and_known_pairs_do_not_collide() -> None:
    live = [_live("a", 1, "x.py"), _live("b", 2, "y.py"), _live("c", 3, "x.py")]
    assert [c.pair for c in predict(live, _never, set())] == [("c", "a")]
    assert predict(live, lambda p, q: {p, q} == {"a", "c"}, set()) == []
    assert predict(live, _never, {("a", "c")}) == []  # either order counts as known
    assert predict([_live("a", 1), _live("b", 2)], _never, set()) == []  # nothing touched yet


def test_three_attempts_on_one_file_give_every_pair_once() -> None:
    live = [_live(t, i, "x.py") for i, t in enumerate("abc")]
    assert [c.pair for c in predict(live, _never, set())] == [("b", "a"), ("c", "a"), ("c", "b")]


def test_a_prediction_settles_on_a_conflict_on_two_clean_merges_or_as_moot() -> None:
    assert settle(Side(), Side()) is None
    assert settle(Side(merged=True), Side()) is None  # the second merge is still to come
    assert settle(Side(merged=True), Side(conflicted=True)) == "conflicted"
    assert settle(Side(merged=True), Side(merged=True)) == "merged_clean"
    assert settle(Side(merged=True), Side(gone=True)) == "moot"


def test_a_conflict_is_the_predicted_one_only_if_it_names_a_predicted_file() -> None:
    assert conflict_hits(("x.py", "z.py"), ("x.py",))
    assert not conflict_hits(("z.py",), ("x.py",))
    assert conflict_hits((), ("x.py",))


_files = st.frozensets(st.sampled_from(["a.py", "b.py", "c.py", "d.py"]), max_size=3)


@given(st.lists(_files, min_size=0, max_size=6))
def test_every_overlapping_independent_pair_is_predicted_exactly_once(
    touched: list[frozenset[str]],
) -> None:
    live = [
        LiveAttempt(task_id=f"t{i}", attempt=1, order=i, files=f) for i, f in enumerate(touched)
    ]
    found = predict(live, _never, set())
    pairs = [c.pair for c in found]
    assert len(pairs) == len(set(pairs))
    expected = {
        (f"t{j}", f"t{i}")
        for i in range(len(touched))
        for j in range(i + 1, len(touched))
        if touched[i] & touched[j]
    }
    assert set(pairs) == expected
    for collision in found:
        assert collision.later.order > collision.earlier.order
        assert set(collision.files) == collision.later.files & collision.earlier.files
    # Once recorded, nothing is predicted again.
    assert predict(live, _never, set(pairs)) == []
