"""The ``claudecluster`` command line (cyclopts).

Every command is registered by its import path and imported only when it runs: the
gateway's module loads mcp, starlette and uvicorn, the worker's claude_agent_sdk, and
most load nats, and ``claudecluster --help`` or ``status`` should pay for none of what
they do not use. The short help each command shows in ``--help`` is written here, next to
its path, because showing it must not import the command (a test checks it matches the
command's own docstring).
"""

import sys
from typing import Final

from claudecluster.cli.app import app, run

__all__ = ["COMMANDS", "app", "main", "run"]

#: (import path, command name, short help) of every top-level command, in help order.
COMMANDS: Final = (
    (
        "claudecluster.cli.archive_cmd:archive",
        "archive",
        "Move runs that finished long ago out of the live event log, into its archive.",
    ),
    (
        "claudecluster.cli.autoscale_cmd:autoscale",
        "autoscale",
        "Size a pool to its work: queued, running and the widest layer of what is left.",
    ),
    (
        "claudecluster.cli.control_cmd:cancel",
        "cancel",
        "Cancel a run, or one task (its dependents are skipped).",
    ),
    (
        "claudecluster.cli.admin_cmd:config_app",
        "config",
        "The effective configuration and where it came from.",
    ),
    (
        "claudecluster.cli.creds_cmd:creds_app",
        "creds",
        "The bus's identities: seed files for workers and tools.",
    ),
    (
        "claudecluster.cli.demo:demo",
        "demo",
        "Run a real goal offline: 8 tasks, 3 workers, the Claude Code CLI on a scripted model.",
    ),
    (
        "claudecluster.cli.doctor_cmd:doctor",
        "doctor",
        "Check that this machine can run a goal: git, Claude Code, sign-in, NATS, disk, sandbox.",
    ),
    (
        "claudecluster.cli.driver_cmd:driver",
        "driver",
        "Run the driver: plan submitted runs, dispatch their tasks, merge, retry, roll back.",
    ),
    (
        "claudecluster.cli.events_cmd:events_app",
        "events",
        "The event catalogue for other tools: JSON Schemas.",
    ),
    (
        "claudecluster.cli.inspect_cmd:export",
        "export",
        "Export a run's report: JSON for tools, Markdown for notes, or one HTML file.",
    ),
    (
        "claudecluster.cli.gateway_cmd:gateway_app",
        "gateway",
        "The HTTP/WebSocket gateway: serve it, or its OpenAPI.",
    ),
    (
        "claudecluster.cli.init_cmd:init",
        "init",
        "Write a commented claudecluster.yaml and keep .claudecluster/ out of git.",
    ),
    (
        "claudecluster.cli.inspect_cmd:logs",
        "logs",
        "Print what agents said and did: one task's log, or every task's of a run interleaved.",
    ),
    (
        "claudecluster.cli.mcp_cmd:mcp",
        "mcp",
        "Serve the MCP tools over stdio (for `claude mcp add`).",
    ),
    (
        "claudecluster.cli.inspect_cmd:replay_cmd",
        "replay",
        "Replay the event log: print the events, then the state they add up to.",
    ),
    (
        "claudecluster.cli.control_cmd:retry",
        "retry",
        "Run an ended run's failed, skipped and cancelled tasks again, or only the named ones.",
    ),
    (
        "claudecluster.cli.control_cmd:rollback",
        "rollback",
        "Move a finished run's branch back: to before a task merged, or to a log sequence.",
    ),
    (
        "claudecluster.cli.run_cmd:run",
        "run",
        "Split a goal into tasks, run them in parallel with Claude Code, merge the results.",
    ),
    (
        "claudecluster.cli.scripted_model_cmd:scripted_model",
        "scripted-model",
        "Serve a scripted Anthropic Messages API until interrupted.",
    ),
    (
        "claudecluster.cli.simulate_cmd:simulate",
        "simulate",
        "Run simulation scenarios of the driver's scheduler and check its invariants.",
    ),
    (
        "claudecluster.cli.inspect_cmd:status",
        "status",
        "Show runs, one run with its tasks, or one task.",
    ),
    (
        "claudecluster.cli.gateway_cmd:token_app",
        "token",
        "Bearer tokens for the gateway.",
    ),
    (
        "claudecluster.cli.worker_cmd:worker",
        "worker",
        "Run a worker: take task attempts from a pool's queue and run them with Claude Code.",
    ),
    (
        "claudecluster.cli.admin_cmd:workers_app",
        "workers",
        "The worker pool: list, add local workers, drain one.",
    ),
)

for _path, _name, _help in COMMANDS:
    app.command(_path, name=_name, help=_help)


def main() -> None:
    """Console-script entry point."""
    sys.exit(run())
