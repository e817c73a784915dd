"""``claudecluster mcp``: the MCP server over stdio, for Claude Code and other MCP clients.

The client starts this command and speaks JSON-RPC on its stdin and stdout, so nothing
else may be written to stdout: logs go to stderr. With an external NATS (``--nats`` or
``nats.url``) the server only talks to the driver and workers already running there. On
the embedded server of this directory it also runs a driver and a local worker pool for
as long as the client keeps it open, exactly as ``claudecluster run`` does, so a run
started from the client makes progress without anything else running.
"""

from __future__ import annotations

import contextlib
import signal
from pathlib import Path

import anyio
import psutil

from claudecluster.cli.app import EXIT_OK, command_settings
from claudecluster.errors import ConfigError
from claudecluster.runtime.connection import open_configured_cluster
from claudecluster.runtime.local_cluster import open_serving_front_door
from claudecluster.settings import Settings

__all__ = ["mcp"]


def mcp(
    *,
    repo: Path | None = None,
    workers: int = 3,
    nats: str | None = None,
    config: Path | None = None,
) -> int:
    """Serve the MCP tools over stdio (for `claude mcp add`).

    Examples:
        claude mcp add claudecluster -- claudecluster mcp
        claudecluster mcp --nats nats://cluster:4222

    Args:
        repo: The repository runs work on when a tool call names none (default: here).
        workers: Local workers to run beside the server (embedded cluster only).
        nats: NATS URL (default: nats.url, else the embedded server of this directory).
        config: A claudecluster.yaml to read instead of the one in this directory.
    """
    if workers < 0:
        raise ConfigError("workers", "flag --workers", "must be 0 or more")
    settings = command_settings(nats, config)  # its logs go to stderr: stdout is the protocol
    project = (repo or Path.cwd()).resolve()
    previous = {sig: signal.signal(sig, _stop_children) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        anyio.run(_serve, settings, project, workers)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return EXIT_OK


def _stop_children(signum: int, frame: object) -> None:
    """On SIGINT or SIGTERM, ask our child processes (an embedded nats-server) to stop,
    then unwind as for Ctrl-C.

    Claude Code ends a stdio server with SIGINT, SIGTERM 100 ms later and then kills it
    (measured with Claude Code 2.1.330), which leaves no time for an orderly shutdown;
    a nats-server we started would outlive us. Told to stop now, it flushes its store
    and exits on its own, whatever becomes of this process.
    """
    for child in psutil.Process().children():
        with contextlib.suppress(psutil.Error):  # already gone: nothing to stop
            if child.name().startswith("nats-server"):
                child.terminate()
    raise KeyboardInterrupt


async def _serve(settings: Settings, project: Path, workers: int) -> None:
    async with (
        open_configured_cluster(settings, project_dir=project, name="claudecluster-mcp") as conn,
        open_serving_front_door(conn, settings, workers=workers, project_dir=project) as door,
    ):
        # Imported here, not at the top: the mcp package is most of the CPU every CLI
        # process (each worker and driver too) spends starting, and only this command needs it.
        from claudecluster.mcp_server.server import build_mcp_server
        from claudecluster.runtime.plan_previews import configured_drafter

        server = build_mcp_server(
            door, default_repo=str(project), drafter=configured_drafter(settings, project)
        )
        # Returns when the client closes our stdin, the way a client ends a stdio server;
        # the workers and an embedded nats-server then stop with the contexts above.
        await server.run_stdio_async()
