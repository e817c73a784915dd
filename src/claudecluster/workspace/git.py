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
import re
import shutil
import subprocess
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import anyio

from claudecluster.errors import UnsupportedRepositoryError, WorkspaceError

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
    "object_trouble",
    "open_workspace",
    "present_commits",
    "refuse_unsupported",
    "repository_key",
    "resolve_commit",
    "result_bundle",
    "segment_bundle",
    "snapshot_worktree",
    "uncommitted_paths",
]

_GIT_TIMEOUT_S: Final = 120.0
_AUTHOR: Final = ("ClaudeCluster", "claudecluster@localhost")


@dataclass(frozen=True, slots=True)
class FileChange:
    """One changed file: its path and the lines added and deleted (None for binary)."""

    path: str
    added: int | None
    deleted: int | None


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


def distrust_git_dir(workspace: Path, objects: Path | None = None) -> None:
    """Reset what an agent could have planted in ``workspace``'s git directory.

    A fresh config (dropping filters, diff and merge drivers, includes, aliases, remotes),
    no hooks, no ``info/attributes``, no per-worktree config, and no alternates but
    ``objects`` (the repository cache's object directory a slot's workspace borrows, as
    the worker knows it, never as the file says); the ``info/exclude`` list the worker
    wrote stays.

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
    if objects is not None:
        (git_dir / "objects" / "info").mkdir(parents=True, exist_ok=True)
        (git_dir / "objects" / "info" / "alternates").write_text(
            f"{objects.resolve()}\n", encoding="utf-8"
        )
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


async def resolve_commit(repo: Path, ref: str) -> str:
    """The commit ``ref`` names in ``repo``.

    Raises:
        WorkspaceError: ``ref`` names no commit.
    """
    return (await git(repo, "rev-parse", "--verify", f"{ref}^{{commit}}")).strip()


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


_OBJECT_TROUBLE: Final = re.compile(
    r"(unable to read|missing \w+ object|corrupt|bad object|unable to unpack|"
    r"invalid object|did not receive expected object)[^0-9a-f]*([0-9a-f]{40,64})",
    re.IGNORECASE,
)


def object_trouble(stderr: str) -> str | None:
    """The object git's message says is missing or corrupt, if it names one."""
    found = _OBJECT_TROUBLE.search(stderr)
    return found.group(2) if found else None


#: The project's own files (the embedded server's data, the driver's worktrees) are never
#: the user's uncommitted work.
_NOT_WORK: Final = ":(exclude,top).claudecluster"


async def uncommitted_paths(repo: Path) -> list[str]:
    """Paths with changes a commit of HEAD would leave out: modified, staged, untracked
    (ignored files are not work in progress).

    Raises:
        WorkspaceError: git failed.
    """
    out = await git(repo, "status", "--porcelain", "-z", "--untracked-files=all", "--",
                    ".", _NOT_WORK)  # fmt: skip
    paths = []
    entries = iter(out.split("\0"))
    for entry in entries:
        if len(entry) < 4:
            continue
        paths.append(entry[3:])
        if entry[0] in "RC":  # a rename: the next entry is its old path
            next(entries, None)
    return paths


async def snapshot_worktree(repo: Path, message: str, ref: str) -> str:
    """Commit the working tree as it is (untracked but not ignored files included) on top
    of HEAD, without touching the user's index, branch or files; returns the commit.

    The commit is kept under ``ref`` so it outlives the run that uses it as its base.

    Raises:
        WorkspaceError: git failed.
    """
    index = repo / ".git" / f"claudecluster-snapshot-{os.getpid()}.index"
    env = {**_git_env(), "GIT_INDEX_FILE": str(index)}
    try:
        for args in (("read-tree", "HEAD"), ("add", "--all", "--", ".", _NOT_WORK)):
            with anyio.fail_after(_GIT_TIMEOUT_S):
                done = await anyio.run_process(
                    ["git", "-C", str(repo), *args], env=env, check=False,
                    stdin=subprocess.DEVNULL,
                )  # fmt: skip
            if done.returncode != 0:
                detail = done.stderr.decode(errors="replace").strip().splitlines()[-1:]
                raise WorkspaceError(f"git {args[0]} failed in {repo}: {detail}")
        with anyio.fail_after(_GIT_TIMEOUT_S):
            tree = await anyio.run_process(
                ["git", "-C", str(repo), "write-tree"], env=env, stdin=subprocess.DEVNULL
            )
    except TimeoutError:
        raise WorkspaceError(f"snapshotting the working tree of {repo} took too long") from None
    finally:
        await anyio.Path(index).unlink(missing_ok=True)
    commit = await git(repo, "commit-tree", tree.stdout.decode().strip(), "-p", "HEAD",
                       "-m", message)  # fmt: skip
    await git(repo, "update-ref", ref, commit.strip())
    return commit.strip()


async def present_commits(repo: Path, commits: Sequence[str]) -> set[str]:
    """Which of ``commits`` ``repo`` has, asked of one git process.

    Raises:
        WorkspaceError: git took longer than two minutes.
    """
    if not commits:
        return set()
    try:
        with anyio.fail_after(_GIT_TIMEOUT_S):
            done = await anyio.run_process(
                ["git", "-C", str(repo), "cat-file", "--batch-check=%(objectname) %(objecttype)"],
                input="".join(f"{c}\n" for c in commits).encode(),
                check=False,
                env=_git_env(),
                stderr=subprocess.DEVNULL,
            )
    except TimeoutError:
        raise WorkspaceError(f"git cat-file took longer than {_GIT_TIMEOUT_S:.0f}s") from None
    found = set()
    for line in done.stdout.decode(errors="replace").splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[1] == "commit":
            found.add(parts[0])
    return found


async def refuse_unsupported(repo: Path, commit: str) -> None:
    """Refuse a base whose tree workers could not reproduce: submodules, Git LFS files.

    A workspace is made from the repository's own objects; a submodule's commits and an
    LFS file's contents are not among them, so the agent would see empty directories and
    pointer files. Better to say so before any work starts.

    Raises:
        UnsupportedRepositoryError: the tree has submodules or LFS-tracked files (named).
        WorkspaceError: git failed.
    """
    listing = await git(repo, "ls-tree", "-r", "-z", "--full-tree", commit, time_limit=600)
    gitlinks = [
        entry.split("\t", 1)[1]
        for entry in listing.split("\0")
        if entry.startswith("160000 ") and "\t" in entry
    ]
    if gitlinks:
        shown = ", ".join(gitlinks[:5]) + (" ..." if len(gitlinks) > 5 else "")
        raise UnsupportedRepositoryError(
            f"the base {commit[:12]} has submodules ({shown}), which workers cannot check "
            "out: run on a branch without them, or vendor their files into the repository"
        )
    code, out, _ = await git_status(
        repo, "grep", "-l", "-I", "-e", "filter=lfs", commit, "--",
        ".gitattributes", "**/.gitattributes", time_limit=600,
    )  # fmt: skip
    if code == 0 and out.strip():
        files = ", ".join(line.split(":", 1)[-1] for line in out.split())
        raise UnsupportedRepositoryError(
            f"the base {commit[:12]} tracks files with Git LFS ({files} says filter=lfs); "
            "workers would get pointer files, not the contents: run on a branch without "
            "LFS-tracked files (git lfs migrate export turns them into plain files)"
        )


async def repository_key(repo: Path, commit: str) -> str:
    """A name for ``repo`` that every clone of it shares: its root commit.

    Of several roots (merged unrelated histories) the smallest is taken, so the key does
    not depend on the order git lists them in.

    Raises:
        WorkspaceError: git failed (``commit`` is unknown, say).
    """
    roots = (await git(repo, "rev-list", "--max-parents=0", commit)).split()
    if not roots:
        raise WorkspaceError(f"commit {commit} in {repo} has no root commit")
    return min(roots)


async def segment_bundle(repo: Path, commit: str, have: Sequence[str], out: Path) -> bool:
    """Bundle ``commit`` with the history the holders of ``have`` lack.

    The bundle's one ref is ``refs/claudecluster/cache/<commit>``, and its prerequisites
    are commits of ``have``'s history: a repository cache that fetched the segments of
    ``have`` can fetch this one. Returns False (and writes nothing) when ``commit`` is
    already in that history, so no segment is needed.

    Raises:
        WorkspaceError: ``commit`` is unknown, or the repository is missing an object
            or has a corrupt one (the message names it), or git failed.
    """
    ref = f"refs/claudecluster/cache/{commit}"
    await git(repo, "update-ref", ref, commit)
    if have:
        ancestors = await git_status(repo, "merge-base", "--independent", commit, *have)
        code, out_text, _ = ancestors
        if code == 0 and commit not in out_text.split():
            return False  # commit is an ancestor of something sent: nothing new
    code, _, err = await git_status(
        repo, "bundle", "create", "--quiet", str(out), ref, *(f"^{c}" for c in have),
        time_limit=3600,
    )  # fmt: skip
    if code != 0:
        broken = object_trouble(err)
        if broken:
            raise WorkspaceError(
                f"the repository {repo} is missing or has a corrupt object {broken}, which "
                f"the history of {commit} needs: run 'git fsck' in it, and restore the object "
                "(from another clone, say) before running again"
            )
        lines = err.strip().splitlines()
        raise WorkspaceError(
            f"git bundle create failed in {repo}: {' | '.join(lines[-3:]) or code}"
        )
    return True


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


async def commit_all(
    workspace: Path,
    message: str,
    *,
    objects: Path | None = None,
    on_pristine: Callable[[], None] | None = None,
) -> str | None:
    """Commit every change in the workspace; returns the new commit, or None if unchanged.

    The workspace's git directory is reset first (:func:`distrust_git_dir`): the agent
    had it, and ``git add`` would run a filter its config defines. ``objects`` is the
    object directory the workspace borrows from (the host's repository cache), if any.
    ``on_pristine`` is called when the tree holds exactly its ``HEAD``: no change, no
    untracked or ignored file, no empty directory (a slot's next reset to the same base
    then has nothing to do).

    Raises:
        WorkspaceError: git failed, or ``.git`` was replaced.
    """
    changed, pristine = await anyio.to_thread.run_sync(
        _inspect, workspace, objects, on_pristine is not None
    )
    if not changed:
        if pristine and on_pristine is not None:
            on_pristine()
        return None
    await git(workspace, "add", "--all")
    await git(workspace, "commit", "--quiet", "--no-verify", "-m", message)
    return (await git(workspace, "rev-parse", "HEAD")).strip()


def _inspect(workspace: Path, objects: Path | None, pristine: bool) -> tuple[bool, bool]:
    """Distrust ``.git``, then ask git whether anything changed; returns whether it did,
    and (with ``pristine``) whether the tree holds exactly its ``HEAD``.

    One call in a worker thread, git included (a blocking ``subprocess.run`` with its time
    limit): a no-op attempt's whole commit step is then one thread hop, not three hops and
    an event-loop subprocess (whose child watcher starts a thread of its own per process).
    Asked first, so a task that changed nothing costs one git process, not two. Ignored
    files are listed (a directory of them as one line) only to tell a pristine tree.

    Raises:
        WorkspaceError: ``.git`` was replaced, or git failed or took too long.
    """
    distrust_git_dir(workspace, objects)
    args = ("status", "--porcelain", "--ignored=traditional", "--untracked-files=normal")
    command = ["git", *_config_flags(), "-C", str(workspace), *args]
    try:
        done = subprocess.run(
            command,
            env=_git_env(),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=_GIT_TIMEOUT_S,
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise WorkspaceError(f"git status took longer than {_GIT_TIMEOUT_S:.0f}s") from None
    if done.returncode != 0:
        message = done.stderr.decode(errors="replace").strip().splitlines()
        detail = message[-1] if message else f"exit code {done.returncode}"
        raise WorkspaceError(f"git status --porcelain failed in {workspace}: {detail}")
    lines = [line for line in done.stdout.decode(errors="replace").splitlines() if line.strip()]
    if any(not line.startswith("!! ") for line in lines):
        return True, False
    return False, pristine and not lines and _no_empty_directory(workspace)


#: Directories looked at before a tree counts as too big to check for empty directories
#: (git cannot see those); a bigger tree is simply not known pristine and gets reset.
_PRISTINE_WALK_LIMIT: Final = 20_000


def _no_empty_directory(workspace: Path) -> bool:
    """Whether no directory below ``workspace`` (``.git`` aside) is empty, within the limit."""
    pending = [str(workspace)]
    seen = 0
    while pending:
        directory = pending.pop()
        seen += 1
        if seen > _PRISTINE_WALK_LIMIT:
            return False
        try:
            with os.scandir(directory) as entries:
                found = False
                for entry in entries:
                    found = True
                    if entry.is_dir(follow_symlinks=False) and not (
                        directory == str(workspace) and entry.name == ".git"
                    ):
                        pending.append(entry.path)
        except OSError:
            return False
        if not found:
            return False
    return True


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
