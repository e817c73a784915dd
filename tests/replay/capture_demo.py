"""Capture the event log of one real ``claudecluster demo`` run as JSON Lines.

The demo is the whole system on this machine: the embedded nats-server, the real driver,
three real workers running the real Claude Code CLI against the scripted Messages API,
a merge conflict and its resolution. Its log is a recorded history that
tests/replay/test_replay.py feeds back through the driver's core. Regenerate it after a
deliberate change to what the actors record, and review the diff::

    .venv/bin/python -m tests.replay.capture_demo tests/replay/histories/demo.jsonl

The file is rewritten only when the demo's run completed with every task merged.
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

import anyio
import msgspec
from rich.console import Console

from claudecluster.cli.demo import DEMO_TASKS, _demo
from claudecluster.events.model import RunCompleted
from claudecluster.runtime.connection import open_configured_cluster
from claudecluster.settings import Settings, load_settings
from claudecluster.transport.base import read_all


async def _capture(settings: Settings, project: Path) -> tuple[str, bool]:
    end, _ = await _demo(settings, Console(stderr=True, quiet=True), True)
    done = isinstance(end.event, RunCompleted) and end.event.tasks_succeeded == len(DEMO_TASKS)
    # The embedded server keeps the log under the project: open it again to read it all.
    async with open_configured_cluster(settings, project_dir=project, name="capture") as conn:
        stored = await read_all(conn.log)
    lines = "".join(
        msgspec.json.encode(
            {"seq": s.seq, "subject": s.subject, "envelope": msgspec.to_builtins(s.envelope)}
        ).decode()
        + "\n"
        for s in stored
    )
    return lines, done


def main(out: Path) -> int:
    """Run the demo in a fresh directory and write its log to ``out``."""
    with tempfile.TemporaryDirectory(prefix="cc-capture-") as tmp:
        project = Path(tmp)
        os.chdir(project)
        settings = load_settings(project_dir=project).settings
        lines, done = anyio.run(_capture, settings, project)
    if not done:
        print("the demo's run did not complete with every task merged; nothing written")
        return 1
    out.write_text(lines, encoding="utf-8")
    print(f"wrote {len(lines.splitlines())} events to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1]).resolve()))
