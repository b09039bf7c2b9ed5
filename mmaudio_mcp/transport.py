"""Serve a built MCP server over one of the transports a host can use."""

from __future__ import annotations

from enum import StrEnum
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mcp.server import MCPServer


class Transport(StrEnum):
    """How hosts reach the server. stdio is what desktop and IDE hosts spawn."""

    STDIO = "stdio"


async def serve(server: MCPServer[Any], transport: Transport = Transport.STDIO) -> None:
    """Run the server until the host closes the connection."""
    match transport:
        case Transport.STDIO:
            await server.run_stdio_async()


__all__ = ["Transport", "serve"]
