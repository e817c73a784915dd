"""Where the package finds its data files (the NATS topology and server configs).

The canonical copies live at the repository's top level (``nats/``) where operators look
for them; a built wheel carries the same files under ``claudecluster/_data``. A source
checkout (editable install) reads the top-level folder directly.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["data_dir"]

_PACKAGE = Path(__file__).resolve().parent


def data_dir(name: str) -> Path:
    """The directory holding the data folder ``name`` (for example ``nats``).

    Raises:
        FileNotFoundError: neither the packaged nor the source-checkout copy exists.
    """
    for candidate in (_PACKAGE / "_data" / name, _PACKAGE.parents[1] / name):
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError(f"data folder {name!r} is missing from this installation")
