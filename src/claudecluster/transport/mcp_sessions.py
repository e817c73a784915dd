"""MCP sessions of the streamable-HTTP endpoint, kept in the JetStream KV bucket
``cc_mcp_sessions``.

The MCP SDK keeps its sessions in the memory of one process, so a restarted server (or a
second one behind a load balancer) would answer every open session with 404 and make
each client start over. We keep what a session is instead in KV: the protocol version it
negotiated, who opened it and the log level it asked for. Any endpoint can then serve any
request of any session, and nothing is lost when a process ends.

Keys are ``s.<session id>``; the id is a 32-character hex token we mint, so it is a valid
key token as it is. Entries expire with the bucket's TTL (a day after the last write).
(Claude Code's session transcripts, which workers resume from, are ``transcripts.py``.)
"""

from __future__ import annotations

from datetime import datetime
from typing import Final, Protocol

import msgspec
import nats.errors
import nats.js.errors
from nats.js import JetStreamContext
from nats.js.kv import KeyValue

from claudecluster.errors import EventStoreError

__all__ = [
    "MCP_SESSIONS_BUCKET",
    "JetStreamMcpSessionStore",
    "McpSession",
    "McpSessionStore",
    "MemoryMcpSessionStore",
]

MCP_SESSIONS_BUCKET: Final = "cc_mcp_sessions"
_SESSION_ID_CHARS: Final = frozenset("0123456789abcdef")


class McpSession(msgspec.Struct, frozen=True, kw_only=True):
    """One MCP session, as any endpoint needs it to serve the session's next request.

    Attributes:
        session_id: the ``Mcp-Session-Id`` we handed out (32 lower-case hex digits).
        protocol_version: the protocol revision the ``initialize`` handshake agreed.
        owner: who opened it (the bearer token's subject); "" on an endpoint without auth.
            Only the same owner may use the session.
        log_level: the lowest level of ``notifications/message`` the client wants.
        client_name: the client's own name from ``initialize``, for operators.
        created_at: when the session was opened.
    """

    session_id: str
    protocol_version: str
    owner: str = ""
    log_level: str = "info"
    client_name: str = ""
    created_at: datetime


class McpSessionStore(Protocol):
    """Where MCP sessions live. Every method raises ``EventStoreError`` on a store failure."""

    async def put(self, session: McpSession) -> None:
        """Store ``session``, replacing the record with the same id."""
        ...

    async def get(self, session_id: str) -> McpSession | None:
        """The session with this id, or None if there is none (never opened, expired, ended)."""
        ...

    async def delete(self, session_id: str) -> None:
        """End the session; ending one that does not exist is not an error."""
        ...


def _valid_id(session_id: str) -> bool:
    return len(session_id) == 32 and set(session_id) <= _SESSION_ID_CHARS


class MemoryMcpSessionStore:
    """Sessions in a dict: for a single process, and for tests of the endpoint's logic."""

    def __init__(self) -> None:
        self._sessions: dict[str, McpSession] = {}

    async def put(self, session: McpSession) -> None:
        """Store ``session``.

        Raises:
            ValueError: the session id is not 32 lower-case hex digits.
        """
        if not _valid_id(session.session_id):
            raise ValueError(f"MCP session id {session.session_id!r} is not 32 hex digits")
        self._sessions[session.session_id] = session

    async def get(self, session_id: str) -> McpSession | None:
        """The session, or None."""
        return self._sessions.get(session_id)

    async def delete(self, session_id: str) -> None:
        """Forget the session."""
        self._sessions.pop(session_id, None)


class JetStreamMcpSessionStore:
    """Sessions in the KV bucket ``cc_mcp_sessions`` (the topology creates it).

    Args:
        js: a JetStream context of a connected client, with the topology applied.
    """

    def __init__(self, js: JetStreamContext) -> None:
        self._js = js
        self._kv: KeyValue | None = None
        self._decoder = msgspec.json.Decoder(McpSession)

    async def _bucket(self) -> KeyValue:
        if self._kv is None:
            try:
                self._kv = await self._js.key_value(MCP_SESSIONS_BUCKET)
            except (nats.errors.Error, TimeoutError) as exc:
                raise EventStoreError(
                    f"cannot open KV bucket {MCP_SESSIONS_BUCKET}: {exc!r}"
                ) from exc
        return self._kv

    async def put(self, session: McpSession) -> None:
        """Store ``session``.

        Raises:
            EventStoreError: the bucket refused the write.
            ValueError: the session id is not 32 lower-case hex digits.
        """
        if not _valid_id(session.session_id):
            raise ValueError(f"MCP session id {session.session_id!r} is not 32 hex digits")
        kv = await self._bucket()
        try:
            await kv.put(f"s.{session.session_id}", msgspec.json.encode(session))
        except (nats.errors.Error, TimeoutError) as exc:
            raise EventStoreError(f"cannot store MCP session: {exc!r}") from exc

    async def get(self, session_id: str) -> McpSession | None:
        """The session, or None (an id that is not ours is simply unknown).

        Raises:
            EventStoreError: the bucket could not be read.
        """
        if not _valid_id(session_id):
            return None
        kv = await self._bucket()
        try:
            entry = await kv.get(f"s.{session_id}")
        except nats.js.errors.KeyNotFoundError:
            return None
        except (nats.errors.Error, TimeoutError) as exc:
            raise EventStoreError(f"cannot read MCP session: {exc!r}") from exc
        if not entry.value:
            return None
        return self._decoder.decode(entry.value)

    async def delete(self, session_id: str) -> None:
        """End the session.

        Raises:
            EventStoreError: the bucket refused the delete.
        """
        if not _valid_id(session_id):
            return
        kv = await self._bucket()
        try:
            await kv.delete(f"s.{session_id}")
        except (nats.errors.Error, TimeoutError) as exc:
            raise EventStoreError(f"cannot end MCP session: {exc!r}") from exc
