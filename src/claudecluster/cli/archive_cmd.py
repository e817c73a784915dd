"""``archive``: keep the event log bounded by moving finished runs out of it.

See :mod:`claudecluster.runtime.archive` for how a run is moved without losing anything,
and docs/operations.md for what is kept where afterwards.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import anyio
from rich.console import Console

from claudecluster.cli.app import EXIT_OK, command_settings
from claudecluster.errors import ConfigError, UnknownEntityError
from claudecluster.runtime.archive import ArchivedRun, archive_run, runs_to_archive
from claudecluster.runtime.connection import open_configured_cluster
from claudecluster.runtime.reads import view_from_snapshot
from claudecluster.settings import Settings
from claudecluster.transport.snapshots import JetStreamSnapshotStore

__all__ = ["archive"]


def archive(
    *,
    older_than_days: float = 30.0,
    dry_run: bool = False,
    nats: str | None = None,
    config: Path | None = None,
) -> int:
    """Move runs that finished long ago out of the live event log, into its archive.

    Each run's events are written to the artifacts object store, read back and checked,
    and only then purged from CC_EVENTS. `status RUN`, `logs`, `export` and
    `replay --run` still read an archived run; `status` (every run), the driver and the
    front doors rebuilt from the log no longer list it.

    Examples:
        claudecluster archive --older-than-days 30
        claudecluster archive --older-than-days 7 --dry-run

    Args:
        older_than_days: Archive runs that finished at least this many days ago.
        dry_run: Only list the runs that would be archived.
        nats: NATS URL (default: nats.url, else the embedded server of this directory).
        config: A claudecluster.yaml to read instead of the one in this directory.
    """
    if older_than_days < 0:
        raise ConfigError("older_than_days", "flags", "must be 0 or more")
    settings = command_settings(nats, config)
    console = Console(highlight=False)
    done: list[ArchivedRun | str] = anyio.run(
        _archive, settings, timedelta(days=older_than_days), dry_run
    )
    for item in done:
        if isinstance(item, str):
            console.print(item, markup=False)
        else:
            console.print(
                f"archived {item.run_id}: {item.events} events (sequences {item.first_seq} "
                f"to {item.last_seq}) to {item.name}, {item.size} bytes",
                markup=False,
            )
    if not done:
        console.print("no finished run is old enough to archive", markup=False)
    return EXIT_OK


async def _archive(
    settings: Settings, older_than: timedelta, dry_run: bool
) -> list[ArchivedRun | str]:
    # The operator's identity: purging the event log is nobody else's to do.
    opened = open_configured_cluster(settings, name="claudecluster-archive", role="admin")
    async with opened as conn:
        js = conn.client.jetstream()
        view = await view_from_snapshot(conn.log, JetStreamSnapshotStore(js))
        runs = runs_to_archive(view, now=datetime.now(UTC), older_than=older_than)
        if dry_run:
            return [f"would archive {run_id}" for run_id in runs]
        done: list[ArchivedRun | str] = []
        for run_id in runs:
            try:
                done.append(await archive_run(conn.log, js, run_id))
            except UnknownEntityError:
                # The view came from a snapshot older than an earlier archive's purge.
                done.append(f"{run_id} is not in the live log (archived before)")
        return done
