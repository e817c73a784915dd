"""Parsing recorded Claude Code stream-json output and classifying how a run ended.

The recordings in tests/executors/recordings/ were made by the real CLI (2.1.330, bundled
with claude-agent-sdk) against the scripted model.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from claudecluster.events import TaskProgress, TaskRateLimited, TokenUsage
from claudecluster.executors.claude_stream import (
    SUMMARY_CHARS,
    classify,
    progress_from,
    summarize_tool_input,
)

RECORDINGS = Path(__file__).parent / "recordings"


def _load(name: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (RECORDINGS / f"{name}.jsonl").read_text().splitlines()]


def _progress(event: dict[str, Any], **ids: Any) -> list[TaskProgress]:
    updates = progress_from(event, **ids)
    assert all(isinstance(u, TaskProgress) for u in updates)
    return [u for u in updates if isinstance(u, TaskProgress)]


def _result(events: list[dict[str, Any]]) -> dict[str, Any]:
    return next(e for e in events if e.get("type") == "result")


def test_a_successful_run_yields_text_tool_use_result_and_usage_in_order() -> None:
    seen: set[str] = set()
    progress = [
        p for event in _load("success")
        for p in _progress(event, run_id="r1", task_id="t1", attempt=2, usage_seen=seen)
    ]  # fmt: skip
    usage = [p for p in progress if p.kind == "usage"]
    assert len(usage) == 2  # two model calls, each reported once though split in events
    progress = [p for p in progress if p.kind != "usage"]
    kinds = [(p.kind, p.tool) for p in progress]
    assert kinds == [
        ("text", ""),
        ("tool_use", "Write"),
        ("tool_result", ""),
        ("text", ""),
    ]
    assert progress[1].text.startswith("Write /")
    assert progress[1].text.endswith("/hello.py")
    assert "hello.py" in progress[2].text
    assert all((p.run_id, p.task_id, p.attempt) == ("r1", "t1", 2) for p in progress)


def test_a_successful_run_is_classified_as_success_with_cost_and_turns() -> None:
    outcome = classify(_result(_load("success")), exit_code=0)
    assert outcome.succeeded
    assert outcome.summary == "Done: hello.py prints a greeting."
    assert outcome.turns == 2
    assert outcome.cost_usd > 0
    assert outcome.usage.output_tokens > 0
    assert outcome.session_id


def test_an_auth_error_exits_with_subtype_success_but_is_a_non_retryable_failure() -> None:
    result = _result(_load("auth-error"))
    assert result["subtype"] == "success"  # why the exit code and subtype alone mislead
    outcome = classify(result, exit_code=1)
    assert not outcome.succeeded
    assert (outcome.failure_class, outcome.retryable, outcome.api_error_status) == (
        "auth",
        False,
        401,
    )


def test_a_rate_limit_is_retryable_and_flagged_for_the_fleet() -> None:
    outcome = classify(_result(_load("rate-limited")), exit_code=1)
    assert (outcome.failure_class, outcome.retryable, outcome.rate_limited) == (
        "rate_limit",
        True,
        True,
    )


def test_hitting_the_turn_limit_is_its_own_failure_class() -> None:
    outcome = classify(_result(_load("max-turns")), exit_code=1)
    assert (outcome.failure_class, outcome.retryable) == ("max_turns", False)
    assert outcome.cost_usd > 0


def test_no_result_at_all_is_a_retryable_infrastructure_failure() -> None:
    outcome = classify(None, exit_code=0, stderr_tail="Segmentation fault\n")
    assert (outcome.succeeded, outcome.failure_class, outcome.retryable) == (
        False,
        "infrastructure",
        True,
    )
    assert "code 0" in outcome.reason
    assert "Segmentation fault" in outcome.reason


@pytest.mark.parametrize(
    ("status", "failure_class", "retryable"),
    [(500, "api_error", True), (529, "rate_limit", True), (400, "api_error", False),
     (403, "auth", False)],
)  # fmt: skip
def test_api_statuses_map_to_failure_classes(
    status: int, failure_class: str, retryable: bool
) -> None:
    result = {"subtype": "success", "is_error": True, "api_error_status": status}
    outcome = classify(result, exit_code=1)
    assert (outcome.failure_class, outcome.retryable) == (failure_class, retryable)


def test_a_spent_budget_is_its_own_failure_class() -> None:
    result = _result(_load("budget"))  # recorded with --max-budget-usd 0.0001
    assert result["subtype"] == "error_max_budget_usd"
    outcome = classify(result, exit_code=1)
    assert (outcome.failure_class, outcome.retryable) == ("budget", False)
    assert outcome.cost_usd > 0


def test_an_error_during_execution_names_the_errors() -> None:
    result = {"subtype": "error_during_execution", "is_error": True, "errors": ["no session"]}
    outcome = classify(result, exit_code=1)
    assert outcome.failure_class == "agent_error"
    assert "no session" in outcome.reason


@pytest.mark.parametrize(
    ("tool", "tool_input", "expected"),
    [
        ("Edit", {"file_path": "/w/a.py", "old_string": "x"}, "Edit /w/a.py"),
        ("Bash", {"command": "pytest -q"}, "Bash: pytest -q"),
        ("Grep", {"pattern": "TODO"}, "Grep TODO"),
        ("Task", {"prompt": "go"}, 'Task {"prompt": "go"}'),
    ],
)
def test_tool_inputs_are_summarised_by_what_they_touch(
    tool: str, tool_input: dict[str, Any], expected: str
) -> None:
    assert summarize_tool_input(tool, tool_input) == expected


def test_long_text_is_clipped_for_progress_events() -> None:
    event = {"type": "assistant", "message": {"content": [{"type": "text", "text": "x" * 5000}]}}
    (progress,) = _progress(event, run_id="r", task_id="t", attempt=1)
    assert len(progress.text) == SUMMARY_CHARS


@given(
    st.dictionaries(
        st.sampled_from(["type", "message", "usage", "content", "subtype"]),
        st.none()
        | st.integers()
        | st.text(max_size=5)
        | st.lists(st.dictionaries(st.text(max_size=6), st.text(max_size=6))),
    )
)
def test_any_odd_event_is_skipped_or_parsed_never_a_crash(event: dict[str, Any]) -> None:
    for outcome in (progress_from(event, run_id="r", task_id="t", attempt=1),):
        assert isinstance(outcome, list)
    assert isinstance(classify(event, exit_code=1).succeeded, bool)


def test_usage_ignores_negative_or_odd_counts() -> None:
    usage = {"input_tokens": -3, "output_tokens": 7}
    event = {"type": "assistant", "message": {"content": [], "usage": usage}}
    (progress,) = _progress(event, run_id="r", task_id="t", attempt=1)
    assert progress.usage == TokenUsage(output_tokens=7)


def test_a_rate_limited_retry_of_the_cli_becomes_a_rate_limited_event() -> None:
    retry = {"type": "system", "subtype": "api_retry", "attempt": 1, "max_retries": 2,
             "retry_delay_ms": 1500, "error_status": 529}  # fmt: skip
    (event,) = progress_from(retry, run_id="r", task_id="t", attempt=3)
    assert event == TaskRateLimited(
        run_id="r", task_id="t", attempt=3, status=529, retry_after_s=1.5
    )
    assert progress_from({**retry, "error_status": 500}, run_id="r", task_id="t", attempt=3) == []
