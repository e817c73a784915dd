"""A slot's workspace: one checkout reused by every attempt the slot runs.

The workspace borrows its objects from the host's repository cache
(``.git/objects/info/alternates``), so it holds only what its attempt commits. Before each
attempt it is reset to the attempt's base:

1. ``.git`` is brought to exactly what a fresh one holds, but the index: a ``HEAD`` on
   the task's branch (kept in ``packed-refs``), a fixed ``config``, no hooks, no other
   refs, no reflogs, and no objects of its own. (In place: the directories of that layout
   are kept, not removed and made again, see :func:`_rebuild_git_dir`.) So
   nothing an earlier attempt committed, configured or planted (a hook, an alias) is left
   for this one to find or for the worker's own git calls to run. The index is kept only
   as a cache of file stat data: it saves rewriting files that did not change.
2. ``git clean -ffdx`` removes every untracked and ignored file, nested repositories
   included (the doubled ``-f``), against the old index;
3. ``git reset --hard`` makes the tracked files those of the base.

A first attempt of a slot skips the clean: the directory is empty. So does an attempt
after one that left the tree exactly as its base (a no-op task, the worker checks with the
status it asks anyway), and one on that same base needs no reset either: the ``.git``
rebuilt from nothing in step 1 is all such a slot costs. If a reset fails
(an agent left a file git cannot remove, a corrupt index), the directory is removed and
made again, so a slot never runs an attempt on a half-reset tree.

Privacy: the workspace has no ref of the cache and no path to another slot's directory.
The cache's objects are readable through the alternates file; they are the source
repository's own history, never another attempt's work (results leave as bundles).
"""

from __future__ import annotations

import os
import shutil
import stat
from pathlib import Path
from typing import Final, TypeAlias

import anyio

from claudecluster.errors import WorkspaceError
from claudecluster.workspace.git import git

__all__ = ["remove_tree", "reset_workspace"]

_CONFIG: Final = (
    "[core]\n"
    "\trepositoryformatversion = 0\n"
    "\tfilemode = true\n"
    "\tbare = false\n"
    "\tlogallrefupdates = false\n"
    "[gc]\n"
    "\tauto = 0\n"
)


async def reset_workspace(
    where: Path, cache: Path, commit: str, branch: str, *, pristine_at: str | None = None
) -> Path:
    """Make ``where`` a checkout of ``commit`` on ``branch``, borrowing ``cache``'s objects.

    Args:
        where: the slot's workspace directory (made if missing).
        cache: the bare repository holding ``commit``.
        commit: the base of the attempt.
        branch: the branch the attempt commits on.
        pristine_at: the commit the tree was found to hold exactly after the slot's last
            attempt ended (no change, no untracked or ignored file, no empty directory:
            :func:`~claudecluster.workspace.git.commit_all` tells), if it was. Then
            there is nothing to clean, and for that same commit nothing to check out.

    Returns:
        ``where``.

    Raises:
        WorkspaceError: git cannot check the commit out even in a fresh directory.
    """
    used = await anyio.to_thread.run_sync(_rebuild_git_dir, where, cache, commit, branch)
    try:
        if used and pristine_at is None:
            await git(where, "clean", "-ffdxq")
        if not used or pristine_at != commit:
            await git(where, "reset", "--hard", "--quiet")
    except WorkspaceError:
        if not used:
            raise
        # Something in the old tree resisted the reset: start from an empty directory.
        await anyio.to_thread.run_sync(remove_tree, where)
        await anyio.to_thread.run_sync(_rebuild_git_dir, where, cache, commit, branch)
        await git(where, "reset", "--hard", "--quiet")
    return where


def _rebuild_git_dir(where: Path, cache: Path, commit: str, branch: str) -> bool:
    """Bring ``.git`` to exactly the layout of a fresh one (keeping only the index);
    returns whether the workspace was used before.

    The result is the same as removing ``.git`` and writing it anew: every entry that is
    not part of the fixed layout below goes (hooks, logs, other refs, objects of its own,
    a symlink or a file where a directory belongs), and every file of the layout gets its
    fixed content. But the directories the layout keeps are not removed and made again:
    on a busy disk an ``rmdir`` and a ``mkdir`` cost milliseconds each (ext4's journal),
    and a slot's ``.git`` has eight of them, which made this the largest part of a
    no-op attempt's preparation. The branch lives in ``packed-refs`` for the same reason
    (a loose ref under ``refs/heads/claudecluster/<run>/`` needs directories of its own).
    A file whose content is already right is left as it is.
    """
    where.mkdir(parents=True, exist_ok=True)
    gitdir = where / ".git"
    used = gitdir.is_dir() and not gitdir.is_symlink() and any(where.iterdir())
    if gitdir.is_symlink() or (gitdir.exists() and not gitdir.is_dir()):
        gitdir.unlink()  # an agent replaced it: nothing of it is kept
    files = {
        "HEAD": f"ref: refs/heads/{branch}\n",
        "config": _CONFIG,
        "packed-refs": f"{commit} refs/heads/{branch}\n",
        "objects/info/alternates": f"{(cache / 'objects').resolve()}\n",
    }
    _prune(gitdir, _LAYOUT, keep=frozenset({"index"}))
    for directory in _LAYOUT_DIRS:
        (gitdir / directory).mkdir(parents=True, exist_ok=True)
    for name, content in files.items():
        _write_if_changed(gitdir / name, content)
    return used


#: A fresh ``.git``'s layout: directory name -> its own layout (None: a file).
_Layout: TypeAlias = dict[str, "_Layout | None"]
_LAYOUT: Final[_Layout] = {
    "HEAD": None,
    "config": None,
    "index": None,
    "packed-refs": None,
    "objects": {"info": {"alternates": None}, "pack": {}},
    "refs": {"heads": {}, "tags": {}},
}
_LAYOUT_DIRS: Final = ("objects/info", "objects/pack", "refs/heads", "refs/tags")


def _prune(directory: Path, layout: _Layout, *, keep: frozenset[str] = frozenset()) -> None:
    """Remove every entry of ``directory`` that ``layout`` does not have, or has as the
    other kind (a file for a directory, or anything as a symlink)."""
    try:
        entries = list(os.scandir(directory))
    except FileNotFoundError:
        return
    for entry in entries:
        path = Path(entry.path)
        if entry.name not in layout:
            _remove_path(path)
            continue
        sub = layout[entry.name]
        if entry.is_symlink():
            path.unlink()
        elif sub is None:
            if entry.is_dir(follow_symlinks=False):
                remove_tree(path)
            elif entry.name not in keep and not entry.is_file(follow_symlinks=False):
                path.unlink()  # a fifo or a socket where a file belongs
        elif not entry.is_dir(follow_symlinks=False):
            path.unlink()
        else:
            _prune(path, sub)


def _write_if_changed(path: Path, content: str) -> None:
    data = content.encode()
    try:
        with path.open("rb") as handle:
            if handle.read(len(data) + 1) == data:
                return
    except OSError:
        pass
    path.unlink(missing_ok=True)
    path.write_bytes(data)


def _remove_path(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        remove_tree(path)
    else:
        path.unlink(missing_ok=True)


def remove_tree(path: Path) -> None:
    """Remove a directory an agent wrote, read-only entries included."""
    if not path.exists():
        return
    try:
        shutil.rmtree(path)
    except OSError:
        # An agent may leave directories without write permission: restore it, retry.
        for parent, dirs, _ in os.walk(path):
            for name in dirs:
                child = os.path.join(parent, name)
                if not os.path.islink(child):
                    os.chmod(child, stat.S_IRWXU)
        os.chmod(path, stat.S_IRWXU)
        shutil.rmtree(path)
