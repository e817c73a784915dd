"""JSON Schema export of the catalogue, for tools written in other languages.

The files under ``events/schema/`` are generated from the msgspec types, never edited by
hand; a test regenerates them in memory and fails when the committed copy differs. This
module only renders them (a pure layer touches no file); ``claudecluster events schema``
writes them.
"""

from __future__ import annotations

import inspect
import json
from collections.abc import Mapping
from typing import Any

import msgspec

from claudecluster.events.codec import COMMAND_TYPES, EVENT_TYPES
from claudecluster.events.envelope import CommandEnvelope, EventEnvelope, StoredEvent
from claudecluster.events.model import CommandBase, EventBase
from claudecluster.events.plan import PlanFile
from claudecluster.events.subjects import COMMAND_PREFIX, EVENT_PREFIX

__all__ = ["render_schemas"]

_BASE_ID = "https://claudecluster.dev/schema/"


def _schema_for(cls: type[Any], title: str, extra: Mapping[str, Any]) -> dict[str, Any]:
    schema: dict[str, Any] = dict(msgspec.json.schema(cls))
    schema = {"$schema": "https://json-schema.org/draft/2020-12/schema", **schema}
    schema["title"] = title
    schema.update(extra)
    return schema


def _dump(schema: Mapping[str, Any]) -> str:
    return json.dumps(_cleaned(schema), indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def _cleaned(value: Any) -> Any:
    """Descriptions with docstring indentation removed.

    msgspec releases differ in whether they dedent the docstrings they copy into schemas;
    cleaning them here keeps the committed files the same whichever release renders them.
    """
    if isinstance(value, Mapping):
        return {
            key: inspect.cleandoc(item)
            if key == "description" and isinstance(item, str)
            else _cleaned(item)
            for key, item in value.items()
        }
    if isinstance(value, list):
        return [_cleaned(item) for item in value]
    return value


def _message_schema(
    tag: str, cls: type[EventBase] | type[CommandBase], folder: str, subject: str
) -> tuple[str, str]:
    path = f"{folder}/{tag}.json"
    doc = (cls.__doc__ or "").strip().split("\n\n")[0].replace("\n", " ")
    schema = _schema_for(
        cls,
        cls.__name__,
        {
            "$id": _BASE_ID + path,
            "description": doc,
            "x-type-tag": tag,
            "x-schema-version": cls.schema_version,
            "x-subject": subject,
        },
    )
    return path, _dump(schema)


def render_schemas() -> dict[str, str]:
    """Every schema file, as relative path -> JSON text (deterministic, sorted keys)."""
    files: dict[str, str] = {}
    for tag, event_cls in sorted(EVENT_TYPES.items()):
        if tag.startswith("worker."):
            subject = f"{EVENT_PREFIX}._workers.<worker_id>.{tag}"
        elif tag.startswith("task."):
            subject = f"{EVENT_PREFIX}.<run_id>.<task_id>.{tag}"
        else:
            subject = f"{EVENT_PREFIX}.<run_id>._.{tag}"
        path, text = _message_schema(tag, event_cls, "events", subject)
        files[path] = text
    for tag, command_cls in sorted(COMMAND_TYPES.items()):
        path, text = _message_schema(tag, command_cls, "commands", f"{COMMAND_PREFIX}.{tag}")
        files[path] = text
    for name, cls, doc in (
        ("event-envelope", EventEnvelope, "An event as published on cc.evt.>"),
        ("command-envelope", CommandEnvelope, "A command as published on cc.cmd.>"),
        ("stored-event", StoredEvent, "One line of a recorded JSON Lines log"),
        ("plan", PlanFile, "A plan file: the task graph of a run (YAML or JSON)"),
    ):
        path = f"{name}.json"
        files[path] = _dump(
            _schema_for(cls, cls.__name__, {"$id": _BASE_ID + path, "description": doc})
        )
    return files
