"""The sandbox's unix socket: bytes both ways, half-closes, and cancellation at any moment.

Real sockets on a real path; the peer is a plain blocking client socket, as socat in the
sandbox is to the worker.
"""

from __future__ import annotations

import asyncio
import re
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import anyio.lowlevel
import pytest

from claudecluster.executors.unix_socket import UnixStream, serve_unix

#: Each test's whole exchange; a loaded 2-core machine finishes in well under a second.
EXCHANGE_WITHIN_S = 30.0

both = pytest.mark.parametrize("anyio_backend", ["asyncio", "trio"])


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "api.sock"


@pytest.fixture
def client_factory(path: Path) -> Iterator[Any]:
    made: list[socket.socket] = []

    def connect() -> socket.socket:
        client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        client.settimeout(EXCHANGE_WITHIN_S)
        client.connect(str(path))
        made.append(client)
        return client

    yield connect
    for client in made:
        client.close()


def _read_to_end(client: socket.socket) -> bytes:
    chunks = []
    while chunk := client.recv(65536):
        chunks.append(chunk)
    return b"".join(chunks)


async def _receive_to_end(stream: UnixStream) -> bytes:
    received = b""
    while True:
        try:
            received += await stream.receive()
        except anyio.EndOfStream:
            return received


@both
async def test_a_connection_carries_bytes_both_ways_through_a_half_close(
    path: Path, client_factory: Any
) -> None:
    async def shout(stream: UnixStream) -> None:
        await stream.send((await _receive_to_end(stream)).upper())

    with anyio.fail_after(EXCHANGE_WITHIN_S):
        async with anyio.create_task_group() as group:
            await group.start(serve_unix, path, shout)
            client = client_factory()
            client.sendall(b"hello through the sandbox")
            client.shutdown(socket.SHUT_WR)
            answer = await anyio.to_thread.run_sync(_read_to_end, client)
            group.cancel_scope.cancel()
    assert answer == b"HELLO THROUGH THE SANDBOX"


@both
async def test_more_than_a_socket_buffer_passes_whole_and_in_order(
    path: Path, client_factory: Any
) -> None:
    payload = bytes(range(256)) * 16384  # 4 MiB: many times the kernel's buffers

    async def echo(stream: UnixStream) -> None:
        while True:
            try:
                chunk = await stream.receive()
            except anyio.EndOfStream:
                return
            await stream.send(chunk)

    with anyio.fail_after(EXCHANGE_WITHIN_S):
        async with anyio.create_task_group() as group:
            await group.start(serve_unix, path, echo)
            client = client_factory()

            def send_all() -> None:
                client.sendall(payload)
                client.shutdown(socket.SHUT_WR)

            # the echo stalls on a full buffer unless both directions move at once
            async with anyio.create_task_group() as both_ways:
                both_ways.start_soon(anyio.to_thread.run_sync, send_all)
                answer = await anyio.to_thread.run_sync(_read_to_end, client)
            group.cancel_scope.cancel()
    assert answer == payload


async def test_cancelled_as_bytes_arrive_the_loop_reports_no_error(
    path: Path, client_factory: Any
) -> None:
    """The race AnyIO's own unix streams lose on asyncio (see the module under test).

    The handler waits to read; in one loop turn the bytes arrive and, queued before the
    loop looks at the socket, the server is cancelled: the readiness callback then runs
    on a future the cancellation already finished.
    """
    loop = asyncio.get_running_loop()
    reported: list[dict[str, Any]] = []
    loop.set_exception_handler(lambda _loop, context: reported.append(context))
    waiting = anyio.Event()

    async def read(stream: UnixStream) -> None:
        waiting.set()
        await stream.receive()

    with anyio.fail_after(EXCHANGE_WITHIN_S):
        async with anyio.create_task_group() as group:
            await group.start(serve_unix, path, read)
            client = client_factory()
            await waiting.wait()
            await anyio.wait_all_tasks_blocked()
            client.sendall(b"the agent's last bytes")
            loop.call_soon(group.cancel_scope.cancel)
        for _ in range(5):  # the turns in which a stray callback would run
            await anyio.lowlevel.checkpoint()
    assert reported == []


async def test_closing_a_stream_wakes_its_reader_with_closed_resource(
    path: Path, client_factory: Any
) -> None:
    seen: list[type[BaseException]] = []

    async def close_under_reader(stream: UnixStream) -> None:
        async def read() -> None:
            try:
                await stream.receive()
            except anyio.ClosedResourceError as exc:
                seen.append(type(exc))

        async with anyio.create_task_group() as readers:
            readers.start_soon(read)
            await anyio.wait_all_tasks_blocked()
            await stream.aclose()
        with pytest.raises(anyio.ClosedResourceError):
            await stream.send(b"after close")

    with anyio.fail_after(EXCHANGE_WITHIN_S):
        async with anyio.create_task_group() as group:
            await group.start(serve_unix, path, close_under_reader)
            client = client_factory()
            assert await anyio.to_thread.run_sync(_read_to_end, client) == b""
            group.cancel_scope.cancel()
    assert seen == [anyio.ClosedResourceError]


async def test_a_socket_left_by_a_killed_process_is_replaced(
    path: Path, client_factory: Any
) -> None:
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(path))
    stale.close()  # the path stays, as a killed worker leaves it

    async def greet(stream: UnixStream) -> None:
        await stream.send(b"fresh")

    with anyio.fail_after(EXCHANGE_WITHIN_S):
        async with anyio.create_task_group() as group:
            await group.start(serve_unix, path, greet)
            client = client_factory()
            assert await anyio.to_thread.run_sync(_read_to_end, client) == b"fresh"
            group.cancel_scope.cancel()


async def test_a_file_that_is_not_a_socket_is_not_removed(path: Path) -> None:
    await anyio.Path(path).write_text("someone's file")

    async def unused(stream: UnixStream) -> None:
        raise AssertionError("no connection can reach a server that did not start")

    expected = re.escape(f"cannot listen at {path}: Address already in use")
    with pytest.raises(OSError, match=expected):
        await serve_unix(path, unused)
    assert await anyio.Path(path).read_text() == "someone's file"
