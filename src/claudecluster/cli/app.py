"""The ``claudecluster`` command: one cyclopts app, one error policy.

Exit codes: 0 success; 1 the work itself failed, or the infrastructure failed while
working (an event store error); 2 a usage or configuration error, an unknown id, or a NATS
server that cannot be reached or started (one sentence on stderr saying what to fix);
130 interrupted. ``--debug`` anywhere on the command line shows the traceback too.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Final, Literal

from cyclopts import App, CycloptsError
from rich.console import Console

from claudecluster.errors import ClusterError, NatsServerError, RemoteError

if TYPE_CHECKING:
    from pathlib import Path

    from claudecluster.settings import Settings

__all__ = ["EXIT_FAILED", "EXIT_INTERRUPTED", "EXIT_OK", "EXIT_USAGE", "app", "run"]

EXIT_OK: Final = 0
EXIT_FAILED: Final = 1
EXIT_USAGE: Final = 2
EXIT_INTERRUPTED: Final = 130

app = App(
    name="claudecluster",
    help="Run many Claude Code agents in parallel on one goal, over NATS JetStream.",
    version_flags=["--version"],
)
events_app = App(name="events", help="The event catalogue for other tools: JSON Schemas.")
#: Flags that only print text: they log nothing, so they skip the logging set-up (structlog
#: alone is a third of a second to import).
_PRINT_ONLY: Final = frozenset({"--help", "-h", "--version"})


def _help_format(tokens: Sequence[str]) -> Literal["plaintext", "markdown"]:
    """How cyclopts renders help text: plain for the top level, Markdown for a command's.

    The top-level help shows one line per command and nothing Markdown changes but a pair
    of backticks; rendering it as Markdown imports markdown-it, rich's Markdown and its
    syntax highlighting (about 95 modules, a fifth of ``--help``'s start-up). A command's
    own help keeps Markdown, which reflows its parameters' wrapped docstring lines.
    """
    return "plaintext" if not tokens or tokens[0] in _PRINT_ONLY else "markdown"


def _first(group: BaseExceptionGroup[ClusterError]) -> ClusterError:
    error = group.exceptions[0]
    return _first(error) if isinstance(error, BaseExceptionGroup) else error


def run(argv: Sequence[str] | None = None) -> int:
    """Run one command line and return its exit code (never raises for user errors)."""
    tokens = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in tokens
    tokens = [token for token in tokens if token != "--debug"]
    err = Console(stderr=True, highlight=False, soft_wrap=True)
    if not tokens or not _PRINT_ONLY.intersection(tokens):
        from claudecluster.observability.logging import configure_logging

        configure_logging(level="WARNING")  # commands reconfigure from their settings
    app.help_format = _help_format(tokens)
    try:
        try:
            result = app(
                tokens, exit_on_error=False, print_error=True, result_action="return_value"
            )
        except BaseExceptionGroup as group:
            # A task group wraps what one of its tasks raised: report that error itself.
            cluster = group.subgroup(ClusterError)
            if cluster is None or debug:
                raise
            raise _first(cluster) from group
    except CycloptsError:
        return EXIT_USAGE
    except ClusterError as exc:
        if debug:
            err.print_exception()
        err.print(f"error: {exc}", markup=False)
        if isinstance(exc, RemoteError) and not isinstance(exc, NatsServerError):
            return EXIT_FAILED
        return EXIT_USAGE
    except KeyboardInterrupt:
        err.print("interrupted", markup=False)
        return EXIT_INTERRUPTED
    if isinstance(result, int) and not isinstance(result, bool):
        return result
    return EXIT_OK


def flag_settings(
    config: Path | None,
    *,
    nats: str | None = None,
    no_sandbox: bool = False,
    project_dir: Path | None = None,
    sections: Mapping[str, object] | None = None,
) -> Settings:
    """The settings a command runs with: the file (``config``, else the project's), the
    environment, then its flags: ``--nats``, ``--no-sandbox`` and ``sections`` of its own.

    Raises:
        ConfigError: a layer cannot be read or a value is invalid; names key and source.
    """
    from claudecluster.settings import load_settings

    flags: dict[str, object] = dict(sections or {})
    if nats:
        flags["nats"] = {"url": nats}
    if no_sandbox:
        flags["sandbox"] = {"enabled": False}
    return load_settings(config_file=config, project_dir=project_dir, flags=flags or None).settings


def log_quietly(settings: Settings) -> None:
    """Log warnings and worse on stderr (or the configured level, when it is quieter or
    more verbose than ``INFO``), with the configured secrets redacted: a command whose own
    output is what a person reads.
    """
    from claudecluster.observability.logging import configure_logging
    from claudecluster.observability.redaction import Redactor

    level = "WARNING" if settings.logging.level == "INFO" else settings.logging.level
    configure_logging(level=level, redactor=Redactor(settings.secret_values()))


def command_settings(nats: str | None, config: Path | None) -> Settings:
    """The settings of a command that talks to a cluster: ``--nats`` over the file, quiet logs.

    The imports are local so that loading this module (every command does) stays cheap.
    """
    from claudecluster.observability.logging import configure_logging
    from claudecluster.observability.redaction import Redactor

    settings = flag_settings(config, nats=nats)
    configure_logging(level="WARNING", redactor=Redactor(settings.secret_values()))
    return settings
