"""``claudecluster init``: a commented claudecluster.yaml and a .gitignore entry."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Final, Literal

from rich.console import Console
from rich.prompt import Prompt

from claudecluster.cli.app import EXIT_OK
from claudecluster.cli.templates import starter_files
from claudecluster.errors import ConfigError
from claudecluster.settings import (
    CONFIG_FILE_NAME,
    DEFAULT_RUN_BUDGET_USD,
    DEFAULT_TASK_MAX_COST_USD,
    DEFAULT_TASK_MAX_TURNS,
    DEFAULT_TASK_WALL_TIME_S,
    load_settings,
)

__all__ = ["init"]

_TEMPLATE: Final = """\
# ClaudeCluster configuration (docs/operations.md, docs/driver.md, docs/worker.md).
# Every key can also come from the environment (CLAUDECLUSTER_<SECTION>__<KEY>) or a flag;
# `claudecluster config show` prints the effective values and where each came from.
# Commented lines show the defaults.

{nats_block}

# driver:
#   max_running: 64          # task attempts queued or running at once, all runs
#   starts_per_s: 10         # sustained task starts per second
#   start_burst: 10          # starts allowed at once after a quiet spell
#   lost_after_s: 20         # a worker silent this long is declared lost
#   rate_limit_backoff_s: 2  # first pause of all starts after a rate-limit report

# worker:
#   copy_from: ../secrets    # a directory with untracked files to copy into workspaces
#   copy_files: [.env]       # which of its files (paths or globs)
#   setup_command: "pip install -e ."   # run in each workspace before the agent

limits:                      # safe defaults; a plan's per-task limits win, null lifts one
  max_turns: {max_turns}                # model turns one task attempt may take
  wall_time_s: {wall_time_s:g}           # seconds one attempt may run
  max_cost_usd: {max_cost_usd:g}            # USD one attempt may spend
  budget_usd: {budget_usd:g}             # USD one run may spend (run --budget wins); once
                               # reached, no further task starts and what merged stays

logging:
  level: INFO                # DEBUG, INFO, WARNING or ERROR

# gateway:                   # claudecluster gateway (docs/api.md)
#   host: 127.0.0.1
#   port: 8080
#   jwt_public_key: keys/gateway.pub.pem   # RS256; or the HS256 secret from the
#                                          # environment: CLAUDECLUSTER_GATEWAY__JWT_SECRET

# The API key is read from ANTHROPIC_API_KEY; keep it out of this file.
"""
_EMBEDDED: Final = """\
# nats:
#   url: nats://10.0.0.5:4222  # a NATS cluster; unset: the embedded nats-server, started
#                              # on demand with its data under .claudecluster/nats
#   port: 0                    # the embedded server's port (0: a free one)"""


def init(
    directory: Path = Path(),
    *,
    nats: str | None = None,
    force: bool = False,
    template: Literal["plan", "fanout", "ci"] | None = None,
) -> int:
    """Write a commented claudecluster.yaml and keep .claudecluster/ out of git.

    Asks for the NATS URL when run on a terminal; otherwise takes --nats (no URL: the
    embedded server). Refuses to overwrite an existing file without --force.

    Examples:
        claudecluster init
        claudecluster init ../service --nats nats://10.0.0.5:4222
        claudecluster init --force
        claudecluster init --template plan
        claudecluster init --template ci

    Args:
        directory: The project directory (default: this one).
        nats: A NATS cluster URL; without it the embedded server is used.
        force: Overwrite an existing claudecluster.yaml (and the template's files).
        template: Also write a starter: plan (plan.yaml, a small task graph to edit),
            fanout (fanout.sh, one task per matching file) or ci (a GitHub Actions
            workflow that runs a goal on a branch and opens the pull request).
    """
    console = Console(highlight=False)
    directory = directory.resolve()
    if not directory.is_dir():
        raise ConfigError("directory", str(directory), "no such directory")
    target = directory / CONFIG_FILE_NAME
    if target.exists() and not force:
        raise ConfigError("init", str(target), "the file exists; use --force to overwrite it")
    if nats is None and sys.stdin.isatty() and sys.stdout.isatty():
        nats = Prompt.ask("NATS URL (empty: the embedded server)", default="") or None
    nats_block = f"nats:\n  url: {nats}" if nats else _EMBEDDED
    text = _TEMPLATE.format(
        nats_block=nats_block,
        max_turns=DEFAULT_TASK_MAX_TURNS,
        wall_time_s=DEFAULT_TASK_WALL_TIME_S,
        max_cost_usd=DEFAULT_TASK_MAX_COST_USD,
        budget_usd=DEFAULT_RUN_BUDGET_USD,
    )
    starters = starter_files(template) if template is not None else {}
    for name in starters:
        if (directory / name).exists() and not force:
            raise ConfigError("template", str(directory / name),
                              "the file exists; use --force to overwrite it")  # fmt: skip
    candidate = directory / f".{CONFIG_FILE_NAME}.new"
    candidate.write_text(text, encoding="utf-8")
    try:
        load_settings(config_file=candidate, environ={})  # what we write must be valid
    finally:
        written = candidate.read_text(encoding="utf-8")
        candidate.unlink()
    target.write_text(written, encoding="utf-8")
    ignore = directory / ".gitignore"
    lines = ignore.read_text(encoding="utf-8").splitlines() if ignore.exists() else []
    if ".claudecluster/" not in lines:
        prefix = "" if not lines or ignore.read_text(encoding="utf-8").endswith("\n") else "\n"
        with ignore.open("a", encoding="utf-8") as out:
            out.write(f"{prefix}.claudecluster/\n")
        console.print(f"added .claudecluster/ to {ignore}", markup=False)
    console.print(f"wrote {target}", markup=False)
    for name, starter in starters.items():
        path = directory / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(starter.text, encoding="utf-8")
        if starter.executable:
            path.chmod(0o755)
        console.print(f"wrote {path}: {starter.next_step}", markup=False, soft_wrap=True)
    return EXIT_OK
