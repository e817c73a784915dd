"""Scripts for the scripted model, and the pure decision of what to answer.

A script says, per task, what the "model" answers on each turn: some text, tool calls
(Write, Edit, Bash, Read, ...), a latency, and errors to inject before a turn. A task is
recognised by a marker (any string, e.g. ``[[task:schema]]``) anywhere in the user's text
of the request. The turn is the number of assistant messages already in the conversation,
so the server needs no session state to follow a conversation, and a resumed session
continues where it left off.

Example (YAML)::

    latency_s: 0.2                  # default per turn
    tasks:
      - marker: "[[task:hello]]"
        turns:
          - text: "I'll write the file."
            tools:
              - name: Write
                input: {file_path: "{cwd}/hello.py", content: "print('hi')\\n"}
          - text: "Done: hello.py prints a greeting."
        errors:
          - turn: 1
            kind: http_429
            times: 1
            retry_after_s: 1

String values in tool inputs may use ``{cwd}``, the agent's working directory as the
request states it. Nothing here performs I/O: :func:`decide` maps a request to a reply.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, Literal

import pydantic
import yaml

from claudecluster.config_files import config_error
from claudecluster.errors import ConfigError

__all__ = [
    "ErrorKind",
    "InjectedError",
    "Reply",
    "Script",
    "ScriptedTask",
    "ToolCall",
    "Turn",
    "decide",
    "load_script",
    "request_cwd",
    "request_text",
]

ErrorKind = Literal["http_401", "http_429", "http_500", "http_529", "cut_stream"]

_CWD_RE = re.compile(r"Primary working directory: ([^\n]+)")


class _Model(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="forbid", frozen=True)


class ToolCall(_Model):
    """One tool the model calls, with its input."""

    name: str = pydantic.Field(min_length=1)
    input: dict[str, Any] = {}


class Turn(_Model):
    """What the model answers on one turn: text, then tool calls (if any)."""

    text: str = ""
    tools: list[ToolCall] = []
    latency_s: float | None = pydantic.Field(default=None, ge=0)


class InjectedError(_Model):
    """An error served instead of a turn, ``times`` times before the turn goes through."""

    turn: int = pydantic.Field(default=0, ge=0)
    kind: ErrorKind
    times: int = pydantic.Field(default=1, ge=1)
    retry_after_s: float | None = pydantic.Field(default=None, ge=0)


class ScriptedTask(_Model):
    """The conversation for the task whose prompt contains ``marker``."""

    marker: str = pydantic.Field(min_length=1)
    turns: list[Turn] = pydantic.Field(min_length=1)
    latency_s: float | None = pydantic.Field(default=None, ge=0)
    errors: list[InjectedError] = []


class Script(_Model):
    """A whole script: tasks, a default latency, and the answer to anything unmatched."""

    latency_s: float = pydantic.Field(default=0.0, ge=0)
    tasks: list[ScriptedTask] = []
    fallback: Turn = Turn(text="(the scripted model has nothing scripted for this prompt)")
    #: A text that, in a user message, starts the script over from turn 0: how a resumed
    #: session is told its workspace was reset (the worker says so), after which a real
    #: model redoes its edits. Empty: a resumed session continues where it left off.
    restart_after: str = ""

    @pydantic.model_validator(mode="after")
    def _unique_markers(self) -> Script:
        seen: set[str] = set()
        for task in self.tasks:
            if task.marker in seen:
                raise ValueError(f"marker {task.marker!r} is used by two tasks")
            seen.add(task.marker)
        return self


class Reply(_Model):
    """The decision for one request: an error to serve, or content to stream."""

    error: ErrorKind | None = None
    retry_after_s: float | None = None
    text: str = ""
    tools: list[ToolCall] = []
    latency_s: float = 0.0
    task: str | None = None
    turn: int = 0

    @property
    def stop_reason(self) -> str:
        """``tool_use`` when the reply calls tools, else ``end_turn``."""
        return "tool_use" if self.tools else "end_turn"


def load_script(path: Path) -> Script:
    """Read a YAML script.

    Raises:
        ConfigError: the file is missing, not YAML, or not a valid script; names the key.
    """
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError("(file)", f"file {path}", f"cannot read it: {exc.strerror}") from None
    except yaml.YAMLError:
        raise ConfigError("(file)", f"file {path}", "not valid YAML") from None
    try:
        return Script.model_validate(raw or {})
    except pydantic.ValidationError as exc:
        raise config_error(exc, lambda _key: f"file {path}") from None


def _texts(content: Any) -> Iterator[str]:
    if isinstance(content, str):
        yield content
    elif isinstance(content, list):
        for block in content:
            if isinstance(block, Mapping) and isinstance(block.get("text"), str):
                yield block["text"]


def request_text(request: Mapping[str, Any], role: str = "user") -> str:
    """All text the messages of ``role`` hold, joined (tool results excluded)."""
    messages = request.get("messages")
    if not isinstance(messages, list):
        return ""
    return "\n".join(
        text
        for message in messages
        if isinstance(message, Mapping) and message.get("role") == role
        for text in _texts(message.get("content"))
    )


def request_cwd(request: Mapping[str, Any]) -> str:
    """The agent's working directory, as the request's environment section states it."""
    # The latest statement wins: a resumed conversation still holds the environment
    # section of the run it came from, with that run's directory.
    for role in ("system", "user"):
        found = _CWD_RE.findall(request_text(request, role))
        if found:
            return _directory(found[-1])
    found = _CWD_RE.findall("\n".join(_texts(request.get("system"))))
    return _directory(found[-1]) if found else ""


def _directory(stated: str) -> str:
    # A resumed session states "/new/dir (was /old/dir)".
    return stated.split(" (was ", 1)[0].strip()


def _fill(value: Any, cwd: str) -> Any:
    if isinstance(value, str):
        return value.replace("{cwd}", cwd)
    if isinstance(value, list):
        return [_fill(item, cwd) for item in value]
    if isinstance(value, dict):
        return {key: _fill(item, cwd) for key, item in value.items()}
    return value


def decide(script: Script, request: Mapping[str, Any], served: Mapping[str, int]) -> Reply:
    """What to answer ``request``.

    Args:
        script: the script.
        request: the Messages API request body.
        served: how many times each error has been served so far, by
            :func:`error_key` (the caller counts; this function stays pure).

    Returns:
        The reply; when ``reply.error`` is set the caller must count it as served.
    """
    user_text = request_text(request, "user")
    task = next((t for t in script.tasks if t.marker in user_text), None)
    if task is None:
        fallback = script.fallback
        return Reply(
            text=fallback.text,
            tools=[
                ToolCall(name=t.name, input=_fill(t.input, request_cwd(request)))
                for t in fallback.tools
            ],
            latency_s=fallback.latency_s if fallback.latency_s is not None else script.latency_s,
        )
    turn = _assistant_turns(request.get("messages"), script.restart_after)
    for error in task.errors:
        if (
            error.turn == turn
            and served.get(error_key(task.marker, turn, error.kind), 0) < error.times
        ):
            return Reply(
                error=error.kind, retry_after_s=error.retry_after_s, task=task.marker, turn=turn
            )
    scripted = task.turns[min(turn, len(task.turns) - 1)]
    if turn >= len(task.turns):
        # The conversation went past the script (say, a tool failed and the agent retried):
        # end it with the last turn's text and no further tool calls.
        scripted = Turn(text=scripted.text or "Done.", latency_s=scripted.latency_s)
    latency = next(
        (v for v in (scripted.latency_s, task.latency_s) if v is not None), script.latency_s
    )
    cwd = request_cwd(request)
    return Reply(
        text=scripted.text,
        tools=[ToolCall(name=t.name, input=_fill(t.input, cwd)) for t in scripted.tools],
        latency_s=latency,
        task=task.marker,
        turn=turn,
    )


def _assistant_turns(messages: Any, restart_after: str = "") -> int:
    """Tool round trips so far: the script's position in the conversation.

    Only assistant turns that called a tool count. A scripted turn without tool calls ends
    the conversation, so a text-only assistant message in the history is either an answer
    that ended an earlier prompt or one Claude Code inserts itself: resuming a session
    whose last line is a tool result adds "No response requested.". Counting those would
    skip a turn the model never served. Runs of consecutive assistant messages count once,
    since a resumed transcript may hold one message per content block of the same answer.
    A user message holding ``restart_after`` (when set) starts the count over.
    """
    turns = 0
    in_tool_turn = False
    for message in messages if isinstance(messages, list) else []:
        role = message.get("role") if isinstance(message, Mapping) else None
        if role != "assistant":
            in_tool_turn = False
            if restart_after and role == "user" and restart_after in _message_text(message):
                turns = 0
            continue
        content = message.get("content")
        calls_tool = isinstance(content, list) and any(
            isinstance(block, Mapping) and block.get("type") == "tool_use" for block in content
        )
        if calls_tool and not in_tool_turn:
            turns += 1
            in_tool_turn = True
    return turns


def _message_text(message: Mapping[str, Any]) -> str:
    """The text of one message: a string, or its text blocks joined."""
    content = message.get("content")
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(
            str(block.get("text", ""))
            for block in content
            if isinstance(block, Mapping) and block.get("type") == "text"
        )
    return ""


def error_key(marker: str, turn: int, kind: str) -> str:
    """The counter key of one injected error."""
    return f"{marker}\x00{turn}\x00{kind}"
