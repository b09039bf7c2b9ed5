"""Webhooks: Pixazo's callback wakes the one poller for its job, which trusts only the status it reads back."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

import anyio
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

from mmaudio_mcp.sandbox import SandboxConfig, create_sandbox
from mmaudio_mcp.server import build_server
from mmaudio_mcp.transport import Transport, http_app, serve_on_loopback
from tests.conftest import POLICY, SPEED
from tests.processes import free_port

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    import httpx2

    from mmaudio_mcp.sandbox import Sandbox
    from mmaudio_mcp.settings import Settings

# Without a webhook the safety-net poll would come seconds after the job ends: any earlier completion is the
# webhook's doing.
SLOW_SAFETY_NET = replace(POLICY, overhead_seconds=5.0, first_poll_cap=30.0)


@pytest.fixture
def sandbox() -> Sandbox:
    return create_sandbox(SandboxConfig(speed=SPEED, webhook_duplicates=2))


@pytest.fixture
async def client(settings: Settings, transport: httpx2.ASGITransport, sandbox: Sandbox) -> AsyncIterator[Client]:
    """A streamable-HTTP server whose public URL is where the sandbox sends its callbacks."""
    port = free_port()
    served = settings.model_copy(update={"transport": "streamable-http", "public_url": f"http://127.0.0.1:{port}"})
    server = build_server(served, http_transport=transport, policy=SLOW_SAFETY_NET)
    async with (
        serve_on_loopback(http_app(server, Transport.STREAMABLE_HTTP), port=port) as url,
        anyio.create_task_group() as tasks,
    ):
        tasks.start_soon(sandbox.deliver_webhooks)
        async with Client(streamable_http_client(f"{url}/mcp")) as connected:
            yield connected
        tasks.cancel_scope.cancel()


async def test_a_webhook_completes_the_wait_with_a_single_poll(client: Client, sandbox: Sandbox) -> None:
    """The callback wakes the poller at once: the job is seen complete long before the safety-net poll."""
    with anyio.fail_after(4):
        result = await client.call_tool("generate_audio", {"prompt": "rain", "duration": 2, "wait_seconds": 30})
    assert result.structured_content is not None, result.content
    assert result.structured_content["status"] == "COMPLETED"
    request_id = result.structured_content["request_id"]
    stats = sandbox.stats()
    assert stats.jobs[request_id].webhooks_sent == 3  # the callback and its two duplicates
    assert stats.polls[request_id] <= 3, "duplicates may each cause one poll at most"
    assert stats.media_fetches == {request_id: 1}, "duplicate callbacks never fetch the audio twice"


async def test_a_webhook_finishes_a_job_nobody_is_waiting_for(client: Client, sandbox: Sandbox) -> None:
    """With wait_seconds=0 the callback still brings the job home: the file is saved in the background."""
    handle = await client.call_tool("generate_audio", {"prompt": "a bell", "duration": 2, "wait_seconds": 0})
    assert handle.structured_content is not None
    request_id = handle.structured_content["request_id"]
    with anyio.fail_after(4):
        while True:
            listing = json.loads(getattr((await client.read_resource("mmaudio://jobs")).contents[0], "text", ""))
            if listing[0]["file"]:
                break
            await anyio.sleep(0.05)
    polls_before = sandbox.stats().polls[request_id]
    done = await client.call_tool("check_status", {"request_id": request_id})
    assert done.structured_content is not None
    assert Path(done.structured_content["file"]["path"]).is_file()
    assert sandbox.stats().polls[request_id] == polls_before, "a finished job is answered from the store"


async def test_the_submit_carries_an_unguessable_per_job_webhook_url(client: Client, sandbox: Sandbox) -> None:
    """Each job gets its own secret path on the public URL, in terminal mode."""
    first = await client.call_tool("generate_audio", {"prompt": "rain", "duration": 2, "wait_seconds": 0})
    second = await client.call_tool("generate_audio", {"prompt": "rain", "duration": 2, "wait_seconds": 0})
    assert first.structured_content is not None
    assert second.structured_content is not None
    jobs = sandbox.stats().jobs
    urls = {jobs[job.structured_content["request_id"]].webhook_url for job in (first, second) if job.structured_content}
    assert len(urls) == 2
    assert all(url and "/webhooks/" in url and len(url.rsplit("/", 1)[1]) >= 32 for url in urls)
