"""The embedded default in one process: the driver and a local worker pool next to the
embedded nats-server, for ``claudecluster run`` and ``claudecluster demo``.

They are the same actors that run as separate processes elsewhere (``claudecluster
driver``, ``claudecluster worker``); here they share this process and its NATS
connection, and they stop with it. The run itself is in the durable log, so a run left
unfinished continues whenever a driver and workers run again on the same store.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import anyio

from claudecluster.actors.scaling import ScalePolicy
from claudecluster.executors.claude_code import ClaudeCodeExecutor
from claudecluster.runtime.autoscaler import LocalAutoscaler
from claudecluster.runtime.connection import Connection, open_nats
from claudecluster.runtime.driver import Driver, DriverOptions
from claudecluster.runtime.worker import WorkerConfig
from claudecluster.settings import Settings

__all__ = ["open_local_services"]


@asynccontextmanager
async def open_local_services(
    conn: Connection,
    settings: Settings,
    *,
    workers: int,
    project_dir: Path,
    api_environment: dict[str, str] | None = None,
) -> AsyncIterator[LocalAutoscaler]:
    """Run a driver and ``workers`` local workers (none for 0) until the context exits."""
    api = settings.api_environment() if api_environment is None else api_environment
    driver = Driver(
        conn.log,
        conn.client.jetstream(),
        DriverOptions(
            config=settings.driver_config(),
            work_dir=settings.driver.work_dir,
            api_environment=api,
            planner_executor=ClaudeCodeExecutor(),
        ),
    )
    template = WorkerConfig(
        worker_id="local",
        workspace_root=project_dir / ".claudecluster" / "workspaces",
        api_environment=api,
        copy_from=settings.worker.copy_from,
        copy_files=tuple(settings.worker.copy_files),
        setup_command=settings.worker.setup_command,
        setup_timeout_s=settings.worker.setup_timeout_s,
        heartbeat_s=2.0,
        repo_cache=settings.worker.repo_cache,
        repo_remotes=dict(settings.worker.repo_remotes),
    )
    size = max(workers, 1)
    async with (
        # History and result bundles move on a connection of their own, so hundreds of MB
        # never queue ahead of the heartbeats, events and commands on this one.
        open_nats(conn.url, name="claudecluster-transfers") as transfers,
        anyio.create_task_group() as group,
    ):
        scaler = LocalAutoscaler(
            conn.log, conn.client, template, ScalePolicy(min_workers=size, max_workers=size),
            transfer_client=transfers,
        )  # fmt: skip
        await group.start(driver.run)
        if workers > 0:  # 0: a driver alone, to act on a command (cancel, rollback)
            await group.start(scaler.run)
        try:
            yield scaler
        finally:
            group.cancel_scope.cancel()
