"""A scripted Anthropic Messages API on loopback, so the real Claude Code CLI runs offline.

``claudecluster scripted-model --script FILE --port P`` serves a script from the command
line; :func:`open_scripted_model` serves one inside a test or the demo.
"""

from claudecluster.scripted_model.script import (
    InjectedError,
    Reply,
    Script,
    ScriptedTask,
    ToolCall,
    Turn,
    decide,
    load_script,
)
from claudecluster.scripted_model.server import ScriptedModel, ServedRequest, open_scripted_model

__all__ = [
    "InjectedError",
    "Reply",
    "Script",
    "ScriptedModel",
    "ScriptedTask",
    "ServedRequest",
    "ToolCall",
    "Turn",
    "decide",
    "load_script",
    "open_scripted_model",
]
