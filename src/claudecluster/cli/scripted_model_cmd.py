"""``claudecluster scripted-model``: serve a script as an offline Messages API."""

from __future__ import annotations

import signal
from pathlib import Path

import anyio
from rich.console import Console

from claudecluster.cli.app import EXIT_INTERRUPTED, EXIT_OK
from claudecluster.scripted_model.script import Script, load_script
from claudecluster.scripted_model.server import open_scripted_model

__all__ = ["scripted_model"]


def scripted_model(*, script: Path, port: int = 0, host: str = "127.0.0.1") -> int:
    """Serve a scripted Anthropic Messages API until interrupted.

    Point Claude Code at it with ANTHROPIC_BASE_URL=<the printed URL> and any
    ANTHROPIC_API_KEY; it then runs offline, turn by turn as the script says. It exits
    130 on SIGINT (Ctrl-C) and 0 on SIGTERM.

    Examples:
        claudecluster scripted-model --script demo.yaml --port 8765

    Args:
        script: A YAML script (see docs/scripted-model.md).
        port: Port to listen on; 0 picks a free one.
        host: Address to listen on; keep it on loopback.
    """
    loaded = load_script(script)
    stopped_by = anyio.run(_serve, loaded, host, port)
    return EXIT_INTERRUPTED if stopped_by == signal.SIGINT else EXIT_OK


async def _serve(script: Script, host: str, port: int) -> int:
    """Serve until SIGINT or SIGTERM arrives; returns the signal that stopped it."""
    console = Console(highlight=False)
    # Listening before the server starts: a signal sent as soon as the URL is printed is
    # received, never left to a default handler.
    with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with open_scripted_model(script, host=host, port=port) as model:
            console.print(f"scripted model listening on {model.url}", markup=False)
            console.print(f"export ANTHROPIC_BASE_URL={model.url}", markup=False)
            received = await anext(signals)
            console.print("scripted model stopping", markup=False)
            return int(received)
