"""Event log and topology adapters: the interface, an in-memory and a JetStream one."""

from claudecluster.transport.base import AppendResult, EventLog, QuarantinedMessage, read_all
from claudecluster.transport.memory import MemoryEventLog

__all__ = ["AppendResult", "EventLog", "MemoryEventLog", "QuarantinedMessage", "read_all"]
