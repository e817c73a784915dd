"""Structured logging: structlog over the standard library.

JSON lines when stderr is not a terminal (for machines: CI, log shippers), readable
console lines when it is. Every record passes through the :class:`Redactor` last, so a
secret can reach a log only by a path that does not log.

structlog is imported when a record is first logged, not when a module asks for a logger
or the CLI configures logging: it is about 70 ms of start-up (with the rich traceback
support it loads), and a command such as ``status`` that logs nothing never pays it.
"""

from __future__ import annotations

import io
import logging
import sys
from collections.abc import MutableMapping
from typing import TYPE_CHECKING, Any, Final, TextIO, cast

from claudecluster.observability.redaction import Redactor

if TYPE_CHECKING:
    import structlog

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


#: The configuration asked for before structlog was imported, applied when it is.
_pending: dict[str, Any] | None = None


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
    global _pending  # the process's one logging configuration
    options = {"level": level, "json": json, "redactor": redactor, "stream": stream}
    if "structlog" in sys.modules:
        # Already loaded (a logger was used, or a test holds structlog's configuration):
        # apply now, so nothing configured in between is overwritten later.
        _pending = None
        _apply(**options)
    else:
        _pending = options


def _structlog() -> Any:
    """structlog, imported now and given the configuration that was asked for."""
    global _pending  # the process's one logging configuration
    import structlog

    if _pending is not None:
        options, _pending = _pending, None
        _apply(**options)
    return structlog


def _apply(*, level: str, json: bool | None, redactor: Redactor | None, stream: Any) -> None:
    import structlog

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
        wrapper_class=structlog.make_filtering_bound_logger(_level(level)),
        logger_factory=structlog.PrintLoggerFactory(file=out),
        cache_logger_on_first_use=False,
    )


#: Logger methods whose records a level can filter out, and their levels.
_QUIET_METHODS: Final = {"debug": logging.DEBUG, "info": logging.INFO}


def _level(name: str) -> int:
    return logging.getLevelNamesMapping()[name.upper()]


def _discard(*_args: Any, **_kwargs: Any) -> None:
    """A record below the configured level: dropped, as structlog would drop it."""


class _Logger:
    """structlog's logger for one component, made when it is first used."""

    __slots__ = ("_component", "_logger")

    def __init__(self, component: str) -> None:
        self._component = component
        self._logger: Any = None

    def __getattr__(self, name: str) -> Any:
        if self._logger is None:
            if _pending is not None and _QUIET_METHODS.get(name, logging.CRITICAL) < _level(
                _pending["level"]
            ):
                # Below the level asked for, and structlog not loaded yet: its filtering
                # logger would drop the record too, so do not load it to drop it.
                return _discard
            self._logger = _structlog().get_logger(component=self._component)
        return getattr(self._logger, name)


def get_logger(name: str) -> Any:
    """A lazily configured logger that carries ``component=name`` in every record."""
    # Lazy twice: structlog is imported at the first record, and its logger resolves the
    # configuration at first use, not at import.
    return _Logger(name)
