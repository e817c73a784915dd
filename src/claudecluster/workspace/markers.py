"""Conflict markers in file contents: what git leaves where a merge could not decide.

A file holds a conflict when a line that opens one (``<<<<<<<``) is followed, in order,
by a line that divides it (``=======``) and a line that closes it (``>>>>>>>``); a
``|||||||`` line (the common ancestor, diff3 style) may come between the first two. Only
such complete triplets count, so a Markdown heading underlined with ``=======`` or a lone
``>>>>>>>`` in a quoted e-mail is not taken for a conflict. Pure text functions: the
integration branch's shell reads the files and asks them.
"""

from __future__ import annotations

from typing import Final

__all__ = ["MARKER_SIZE", "conflict_blocks", "has_conflict_markers"]

#: git's default ``conflict-marker-size``.
MARKER_SIZE: Final = 7

_OPEN: Final = "<" * MARKER_SIZE
_BASE: Final = "|" * MARKER_SIZE
_SPLIT: Final = "=" * MARKER_SIZE
_CLOSE: Final = ">" * MARKER_SIZE


def _is_marker(line: str, marker: str, *, bare: bool = False) -> bool:
    """Whether ``line`` is ``marker`` alone or (unless ``bare``) followed by a space and
    a label, which is how git writes them (``<<<<<<< HEAD``)."""
    line = line.rstrip("\r\n")
    if line == marker:
        return True
    return not bare and line.startswith(marker + " ")


def conflict_blocks(text: str) -> int:
    """How many complete conflict blocks ``text`` holds (0 when it holds none)."""
    blocks = 0
    stage = 0  # 0: outside, 1: after <<<<<<< (or |||||||), 2: after =======
    for line in text.splitlines():
        if _is_marker(line, _OPEN):
            stage = 1  # a new opening restarts the block: the earlier one was not closed
        elif stage == 1 and _is_marker(line, _BASE):
            continue
        elif stage == 1 and _is_marker(line, _SPLIT, bare=True):
            stage = 2
        elif stage == 2 and _is_marker(line, _CLOSE):
            blocks += 1
            stage = 0
    return blocks


def has_conflict_markers(text: str) -> bool:
    """Whether ``text`` holds at least one complete conflict block."""
    return conflict_blocks(text) > 0
