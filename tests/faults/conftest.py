"""Fixtures for the fault suite: a private nats-server per test and a repository."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import anyio.abc
import pytest

from claudecluster.runtime.embedded_nats import EmbeddedNats, start_nats_server
from tests.faults.rig import kill_9
from tests.support import make_repo


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    """The repository the runs work on."""
    return make_repo(tmp_path / "repo", {"README.md": "fault test\n"})


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[tuple[anyio.abc.Process, EmbeddedNats]]:
    """A private nats-server (sync_interval: always) on its own store; killed at the end.

    A test may kill it and start another on the same port and store; it must then stop
    that one itself.
    """
    process, nats = await start_nats_server(tmp_path / "nats")
    try:
        yield process, nats
    finally:
        with anyio.CancelScope(shield=True):
            await kill_9(process)
            await process.aclose()
