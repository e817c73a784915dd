"""Structured logging: structlog over the standard library.

JSON lines when stderr is not a terminal (for machines: CI, log shippers), readable
console lines when it is. Every record passes through the :class:`Redactor` last, so a
secret can reach a log only by a path that does not log.
"""

from __future__ import annotations

import io
import logging
import sys
from collections.abc import MutableMapping
from typing import Any, TextIO, cast

import structlog

from claudecluster.observability.redaction import Redactor

__all__ = ["configure_logging", "get_logger"]


class _CurrentStderr(io.TextIOBase):
    """Whatever ``sys.stderr`` is when a record is written, not when logging was set up.

    Programs that embed the CLI, and pytest's capture, swap ``sys.stderr`` and close the
    stream they swapped in; a logger holding the object it was configured with would then
    write to a closed file.
    """

    def write(self, text: str) -> int:
        return sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()

    def isatty(self) -> bool:
        return sys.stderr.isatty()


def _redacting(redactor: Redactor) -> structlog.types.Processor:
    def processor(
        _logger: Any, _method: str, event_dict: MutableMapping[str, Any]
    ) -> MutableMapping[str, Any]:
        return redactor.mapping(event_dict)

    return processor


def configure_logging(
    *,
    level: str = "INFO",
    json: bool | None = None,
    redactor: Redactor | None = None,
    stream: Any = None,
) -> None:
    """Configure structlog for this process (call once, early).

    Our own records go through structlog. Libraries that log through the standard library
    (nats-py reports through our callbacks instead) are not routed here.

    Args:
        level: minimum level name (``DEBUG``, ``INFO``, ...).
        json: force JSON (True) or console (False) output; None picks by whether the
            output stream is a terminal.
        redactor: secrets to strip from every record.
        stream: where to write (default stderr).
    """
    # TextIOBase is a text stream at run time; typing's TextIO is a separate protocol.
    out = stream or cast(TextIO, _CurrentStderr())
    use_json = json if json is not None else not out.isatty()
    renderer: structlog.types.Processor = (
        structlog.processors.JSONRenderer()
        if use_json
        else structlog.dev.ConsoleRenderer(colors=False)
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            _redacting(redactor or Redactor()),
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.getLevelNamesMapping()[level.upper()]
        ),
        logger_factory=structlog.PrintLoggerFactory(file=out),
        cache_logger_on_first_use=False,
    )


def get_logger(name: str) -> Any:
    """A lazily configured logger that carries ``component=name`` in every record."""
    # Lazy: the logger resolves the configuration at first use, not at import.
    return structlog.get_logger(component=name)
