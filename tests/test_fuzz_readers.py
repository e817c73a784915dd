"""Nothing recorded can stop a reader: 100,000 random and mutated messages through every
decoder, the driver and worker cores and the projections.

The million-message run is ``benchmarks/bench_fuzz.py`` (about a minute on one core); this
is the same loop at a tenth of the size, with three seeds so a change meets new inputs.
"""

from __future__ import annotations

import pytest

from tests.fixtures.fuzz import fuzz, sample_events

_MESSAGES = 100_000 // 3


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_no_message_stops_a_reader_and_every_kind_was_fed(seed: int) -> None:
    report = fuzz(_MESSAGES, seed=seed)
    assert report.messages >= _MESSAGES
    # Each decoder refused some and let some through to the cores: the loop exercised both.
    assert set(report.by_decoder) == {"event", "command", "work item", "stored event"}
    assert report.decoded > _MESSAGES // 10
    assert report.anomalies > 0
    assert report.driver_effects > 0
    # The core's guard contains a defect, but contained or not it is one: there are none.
    assert report.core_defects == 0, report.defects


def test_the_samples_the_fuzzer_mutates_are_the_recorded_logs() -> None:
    types = {type(s.envelope.payload).__name__ for s in sample_events()}
    assert {"RunSubmitted", "RunPlanned", "TaskQueued", "TaskMerged", "WorkerLost"} <= types
