"""Serve a built MCP server over stdio, SSE or streamable HTTP, and run ASGI apps on loopback.

Nothing here writes to stdout: under stdio it carries the protocol, and uvicorn's own logging is routed to the
`logging` configuration the CLI set up on stderr.
"""

from __future__ import annotations

import socket
from contextlib import asynccontextmanager
from enum import StrEnum
from typing import TYPE_CHECKING, Any, Final

import anyio

if TYPE_CHECKING:
    from collections.abc import AsyncGenerator

    from mcp.server import MCPServer
    from starlette.applications import Starlette
    from starlette.types import ASGIApp

LOOPBACK: Final = "127.0.0.1"


class Transport(StrEnum):
    """How hosts reach the server. stdio is what desktop and IDE hosts spawn; the others serve many clients."""

    STDIO = "stdio"
    SSE = "sse"
    STREAMABLE_HTTP = "streamable-http"


def http_app(server: MCPServer[Any], transport: Transport, host: str = LOOPBACK) -> Starlette:
    """Build the Starlette app for an HTTP transport (with the server's custom routes, e.g. /healthz)."""
    if transport is Transport.SSE:
        return _with_server_lifespan(server.sse_app(host=host), server)
    # Default (SSE-capable) responses: JSON-only mode would drop progress notifications and cancellation.
    return server.streamable_http_app(host=host)


def _with_server_lifespan(app: Starlette, server: MCPServer[Any]) -> Starlette:
    """Open the server's resources once for the app: the SDK's SSE transport runs the lifespan per connection,
    which would give each client its own job service, pollers and database connection."""
    lifespan = server.settings.lifespan
    if lifespan is None:
        return app

    @asynccontextmanager
    async def app_lifespan(_: Starlette) -> AsyncGenerator[None]:
        async with lifespan(server):
            yield

    app.router.lifespan_context = app_lifespan
    return app


async def serve(
    server: MCPServer[Any], transport: Transport = Transport.STDIO, *, host: str = LOOPBACK, port: int = 8000
) -> None:
    """Run the server until the host closes the connection (stdio) or the process is stopped (HTTP)."""
    if transport is Transport.STDIO:
        await server.run_stdio_async()
        return
    await serve_asgi(http_app(server, transport, host), host=host, port=port)


async def serve_asgi(app: ASGIApp, *, host: str, port: int) -> None:
    """Run an ASGI app with uvicorn in the current event loop until SIGINT/SIGTERM, logging through `logging`."""
    import uvicorn

    config = uvicorn.Config(app, host=host, port=port, log_config=None, access_log=False, lifespan="on")
    await uvicorn.Server(config).serve()


@asynccontextmanager
async def serve_on_loopback(app: ASGIApp) -> AsyncGenerator[str]:
    """Serve an ASGI app on a free loopback port inside this event loop; yield its base URL."""
    import uvicorn

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind((LOOPBACK, 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_config=None, access_log=False, lifespan="on"))
    server.install_signal_handlers = lambda: None  # type: ignore[method-assign]  # the host owns signals
    async with anyio.create_task_group() as tasks:
        tasks.start_soon(server.serve, [sock])
        while not server.started:  # noqa: ASYNC110 (uvicorn offers a flag, not an event)
            await anyio.sleep(0.01)
        try:
            yield f"http://{LOOPBACK}:{port}"
        finally:
            server.should_exit = True


__all__ = ["Transport", "http_app", "serve", "serve_asgi", "serve_on_loopback"]
