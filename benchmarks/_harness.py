"""What every benchmark shares: the machine record, a private cluster, runs to the end.

Benchmarks are scripts, not library code: this module sits beside them (the script's
directory is first on ``sys.path``), so each ``bench_*.py`` imports it as ``_harness``.
Importing it also puts the repository's root on ``sys.path``: several benchmarks build their
logs and hosts with the test suite's fixtures (``tests.fixtures``, ``tests.hosts``).
Everything here uses the project's own public pieces (the embedded nats-server, the
driver, the local workers) so that a benchmark measures the product, not a stand-in.
"""

from __future__ import annotations

import json
import math
import os
import platform
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import anyio

from claudecluster.events.model import CommandRejected, RunCompleted, RunFailed, SubmitRun
from claudecluster.observability.logging import configure_logging
from claudecluster.runtime.connection import Connection, open_jetstream_log
from claudecluster.runtime.embedded_nats import (
    find_nats_server,
    open_embedded_nats,
    render_server_config,
)
from claudecluster.settings import Settings, load_settings
from claudecluster.transport.commands import publish_command
from claudecluster.workspace.git import git

#: where results go; BENCH_RESULTS_DIR moves them (the smoke tests write to a temp dir)
#: The repository this script belongs to, put on ``sys.path`` for the test fixtures.
REPOSITORY = Path(__file__).resolve().parents[1]
if str(REPOSITORY) not in sys.path:
    sys.path.insert(1, str(REPOSITORY))

RESULTS = Path(os.environ.get("BENCH_RESULTS_DIR") or Path(__file__).resolve().parent / "results")

#: the load when the benchmark started: the figures were made between this and the end's
_LOAD_AT_START = [round(x, 2) for x in os.getloadavg()]

# The actors log at INFO; a benchmark's output is its table.
configure_logging(level="WARNING")


def machine() -> dict[str, Any]:
    """The machine and its load right now: figures are only comparable with this beside them.

    The load average matters because the machine may be shared: a benchmark's absolute
    figures move with it, its side-by-side ratios much less.
    """
    model = ""
    try:
        lscpu = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
        model = next(
            (ln.split(":", 1)[1].strip() for ln in lscpu.splitlines() if "Model name" in ln), ""
        )
    except OSError:
        model = platform.processor()
    load1, load5, load15 = os.getloadavg()
    return {
        "cpus": os.cpu_count(),
        "cpu_model": model,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "loadavg_1_5_15": [round(load1, 2), round(load5, 2), round(load15, 2)],
        "loadavg_1_5_15_at_start": _LOAD_AT_START,
        "at": datetime.now(UTC).isoformat(timespec="seconds"),
    }


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0..100) by the nearest-rank method; 0.0 for no values."""
    if not values:
        return 0.0
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


def write_results(name: str, report: dict[str, Any], *, quick: bool) -> Path:
    """Write ``report`` as ``results/<name>.json`` (``<name>.quick.json`` for a smoke run,
    so a smoke run never overwrites the checked-in full-size figures)."""
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"{name}{'.quick' if quick else ''}.json"
    report = {"benchmark": name, "quick": quick, "machine": machine(), **report}
    path.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    return path


def print_table(columns: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
    """A plain fixed-width table on stdout (a benchmark's output is read in logs, too)."""
    cells = [[str(c) for c in columns], *[[str(v) for v in row] for row in rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(columns))]
    for index, row in enumerate(cells):
        print("  ".join(value.rjust(widths[i]) for i, value in enumerate(row)))
        if index == 0:
            print("  ".join("-" * w for w in widths))
    sys.stdout.flush()


@asynccontextmanager
async def open_unsynced_server(where: Path) -> AsyncIterator[str]:
    """A nats-server with the embedded configuration minus ``sync_interval: always``.

    For loading a big log quickly: nats-server then fsyncs every two minutes, which does
    not change how the log is read. Yields its URL; stops the server on exit.
    """
    await anyio.Path(where).mkdir(parents=True, exist_ok=True)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    config = render_server_config(port, where).splitlines()
    (where / "nats.conf").write_text(
        "\n".join(line for line in config if "sync_interval" not in line), encoding="utf-8"
    )
    with (where / "server.log").open("wb") as server_log:
        server = await anyio.open_process(
            [str(find_nats_server()), "-c", str(where / "nats.conf")],
            stdout=server_log, stderr=server_log,
        )  # fmt: skip
    try:
        with anyio.fail_after(15):
            while True:
                try:
                    stream = await anyio.connect_tcp("127.0.0.1", port)
                except OSError:
                    await anyio.sleep(0.02)
                    continue
                await stream.aclose()
                break
        yield f"nats://127.0.0.1:{port}"
    finally:
        server.terminate()
        with anyio.fail_after(30, shield=True):
            await server.wait()


@asynccontextmanager
async def open_private_cluster(where: Path, name: str = "bench") -> AsyncIterator[Connection]:
    """A fresh embedded nats-server with the project's topology under ``where``.

    It admits clients without credentials, so the in-process actors and the processes a
    benchmark starts share one connection setting: authentication costs at connect time
    only, not per message, and is not what these benchmarks measure.
    """
    async with (
        open_embedded_nats(where / "nats", reuse=False, auth=False) as server,
        open_jetstream_log(server.url, name=name) as (client, log),
    ):
        yield Connection(server.url, client, log, embedded=True)


def bench_settings(url: str, project: Path, **driver: object) -> Settings:
    """Settings for a benchmark: the given NATS, this project dir, driver limits overridden.

    The environment is left out so that a developer's CLAUDECLUSTER_* variables cannot
    change what is measured.
    """
    flags: dict[str, Any] = {"nats": {"url": url}}
    if driver:
        flags["driver"] = dict(driver)
    return load_settings(project_dir=project, environ={}, flags=flags).settings


async def sample_repo(where: Path, files: dict[str, str] | None = None) -> Path:
    """A git repository with one commit, to run a plan against."""
    await anyio.Path(where).mkdir(parents=True, exist_ok=True)
    await git(where, "init", "--quiet", "--initial-branch", "main")
    for name, content in (files or {"README.md": "# bench\n"}).items():
        path = anyio.Path(where / name)
        await path.parent.mkdir(parents=True, exist_ok=True)
        await path.write_text(content, encoding="utf-8")
    await git(where, "add", "--all")
    await git(where, "-c", "user.name=bench", "-c", "user.email=bench@local", "commit",
              "--quiet", "-m", "base")  # fmt: skip
    return where


@dataclass(frozen=True, slots=True)
class RunTiming:
    """How a submitted run went.

    Attributes:
        wall_s: from publishing the submission until the run's end was read back.
        end: the run's last event (RunCompleted or RunFailed).
        first_seq: the log's first sequence at or after the submission.
    """

    wall_s: float
    end: RunCompleted | RunFailed
    first_seq: int


class SubmissionRejectedError(RuntimeError):
    """The driver refused a benchmark's submission (a plan over its task limit, say):
    said at once, with the driver's reason, instead of waiting out the run's timeout."""


async def submit_and_wait(conn: Connection, command: SubmitRun, *, timeout_s: float) -> RunTiming:
    """Submit ``command`` and wait, reading the log, until the run completes or fails.

    Raises:
        SubmissionRejectedError: the driver refused the submission.
        TimeoutError: the run did not end within ``timeout_s``.
    """
    first = await conn.log.last_seq() + 1
    started = time.perf_counter()
    command_id = f"submit-{command.run_id}"
    await publish_command(
        conn.client.jetstream(), command, command_id=command_id, now=datetime.now(UTC),
    )  # fmt: skip
    with anyio.fail_after(timeout_s):
        async with conn.log.open_reader(from_seq=first, follow=True) as events:
            async for stored in events:
                event = stored.envelope.payload
                if isinstance(event, CommandRejected) and event.command_id == command_id:
                    raise SubmissionRejectedError(
                        f"the driver refused run {command.run_id}: {event.reason}"
                    )
                if isinstance(event, RunCompleted | RunFailed) and event.run_id == command.run_id:
                    return RunTiming(time.perf_counter() - started, event, first)
    raise TimeoutError(f"run {command.run_id} never ended")  # the follow reader ended
