"""``status`` without a reference lists every open run and the newest finished ones: a
cluster finishes runs by the thousand, and a listing of all of them (``--all``) is the
exception. The installed CLI against a real server, with and without the runs index."""

from __future__ import annotations

import json
from pathlib import Path

import nats
import pytest

from claudecluster.events import RunFailed, RunPlanned, RunSubmitted, TaskSpec
from claudecluster.projections import replay
from claudecluster.runtime.reads import write_view_snapshot
from claudecluster.transport.base import read_all
from claudecluster.transport.jetstream import JetStreamEventLog
from claudecluster.transport.snapshots import JetStreamSnapshotStore
from tests.cli.test_cli import cli
from tests.support import EnvelopeFactory

make = EnvelopeFactory("listing")
#: In order of submission; every one but the last has finished.
_RUNS = ("old-a", "old-b", "old-c", "new-a", "live")


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"  # the JetStream log: nats-py runs on asyncio only


async def _cluster(log: JetStreamEventLog) -> None:
    spec = TaskSpec(task_id="t", title="t", prompt="p")
    for run_id in _RUNS:
        await log.append(make(RunSubmitted(run_id=run_id, goal=f"goal of {run_id}", repo="/r")))
        await log.append(
            make(RunPlanned(run_id=run_id, tasks=(spec,), base_commit="b", integration_branch="i"))
        )
        if run_id != "live":
            await log.append(make(RunFailed(run_id=run_id, reason="r")))


def _listed(stdout: str) -> list[str]:
    """The run ids of a ``status`` table, top to bottom."""
    return [
        line.split()[0] for line in stdout.splitlines() if line.split()[:1] in ([r] for r in _RUNS)
    ]


async def _index(log: JetStreamEventLog, nats_url: str) -> None:
    """Write the runs index the front doors keep, covering the whole log."""
    stored = await read_all(log)
    client = await nats.connect(nats_url)
    try:
        store = JetStreamSnapshotStore(client.jetstream())
        await write_view_snapshot(store, replay(stored), stored[-1].envelope.id)
    finally:
        await client.close()


@pytest.mark.parametrize("indexed", [False, True], ids=["from the view", "from the index"])
async def test_status_lists_every_open_run_and_the_newest_finished_ones(
    jetstream_log: JetStreamEventLog, nats_url: str, tmp_path: Path, indexed: bool
) -> None:
    await _cluster(jetstream_log)
    if indexed:
        await _index(jetstream_log, nats_url)
    shown = cli("status", "--limit", "2", "--nats", nats_url, cwd=tmp_path)
    assert shown.returncode == 0, shown.stderr
    assert _listed(shown.stdout) == ["old-c", "new-a", "live"]
    assert "2 older finished run(s) not shown: --all lists every run" in shown.stdout
    every = cli("status", "--all", "--nats", nats_url, cwd=tmp_path)
    assert _listed(every.stdout) == list(_RUNS)
    assert "not shown" not in every.stdout
    default = cli("status", "--nats", nats_url, cwd=tmp_path)
    assert _listed(default.stdout) == list(_RUNS)  # fewer than the default limit
    as_json = cli("status", "--json", "--limit", "1", "--nats", nats_url, cwd=tmp_path)
    assert [run["run_id"] for run in json.loads(as_json.stdout)] == ["new-a", "live"]
    none = cli("status", "--limit", "0", "--nats", nats_url, cwd=tmp_path)
    assert _listed(none.stdout) == ["live"]
    assert "4 older finished run(s) not shown" in none.stdout


def test_a_negative_limit_is_refused_naming_the_flag(tmp_path: Path) -> None:
    refused = cli("status", "--limit", "-1", "--nats", "nats://127.0.0.1:1", cwd=tmp_path)
    assert refused.returncode == 2
    assert "--limit" in refused.stderr
