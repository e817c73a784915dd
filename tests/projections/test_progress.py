"""Run progress for status displays: counts, elapsed time, the chain still ahead."""

from __future__ import annotations

from datetime import timedelta

from claudecluster.events import TaskMerged
from claudecluster.projections import replay
from claudecluster.projections.progress import run_progress
from tests.fixtures.sample_runs import SAMPLE_START, happy_path


def test_progress_midway_counts_states_and_estimates_the_chain_still_ahead() -> None:
    stored = happy_path().stored()
    # Stop right after the first wave ("schema") merged.
    cut = next(i for i, s in enumerate(stored) if isinstance(s.envelope.payload, TaskMerged))
    view = replay(stored[: cut + 1])
    now = stored[cut].envelope.occurred_at
    progress = run_progress(view, "sample-happy", now)
    assert progress is not None
    assert (progress.total, progress.finished) == (6, 1)
    assert progress.counts == {"merged": 1, "pending": 5}
    # api/cli -> tests -> release is the longest unfinished chain.
    assert progress.remaining_path == 3
    assert progress.mean_task_s is not None
    assert progress.remaining_s == 3 * progress.mean_task_s
    assert progress.elapsed_s == (now - view.runs["sample-happy"].submitted_at).total_seconds()


def test_progress_of_a_finished_run_stops_its_clock_and_sums_its_spend() -> None:
    view = replay(happy_path().stored())
    later = SAMPLE_START + timedelta(days=1)
    progress = run_progress(view, "sample-happy", later)
    assert progress is not None
    assert (progress.state, progress.finished, progress.remaining_path) == ("completed", 6, 0)
    run = view.runs["sample-happy"]
    assert run.finished_at is not None
    assert progress.elapsed_s == (run.finished_at - run.submitted_at).total_seconds()
    assert progress.cost_usd == view.costs["sample-happy"].cost_usd > 0
    assert progress.usage.output_tokens > 0
    assert run_progress(view, "unknown", later) is None
