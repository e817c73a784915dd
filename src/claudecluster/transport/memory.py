"""An in-memory event log with the same contract as the JetStream one.

For unit tests and simulations: no server, deterministic, instant. It keeps messages as
encoded bytes, exactly as the real log does, so decoding, quarantine and redaction behave
the same. Unlike JetStream, its deduplication window never closes.

Reads filtered by subject go through an index, as the server's do: a simulation of
thousands of tasks reads each task's history and checks each conditional append against
its scope, and scanning the whole log for each made the log the simulation's largest cost.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import asynccontextmanager

import anyio

from claudecluster.errors import ConcurrencyError, EventDecodeError
from claudecluster.events.codec import decode_event, encode
from claudecluster.events.envelope import EventEnvelope, StoredEvent
from claudecluster.events.subjects import (
    ALL_EVENTS,
    event_subject,
    scope_filter,
    subject_matches,
    subject_problem,
)
from claudecluster.observability.redaction import Redactor
from claudecluster.transport.base import AppendResult, QuarantinedMessage

__all__ = ["MemoryEventLog"]


class MemoryEventLog:
    """An :class:`~claudecluster.transport.base.EventLog` held in this process's memory."""

    def __init__(self, *, redactor: Redactor | None = None) -> None:
        self._redactor = redactor or Redactor()
        self._messages: list[tuple[str, bytes]] = []
        self._by_id: dict[str, int] = {}
        # The sequences, in order, of the subjects that have more than k tokens and begin
        # with the k tokens of the key (what a filter "those tokens.>" matches), and of
        # each subject exactly. Lists are created on first ask and then only grow, so a
        # following reader holds one and sees every later match.
        self._by_prefix: dict[tuple[int, str], list[int]] = {}
        self._by_subject: dict[str, list[int]] = {}
        # Each message decoded once (None: quarantined): events are frozen, so every
        # reader may share one decoding; a run's plan of thousands of tasks, decoded
        # again for each worker that read it, was a simulation's largest cost after the
        # scans.
        self._decoded: dict[int, StoredEvent | None] = {}
        self._quarantine: dict[int, QuarantinedMessage] = {}
        self._appended = anyio.Event()

    @property
    def redactor(self) -> Redactor:
        """What every append strips; a signer signs what the log will store."""
        return self._redactor

    async def append(
        self, envelope: EventEnvelope, *, expected_last: int | None = None
    ) -> AppendResult:
        """Append one event; see :class:`~claudecluster.transport.base.EventLog`.

        Raises:
            ConcurrencyError: the scope's last sequence is not ``expected_last``.
        """
        known = self._by_id.get(envelope.id)
        if known is not None:
            return AppendResult(seq=known, duplicate=True)
        subject = event_subject(envelope.payload)
        if expected_last is not None:
            scope = scope_filter(envelope.payload)
            actual = await self.last_seq(scope)
            if actual != expected_last:
                raise ConcurrencyError(scope, expected_last, actual)
        seq = self.inject_raw(subject, self._redactor.data(encode(envelope)))
        self._by_id[envelope.id] = seq
        return AppendResult(seq=seq)

    def inject_raw(self, subject: str, data: bytes) -> int:
        """Store raw bytes as a foreign publisher could; returns the sequence.

        This is how tests put an undecodable message on the log.
        """
        self._messages.append((subject, data))
        seq = len(self._messages)
        tokens = subject.split(".")
        for k in range(len(tokens)):
            self._by_prefix.setdefault((k, ".".join(tokens[:k])), []).append(seq)
        self._by_subject.setdefault(subject, []).append(seq)
        self._appended.set()
        self._appended = anyio.Event()
        return len(self._messages)

    @asynccontextmanager
    async def open_reader(
        self, *, from_seq: int = 1, subjects: str = ALL_EVENTS, follow: bool = False
    ) -> AsyncIterator[AsyncIterator[StoredEvent]]:
        """Iterate stored events; see :class:`~claudecluster.transport.base.EventLog`."""
        iterator = self._iterate(max(from_seq, 1), subjects, follow)
        try:
            yield iterator
        finally:
            await iterator.aclose()

    def _candidates(self, subjects: str) -> tuple[list[int], bool]:
        """The sequences, in order, that may match ``subjects``, and whether all of them do.

        A filter's tokens up to its first wildcard pick an index list; only a filter with
        a ``*`` (or a ``>`` not at its end) needs each candidate matched again.
        """
        tokens = subjects.split(".")
        for k, token in enumerate(tokens):
            if token in ("*", ">"):
                exact = token == ">" and k == len(tokens) - 1
                return self._by_prefix.setdefault((k, ".".join(tokens[:k])), []), exact
        return self._by_subject.setdefault(subjects, []), True

    async def _iterate(
        self, from_seq: int, subjects: str, follow: bool
    ) -> AsyncGenerator[StoredEvent]:
        candidates, exact = self._candidates(subjects)
        at = bisect_left(candidates, from_seq)
        end = len(self._messages)
        while True:
            # Following, every candidate is read, those appended while this reader was
            # suspended at a yield included: a bound taken before the yields would leave
            # them unread until the next append woke the reader, which may never come.
            while at < len(candidates) and (follow or candidates[at] <= end):
                seq = candidates[at]
                at += 1
                subject, data = self._messages[seq - 1]
                if exact or subject_matches(subjects, subject):
                    stored = self._decode(seq, subject, data)
                    if stored is not None:
                        yield stored
            if not follow:
                return
            await self._appended.wait()

    def _decode(self, seq: int, subject: str, data: bytes) -> StoredEvent | None:
        if seq in self._decoded:
            return self._decoded[seq]
        stored = self._decode_once(seq, subject, data)
        self._decoded[seq] = stored
        return stored

    def _decode_once(self, seq: int, subject: str, data: bytes) -> StoredEvent | None:
        try:
            envelope = decode_event(data)
            reason = subject_problem(subject, envelope.payload)
        except EventDecodeError as exc:
            reason = str(exc)
        if reason is not None:
            self._quarantine.setdefault(
                seq,
                QuarantinedMessage(
                    origin_subject=subject, origin_seq=seq, reason=reason, data=data
                ),
            )
            return None
        return StoredEvent(seq=seq, subject=subject, envelope=envelope)

    async def last_seq(self, subjects: str = ALL_EVENTS) -> int:
        """The last sequence matching ``subjects`` (0 if none)."""
        candidates, exact = self._candidates(subjects)
        if exact:
            return candidates[-1] if candidates else 0
        for seq in reversed(candidates):
            if subject_matches(subjects, self._messages[seq - 1][0]):
                return seq
        return 0

    async def quarantine_refused(self, stored: StoredEvent, reason: str) -> None:
        """Record a refused event; see :class:`~claudecluster.transport.base.EventLog`."""
        self._quarantine.setdefault(
            stored.seq,
            QuarantinedMessage(
                origin_subject=stored.subject,
                origin_seq=stored.seq,
                reason=reason,
                data=encode(stored.envelope),
            ),
        )

    async def quarantined(self) -> list[QuarantinedMessage]:
        """Quarantine records, oldest first."""
        return [self._quarantine[seq] for seq in sorted(self._quarantine)]
