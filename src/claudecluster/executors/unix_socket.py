"""A unix-socket server whose connections survive being cancelled mid-read.

The sandbox's only way out is a unix socket bound into it; :mod:`.confined` pipes each
connection on it to one TCP destination. AnyIO's own unix sockets on asyncio wait for
readiness by registering ``future.set_result`` as the loop's reader and removing it in a
done-callback, one loop turn later. When the socket turns readable in the same turn as
the waiting task is cancelled (an attempt ending as the agent's last bytes arrive, which
is how every attempt ends), the loop calls ``set_result`` on the cancelled future and
reports ``InvalidStateError`` (seen on AnyIO 4.16; its source still reads so). Nothing
is lost, but the loop's error report is noise in an operator's log and fails a test run
under AnyIO's runner.

These streams wait with :func:`anyio.wait_readable` and :func:`anyio.wait_writable`
instead, which resolve their future only while it is pending, and do the socket calls
themselves: a non-blocking ``recv``/``send`` retried after each wait.
"""

from __future__ import annotations

import os
import socket
import stat
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Final

import anyio
import anyio.abc
import anyio.lowlevel

__all__ = ["UnixStream", "serve_unix"]

_CHUNK: Final = 65536


class UnixStream(anyio.abc.ByteStream):
    """One accepted connection: bytes in, bytes out, and a half-close.

    Raises (from its methods): :class:`anyio.EndOfStream` once the peer closed its side,
    :class:`anyio.ClosedResourceError` after :meth:`aclose`, and
    :class:`anyio.BrokenResourceError` for any other socket error.
    """

    def __init__(self, sock: socket.socket) -> None:
        sock.setblocking(False)
        self._sock = sock
        self._closed = False

    async def receive(self, max_bytes: int = _CHUNK) -> bytes:
        """The next bytes the peer sent, at most ``max_bytes``."""
        await anyio.lowlevel.checkpoint()
        while True:
            if self._closed:
                raise anyio.ClosedResourceError
            try:
                data = self._sock.recv(max_bytes)
            except BlockingIOError:
                await anyio.wait_readable(self._sock)
                continue
            except OSError as exc:
                raise anyio.BrokenResourceError from exc
            if not data:
                raise anyio.EndOfStream
            return data

    async def send(self, item: bytes) -> None:
        """Send all of ``item``, waiting while the peer's buffer is full."""
        await anyio.lowlevel.checkpoint()
        view = memoryview(item)
        while view:
            if self._closed:
                raise anyio.ClosedResourceError
            try:
                sent = self._sock.send(view)
            except BlockingIOError:
                await anyio.wait_writable(self._sock)
                continue
            except OSError as exc:
                raise anyio.BrokenResourceError from exc
            view = view[sent:]

    async def send_eof(self) -> None:
        """Close the sending side: the peer reads an end of stream, and may still answer."""
        if self._closed:
            raise anyio.ClosedResourceError
        try:
            self._sock.shutdown(socket.SHUT_WR)
        except OSError as exc:
            raise anyio.BrokenResourceError from exc

    async def aclose(self) -> None:
        """Close the connection; a task waiting on it wakes with ClosedResourceError."""
        if not self._closed:
            self._closed = True
            anyio.notify_closing(self._sock)
            self._sock.close()
        await anyio.lowlevel.checkpoint()


def _listening_socket(path: Path) -> socket.socket:
    """A non-blocking socket listening at ``path``, replacing a socket file left there."""
    try:
        if stat.S_ISSOCK(os.stat(path).st_mode):
            path.unlink()
    except FileNotFoundError:
        pass
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        listener.setblocking(False)
        listener.bind(str(path))
        listener.listen()
    except OSError as exc:
        listener.close()
        raise OSError(exc.errno, f"cannot listen at {path}: {exc.strerror}") from exc
    return listener


async def serve_unix(
    path: Path,
    handler: Callable[[UnixStream], Awaitable[None]],
    *,
    task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
) -> None:
    """Listen on ``path`` and run ``handler`` on each connection, until cancelled.

    A socket left at ``path`` (by an earlier, killed process) is replaced; anything else
    there is an error. Each handler runs in its own task and owns its stream; they are
    all cancelled with the server. Started with ``task_group.start``, this returns to its
    caller once the socket accepts connections.

    Raises:
        OSError: the socket could not be bound at ``path``, or accepting failed.
    """

    async def run(connection: socket.socket) -> None:
        async with UnixStream(connection) as stream:
            await handler(stream)

    listener = _listening_socket(path)
    try:
        async with anyio.create_task_group() as group:
            task_status.started()
            while True:
                try:
                    connection, _ = listener.accept()
                except (BlockingIOError, ConnectionAbortedError):
                    # nothing waiting, or a client gone before it was accepted
                    await anyio.wait_readable(listener)
                    continue
                group.start_soon(run, connection)
    finally:
        listener.close()
