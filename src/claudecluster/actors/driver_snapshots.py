"""Snapshots of the driver's state: where a restarted driver starts instead of sequence 1.

A driver recovers by feeding the log to :func:`~claudecluster.actors.driver.decide`; a
cluster's log grows for months, so a restart that replays all of it grows with it. A
snapshot records the whole :class:`~claudecluster.actors.driver.DriverState` (the view,
every :class:`~claudecluster.actors.driver.RunBook` with its graph, the scope sequences,
timers, the pace) with the stream sequence it covers; a restarted driver takes the newest
usable one and feeds only the events after it. Feeding the same tail to a restored state
gives the state a full replay gives: the property test in
``tests/domain/test_driver_snapshots.py`` checks it at random cuts of random histories.

The state is derived data, so a snapshot is trusted only if it was written by code that
decides the same way: it carries a version made of

* the layout of the state (every field of the state, its run books and graphs, with its
  type), so a field added or changed makes older snapshots unusable without anyone
  remembering to bump anything;
* the cluster view's version (its layout and every event type's schema version);
* a digest of the decision code the caller passes in (the shell hashes the sources of the
  pure layers), so a snapshot is never restored into a driver whose rules changed;
* :data:`_STATE_REVISION`, bumped by hand for a change the rest cannot see.

It also carries the :class:`~claudecluster.actors.driver.DriverConfig` it was decided
under: the caps and the pace shape the state (a refused plan, the tokens), so a driver
started with another configuration rebuilds from the log rather than inherit them.

Pure: states in, bytes out, and back. Where snapshots are kept is
:mod:`claudecluster.transport.snapshots`; when they are written, ``runtime/driver.py``.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import typing
from typing import Any, Final

import msgspec

from claudecluster.actors.driver import DriverConfig, DriverState, RunBook
from claudecluster.domain.graph import TaskGraph
from claudecluster.projections.snapshots import view_from_msgpack, view_to_msgpack, view_version

__all__ = [
    "DRIVER_SNAPSHOT",
    "DriverSnapshot",
    "decode_driver_snapshot",
    "driver_state_version",
    "encode_driver_snapshot",
]

#: The snapshot's name in the store.
DRIVER_SNAPSHOT: Final = "driver_state"
#: Bumped by hand when the decisions change meaning without changing any layout or code
#: the version already covers (say, a dependency's behaviour).
_STATE_REVISION: Final = 2
#: Fields of DriverState that are not in the snapshot: the configuration is the restarted
#: driver's own (and must equal the snapshot's), the view is stored in its own layout.
_NOT_STORED: Final = frozenset({"config", "view"})


def _fields() -> dict[str, Any]:
    hints = typing.get_type_hints(DriverState)
    return {
        f.name: hints[f.name] for f in dataclasses.fields(DriverState) if f.name not in _NOT_STORED
    }


@functools.cache
def _state_type() -> type[msgspec.Struct]:
    """A Struct with every stored field of DriverState, built from the dataclass itself so
    a field added to the state is stored (and changes the version) without an edit here."""
    fields = [(name, tp) for name, tp in _fields().items()]
    return msgspec.defstruct("_StoredState", fields, kw_only=True)


class _Record(msgspec.Struct, frozen=True, kw_only=True):
    version: str
    seq: int
    #: the envelope id of the event at ``seq``: a reader checks the log still has it there
    last_id: str
    config: DriverConfig
    view: bytes
    state: bytes


class DriverSnapshot(msgspec.Struct, frozen=True, kw_only=True):
    """A usable snapshot: the state, and the sequence and id of the event it ends with."""

    state: DriverState
    seq: int
    last_id: str


def _layout(cls: type) -> str:
    hints = typing.get_type_hints(cls)
    return ";".join(f"{f.name}:{hints[f.name]!r}" for f in dataclasses.fields(cls))


@functools.cache
def driver_state_version(code: str) -> str:
    """The version a driver snapshot must carry to be restored by this code.

    Args:
        code: a digest of the decision code (the shell hashes the pure layers' sources).
    """
    layout = "|".join(_layout(cls) for cls in (DriverState, RunBook, TaskGraph, DriverConfig))
    digest = hashlib.sha256(f"{layout}|{view_version()}|{code}".encode()).hexdigest()[:16]
    return f"driver-{_STATE_REVISION}-{digest}"


def encode_driver_snapshot(state: DriverState, last_id: str, *, code: str) -> bytes:
    """A snapshot of ``state``, covering the log up to ``state.view.last_seq`` (msgpack).

    Args:
        state: the driver's state; read, not changed (encode it before the next decision).
        last_id: the envelope id of the event at ``state.view.last_seq``.
        code: the decision code's digest (see :func:`driver_state_version`).
    """
    stored = _state_type()(**{name: getattr(state, name) for name in _fields()})
    record = _Record(
        version=driver_state_version(code),
        seq=state.view.last_seq,
        last_id=last_id,
        config=state.config,
        view=view_to_msgpack(state.view),
        state=msgspec.msgpack.encode(stored),
    )
    return msgspec.msgpack.encode(record)


def decode_driver_snapshot(
    data: bytes, *, config: DriverConfig, code: str
) -> tuple[DriverSnapshot | None, str]:
    """The state a snapshot holds, or None and why it cannot be used.

    Never raises for bad data: a snapshot that does not decode, was written by another
    version, or under another configuration, is a reason to rebuild, not an error.

    Args:
        data: the snapshot's bytes.
        config: the configuration of the driver that restores it.
        code: the decision code's digest (see :func:`driver_state_version`).
    """
    try:
        record = msgspec.msgpack.decode(data, type=_Record)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        return None, f"the snapshot does not decode: {exc}"
    expected = driver_state_version(code)
    if record.version != expected:
        return None, f"the snapshot is of version {record.version}, this code reads {expected}"
    if record.config != config:
        return None, f"the snapshot was decided under {record.config}, this driver runs {config}"
    try:
        view = view_from_msgpack(record.view)
        stored = msgspec.msgpack.decode(record.state, type=_state_type())
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        return None, f"the snapshot's state does not decode: {exc}"
    if view.last_seq != record.seq:
        return None, f"the snapshot says it covers {record.seq} but its view is at {view.last_seq}"
    values = {name: getattr(stored, name) for name in _fields()}
    state = DriverState(config=config, view=view, **values)
    return DriverSnapshot(state=state, seq=record.seq, last_id=record.last_id), ""
