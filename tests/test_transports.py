"""The same tool calls over the HTTP transports, with the SDK client, on a real loopback socket."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import httpx2
import pytest
from mcp import Client
from mcp.client.sse import sse_client
from mcp.client.streamable_http import streamable_http_client

from mmaudio_mcp.server import build_server
from mmaudio_mcp.transport import Transport, http_app, serve_on_loopback
from tests.conftest import POLICY

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from mmaudio_mcp.sandbox import Sandbox
    from mmaudio_mcp.settings import Settings

HTTP_TRANSPORTS = [Transport.STREAMABLE_HTTP, Transport.SSE]


def connect(base_url: str, transport: Transport) -> Client:
    if transport is Transport.SSE:
        return Client(sse_client(f"{base_url}/sse"))
    return Client(streamable_http_client(f"{base_url}/mcp"))


@pytest.fixture(params=HTTP_TRANSPORTS, ids=[t.value for t in HTTP_TRANSPORTS])
async def served(
    request: pytest.FixtureRequest, settings: Settings, transport: httpx2.ASGITransport
) -> AsyncIterator[tuple[str, Transport]]:
    kind: Transport = request.param
    server = build_server(
        settings.model_copy(update={"transport": kind.value}), http_transport=transport, policy=POLICY
    )
    async with serve_on_loopback(http_app(server, kind)) as base_url:
        yield base_url, kind


async def test_generate_reports_progress_and_saves_the_file_over_http(
    served: tuple[str, Transport], settings: Settings
) -> None:
    """Progress notifications and the structured result survive both HTTP transports."""
    base_url, kind = served
    seen: list[float] = []

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        seen.append(progress)

    async with connect(base_url, kind) as client:
        result = await client.call_tool(
            "generate_audio", {"prompt": "wind in the trees", "duration": 3}, progress_callback=on_progress
        )
    assert not result.is_error, result.content
    assert result.structured_content is not None
    assert result.structured_content["status"] == "COMPLETED"
    assert Path(result.structured_content["file"]["path"]).parent == settings.output_dir
    assert seen, f"no progress over {kind.value}"
    assert seen == sorted(seen)


async def test_http_clients_share_one_job_service(served: tuple[str, Transport], sandbox: Sandbox) -> None:
    """A job made by one client is known, finished and cached for another (SSE included, whose SDK transport
    would otherwise open one service per connection)."""
    base_url, kind = served
    async with connect(base_url, kind) as first:
        made = await first.call_tool("generate_audio", {"prompt": "rain", "duration": 2})
    assert made.structured_content is not None
    async with connect(base_url, kind) as second:
        again = await second.call_tool("check_status", {"request_id": made.structured_content["request_id"]})
    assert again.structured_content is not None
    assert again.structured_content["file"] == made.structured_content["file"]
    assert sandbox.stats().media_fetches == {made.structured_content["request_id"]: 1}


async def test_healthz_reports_ready_without_auth_or_secrets(served: tuple[str, Transport]) -> None:
    """The probe answers 200 once the store and HTTP client are up, and says nothing more."""
    base_url, _ = served
    async with httpx2.AsyncClient() as http:
        reply = await http.get(f"{base_url}/healthz")
    assert reply.status_code == 200
    assert reply.json() == {"status": "ok"}


async def test_a_webhook_for_an_unknown_token_is_ignored(served: tuple[str, Transport], sandbox: Sandbox) -> None:
    """A callback whose path names no job gets 404 and causes no status poll."""
    base_url, _ = served
    async with httpx2.AsyncClient() as http:
        reply = await http.post(f"{base_url}/webhooks/not-a-token", json={"status": "COMPLETED"})
    assert reply.status_code == 404
    assert sandbox.stats().polls == {}
