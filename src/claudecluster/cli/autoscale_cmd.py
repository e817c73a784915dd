"""``claudecluster autoscale``: size a pool to its work, through a backend."""

from __future__ import annotations

import os
import signal
import socket
from pathlib import Path

import anyio
from rich.console import Console

from claudecluster.actors.scaling import PoolBounds
from claudecluster.cli.app import EXIT_OK
from claudecluster.errors import ConfigError
from claudecluster.observability.logging import configure_logging
from claudecluster.observability.redaction import Redactor, redact_url
from claudecluster.runtime.connection import configured_auth, open_jetstream_log
from claudecluster.runtime.pool_scaler import (
    CommandBackend,
    LocalProcessBackend,
    PoolAutoscaler,
    PoolBackend,
)
from claudecluster.settings import Settings, load_settings

__all__ = ["autoscale"]


def autoscale(
    *,
    command: str | None = None,
    local: bool = False,
    pool: str = "default",
    min_workers: int = 0,
    max_workers: int = 4,
    slots: int = 1,
    settle: float = 10.0,
    scale_down_after: float = 60.0,
    interval: float = 2.0,
    nats: str | None = None,
    creds: Path | None = None,
    worker_arg: tuple[str, ...] = (),
    log_dir: Path = Path(".claudecluster/autoscale"),
    config: Path | None = None,
) -> int:
    """Size a pool to its work: queued, running and the widest layer of what is left.

    Within --min-workers and --max-workers, through one backend: --local starts and
    stops 'claudecluster worker' processes here; --command runs your command with the
    wanted count in place of {n} (and the pool's name in place of {pool}). Each change
    is recorded with its reason (pool.scaled, or pool.scale_failed with what the command
    said). It connects as the driver role. Run one per pool.

    Examples:
        claudecluster autoscale --local --max-workers 8
        claudecluster autoscale --max-workers 20 --command "docker compose up -d --scale worker={n}"
        claudecluster autoscale --command "kubectl scale deployment/worker --replicas={n}"

    Args:
        command: The operator's command; {n} is the wanted count. Run without a shell.
        local: Start and stop worker processes on this host instead.
        pool: The pool to size.
        min_workers: Never fewer (0: none while there is no work).
        max_workers: Never more.
        slots: Attempts each worker runs at once (the workers' --slots).
        settle: Seconds between two changes at least.
        scale_down_after: Seconds a smaller size must have been enough before shrinking.
        interval: Seconds between two decisions.
        nats: NATS URL (default: nats.url from the configuration).
        creds: A credentials file for the driver role (default: nats.creds).
        worker_arg: With --local, more arguments for each worker (repeat the flag:
            --worker-arg=--no-sandbox).
        log_dir: With --local, where each worker's output goes.
        config: A claudecluster.yaml to read instead of the one in this directory.
    """
    if (command is None) == (not local):
        raise ConfigError("autoscale", "flags", "give exactly one backend: --local or --command")
    bounds = PoolBounds(
        min_workers=min_workers,
        max_workers=max_workers,
        slots_per_worker=slots,
        settle_s=settle,
        scale_down_after_s=scale_down_after,
    )
    if (problem := bounds.problem()) is not None:
        raise ConfigError("autoscale", "flags", problem)
    nats_flags: dict[str, object] = {}
    if nats:
        nats_flags["url"] = nats
    if creds is not None:
        nats_flags["creds"] = creds
    settings = load_settings(
        config_file=config, flags={"nats": nats_flags} if nats_flags else None
    ).settings
    if not settings.nats.url:
        raise ConfigError("nats.url", "default", "the autoscaler needs a NATS URL (--nats URL)")
    configure_logging(level=settings.logging.level, redactor=Redactor(settings.secret_values()))
    backend: PoolBackend
    if command is not None:
        try:
            backend = CommandBackend(command, pool=pool)
        except ValueError as exc:
            raise ConfigError("autoscale", "flag --command", str(exc)) from exc
    else:
        args = ["--nats", settings.nats.url, "--pool", pool, "--slots", str(slots), *worker_arg]
        if config is not None:
            args += ["--config", str(config)]
        backend = LocalProcessBackend(args, log_dir=log_dir.resolve())
    anyio.run(_serve, settings, backend, pool, bounds, interval)
    return EXIT_OK


async def _serve(
    settings: Settings, backend: PoolBackend, pool: str, bounds: PoolBounds, interval: float
) -> None:
    assert settings.nats.url is not None
    console = Console(stderr=True, highlight=False)
    scaler_id = f"autoscale-{socket.gethostname().split('.')[0]}-{os.getpid()}".lower()
    auth = configured_auth(settings, "driver")
    async with open_jetstream_log(
        settings.nats.url,
        name=scaler_id,
        redactor=Redactor(settings.secret_values()),
        replicas=settings.nats.replicas,
        auth=auth,
    ) as (_, log):
        scaler = PoolAutoscaler(
            log, backend, pool=pool, bounds=bounds, scaler_id=_id(scaler_id),
            interval_s=interval,
        )  # fmt: skip
        async with anyio.create_task_group() as group:
            await group.start(scaler.run)
            console.print(
                f"autoscaling pool {pool!r} ({backend.name}, {bounds.min_workers} to "
                f"{bounds.max_workers} workers) on {redact_url(settings.nats.url)}",
                markup=False,
            )
            with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
                async for _ in signals:
                    console.print("autoscaler stopping; its workers drain", markup=False)
                    group.cancel_scope.cancel()
                    break


def _id(raw: str) -> str:
    """A host name made into an id's alphabet (letters, digits, ``-``)."""
    return "".join(c if c.isalnum() or c == "-" else "-" for c in raw)[:60].strip("-")
