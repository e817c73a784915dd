"""``claudecluster demo``: the README's main command.

Until the driver and workers exist, the demo shows the foundation end to end: it starts the
embedded nats-server (or uses the configured one), records a six-task sample run on the
durable event log with optimistic-concurrency appends, follows the log live into a
projection, rebuilds the same projection from a full replay, checks both agree, and prints
the projected status.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from pathlib import Path

import anyio
from rich.console import Console

from claudecluster.cli.app import EXIT_FAILED, EXIT_OK, app
from claudecluster.cli.render import run_table, tasks_table, workers_table
from claudecluster.events.envelope import EventEnvelope
from claudecluster.events.model import RunEvent
from claudecluster.events.subjects import scope_filter
from claudecluster.observability.logging import configure_logging
from claudecluster.observability.redaction import Redactor
from claudecluster.projections.cluster import ClusterView, apply, replay
from claudecluster.runtime.connection import open_configured_log
from claudecluster.settings import Settings, load_settings
from claudecluster.testing.sample_runs import LogBuilder, happy_path
from claudecluster.transport.base import EventLog, read_all

__all__ = ["demo"]

_CATCH_UP_TIMEOUT_S = 10.0


@app.command
def demo(*, config: Path | None = None, nats_url: str | None = None) -> int:
    """Record a sample run on the event log and show its projected status.

    Starts the embedded nats-server under .claudecluster/nats (or uses --nats-url), so it
    needs nothing else. Run it twice: the second run reuses the same durable log.

    Examples:
        claudecluster demo
        claudecluster demo --nats-url nats://127.0.0.1:4222

    Args:
        config: A claudecluster.yaml to read instead of the one in this directory.
        nats_url: Use this NATS server instead of starting the embedded one.
    """
    flags = {"nats": {"url": nats_url}} if nats_url else None
    loaded = load_settings(config_file=config, flags=flags)
    settings = loaded.settings
    log_format = settings.logging.format
    configure_logging(
        level=settings.logging.level if settings.logging.level != "INFO" else "WARNING",
        json=None if log_format == "auto" else log_format == "json",
        redactor=Redactor(settings.secret_values()),
    )
    ok: bool = anyio.run(_demo, settings, Console(highlight=False))
    return EXIT_OK if ok else EXIT_FAILED


async def _demo(settings: Settings, console: Console) -> bool:
    stamp = datetime.now(UTC)
    run_id = f"demo-{stamp:%Y%m%d-%H%M%S}-{stamp.microsecond // 1000:03d}"
    sample = happy_path(run_id=run_id, prefix=run_id)
    sample = _restamp(sample, stamp)
    async with open_configured_log(settings, name="claudecluster-demo") as (url, log):
        console.print(f"event log: {url}", markup=False)
        start = await log.last_seq() + 1
        live = ClusterView(last_seq=start - 1)
        caught_up = anyio.Event()
        final_seq = 0

        async def follow() -> None:
            nonlocal live
            async with log.open_reader(from_seq=start, follow=True) as events:
                async for stored in events:
                    live = apply(live, stored)
                    if final_seq and live.last_seq >= final_seq:
                        caught_up.set()
                        return

        began = time.perf_counter()
        async with anyio.create_task_group() as group:
            group.start_soon(follow)
            final_seq = await _record(log, sample.envelopes)
            if live.last_seq >= final_seq:
                caught_up.set()
            with anyio.fail_after(_CATCH_UP_TIMEOUT_S):
                await caught_up.wait()
            group.cancel_scope.cancel()
        elapsed = time.perf_counter() - began
        replayed = replay(await read_all(log, from_seq=start), ClusterView(last_seq=start - 1))

    durability = "" if settings.nats.url else ", each fsynced before acknowledgement"
    console.print(
        f"recorded {len(sample.envelopes)} events (seq {start}..{final_seq}) "
        f"in {elapsed * 1000:.0f} ms{durability}",
        markup=False,
    )
    run = replayed.runs[run_id]
    console.print(run_table(replayed, run))
    console.print(tasks_table(replayed, run_id))
    console.print(workers_table(replayed))
    agree = live == replayed
    verdict = "agree" if agree else "DISAGREE"
    console.print(f"live projection and full replay {verdict}", markup=False)
    console.print(
        "the events stay in the log: run the demo again and both runs are there", markup=False
    )
    return agree and replayed.anomaly_count == 0


def _restamp(sample: LogBuilder, start: datetime) -> LogBuilder:
    """The same history shifted to start now, so the recorded times are today's."""
    shift = start - sample.envelopes[0].occurred_at
    restamped = LogBuilder(now=start, prefix=sample.prefix)
    for envelope in sample.envelopes:
        restamped.now = envelope.occurred_at + shift
        restamped.emit(envelope.payload)
    return restamped


async def _record(log: EventLog, envelopes: list[EventEnvelope]) -> int:
    """Append every event; run and task events conditionally, as a driver would."""
    last_in_scope: dict[str, int] = {}
    seq = 0
    for envelope in envelopes:
        event = envelope.payload
        if isinstance(event, RunEvent):
            scope = scope_filter(event)
            result = await log.append(envelope, expected_last=last_in_scope.get(scope, 0))
            last_in_scope[scope] = result.seq
        else:
            result = await log.append(envelope)
        seq = result.seq
    return seq
