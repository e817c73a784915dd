"""The integration branch: where a run's task results are merged, one at a time.

All work happens in a private worktree of the user's repository (under the driver's
work directory), so the user's checkout and current branch are never touched; only the
ref ``refs/heads/claudecluster/<run>`` moves, and only with a compare-and-swap on its
old value. Each merge is one squashed commit per task whose message carries a
``ClaudeCluster-Task: <run>/<task>/<attempt>`` trailer, so a driver that crashed after
moving the branch but before recording the merge finds it again instead of merging twice.

The verify command runs code from the merged tree, that is code agents wrote, so it is
never started here: a :class:`VerifyRunner` the driver hands in runs it confined like an
attempt (``executors/confined.py``) and returns its masked output, which this module cuts
to a short tail before it goes into a verdict (and so into a recorded event).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Final, Protocol

import anyio

from claudecluster.errors import WorkspaceError
from claudecluster.workspace.git import git, git_status

__all__ = [
    "Integration",
    "MergeOutcome",
    "VerifyOutcome",
    "VerifyRunner",
]

_TRAILER: Final = "ClaudeCluster-Task"
_OUTPUT_TAIL: Final = 2000


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
        commit: the integration branch's new head (None on a conflict).
        conflict_files: the files that conflicted (empty on success).
        already: the merge had been made before (found by its trailer).
    """

    commit: str | None
    conflict_files: tuple[str, ...] = ()
    already: bool = False


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
        if not (self.worktree / ".git").exists():
            await anyio.Path(self.worktree.parent).mkdir(parents=True, exist_ok=True)
            await git_status(self.repo, "worktree", "prune")
            await git(
                self.repo, "worktree", "add", "--quiet", "--detach", str(self.worktree), commit
            )
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

        With ``verify``, the command runs on the merged tree first; if it fails the branch
        does not move (the merge is undone) and the verdict says why.

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
        await self._checkout(head)
        code, _, _ = await git_status(self.worktree, "merge", "--squash", "--quiet", theirs)
        if code != 0:
            files = await self._conflicted()
            await git(self.worktree, "reset", "--quiet", "--hard")
            if files:
                return MergeOutcome(commit=None, conflict_files=files), None
            raise WorkspaceError(f"git merge of {theirs[:12]} failed without conflicting files")
        await git(
            self.worktree, "commit", "--quiet", "--no-verify", "--allow-empty",
            "-m", f"{message}\n\n{_TRAILER}: {key}",
        )  # fmt: skip
        merged = (await git(self.worktree, "rev-parse", "HEAD")).strip()
        verdict = None
        if verify:
            verdict = await self._verify(verify, verify_timeout_s)
            if not verdict.passed:
                return MergeOutcome(commit=None), verdict
        await git(self.repo, "update-ref", self.ref, merged, head)
        return MergeOutcome(commit=merged), verdict

    async def conflicted_merge(self, ours: str, theirs: str, message: str) -> str:
        """A commit holding the merge of ``theirs`` into ``ours`` with its conflict markers.

        A resolution attempt starts from it: the agent sees both sides where they collide.

        Raises:
            WorkspaceError: git failed.
        """
        await self._checkout(ours)
        await git_status(self.worktree, "merge", "--no-ff", "--no-commit", "--quiet", theirs)
        await git(self.worktree, "add", "--all")
        await git(self.worktree, "commit", "--quiet", "--no-verify", "--allow-empty", "-m", message)
        commit = (await git(self.worktree, "rev-parse", "HEAD")).strip()
        await git(self.repo, "update-ref", f"refs/claudecluster/conflict/{commit}", commit)
        return commit

    async def verify_head(self, command: str, timeout_s: float) -> VerifyOutcome:
        """Run the verify command on the branch's current head."""
        await self._checkout(await self.head())
        return await self._verify(command, timeout_s)

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

    async def _verify(self, command: str, timeout_s: float) -> VerifyOutcome:
        if self._run_verify is None:
            raise WorkspaceError("a verify command needs a runner to confine it; none is set")
        common = Path((await git(self.worktree, "rev-parse", "--git-common-dir")).strip())
        if not common.is_absolute():
            common = (self.worktree / common).resolve()
        code, output = await self._run_verify(self.worktree, common, command, timeout_s)
        output = output[-_OUTPUT_TAIL:]
        if code is None:
            return VerifyOutcome(False, f"the verify command took longer than {timeout_s:.0f}s")
        if code != 0:
            return VerifyOutcome(False, f"the verify command exited with status {code}: {output}")
        return VerifyOutcome(True, output)
