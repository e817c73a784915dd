"""Three hosts, one run of real Claude Code agents, and the network and the hosts fail.

The scenario is tests/hosts/chaos.py (the benchmark runs it too): a worker host's link
cut and restored, every process of the other worker host killed and the host brought
back, the driver's host partitioned from the NATS majority for 20 s. Every task is merged
exactly once (log and branch agree), the run completes, the driver lives through it all
(it pauses while it cannot reach a quorum), and every event the observer saw while it
went on is still in the log afterwards, at the same place.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.faults.rig import RecordProperty
from tests.hosts.chaos import TASKS, WORKERS_PER_HOST, RunDidNotEndError, run_chaos
from tests.hosts.netns import require_netns

pytestmark = [pytest.mark.faults, pytest.mark.hosts]


async def test_a_run_across_three_hosts_survives_a_cut_link_a_dead_host_and_a_partition(
    tmp_path: Path, record_property: RecordProperty
) -> None:
    require_netns()
    try:
        outcome = await run_chaos(tmp_path)
    except RunDidNotEndError as exc:
        pytest.fail(str(exc), pytrace=False)
    verdict = outcome.verdict
    verdict.report("three hosts, a cut link, a killed host, a partition", record_property)
    record_property("killed_on_w2", len(outcome.killed))
    assert len(outcome.killed) >= 1 + WORKERS_PER_HOST  # the server and the workers at least
    assert verdict.completed is not None
    assert verdict.completed.tasks_succeeded == TASKS, outcome.story
    assert verdict.completion_rate == 1.0, outcome.story
    # No acknowledged event lost: everything the log served while the faults went on is
    # still there, at the sequence it had.
    assert outcome.lost == []
    # The driver lived through the partition (paused, then resumed) rather than exiting.
    assert outcome.driver_exit is None
