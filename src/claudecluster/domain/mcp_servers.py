"""The MCP servers a plan gives a task's agent: checked once, written as Claude Code reads them.

A plan task (or a task in the API) may name ``mcp_servers``: ``name -> {command, args,
env}`` for a server Claude Code starts over stdio, or ``name -> {url}`` for a
streamable-HTTP one. The agent sees each server's tools as ``mcp__NAME__TOOL`` (and may
call them without asking only when the task's ``allowed_tools`` names them).

Where they run decides what is allowed: a stdio server is the agent's child, so it runs
inside the attempt's confinement with the agent's view of the files and network; a URL
server is reached through the sandbox's network, so its ``host:port`` must be one of the
task's ``network.allow`` destinations, or the sandbox could not reach it.

Every door checks a submission with :func:`mcp_servers_problem` (through
:func:`~claudecluster.domain.submission.submission_problem`), the driver's core again; the
driver writes the servers into the work item with :func:`mcp_config_json`, and a worker
runs an item that has any only when its settings allow plan MCP servers.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Final
from urllib.parse import urlsplit

import msgspec

from claudecluster.domain.network import Destination, parse_destination
from claudecluster.events.model import McpServer, is_id

__all__ = ["MAX_MCP_SERVERS", "mcp_config_json", "mcp_servers_problem"]

#: Servers one task may name.
MAX_MCP_SERVERS: Final = 16
_ENV_NAME: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,127}")
_MAX_ENV: Final = 64


def _has_control(text: str) -> bool:
    return any(ord(ch) < 0x20 or ord(ch) == 0x7F for ch in text)


def _server_problem(server: McpServer, allowed: Sequence[str]) -> tuple[str, str] | None:
    """The first thing wrong with one server, as ``(field, problem)``, or None."""
    if bool(server.command) == bool(server.url):
        return "", "give either command (a stdio server) or url (an HTTP server), not both"
    if server.url:
        if server.args or server.env:
            return "url", "an HTTP server takes no args or env"
        parts = urlsplit(server.url)
        if parts.scheme not in ("http", "https") or not parts.hostname or _has_control(server.url):
            return "url", "must be an http:// or https:// URL with a host"
        try:
            port = parts.port or (443 if parts.scheme == "https" else 80)
        except ValueError:
            return "url", "the port is not a number from 1 to 65535"
        host = parts.hostname.lower()
        reachable = set()
        for given in allowed:
            try:
                reachable.add(parse_destination(given))
            except ValueError:
                continue  # the allowance's own check names it
        if Destination(host=host, port=port) not in reachable:
            return "url", (
                f"the attempt's sandbox reaches only its network.allow destinations; add "
                f"'{host}:{port}' to the task's (or the plan's) network.allow"
            )
        return None
    if _has_control(server.command) or any(_has_control(arg) for arg in server.args):
        return "command", "control characters are not allowed"
    if len(server.env) > _MAX_ENV:
        return "env", f"at most {_MAX_ENV} variables"
    for key, value in server.env.items():
        if not _ENV_NAME.fullmatch(key):
            return f"env.{key}", "not a valid environment variable name"
        if "\x00" in value:
            return f"env.{key}", "NUL is not allowed"
    return None


def mcp_servers_problem(
    servers: Mapping[str, McpServer], allowed: Sequence[str] = ()
) -> tuple[str, str] | None:
    """The first server ``servers`` gets wrong, as ``(field below mcp_servers, problem)``.

    Args:
        servers: the task's servers by name.
        allowed: the task's ``network.allow`` (the plan's and its own), which a URL
            server's address must be in.
    """
    if len(servers) > MAX_MCP_SERVERS:
        return "", f"at most {MAX_MCP_SERVERS} servers per task"
    for name, server in servers.items():
        # A server's name becomes part of its tools' names (``mcp__NAME__TOOL``): an id.
        if not is_id(name):
            return (
                name,
                "a name is letters, digits, '_' and '-' (at most 64), first a letter or digit",
            )
        found = _server_problem(server, allowed)
        if found is not None:
            field, problem = found
            return (f"{name}.{field}" if field else name), problem
    return None


def mcp_config_json(servers: Mapping[str, McpServer]) -> str:
    """The servers as Claude Code's ``--mcp-config`` file (``{"mcpServers": {...}}``).

    Empty when there are none, which is how a work item says "no MCP servers".
    """
    if not servers:
        return ""
    config: dict[str, dict[str, object]] = {}
    for name, server in sorted(servers.items()):
        if server.url:
            config[name] = {"type": "http", "url": server.url}
        else:
            entry: dict[str, object] = {"type": "stdio", "command": server.command}
            entry["args"] = list(server.args)
            entry["env"] = dict(server.env)
            config[name] = entry
    return msgspec.json.encode({"mcpServers": config}).decode()
