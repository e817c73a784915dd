"""The transcript mirror: an agent's session copied into the transcript store as it runs,
so another worker can resume the conversation if this one dies."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Final

import anyio
import anyio.abc

from claudecluster.events.work import WorkItem

if TYPE_CHECKING:
    # claude_agent_sdk loads the mcp package (about 30 MB and 0.3-0.8 s): an idle worker
    # should not carry it, nor every CLI command that imports this module. It is imported
    # when the first attempt runs.
    from claude_agent_sdk import SessionKey, SessionStore

__all__: list[str] = []  # the package's own helpers


_RESUME_NOTE: Final = (
    "Your previous run of this task was interrupted and has been moved to a fresh copy of "
    "the repository at the base commit: changes you made before are not in it. Check the "
    "workspace and redo anything missing, then finish the task.\n\n"
)
_MIRROR_INTERVAL_S: Final = 0.5


def _session_key(item: WorkItem, session_id: str) -> SessionKey:
    # The same key on every worker: the task, not the machine's path, names the project.
    return {"project_key": f"{item.run_id}/{item.task_id}", "session_id": session_id}


def _transcript_path(scratch: Path, workspace: Path, session_id: str) -> Path:
    """Where Claude Code keeps the session's transcript under our private config dir."""
    from claude_agent_sdk import project_key_for_directory  # heavy: see the imports

    slug = project_key_for_directory(str(workspace))
    return scratch / "claude-config" / "projects" / slug / f"{session_id}.jsonl"


class _TranscriptMirror:
    """Copies the transcript's new lines into the session store as the agent writes them,
    so another worker can resume the conversation if this one dies."""

    def __init__(self, store: SessionStore, key: SessionKey, path: Path, offset: int = 0) -> None:
        self._store = store
        self._key = key
        self._path = path
        self._offset = offset  # bytes already in the store (a restored transcript)

    async def follow(self) -> None:
        while True:
            await anyio.sleep(_MIRROR_INTERVAL_S)
            await self.sync()

    async def sync(self) -> None:
        # Only what was written since the last sync is read: reading the whole transcript
        # every half second made the work grow with the square of its length.
        try:
            async with await anyio.open_file(self._path, "rb") as handle:
                await handle.seek(self._offset)
                data = await handle.read()
        except FileNotFoundError:
            return
        end = data.rfind(b"\n") + 1  # only whole lines
        if end == 0:
            return
        entries = [json.loads(line) for line in data[:end].splitlines() if line]
        if entries:
            await self._store.append(self._key, entries)
        # Past these lines only once they are stored: the offset says what the store holds.
        self._offset += end
