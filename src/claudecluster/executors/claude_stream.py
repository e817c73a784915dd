"""Reading Claude Code's ``--output-format stream-json`` output (pure, no I/O).

Two decisions live here, both free of processes so they are tested on recorded lines:

* :func:`progress_from` turns one stream event into typed ``TaskProgress`` events: agent
  text, tool calls with a short input summary, tool result summaries, token usage.
* :func:`classify` turns the final ``result`` event (or its absence) into an
  :class:`Outcome`. Never the exit code alone: an API error exits 1 with
  ``subtype: "success"`` and ``is_error: true``, and SIGINT exits 0 with no result at all.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, Final

from claudecluster.domain.outcome import Outcome
from claudecluster.events.model import ProgressKind, TaskProgress, TaskRateLimited, TokenUsage

__all__ = ["SUMMARY_CHARS", "Outcome", "classify", "progress_from", "summarize_tool_input"]

#: Longest text a progress event carries; the full transcript is kept elsewhere.
SUMMARY_CHARS: Final = 300

_RETRYABLE_STATUS: Final = frozenset({408, 409, 500, 502, 503, 504, 529})


def _clip(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= SUMMARY_CHARS else text[: SUMMARY_CHARS - 1] + "…"


def summarize_tool_input(tool: str, tool_input: Mapping[str, Any]) -> str:
    """A one-line summary of a tool call: the path it touches or the command it runs."""
    for key in ("file_path", "path", "notebook_path"):
        value = tool_input.get(key)
        if isinstance(value, str):
            return _clip(f"{tool} {value}")
    command = tool_input.get("command")
    if isinstance(command, str):
        return _clip(f"{tool}: {command}")
    pattern = tool_input.get("pattern")
    if isinstance(pattern, str):
        return _clip(f"{tool} {pattern}")
    return _clip(f"{tool} {json.dumps(tool_input, sort_keys=True, default=str)}")


def _usage(raw: Any) -> TokenUsage | None:
    if not isinstance(raw, Mapping):
        return None
    fields = (
        "input_tokens",
        "output_tokens",
        "cache_creation_input_tokens",
        "cache_read_input_tokens",
    )
    counts = {f: raw.get(f) for f in fields}
    if not any(isinstance(v, int) and not isinstance(v, bool) for v in counts.values()):
        return None
    return TokenUsage(**{f: v if isinstance(v, int) and v >= 0 else 0 for f, v in counts.items()})


def _result_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(
            block.get("text", "")
            for block in content
            if isinstance(block, Mapping) and isinstance(block.get("text"), str)
        )
    return ""


def progress_from(
    event: Mapping[str, Any],
    *,
    run_id: str,
    task_id: str,
    attempt: int,
    usage_seen: set[str] | None = None,
) -> list[TaskProgress | TaskRateLimited]:
    """The progress events one stream-json event carries (none for bookkeeping events).

    The CLI prints one ``assistant`` event per content block, each repeating its message's
    usage; pass the same ``usage_seen`` set for a whole run so each message's usage is
    reported once.
    """
    kind = event.get("type")
    if kind == "system" and event.get("subtype") == "api_retry":
        status = event.get("error_status")
        if status in (429, 529):
            delay = event.get("retry_delay_ms")
            retry_after = delay / 1000 if isinstance(delay, int | float) and delay >= 0 else None
            return [
                TaskRateLimited(
                    run_id=run_id,
                    task_id=task_id,
                    attempt=attempt,
                    status=status,
                    retry_after_s=retry_after,
                )
            ]
        return []
    message = event.get("message")
    if kind not in ("assistant", "user") or not isinstance(message, Mapping):
        return []
    content = message.get("content")
    if not isinstance(content, list):
        return []

    def make(
        kind: ProgressKind, *, text: str = "", tool: str = "", usage: TokenUsage | None = None
    ) -> TaskProgress:
        return TaskProgress(
            run_id=run_id,
            task_id=task_id,
            attempt=attempt,
            kind=kind,
            text=text,
            tool=tool,
            usage=usage,
        )

    progress: list[TaskProgress | TaskRateLimited] = []
    for block in content:
        if not isinstance(block, Mapping):
            continue
        block_type = block.get("type")
        if kind == "assistant" and block_type == "text" and isinstance(block.get("text"), str):
            if block["text"].strip():
                progress.append(make("text", text=_clip(block["text"])))
        elif kind == "assistant" and block_type == "tool_use":
            tool = str(block.get("name", "?"))
            raw_input = block.get("input")
            tool_input = raw_input if isinstance(raw_input, Mapping) else {}
            summary = summarize_tool_input(tool, tool_input)
            progress.append(make("tool_use", tool=tool, text=summary))
        elif kind == "user" and block_type == "tool_result":
            prefix = "error: " if block.get("is_error") else ""
            text = _clip(prefix + _result_text(block.get("content")))
            progress.append(make("tool_result", text=text))
    if kind == "assistant":
        usage = _usage(message.get("usage"))
        message_id = str(message.get("id", ""))
        first = usage_seen is None or not message_id or message_id not in usage_seen
        if usage is not None and first:
            progress.append(make("usage", usage=usage))
            if usage_seen is not None and message_id:
                usage_seen.add(message_id)
    return progress


def classify(
    result: Mapping[str, Any] | None, *, exit_code: int | None, stderr_tail: str = ""
) -> Outcome:
    """The outcome of a run from its final ``result`` event.

    Args:
        result: the ``result`` event, or None if the process printed none.
        exit_code: the process's exit status (only reported, never decisive).
        stderr_tail: the end of its stderr, quoted in the reason when nothing else says why.
    """
    if result is None:
        detail = f": {_clip(stderr_tail)}" if stderr_tail.strip() else ""
        return Outcome(
            succeeded=False,
            reason=f"claude exited with code {exit_code} without a result{detail}",
            failure_class="infrastructure",
            retryable=True,
        )
    usage = _usage(result.get("usage")) or TokenUsage()
    cost = result.get("total_cost_usd")
    turns = result.get("num_turns")
    duration = result.get("duration_ms")
    model_time = result.get("duration_api_ms")
    common: dict[str, Any] = {
        "cost_usd": float(cost) if isinstance(cost, int | float) and cost >= 0 else 0.0,
        "usage": usage,
        "turns": turns if isinstance(turns, int) and turns >= 0 else 0,
        "duration_ms": duration if isinstance(duration, int) and duration >= 0 else 0,
        "model_time_ms": model_time if isinstance(model_time, int) and model_time >= 0 else 0,
        "session_id": str(result.get("session_id") or ""),
    }
    text = result.get("result")
    summary = _clip(text) if isinstance(text, str) else ""
    subtype = result.get("subtype")
    if result.get("is_error") is False and subtype == "success":
        full = text if isinstance(text, str) else ""
        return Outcome(succeeded=True, summary=summary, result_text=full, **common)
    if subtype == "error_max_turns" or result.get("terminal_reason") == "max_turns":
        return Outcome(
            succeeded=False,
            reason="the agent reached its turn limit",
            failure_class="max_turns",
            **common,
        )
    if isinstance(subtype, str) and "budget" in subtype:
        return Outcome(
            succeeded=False,
            reason="the attempt reached its cost limit",
            failure_class="budget",
            **common,
        )
    status = result.get("api_error_status")
    if isinstance(status, int) and not isinstance(status, bool):
        return _api_failure(status, summary, common)
    errors = result.get("errors")
    detail = "; ".join(str(e) for e in errors) if isinstance(errors, list) and errors else summary
    return Outcome(
        succeeded=False,
        reason=_clip(f"the agent run failed ({subtype}): {detail}" if detail else str(subtype)),
        failure_class="agent_error",
        **common,
    )


def _api_failure(status: int, summary: str, common: dict[str, Any]) -> Outcome:
    if status in (401, 403):
        return Outcome(
            succeeded=False,
            reason=f"API authentication failed ({status}): {summary}",
            failure_class="auth",
            api_error_status=status,
            **common,
        )
    if status in (429, 529):
        return Outcome(
            succeeded=False,
            reason=f"API rate limited or overloaded ({status})",
            failure_class="rate_limit",
            retryable=True,
            rate_limited=True,
            api_error_status=status,
            **common,
        )
    return Outcome(
        succeeded=False,
        reason=f"API error {status}: {summary}",
        failure_class="api_error",
        retryable=status in _RETRYABLE_STATUS,
        api_error_status=status,
        **common,
    )
