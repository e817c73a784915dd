"""Claude Code transcripts on JetStream: a claude-agent-sdk ``SessionStore``.

The SDK mirrors a running agent's transcript into this store as it grows; a worker that
takes over a task after a crash loads it back and resumes the same session. Layout:

* stream ``CC_SESSIONS``: one message per appended batch (a JSON list of entries) on
  ``cc.session.<project>.<session>.<subpath or _>``; a transcript grows by appends, which
  is exactly what a stream is, and loading is one ordered read of one subject.
* KV bucket ``cc_sessions``: ``idx.<project>.<session>`` (the session's mtime, for
  ``list_sessions``), ``sub.<project>.<session>.<subpath>`` (for ``list_subkeys``) and
  ``summ.<project>.<session>`` (the SDK's folded summary, updated by compare-and-set).

Project keys, session ids and subpaths are free text, so each becomes one base64url token
(no padding) in subjects and keys. Entries with a ``uuid`` are idempotent: a batch the SDK
retries after a timeout is stored twice but loaded once.

The seam is the SDK's own ``SessionStore`` protocol; :class:`MemoryTranscriptStore` is the
in-memory twin of :class:`JetStreamTranscriptStore` (redaction and idempotent loads included),
and both pass the SDK's conformance suite and ours (``tests/transport/test_transcripts.py``).
(The MCP endpoint's own sessions, which hold no transcript, are ``mcp_sessions.py``.)
"""

from __future__ import annotations

import base64
import json
import time
from typing import TYPE_CHECKING, Final, cast

import nats.errors
import nats.js.errors
from nats.js import JetStreamContext
from nats.js.kv import KeyValue

from claudecluster.errors import EventStoreError
from claudecluster.observability.logging import get_logger
from claudecluster.observability.redaction import Redactor
from claudecluster.transport.failures import store_failure
from claudecluster.transport.ordered import last_sequence, open_ordered

if TYPE_CHECKING:
    # Importing claude_agent_sdk loads the mcp package: about 30 MB and 0.3-0.8 s. Workers,
    # the driver and every CLI command import this module and most never touch a session,
    # so the SDK is imported where a summary is folded, not here.
    from claude_agent_sdk import (
        InMemorySessionStore,
        SessionKey,
        SessionListSubkeysKey,
        SessionStoreEntry,
        SessionStoreListEntry,
        SessionSummaryEntry,
    )

__all__ = [
    "SESSIONS_BUCKET",
    "SESSIONS_STREAM",
    "JetStreamTranscriptStore",
    "MemoryTranscriptStore",
]

SESSIONS_STREAM: Final = "CC_SESSIONS"
SESSIONS_BUCKET: Final = "cc_sessions"
_MAIN: Final = "_"
_CAS_ATTEMPTS: Final = 20


_log = get_logger(__name__)


def _token(text: str) -> str:
    return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=") or "-"


def _untoken(token: str) -> str:
    return base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode()


def _now_ms() -> int:
    return int(time.time() * 1000)


def _without_retried(batches: list[SessionStoreEntry]) -> list[SessionStoreEntry]:
    """Entries in order, each ``uuid`` kept once (the first copy): a retried batch."""
    entries: list[SessionStoreEntry] = []
    seen: set[str] = set()
    for entry in batches:
        uuid = entry.get("uuid") if isinstance(entry, dict) else None
        if isinstance(uuid, str):
            if uuid in seen:
                continue
            seen.add(uuid)
        entries.append(entry)
    return entries


class JetStreamTranscriptStore:
    """A ``SessionStore`` on JetStream, every optional method included.

    Args:
        js: a JetStream context of a connected client, with the topology applied.
        redactor: secrets to strip from every transcript entry and summary before it is
            stored (an agent may echo its API key; the bucket keeps transcripts 30 days).
    """

    def __init__(self, js: JetStreamContext, *, redactor: Redactor | None = None) -> None:
        self._js = js
        self._kv: KeyValue | None = None
        self._redactor = redactor or Redactor()

    async def _bucket(self) -> KeyValue:
        if self._kv is None:
            self._kv = await self._js.key_value(SESSIONS_BUCKET)
        return self._kv

    @staticmethod
    def _subject(key: SessionKey, subpath: str | None = None) -> str:
        sub = subpath if subpath is not None else key.get("subpath")
        tail = _token(sub) if sub else _MAIN
        return f"cc.session.{_token(key['project_key'])}.{_token(key['session_id'])}.{tail}"

    async def append(self, key: SessionKey, entries: list[SessionStoreEntry]) -> None:
        """Store one batch after the previous ones.

        Raises:
            EventStoreError: the server refused the batch.
        """
        if not entries:
            return
        try:
            await self._js.publish(
                self._subject(key),
                self._redactor.data(json.dumps(entries).encode()),
                stream=SESSIONS_STREAM,
            )
            kv = await self._bucket()
            project, session = _token(key["project_key"]), _token(key["session_id"])
            now = _now_ms()
            subpath = key.get("subpath")
            if subpath:
                await kv.put(f"sub.{project}.{session}.{_token(subpath)}", b"1")
                return
            await kv.put(f"idx.{project}.{session}", json.dumps({"mtime": now}).encode())
            await self._fold_summary(kv, key, entries, now)
        except (nats.errors.Error, TimeoutError) as exc:
            raise store_failure(f"cannot store session batch: {exc!r}", exc) from exc

    async def _fold_summary(
        self, kv: KeyValue, key: SessionKey, entries: list[SessionStoreEntry], now: int
    ) -> None:
        name = f"summ.{_token(key['project_key'])}.{_token(key['session_id'])}"
        for _ in range(_CAS_ATTEMPTS):
            try:
                entry = await kv.get(name)
            except nats.js.errors.KeyNotFoundError:
                entry = None
            previous = (
                cast("SessionSummaryEntry", json.loads(entry.value))
                if entry is not None and entry.value
                else None
            )
            from claude_agent_sdk import fold_session_summary  # heavy: see the imports

            folded = dict(fold_session_summary(previous, key, entries))
            folded["mtime"] = now
            value = self._redactor.data(json.dumps(folded).encode())
            try:
                if entry is None:
                    await kv.create(name, value)
                else:
                    await kv.update(name, value, last=entry.revision)
            except (nats.js.errors.KeyWrongLastSequenceError, nats.js.errors.APIError):
                continue  # another append folded first: read its summary and fold again
            return
        raise EventStoreError(f"session summary {name} kept changing under concurrent appends")

    async def load(self, key: SessionKey) -> list[SessionStoreEntry] | None:
        """Every entry of the transcript in append order, or None if it was never written.

        Raises:
            EventStoreError: the stream could not be read.
        """
        subject = self._subject(key)
        if await last_sequence(self._js, SESSIONS_STREAM, subject) == 0:
            return None
        entries: list[SessionStoreEntry] = []
        async with open_ordered(self._js, SESSIONS_STREAM, subject) as messages:
            async for msg in messages:
                try:
                    batch = json.loads(msg.data)
                except (ValueError, RecursionError) as exc:
                    # Not a batch we wrote: skipped, so one bad message cannot make every
                    # resume of this session fail (the transcript is otherwise intact).
                    _log.warning("undecodable transcript batch skipped", subject=msg.subject,
                                 error=repr(exc)[:300])  # fmt: skip
                    continue
                if not isinstance(batch, list):
                    _log.warning("transcript batch is not a list; skipped", subject=msg.subject)
                    continue
                entries.extend(batch)
        return _without_retried(entries)

    async def _keys(self, prefix: str) -> list[str]:
        kv = await self._bucket()
        try:
            keys = await kv.keys(filters=[prefix])
        except nats.js.errors.NoKeysError:
            return []
        return [k for k in keys if k.startswith(prefix)]

    async def list_sessions(self, project_key: str) -> list[SessionStoreListEntry]:
        """Sessions of a project with their last-append time (epoch ms)."""
        kv = await self._bucket()
        prefix = f"idx.{_token(project_key)}."
        listed: list[SessionStoreListEntry] = []
        for name in await self._keys(prefix):
            try:
                entry = await kv.get(name)
            except nats.js.errors.KeyNotFoundError:
                continue
            mtime = int(json.loads(entry.value or b"{}").get("mtime", 0))
            listed.append({"session_id": _untoken(name[len(prefix) :]), "mtime": mtime})
        return listed

    async def list_session_summaries(self, project_key: str) -> list[SessionSummaryEntry]:
        """The folded summaries of a project's sessions, as the SDK left them."""
        kv = await self._bucket()
        summaries: list[SessionSummaryEntry] = []
        for name in await self._keys(f"summ.{_token(project_key)}."):
            try:
                entry = await kv.get(name)
            except nats.js.errors.KeyNotFoundError:
                continue
            if entry.value:
                summaries.append(cast("SessionSummaryEntry", json.loads(entry.value)))
        return summaries

    async def list_subkeys(self, key: SessionListSubkeysKey) -> list[str]:
        """Subpaths (subagent transcripts) stored under a session, sorted."""
        prefix = f"sub.{_token(key['project_key'])}.{_token(key['session_id'])}."
        return sorted(_untoken(name[len(prefix) :]) for name in await self._keys(prefix))

    async def delete(self, key: SessionKey) -> None:
        """Delete a transcript; deleting a main transcript deletes its subkeys too.

        Raises:
            EventStoreError: the server refused.
        """
        project, session = _token(key["project_key"]), _token(key["session_id"])
        kv = await self._bucket()
        subpath = key.get("subpath")
        try:
            if subpath:
                await self._js.purge_stream(SESSIONS_STREAM, subject=self._subject(key))
                await kv.purge(f"sub.{project}.{session}.{_token(subpath)}")
                return
            await self._js.purge_stream(
                SESSIONS_STREAM, subject=f"cc.session.{project}.{session}.>"
            )
            for name in await self._keys(f"sub.{project}.{session}."):
                await kv.purge(name)
            for name in (f"idx.{project}.{session}", f"summ.{project}.{session}"):
                await kv.purge(name)
        except (nats.errors.Error, TimeoutError) as exc:
            raise store_failure(f"cannot delete session: {exc!r}", exc) from exc


class MemoryTranscriptStore:
    """Transcripts in memory: the twin of :class:`JetStreamTranscriptStore`.

    The SDK's ``InMemorySessionStore`` keeps the entries and folds the summaries; this adds
    what ours does on top: secrets redacted before anything is kept, empty batches ignored,
    and a retried batch loaded once.

    Args:
        redactor: secrets to strip from every entry before it is kept.
    """

    def __init__(self, *, redactor: Redactor | None = None) -> None:
        from claude_agent_sdk import InMemorySessionStore  # heavy: see the imports

        self._inner: InMemorySessionStore = InMemorySessionStore()
        self._redactor = redactor or Redactor()

    async def append(self, key: SessionKey, entries: list[SessionStoreEntry]) -> None:
        """Keep one batch, redacted, after the previous ones."""
        if not entries:
            return
        redacted = cast(
            "list[SessionStoreEntry]",
            json.loads(self._redactor.data(json.dumps(entries).encode())),
        )
        await self._inner.append(key, redacted)

    async def load(self, key: SessionKey) -> list[SessionStoreEntry] | None:
        """Every entry in append order (a retried batch once), or None if never written."""
        loaded = await self._inner.load(key)
        return None if loaded is None else _without_retried(loaded)

    async def list_sessions(self, project_key: str) -> list[SessionStoreListEntry]:
        """Sessions of a project with their last-append time (epoch ms)."""
        return await self._inner.list_sessions(project_key)

    async def list_session_summaries(self, project_key: str) -> list[SessionSummaryEntry]:
        """The folded summaries of a project's sessions."""
        return await self._inner.list_session_summaries(project_key)

    async def list_subkeys(self, key: SessionListSubkeysKey) -> list[str]:
        """Subpaths stored under a session, sorted."""
        return sorted(await self._inner.list_subkeys(key))

    async def delete(self, key: SessionKey) -> None:
        """Delete a transcript; deleting a main transcript deletes its subkeys too."""
        await self._inner.delete(key)
