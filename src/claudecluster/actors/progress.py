"""How an attempt's live output reaches the event log: coalesced, a bounded number of
events per second (pure; the worker's shell calls it and records what it returns).

An agent's stream can say hundreds of things a second (each tool call, each result, each
text block), and a shell command prints a line at a time. One event each made the log
grow with the agent's verbosity, and every reader replay it. The full transcript is kept
elsewhere (mirrored to ``CC_SESSIONS`` for Claude Code); the log needs what a person
watching wants to see. So the first update after a quiet spell goes out at once, and what
comes within ``interval`` after an emission waits for the next one, where updates of the
same kind become one event: text and tool results as lines joined by ``\\n`` (cut to
``max_chars``, saying how many lines were left out), tool calls likewise with their
tools named, usage summed. An emission holds at most one event per kind, so an attempt
records at most ``len(kinds) / interval`` progress events per second, whatever it prints.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Final

import msgspec

from claudecluster.events.model import ProgressKind, TaskProgress, TokenUsage

__all__ = ["BATCH_CHARS", "ProgressBatcher"]

#: The longest text one coalesced progress event carries.
BATCH_CHARS: Final = 2000


@dataclass(slots=True)
class _Batch:
    first: TaskProgress
    lines: list[str] = field(default_factory=list)
    chars: int = 0
    dropped: int = 0
    tools: list[str] = field(default_factory=list)
    usage: TokenUsage | None = None


@dataclass(slots=True)
class ProgressBatcher:
    """Coalesces one attempt's progress updates.

    Attributes:
        interval: the least time between two emissions.
        max_chars: the longest text of one coalesced event.
    """

    interval: timedelta = timedelta(seconds=1)
    max_chars: int = BATCH_CHARS
    _last: datetime | None = None
    _pending: dict[ProgressKind, _Batch] = field(default_factory=dict)

    @property
    def pending(self) -> bool:
        """Whether updates wait for the next emission."""
        return bool(self._pending)

    def offer(self, update: TaskProgress, now: datetime) -> list[TaskProgress]:
        """Take one update; returns the events to record now (often none)."""
        batch = self._pending.get(update.kind)
        if batch is None:
            batch = self._pending[update.kind] = _Batch(first=update)
        if update.usage is not None:
            batch.usage = update.usage if batch.usage is None else batch.usage + update.usage
        if update.tool and update.tool not in batch.tools:
            batch.tools.append(update.tool)
        if update.text:
            if batch.chars + len(update.text) + len(batch.lines) <= self.max_chars:
                batch.lines.append(update.text)
                batch.chars += len(update.text)
            else:
                batch.dropped += 1
        return self.due(now)

    def due(self, now: datetime) -> list[TaskProgress]:
        """The events to record at ``now``: the pending ones, if an emission is due."""
        if not self._pending or (self._last is not None and now - self._last < self.interval):
            return []
        self._last = now
        return self.flush()

    def flush(self) -> list[TaskProgress]:
        """Every pending update as its coalesced events (the attempt is ending)."""
        events = [self._event(batch) for batch in self._pending.values()]
        self._pending.clear()
        return events

    @staticmethod
    def _event(batch: _Batch) -> TaskProgress:
        text = "\n".join(batch.lines)
        if batch.dropped:
            more = f"(and {batch.dropped} more line{'s' if batch.dropped > 1 else ''})"
            text = f"{text}\n{more}" if text else more
        return msgspec.structs.replace(
            batch.first, text=text, tool=", ".join(batch.tools), usage=batch.usage
        )
