"""The upstream as it really is: every request bounded, every answer honest, clocks that are not ours.

Each test plays one finding of issue 12 with a sandbox fault (or config) and fails on the code before the fix.
Limits on how long a call may take are liveness bounds (`anyio.fail_after`), generous enough for a loaded machine;
they never measure speed.
"""

from __future__ import annotations

from itertools import pairwise
from typing import TYPE_CHECKING, Any

import anyio
import httpx2
import pytest
from mcp import Client
from pydantic import SecretStr

from mmaudio_mcp import errors
from mmaudio_mcp.files import Limits
from mmaudio_mcp.jobs import open_job_service
from mmaudio_mcp.models import GenerationParams, JobStatus
from mmaudio_mcp.pixazo import MAX_JSON_BYTES, PixazoClient
from mmaudio_mcp.sandbox import SANDBOX_API_KEY, Fault, FaultKind, Sandbox, SandboxConfig
from mmaudio_mcp.server import build_server
from mmaudio_mcp.transport import serve_on_loopback
from tests.conftest import POLICY, SPEED

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from mcp.types import CallToolResult

    from mmaudio_mcp.jobs import JobService
    from mmaudio_mcp.settings import Settings

FAST = {"duration": 2, "num_steps": 10}
PARAMS = GenerationParams(prompt="rain on a tin roof", duration=2, num_steps=10)


def text_of(result: CallToolResult) -> str:
    return " ".join(getattr(block, "text", "") for block in result.content)


async def listing(client: Client) -> list[dict[str, Any]]:
    import json

    result = await client.read_resource("mmaudio://jobs")
    return json.loads(getattr(result.contents[0], "text", "[]"))


async def submitted_job(url: str) -> str:
    async with httpx2.AsyncClient(base_url=url) as http:
        answer = await http.post(
            "/mmaudio-v2-text-to-audio/v1/mmaudio-v2-text-to-audio-request",
            json={"prompt": "rain", "duration": 2, "num_steps": 10},
            headers={"Ocp-Apim-Subscription-Key": SANDBOX_API_KEY},
        )
    return answer.json()["request_id"]


# --- section 5: every upstream request bounded ---------------------------------------------------------------------


async def test_a_status_answer_that_drips_one_byte_at_a_time_is_cut_off_by_an_overall_deadline() -> None:
    """Each byte arrives well within the per-read timeout, so only an overall deadline ends the request; the
    retries share one deadline too (the retry library never cancels a running attempt)."""
    sandbox = Sandbox(SandboxConfig(speed=SPEED, drip_seconds=0.2))
    async with serve_on_loopback(sandbox.app) as url:
        request_id = await submitted_job(url)
        sandbox.add_fault(Fault(FaultKind.POLL_DRIP))
        client = PixazoClient(None, SecretStr(SANDBOX_API_KEY), url, timeout=1.0)
        try:
            with anyio.fail_after(30):  # liveness: before the fix this took minutes
                with pytest.raises(errors.NetworkError, match="did not finish answering"):
                    await client.status(request_id)
        finally:
            await client.aclose()


async def test_a_huge_status_body_is_refused_after_the_cap_and_not_retried() -> None:
    """A status answer over 1 MiB is read no further than the cap, refused with a clear error, and not asked again
    (before, it was read whole, up to four times)."""
    sandbox = Sandbox(SandboxConfig(speed=SPEED, huge_status_bytes=8 * MAX_JSON_BYTES))
    async with serve_on_loopback(sandbox.app) as url:
        request_id = await submitted_job(url)
        sandbox.add_fault(Fault(FaultKind.POLL_HUGE))
        client = PixazoClient(None, SecretStr(SANDBOX_API_KEY), url)
        try:
            with pytest.raises(errors.UpstreamProtocolError, match="over 1024 KiB"):
                await client.status(request_id)
        finally:
            await client.aclose()
        assert sandbox.stats().polls[request_id] == 1


@pytest.mark.parametrize("kind", [FaultKind.SUBMIT_NO_ID, FaultKind.SUBMIT_ODD_ID, FaultKind.SUBMIT_LONG_ID])
async def test_a_202_without_a_usable_request_id_reads_like_an_uncertain_submit_and_keeps_the_row(
    client: Client, sandbox: Sandbox, kind: FaultKind
) -> None:
    """The job was accepted and may be billed: the error says so (never "try again"), quotes no 10 KB id, and the
    listing keeps the row with that warning; nothing was resent."""
    sandbox.add_fault(Fault(kind, times=1))
    result = await client.call_tool("generate_audio", {"prompt": "an accepted job without an id", **FAST})
    text = text_of(result)
    assert result.is_error
    assert "may be billed" in text and "not resent" in text and "unfinished" in text
    assert "try again later" not in text
    assert len(text) < 1200, "the upstream's id was quoted whole"
    assert sandbox.stats().submits == 1
    rows = [row for row in await listing(client) if row["prompt"] == "an accepted job without an id"]
    assert [row["status"] for row in rows] == ["SUBMITTING"]
    assert "billed" in rows[0]["note"]


async def test_an_unknown_status_ends_the_wait_at_once_with_the_clear_error(client: Client, sandbox: Sandbox) -> None:
    """What the poller learns reaches the waiting call: an undocumented status ("DONE") ends generate_audio with
    the error check_status would give, instead of a wait that ends "QUEUED, about 1 s left"."""
    sandbox.add_fault(Fault(FaultKind.POLL_UNKNOWN_STATUS))
    result = await client.call_tool("generate_audio", {"prompt": "rain", **FAST, "wait_seconds": 20})
    assert result.is_error, text_of(result)
    assert "'DONE'" in text_of(result)
    (request_id,) = sandbox.stats().polls
    assert sandbox.stats().polls[request_id] == 1, "an answer no retry can fix was asked again"


async def test_a_wait_that_ends_on_a_failed_poll_says_what_failed(client: Client, sandbox: Sandbox) -> None:
    """When every poll within the wait fails (a gateway answering 5xx), the job comes back with that failure noted
    (retryable), not as a silent QUEUED and an ETA; and not as a failed call, which would invite paying again."""
    sandbox.add_fault(Fault(FaultKind.POLL_500))
    result = await client.call_tool("generate_audio", {"prompt": "rain", **FAST, "wait_seconds": 8})
    assert not result.is_error, text_of(result)
    assert result.structured_content is not None
    assert result.structured_content["status"] == "QUEUED"
    error = result.structured_content["error"]
    assert error is not None and "HTTP 50" in error["message"] and error["retryable"] is True
    rows = await listing(client)
    assert [row["status"] for row in rows] == ["QUEUED"], "the job must stay listed to resume"


@pytest.fixture
async def dripping_media(settings: Settings) -> AsyncIterator[tuple[Client, Sandbox]]:
    """A server on a loopback sandbox whose CDN drips the audio far slower than any wait."""
    sandbox = Sandbox(SandboxConfig(speed=SPEED, drip_seconds=0.5))
    sandbox.add_fault(Fault(FaultKind.SLOW_MEDIA))
    async with serve_on_loopback(sandbox.app) as url:
        gateway = settings.model_copy(update={"gateway_url": url})
        async with Client(build_server(gateway, policy=POLICY)) as client:
            yield client, sandbox


async def test_a_dripping_download_never_holds_a_call_past_its_wait(dripping_media: tuple[Client, Sandbox]) -> None:
    """wait_seconds=0 answers within a few seconds even though the audio takes minutes to arrive: the job comes
    back COMPLETED and downloading, and the download goes on in the background (before: 249 s)."""
    client, _sandbox = dripping_media
    made = await client.call_tool("generate_audio", {"prompt": "rain", **FAST, "wait_seconds": 0})
    assert made.structured_content is not None, text_of(made)
    request_id = made.structured_content["request_id"]
    await anyio.sleep(1.0)  # the job is done upstream by now (2 s of audio at 2% speed)
    with anyio.fail_after(20):  # liveness: the wait is 0, the grace a few seconds
        checked = await client.call_tool("check_status", {"request_id": request_id})
    assert checked.structured_content is not None, text_of(checked)
    assert checked.structured_content["status"] == "COMPLETED"
    assert checked.structured_content["downloading"] is True
    assert checked.structured_content["file"] is None
    with anyio.fail_after(20):
        again = await client.call_tool("check_status", {"request_id": request_id})
    assert again.structured_content is not None
    assert again.structured_content["downloading"] is True, "the background download was not kept going"


# --- section 4 and issue 11 item 3: clocks and progress -------------------------------------------------------------


@pytest.fixture
async def skewed(settings: Settings) -> AsyncIterator[JobService]:
    """A job service on a gateway whose clock is ten minutes behind ours and whose zone-less stamps are in UTC+2."""
    sandbox = Sandbox(SandboxConfig(speed=SPEED, clock_skew_seconds=-600, plain_stamp_offset_hours=2))
    async with open_job_service(
        settings, http_transport=httpx2.ASGITransport(app=sandbox.app), policy=POLICY, limits=Limits()
    ) as service:
        yield service


async def test_progress_strictly_increases_and_never_mixes_the_upstreams_clock_with_ours(skewed: JobService) -> None:
    """With the gateway's clock off ours, every progress value is above the one before, the final one included;
    the terminal message has no "s left"; before the first poll no status is claimed; the job's elapsed time and
    the run time it learns from are our own (not 10 minutes or 2 hours off)."""
    seen: list[tuple[float, float | None, str]] = []

    async def on_progress(value: float, total: float | None, message: str) -> None:
        seen.append((value, total, message))

    job = await skewed.generate(PARAMS, wait_seconds=20, progress=on_progress)
    assert job.status is JobStatus.COMPLETED
    values = [value for value, _, _ in seen]
    assert all(later > earlier for earlier, later in pairwise(values)), values
    assert "left" not in seen[-1][2] and seen[-1][2].startswith("COMPLETED"), seen[-1]
    assert "QUEUED" not in seen[0][2], seen[0]
    assert 0 < job.elapsed_seconds < 60
    assert job.completed_at is not None and abs((job.completed_at - job.created_at).total_seconds()) < 60
    (record,) = await skewed.recent()
    assert record.run_seconds is not None and 0 < record.run_seconds < 60


# --- section 3: whatever audio the gateway delivers ----------------------------------------------------------------

MEDIA = [
    (FaultKind.MEDIA_RF64, "wav"),
    (FaultKind.MEDIA_FLAC, "flac"),
    (FaultKind.MEDIA_OGG, "ogg"),
    (FaultKind.MEDIA_OPUS, "ogg"),
    (FaultKind.MEDIA_MP3, "mp3"),
]


@pytest.mark.parametrize(("kind", "fmt"), MEDIA, ids=[kind.value for kind, _ in MEDIA])
async def test_a_job_delivered_in_any_container_completes_and_converts(
    client: Client, sandbox: Sandbox, kind: FaultKind, fmt: str
) -> None:
    """The paid job completes with the file as delivered (right suffix, format and metadata from the stream), and
    processing works from it (before: "the file is a FLAC file, not a WAV", after paying)."""
    sandbox.add_fault(Fault(kind))
    made = await client.call_tool("generate_audio", {"prompt": "rain", **FAST})
    assert made.structured_content is not None and not made.is_error, text_of(made)
    file = made.structured_content["file"]
    assert file["format"] == fmt and file["path"].endswith(f".{fmt}")
    assert file["duration_seconds"] == pytest.approx(2.0, abs=0.06)
    converted = await client.call_tool(
        "download_audio", {"request_id": made.structured_content["request_id"], "format": "flac", "normalize": True}
    )
    assert not converted.is_error, text_of(converted)


async def test_a_truncated_flac_is_refused_and_the_job_stays_downloadable(client: Client, sandbox: Sandbox) -> None:
    """A cut-off FLAC is caught by decoding it whole; the paid job keeps its row and downloads once the CDN behaves."""
    sandbox.add_fault(Fault(FaultKind.TRUNCATED_FLAC, times=2))  # the first URL and the refreshed one
    made = await client.call_tool("generate_audio", {"prompt": "rain", **FAST})
    assert made.is_error and "FLAC" in text_of(made), text_of(made)
    (request_id,) = sandbox.stats().polls
    again = await client.call_tool("check_status", {"request_id": request_id})
    assert again.structured_content is not None and not again.is_error, text_of(again)
    assert again.structured_content["file"] is not None  # the CDN behaves now (it serves the WAV)
