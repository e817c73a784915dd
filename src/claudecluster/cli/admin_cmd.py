"""``claudecluster config ...`` and ``claudecluster workers ...``.

``config`` shows the effective configuration and where each value came from (file,
environment, flag, default), reads one key, sets one in claudecluster.yaml, or validates.
``workers`` lists the workers the log knows (remote ones too), starts local worker
processes against a cluster, and drains one.
"""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

import anyio
import msgspec
import yaml
from cyclopts import App
from rich.console import Console
from rich.table import Table

from claudecluster.cli.app import EXIT_OK, command_settings
from claudecluster.cli.render import workers_table
from claudecluster.errors import ConfigError, UnknownEntityError
from claudecluster.events.model import DrainWorker, WorkerLeft
from claudecluster.events.subjects import EVENT_PREFIX, WORKER_SCOPE
from claudecluster.projections.cluster import ClusterView, replay
from claudecluster.runtime.answers import publish_and_wait
from claudecluster.runtime.connection import open_configured_cluster
from claudecluster.settings import CONFIG_FILE_NAME, LoadedSettings, Settings, load_settings
from claudecluster.transport.base import read_all
from claudecluster.transport.commands import JetStreamCommandBus

__all__ = ["config_app", "workers_app"]

config_app = App(name="config", help="The effective configuration and where it came from.")
workers_app = App(name="workers", help="The worker pool: list, add local workers, drain one.")

_SECRET: Final = "**********"
ALL_WORKER_EVENTS: Final = f"{EVENT_PREFIX}.{WORKER_SCOPE}.>"
_DRAIN_TIMEOUT_S: Final = 120.0


def _flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(data, dict):
        flat: dict[str, Any] = {}
        for key, value in data.items():
            flat.update(_flatten(value, f"{prefix}{key}."))
        return flat
    return {prefix.rstrip("."): data}


def _effective(loaded: LoadedSettings) -> dict[str, tuple[str, str]]:
    """Dotted key -> (shown value, source); secrets are masked."""
    values = _flatten(loaded.settings.model_dump(mode="json"))
    shown: dict[str, tuple[str, str]] = {}
    for key, value in sorted(values.items()):
        text = "" if value is None else str(value)
        if "api_key" in key and value is not None:
            text = _SECRET
        shown[key] = (text, loaded.source_of(key))
    return shown


@config_app.command
def show(*, config: Path | None = None) -> int:
    """Every setting, its value and where it came from (file, env, flag, default).

    Examples:
        claudecluster config show
        CLAUDECLUSTER_DRIVER__MAX_RUNNING=8 claudecluster config show

    Args:
        config: A claudecluster.yaml to read instead of the one in this directory.
    """
    loaded = load_settings(config_file=config)
    table = Table(title="configuration", title_justify="left")
    for column in ("key", "value", "from"):
        table.add_column(column)
    for key, (value, source) in _effective(loaded).items():
        table.add_row(key, value, source)
    console = Console(highlight=False)
    console.print(table)
    if loaded.config_file is not None:
        console.print(f"file: {loaded.config_file}", markup=False)
    return EXIT_OK


@config_app.command
def get(key: str, *, config: Path | None = None) -> int:
    """Print one setting's value (and, on stderr, where it came from).

    Examples:
        claudecluster config get driver.max_running

    Args:
        key: A dotted key, as `config show` lists them.
        config: A claudecluster.yaml to read instead of the one in this directory.
    """
    loaded = load_settings(config_file=config)
    effective = _effective(loaded)
    if key not in effective:
        raise ConfigError(
            key, "the command line", "no such setting; see 'claudecluster config show'"
        )
    value, source = effective[key]
    Console(highlight=False).print(value, markup=False)
    Console(highlight=False, stderr=True).print(f"from {source}", markup=False)
    return EXIT_OK


@config_app.command(name="set")
def set_(key: str, value: str, *, config: Path | None = None) -> int:
    """Set one setting in claudecluster.yaml (created if missing), after validating it.

    Examples:
        claudecluster config set driver.max_running 8
        claudecluster config set nats.url nats://10.0.0.5:4222

    Args:
        key: A dotted key, as `config show` lists them.
        value: The new value (YAML: numbers, true/false and lists are understood).
        config: The file to change (default: claudecluster.yaml in this directory).
    """
    path = config or Path.cwd() / CONFIG_FILE_NAME
    data: dict[str, Any] = {}
    if path.exists():
        loaded_yaml = yaml.safe_load(path.read_text(encoding="utf-8"))
        data = loaded_yaml if isinstance(loaded_yaml, dict) else {}
    if key not in _effective(load_settings(config_file=config if path.exists() else None)):
        raise ConfigError(
            key, "the command line", "no such setting; see 'claudecluster config show'"
        )
    node = data
    parts = key.split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
    node[parts[-1]] = yaml.safe_load(value)
    candidate = path.with_suffix(".yaml.new")
    candidate.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    try:
        load_settings(config_file=candidate)  # refuse a value that does not validate
    except ConfigError as exc:
        candidate.unlink()
        raise ConfigError(exc.key, f"'config set {key}'", exc.problem) from None
    candidate.replace(path)
    Console(highlight=False).print(f"{key} = {value} in {path}", markup=False)
    return EXIT_OK


@config_app.command
def validate(*, config: Path | None = None) -> int:
    """Check the configuration (file, environment) and say which file was read.

    Examples:
        claudecluster config validate

    Args:
        config: A claudecluster.yaml to read instead of the one in this directory.
    """
    loaded = load_settings(config_file=config)
    where = loaded.config_file or "no file (defaults and environment)"
    Console(highlight=False).print(f"configuration is valid: {where}", markup=False)
    return EXIT_OK


@workers_app.command(name="list")
def list_(*, json: bool = False, nats: str | None = None, config: Path | None = None) -> int:
    """The workers the log knows, local and remote: state, heartbeat, load, tasks.

    Examples:
        claudecluster workers list --nats nats://10.0.0.5:4222
        claudecluster workers list --json

    Args:
        json: Print the workers as one JSON array (every field of each) for scripts.
        nats: NATS URL (default: nats.url, else the embedded server of this directory).
        config: A claudecluster.yaml to read instead of the one in this directory.
    """
    settings = command_settings(nats, config)
    view: ClusterView = anyio.run(_workers_view, settings)
    if json:
        workers = sorted(view.workers.values(), key=lambda w: w.worker_id)
        sys.stdout.write(msgspec.json.encode(workers).decode() + "\n")
        return EXIT_OK
    console = Console(highlight=False)
    console.print(workers_table(view, datetime.now(UTC), width=console.width))
    return EXIT_OK


async def _workers_view(settings: Settings) -> ClusterView:
    """The workers as the log knows them (their subjects only), with their live entries."""
    from claudecluster.projections.workers import with_liveness
    from claudecluster.transport.liveness import JetStreamWorkerRegistry

    async with open_configured_cluster(settings, name="claudecluster-cli") as conn:
        view = replay(await read_all(conn.log, subjects=ALL_WORKER_EVENTS))
        live = await JetStreamWorkerRegistry(conn.client.jetstream()).current()
        return msgspec.structs.replace(view, workers=with_liveness(view.workers, live.values()))


@workers_app.command
def add(
    count: int = 1,
    *,
    pool: str = "default",
    slots: int = 1,
    nats: str | None = None,
    config: Path | None = None,
) -> int:
    """Start COUNT local worker processes that serve a cluster's pool in the background.

    They need a NATS URL that outlives this command (the embedded server stops with the
    command that started it). Each prints its log to .claudecluster/workers/<pid>.log and
    stops with `claudecluster workers rm ID` or SIGTERM.

    Examples:
        claudecluster workers add 4 --nats nats://10.0.0.5:4222

    Args:
        count: How many workers.
        pool: The pool they serve.
        slots: Attempts each runs at once.
        nats: NATS URL (default: nats.url).
        config: A claudecluster.yaml to read instead of the one in this directory.
    """
    settings = command_settings(nats, config)
    if not settings.nats.url:
        raise ConfigError("nats.url", "default", "workers add needs a running cluster (--nats URL)")
    if count < 1:
        raise ConfigError("count", "the command line", "must be at least 1")
    logs = Path.cwd() / ".claudecluster" / "workers"
    logs.mkdir(parents=True, exist_ok=True)
    console = Console(highlight=False)
    command = [sys.executable, "-m", "claudecluster", "worker", "--nats", settings.nats.url,
               "--pool", pool, "--slots", str(slots)]  # fmt: skip
    for _ in range(count):
        log = logs / f"worker-{datetime.now(UTC):%Y%m%d%H%M%S%f}.log"
        with log.open("ab") as out:
            process = subprocess.Popen(
                command, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                start_new_session=True, env=dict(os.environ),
            )  # fmt: skip
        console.print(f"started worker process {process.pid} (log {log})", markup=False)
    return EXIT_OK


@workers_app.command
def rm(
    worker_id: str, *, deadline: float = 300.0, nats: str | None = None, config: Path | None = None
) -> int:
    """Drain a worker: it takes no new work, finishes (or hands back) what runs, leaves.

    Examples:
        claudecluster workers rm vm-1234-ab12cd

    Args:
        worker_id: The worker's id, as `workers list` shows it.
        deadline: Seconds its running attempts may go on before they are handed back.
        nats: NATS URL (default: nats.url, else the embedded server of this directory).
        config: A claudecluster.yaml to read instead of the one in this directory.
    """
    settings = command_settings(nats, config)
    left: WorkerLeft = anyio.run(_drain, settings, worker_id, deadline)
    Console(highlight=False).print(f"worker {worker_id} left: {left.reason}", markup=False)
    return EXIT_OK


async def _drain(settings: Settings, worker_id: str, deadline: float) -> WorkerLeft:
    async with open_configured_cluster(settings, name="claudecluster-cli") as conn:
        view = replay(await read_all(conn.log))
        worker = view.workers.get(worker_id)
        if worker is None:
            raise UnknownEntityError("worker", worker_id)
        if worker.state != "active":
            raise ConfigError("worker", worker_id, f"the worker already {worker.state}")
        left = await publish_and_wait(
            conn.log,
            JetStreamCommandBus(conn.client.jetstream()),
            DrainWorker(worker_id=worker_id, deadline_s=deadline),
            command_id=f"drain-{worker_id}-{datetime.now(UTC):%Y%m%d%H%M%S%f}",
            answered=lambda event: isinstance(event, WorkerLeft) and event.worker_id == worker_id,
            timeout_s=deadline + _DRAIN_TIMEOUT_S,
            silence=f"worker {worker_id} did not leave; is it still running?",
            correlation_id=worker_id,
        )
        event = left.envelope.payload
        assert isinstance(event, WorkerLeft)
        return event
