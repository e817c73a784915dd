"""The names of the streams the code addresses directly.

``nats/topology.yaml`` declares these streams (and everything else on the bus); the names
live here, apart from the topology's models, so that a module which only reads or writes a
stream (the event log, the work queue, ``claudecluster status``) does not load the YAML and
pydantic machinery that applying the topology needs.
"""

from __future__ import annotations

from typing import Final

__all__ = ["COMMANDS_STREAM", "EVENTS_STREAM", "QUARANTINE_STREAM", "WORK_STREAM"]

EVENTS_STREAM: Final = "CC_EVENTS"
COMMANDS_STREAM: Final = "CC_COMMANDS"
WORK_STREAM: Final = "CC_WORK"
QUARANTINE_STREAM: Final = "CC_QUARANTINE"
