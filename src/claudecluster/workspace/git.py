"""Workspaces without a shared filesystem: git bundles in, git bundles out.

The driver bundles the run's base commit; a worker clones a private workspace from that
bundle, lets the agent work on ``claudecluster/<run>/<task>``, commits the result, and
bundles only the new commits (with the base as prerequisite) plus a diffstat. The driver
fetches that bundle into its repository to merge. Only git and files travel; nothing
assumes the two sides share a disk.

Every git call has a timeout and a clear error naming the command and git's own message.

A workspace is a tree the agent controls, ``.git`` included where it runs unconfined. So
no git call of ours runs anything a repository's config names: each runs with a minimal
environment (no secrets for a hook to read), without user or system config, and with the
settings that start programs (``core.fsmonitor``, ``core.hooksPath``, the pager, askpass,
credential helpers, external diff) overridden on the command line, which git ranks above
any config file. What cannot be overridden by name (filters, diff and merge drivers
defined under a name the tree's ``.gitattributes`` picks, ``include.path``) is removed
before the worker touches a workspace the agent used: :func:`distrust_git_dir` writes a
fresh config and empties the hooks.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import anyio

from claudecluster.errors import WorkspaceError

__all__ = [
    "FileChange",
    "base_bundle",
    "commit_all",
    "commit_changes",
    "distrust_git_dir",
    "fetch_result",
    "git",
    "git_status",
    "SAFE_CONFIG",
    "open_workspace",
    "result_bundle",
    "task_branch",
]

_GIT_TIMEOUT_S: Final = 120.0
_AUTHOR: Final = ("ClaudeCluster", "claudecluster@localhost")


@dataclass(frozen=True, slots=True)
class FileChange:
    """One changed file: its path and the lines added and deleted (None for binary)."""

    path: str
    added: int | None
    deleted: int | None


def task_branch(run_id: str, task_id: str) -> str:
    """The branch a task's work is committed on."""
    return f"claudecluster/{run_id}/{task_id}"


#: Settings that make git start a program, fixed on the command line (which outranks
#: every config file, the repository's own included).
SAFE_CONFIG: Final = (
    "core.fsmonitor=false",
    f"core.hooksPath={os.devnull}",
    "core.pager=cat",
    "core.askPass=",
    "core.sshCommand=ssh",
    "core.gitProxy=",
    "credential.helper=",
    "diff.external=",
    "gc.auto=0",
    "protocol.ext.allow=never",
    "uploadpack.packObjectsHook=",
)

#: What ``git init`` writes, and all a workspace needs: no remote, filter, driver,
#: include or hook path the agent may have added survives.
_FRESH_CONFIG: Final = (
    "[core]\n\trepositoryformatversion = 0\n\tfilemode = true\n\tbare = false\n"
    "\tlogallrefupdates = true\n"
)


def _git_env() -> dict[str, str]:
    # A fixed identity, no user or system config, and only what git needs of our own
    # environment: a hook that somehow ran would find no credentials in it.
    passed = ("PATH", "LANG", "LC_ALL", "LC_CTYPE", "TZ")
    return {
        **{key: value for key, value in os.environ.items() if key in passed},
        "GIT_AUTHOR_NAME": _AUTHOR[0],
        "GIT_AUTHOR_EMAIL": _AUTHOR[1],
        "GIT_COMMITTER_NAME": _AUTHOR[0],
        "GIT_COMMITTER_EMAIL": _AUTHOR[1],
        "GIT_TERMINAL_PROMPT": "0",
        "GIT_CONFIG_GLOBAL": os.devnull,
        "GIT_CONFIG_NOSYSTEM": "1",
    }


def _config_flags() -> list[str]:
    flags: list[str] = []
    for setting in SAFE_CONFIG:
        flags += ["-c", setting]
    return flags


def distrust_git_dir(workspace: Path) -> None:
    """Reset what an agent could have planted in ``workspace``'s git directory.

    A fresh config (dropping filters, diff and merge drivers, includes, aliases, remotes),
    no hooks, no ``info/attributes``, no per-worktree config and no alternates; the
    ``info/exclude`` list the worker wrote stays.

    Raises:
        WorkspaceError: ``.git`` is not a plain directory (a symlink or a ``gitdir:`` file
            the agent put there to lead git elsewhere).
    """
    git_dir = workspace / ".git"
    if git_dir.is_symlink() or not git_dir.is_dir():
        raise WorkspaceError(f"{git_dir} is not a plain git directory: it was replaced")
    (git_dir / "config").unlink(missing_ok=True)  # a symlink is removed, not followed
    (git_dir / "config").write_text(_FRESH_CONFIG, encoding="utf-8")
    for planted in ("config.worktree", "info/attributes", "objects/info/alternates", "commondir"):
        (git_dir / planted).unlink(missing_ok=True)
    hooks = git_dir / "hooks"
    if hooks.is_symlink() or hooks.is_file():
        hooks.unlink()
    elif hooks.is_dir():
        shutil.rmtree(hooks)


async def git_status(
    repo: Path, *args: str, time_limit: float = _GIT_TIMEOUT_S
) -> tuple[int, str, str]:
    """Run one git command in ``repo``; return its exit code, stdout and stderr.

    For commands whose failure is an answer (a merge that conflicts), not an error.

    Raises:
        WorkspaceError: an argument holds a NUL character (no process can take it), or git
            took longer than ``time_limit`` seconds.
    """
    command = ["git", *_config_flags(), "-C", str(repo), *args]
    if any("\x00" in part for part in command):
        raise WorkspaceError(f"git {' '.join(args[:2])}: an argument contains a NUL character")
    try:
        with anyio.fail_after(time_limit):
            done = await anyio.run_process(
                command, env=_git_env(), check=False, stdin=subprocess.DEVNULL
            )
    except TimeoutError:
        raise WorkspaceError(
            f"git {' '.join(args[:2])} took longer than {time_limit:.0f}s"
        ) from None
    return (
        done.returncode,
        done.stdout.decode(errors="replace"),
        done.stderr.decode(errors="replace"),
    )


async def git(repo: Path, *args: str, time_limit: float = _GIT_TIMEOUT_S) -> str:
    """Run one git command in ``repo`` and return its standard output.

    Raises:
        WorkspaceError: git failed or took longer than ``time_limit`` seconds.
    """
    code, out, err = await git_status(repo, *args, time_limit=time_limit)
    if code != 0:
        message = err.strip().splitlines()
        detail = message[-1] if message else f"exit code {code}"
        raise WorkspaceError(f"git {' '.join(args[:2])} failed in {repo}: {detail}")
    return out


async def base_bundle(repo: Path, ref: str, run_id: str, out: Path) -> str:
    """Bundle the commit ``ref`` names (with its history) for workers; returns its sha.

    The user's branches are not touched: the bundle's ref lives under
    ``refs/claudecluster/base/<run>``.

    Raises:
        WorkspaceError: ``ref`` names no commit, or git failed.
    """
    commit = (await git(repo, "rev-parse", "--verify", f"{ref}^{{commit}}")).strip()
    base_ref = f"refs/claudecluster/base/{run_id}"
    await git(repo, "update-ref", base_ref, commit)
    await git(repo, "bundle", "create", str(out), base_ref)
    return commit


async def open_workspace(bundle: Path, base_commit: str, branch: str, where: Path) -> Path:
    """Clone a private workspace from the base bundle, on a new branch at the base commit.

    Raises:
        WorkspaceError: the bundle is unusable or lacks the base commit.
    """
    await anyio.Path(where).mkdir(parents=True, exist_ok=True)
    await git(where, "init", "--quiet")
    # The bundle's ref lives outside refs/heads, which a plain clone would not fetch.
    await git(where, "fetch", "--quiet", str(bundle), "+refs/claudecluster/*:refs/claudecluster/*")
    await git(where, "checkout", "--quiet", "-b", branch, base_commit)
    return where


async def commit_all(workspace: Path, message: str) -> str | None:
    """Commit every change in the workspace; returns the new commit, or None if unchanged.

    The workspace's git directory is reset first (:func:`distrust_git_dir`): the agent
    had it, and ``git add`` would run a filter its config defines.

    Raises:
        WorkspaceError: git failed, or ``.git`` was replaced.
    """
    await anyio.to_thread.run_sync(distrust_git_dir, workspace)
    await git(workspace, "add", "--all")
    if not (await git(workspace, "status", "--porcelain")).strip():
        return None
    await git(workspace, "commit", "--quiet", "--no-verify", "-m", message)
    return (await git(workspace, "rev-parse", "HEAD")).strip()


async def result_bundle(
    workspace: Path, base_commit: str, branch: str, out: Path
) -> list[FileChange]:
    """Bundle the branch's commits after the base, and return what they changed.

    Raises:
        WorkspaceError: the branch has no commits after the base, or git failed.
    """
    await git(workspace, "bundle", "create", str(out), f"{base_commit}..{branch}")
    numstat = await git(workspace, "diff", "--numstat", base_commit, branch)
    return _parse_numstat(numstat.splitlines())


async def commit_changes(repo: Path, commit: str) -> list[FileChange]:
    """What one commit changed against its first parent.

    Raises:
        WorkspaceError: git failed (an unknown commit, say).
    """
    numstat = await git(repo, "diff", "--numstat", f"{commit}^", commit)
    return _parse_numstat(numstat.splitlines())


def _parse_numstat(lines: Sequence[str]) -> list[FileChange]:
    changes = []
    for line in lines:
        parts = line.split("\t", 2)
        if len(parts) != 3:
            continue
        added, deleted, path = parts
        changes.append(
            FileChange(
                path=path,
                added=int(added) if added.isdigit() else None,
                deleted=int(deleted) if deleted.isdigit() else None,
            )
        )
    return changes


async def fetch_result(repo: Path, bundle: Path, branch: str, dest_ref: str | None = None) -> str:
    """Fetch a task's result bundle into ``repo``; returns its head commit.

    The branch lands as ``dest_ref`` (default ``refs/heads/<branch>``). The driver keeps
    results outside ``refs/heads``: a task branch ``claudecluster/<run>/<task>`` cannot
    live next to the integration branch ``claudecluster/<run>`` in one repository.

    Raises:
        WorkspaceError: the bundle does not apply (its base is missing) or git failed.
    """
    target = dest_ref or f"refs/heads/{branch}"
    await git(repo, "bundle", "verify", str(bundle))
    await git(repo, "fetch", "--quiet", str(bundle), f"+{branch}:{target}")
    return (await git(repo, "rev-parse", target)).strip()
