"""The ``claudecluster`` command line (cyclopts)."""

import sys

from claudecluster.cli import admin_cmd as _admin  # noqa: F401 - registers the commands
from claudecluster.cli import control_cmd as _control  # noqa: F401 - registers the commands
from claudecluster.cli import creds_cmd as _creds  # noqa: F401 - registers the commands
from claudecluster.cli import demo as _demo  # noqa: F401 - registers the command
from claudecluster.cli import driver_cmd as _driver  # noqa: F401 - registers it
from claudecluster.cli import events_cmd as _events  # noqa: F401 - registers the commands
from claudecluster.cli import gateway_cmd as _gateway  # noqa: F401 - registers the commands
from claudecluster.cli import init_cmd as _init  # noqa: F401 - registers it
from claudecluster.cli import inspect_cmd as _inspect  # noqa: F401 - registers the commands
from claudecluster.cli import mcp_cmd as _mcp  # noqa: F401 - registers it
from claudecluster.cli import run_cmd as _run  # noqa: F401 - registers it
from claudecluster.cli import scripted_model_cmd as _scripted  # noqa: F401 - registers it
from claudecluster.cli import simulate_cmd as _simulate  # noqa: F401 - registers it
from claudecluster.cli import worker_cmd as _worker  # noqa: F401 - registers it
from claudecluster.cli.app import app, run

__all__ = ["app", "main", "run"]


def main() -> None:
    """Console-script entry point."""
    sys.exit(run())
