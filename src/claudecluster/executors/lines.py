"""Splitting an agent's output into lines in time linear in its size and bounded memory.

Appending each chunk to a buffer and splitting the whole buffer again costs the square of
a long line's length: a 32 MiB line read in 64 KiB chunks was 6 s of worker CPU. Here each
chunk is scanned once, a line's pieces are joined once, and a line longer than
``max_line_chars`` is dropped (counted in :attr:`LineSplitter.overlong_lines`) instead of
held: what an agent prints can never grow the worker's memory past that bound.
"""

from __future__ import annotations

from typing import Final

__all__ = ["MAX_LINE_CHARS", "LineSplitter"]

#: The longest line kept. Claude Code's stream-json lines carry tool results, which the
#: CLI itself cuts to well under this; a line longer than this is not an event we read.
MAX_LINE_CHARS: Final = 8 * 2**20


class LineSplitter:
    """Cuts a stream of text chunks into complete lines (without their ``\\n``).

    Args:
        max_line_chars: lines longer than this are dropped, and counted.

    Attributes:
        overlong_lines: lines dropped for their length.
        chars_handled: characters scanned or copied so far (what the work is proportional
            to; a test checks it stays within a constant factor of the input).
    """

    def __init__(self, max_line_chars: int = MAX_LINE_CHARS) -> None:
        self._max = max_line_chars
        self._parts: list[str] = []
        self._held = 0
        self._overlong = False
        self.overlong_lines = 0
        self.chars_handled = 0

    @property
    def held_chars(self) -> int:
        """Characters of the unfinished line held now (at most ``max_line_chars``)."""
        return self._held

    def feed(self, chunk: str) -> list[str]:
        """The lines ``chunk`` completes, in order."""
        lines: list[str] = []
        start = 0
        self.chars_handled += len(chunk)
        while (end := chunk.find("\n", start)) >= 0:
            piece = chunk[start:end]
            if self._overlong or self._held + len(piece) > self._max:
                self.overlong_lines += 1
            elif self._parts:
                self._parts.append(piece)
                line = "".join(self._parts)
                self.chars_handled += len(line)
                lines.append(line)
            else:
                lines.append(piece)
            self._parts.clear()
            self._held = 0
            self._overlong = False
            start = end + 1
        if start < len(chunk) and not self._overlong:
            rest = chunk[start:]
            if self._held + len(rest) > self._max:
                self._overlong = True  # drop what is held and the rest of this line
                self._parts.clear()
                self._held = 0
            else:
                self._parts.append(rest)
                self._held += len(rest)
        return lines

    def end(self) -> str | None:
        """The last line if the stream ended without a newline after it (else None)."""
        if self._overlong:
            self.overlong_lines += 1
            self._overlong = False
            return None
        if not self._parts:
            return None
        line = "".join(self._parts)
        self._parts.clear()
        self._held = 0
        return line
