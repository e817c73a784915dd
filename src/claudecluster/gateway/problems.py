"""Problem details and the request edge: the gateway's errors, and bodies decoded once.

Errors are RFC 9457 problem details. Whose fault it is decides the status: bad input is
400 (not JSON) or 422 (naming the field by its JSON path), an unknown id 404, a refusal by
the driver 409, a missing or invalid token 401, a missing scope 403, a body over the limit
413; only the infrastructure (no driver, NATS away) answers 503. Bad input never causes a
5xx. Request bodies are read here, no further than the limit, and decoded into their
msgspec type with what was wrong named in words.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any, Final

import msgspec
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response

from claudecluster.errors import (
    AmbiguousTaskError,
    AuthenticationError,
    ClusterError,
    CommandRefusedError,
    ConfigError,
    GraphError,
    InvalidIdError,
    LocalError,
    PermissionDeniedError,
    RemoteError,
    UnknownEntityError,
)
from claudecluster.events.codec import split_msgspec_error
from claudecluster.events.model import is_id
from claudecluster.gateway.schemas import ProblemBody, ProblemField

__all__ = [
    "DEFAULT_MAX_BODY_BYTES",
    "JSON",
    "WS_CLOSE_BASE",
    "Problem",
    "decode_body",
    "http_error",
    "invalid",
    "json_response",
    "problem_for",
    "problem_response",
    "query_id",
    "read_body",
]

JSON: Final = "application/json"
_PROBLEM: Final = "application/problem+json"
_NAMED = re.compile(r"(?:missing required|unknown) field `(?P<name>[^`]*)`")
_REGEX = re.compile(r"Expected `str` matching regex .*")
# What a pattern asks for, in words, by the field it guards: a regex is no help to a user.
_PATTERN_MEANS = {
    "repo": "expected an absolute path on the driver's machine, without control characters",
    "run_id": "expected letters, digits, '-' and '_', starting with a letter or digit, at most 64",
    "task_id": "expected letters, digits, '-' and '_', starting with a letter or digit, at most 64",
}
#: WebSocket close codes: 4000 + the HTTP status the same problem would have.
WS_CLOSE_BASE: Final = 4000


class Problem(Exception):  # noqa: N818 - carried to the error response, not raised out
    """An answer that is an error: status, title, detail and the fields at fault."""

    def __init__(
        self, status: int, title: str, detail: str, errors: Sequence[ProblemField] = ()
    ) -> None:
        self.status = status
        self.title = title
        self.detail = detail
        self.errors = list(errors)
        super().__init__(detail)


def json_response(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(msgspec.json.encode(body), status_code=status, media_type=JSON,
                    headers=headers)  # fmt: skip


def problem_response(problem: Problem, headers: dict[str, str] | None = None) -> Response:
    body = ProblemBody(
        title=problem.title, status=problem.status, detail=problem.detail, errors=problem.errors
    )
    return Response(msgspec.json.encode(body), status_code=problem.status, media_type=_PROBLEM,
                    headers=headers)  # fmt: skip


def invalid(field: str, problem: str) -> Problem:
    return Problem(422, "Unprocessable Content", f"{field}: {problem}",
                    [ProblemField(field=field, problem=problem)])  # fmt: skip


#: The default cap on a request body (``gateway.max_body_bytes``).
DEFAULT_MAX_BODY_BYTES: Final = 4 * 1024 * 1024


async def read_body(request: Request, limit: int) -> bytes:
    """The body, read no further than ``limit`` bytes: past it, a 413 problem.

    A declared ``Content-Length`` over the limit is refused before anything is read; a
    body without one (chunked) is refused as soon as what arrived passes the limit.
    """
    too_large = Problem(
        413, "Content Too Large", f"the request body is larger than the limit of {limit} bytes"
    )
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise too_large
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise too_large
        chunks.append(chunk)
    return b"".join(chunks)


def decode_body(data: bytes, kind: type[Any], *, required: bool) -> Any:
    """The request body as ``kind``; a problem naming the field when it is not one."""
    if not data.strip():
        if required:
            raise invalid("$", "a JSON body is required")
        return msgspec.convert({}, kind)
    try:
        decoded = msgspec.json.decode(data, type=kind)
    except msgspec.ValidationError as exc:
        problem, at = split_msgspec_error(str(exc))
        path = at or "$"
        named = _NAMED.search(problem)
        field = f"{path}.{named.group('name')}" if named else path
        means = _PATTERN_MEANS.get(re.split(r"[.\[]", field)[-1])
        if means is not None:
            problem = _REGEX.sub(means, problem)
        raise invalid(field, problem) from None
    except msgspec.DecodeError as exc:
        raise Problem(400, "Bad Request", f"the body is not valid JSON: {exc}",
                       [ProblemField(field="$", problem=str(exc))]) from None  # fmt: skip
    # A NUL cannot travel on to a path, an argument or a command line (the OS refuses it).
    nul = _nul_field(msgspec.to_builtins(decoded), "$")
    if nul is not None:
        raise invalid(nul, "a NUL character (\\u0000) is not allowed here")
    return decoded


def _nul_field(value: Any, path: str) -> str | None:
    """The JSON path of the first string holding a NUL character, if any."""
    if isinstance(value, str):
        return path if "\x00" in value else None
    if isinstance(value, dict):
        for key, item in value.items():
            found = _nul_field(item, f"{path}.{key}")
            if found is not None:
                return found
    if isinstance(value, list):
        for index, item in enumerate(value):
            found = _nul_field(item, f"{path}[{index}]")
            if found is not None:
                return found
    return None


def problem_for(exc: ClusterError) -> Problem:
    """The problem an error of ours answers with: the status says whose fault it is."""
    match exc:
        case AuthenticationError():
            return Problem(401, "Unauthorized", str(exc))
        case PermissionDeniedError():
            return Problem(403, "Forbidden", str(exc))
        case UnknownEntityError():
            return Problem(404, "Not Found", str(exc))
        case CommandRefusedError():
            return Problem(409, "Conflict", str(exc))
        case AmbiguousTaskError():
            return invalid("task_id", str(exc))
        case ConfigError():
            return invalid(f"$.{exc.key}", exc.problem)
        case GraphError():
            return invalid("$.plan", str(exc))
        case InvalidIdError():
            return invalid(exc.kind + "_id", str(exc))
        case LocalError():
            return Problem(422, "Unprocessable Content", str(exc))
        case RemoteError():
            return Problem(503, "Service Unavailable", str(exc))
        case _:
            return Problem(503, "Service Unavailable", str(exc))


def query_id(request: Request, name: str) -> str | None:
    value = request.query_params.get(name)
    if value is None:
        return None
    if not is_id(value):
        raise invalid(
            name, "use 1-64 letters, digits, '_' or '-', starting with one of the first two"
        )
    return value


async def http_error(request: Request, exc: Exception) -> Response:
    """Starlette's own errors (an unknown path, a method not allowed) as problem details."""
    assert isinstance(exc, HTTPException)
    problem = Problem(exc.status_code, str(exc.detail), f"{request.method} {request.url.path}: "
                      f"{exc.detail}")  # fmt: skip
    return problem_response(problem, dict(exc.headers or {}))
