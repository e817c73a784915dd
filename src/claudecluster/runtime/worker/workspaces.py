"""Workspace chores of the worker: copying configured files in, sweeping what dead
worker processes left behind."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Final

import psutil

from claudecluster.errors import CopyFilesError
from claudecluster.observability.logging import get_logger
from claudecluster.runtime.worker.config import WorkerConfig
from claudecluster.workspace.slot import remove_tree

__all__: list[str] = []  # the package's own helpers

_log = get_logger(__name__)


def _copy_in(config: WorkerConfig, workspace: Path) -> list[str]:
    """Copy the configured files into the workspace; returns their relative paths.

    Raises:
        CopyFilesError: a configured pattern matches nothing.
    """
    if config.copy_from is None or not config.copy_files:
        return []
    copied: list[str] = []
    for pattern in config.copy_files:
        matches = [p for p in sorted(config.copy_from.glob(pattern)) if p.is_file()]
        if not matches:
            raise CopyFilesError(pattern, str(config.copy_from))
        for source in matches:
            relative = source.relative_to(config.copy_from)
            target = workspace / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)
            copied.append(relative.as_posix())
    return copied


_OWNER_FILE: Final = ".claudecluster-owner"


def _sweep_orphans(root: Path) -> list[Path]:
    """Remove attempts' and slots' directories whose owning worker process no longer runs."""
    if not root.is_dir():
        return []
    removed = []
    for scratch in sorted(root.iterdir()):
        owner_file = scratch / _OWNER_FILE
        if not owner_file.is_file():
            continue
        try:
            owner = int(owner_file.read_text(encoding="utf-8").strip())
        except (OSError, ValueError):
            continue
        if psutil.pid_exists(owner):
            continue
        _remove(scratch)
        if "." not in scratch.name:  # a bundle beside an attempt of before the cache
            _remove(scratch.with_suffix(".base"))
        removed.append(scratch)
        _log.info("orphaned workspace removed", path=str(scratch), owner=owner)
    return removed


#: What a slot's scratch directory keeps between attempts (emptied): the sandbox's home
#: and temp directory (see :func:`~claudecluster.executors.confinement.attempt_sandbox`).
_SCRATCH_KEPT: Final = ("home", "tmp")


def _ready_scratch(scratch: Path, owned: Path, *, empty: bool) -> None:
    """Make ``scratch`` ready for an attempt (emptied first with ``empty``), and write the
    owner file of ``owned`` (the directory the sweep of dead workers' leftovers finds) if
    it has none; one call, so one thread hop, for all of it."""
    if empty:
        _empty_scratch(scratch)
    for name in _SCRATCH_KEPT:
        (scratch / name).mkdir(parents=True, exist_ok=True)
    owner = owned / _OWNER_FILE
    if not owner.is_file():
        owner.write_text(str(os.getpid()), encoding="utf-8")


def _empty_scratch(scratch: Path) -> None:
    """Leave nothing of an attempt in a slot's scratch directory: its home and temp
    directory are emptied (kept as directories: removing and making them again costs
    more than the attempt's no-op work on a busy disk), everything else is removed."""
    try:
        entries = list(os.scandir(scratch))
    except FileNotFoundError:
        return
    for entry in entries:
        path = Path(entry.path)
        if entry.name in _SCRATCH_KEPT and entry.is_dir(follow_symlinks=False):
            path.chmod(0o700)  # an agent may have taken its own write permission away
            for child in os.scandir(path):
                _remove_any(Path(child.path))
        else:
            _remove_any(path)


def _remove_any(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        remove_tree(path)
    else:
        path.unlink(missing_ok=True)


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path, ignore_errors=False)
    elif path.exists():
        path.unlink()
