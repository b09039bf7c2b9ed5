"""A submit whose answer was lost (its process was killed between Pixazo's 202 and the row update) leaves a
SUBMITTING row with the job's webhook token. When Pixazo's callback arrives (at any replica), the request_id in its
body completes that row, once Pixazo confirms the job under the same key; a request_id Pixazo does not confirm is
ignored. Through the server's real HTTP route."""

from __future__ import annotations

from typing import TYPE_CHECKING

import httpx2
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

from mmaudio_mcp.models import GenerationParams, JobRecord, JobStatus, utc_now
from mmaudio_mcp.pixazo import PixazoClient
from mmaudio_mcp.server import build_server
from mmaudio_mcp.store import SqliteJobStore
from mmaudio_mcp.transport import Transport, http_app, serve_on_loopback
from tests.conftest import POLICY

if TYPE_CHECKING:
    from mmaudio_mcp.sandbox import Sandbox
    from mmaudio_mcp.settings import Settings

PARAMS = GenerationParams(prompt="rain", duration=2)


async def lost_submit(settings: Settings, token: str, local_id: str) -> None:
    """What a process killed mid-submit leaves: the row written before the submit, and a job at Pixazo."""
    store = await SqliteJobStore.open(settings.state_dir)
    now = utc_now()
    await store.save(
        JobRecord(
            local_id=local_id,
            status=JobStatus.SUBMITTING,
            params=PARAMS,
            created_at=now,
            updated_at=now,
            webhook_token=token,
        )
    )
    await store.aclose()


async def test_a_callback_completes_the_row_of_a_submit_whose_answer_was_lost(
    settings: Settings, transport: httpx2.ASGITransport, sandbox: Sandbox
) -> None:
    replica = settings.model_copy(update={"transport": "streamable-http", "public_url": "http://127.0.0.1:9"})
    await lost_submit(replica, "t" * 32, "lost-row")
    await lost_submit(replica, "u" * 32, "forged-row")
    pixazo = PixazoClient(None, settings.api_key, settings.gateway_url, transport=transport)
    reply = await pixazo.submit(PARAMS, webhook_url=f"http://127.0.0.1:9/webhooks/{'t' * 32}")
    await pixazo.aclose()
    rid = reply.request_id
    server = build_server(replica, http_transport=transport, policy=POLICY)
    async with serve_on_loopback(http_app(server, Transport.STREAMABLE_HTTP)) as base_url:
        async with httpx2.AsyncClient() as http:
            forged = await http.post(
                f"{base_url}/webhooks/{'u' * 32}",
                json={"request_id": "mmaudio-v2-text-to-audio_00000000-0000-0000-0000-000000000000"},
            )
            called = await http.post(f"{base_url}/webhooks/{'t' * 32}", json={"request_id": rid, "status": "x"})
        async with Client(streamable_http_client(f"{base_url}/mcp")) as client:
            checked = await client.call_tool("check_status", {"request_id": rid, "wait_seconds": 20})
    assert forged.status_code == 404, "a request_id Pixazo does not confirm completes nothing"
    assert called.status_code == 202
    assert checked.structured_content is not None
    assert checked.structured_content["status"] == "COMPLETED"
    store = await SqliteJobStore.open(settings.state_dir)
    rows = {row.local_id: row for row in await store.recent()}
    await store.aclose()
    assert rows["lost-row"].request_id == rid, "the row written before the submit now carries its job"
    assert rows["forged-row"].request_id is None
    assert len(rows) == 2
    assert sandbox.stats().submits == 1
