"""Coalescing an attempt's live output: bounded events per second, nothing said lost."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta

from hypothesis import given
from hypothesis import strategies as st

from claudecluster.actors.progress import ProgressBatcher
from claudecluster.events.model import ProgressKind, TaskProgress, TokenUsage

T0 = datetime(2026, 3, 1, tzinfo=UTC)
KINDS: tuple[ProgressKind, ...] = ("text", "tool_use", "tool_result", "usage")


def update(kind: ProgressKind, text: str = "", tool: str = "", tokens: int = 0) -> TaskProgress:
    usage = TokenUsage(output_tokens=tokens) if kind == "usage" else None
    return TaskProgress(run_id="r", task_id="t", attempt=1, kind=kind, text=text, tool=tool,
                        usage=usage)  # fmt: skip


def test_the_first_update_goes_out_at_once_and_a_burst_after_it_as_one_event_per_kind() -> None:
    batcher = ProgressBatcher()
    assert batcher.offer(update("text", "hello"), T0) == [update("text", "hello")]
    later = T0 + timedelta(milliseconds=10)
    for n in range(50):
        assert batcher.offer(update("tool_use", f"Read f{n}.py", tool="Read"), later) == []
        assert batcher.offer(update("text", f"line {n}"), later) == []
        assert batcher.offer(update("usage", tokens=2), later) == []
    assert batcher.due(T0 + timedelta(milliseconds=999)) == []
    emitted = batcher.due(T0 + timedelta(seconds=1))
    assert [e.kind for e in emitted] == ["tool_use", "text", "usage"]
    tools, text, usage = emitted
    assert tools.tool == "Read"
    assert tools.text.splitlines() == [f"Read f{n}.py" for n in range(50)]
    assert text.text.splitlines() == [f"line {n}" for n in range(50)]
    assert usage.usage == TokenUsage(output_tokens=100)  # summed, so the totals still add up
    assert not batcher.pending


def test_text_beyond_the_batch_size_is_counted_not_carried() -> None:
    batcher = ProgressBatcher(max_chars=100)
    batcher.offer(update("text", "first"), T0)
    for _ in range(30):
        batcher.offer(update("text", "x" * 20), T0)
    (event,) = batcher.flush()
    lines = event.text.splitlines()
    assert len(event.text) <= 100 + len("\n(and 30 more lines)")
    assert lines[-1] == f"(and {30 - (len(lines) - 1)} more lines)"


@given(
    st.lists(
        st.tuples(st.sampled_from(KINDS), st.integers(min_value=0, max_value=50)),
        max_size=400,
    )
)
def test_at_most_one_event_per_kind_per_interval_whatever_the_rate(
    updates: list[tuple[ProgressKind, int]],
) -> None:
    batcher = ProgressBatcher()
    now = T0
    emissions: list[tuple[datetime, list[TaskProgress]]] = []
    offered_tokens = 0
    for kind, gap_ms in updates:
        now += timedelta(milliseconds=gap_ms)
        offered_tokens += kind == "usage"
        if events := batcher.offer(update(kind, "t", tokens=1), now):
            emissions.append((now, events))
    final = batcher.flush()
    # Each emission holds at most one event of each kind, and emissions are an interval
    # apart (the final flush, when the attempt ends, aside).
    for _, events in [*emissions, (now, final)]:
        kinds = [event.kind for event in events]
        assert len(kinds) == len(set(kinds))
    times = [at for at, _ in emissions]
    assert all(b - a >= timedelta(seconds=1) for a, b in itertools.pairwise(times))
    every = [event for _, events in emissions for event in events] + final
    assert sum(e.usage.output_tokens for e in every if e.usage is not None) == offered_tokens
