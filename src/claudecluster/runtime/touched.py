"""Report the files a running attempt has touched, so the driver can predict collisions.

While the agent works, the worker looks at its workspace every few seconds and reports
the whole set of changed paths (``TaskFilesTouched``) whenever it differs from the last
report. Looking costs two cheap git commands that read the index and the tree; a
workspace that did not change costs no event.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Final

import anyio

from claudecluster.errors import WorkspaceError
from claudecluster.observability.logging import get_logger
from claudecluster.workspace.git import git

__all__ = ["TOUCHED_EVERY_S", "touched_files", "watch_touched"]

#: Seconds between two looks at a running attempt's workspace.
TOUCHED_EVERY_S: Final = 3.0

_log = get_logger(__name__)


async def touched_files(workspace: Path, base_commit: str) -> frozenset[str]:
    """The paths changed in ``workspace`` since ``base_commit``: committed, staged,
    unstaged or untracked (ignored files excluded).

    Raises:
        WorkspaceError: git failed in the workspace.
    """
    changed = await git(workspace, "diff", "--name-only", "-z", base_commit, "--")
    untracked = await git(workspace, "ls-files", "--others", "--exclude-standard", "-z")
    return frozenset(p for p in (changed + untracked).split("\x00") if p)


async def watch_touched(
    workspace: Path,
    base_commit: str,
    report: Callable[[tuple[str, ...]], Awaitable[None]],
    *,
    every_s: float = TOUCHED_EVERY_S,
) -> None:
    """Report the touched files each time the set changed, until cancelled.

    A failed look is logged and tried again at the next one: a prediction is advice, and
    the attempt must not stop for it.
    """
    last: frozenset[str] = frozenset()
    while True:
        await anyio.sleep(every_s)
        try:
            files = await touched_files(workspace, base_commit)
        except WorkspaceError as error:
            _log.warning("touched files not read", workspace=str(workspace), error=str(error))
            continue
        if files != last:
            await report(tuple(sorted(files)))
            last = files
