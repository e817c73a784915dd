"""``claudecluster driver``: own runs from submission to merged result."""

from __future__ import annotations

import dataclasses
import signal
from collections.abc import Callable
from pathlib import Path

import anyio
import anyio.abc
from rich.console import Console

from claudecluster.actors.lease import LeaseConfig
from claudecluster.cli.app import EXIT_OK, flag_settings
from claudecluster.errors import ConfigError
from claudecluster.executors.claude_code import ClaudeCodeExecutor
from claudecluster.executors.confinement import Confinement
from claudecluster.observability.logging import configure_logging
from claudecluster.observability.redaction import Redactor, redact_url
from claudecluster.runtime.connection import configured_auth, open_jetstream_log
from claudecluster.runtime.driver import Driver, DriverOptions
from claudecluster.runtime.driver_health import DriverHealth, driver_health_app
from claudecluster.runtime.http_server import open_http_server
from claudecluster.runtime.sandboxing import NO_SANDBOX_NOTE, confinement_for
from claudecluster.runtime.standby import StandbyDriver
from claudecluster.settings import Settings
from claudecluster.transport.base import EventLog
from claudecluster.transport.infrastructure import jetstream_infrastructure

__all__ = ["driver"]


def driver(
    *,
    nats: str | None = None,
    work_dir: Path | None = None,
    no_sandbox: bool = False,
    config: Path | None = None,
    health_port: int = 0,
    health_host: str = "127.0.0.1",
) -> int:
    """Run the driver: plan submitted runs, dispatch their tasks, merge, retry, roll back.

    It takes commands from the CC_COMMANDS stream and rebuilds all it knows from the event
    log, so it can be stopped and started (or killed and restarted) at any time. Runs
    name the repository they work on; the driver needs that repository on its disk.

    Start as many as you like: one holds the driver lease and drives, the others stand
    by and take over within driver.lease_ttl_s of it dying or being cut off
    (driver.standby: false drives at once, alone).

    Examples:
        claudecluster driver --nats nats://10.0.0.5:4222

    Args:
        nats: NATS URL (default: nats.url from the configuration).
        work_dir: Where integration worktrees and bundles live (default:
            .claudecluster/driver in the run's repository).
        no_sandbox: Run verify commands and the planner unconfined (sandbox.enabled:
            false). Without it the driver refuses to start where bubblewrap is missing.
        config: A claudecluster.yaml to read instead of the one in this directory.
        health_port: Serve GET /health and /metrics (Prometheus) on this port; 0 disables.
        health_host: The address for /health and /metrics: loopback unless something
            outside this host scrapes it (0.0.0.0 in a container).
    """
    own = {"driver": {"work_dir": str(work_dir.resolve())}} if work_dir is not None else None
    settings = flag_settings(config, nats=nats, no_sandbox=no_sandbox, sections=own)
    if not settings.nats.url:
        raise ConfigError("nats.url", "default", "the driver needs a NATS URL (--nats URL)")
    configure_logging(level=settings.logging.level, redactor=Redactor(settings.secret_values()))
    confinement = confinement_for(settings)
    if not settings.sandbox.enabled:
        Console(stderr=True, highlight=False).print(NO_SANDBOX_NOTE, markup=False)
    health = (health_host, health_port) if health_port else None
    anyio.run(_serve, settings, confinement, health)
    return EXIT_OK


async def _serve(
    settings: Settings, confinement: Confinement, health_at: tuple[str, int] | None
) -> None:
    assert settings.nats.url is not None
    console = Console(stderr=True, highlight=False)
    health = DriverHealth(standby=settings.driver.standby)

    def announce(phase: str) -> None:
        health.changed(phase)
        console.print(f"driver {phase}", markup=False)

    options = DriverOptions(
        config=settings.driver_config(),
        work_dir=settings.driver.work_dir,
        api_environment=settings.api_environment(),
        planner_executor=ClaudeCodeExecutor(confinement=confinement),
        confinement=confinement,
    )
    async with open_jetstream_log(
        settings.nats.url,
        name="driver",
        redactor=Redactor(settings.secret_values()),
        replicas=settings.nats.replicas,
        auth=configured_auth(settings, "driver"),
    ) as (client, log):
        ack_wait_s = options.command_ack_wait_s
        seams = jetstream_infrastructure(log, client, command_ack_wait_s=ack_wait_s)
        runner: Driver | StandbyDriver
        if settings.driver.standby:

            def make_driver(fenced: EventLog, holding: Callable[[], bool]) -> Driver:
                # Seams of its own each term, as a driver of its own: nothing of a
                # cancelled term (a pull subscription mid-fetch) is handed to the next.
                term = jetstream_infrastructure(fenced, client, command_ack_wait_s=ack_wait_s)
                held = dataclasses.replace(options, holding=holding)
                return Driver(fenced, options=held, infrastructure=term)

            runner = StandbyDriver(
                store=seams.leases,
                js=client.jetstream(),  # the fence: a conditional append of its own
                log=log,
                make_driver=make_driver,
                config=LeaseConfig(
                    ttl_s=settings.driver.lease_ttl_s,
                    renew_s=settings.driver.lease_renew_s,
                    poll_s=settings.driver.lease_poll_s,
                ),
                on_change=announce,
            )
        else:
            runner = Driver(log, options=options, infrastructure=seams)
        async with anyio.create_task_group() as group:
            if health_at is not None:
                host, port = health_at
                bound = await group.start(_serve_health, health, host, port)
                console.print(f"driver health and metrics on {host}:{bound}", markup=False)
            await group.start(runner.run)
            health.serving()
            console.print(f"driver serving on {redact_url(settings.nats.url)}", markup=False)
            with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
                async for _ in signals:
                    console.print("driver stopping; restart it to continue", markup=False)
                    group.cancel_scope.cancel()
                    break


async def _serve_health(
    health: DriverHealth,
    host: str,
    port: int,
    *,
    task_status: anyio.abc.TaskStatus[int] = anyio.TASK_STATUS_IGNORED,
) -> None:
    """Serve the driver's /health and /metrics until cancelled; reports the bound port."""
    async with open_http_server(driver_health_app(health), host=host, port=port) as bound:
        task_status.started(bound)
        await anyio.sleep_forever()
