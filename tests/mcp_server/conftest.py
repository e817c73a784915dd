"""Fixtures for the MCP server tests: a front door on a real nats-server.

``door`` serves a recorded history (the happy-path sample run) with no driver; ``live``
adds a driver and one local worker in this process, for tools that need the driver's
answer (submitting, following a run).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from mcp.types.version import LATEST_HANDSHAKE_VERSION

from claudecluster.runtime.connection import Connection, open_nats
from claudecluster.runtime.front_door import FrontDoor, open_front_door
from claudecluster.runtime.local_cluster import open_local_services
from claudecluster.settings import Settings
from tests.conftest import fresh_jetstream_log
from tests.fixtures.sample_runs import happy_path
from tests.support import make_repo


@dataclass
class Live:
    """A front door with a driver and a worker behind it, and the repository runs use."""

    door: FrontDoor
    repo: Path


@pytest.fixture
async def connection(nats_url: str) -> AsyncIterator[Connection]:
    """A connection to fresh, empty streams."""
    async with fresh_jetstream_log(nats_url) as log, open_nats(nats_url) as client:
        yield Connection(nats_url, client, log, embedded=False)


@pytest.fixture
async def door(connection: Connection) -> AsyncIterator[FrontDoor]:
    """A front door on a log holding the happy-path sample run (run ``sample-happy``)."""
    for envelope in happy_path().envelopes:
        await connection.log.append(envelope)
    async with open_front_door(connection, answer_timeout_s=5) as front:
        yield front


@pytest.fixture
async def live(connection: Connection, tmp_path: Path) -> AsyncIterator[Live]:
    """A front door on empty streams with a driver and one local worker running."""
    repo = make_repo(tmp_path / "repo", {"README.md": "hello\n"})
    settings = Settings.model_validate({"driver": {"work_dir": str(tmp_path / "driver")}})
    async with (
        open_front_door(connection, answer_timeout_s=30) as front,
        open_local_services(connection, settings, workers=1, project_dir=tmp_path),
    ):
        yield Live(front, repo)


def initialize() -> dict[str, Any]:
    """The JSON-RPC initialize request of a handshake-era client."""
    return {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "initialize",
        "params": {
            "protocolVersion": LATEST_HANDSHAKE_VERSION,
            "capabilities": {},
            "clientInfo": {"name": "test", "version": "1"},
        },
    }
