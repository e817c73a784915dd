"""What survives a crash: kill -9 the nats-server and start it again on the same store.

Our servers run with ``jetstream { sync_interval: always }``, so an acknowledged append is
on disk; docs/operations.md explains the choice.
"""

from __future__ import annotations

import signal
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import anyio
import pytest
from nats.aio.client import Client

from claudecluster.events import TaskProgress, TaskQueued, WorkerJoined
from claudecluster.runtime.connection import embedded_auth, open_jetstream_log
from claudecluster.runtime.embedded_nats import EmbeddedNats, open_embedded_nats, start_nats_server
from claudecluster.transport import read_all
from claudecluster.transport.jetstream import JetStreamEventLog
from tests.support import EnvelopeFactory

N = 300


@asynccontextmanager
async def worker_log(server: EmbeddedNats) -> AsyncIterator[tuple[Client, JetStreamEventLog]]:
    """The log as a worker sees it (the role that records progress and its joining), once
    the driver's identity has applied the topology."""
    assert server.credentials is not None
    async with open_jetstream_log(server.url, auth=embedded_auth(server.credentials, "driver")):
        pass
    auth = embedded_auth(server.credentials, "worker")
    async with open_jetstream_log(server.url, auth=auth, apply=False) as opened:
        yield opened


async def _kill_hard(process: anyio.abc.Process) -> None:
    process.send_signal(signal.SIGKILL)
    await process.wait()
    await process.aclose()


async def test_every_acknowledged_append_survives_kill_9_of_the_server(tmp_path: Path) -> None:
    store = tmp_path / "nats"
    make = EnvelopeFactory("durable")
    process, server = await start_nats_server(store)
    sent = []
    try:
        async with worker_log(server) as (_, log):
            for index in range(N):
                envelope = make(
                    TaskProgress(run_id="r1", task_id="t1", attempt=1, kind="text", text=str(index))
                )
                await log.append(envelope)  # returns only once the server acknowledged it
                sent.append(envelope)
            await _kill_hard(process)
    finally:
        if process.returncode is None:
            await _kill_hard(process)
    assert "sync_interval: always" in (store / "nats-server.conf").read_text()

    async with (
        open_embedded_nats(store, reuse=False) as restarted,
        worker_log(restarted) as (_, log),
    ):
        stored = await read_all(log)
    assert [s.envelope for s in stored] == sent


async def test_a_following_reader_resumes_after_the_server_restarts(tmp_path: Path) -> None:
    store = tmp_path / "nats"
    make = EnvelopeFactory("follow")
    process, server = await start_nats_server(store)
    seen: list[str] = []
    before_seen = anyio.Event()
    after_restart = anyio.Event()
    try:
        async with worker_log(server) as (_, log):

            async def follow() -> None:
                async with log.open_reader(follow=True) as events:
                    async for stored in events:
                        seen.append(stored.envelope.id)
                        before_seen.set()
                        if stored.envelope.id == "after":
                            after_restart.set()
                            return

            async with anyio.create_task_group() as group:
                group.start_soon(follow)
                await log.append(make(TaskQueued(run_id="r1", task_id="t1"), event_id="before"))
                with anyio.fail_after(30):
                    await before_seen.wait()  # the reader is live before the server dies
                await _kill_hard(process)
                process, _ = await start_nats_server(store, port=server.port)
                with anyio.fail_after(30):
                    while True:
                        try:
                            await log.append(make(WorkerJoined(worker_id="w1"), event_id="after"))
                            break
                        except Exception:
                            await anyio.sleep(0.1)
                    await after_restart.wait()
    finally:
        if process.returncode is None:
            process.send_signal(signal.SIGTERM)
            await process.wait()
            await process.aclose()
    assert seen == ["before", "after"]


@pytest.mark.parametrize("restarts", [2])
async def test_reopening_the_embedded_server_keeps_the_log(tmp_path: Path, restarts: int) -> None:
    store = tmp_path / "nats"
    make = EnvelopeFactory("reopen")
    for round_ in range(restarts):
        async with (
            open_embedded_nats(store, reuse=False) as server,
            worker_log(server) as (_, log),
        ):
            assert len(await read_all(log)) == round_
            await log.append(make(TaskQueued(run_id="r1", task_id=f"t{round_}")))
