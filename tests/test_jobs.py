"""Paid work is never lost: cancelled calls, unanswered submits and uncertain submits all leave a usable row."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

import anyio
import httpx2
from mcp import Client

from mmaudio_mcp.server import build_server
from tests.conftest import POLICY

if TYPE_CHECKING:
    from mmaudio_mcp.sandbox import Sandbox
    from mmaudio_mcp.settings import Settings

SUBMIT_SUFFIX = "-request"


class StallingSubmits(httpx2.AsyncBaseTransport):
    """Pass everything to the sandbox, except that submits hang forever or time out after being sent."""

    def __init__(self, inner: httpx2.AsyncBaseTransport, *, mode: str) -> None:
        self.inner = inner
        self.mode = mode

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        if request.method == "POST" and request.url.path.endswith(SUBMIT_SUFFIX):
            if self.mode == "hang":
                await anyio.sleep_forever()
            raise httpx2.ReadTimeout("no answer", request=request)
        return await self.inner.handle_async_request(request)


async def listing(client: Client) -> list[dict[str, object]]:
    contents = (await client.read_resource("mmaudio://jobs")).contents
    return json.loads(getattr(contents[0], "text", "[]"))


async def test_a_cancelled_call_keeps_the_job_and_check_status_finishes_it(client: Client, sandbox: Sandbox) -> None:
    """When the host gives up mid-wait, the job row is already stored and the server keeps answering."""
    with anyio.move_on_after(0.15):
        await client.call_tool("generate_audio", {"prompt": "rain", "duration": 8, "wait_seconds": 60})
    jobs = await listing(client)
    assert len(jobs) == 1
    assert jobs[0]["status"] in {"QUEUED", "PROCESSING"}
    with anyio.fail_after(1):
        assert len((await client.list_tools()).tools) == 3
    done = await client.call_tool("check_status", {"request_id": jobs[0]["request_id"], "wait_seconds": 10})
    assert done.structured_content is not None
    assert done.structured_content["status"] == "COMPLETED"
    assert len(sandbox.stats().media_fetches) == 1


async def test_a_submit_that_never_answers_leaves_a_row_saying_it_may_be_billed(
    settings: Settings, transport: httpx2.ASGITransport
) -> None:
    """If the call dies during the POST, the listing shows the job as possibly billed with no request_id."""
    server = build_server(settings, http_transport=StallingSubmits(transport, mode="hang"), policy=POLICY)
    async with Client(server) as client:
        with anyio.move_on_after(0.3):
            await client.call_tool("generate_audio", {"prompt": "rain"})
        jobs = await listing(client)
    assert len(jobs) == 1
    assert jobs[0]["request_id"] is None
    assert jobs[0]["status"] == "SUBMITTING"
    assert "may have been submitted and billed" in str(jobs[0]["note"])


async def test_a_submit_that_times_out_after_sending_is_reported_and_not_resent(
    settings: Settings, transport: httpx2.ASGITransport, sandbox: Sandbox
) -> None:
    """A read timeout on the submit is an error that warns about billing; the row records it."""
    server = build_server(settings, http_transport=StallingSubmits(transport, mode="timeout"), policy=POLICY)
    async with Client(server) as client:
        result = await client.call_tool("generate_audio", {"prompt": "rain"})
        jobs = await listing(client)
    assert result.is_error
    assert "may be billed" in " ".join(getattr(block, "text", "") for block in result.content)
    assert jobs[0]["status"] == "SUBMITTING"
    assert "not resent" in str(jobs[0]["error"])


async def test_per_job_locks_do_not_pile_up_in_a_long_running_server(
    settings: Settings, transport: httpx2.ASGITransport
) -> None:
    """The lock that serialises one job's downloads is dropped once its files are settled."""
    from mmaudio_mcp.jobs import open_job_service
    from mmaudio_mcp.models import GenerationParams

    async with open_job_service(settings, http_transport=transport, policy=POLICY) as jobs:
        for _ in range(3):
            job = await jobs.generate(GenerationParams(prompt="rain", duration=2), wait_seconds=10)
            await jobs.download(job.request_id)
        assert job.file is not None
        assert jobs._files._locks == {}  # pyright: ignore[reportPrivateUsage]
