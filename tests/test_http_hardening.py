"""Held-open HTTP connections do not lock anyone out: a real `serve --transport streamable-http` process limited to
256 file descriptors, 300 half-open requests against it, and an authenticated client still served."""

from __future__ import annotations

import logging
import socket
import sys
import time
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING

import anyio
import httpx2
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

from mmaudio_mcp.http_guard import RepeatFilter, connection_cap, guarded_protocol
from tests.processes import free_port, server_env, until_healthy

if TYPE_CHECKING:
    from collections.abc import AsyncIterator
    from pathlib import Path

    from anyio.abc import SocketStream
    from starlette.types import Receive, Scope, Send

TOKEN = "hardening-test-token"
HALF_OPEN = 300
FD_LIMIT = 256


async def _half_open(port: int, held: list[SocketStream]) -> None:
    """A request that never finishes its headers (and was never authenticated)."""
    try:
        stream = await anyio.connect_tcp("127.0.0.1", port)
        await stream.send(b"POST /mcp HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n")
    except OSError:
        return  # refused or reset: the server made room
    held.append(stream)


@pytest.mark.e2e
@pytest.mark.filterwarnings("ignore:ping is removed")  # the 2025-11-25 ping, as hosts of that version send it
async def test_an_authenticated_ping_is_answered_while_300_half_open_requests_hold_sockets(tmp_path: Path) -> None:
    """The server runs under `ulimit -n 256`; 300 connections send partial headers and hold on. The authenticated
    client's ping and /healthz are still answered, and the log stays small (repeats are counted, not repeated)."""
    port = free_port()
    env = server_env(tmp_path, MMAUDIO_HTTP_TOKEN=TOKEN, PIXAZO_API_KEY="unused")
    command = f"ulimit -n {FD_LIMIT} && exec {sys.executable} -m mmaudio_mcp serve --transport streamable-http"
    log_path = tmp_path / "server.log"
    url = f"http://127.0.0.1:{port}"
    with log_path.open("wb") as log:
        async with await anyio.open_process(
            ["sh", "-c", f"{command} --port {port}"], env=env, stdout=log, stderr=log
        ) as server:
            try:
                await until_healthy(server, url, within=20)
                held: list[SocketStream] = []
                async with anyio.create_task_group() as tasks:
                    for _ in range(HALF_OPEN):
                        tasks.start_soon(_half_open, port, held)
                headers = {"Authorization": f"Bearer {TOKEN}"}
                started = time.monotonic()
                with anyio.fail_after(15):  # generous: the figure is printed below, not asserted
                    async with (
                        httpx2.AsyncClient(headers=headers) as authed,
                        Client(streamable_http_client(f"{url}/mcp", http_client=authed), mode="legacy") as client,
                    ):
                        await client.send_ping()  # pyright: ignore[reportDeprecated]
                        pinged = time.monotonic() - started
                    async with httpx2.AsyncClient() as http:
                        health = await http.get(f"{url}/healthz")
                print(f"\nping answered {pinged:.2f} s after {len(held)} of {HALF_OPEN} half-open connections")
                assert health.status_code == 200
                for stream in held:
                    await stream.aclose()
            finally:
                server.terminate()
                await server.wait()
    log_text = log_path.read_text(errors="replace")
    assert len(log_text) < 50_000, f"the log grew to {len(log_text)} bytes"
    assert log_text.count("out of system resource") <= 2


def test_the_connection_cap_leaves_descriptors_for_the_rest_of_the_server() -> None:
    """Under 256 descriptors, room remains for one accept burst and the store, the Pixazo client and files."""
    assert 8 <= connection_cap(256) <= 256 - 128 - 32
    assert connection_cap(1_000_000) == 4096


def test_a_repeated_message_is_logged_once_with_a_count() -> None:
    """250,000 identical errors become one line, and the next one after the window says how many were left out."""
    repeat = RepeatFilter(window=3600)
    message = "socket.accept() out of system resource"
    record = logging.LogRecord("asyncio", logging.ERROR, __file__, 1, message, None, None)
    passed = sum(repeat.filter(record) for _ in range(250_000))
    assert passed == 1
    repeat.window = 0.0  # the window has passed
    assert repeat.filter(record)
    assert "and 249999 more like it" in record.getMessage()


async def _hello(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] == "lifespan":
        while (await receive())["type"] != "lifespan.shutdown":
            pass
        await send({"type": "lifespan.shutdown.complete"})
        return
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
    await send({"type": "http.response.body", "body": b"ok"})


async def _closed_by_server(stream: SocketStream) -> bool:
    try:
        await stream.receive()
    except (anyio.EndOfStream, anyio.BrokenResourceError, OSError):
        return True
    return False


async def test_a_request_head_that_never_completes_is_closed_after_the_header_timeout() -> None:
    """A slow-loris connection (headers never finished) is closed by the server; a whole request is answered."""
    async with _guarded_server(header_seconds=0.3, max_connections=50) as port:
        loris = await anyio.connect_tcp("127.0.0.1", port)
        await loris.send(b"GET / HTTP/1.1\r\nHost: x\r\n")
        with anyio.fail_after(5):
            assert await _closed_by_server(loris)
        async with httpx2.AsyncClient() as http:
            assert (await http.get(f"http://127.0.0.1:{port}/")).text == "ok"


async def test_over_the_cap_the_oldest_half_open_connection_makes_room() -> None:
    """With 5 connections allowed and 10 half-open ones, the oldest are closed and a whole request is served."""
    async with _guarded_server(header_seconds=60, max_connections=5) as port:
        held = [await anyio.connect_tcp("127.0.0.1", port) for _ in range(10)]
        for stream in held:
            await stream.send(b"GET / HTTP/1.1\r\n")
        async with httpx2.AsyncClient() as http:
            with anyio.fail_after(5):
                assert (await http.get(f"http://127.0.0.1:{port}/")).text == "ok"
        with anyio.fail_after(5):
            assert all([await _closed_by_server(stream) for stream in held[:5]]), "the five oldest were closed"


@asynccontextmanager
async def _guarded_server(*, header_seconds: float, max_connections: int) -> AsyncIterator[int]:
    import uvicorn

    protocol = guarded_protocol(header_seconds=header_seconds, max_connections=max_connections)
    config = uvicorn.Config(_hello, log_config=None, access_log=False, http=protocol, lifespan="off")
    server = uvicorn.Server(config)
    server.install_signal_handlers = lambda: None  # type: ignore[method-assign]
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    async with anyio.create_task_group() as tasks:
        tasks.start_soon(server.serve, [sock])
        while not server.started:  # noqa: ASYNC110 (uvicorn offers a flag)
            await anyio.sleep(0.01)
        try:
            yield sock.getsockname()[1]
        finally:
            server.should_exit = True
