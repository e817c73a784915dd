"""Where a driver starts: the newest usable snapshot of its state, and the log after it.

The shell's half of :mod:`claudecluster.actors.driver_snapshots`: the snapshot comes from
the ``cc_snapshots`` bucket (name ``driver_state``); the first event read back after it
must be the one it ends with (same sequence, same envelope id), or the log was recreated
or trimmed past it and the state is rebuilt from the start. A snapshot is trusted only if
it was written by the same decision code: :func:`decision_code_digest` hashes the sources
of the pure layers (events, domain, projections, actors), so any change to how the driver
decides makes older snapshots unusable.
"""

from __future__ import annotations

import functools
import gc
import hashlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Final

import claudecluster
from claudecluster.actors.driver import DriverConfig, DriverState
from claudecluster.actors.driver_snapshots import (
    DRIVER_SNAPSHOT,
    decode_driver_snapshot,
    encode_driver_snapshot,
)
from claudecluster.errors import ClusterError
from claudecluster.events.envelope import StoredEvent
from claudecluster.observability.logging import get_logger
from claudecluster.transport.base import EventLog
from claudecluster.transport.snapshots import SnapshotStore

__all__ = ["decision_code_digest", "open_driver_state", "write_driver_snapshot"]

_log = get_logger(__name__)
_PURE_LAYERS = ("events", "domain", "projections", "actors")
#: A restored state this large is moved out of the cyclic collector's generations
_FREEZE_FROM_BYTES: Final = 8 * 2**20


@functools.cache
def decision_code_digest() -> str:
    """A digest of the decision code: every source file of the pure layers, and the
    package's version. Two drivers with the same digest decide the same way."""
    root = Path(claudecluster.__file__).parent
    digest = hashlib.sha256(claudecluster.__version__.encode())
    for layer in _PURE_LAYERS:
        for path in sorted((root / layer).rglob("*.py")):
            digest.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:16]


async def _snapshot_state(store: SnapshotStore, config: DriverConfig) -> tuple[DriverState, str]:
    try:
        data = await store.get(DRIVER_SNAPSHOT)
    except ClusterError as exc:
        _log.warning("driver snapshot not read; replaying the whole log", error=str(exc))
        return DriverState(config=config), ""
    if data is None:
        return DriverState(config=config), ""
    # Decoding makes millions of objects that all live on: the cyclic collector's passes
    # over them while they are made cost more than the decoding itself (measured: 2.7x).
    collecting = gc.isenabled()
    gc.disable()
    try:
        snapshot, why = decode_driver_snapshot(data, config=config, code=decision_code_digest())
        if snapshot is not None and len(data) >= _FREEZE_FROM_BYTES:
            # Then out of the collector's sight for good: otherwise the first full pass
            # after re-enabling it walks them all (0.5 s at a million events), and every
            # later one again. The view and books are trees (no cycles to collect).
            gc.freeze()
    finally:
        if collecting:
            gc.enable()
    if snapshot is None:
        _log.info("driver snapshot ignored; replaying the whole log", reason=why)
        return DriverState(config=config), ""
    # A snapshot written while the driver ran holds the keys of effects then in flight;
    # a restarted driver has none in flight (and decides again what they were for).
    snapshot.state.pending.clear()
    snapshot.state.starting.clear()
    return snapshot.state, snapshot.last_id


@asynccontextmanager
async def open_driver_state(
    log: EventLog, store: SnapshotStore, config: DriverConfig
) -> AsyncIterator[tuple[DriverState, AsyncIterator[StoredEvent]]]:
    """The driver's state of the newest usable snapshot, and the log's events after it.

    Without a usable snapshot the state is a fresh one and the events start at sequence 1.
    Either way the caller feeds every event to ``decide`` as it would in a full replay.

    Raises:
        EventStoreError: the log could not be read.
    """
    state, last_id = await _snapshot_state(store, config)
    seq = state.view.last_seq
    if seq:
        async with log.open_reader(from_seq=seq) as events:
            first = await anext(aiter(events), None)
            if first is not None and first.seq == seq and first.envelope.id == last_id:
                _log.info("driver state restored from a snapshot", seq=seq, runs=len(state.runs))
                yield state, events
                return
        _log.info("driver snapshot does not match the log; replaying the whole log", seq=seq)
        state = DriverState(config=config)
    async with log.open_reader() as events:
        yield state, events


async def write_driver_snapshot(store: SnapshotStore, state: DriverState, last_id: str) -> None:
    """Encode ``state`` now (it changes with the next decision) and store it.

    Raises:
        EventStoreError: the store could not be written.
    """
    data = encode_driver_snapshot(state, last_id, code=decision_code_digest())
    await store.put(DRIVER_SNAPSHOT, data)
