"""The worker's stores wait out an unavailable store (a failover, a cut link) and fail at
once on anything else; on trio's virtual clock, so the patience costs no real time."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio
import pytest
import trio.testing

from claudecluster.errors import EventStoreError, StoreUnavailableError
from claudecluster.events import TaskSpec
from claudecluster.events.work import WorkItem
from claudecluster.runtime.base_transfer import RepositoryChains
from claudecluster.runtime.patience import (
    STORE_PATIENCE_S,
    PatientArtifacts,
    PatientSessions,
)
from claudecluster.runtime.workspace_preparation import Preparation
from claudecluster.transport.artifacts import MemoryArtifactStore
from claudecluster.transport.transcripts import MemoryTranscriptStore
from tests.support import git_output, make_repo

if TYPE_CHECKING:
    from claude_agent_sdk import SessionKey

KEY: SessionKey = {"project_key": "r/t", "session_id": "s1"}
ENTRY: dict[str, Any] = {"type": "user", "uuid": "u1", "message": {"content": "hi"}}


#: The store-only tests run on trio's virtual clock: the patience costs no real time.
virtual = pytest.mark.parametrize(
    "anyio_backend",
    [pytest.param(("trio", {"clock": trio.testing.MockClock(autojump_threshold=0)}), id="trio")],
)


class _Flaky:
    """Forwards to ``inner``; the first ``failures`` calls raise ``error`` instead."""

    def __init__(self, inner: object, failures: int, error: Callable[[], Exception]) -> None:
        self._inner, self._failures, self._error = inner, failures, error
        self.calls = 0

    def __getattr__(self, name: str) -> Any:
        method = getattr(self._inner, name)

        async def call(*args: Any, **kwargs: Any) -> Any:
            self.calls += 1
            if self.calls <= self._failures:
                raise self._error()
            return await method(*args, **kwargs)

        return call


def _unavailable() -> Exception:
    return StoreUnavailableError("cannot read CC_SESSIONS: TimeoutError()")


@virtual
@pytest.mark.anyio
async def test_a_transcript_is_stored_and_read_through_a_failover() -> None:
    flaky = _Flaky(MemoryTranscriptStore(), failures=3, error=_unavailable)
    sessions = PatientSessions(flaky)
    started = anyio.current_time()
    await sessions.append(KEY, [ENTRY])  # type: ignore[list-item]
    assert flaky.calls == 4  # three unavailable, then stored
    assert await sessions.load(KEY) == [ENTRY]
    assert anyio.current_time() - started < STORE_PATIENCE_S


@virtual
@pytest.mark.anyio
async def test_a_store_unavailable_past_the_patience_fails_with_its_error() -> None:
    flaky = _Flaky(MemoryTranscriptStore(), failures=10**6, error=_unavailable)
    sessions = PatientSessions(flaky, patience_s=30)
    started = anyio.current_time()
    with pytest.raises(StoreUnavailableError, match="cannot read CC_SESSIONS"):
        await sessions.load(KEY)
    waited = anyio.current_time() - started
    assert 25 <= waited <= 30  # it waited about as long as it was told, no longer
    assert flaky.calls > 10  # asking again every two seconds at most


@virtual
@pytest.mark.anyio
async def test_a_failure_that_is_not_unavailability_is_not_waited_for() -> None:
    store = MemoryArtifactStore()
    ref = await store.put("k", "k.bundle", b"data")
    corrupt = _Flaky(store, failures=1, error=lambda: EventStoreError("does not match"))
    artifacts = PatientArtifacts(corrupt)
    started = anyio.current_time()
    with pytest.raises(EventStoreError, match="does not match"):
        await artifacts.get(ref)
    assert (corrupt.calls, anyio.current_time()) == (1, started)


@virtual
@pytest.mark.anyio
async def test_artifacts_wait_out_a_failover_but_a_streamed_read_is_tried_once() -> None:
    store = MemoryArtifactStore()
    flaky = _Flaky(store, failures=2, error=_unavailable)
    artifacts = PatientArtifacts(flaky)
    ref = await artifacts.put("k", "k.bundle", b"data")
    assert await artifacts.get(ref) == b"data"
    assert flaky.calls == 4
    # A streamed read may have given its sink part of the object: only the caller can
    # discard that, so it is not repeated here.
    streaming = _Flaky(store, failures=1, error=_unavailable)
    got: list[bytes] = []
    with pytest.raises(StoreUnavailableError):
        await PatientArtifacts(streaming).get_into(ref, got.append)
    assert (streaming.calls, got) == (1, [])


@pytest.mark.anyio
async def test_a_history_fetch_cut_short_by_an_unavailable_store_is_made_again(
    tmp_path: Path,
) -> None:
    # The segment is streamed into git as it arrives, so its read cannot be repeated by
    # the store (git has part of it): the workspace's preparation fetches it again, whole.
    repo = make_repo(tmp_path / "repo", {"README.md": "patience\n"})
    commit = git_output(repo, "rev-parse", "HEAD").strip()
    store = MemoryArtifactStore()
    key, segments = await RepositoryChains(store).segments_for(repo, commit, tmp_path / "work")
    flaky = _Flaky(store, failures=1, error=_unavailable)
    preparation = Preparation(flaky, tmp_path / "cache", remotes={})
    item = WorkItem(
        run_id="r", attempt=1, base_commit=commit, repo_key=key, base_segments=segments,
        spec=TaskSpec(task_id="t", title="t", prompt="p", executor="shell"),
    )  # fmt: skip
    workspace = await preparation.workspace(item, "claudecluster/r/t", tmp_path / "ws")
    assert (workspace / "README.md").read_text() == "patience\n"
    assert git_output(workspace, "rev-parse", "HEAD").strip() == commit
    assert flaky.calls >= 2  # the cut read, then the one that brought it
