"""Regenerate ``events/samples/*.jsonl`` and ``projections/golden/*.json`` (``make golden``).

Run this after a deliberate change to the sample scenarios or to a projection, then review
the diff: the golden files are the reviewed expectation that tests hold the code to.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import msgspec

from claudecluster.events.codec import decode_stored_event
from claudecluster.projections.cluster import replay, to_snapshot
from claudecluster.testing.sample_runs import SCENARIOS

__all__ = ["golden_snapshot", "main", "render_log"]


def render_log(records: list[dict[str, object]]) -> str:
    """A log as JSON Lines, one compact record per line."""
    return "".join(msgspec.json.encode(record).decode() + "\n" for record in records)


def golden_snapshot(log_text: str) -> str:
    """The projection snapshot of a JSON Lines log, as pretty, key-sorted JSON."""
    events = [decode_stored_event(line) for line in log_text.splitlines() if line.strip()]
    snapshot = msgspec.to_builtins(to_snapshot(replay(events)))
    return json.dumps(snapshot, indent=2, sort_keys=True) + "\n"


def main(root: Path | None = None) -> int:
    """Write every sample log and its golden projection under ``root`` (the repository)."""
    base = root or Path.cwd()
    samples = base / "events" / "samples"
    golden = base / "projections" / "golden"
    samples.mkdir(parents=True, exist_ok=True)
    golden.mkdir(parents=True, exist_ok=True)
    for name, build in sorted(SCENARIOS.items()):
        log_text = render_log(build())
        (samples / f"{name}.jsonl").write_text(log_text, encoding="utf-8")
        (golden / f"{name}.json").write_text(golden_snapshot(log_text), encoding="utf-8")
        print(f"wrote events/samples/{name}.jsonl and projections/golden/{name}.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
