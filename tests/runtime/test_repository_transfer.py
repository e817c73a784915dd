"""Moving a repository's history to worker hosts: once per host, increments after that.

End to end: a real nats-server, the real driver and real workers in this process, real
git on a generated repository of some tens of MB with history (random blobs, so the pack
does not compress away). What is asserted is bytes moved and objects stored, not time.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any

import anyio
import nats.js.errors
import pytest

from claudecluster.events import RunCompleted, RunFailed, TaskMerged
from claudecluster.runtime.worker import Worker
from claudecluster.transport.artifacts import artifact_key
from claudecluster.transport.jetstream import JetStreamEventLog
from tests.runtime.test_driver import Cluster, open_cluster, running_driver, shell
from tests.support import commit_all, git_output, make_repo

pytestmark = pytest.mark.nats

_MB = 1 << 20
#: generous: the driver removes the bundles right after recording the run's end, but a
#: loaded machine stalls the server for seconds at a time
CLEANUP_LIMIT_S = 120.0


def generated_repo(path: Path, commits: int, blob_bytes: int) -> Path:
    """A repository of ``commits`` commits, each adding one random blob, by fast-import."""
    path.mkdir(parents=True)
    git_output(path, "init", "-q", "-b", "main")
    stream = bytearray()
    for n in range(1, commits + 1):
        blob = os.urandom(blob_bytes)
        message = f"commit {n}\n".encode()
        stream += b"commit refs/heads/main\n"
        stream += b"committer Gen <gen@example.com> %d +0000\n" % (1_700_000_000 + n)
        stream += b"data %d\n%s" % (len(message), message)
        if n == 1:
            readme = b"generated\n"
            stream += b"M 100644 inline README.md\ndata %d\n%s\n" % (len(readme), readme)
        stream += b"M 100644 inline blobs/%05d.bin\ndata %d\n" % (n, len(blob)) + blob + b"\n"
    subprocess.run(["git", "-C", str(path), "fast-import", "--quiet"], input=bytes(stream),
                   check=True)  # fmt: skip
    git_output(path, "checkout", "-q", "main")
    return path


def _fetched(workers: list[Worker]) -> tuple[int, int]:
    bundles = sum(w.preparation.transferred.bundles for w in workers)
    size = sum(w.preparation.transferred.bytes for w in workers)
    return bundles, size


async def _stored(cluster: Cluster) -> dict[str, int]:
    store = await cluster.js.object_store("cc_artifacts")
    try:
        listing = await store.list()
    except nats.js.errors.NotFoundError:  # what nats-py says of an empty bucket
        return {}
    return {info.name: info.size for info in listing if not info.deleted}


async def test_the_second_run_on_a_host_moves_no_history_and_the_store_holds_it_once(
    world: tuple[JetStreamEventLog, Any], tmp_path: Path
) -> None:
    repo = generated_repo(tmp_path / "repo", commits=120, blob_bytes=200_000)  # ~24 MB
    tasks = [shell(f"t{n}", f"echo {n} > out{n}.txt") for n in range(4)]
    async with open_cluster(world, repo, tmp_path, workers=2) as cluster:
        workers = cluster.workers
        async with running_driver(cluster):
            await cluster.submit("first", tasks)
            events = await cluster.wait_end("first", limit_s=300)
            assert any(isinstance(e, RunCompleted) and e.run_id == "first" for e in events)
            assert sum(isinstance(e, TaskMerged) and e.run_id == "first" for e in events) == 4
            bundles, history = _fetched(workers)
            # The history crossed to the host once (both workers share its cache); later
            # bases (the integration branch after merges) came as small increments.
            stored = await _stored(cluster)
            big = [name for name, size in stored.items() if size > _MB]
            assert len(big) == 1
            assert big[0].startswith("repos/")
            assert history > 20 * _MB
            assert history < stored[big[0]] + _MB  # fetched once, not once per worker
            first_bytes = history
            # The run's result bundles are removed once it ended; its diffstats stay.
            left: list[str] = []
            with anyio.move_on_after(CLEANUP_LIMIT_S):
                while True:
                    # This run's: the session's server is shared with other tests' runs.
                    left = [n for n in await _stored(cluster)
                            if n.startswith("first/") and n.endswith("result.bundle")]  # fmt: skip
                    if not left:
                        break
                    await anyio.sleep(0.1)
            assert left == [], f"result bundles left after the run ended: {left}"
            # Every merged attempt's diffstat stays (a busy machine may have run a task
            # twice: the diffstats of attempts that did not merge may stay too).
            merged = [e for e in events if isinstance(e, TaskMerged) and e.run_id == "first"]
            names = set(await _stored(cluster))
            assert {
                artifact_key("first", e.task_id, e.attempt, "diffstat.json") for e in merged
            } <= names

            await cluster.submit("second", [shell("again", "echo again > again.txt")])
            events = await cluster.wait_end("second", limit_s=300)
            assert any(isinstance(e, RunCompleted) and e.run_id == "second" for e in events)
            _, after = _fetched(workers)
            assert after - first_bytes < 64 * 1024  # no history: at most one increment
            big = [n for n, size in (await _stored(cluster)).items() if size > _MB]
            assert len(big) == 1  # the object store still holds the history once
    assert bundles >= 1
    assert not any(isinstance(e, RunFailed) for e in events)


def _corrupt(repo: Path) -> str:
    """Lose one blob of an older commit; returns its id."""
    (repo / "a.txt").write_text("second\n")
    commit_all(repo, "change")
    lost = git_output(repo, "rev-parse", "HEAD~1:a.txt").strip()
    (repo / ".git" / "objects" / lost[:2] / lost[2:]).unlink()
    return lost


def _with_submodule(tmp_path: Path) -> Path:
    inner = make_repo(tmp_path / "inner", {"lib.txt": "x\n"})
    outer = make_repo(tmp_path / "outer", {"main.txt": "y\n"})
    git_output(outer, "-c", "protocol.file.allow=always", "submodule", "add", "-q",
               str(inner), "vendor/inner")  # fmt: skip
    commit_all(outer, "submodule")
    return outer


@pytest.mark.parametrize("case", ["corrupt", "submodule", "lfs"])
async def test_a_base_workers_could_not_reproduce_fails_the_run_naming_why(
    world: tuple[JetStreamEventLog, Any], tmp_path: Path, case: str
) -> None:
    expected: str
    if case == "corrupt":
        repo = make_repo(tmp_path / "repo", {"a.txt": "first\n"})
        expected = f"corrupt object {_corrupt(repo)}"
    elif case == "submodule":
        repo = _with_submodule(tmp_path)
        expected = "submodules (vendor/inner)"
    else:
        repo = make_repo(tmp_path / "repo", {".gitattributes": "*.bin filter=lfs -text\n"})
        expected = "Git LFS"
    async with (
        open_cluster(world, repo, tmp_path, workers=1) as cluster,
        running_driver(cluster),
    ):
        await cluster.submit("refused", [shell("t", "true")])
        events = await cluster.wait_end("refused")
    [failed] = [e for e in events if isinstance(e, RunFailed) and e.run_id == "refused"]
    assert expected in failed.reason
    assert "pack-objects died" not in failed.reason
    assert sum(w.preparation.transferred.bundles for w in cluster.workers) == 0
