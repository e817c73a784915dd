"""The OpenAPI 3.1 document, built from the gateway's operation table and msgspec types.

``docs/openapi.json`` is this document, written by ``claudecluster gateway openapi``; a
test fails when the committed file and the routes differ.
"""

from __future__ import annotations

import json
from functools import cache
from typing import Any, Final

import msgspec

from claudecluster import __version__
from claudecluster.gateway.operations import OPERATIONS, Operation
from claudecluster.gateway.schemas import ProblemBody

__all__ = ["openapi_document", "openapi_text"]

_REF: Final = "#/components/schemas/{name}"
_DESCRIPTION: Final = """\
The HTTP and WebSocket front door of ClaudeCluster: submit runs and tasks, read their
status, cancel them, follow their events live. Every operation but /health needs a JWT
bearer token; scopes nest (admin > submit > read).

Live events: a WebSocket at `/runs/{run_id}/events?from_seq=N` (token in the
Authorization header or the `access_token` query parameter) sends the run's stored
events from stream sequence N, then the live ones, each a JSON object
`{"seq", "subject", "envelope"}`. A client that reconnects with the sequence after the last
one it saw loses nothing. Refusals close the socket with code 4000 + the HTTP status
(4401, 4403, 4404, 4422) or answer the handshake with that status.
"""
_TITLES: Final = {
    400: "The body is not JSON.",
    401: "No bearer token, or an invalid or expired one.",
    403: "The token lacks the scope this needs.",
    404: "No run or task has this id.",
    409: "The driver refused the command (the reason is the detail).",
    413: "The request body is larger than the configured limit (gateway.max_body_bytes).",
    422: "A field is invalid; errors name it.",
    503: "No driver answered, or the event log is unreachable; retry later.",
}


def _operation(op: Operation) -> dict[str, Any]:
    spec: dict[str, Any] = {"operationId": op.operation_id, "summary": op.summary}
    if op.params:
        spec["parameters"] = [
            {"name": p.name, "in": p.where, "required": p.required, "schema": p.schema,
             "description": p.description}
            for p in op.params
        ]  # fmt: skip
    if op.request is not None:
        spec["requestBody"] = {
            "required": op.body_required,
            "content": {"application/json": {"schema": {"$ref": _REF.format(
                name=op.request.__name__)}}},
        }  # fmt: skip
    if op.response is not None:
        content: dict[str, Any] = {op.media_type: {"schema": {"$ref": _REF.format(
            name=op.response.__name__)}}}  # fmt: skip
    elif op.media_type == "application/json":
        content = {op.media_type: {"schema": {"type": "object"}}}
    else:
        content = {op.media_type: {"schema": {"type": "string"}}}
    responses: dict[str, Any] = {str(op.status): {"description": "Success.", "content": content}}
    for status in op.errors:
        responses[str(status)] = {
            "description": _TITLES[status],
            "content": {"application/problem+json": {"schema": {"$ref": _REF.format(
                name=ProblemBody.__name__)}}},
        }  # fmt: skip
    spec["responses"] = responses
    spec["security"] = [{"bearer": []}] if op.scope is not None else []
    if op.scope is not None:
        spec["x-scope"] = op.scope
    return spec


@cache
def openapi_document() -> dict[str, Any]:
    """The gateway's OpenAPI 3.1 document."""
    types = {t for op in OPERATIONS for t in (op.request, op.response) if t is not None}
    types.add(ProblemBody)
    _, components = msgspec.json.schema_components(
        sorted(types, key=lambda t: t.__name__), ref_template=_REF
    )
    paths: dict[str, dict[str, Any]] = {}
    for op in OPERATIONS:
        paths.setdefault(op.path, {})[op.method.lower()] = _operation(op)
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "ClaudeCluster gateway",
            "version": __version__,
            "description": _DESCRIPTION,
        },
        "paths": paths,
        "components": {
            "schemas": dict(sorted(components.items())),
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}
            },
        },
    }


def openapi_text() -> str:
    """The document as the committed file holds it: indented, keys in a stable order."""
    return json.dumps(openapi_document(), indent=2, ensure_ascii=False) + "\n"
