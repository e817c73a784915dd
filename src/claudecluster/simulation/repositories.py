"""The driver's git half, scripted: what a simulation puts behind the real driver shell.

:class:`~claudecluster.runtime.run_repositories.RunRepositories` is everything the driver
shell asks git. Here nothing touches a disk: a run starts from commit ``c0``, every merge
makes the next commit ``c1``, ``c2``, ... unless it is drawn to conflict, and the verify
command always passes. Whether an attempt's merge conflicts is drawn from the seed and the
attempt alone (not from the order merges happen in), so a seed gives the same conflicts
whatever the scheduling order.
"""

from __future__ import annotations

import random
from pathlib import Path

from claudecluster.actors.driver import Merge, MergeBatch
from claudecluster.actors.merge_outcomes import MergeFound, merge_record
from claudecluster.events.model import MergeConflict
from claudecluster.events.work import BaseSegment
from claudecluster.runtime.merge_queue import Recorder
from claudecluster.workspace.integration import VerifyOutcome

__all__ = ["ScriptedRunRepositories"]

#: the file a scripted conflict names
CONFLICTING_FILE = "shared.py"


class ScriptedRunRepositories:
    """Repositories that answer as git would, from a seed.

    Args:
        seed: the source of every draw.
        conflict_chance: chance that merging an attempt's result conflicts.
    """

    def __init__(self, *, seed: int, conflict_chance: float = 0.0) -> None:
        self._seed = seed
        self._conflict_chance = conflict_chance
        self._heads: dict[str, str] = {}
        self._commits = 0

    def run_dir(self, run_id: str, repo: Path) -> Path:
        return repo / ".claudecluster" / "driver" / run_id

    async def base_of(self, run_id: str, repo: Path, base_ref: str) -> str:
        return "c0"

    async def open_integration(self, run_id: str, repo: Path, base: str) -> None:
        self._heads.setdefault(run_id, base)

    async def segments(
        self, run_id: str, repo: Path, base: str
    ) -> tuple[str, tuple[BaseSegment, ...]]:
        return "simulated", ()

    async def conflicted_merge(
        self, run_id: str, repo: Path, ours: str, theirs: str, message: str
    ) -> str:
        return f"{ours}+{theirs}"

    async def merge(self, effect: Merge) -> MergeFound:
        theirs = f"r-{effect.task_id}-{effect.attempt}"
        changed = (f"{effect.task_id}.py",)
        draw = random.Random(f"{self._seed}:{effect.run_id}:{effect.task_id}:{effect.attempt}")  # noqa: S311 - a seeded simulation
        if effect.resolving is None and draw.random() < self._conflict_chance:
            return MergeFound(theirs=theirs, conflict_files=(CONFLICTING_FILE,))
        self._commits += 1
        commit = f"c{self._commits}"
        self._heads[effect.run_id] = commit
        return MergeFound(theirs=theirs, commit=commit, changed_files=changed)

    async def merge_batch(self, effect: MergeBatch, record: Recorder) -> int:
        # No verify command is simulated: each result merges in turn, and the batch ends
        # at the first that conflicts, as the real one does.
        seq = 0
        for item in effect.items:
            merged = merge_record(item, await self.merge(item))
            seq = await record(merged.event, merged.event_id, merged.expected_last)
            if isinstance(merged.event, MergeConflict):
                break
        return seq

    async def verify_head(
        self, run_id: str, repo: Path, command: str, timeout_s: float
    ) -> VerifyOutcome:
        return VerifyOutcome(passed=True, output="")

    async def move_to(self, run_id: str, repo: Path, commit: str) -> None:
        self._heads[run_id] = commit

    async def head(self, run_id: str, repo: Path) -> str:
        return self._heads.get(run_id, "c0")

    async def clean_run(self, run_id: str) -> None:
        return None
