"""Configuration files: where the packaged ones are, how YAML is parsed, and pydantic's
errors as one clear :class:`ConfigError`.

The canonical copies of the data files (the NATS topology, permissions and server configs)
live at the repository's top level (``nats/``) where operators look for them; a built wheel
carries the same files under ``claudecluster/_data``. A source checkout (editable install)
reads the top-level folder directly.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final, TypeVar

import pydantic

from claudecluster.errors import ConfigError

__all__ = ["config_error", "data_dir", "dotted", "load_yaml_model", "parse_yaml"]

_PACKAGE: Final = Path(__file__).resolve().parent
_Model = TypeVar("_Model", bound=pydantic.BaseModel)


@functools.cache
def _safe_loader() -> Any:
    """libyaml's parser when PyYAML was built with it (the wheels are): the pure-Python one
    spent about 45 ms of every CLI call on the two topology and permission files alone.

    Imported on first use: a command that reads no YAML file (``status`` given a URL)
    does not pay for the yaml package.
    """
    import yaml

    return getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def data_dir(name: str) -> Path:
    """The directory holding the data folder ``name`` (for example ``nats``).

    Raises:
        FileNotFoundError: neither the packaged nor the source-checkout copy exists.
    """
    for candidate in (_PACKAGE / "_data" / name, _PACKAGE.parents[1] / name):
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError(f"data folder {name!r} is missing from this installation")


def parse_yaml(text: str) -> Any:
    """``yaml.safe_load`` of ``text``: the same safe constructors, the faster parser.

    Raises:
        yaml.YAMLError: the text is not valid YAML.
    """
    import yaml

    return yaml.load(text, Loader=_safe_loader())  # noqa: S506 - a safe loader


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


def load_yaml_model(source: Path, model: type[_Model]) -> _Model:
    """The YAML file ``source`` read and validated as ``model``.

    Raises:
        ConfigError: the file is missing, not YAML, or not valid; names the key and file.
    """
    import yaml  # here, not at the top: see _safe_loader

    where = f"file {source}"
    try:
        raw = parse_yaml(source.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError("(file)", where, f"cannot read it: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise ConfigError("(file)", where, f"not valid YAML: {exc}") from None
    try:
        return model.model_validate(raw)
    except pydantic.ValidationError as exc:
        raise config_error(exc, lambda _key: where) from None
