"""The scripted model's pure core: matching, turns, injected errors, the wire format."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from claudecluster.errors import ConfigError
from claudecluster.scripted_model import Script, decide, load_script
from claudecluster.scripted_model.script import error_key, request_cwd
from claudecluster.scripted_model.wire import message_json, sse_events

SCRIPT = Script.model_validate(
    {
        "latency_s": 0.5,
        "tasks": [
            {
                "marker": "[[task:hello]]",
                "latency_s": 0.1,
                "turns": [
                    {
                        "text": "Writing.",
                        "tools": [
                            {"name": "Write", "input": {"file_path": "{cwd}/a.py", "content": "x"}}
                        ],
                    },
                    {"text": "Done.", "latency_s": 0},
                ],
                "errors": [{"turn": 1, "kind": "http_429", "times": 2, "retry_after_s": 3}],
            }
        ],
    }
)


def _request(user: str, assistant_turns: int = 0, cwd: str = "/work/ws") -> dict[str, Any]:
    messages: list[dict[str, Any]] = [
        {"role": "user", "content": [{"type": "text", "text": "<system-reminder>x"},
                                     {"type": "text", "text": user}]},
        {"role": "system", "content": [{"type": "text",
                                        "text": f" - Primary working directory: {cwd}\n - x"}]},
    ]  # fmt: skip
    for _ in range(assistant_turns):
        messages.append(
            {
                "role": "assistant",
                "content": [{"type": "text", "text": "..."}, {"type": "tool_use", "name": "Bash"}],
            }
        )
        messages.append({"role": "user", "content": [{"type": "tool_result", "content": "ok"}]})
    return {"model": "claude-test", "messages": messages, "stream": True}


def test_the_first_turn_of_a_matched_task_calls_its_tools_in_the_working_directory() -> None:
    reply = decide(SCRIPT, _request("please [[task:hello]]"), {})
    assert (reply.task, reply.turn, reply.text, reply.stop_reason) == (
        "[[task:hello]]", 0, "Writing.", "tool_use",
    )  # fmt: skip
    assert reply.tools[0].input == {"file_path": "/work/ws/a.py", "content": "x"}
    assert reply.latency_s == 0.1  # the task's latency overrides the script's


def test_an_injected_error_is_served_its_number_of_times_then_the_turn_goes_through() -> None:
    served: dict[str, int] = {}
    request = _request("[[task:hello]]", assistant_turns=1)
    for _ in range(2):
        reply = decide(SCRIPT, request, served)
        assert (reply.error, reply.retry_after_s) == ("http_429", 3)
        key = error_key("[[task:hello]]", 1, "http_429")
        served[key] = served.get(key, 0) + 1
    reply = decide(SCRIPT, request, served)
    assert (reply.error, reply.text, reply.stop_reason, reply.latency_s) == (
        None, "Done.", "end_turn", 0,
    )  # fmt: skip


def test_a_conversation_past_the_script_ends_without_more_tool_calls() -> None:
    reply = decide(SCRIPT, _request("[[task:hello]]", assistant_turns=5), {"x": 9})
    assert reply.tools == []
    assert reply.stop_reason == "end_turn"


def test_a_resumed_session_told_of_a_reset_workspace_starts_the_script_over() -> None:
    note = "moved to a fresh copy of the repository"
    resumed = _request("[[task:hello]]", assistant_turns=1)
    resumed["messages"].append({"role": "user", "content": f"{note}. [[task:hello]]"})
    restarting = SCRIPT.model_copy(update={"restart_after": note})

    assert decide(SCRIPT, resumed, {"x": 9}).turn == 1  # without it: continues after the write
    reply = decide(restarting, resumed, {"x": 9})
    assert (reply.turn, reply.text, reply.stop_reason) == (0, "Writing.", "tool_use")
    # The turns after the note count from it.
    resumed["messages"] += [
        {"role": "assistant", "content": [{"type": "tool_use", "name": "Write"}]},
        {"role": "user", "content": [{"type": "tool_result", "content": "ok"}]},
    ]
    assert decide(restarting, resumed, {"x": 9}).turn == 1


def test_an_unmatched_prompt_gets_the_fallback_answer() -> None:
    reply = decide(SCRIPT, _request("what is 2+2?"), {})
    assert reply.task is None
    assert "nothing scripted" in reply.text
    assert reply.latency_s == 0.5


def test_the_working_directory_is_found_wherever_the_cli_puts_it() -> None:
    assert request_cwd(_request("x", cwd="/a b/c")) == "/a b/c"
    system = [{"type": "text", "text": "Primary working directory: /s\n"}]
    in_system = {"messages": [], "system": system}
    assert request_cwd(in_system) == "/s"
    assert request_cwd({"messages": "nonsense"}) == ""
    resumed = _request("x", cwd="/old")
    resumed["messages"].append(
        {
            "role": "system",
            "content": [{"type": "text", "text": "Primary working directory: /new (was /old)\n"}],
        }
    )
    assert request_cwd(resumed) == "/new"


def test_streamed_events_follow_the_messages_api_order() -> None:
    reply = decide(SCRIPT, _request("[[task:hello]]"), {})
    events = sse_events(_request("[[task:hello]]"), reply, "msg_1")
    names = [name for name, _ in events]
    assert names == [
        "message_start",
        "content_block_start", "content_block_delta", "content_block_stop",
        "content_block_start", "content_block_delta", "content_block_stop",
        "message_delta", "message_stop",
    ]  # fmt: skip
    tool_delta = events[5][1]["delta"]
    assert tool_delta["type"] == "input_json_delta"
    assert json.loads(tool_delta["partial_json"])["file_path"] == "/work/ws/a.py"
    assert events[-2][1]["delta"]["stop_reason"] == "tool_use"
    whole = message_json(_request("[[task:hello]]"), reply, "msg_1")
    assert [block["type"] for block in whole["content"]] == ["text", "tool_use"]


def test_a_script_with_duplicate_markers_or_bad_values_is_rejected_by_key(tmp_path: Path) -> None:
    path = tmp_path / "script.yaml"
    path.write_text(
        "tasks:\n  - marker: m\n    turns: [{text: a}]\n    errors: [{kind: http_418}]\n"
    )
    with pytest.raises(ConfigError) as caught:
        load_script(path)
    assert caught.value.key == "tasks.0.errors.0.kind"
    assert caught.value.source == f"file {path}"
    path.write_text(
        "tasks:\n  - {marker: m, turns: [{text: a}]}\n  - {marker: m, turns: [{text: b}]}\n"
    )
    with pytest.raises(ConfigError, match="used by two tasks"):
        load_script(path)
    with pytest.raises(ConfigError, match="cannot read"):
        load_script(tmp_path / "missing.yaml")
    path.write_text("tasks: [")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_script(path)


def test_consecutive_assistant_messages_are_one_turn() -> None:
    request = _request("[[task:hello]]")
    text = {"role": "assistant", "content": [{"type": "text", "text": "part"}]}
    call = {"role": "assistant", "content": [{"type": "tool_use", "name": "Write"}]}
    result = {"role": "user", "content": [{"type": "tool_result", "content": "ok"}]}
    request["messages"] += [text, call, result]
    assert decide(SCRIPT, request, {}).turn == 1


def test_a_resumed_sessions_synthetic_answer_is_not_a_turn() -> None:
    # Claude Code resumes a session that ended on a tool result by inserting an answer of
    # its own; the model never served it, so the script must not skip ahead.
    request = _request("[[task:hello]]", assistant_turns=1)
    request["messages"] += [
        {"role": "assistant", "content": [{"type": "text", "text": "No response requested."}]},
        {"role": "user", "content": "Your previous run was interrupted. [[task:hello]]"},
    ]
    assert decide(SCRIPT, request, {}).turn == 1
