"""Turning pydantic validation errors into one clear :class:`ConfigError`."""

from __future__ import annotations

from collections.abc import Callable

import pydantic

from claudecluster.errors import ConfigError

__all__ = ["config_error", "dotted"]


def dotted(loc: tuple[int | str, ...]) -> str:
    """A pydantic location as a dotted key: ``("streams", 0, "name")`` -> ``streams.0.name``."""
    return ".".join(str(part) for part in loc)


def config_error(exc: pydantic.ValidationError, source_of: Callable[[str], str]) -> ConfigError:
    """The first problem of ``exc`` as a ConfigError naming the key and where it came from.

    Args:
        exc: pydantic's error.
        source_of: maps a dotted key to a description of its source (a file, an env var).
    """
    first = exc.errors(include_url=False)[0]
    key = dotted(tuple(first["loc"])) or "(top level)"
    problem = first["msg"]
    if first["type"] == "extra_forbidden":
        problem = "unknown key (check its spelling)"
    more = exc.error_count() - 1
    if more > 0:
        problem += f" (and {more} more problem{'s' if more > 1 else ''})"
    return ConfigError(key, source_of(key), problem)
