"""Getting a run's result out of the repository: ``run --push REMOTE``.

The integration branch lives in the repository the run worked on; a user who wants it on
a shared remote would otherwise push it by hand. Pushing is this command's own effect,
after the run ended with every task merged: a run that failed or left tasks out is not
pushed, so what reaches the remote is always a finished result.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Final

from claudecluster.errors import ConfigError
from claudecluster.workspace.git import git_status

__all__ = ["check_remote", "push_branch", "refuse_git_url"]

#: A remote given as a URL or scp-like address rather than a configured name.
_ADDRESS: Final = re.compile(r"^(?:[A-Za-z][A-Za-z0-9+.-]*://|[^@/\s]+@[^:/\s]+:|/)")
#: What a ``--repo`` URL looks like once a Path has folded its ``//`` into ``/``.
_FOLDED_URL: Final = re.compile(r"^(?:[A-Za-z][A-Za-z0-9+.-]*:/|[^@/\s]+@[^:/\s]+:)")
_PUSH_TIMEOUT_S: Final = 300.0


def refuse_git_url(given: Path) -> None:
    """Refuse a ``--repo`` that is a git URL, before it is taken for a relative path.

    Raises:
        ConfigError: ``given`` is a URL or scp-like git address.
    """
    if not given.exists() and _FOLDED_URL.match(str(given)):
        raise ConfigError(
            "repo", "flag --repo",
            "a git URL is not cloned: clone it, run in the clone, and give --push origin "
            "to push the result back",
        )  # fmt: skip


async def check_remote(repo: Path, remote: str) -> None:
    """Fail before the run starts if ``remote`` is neither a remote of ``repo`` nor an address.

    Raises:
        ConfigError: ``repo`` has no remote of that name.
    """
    if _ADDRESS.match(remote):
        return
    code, _, _ = await git_status(repo, "remote", "get-url", remote)
    if code != 0:
        raise ConfigError(
            "push", "flag --push",
            f"{repo} has no remote {remote!r} (add it with 'git remote add {remote} URL')",
        )  # fmt: skip


async def push_branch(repo: Path, remote: str, branch: str) -> str | None:
    """Push ``branch`` of ``repo`` to the same name on ``remote``; None, or why it failed.

    A failed push is an answer for the user (a rejected non-fast-forward, a remote that
    refuses), not a crash: the result is still on the local branch.
    """
    ref = f"refs/heads/{branch}"
    code, _, err = await git_status(
        repo, "push", "--porcelain", remote, f"{ref}:{ref}", time_limit=_PUSH_TIMEOUT_S
    )
    if code == 0:
        return None
    lines = [line for line in err.strip().splitlines() if line.strip()]
    return lines[-1] if lines else f"git push exited with {code}"
