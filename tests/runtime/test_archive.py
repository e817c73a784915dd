"""Archiving finished runs: out of the live stream, nothing lost, nothing else changed.

On a real nats-server: two recorded runs in CC_EVENTS, one archived. The archived run's
events are gone from the stream and still read whole (``read_run`` with the archive, the
CLI's ``export`` and ``replay --run``); the other run's events and projections are what
they were; a stream that still denies purges keeps the run live and says why.
"""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest
from nats.js.api import StreamConfig

from claudecluster.domain.lifecycle import RunState
from claudecluster.errors import EventStoreError, UnknownEntityError
from claudecluster.events.envelope import StoredEvent
from claudecluster.events.subjects import run_filter
from claudecluster.projections.cluster import replay
from claudecluster.runtime.archive import (
    archive_name,
    archive_run,
    read_archived_run,
    runs_to_archive,
)
from claudecluster.runtime.reads import read_run, run_of_ref
from claudecluster.transport.artifacts import JetStreamArtifactStore
from claudecluster.transport.base import read_all
from claudecluster.transport.jetstream import JetStreamEventLog
from claudecluster.transport.topology import EVENTS_STREAM, apply_topology, load_topology
from tests.fixtures.sample_runs import happy_path

CLI = Path(sys.executable).parent / "claudecluster"
_CLI_TIMEOUT_S = 120


async def _record_two_runs(log: JetStreamEventLog) -> None:
    for run_id, prefix in (("old-run", "old"), ("other-run", "other")):
        for envelope in happy_path(run_id, prefix).envelopes:
            await log.append(envelope)


def _ids(events: list[StoredEvent]) -> list[tuple[int, str]]:
    return [(e.seq, e.envelope.id) for e in events]


async def test_an_archived_run_leaves_the_stream_and_still_reads_whole(
    jetstream_log: JetStreamEventLog,
) -> None:
    await _record_two_runs(jetstream_log)
    js = jetstream_log._js
    before = await read_all(jetstream_log)
    old_before = await read_run(jetstream_log, "old-run")
    other_before = await read_run(jetstream_log, "other-run")
    archived = await archive_run(jetstream_log, js, "old-run")
    assert (archived.events, archived.first_seq, archived.last_seq) == (
        len(old_before), old_before[0].seq, old_before[-1].seq,
    )  # fmt: skip
    # Gone from the live stream, and only that run's events.
    assert await read_all(jetstream_log, subjects=run_filter("old-run")) == []
    after = await read_all(jetstream_log)
    assert _ids(after) == [(e.seq, e.envelope.id) for e in before if e not in old_before]
    # Still read whole, event for event, from the archive.
    artifacts = JetStreamArtifactStore(js)
    assert await read_run(jetstream_log, "old-run", archive=artifacts) == old_before
    assert await read_archived_run(artifacts, "old-run") == old_before
    found = await run_of_ref(jetstream_log, "old-run/api", archive=artifacts)
    assert found is not None
    assert found[1].runs["old-run"] == replay(old_before).runs["old-run"]
    # The other run reads and projects as before, and so does the whole live log.
    assert await read_run(jetstream_log, "other-run", archive=artifacts) == other_before
    assert replay(after).runs["other-run"] == replay(before).runs["other-run"]
    assert set(replay(after).tasks_of("other-run")) == set(replay(before).tasks_of("other-run"))
    assert "old-run" not in replay(after).runs


async def test_archiving_a_run_the_stream_does_not_have_is_an_error_naming_it(
    jetstream_log: JetStreamEventLog,
) -> None:
    with pytest.raises(UnknownEntityError, match="no-such-run"):
        await archive_run(jetstream_log, jetstream_log._js, "no-such-run")


async def test_only_runs_finished_before_the_cutoff_are_chosen_oldest_first(
    jetstream_log: JetStreamEventLog,
) -> None:
    await _record_two_runs(jetstream_log)
    view = replay(await read_all(jetstream_log))
    ended = {r.run_id: r.finished_at for r in view.runs.values()}
    assert all(at is not None for at in ended.values())
    assert all(r.state == RunState.COMPLETED for r in view.runs.values())
    latest = max(at for at in ended.values() if at is not None)
    assert runs_to_archive(view, now=latest, older_than=timedelta(0)) == sorted(
        ended, key=lambda run: (ended[run], run)
    )
    assert runs_to_archive(view, now=latest, older_than=timedelta(days=1)) == []


async def test_a_stream_that_still_denies_purges_keeps_the_run_live_and_says_why(
    jetstream_log: JetStreamEventLog,
) -> None:
    js = jetstream_log._js
    # The log as an older version created it: purges denied. Applying today's topology
    # must not fail on it (JetStream cannot cancel deny_purge), and keeps it so.
    info = await js.stream_info(EVENTS_STREAM)
    await js.delete_stream(EVENTS_STREAM)
    config: StreamConfig = info.config
    config.deny_purge = True
    await js.add_stream(config)
    await apply_topology(js, load_topology())
    assert (await js.stream_info(EVENTS_STREAM)).config.deny_purge
    await _record_two_runs(jetstream_log)
    live = await read_run(jetstream_log, "old-run")
    with pytest.raises(EventStoreError, match="refused to purge"):
        await archive_run(jetstream_log, js, "old-run")
    assert await read_run(jetstream_log, "old-run") == live
    assert await JetStreamArtifactStore(js).exists(archive_name("old-run"))


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {"PATH": str(CLI.parent) + ":/usr/bin:/bin", "COLUMNS": "400", "HOME": str(cwd)}
    return subprocess.run(
        [str(CLI), *args], cwd=cwd, env=env, capture_output=True, text=True,
        timeout=_CLI_TIMEOUT_S, check=False,
    )  # fmt: skip


async def test_export_and_replay_of_an_archived_run_still_work_from_the_cli(
    jetstream_log: JetStreamEventLog, nats_url: str, tmp_path: Path
) -> None:
    await _record_two_runs(jetstream_log)
    exported = _cli("export", "old-run", "--format", "json", "--nats", nats_url, cwd=tmp_path)
    assert exported.returncode == 0, exported.stderr
    dry = _cli("archive", "--older-than-days", "1", "--dry-run", "--nats", nats_url, cwd=tmp_path)
    assert dry.returncode == 0, dry.stderr
    assert "would archive old-run" in dry.stdout
    assert await read_run(jetstream_log, "old-run")  # a dry run moves nothing
    done = _cli("archive", "--older-than-days", "1", "--nats", nats_url, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "archived old-run" in done.stdout
    assert "archived other-run" in done.stdout
    assert await read_all(jetstream_log, subjects=run_filter("old-run")) == []
    again = _cli("export", "old-run", "--format", "json", "--nats", nats_url, cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout) == json.loads(exported.stdout)
    replayed = _cli("replay", "--run", "old-run", "--nats", nats_url, cwd=tmp_path)
    assert replayed.returncode == 0, replayed.stderr
    assert "run.submitted" in replayed.stdout
    status = _cli("status", "old-run", "--nats", nats_url, cwd=tmp_path)
    assert status.returncode == 0, status.stderr
    assert "completed" in status.stdout


def test_the_archive_lives_apart_from_any_runs_own_artifacts() -> None:
    assert archive_name("r1") == "_archive/runs/r1.jsonl.gz"
    assert not archive_name("r1").startswith("r1/")
