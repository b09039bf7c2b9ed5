"""Serve a built MCP server over stdio, SSE or streamable HTTP, and run ASGI apps on loopback.

Nothing here writes to stdout: under stdio it carries the protocol, and uvicorn's own logging is routed to the
`logging` configuration the CLI set up on stderr.
"""

from __future__ import annotations

import hmac
import logging
import os
import socket
import sys
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final
from urllib.parse import urlsplit

import anyio

from mmaudio_mcp.errors import ConfigurationError
from mmaudio_mcp.pixazo import is_loopback
from mmaudio_mcp.settings import Transport

if TYPE_CHECKING:
    from collections.abc import AsyncGenerator

    from mcp.server import MCPServer
    from mcp.server.transport_security import TransportSecuritySettings
    from starlette.applications import Starlette
    from starlette.types import ASGIApp, Receive, Scope, Send

logger = logging.getLogger(__name__)

LOOPBACK: Final = "127.0.0.1"
GRACEFUL_SHUTDOWN_SECONDS: Final = 5


@dataclass(frozen=True)
class Exposure:
    """Who may reach the HTTP transports: the bound address, a bearer token, and the names the server answers to."""

    host: str = LOOPBACK
    port: int = 8000
    token: str | None = None
    allow_unauthenticated: bool = False
    public_url: str | None = None
    allowed_hosts: tuple[str, ...] = ()
    stateless: bool = False
    """Streamable HTTP without sessions, so any replica behind a load balancer answers any request."""

    @property
    def open_to_all(self) -> bool:
        """Reachable from other machines with no token asked."""
        return not (is_loopback(self.host) or self.token)

    def check(self, transport: Transport = Transport.STREAMABLE_HTTP) -> None:
        """Refuse what must not be served: paid generation on the network without a token (unless explicitly
        allowed), and SSE without sessions. Says nothing otherwise: `serve` logs how it listens."""
        if self.open_to_all and not self.allow_unauthenticated:
            raise ConfigurationError(
                f"Refusing to listen on {self.host} without MMAUDIO_HTTP_TOKEN: anyone who can reach this address "
                "could spend your Pixazo balance. Set MMAUDIO_HTTP_TOKEN, bind 127.0.0.1, or pass "
                "--allow-unauthenticated if something in front of this server authenticates clients."
            )
        if self.stateless and transport is Transport.SSE:
            raise ConfigurationError(
                "SSE keeps each client's session in one process, so it cannot run stateless (as replicas must); use "
                "--transport streamable-http."
            )

    def security(self) -> TransportSecuritySettings:
        """DNS-rebinding protection: only loopback names, the bound address, the public URL's host and any
        configured names are accepted in Host and Origin."""
        from mcp.server.transport_security import TransportSecuritySettings

        names = ["127.0.0.1", "localhost", "[::1]", *self.allowed_hosts]
        if self.host not in ("0.0.0.0", "::", ""):  # noqa: S104 (a comparison, not a bind)
            names.append(f"[{self.host}]" if ":" in self.host else self.host)
        if self.public_url and (public_host := urlsplit(self.public_url).netloc):
            names.append(public_host)
        hosts = [pattern for name in names for pattern in (name, f"{name}:*")]
        origins = [f"{scheme}://{host}" for scheme in ("http", "https") for host in hosts]
        return TransportSecuritySettings(allowed_hosts=hosts, allowed_origins=origins)


def http_app(server: MCPServer[Any], transport: Transport, exposure: Exposure | None = None) -> ASGIApp:
    """Build the ASGI app for an HTTP transport: the SDK's app (with /healthz and the webhook route), behind
    DNS-rebinding checks and, when a token is configured, bearer authentication."""
    exposure = exposure or Exposure()
    security = exposure.security()
    if transport is Transport.SSE:
        app = _with_server_lifespan(server.sse_app(host=exposure.host, transport_security=security), server)
    else:
        # Default (SSE-capable) responses: JSON-only mode would drop progress notifications and cancellation.
        app = server.streamable_http_app(
            host=exposure.host, transport_security=security, stateless_http=exposure.stateless
        )
    return BearerAuth(app, exposure.token) if exposure.token else app


class BearerAuth:
    """Require `Authorization: Bearer <token>` on every HTTP request except the health probe and webhooks
    (whose unguessable per-job path is their credential)."""

    OPEN_PATHS: Final = ("/healthz", "/webhooks/")
    NO_METADATA: Final = "/.well-known/"
    """OAuth discovery paths: we have no OAuth metadata, and a probing client should hear 404, not 401."""

    def __init__(self, app: ASGIApp, token: str) -> None:
        self.app = app
        self._expected = f"Bearer {token}".encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"].startswith(self.OPEN_PATHS):
            await self.app(scope, receive, send)
            return
        if scope["path"].startswith(self.NO_METADATA):
            await _answer(send, 404, b'{"error": "not found"}')
            return
        given = next((value for name, value in scope["headers"] if name == b"authorization"), None)
        if given is not None and hmac.compare_digest(given, self._expected):
            await self.app(scope, receive, send)
            return
        # RFC 6750 section 3.1: no error code when the request carried no credentials at all.
        challenge = b'Bearer realm="mmaudio-mcp"' + (b', error="invalid_token"' if given is not None else b"")
        await _answer(send, 401, b'{"error": "missing or invalid bearer token"}', (b"www-authenticate", challenge))


async def _answer(send: Send, status: int, body: bytes, *headers: tuple[bytes, bytes]) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"application/json"), *headers],
        }
    )
    await send({"type": "http.response.body", "body": body})


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
    server: MCPServer[Any], transport: Transport = Transport.STDIO, exposure: Exposure | None = None
) -> None:
    """Run the server until the host closes the connection (stdio) or the process is stopped (HTTP)."""
    if transport is Transport.STDIO:
        if sys.platform != "win32" and os.isatty(0):
            await _serve_stdio_at_a_terminal(server)
        else:
            await server.run_stdio_async()
        return
    exposure = exposure or Exposure()
    exposure.check(transport)  # again, for callers that did not check before starting things (it only refuses)
    if exposure.open_to_all:
        logger.warning("serving on %s with no bearer token (--allow-unauthenticated)", exposure.host)
    await serve_asgi(http_app(server, transport, exposure), host=exposure.host, port=exposure.port)


async def _serve_stdio_at_a_terminal(server: MCPServer[Any]) -> None:
    """Serve stdio typed at a terminal, where Ctrl+C must end the process at once.

    The SDK reads stdin in a worker thread that a cancellation cannot interrupt: after Ctrl+C it waited for one
    more line (an Enter). Here stdin is a pipe, fed from the terminal by this task, which a cancellation does stop;
    closing the pipe then gives the SDK's reader its end of input, and everything winds down.
    """
    terminal = os.dup(0)
    read_end, write_end = os.pipe()
    os.dup2(read_end, 0)
    os.close(read_end)
    try:
        async with anyio.create_task_group() as tasks:

            async def run() -> None:
                await server.run_stdio_async()
                tasks.cancel_scope.cancel()  # the SDK ended on its own: stop feeding it

            tasks.start_soon(run)
            await _feed(terminal, write_end)  # here, in the host task: a Ctrl+C cancels this await first
    finally:
        os.dup2(terminal, 0)
        os.close(terminal)


async def _feed(source: int, sink: int) -> None:
    """Copy what the terminal sends into the pipe until the terminal's end of input (Ctrl+D) or a cancellation;
    either way close the pipe, which is the SDK reader's end of input."""
    os.set_blocking(sink, False)
    try:
        while True:
            await anyio.wait_readable(source)
            data = os.read(source, 65536)
            if not data:
                return
            while data:
                try:
                    data = data[os.write(sink, data) :]
                except BlockingIOError:
                    await anyio.wait_writable(sink)
    finally:
        os.close(sink)


class _ShutdownCancelFilter(logging.Filter):
    """Drop uvicorn's traceback for a call it cancels at the end of the graceful shutdown: the cancellation is the
    intended outcome (its job is stored; uvicorn already logs one line saying it cancelled it)."""

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        return not isinstance(error, anyio.get_cancelled_exc_class())


async def serve_asgi(app: ASGIApp, *, host: str, port: int) -> None:
    """Run an ASGI app with uvicorn in the current event loop until SIGINT/SIGTERM, logging through `logging`."""
    import uvicorn

    from mmaudio_mcp.http_guard import ACCEPT_BURST, IDLE_SECONDS, guarded_protocol, quiet_repeats

    # In-flight tool calls get a few seconds to finish on SIGTERM/SIGINT; their jobs are already stored, so a call
    # cut short is resumed with check_status, and a long wait must not hold a shutdown for minutes.
    # Sockets held open (half-sent requests, idle keep-alives) time out, and the connection cap keeps clients and
    # /healthz served below the descriptor limit (see http_guard).
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        log_config=None,
        access_log=False,
        lifespan="on",
        timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_SECONDS,
        http=guarded_protocol(),
        timeout_keep_alive=int(IDLE_SECONDS),
        backlog=ACCEPT_BURST,
    )
    logging.getLogger("uvicorn.error").addFilter(_ShutdownCancelFilter())
    quiet_repeats("asyncio", "uvicorn.error", "mmaudio_mcp.http_guard")
    await uvicorn.Server(config).serve()


@asynccontextmanager
async def serve_on_loopback(app: ASGIApp, *, port: int = 0) -> AsyncGenerator[str]:
    """Serve an ASGI app on a loopback port (a free one by default) inside this event loop; yield its base URL."""
    import uvicorn

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind((LOOPBACK, port))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_config=None, access_log=False, lifespan="on"))
    server.install_signal_handlers = lambda: None  # type: ignore[method-assign]  # the host owns signals
    failure: Exception | None = None
    async with anyio.create_task_group() as tasks:
        tasks.start_soon(server.serve, [sock])
        while not server.started:  # noqa: ASYNC110 (uvicorn offers a flag, not an event)
            await anyio.sleep(0.01)
        try:
            yield f"http://{LOOPBACK}:{port}"
        except Exception as exc:  # re-raised below, unwrapped, once the server has shut down cleanly
            failure = exc
        finally:
            server.should_exit = True
    if failure is not None:
        raise failure


__all__ = [
    "BearerAuth",
    "Exposure",
    "Transport",
    "http_app",
    "is_loopback",
    "serve",
    "serve_asgi",
    "serve_on_loopback",
]
