"""The Anthropic Messages API wire format for a scripted reply (pure, no I/O).

Streaming replies are Server-Sent Events in the order the real API sends them:
``message_start``, then per content block ``content_block_start`` /
``content_block_delta`` / ``content_block_stop``, then ``message_delta`` (with the stop
reason and output usage) and ``message_stop``: what the Claude Code CLI relies on.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, Final

from claudecluster.scripted_model.script import ErrorKind, Reply

__all__ = ["ERRORS", "error_body", "message_json", "sse_events", "usage_for"]

#: HTTP status and Anthropic error type for each injectable error.
ERRORS: Final[dict[ErrorKind, tuple[int, str]]] = {
    "http_401": (401, "authentication_error"),
    "http_429": (429, "rate_limit_error"),
    "http_500": (500, "api_error"),
    "http_529": (529, "overloaded_error"),
}


def error_body(kind: ErrorKind) -> dict[str, Any]:
    """The JSON error body for an injected HTTP error."""
    _, error_type = ERRORS[kind]
    return {"type": "error", "error": {"type": error_type, "message": f"scripted {kind}"}}


def usage_for(request: Mapping[str, Any], reply: Reply) -> dict[str, int]:
    """Deterministic token counts: about one token per four characters."""
    prompt = len(json.dumps(request.get("messages", []), separators=(",", ":")))
    output = len(reply.text) + sum(len(json.dumps(t.input)) for t in reply.tools)
    return {"input_tokens": max(1, prompt // 4), "output_tokens": max(1, output // 4)}


def _blocks(reply: Reply, ids: str) -> list[dict[str, Any]]:
    blocks: list[dict[str, Any]] = []
    if reply.text:
        blocks.append({"type": "text", "text": reply.text})
    for index, tool in enumerate(reply.tools):
        blocks.append(
            {"type": "tool_use", "id": f"toolu_{ids}_{index}", "name": tool.name,
             "input": tool.input}
        )  # fmt: skip
    return blocks


def message_json(request: Mapping[str, Any], reply: Reply, message_id: str) -> dict[str, Any]:
    """The whole message, for a request with ``stream: false``."""
    return {
        "id": message_id,
        "type": "message",
        "role": "assistant",
        "model": request.get("model", "scripted"),
        "content": _blocks(reply, message_id),
        "stop_reason": reply.stop_reason,
        "stop_sequence": None,
        "usage": usage_for(request, reply),
    }


def sse_events(
    request: Mapping[str, Any], reply: Reply, message_id: str
) -> list[tuple[str, dict[str, Any]]]:
    """The stream of ``(event name, data)`` pairs for a streaming request."""
    usage = usage_for(request, reply)
    events: list[tuple[str, dict[str, Any]]] = [
        (
            "message_start",
            {
                "type": "message_start",
                "message": {
                    "id": message_id,
                    "type": "message",
                    "role": "assistant",
                    "model": request.get("model", "scripted"),
                    "content": [],
                    "stop_reason": None,
                    "stop_sequence": None,
                    "usage": {"input_tokens": usage["input_tokens"], "output_tokens": 1},
                },
            },
        )
    ]
    for index, block in enumerate(_blocks(reply, message_id)):
        start: dict[str, Any]
        delta: dict[str, Any]
        if block["type"] == "text":
            start = {"type": "text", "text": ""}
            delta = {"type": "text_delta", "text": block["text"]}
        else:
            start = {**block, "input": {}}
            delta = {"type": "input_json_delta", "partial_json": json.dumps(block["input"])}
        events.append(
            ("content_block_start",
             {"type": "content_block_start", "index": index, "content_block": start})
        )  # fmt: skip
        events.append(
            ("content_block_delta", {"type": "content_block_delta", "index": index, "delta": delta})
        )
        events.append(("content_block_stop", {"type": "content_block_stop", "index": index}))
    events.append(
        (
            "message_delta",
            {
                "type": "message_delta",
                "delta": {"stop_reason": reply.stop_reason, "stop_sequence": None},
                "usage": {"output_tokens": usage["output_tokens"]},
            },
        )
    )
    events.append(("message_stop", {"type": "message_stop"}))
    return events


def encode_sse(name: str, data: Mapping[str, Any]) -> bytes:
    """One Server-Sent Event."""
    return f"event: {name}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode()
