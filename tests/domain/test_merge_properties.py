"""A property over random conflict outcomes: no task is "merged" while its change is absent.

The driver core runs a plan of tasks that write their id over one of two files, with an
in-memory model of the repository standing in for git: three-way merges line by line,
conflicts written with markers, and a resolution attempt whose outcome hypothesis draws
(it changes nothing, leaves the markers, resolves keeping both sides, keeps the
integration side and says so, or keeps it silently). The facts the model gathers are
judged by the real :func:`~claudecluster.actors.merging.judge_merge`, as the shell does.

At the end, for every task: its line is on the branch, or the run says why it is not (a
merge without changes that is reported as a warning, or a failed run naming the task).
Never both "merged with changes" and absent, and never a conflict marker on the branch.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Literal

from hypothesis import given, settings
from hypothesis import strategies as st

from claudecluster.actors.driver import (
    Dispatch,
    DriverState,
    Effect,
    EffectSettled,
    Merge,
    MergeBatch,
    Plan,
    PublishCommand,
    Record,
    Rollback,
    Tick,
    Verify,
    decide,
)
from claudecluster.actors.merging import KEEP_DECLARATION, MergeFacts, judge_merge
from claudecluster.events import (
    MergeConflict,
    RunCompleted,
    RunFailed,
    RunPlanned,
    RunPolicy,
    RunSubmitted,
    TaskMerged,
    TaskQueued,
    TaskSpec,
    TaskStarted,
    TaskSucceeded,
    wrap_event,
)
from claudecluster.events.envelope import StoredEvent
from claudecluster.events.model import Event
from claudecluster.events.subjects import event_subject
from claudecluster.projections.progress import merge_warnings
from claudecluster.workspace.markers import conflict_blocks

Outcome = Literal["nothing", "markers", "resolve", "keep", "keep_silently"]
Tree = dict[str, tuple[str, ...]]
T0 = datetime(2026, 5, 1, tzinfo=UTC)
FILES = ("a.txt", "b.txt")


def _three_way(base: tuple[str, ...], ours: tuple[str, ...], theirs: tuple[str, ...]) -> (
    tuple[str, ...] | None
):  # fmt: skip
    """A whole-file three-way merge: None when both sides changed it differently."""
    if ours in (base, theirs):
        return theirs
    if theirs == base:
        return ours
    return None


def _merge_trees(base: Tree, ours: Tree, theirs: Tree) -> tuple[Tree, tuple[str, ...]]:
    merged: Tree = {}
    conflicts: list[str] = []
    for name in FILES:
        result = _three_way(base[name], ours[name], theirs[name])
        if result is None:
            conflicts.append(name)
            result = ("<<<<<<< ours", *ours[name], "=======", *theirs[name], ">>>>>>> theirs")
        merged[name] = result
    return merged, tuple(conflicts)


@dataclass
class Repo:
    """Commits as trees, by id; the branch is the id of its head."""

    commits: dict[str, Tree] = field(default_factory=dict)
    parent: dict[str, str] = field(default_factory=dict)
    head: str = "c0"

    def commit(self, tree: Tree, parent: str) -> str:
        commit = f"c{len(self.commits)}"
        self.commits[commit] = tree
        self.parent[commit] = parent
        return commit


@dataclass
class World:
    outcomes: list[Outcome]
    files: dict[str, str]
    repo: Repo = field(default_factory=Repo)
    state: DriverState = field(default_factory=DriverState)
    seq: int = 0
    now: datetime = T0
    events: list[Event] = field(default_factory=list)
    #: (task, attempt) -> the commit its result is, and the commit it started from
    results: dict[tuple[str, int], tuple[str, str]] = field(default_factory=dict)

    def feed(self, event: Event) -> list[Effect]:
        self.seq += 1
        self.events.append(event)
        stored = StoredEvent(
            seq=self.seq, subject=event_subject(event),
            envelope=wrap_event(event, event_id=f"e{self.seq}", now=self.now),
        )  # fmt: skip
        return decide(self.state, stored, self.now)

    def carry_out(self, effect: Effect) -> list[Effect]:
        effects: list[Effect] = []
        match effect:
            case Record():
                effects += self.feed(effect.event)
            case Plan():
                submitted = effect.submitted
                assert submitted.plan is not None
                effects += self.feed(
                    RunPlanned(run_id="r", tasks=submitted.plan, base_commit="c0",
                               integration_branch="claudecluster/r")
                )  # fmt: skip
            case Dispatch():
                effects += self._attempt(effect)
            case Merge():
                effects += self.feed(self._merge(effect))
            case MergeBatch() | Verify() | Rollback() | PublishCommand():
                raise AssertionError(f"not expected without verify or cancels: {effect}")
        settled = EffectSettled(key=effect.key, seq=self.seq)
        return effects + decide(self.state, settled, self.now)

    def _attempt(self, effect: Dispatch) -> list[Effect]:
        queued = effect.queued
        task_id, attempt = queued.task_id, queued.attempt
        summary = "done"
        if queued.resolves_conflict:
            assert effect.conflict is not None
            ours, theirs = effect.conflict
            start_tree, _ = _merge_trees(
                self.repo.commits[self._base_of(theirs)], self.repo.commits[ours],
                self.repo.commits[theirs],
            )  # fmt: skip
            start = self.repo.commit(start_tree, ours)
            queued = TaskQueued(
                run_id="r", task_id=task_id, attempt=attempt, base_commit=start,
                note=queued.note, resolves_conflict=True,
            )  # fmt: skip
            outcome = self.outcomes.pop(0) if self.outcomes else "resolve"
            tree = dict(start_tree)
            name = self.files[task_id]
            ours_lines = self.repo.commits[ours][name]
            if outcome == "markers":
                tree[name] = (*tree[name], "more")
            elif outcome == "resolve":
                tree[name] = (*ours_lines, task_id)
            elif outcome in ("keep", "keep_silently"):
                tree[name] = ours_lines
                summary = f"{KEEP_DECLARATION} same" if outcome == "keep" else "done"
            result = start if outcome == "nothing" else self.repo.commit(tree, start)
        else:
            start = queued.base_commit
            tree = dict(self.repo.commits[start])
            tree[self.files[task_id]] = (task_id,)
            result = self.repo.commit(tree, start)
        self.results[(task_id, attempt)] = (result, start)
        effects = self.feed(queued)
        effects += self.feed(TaskStarted(run_id="r", task_id=task_id, attempt=attempt,
                                         worker_id="w"))  # fmt: skip
        effects += self.feed(TaskSucceeded(run_id="r", task_id=task_id, attempt=attempt,
                                           worker_id="w", summary=summary))  # fmt: skip
        return effects

    def _base_of(self, commit: str) -> str:
        return self.repo.parent[commit]

    def _merge(self, effect: Merge) -> Event:
        result, start = self.results[(effect.task_id, effect.attempt)]
        head = self.repo.head
        assert head == effect.head
        # A resolution's merge base is the side it was made from (ours at the conflict).
        base = self.repo.parent[start] if effect.resolving is not None else start
        merged, conflicts = _merge_trees(
            self.repo.commits[base], self.repo.commits[head], self.repo.commits[result]
        )
        if conflicts:
            return MergeConflict(
                run_id="r", task_id=effect.task_id, attempt=effect.attempt, files=conflicts,
                ours=head, theirs=result, policy="resolve",
            )  # fmt: skip
        current = self.repo.commits[head]
        changed = tuple(n for n in FILES if merged[n] != current[n])
        markers = tuple(
            n for n in changed
            if conflict_blocks("\n".join(merged[n])) > conflict_blocks("\n".join(current[n]))
        )  # fmt: skip
        facts = MergeFacts(
            changed_files=changed, marker_files=markers,
            result_is_base=effect.resolving is not None and result == start,
        )  # fmt: skip
        verdict = judge_merge(facts, resolving=effect.resolving, summary=effect.result.summary)
        if not verdict.accepted:
            original = effect.resolving
            return MergeConflict(
                run_id="r", task_id=effect.task_id, attempt=effect.attempt,
                files=original.files if original else markers, ours=head,
                theirs=original.theirs if original else result, policy="resolve",
                problem=verdict.problem,
            )  # fmt: skip
        if verdict.brought_changes:
            self.repo.head = self.repo.commit(merged, head)
        return TaskMerged(
            run_id="r", task_id=effect.task_id, attempt=effect.attempt, commit=self.repo.head,
            integration_branch="claudecluster/r", brought_changes=verdict.brought_changes,
            note=verdict.note,
        )  # fmt: skip

    def run(self, tasks: tuple[TaskSpec, ...], policy: RunPolicy) -> Event:
        self.repo.commits["c0"] = dict.fromkeys(FILES, ("base",))
        pending = self.feed(RunSubmitted(run_id="r", goal="g", repo="/r", plan=tasks,
                                         policy=policy))  # fmt: skip
        for _ in range(400):
            while pending:
                pending += self.carry_out(pending.pop(0))
            end = next((e for e in self.events if isinstance(e, RunCompleted | RunFailed)), None)
            if end is not None:
                return end
            self.now += timedelta(seconds=1)
            pending = decide(self.state, Tick(), self.now)
        raise AssertionError("the run never ended")


outcomes = st.lists(
    st.sampled_from(["nothing", "markers", "resolve", "keep", "keep_silently"]), max_size=12
)


@settings(max_examples=150, deadline=None)
@given(
    files=st.lists(st.sampled_from(FILES), min_size=2, max_size=5),
    drawn=outcomes,
    max_attempts=st.integers(min_value=1, max_value=4),
)
def test_every_task_s_change_is_on_the_branch_or_the_run_says_why_not(
    files: list[str], drawn: list[Outcome], max_attempts: int
) -> None:
    task_files = {f"t{i}": name for i, name in enumerate(files)}
    tasks = tuple(
        TaskSpec(task_id=t, title=t, prompt=f"write {t}", executor="shell") for t in task_files
    )
    world = World(outcomes=list(drawn), files=task_files)
    end = world.run(tasks, RunPolicy(max_attempts=max_attempts, file_overlap="warn"))
    branch = world.repo.commits[world.repo.head]
    warned = dict(merge_warnings(world.state.view_of("r"), "r"))
    merged = {e.task_id: e for e in world.events if isinstance(e, TaskMerged)}
    for task_id, name in task_files.items():
        present = task_id in branch[name]
        record = merged.get(task_id)
        if record is not None and record.brought_changes:
            # Merged with changes: its line is there, unless a later task overwrote the
            # whole file after merging on top of it (then that task's base held it).
            overwritten = any(
                later.brought_changes and task_files[later.task_id] == name
                and world.events.index(later) > world.events.index(record)
                for later in merged.values()
            )  # fmt: skip
            assert present or overwritten, f"{task_id} recorded as merged, but absent"
        elif record is not None:
            assert warned.get(task_id), f"{task_id} merged without changes, not reported"
        else:
            # Not merged: only a run that failed, saying on which task it stopped.
            assert isinstance(end, RunFailed), f"{task_id} never merged, yet the run completed"
            assert "still conflicts" in end.reason
            assert any(f"task {t!r}" in end.reason for t in task_files)
    for name in FILES:
        assert conflict_blocks("\n".join(branch[name])) == 0
