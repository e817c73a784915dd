"""The integration branch: where a run's task results are merged, one at a time.

All work happens in a private worktree of the user's repository (under the driver's
work directory), so the user's checkout and current branch are never touched; only the
ref ``refs/heads/claudecluster/<run>`` moves, and only with a compare-and-swap on its
old value. Each merge is one squashed commit per task whose message carries a
``ClaudeCluster-Task: <run>/<task>/<attempt>`` trailer, so a driver that crashed after
moving the branch but before recording the merge finds it again instead of merging twice.

No merge commits a tree in which a file it changes holds more conflict blocks than it did
before (see :mod:`claudecluster.workspace.markers`), whatever the task or a resolution
attempt left behind, and a merge that would change nothing does not move the branch: the
outcome says so, and the caller decides whether that counts.

The verify command runs code from the merged tree, that is code agents wrote, so it is
never started here: a :class:`VerifyRunner` the driver hands in runs it confined like an
attempt (``executors/confined.py``) and returns its masked output, which this module cuts
to a short tail before it goes into a verdict (and so into a recorded event).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Protocol

import anyio

from claudecluster.errors import WorkspaceError
from claudecluster.workspace.git import git, git_status
from claudecluster.workspace.markers import conflict_blocks

__all__ = [
    "Integration",
    "clip_output",
    "MergeOutcome",
    "VerifyOutcome",
    "VerifyRunner",
]

_TRAILER: Final = "ClaudeCluster-Task"
_OUTPUT_TAIL: Final = 2000
#: A file whose first bytes hold a NUL is binary: git writes no markers into it.
_BINARY_PROBE: Final = 8000


class VerifyRunner(Protocol):
    """Runs a verify command in a worktree, confined; says how it ended."""

    async def __call__(
        self, worktree: Path, git_dir: Path, command: str, timeout_s: float
    ) -> tuple[int | None, str]:
        """Run ``command`` in ``worktree`` (``git_dir`` readable) for up to ``timeout_s``.

        Returns:
            its exit status (None: it ran out of time and was ended) and the end of its
            output, with secrets masked.
        """
        ...


@dataclass(frozen=True, slots=True)
class MergeOutcome:
    """How merging one task result went.

    Attributes:
        commit: the integration branch's new head (None when it did not move).
        conflict_files: the files that conflicted (empty on success).
        already: the merge had been made before (found by its trailer).
        changed_files: the files the merge changes against the head.
        marker_files: changed files that hold more conflict blocks than before; the merge
            was refused.
        unchanged: the merge would change nothing; the branch was left as it was.
    """

    commit: str | None
    conflict_files: tuple[str, ...] = ()
    already: bool = False
    changed_files: tuple[str, ...] = ()
    marker_files: tuple[str, ...] = ()
    unchanged: bool = False


@dataclass(frozen=True, slots=True)
class VerifyOutcome:
    """The verify command's verdict and the end of its output."""

    passed: bool
    output: str


class Integration:
    """Merges task results onto one run's integration branch.

    Args:
        repo: the user's repository.
        worktree: a private directory for the integration worktree.
        branch: the integration branch (``claudecluster/<run>``).
        run_verify: runs verify commands confined (None: a verify command is refused).
    """

    def __init__(
        self, repo: Path, worktree: Path, branch: str, *, run_verify: VerifyRunner | None = None
    ) -> None:
        self.repo = repo
        self.worktree = worktree
        self.branch = branch
        # git's worktree commands are not safe to run at once on one repository.
        self._worktrees = anyio.Lock()
        #: the commit the worktree is known to be clean at (a commit just made there), so
        #: the next result of a batch stacks on it without a reset, clean and checkout
        self._clean_at: str | None = None
        #: numbers the throwaway worktrees, so two at once never share a directory
        self._scratch = 0
        self._run_verify = run_verify

    async def start(self, base_commit: str) -> None:
        """Create the branch at ``base_commit``, unless it already exists there or later.

        Raises:
            WorkspaceError: the branch exists but does not contain ``base_commit``.
        """
        code, head, _ = await git_status(self.repo, "rev-parse", "--verify", "-q", self.ref)
        if code != 0:
            await git(self.repo, "update-ref", self.ref, base_commit, "")
            return
        contains, _, _ = await git_status(
            self.repo, "merge-base", "--is-ancestor", base_commit, head.strip()
        )
        if contains != 0:
            raise WorkspaceError(
                f"branch {self.branch} already exists and does not start at {base_commit[:12]}:"
                " delete it or choose another run id"
            )

    @property
    def ref(self) -> str:
        """The branch's full ref name."""
        return f"refs/heads/{self.branch}"

    async def head(self) -> str:
        """The branch's current commit."""
        return (await git(self.repo, "rev-parse", self.ref)).strip()

    async def _checkout(self, commit: str) -> None:
        """A clean worktree at ``commit`` (detached: the branch moves only by CAS)."""
        clean, self._clean_at = self._clean_at, None  # whoever checks out changes the tree
        if commit == clean:
            return
        if not (self.worktree / ".git").exists():
            await anyio.Path(self.worktree.parent).mkdir(parents=True, exist_ok=True)
            async with self._worktrees:
                await git_status(self.repo, "worktree", "prune")
                await git(
                    self.repo, "worktree", "add", "--quiet", "--detach", str(self.worktree),
                    commit,
                )  # fmt: skip
            return
        await git_status(self.worktree, "merge", "--abort")
        await git(self.worktree, "reset", "--quiet", "--hard")
        await git(self.worktree, "clean", "-fdxq")
        await git(self.worktree, "checkout", "--quiet", "--detach", commit)

    async def find_merged(self, since: str, key: str) -> str | None:
        """The commit after ``since`` on the branch that merged ``key`` (run/task/attempt)."""
        log = await git(
            self.repo, "log", "--format=%H", f"--grep={_TRAILER}: {key}$", f"{since}..{self.ref}"
        )
        found = log.split()
        return found[0] if found else None

    async def merge(
        self, *, head: str, theirs: str, key: str, message: str, verify: str | None,
        verify_timeout_s: float = 600.0,
    ) -> tuple[MergeOutcome, VerifyOutcome | None]:  # fmt: skip
        """Squash-merge ``theirs`` onto the branch, expected at ``head``.

        A merge that leaves conflict markers in a file it changes is refused
        (``marker_files``), and one that changes nothing is not committed (``unchanged``);
        in both cases the branch stays at ``head``. With ``verify``, the command runs on
        the merged tree first; if it fails the branch does not move (the merge is undone)
        and the verdict says why.

        Raises:
            WorkspaceError: git failed, or the branch moved away from ``head`` meanwhile.
        """
        current = await self.head()
        if current != head:
            already = await self.find_merged(head, key)
            if already is not None:
                return MergeOutcome(commit=already, already=True), None
            raise WorkspaceError(
                f"branch {self.branch} is at {current[:12]}, expected {head[:12]}: "
                "something else moved it"
            )
        stacked = await self.stack(onto=head, theirs=theirs, key=key, message=message)
        if stacked.commit is None:
            return stacked, None
        verdict = None
        if verify:
            verdict = await self._verify(verify, verify_timeout_s)
            if not verdict.passed:
                return MergeOutcome(commit=None, changed_files=stacked.changed_files), verdict
        await self.advance(stacked.commit, head)
        return stacked, verdict

    async def stack(self, *, onto: str, theirs: str, key: str, message: str) -> MergeOutcome:
        """Squash-merge ``theirs`` onto the commit ``onto`` without moving the branch.

        The merge queue stacks a batch of results this way, one commit per task, verifies
        the top, and moves the branch with :meth:`advance` to the last commit that passed.
        The worktree is left at the new commit. A conflict, leftover markers or no change
        at all make no commit (``commit`` is None; the outcome says which).

        Raises:
            WorkspaceError: git failed.
        """
        await self._checkout(onto)
        code, _, _ = await git_status(self.worktree, "merge", "--squash", "--quiet", theirs)
        if code != 0:
            files = await self._conflicted()
            await git(self.worktree, "reset", "--quiet", "--hard")
            if files:
                return MergeOutcome(commit=None, conflict_files=files)
            raise WorkspaceError(f"git merge of {theirs[:12]} failed without conflicting files")
        changed = await self._staged_changes()
        markers = await self._marker_files(onto, changed)
        if markers or not changed:
            await git(self.worktree, "reset", "--quiet", "--hard")
            return MergeOutcome(
                commit=None, changed_files=changed, marker_files=markers, unchanged=not changed
            )
        await git(
            self.worktree, "commit", "--quiet", "--no-verify", "--allow-empty",
            "-m", f"{message}\n\n{_TRAILER}: {key}",
        )  # fmt: skip
        merged = (await git(self.worktree, "rev-parse", "HEAD")).strip()
        self._clean_at = merged
        return MergeOutcome(commit=merged, changed_files=changed)

    async def advance(self, to: str, expected: str) -> None:
        """Move the branch from ``expected`` to ``to`` (compare-and-swap).

        Raises:
            WorkspaceError: the branch is no longer at ``expected``, or git failed.
        """
        await git(self.repo, "update-ref", self.ref, to, expected)

    async def verify_at(self, commit: str, command: str, timeout_s: float) -> VerifyOutcome:
        """Run the verify command on ``commit``'s tree (a commit the queue stacked)."""
        await self._checkout(commit)
        return await self._verify(command, timeout_s)

    async def _staged_changes(self) -> tuple[str, ...]:
        """The files the staged merge changes against the worktree's HEAD."""
        out = await git(self.worktree, "diff", "--cached", "--name-only", "--no-renames", "-z")
        return tuple(sorted(name for name in out.split("\0") if name))

    async def _marker_files(self, head: str, changed: tuple[str, ...]) -> tuple[str, ...]:
        """The changed files holding more complete conflict blocks than they did at ``head``.

        Compared with the file's old content, so a file that already held markers on
        purpose (a test fixture of a merge tool, say) can still be edited.
        """
        found: list[str] = []
        for name in changed:
            new = await _read_text(self.worktree / name)
            if new is None:
                continue  # deleted, or binary
            blocks = conflict_blocks(new)
            if blocks == 0:
                continue
            code, old, _ = await git_status(self.worktree, "show", f"{head}:{name}")
            if blocks > (conflict_blocks(old) if code == 0 else 0):
                found.append(name)
        return tuple(found)

    async def conflicted_merge(self, ours: str, theirs: str, message: str) -> str:
        """A commit holding the merge of ``theirs`` into ``ours`` with its conflict markers.

        A resolution attempt starts from it: the agent sees both sides where they collide.
        It is made in a worktree of its own, removed after: resolutions are dispatched while
        the run's merge lane uses the integration worktree, and the two must not share one.

        Raises:
            WorkspaceError: git failed.
        """
        where = self._scratch_dir("conflict", theirs)
        await anyio.Path(where.parent).mkdir(parents=True, exist_ok=True)
        async with self._worktrees:
            await git_status(self.repo, "worktree", "remove", "--force", str(where))
            await git(self.repo, "worktree", "add", "--quiet", "--detach", str(where), ours)
        try:
            await git_status(where, "merge", "--no-ff", "--no-commit", "--quiet", theirs)
            await git(where, "add", "--all")
            await git(where, "commit", "--quiet", "--no-verify", "--allow-empty", "-m", message)
            commit = (await git(where, "rev-parse", "HEAD")).strip()
            await git(self.repo, "update-ref", f"refs/claudecluster/conflict/{commit}", commit)
        finally:
            with anyio.CancelScope(shield=True):
                async with self._worktrees:
                    await git_status(self.repo, "worktree", "remove", "--force", str(where))
        return commit

    async def verify_head(self, command: str, timeout_s: float) -> VerifyOutcome:
        """Run the verify command on the branch's current head."""
        await self._checkout(await self.head())
        return await self._verify(command, timeout_s)

    async def verify_isolated(self, commit: str, command: str, timeout_s: float) -> VerifyOutcome:
        """Run the verify command on ``commit`` in a worktree of its own, removed after.

        For verify runs at once (bisecting a batch): each needs its own tree.

        Raises:
            WorkspaceError: git failed to make the worktree.
        """
        where = self._scratch_dir("probe", commit)
        async with self._worktrees:
            await git_status(self.repo, "worktree", "remove", "--force", str(where))
            await git(self.repo, "worktree", "add", "--quiet", "--detach", str(where), commit)
        try:
            return await self._verify(command, timeout_s, where)
        finally:
            with anyio.CancelScope(shield=True):
                async with self._worktrees:
                    await git_status(self.repo, "worktree", "remove", "--force", str(where))

    def _scratch_dir(self, purpose: str, commit: str) -> Path:
        """A directory for a throwaway worktree that no other one uses at the same time
        (two probes of one batch may verify the same commit)."""
        self._scratch += 1
        return self.worktree.parent / f"{purpose}-{self._scratch}-{commit[:12]}"

    async def move_to(self, commit: str) -> None:
        """Point the branch at ``commit`` (a rollback).

        Raises:
            WorkspaceError: git failed (say, the commit does not exist).
        """
        await git(self.repo, "update-ref", self.ref, commit)

    async def close(self) -> None:
        """Remove the worktree (the branch stays)."""
        if self.worktree.exists():
            await git_status(self.repo, "worktree", "remove", "--force", str(self.worktree))

    async def _conflicted(self) -> tuple[str, ...]:
        out = await git(self.worktree, "diff", "--name-only", "--diff-filter=U")
        return tuple(line for line in out.splitlines() if line)

    async def _verify(
        self, command: str, timeout_s: float, where: Path | None = None
    ) -> VerifyOutcome:
        if self._run_verify is None:
            raise WorkspaceError("a verify command needs a runner to confine it; none is set")
        if where is None:
            self._clean_at = None  # the command may leave files behind
        tree = where or self.worktree
        common = Path((await git(tree, "rev-parse", "--git-common-dir")).strip())
        if not common.is_absolute():
            common = (tree / common).resolve()
        code, output = await self._run_verify(tree, common, command, timeout_s)
        output = clip_output(output)
        if code is None:
            return VerifyOutcome(False, f"the verify command took longer than {timeout_s:.0f}s")
        if code != 0:
            return VerifyOutcome(False, f"the verify command exited with status {code}: {output}")
        return VerifyOutcome(True, output)


async def _read_text(path: Path) -> str | None:
    """A file's text, or None if it is missing, not a regular file, or binary."""
    target = anyio.Path(path)
    if await target.is_symlink() or not await target.is_file():
        return None
    data = await target.read_bytes()
    if b"\0" in data[:_BINARY_PROBE]:
        return None
    return data.decode(errors="replace")


def clip_output(
    raw: bytes | str, *, limit: int = _OUTPUT_TAIL, redact: Callable[[str], str] | None = None
) -> str:
    """What is kept of a command's output before it is recorded: redacted, then its end.

    The one place the verify command's output is cut down, so that every caller records
    it the same way. ``redact`` (a :class:`~claudecluster.observability.redaction.Redactor`'s
    ``text``, say) runs on the whole text first, so a secret cut in half by the
    limit cannot slip through.
    """
    text = raw.decode(errors="replace") if isinstance(raw, bytes) else raw
    if redact is not None:
        text = redact(text)
    return text[-limit:] if len(text) > limit else text
