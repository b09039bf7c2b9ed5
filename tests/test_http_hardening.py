"""Held-open HTTP connections do not lock anyone out: a real `serve --transport streamable-http` process limited to
256 file descriptors, 300 half-open requests against it, and an authenticated client still served."""

from __future__ import annotations

import logging
import sys
import time
from typing import TYPE_CHECKING

import anyio
import httpx2
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

from mmaudio_mcp.http_guard import RepeatFilter, connection_cap
from tests.processes import free_port, server_env

if TYPE_CHECKING:
    from pathlib import Path

    from anyio.abc import SocketStream

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
                async with httpx2.AsyncClient() as http:
                    with anyio.fail_after(20):
                        while True:
                            try:
                                if (await http.get(f"{url}/healthz")).status_code == 200:
                                    break
                            except httpx2.TransportError:
                                await anyio.sleep(0.1)
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
    repeat = RepeatFilter(window=0.2)
    message = "socket.accept() out of system resource"
    record = logging.LogRecord("asyncio", logging.ERROR, __file__, 1, message, None, None)
    passed = sum(repeat.filter(record) for _ in range(250_000))
    assert passed == 1
    time.sleep(0.25)
    assert repeat.filter(record)
    assert "and 249999 more like it" in record.getMessage()
