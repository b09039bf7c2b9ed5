"""The baseline for benchmarks: the smallest honest MCP server on the same SDK, three trivial tools over stdio.

Run as `python benchmarks/bare_server.py`. It imports nothing from mmaudio_mcp.
"""

from __future__ import annotations

from mcp.server import MCPServer

server = MCPServer("bare", log_level="WARNING")


@server.tool()
async def generate_audio(prompt: str) -> str:
    """Submit a text-to-audio job."""
    return f"job for {prompt}"


@server.tool()
async def check_status(request_id: str) -> str:
    """Report the status of a job."""
    return f"{request_id}: done"


@server.tool()
async def download_audio(request_id: str) -> str:
    """Return where the audio of a finished job is."""
    return f"{request_id}.wav"


if __name__ == "__main__":
    server.run()
