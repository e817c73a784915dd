"""The MCP server: the cluster's front door for Claude Code and other MCP clients.

``build_mcp_server`` makes the server (tools and resources on the shared front door);
``claudecluster mcp`` serves it over stdio, and ``McpHttpEndpoint`` over streamable HTTP
with sessions kept in JetStream KV, bearer tokens and Origin/Host checks.
"""

from claudecluster.mcp_server.server import build_mcp_server

__all__ = ["build_mcp_server"]
