"""``claudecluster scripted-model``: serve a script as an offline Messages API."""

from __future__ import annotations

from pathlib import Path

import anyio
from rich.console import Console

from claudecluster.cli.app import EXIT_OK
from claudecluster.scripted_model.script import Script, load_script
from claudecluster.scripted_model.server import open_scripted_model

__all__ = ["scripted_model"]


def scripted_model(*, script: Path, port: int = 0, host: str = "127.0.0.1") -> int:
    """Serve a scripted Anthropic Messages API until interrupted.

    Point Claude Code at it with ANTHROPIC_BASE_URL=<the printed URL> and any
    ANTHROPIC_API_KEY; it then runs offline, turn by turn as the script says.

    Examples:
        claudecluster scripted-model --script demo.yaml --port 8765

    Args:
        script: A YAML script (see docs/scripted-model.md).
        port: Port to listen on; 0 picks a free one.
        host: Address to listen on; keep it on loopback.
    """
    loaded = load_script(script)
    anyio.run(_serve, loaded, host, port)
    return EXIT_OK


async def _serve(script: Script, host: str, port: int) -> None:
    console = Console(highlight=False)
    async with open_scripted_model(script, host=host, port=port) as model:
        console.print(f"scripted model listening on {model.url}", markup=False)
        console.print(f"export ANTHROPIC_BASE_URL={model.url}", markup=False)
        await anyio.sleep_forever()
