"""Encoding and decoding of envelopes, with schema upcasting and precise errors.

Decoding takes one fast path for the common case (current schema, valid message): one
typed msgspec decode. Anything else, an older schema version or a message msgspec rejects,
goes through a slow path that reads the JSON generically, upcasts old payloads step by step
to the current version, and then converts; if the message is still invalid, the slow path
raises :class:`~claudecluster.errors.EventDecodeError` naming the JSON path and the problem.
Every failure, whatever the bytes, is that one error type (or its subclass for an unknown
type tag), so a consumer can quarantine the message and go on.

Upcasters are pure functions from a payload dict of version N to one of version N + 1.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any, Final, Generic, TypeVar, get_args

import msgspec

from claudecluster.errors import EventDecodeError, UnknownEventTypeError
from claudecluster.events.envelope import CommandEnvelope, EventEnvelope, StoredEvent
from claudecluster.events.model import Command, CommandBase, Event, EventBase

__all__ = [
    "COMMAND_TYPES",
    "EVENT_TYPES",
    "UPCASTERS",
    "Upcaster",
    "decode_command",
    "decode_event",
    "decode_guard",
    "decode_stored_event",
    "encode",
    "error_from_msgspec",
    "split_msgspec_error",
]

Upcaster = Callable[[dict[str, Any]], dict[str, Any]]

EVENT_TYPES: Final[Mapping[str, type[EventBase]]] = {
    str(cls.__struct_config__.tag): cls for cls in get_args(Event)
}
COMMAND_TYPES: Final[Mapping[str, type[CommandBase]]] = {
    str(cls.__struct_config__.tag): cls for cls in get_args(Command)
}

_MIB: Final = 1024 * 1024


def _heartbeat_v1_to_v2(payload: dict[str, Any]) -> dict[str, Any]:
    """worker.heartbeat v1 reported ``memory_mb`` as a float in MiB; v2 counts bytes."""
    upgraded = dict(payload)
    memory_mb = upgraded.pop("memory_mb", 0.0)
    if not isinstance(memory_mb, int | float) or isinstance(memory_mb, bool):
        raise TypeError(f"memory_mb must be a number, got {type(memory_mb).__name__}")
    upgraded["memory_bytes"] = round(memory_mb * _MIB)
    return upgraded


#: ``(type tag, from version) -> upcaster`` producing version ``from + 1``.
UPCASTERS: Final[Mapping[tuple[str, int], Upcaster]] = {
    ("worker.heartbeat", 1): _heartbeat_v1_to_v2,
}

_ENCODER: Final = msgspec.json.Encoder()
_ANY_DECODER: Final = msgspec.json.Decoder()
_PATH_RE: Final = re.compile(r"^(?P<problem>.*?) - at `(?P<path>[^`]*)`$", re.DOTALL)

_E = TypeVar("_E", EventEnvelope, CommandEnvelope)


def encode(message: EventEnvelope | CommandEnvelope | StoredEvent) -> bytes:
    """Encode an envelope (or a stored event, for JSON Lines logs) as compact JSON."""
    return _ENCODER.encode(message)


def split_msgspec_error(message: str) -> tuple[str, str | None]:
    """msgspec's "problem - at `$.path`" message as ``(problem, path)``; the path is None
    where the message names none (a problem with the whole document).

    The one reader of that format: events, plan files and the gateway's request bodies.
    """
    match = _PATH_RE.match(message)
    if match is None:
        return message, None
    return match["problem"], match["path"]


def error_from_msgspec(exc: msgspec.DecodeError, prefix: str = "") -> EventDecodeError:
    """Turn msgspec's "problem - at `$.path`" message into our error with the path split out."""
    problem, path = split_msgspec_error(str(exc))
    if path is None:
        return EventDecodeError(prefix or "$", problem)
    if prefix:
        path = prefix + path[1:]
    return EventDecodeError(path, problem)


_MAX_PROBLEM: Final = 500


@contextmanager
def decode_guard(what: str = "message") -> Iterator[None]:
    """Turn anything a decoder raises on hostile bytes into :class:`EventDecodeError`.

    msgspec raises ``RecursionError`` on JSON nested about a thousand deep, and a byte
    string can make a decoder or an upcaster raise almost anything else (``MemoryError``
    on an absurd size, ``UnicodeDecodeError``, ``ValueError``...). A reader that let one of
    those out would stop on a message it can never get past (the log keeps it), so every
    decode path runs inside this guard and a reader only ever needs to catch the one error.

    Args:
        what: what was being decoded, for the error's problem text.

    Raises:
        EventDecodeError: whatever went wrong, naming the problem.
    """
    try:
        yield
    except EventDecodeError:
        raise
    except msgspec.DecodeError as exc:
        raise error_from_msgspec(exc) from None
    except RecursionError:
        raise EventDecodeError(
            "$", f"the {what} is nested too deeply to decode (more levels than the decoder allows)"
        ) from None
    except Exception as exc:  # noqa: BLE001 - hostile input: any failure is the decode error
        problem = f"cannot decode the {what}: {type(exc).__name__}: {exc}"
        raise EventDecodeError("$", problem[:_MAX_PROBLEM]) from None


class _EnvelopeCodec(Generic[_E]):
    """Decoder for one envelope kind; built once per kind, reused for every message."""

    def __init__(
        self,
        envelope_type: type[_E],
        types: Mapping[str, type[EventBase]] | Mapping[str, type[CommandBase]],
        kind: str,
    ) -> None:
        self._envelope_type: type[_E] = envelope_type
        self._types = types
        self._kind = kind
        self._typed: msgspec.json.Decoder[_E] = msgspec.json.Decoder(envelope_type)

    def decode(self, data: bytes | bytearray | memoryview | str) -> _E:
        with decode_guard(self._kind):
            return self._decode(data)

    def _decode(self, data: bytes | bytearray | memoryview | str) -> _E:
        try:
            envelope: _E = self._typed.decode(data)
        except msgspec.DecodeError:
            return self._decode_slow(data)
        if envelope.schema_version == type(envelope.payload).schema_version:
            return envelope
        return self._decode_slow(data)

    def convert(self, raw: Any, prefix: str = "") -> _E:
        """Validate an already-parsed JSON value (one line of a log, say)."""
        with decode_guard(self._kind):
            return self._upcast_and_convert(raw, prefix)

    def _decode_slow(self, data: bytes | bytearray | memoryview | str) -> _E:
        try:
            raw = _ANY_DECODER.decode(data)
        except msgspec.DecodeError as exc:
            raise error_from_msgspec(exc) from None
        return self._upcast_and_convert(raw, "")

    def _upcast_and_convert(self, raw: Any, prefix: str) -> _E:
        where = prefix or "$"
        if not isinstance(raw, dict):
            raise EventDecodeError(where, f"expected a JSON object, got {type(raw).__name__}")
        payload = raw.get("payload")
        if not isinstance(payload, dict):
            raise EventDecodeError(f"{where}.payload", "expected a JSON object with a 'type'")
        tag = payload.get("type")
        if not isinstance(tag, str):
            raise EventDecodeError(f"{where}.payload.type", "missing or not a string")
        cls = self._types.get(tag)
        if cls is None:
            raise UnknownEventTypeError(tag)
        version = raw.get("schema_version")
        if not isinstance(version, int) or isinstance(version, bool) or version < 1:
            raise EventDecodeError(f"{where}.schema_version", "expected an integer >= 1")
        current = cls.schema_version
        if version > current:
            raise EventDecodeError(
                f"{where}.schema_version",
                f"{self._kind} {tag!r} has schema version {version}, newer than the "
                f"{current} this reader knows; upgrade claudecluster to read it",
            )
        while version < current:
            upcaster = UPCASTERS.get((tag, version))
            if upcaster is None:
                raise EventDecodeError(
                    f"{where}.schema_version", f"no upcaster for {tag!r} from version {version}"
                )
            try:
                payload = upcaster(payload)
            except (TypeError, ValueError, KeyError) as exc:
                raise EventDecodeError(
                    f"{where}.payload", f"cannot upcast {tag!r} from version {version}: {exc}"
                ) from None
            version += 1
        upgraded = {**raw, "payload": payload, "schema_version": current}
        try:
            return msgspec.convert(upgraded, self._envelope_type)
        except msgspec.ValidationError as exc:
            raise error_from_msgspec(exc, prefix) from None


_EVENTS: Final = _EnvelopeCodec(EventEnvelope, EVENT_TYPES, "event")
_COMMANDS: Final = _EnvelopeCodec(CommandEnvelope, COMMAND_TYPES, "command")
_STORED_HEAD: Final = msgspec.json.Decoder(dict[str, Any])


def decode_event(data: bytes | bytearray | memoryview | str) -> EventEnvelope:
    """Decode an event envelope, upcasting older schema versions.

    Raises:
        EventDecodeError: the bytes are not a valid event envelope; ``field`` names where.
    """
    return _EVENTS.decode(data)


def decode_command(data: bytes | bytearray | memoryview | str) -> CommandEnvelope:
    """Decode a command envelope.

    Raises:
        EventDecodeError: the bytes are not a valid command envelope; ``field`` names where.
    """
    return _COMMANDS.decode(data)


def decode_stored_event(line: bytes | str) -> StoredEvent:
    """Decode one JSON Lines record ``{"seq", "subject", "envelope"}`` of a recorded log.

    Raises:
        EventDecodeError: the line is not a valid record; ``field`` names where.
    """
    with decode_guard("log record"):
        head = _STORED_HEAD.decode(line)
    seq = head.get("seq")
    subject = head.get("subject")
    if not isinstance(seq, int) or isinstance(seq, bool) or seq < 1:
        raise EventDecodeError("$.seq", "expected an integer >= 1")
    if not isinstance(subject, str) or not subject:
        raise EventDecodeError("$.subject", "expected a non-empty string")
    envelope = _EVENTS.convert(head.get("envelope"), "$.envelope")
    return StoredEvent(seq=seq, subject=subject, envelope=envelope)
