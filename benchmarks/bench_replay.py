"""Replay: how fast every projection is rebuilt from a log of 1,000,000 events, and in how
much memory.

The log is copies of the recorded sample run ``happy_path`` (63 events: a plan of six
tasks, their queueing, progress, results, merges, heartbeats), each copy a new run with its
own ids, so the projections grow as a real log's would (about 16,000 runs and 95,000 tasks
for a million events). Two rebuilds of the whole ClusterView (runs, tasks, workers, costs):

* from JetStream: the event log's own reader (an ordered consumer, decoding each message)
  folding into a ClusterView, as a restarted driver or ``claudecluster status`` does;
* in memory: decoding the same bytes and folding, without the network (the projections'
  own speed, and the ceiling for the first).

Loading a million events one fsync at a time would take long, so the benchmark's own
nats-server runs the embedded configuration minus ``sync_interval: always`` (which does
not change how reads work). Memory is the process's resident set before and after the
JetStream rebuild, with the rebuilt view alive.

    .venv/bin/python benchmarks/bench_replay.py [--quick] [--events N]

Prints a table and writes benchmarks/results/replay.json.
"""

from __future__ import annotations

import argparse
import gc
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import psutil
from _harness import open_unsynced_server, print_table, write_results
from tests.fixtures.sample_runs import happy_path

from claudecluster.events.codec import decode_event, encode
from claudecluster.events.envelope import StoredEvent
from claudecluster.events.model import WorkerJoined
from claudecluster.events.subjects import event_subject
from claudecluster.projections.cluster import ClusterView, apply, replay
from claudecluster.runtime.connection import open_jetstream_log

_RUN = "bench-r000000"
_PREFIX = "e000000"


def _template() -> tuple[list[tuple[str, bytes]], list[tuple[str, bytes]]]:
    """The sample run as (subject, bytes): the workers' joins, and the rest."""
    joins: list[tuple[str, bytes]] = []
    rest: list[tuple[str, bytes]] = []
    for envelope in happy_path(_RUN, _PREFIX).envelopes:
        pair = (event_subject(envelope.payload), encode(envelope))
        (joins if isinstance(envelope.payload, WorkerJoined) else rest).append(pair)
    return joins, rest


def events(count: int) -> Iterator[tuple[str, bytes]]:
    """``count`` events: the workers join once, then copies of the run with fresh ids."""
    joins, rest = _template()
    yield from joins
    made = len(joins)
    copy = 0
    while made < count:
        run, prefix = f"bench-r{copy:06d}".encode(), f"e{copy:06d}".encode()
        for subject, data in rest[: count - made]:
            new = data.replace(_RUN.encode(), run).replace(_PREFIX.encode(), prefix)
            yield subject.replace(_RUN, run.decode()), new
        made += min(len(rest), count - made)
        copy += 1


def fold_in_memory(count: int) -> tuple[float, ClusterView]:
    """Seconds spent decoding and folding ``count`` events (generation not counted)."""
    view = ClusterView()
    spent = 0.0
    batch: list[tuple[str, bytes]] = []
    for seq, (subject, data) in enumerate(events(count), start=1):
        batch.append((subject, data))
        if len(batch) == 10_000 or seq == count:
            first = seq - len(batch) + 1
            started = time.perf_counter()
            view = replay(
                (
                    StoredEvent(seq=first + offset, subject=subj, envelope=decode_event(raw))
                    for offset, (subj, raw) in enumerate(batch)
                ),
                view,
            )
            spent += time.perf_counter() - started
            batch.clear()
    return spent, view


async def load_and_rebuild(count: int, where: Path) -> dict[str, Any]:
    """Load ``count`` events into a fresh server, then rebuild from it with the log reader."""
    async with (
        open_unsynced_server(where) as url,
        open_jetstream_log(url, name="bench-replay") as (client, log),
    ):
        js = client.jetstream()
        started = time.perf_counter()
        for subject, data in events(count):
            await js.publish_async(subject, data)
        with anyio.fail_after(600):
            await js.publish_async_completed()
        loaded_s = time.perf_counter() - started
        stored = await log.last_seq()
        if stored != count:
            raise RuntimeError(f"loaded {stored} events, expected {count}")
        gc.collect()
        process = psutil.Process()
        before = process.memory_info().rss
        started = time.perf_counter()
        view = ClusterView()
        async with log.open_reader() as reader:
            async for event in reader:
                view = apply(view, event)
                if event.seq == count:
                    break
        rebuild_s = time.perf_counter() - started
        gc.collect()
        after = process.memory_info().rss
        if view.last_seq != count:
            raise RuntimeError(f"the rebuild stopped at {view.last_seq} of {count}")
        return {
            "load_events_per_s": round(count / loaded_s),
            "jetstream_rebuild_s": round(rebuild_s, 2),
            "jetstream_events_per_s": round(count / rebuild_s),
            "rss_before_mb": round(before / 2**20, 1),
            "rss_after_mb": round(after / 2**20, 1),
            "view_runs": len(view.runs),
            "view_tasks": len(view.tasks),
        }


async def run(args: argparse.Namespace) -> dict[str, Any]:
    """Both rebuilds; returns the report."""
    with tempfile.TemporaryDirectory(prefix="bench-replay-") as tmp:
        jetstream = await load_and_rebuild(args.events, Path(tmp))
    spent, view = fold_in_memory(args.events)
    if view.last_seq != args.events or len(view.runs) != jetstream["view_runs"]:
        raise RuntimeError("the in-memory rebuild differs from the JetStream one")
    return {
        "events": args.events,
        "results": {
            **jetstream,
            "rss_growth_mb": round(jetstream["rss_after_mb"] - jetstream["rss_before_mb"], 1),
            "in_memory_rebuild_s": round(spent, 2),
            "in_memory_events_per_s": round(args.events / spent),
        },
    }


def main() -> None:
    """Run the benchmark, print the table, write the JSON."""
    parser = argparse.ArgumentParser(description="Rebuild every projection from a big log")
    parser.add_argument("--quick", action="store_true", help="20,000 events")
    parser.add_argument("--events", type=int, default=None)
    args = parser.parse_args()
    args.events = args.events or (20_000 if args.quick else 1_000_000)
    report = anyio.run(run, args)
    print_table(["measure", "value"], list(report["results"].items()))
    print(f"written {write_results('replay', report, quick=args.quick)}")


if __name__ == "__main__":
    main()
