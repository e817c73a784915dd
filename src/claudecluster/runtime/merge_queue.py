"""The merge queue's git work: a batch of results stacked, verified once, bisected.

The driver's core decides which results form a batch (:class:`MergeBatch`, in the order
they succeeded, which is a dependency order); this module carries it out on the run's
integration branch. Each result becomes one squashed commit with its trailer, stacked on
the previous one in a private worktree; the branch does not move until the verify
command has passed on the commit it moves to. A failing batch is bisected
(:class:`~claudecluster.actors.merging.Bisection`) to the first result that breaks it:
the results before it merge, it alone is recorded as failed with the verify output, and
the ones after it are left for the next batch, which starts from the verified head.

So a fleet whose verify command takes minutes verifies once per batch instead of once
per task, and one bad result costs about log2(batch) more runs, not a serial queue.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import anyio
import msgspec

from claudecluster.actors.driver import Merge, MergeBatch, Record
from claudecluster.actors.merge_outcomes import MergeFound, merge_key, merge_record
from claudecluster.actors.merging import Bisection
from claudecluster.errors import WorkspaceError
from claudecluster.events.model import ChangedFile, Event, MergeConflict, TaskMerged
from claudecluster.observability.logging import get_logger
from claudecluster.workspace.git import commit_changes
from claudecluster.workspace.integration import Integration

__all__ = ["BatchMerger"]

_log = get_logger(__name__)

#: Appends an event (event, event id, expected last sequence of its scope); returns its seq.
Recorder = Callable[[Event, str, int | None], Awaitable[int]]
#: The commit holding an item's result (fetched from its bundle), or None if it has none.
TheirsOf = Callable[[Merge], Awaitable[str | None]]


@dataclass(slots=True)
class _Stacked:
    item: Merge
    #: what merging it found (its commit None if it changed nothing)
    found: MergeFound
    #: the top of the stack once this item is on it (the previous top if it changed nothing)
    commit: str

    @property
    def changed(self) -> bool:
        return self.found.commit is not None


class BatchMerger:
    """Carries out :class:`MergeBatch` effects for one run.

    Args:
        integration: the run's integration branch.
        repo: the repository holding it.
        record: appends an event.
        theirs_of: the commit of an item's result.
        verify_command: the run's verify command.
        verify_timeout_s: its time limit per run.
    """

    def __init__(
        self,
        integration: Integration,
        repo: Path,
        record: Recorder,
        theirs_of: TheirsOf,
        verify_command: str,
        verify_timeout_s: float,
        verify_parallel: int = 1,
    ) -> None:
        self._integration = integration
        self._repo = repo
        self._record = record
        self._theirs_of = theirs_of
        self._verify_command = verify_command
        self._verify_timeout_s = verify_timeout_s
        self._parallel = verify_parallel
        #: verify runs carried out (logged with each bisection)
        self.verify_runs = 0

    async def run(self, batch: MergeBatch) -> int:
        """Merge what of the batch can be merged; returns the last sequence recorded.

        Raises:
            WorkspaceError: git failed, or the branch moved and no result of the batch is
                on it.
        """
        if await self._integration.head() != batch.head:
            return await self._recover(batch)
        stack: list[_Stacked] = []
        top = batch.head
        for item in batch.items:
            theirs = await self._theirs_of(item)
            if theirs is None:  # a task that changed nothing
                stack.append(_Stacked(item, MergeFound(theirs=None, at=top), top))
                continue
            outcome = await self._integration.stack(
                onto=top, theirs=theirs, key=merge_key(item),
                message=f"{item.task_id}: {item.title}",
            )  # fmt: skip
            found = MergeFound(
                theirs=theirs, commit=outcome.commit, conflict_files=outcome.conflict_files,
                changed_files=outcome.changed_files, marker_files=outcome.marker_files, at=top,
            )  # fmt: skip
            record = merge_record(item, found)
            if isinstance(record.event, MergeConflict):
                if stack:
                    break  # first in the next batch, onto a verified head
                if record.event.problem:
                    _log.warning("merge refused", task=merge_key(item),
                                 problem=record.event.problem)  # fmt: skip
                return await self._append(record)
            if outcome.commit is not None:
                top = outcome.commit
            stack.append(_Stacked(item, found, top))
        good, failure = len(stack), ""
        if batch.verify and top != batch.head:
            good, failure = await self._verified_prefix(batch.head, stack)
        seq = 0
        new_head = stack[good - 1].commit if good else batch.head
        if new_head != batch.head:
            await self._integration.advance(new_head, batch.head)
        for entry in stack[:good]:
            seq = await self._merged(entry, entry.commit)
        if good < len(stack):
            culprit = stack[good]
            failed = msgspec.structs.replace(culprit.found, verify_failure=failure)
            seq = await self._append(merge_record(culprit.item, failed))
        return seq

    async def _append(self, record: Record) -> int:
        return await self._record(record.event, record.event_id, record.expected_last)

    async def _verified_prefix(self, head: str, stack: list[_Stacked]) -> tuple[int, str]:
        """How many of the stacked results pass the verify command together, and the
        output of the run that failed (empty if all pass)."""
        outputs: dict[int, str] = {}

        results: dict[int, bool] = {}

        async def passes(prefix: int, *, isolated: bool) -> bool:
            commit = stack[prefix - 1].commit if prefix else head
            self.verify_runs += 1
            verify = self._integration.verify_isolated if isolated else self._integration.verify_at
            verdict = await verify(commit, self._verify_command, self._verify_timeout_s)
            if not verdict.passed:
                outputs[prefix] = verdict.output
            results[prefix] = verdict.passed
            return verdict.passed

        if await passes(len(stack), isolated=False):
            return len(stack), ""
        search = Bisection(good=0, bad=len(stack))
        while probes := search.probes(self._parallel):
            results.clear()
            async with anyio.create_task_group() as group:
                for prefix in probes:
                    group.start_soon(partial(passes, prefix, isolated=len(probes) > 1))
            search = search.record_all(dict(results))
        _log.info(
            "batch bisected", culprit=stack[search.culprit].item.task_id, merged=search.good,
            of=len(stack), verify_runs=self.verify_runs,
        )  # fmt: skip
        return search.good, outputs.get(search.bad, "")

    async def _merged(self, entry: _Stacked, commit: str) -> int:
        found = entry.found
        if entry.changed:
            files = tuple(
                ChangedFile(path=c.path, added=c.added, deleted=c.deleted)
                for c in await commit_changes(self._repo, commit)
            )
            found = msgspec.structs.replace(found, commit=commit, files=files)
        record = merge_record(entry.item, found)
        assert isinstance(record.event, TaskMerged)  # stacked: accepted by the judge
        return await self._append(record)

    async def _recover(self, batch: MergeBatch) -> int:
        """The branch moved since the batch was decided: a driver that crashed after moving
        it finds the batch's commits by their trailers and records them."""
        seq = 0
        for item in batch.items:
            commit = await self._integration.find_merged(batch.head, merge_key(item))
            if commit is not None:
                # On the branch already: what it found then was a commit, and accepted.
                entry = _Stacked(item, MergeFound(theirs=commit, commit=commit), commit)
                seq = await self._merged(entry, commit)
        if seq == 0:
            raise WorkspaceError(
                f"branch {self._integration.branch} moved away from {batch.head[:12]}: "
                "something else moved it"
            )
        return seq
