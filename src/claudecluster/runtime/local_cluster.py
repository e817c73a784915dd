"""The embedded default in one process: the driver and a local worker pool next to the
embedded nats-server, for ``claudecluster run`` and ``claudecluster demo``.

They are the same actors that run as separate processes elsewhere (``claudecluster
driver``, ``claudecluster worker``); here they share this process and stop with it. Each
role connects with its own identity (the embedded server's driver and worker seeds), so
the driver and the workers are held to their permissions here as on separate machines;
on a server without identities they share the caller's connection. The run itself is in
the durable log, so a run left unfinished continues whenever a driver and workers run
again on the same store.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import replace
from pathlib import Path

import anyio
from nats.aio.client import Client

from claudecluster.actors.scaling import ScalePolicy
from claudecluster.executors.claude_code import ClaudeCodeExecutor
from claudecluster.executors.confinement import Confinement
from claudecluster.runtime.autoscaler import LocalAutoscaler
from claudecluster.runtime.connection import Connection, open_nats, open_role_log
from claudecluster.runtime.driver import Driver, DriverOptions
from claudecluster.runtime.front_door import FrontDoor, open_front_door
from claudecluster.runtime.sandboxing import confinement_for
from claudecluster.runtime.worker.config import configured_worker
from claudecluster.settings import Settings
from claudecluster.transport.infrastructure import jetstream_infrastructure
from claudecluster.transport.jetstream import JetStreamEventLog

__all__ = ["open_local_services", "open_serving_front_door"]


@asynccontextmanager
async def open_local_services(
    conn: Connection,
    settings: Settings,
    *,
    workers: int,
    project_dir: Path,
    api_environment: dict[str, str] | None = None,
) -> AsyncIterator[LocalAutoscaler]:
    """Run a driver and ``workers`` local workers (none for 0) until the context exits.

    Raises:
        ConfigError: the sandbox is enabled but cannot work here (see ``--no-sandbox``).
    """
    api = settings.api_environment() if api_environment is None else api_environment
    confinement = confinement_for(settings)
    async with (
        open_role_log(conn, "driver", name="driver") as (driver_client, driver_log),
        open_role_log(conn, "worker", name="workers") as (worker_client, worker_log),
        # History and result bundles move on a connection of their own, so hundreds of MB
        # never queue ahead of the heartbeats, events and commands on the workers' one.
        open_nats(
            conn.url,
            name="claudecluster-transfers",
            auth=conn.role_auth("worker") if conn.role_auth else None,
        ) as transfers,
        _services(
            settings, driver_client, driver_log, worker_client, worker_log, transfers,
            workers=workers, project_dir=project_dir, api=api, confinement=confinement,
        ) as scaler,
    ):  # fmt: skip
        yield scaler


@asynccontextmanager
async def _services(
    settings: Settings,
    driver_client: Client,
    driver_log: JetStreamEventLog,
    worker_client: Client,
    worker_log: JetStreamEventLog,
    transfers: Client,
    *,
    workers: int,
    project_dir: Path,
    api: dict[str, str],
    confinement: Confinement,
) -> AsyncIterator[LocalAutoscaler]:
    options = DriverOptions(
        config=settings.driver_config(),
        work_dir=settings.driver.work_dir,
        api_environment=api,
        planner_executor=ClaudeCodeExecutor(confinement=confinement),
        confinement=confinement,
    )
    seams = jetstream_infrastructure(
        driver_log, driver_client, command_ack_wait_s=options.command_ack_wait_s
    )
    driver = Driver(driver_log, options=options, infrastructure=seams)
    template = replace(
        configured_worker(
            settings,
            worker_id="local",
            workspace_root=project_dir / ".claudecluster" / "workspaces",
            api_environment=api,
            confinement=confinement,
        ),
        heartbeat_s=2.0,
    )
    size = max(workers, 1)
    scaler = LocalAutoscaler(
        worker_log, worker_client, template,
        ScalePolicy(min_workers=size, max_workers=size), transfer_client=transfers,
    )  # fmt: skip
    async with anyio.create_task_group() as group:
        await group.start(driver.run)
        if workers > 0:  # 0: a driver alone, to act on a command (cancel, rollback)
            await group.start(scaler.run)
        try:
            yield scaler
        finally:
            group.cancel_scope.cancel()


@asynccontextmanager
async def open_serving_front_door(
    conn: Connection, settings: Settings, *, workers: int, project_dir: Path
) -> AsyncIterator[FrontDoor]:
    """The front door a server (the gateway, the MCP server) serves, with the configured
    bounds; on the embedded cluster, a driver and ``workers`` local workers beside it
    (nothing else acts on commands there).

    Raises:
        EventStoreError: the log could not be read.
        ConfigError: the sandbox is enabled but cannot work here.
    """
    async with (
        open_front_door(
            conn,
            max_tasks=settings.driver.max_tasks,
            default_task_limits=settings.limits.task_limits(),
            default_budget_usd=settings.limits.budget_usd,
        ) as door,
        AsyncExitStack() as stack,
    ):
        if conn.embedded:
            await stack.enter_async_context(
                open_local_services(conn, settings, workers=workers, project_dir=project_dir)
            )
        yield door
