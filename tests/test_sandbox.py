"""The sandbox plays the Pixazo gateway as its docs describe it: shapes, timing, media, faults and admin routes."""

from __future__ import annotations

import hashlib
import json
import math
import re
import socket
import struct
import sys
import uuid
from array import array
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from functools import partial
from typing import TYPE_CHECKING, Any

import anyio
import httpx2
import pytest

from mmaudio_mcp.sandbox import (
    SANDBOX_API_KEY,
    Fault,
    FaultKind,
    JobTiming,
    Sandbox,
    SandboxConfig,
    create_sandbox,
    expected_seconds,
)
from mmaudio_mcp.sandbox_audio import WAV_HEADER_BYTES
from mmaudio_mcp.transport import serve_on_loopback

if TYPE_CHECKING:
    from collections.abc import AsyncGenerator, AsyncIterator, Callable
    from pathlib import Path

SUBMIT = "/mmaudio-v2-text-to-audio/v1/mmaudio-v2-text-to-audio-request"
KEY_HEADER = "Ocp-Apim-Subscription-Key"
KEY = {KEY_HEADER: SANDBOX_API_KEY}
START = datetime(2026, 3, 31, 10, tzinfo=UTC).timestamp()
FLOAT_SUBTYPE = uuid.UUID("00000003-0000-0010-8000-00aa00389b71")
MODEL_NOT_FOUND = {"error": "Model not found", "message": "Model 'mmaudio-v2-text-to-audio' not found or is disabled"}
NO_BALANCE = {"error": "Insufficient Balance", "message": "Your wallet does not have enough balance."}
HOOK = "http://127.0.0.1:8999/hook"
TICK = 0.005


class FakeClock:
    """A clock that only moves when the test says so."""

    def __init__(self) -> None:
        self.now = START

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def sandbox(clock: FakeClock) -> Sandbox:
    return create_sandbox(SandboxConfig(clock=clock))


def client_for(sandbox: Sandbox, base_url: str = "http://127.0.0.1") -> httpx2.AsyncClient:
    return httpx2.AsyncClient(transport=httpx2.ASGITransport(app=sandbox.app), base_url=base_url)


@pytest.fixture
async def client(sandbox: Sandbox) -> AsyncIterator[httpx2.AsyncClient]:
    async with client_for(sandbox) as client:
        yield client


async def submit(client: httpx2.AsyncClient, **fields: Any) -> httpx2.Response:
    return await client.post(SUBMIT, json={"prompt": "rain on a tin roof", "duration": 2, **fields}, headers=KEY)


async def submit_hooked(client: httpx2.AsyncClient, url: str = HOOK, mode: str | None = None) -> str:
    """Submit a job asking for webhooks to `url` (in `mode`, if given); return its request_id."""
    headers = KEY | {"X-Webhook-URL": url} | ({"X-Webhook-Mode": mode} if mode else {})
    response = await client.post(SUBMIT, json={"prompt": "rain", "duration": 2}, headers=headers)
    assert response.status_code == 202
    return response.json()["request_id"]


async def poll(client: httpx2.AsyncClient, request_id: str) -> httpx2.Response:
    return await client.get(f"/v2/requests/status/{request_id}", headers=KEY)


async def finished_job(client: httpx2.AsyncClient, clock: FakeClock, **fields: Any) -> dict[str, Any]:
    """Submit a job, let the clock run past its end, and return its status body."""
    request_id = (await submit(client, **fields)).json()["request_id"]
    clock.advance(3600)
    return (await poll(client, request_id)).json()


async def fetch_audio(client: httpx2.AsyncClient, clock: FakeClock, **fields: Any) -> bytes:
    body = await finished_job(client, clock, **fields)
    response = await client.get(body["output"]["media_url"][0])
    assert response.status_code == 200
    return response.content


def key_hash(key: str) -> str:
    """Return the sha256 hex digest of `key`; the sandbox records a prefix of it."""
    return hashlib.sha256(key.encode()).hexdigest()[:12]


def riff_chunks(data: bytes) -> dict[bytes, bytes]:
    """Split a RIFF/WAVE file into its chunks, checking the RIFF size."""
    assert data[:4] == b"RIFF"
    assert data[8:12] == b"WAVE"
    assert struct.unpack("<I", data[4:8])[0] == len(data) - 8
    chunks: dict[bytes, bytes] = {}
    position = 12
    while position < len(data):
        tag, size = data[position : position + 4], struct.unpack("<I", data[position + 4 : position + 8])[0]
        chunks[tag] = data[position + 8 : position + 8 + size]
        position += 8 + size + (size & 1)
    return chunks


def float_samples(data: bytes) -> array[float]:
    samples = array("f", riff_chunks(data)[b"data"])
    if sys.byteorder == "big":
        samples.byteswap()
    return samples


async def test_submit_answers_202_with_a_prefixed_uuid_and_a_polling_url_on_the_gateway(
    client: httpx2.AsyncClient,
) -> None:
    """A valid submit is queued with the documented id and polling_url shapes."""
    response = await submit(client)
    assert response.status_code == 202
    body = response.json()
    assert set(body) == {"request_id", "status", "polling_url"}
    assert body["status"] == "QUEUED"
    prefix, _, suffix = body["request_id"].partition("_")
    assert prefix == "mmaudio-v2-text-to-audio"
    assert uuid.UUID(suffix).version == 4
    assert body["polling_url"] == f"http://127.0.0.1/v2/requests/status/{body['request_id']}"


async def test_the_minimal_and_the_full_documented_requests_are_both_accepted(client: httpx2.AsyncClient) -> None:
    """Only prompt is required; every documented field with its documented value is accepted."""
    minimal = await client.post(SUBMIT, json={"prompt": "Gentle ocean waves"}, headers=KEY)
    full = await client.post(
        SUBMIT,
        json={
            "prompt": "Gentle ocean waves",
            "negative_prompt": "",
            "num_steps": 25,
            "duration": 8,
            "cfg_strength": 4.5,
            "mask_away_clip": False,
        },
        headers=KEY | {"Cache-Control": "no-cache", "X-Webhook-URL": "https://example.com/hook"},
    )
    assert (minimal.status_code, full.status_code) == (202, 202)


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"prompt": "   "}, "prompt"),
        ({"prompt": None}, "prompt"),
        ({"prompt": 5}, "prompt"),
        ({"duration": 1}, "duration"),
        ({"duration": 31}, "duration"),
        ({"duration": 8.5}, "duration"),
        ({"duration": "8"}, "duration"),
        ({"num_steps": 9}, "num_steps"),
        ({"num_steps": 101}, "num_steps"),
        ({"num_steps": True}, "num_steps"),
        ({"cfg_strength": 0.5}, "cfg_strength"),
        ({"cfg_strength": 10.5}, "cfg_strength"),
        ({"cfg_strength": "4.5"}, "cfg_strength"),
        ({"negative_prompt": None}, "negative_prompt"),
        ({"mask_away_clip": "false"}, "mask_away_clip"),
    ],
)
async def test_each_out_of_contract_field_is_refused_with_400_naming_it(
    client: httpx2.AsyncClient, fields: dict[str, Any], field: str
) -> None:
    """Every documented constraint is enforced, and the message says which field broke it."""
    response = await submit(client, **fields)
    assert response.status_code == 400
    body = response.json()
    assert body["error"] == "Bad Request"
    assert field in body["message"]


@pytest.mark.parametrize(
    "raw",
    [
        b'{"prompt": "rain", "cfg_strength": NaN}',
        b'{"prompt": "rain", "cfg_strength": Infinity}',
        b"prompt=rain",
        b'["rain"]',
        b"\xff\xfe\xfa",
        b"",
    ],
)
async def test_non_finite_numbers_and_non_json_bodies_are_refused_with_400(
    client: httpx2.AsyncClient, raw: bytes
) -> None:
    """NaN/Infinity, non-JSON and non-object bodies get a JSON 400, never a crash."""
    response = await client.post(SUBMIT, content=raw, headers=KEY | {"Content-Type": "application/json"})
    assert response.status_code == 400
    assert response.json()["error"] == "Bad Request"


@pytest.mark.parametrize("headers", [{}, {"Ocp-Apim-Subscription-Key": "wrong"}], ids=["missing", "wrong"])
async def test_a_missing_or_wrong_key_gets_401_on_submit_and_status(
    client: httpx2.AsyncClient, headers: dict[str, str]
) -> None:
    """The gateway checks the subscription key on both gateway routes."""
    request_id = (await submit(client)).json()["request_id"]
    expected = {"error": "Unauthorized", "message": "Access denied due to missing or invalid subscription key."}
    refused_submit = await client.post(SUBMIT, json={"prompt": "rain"}, headers=headers)
    refused_poll = await client.get(f"/v2/requests/status/{request_id}", headers=headers)
    assert (refused_submit.status_code, refused_submit.json()) == (401, expected)
    assert (refused_poll.status_code, refused_poll.json()) == (401, expected)


async def test_a_configured_key_replaces_the_default_one(clock: FakeClock) -> None:
    """SandboxConfig.api_key is the only key accepted."""
    sandbox = create_sandbox(SandboxConfig(api_key="other", clock=clock))
    async with client_for(sandbox) as client:
        assert (await submit(client)).status_code == 401
        response = await client.post(SUBMIT, json={"prompt": "rain"}, headers={"Ocp-Apim-Subscription-Key": "other"})
        assert response.status_code == 202


async def test_a_job_goes_queued_processing_completed_as_the_clock_moves(
    client: httpx2.AsyncClient, clock: FakeClock
) -> None:
    """Status follows queue_seconds then expected_seconds; output and completed_at appear only at the end."""
    request_id = (await submit(client, duration=2, num_steps=25)).json()["request_id"]
    done_after = 1.0 + expected_seconds(2, 25)
    seen: list[dict[str, Any]] = []
    for moment in (0.0, 0.99, 1.0, done_after - 0.01, done_after):
        clock.now = START + moment
        seen.append((await poll(client, request_id)).json())
    assert [body["status"] for body in seen] == ["QUEUED", "QUEUED", "PROCESSING", "PROCESSING", "COMPLETED"]
    assert all(body["output"] is None and body["completed_at"] is None for body in seen[:-1])
    assert all(body["error"] is None and body["model_id"] == "mmaudio-v2-text-to-audio" for body in seen)
    assert seen[-1]["output"]["media_type"] == "audio/wav"
    assert seen[-1]["completed_at"] == seen[-1]["updated_at"]


async def test_defaults_give_the_documented_eight_second_clip_after_about_eighteen_seconds(
    client: httpx2.AsyncClient, clock: FakeClock
) -> None:
    """duration 8 and num_steps 25 apply when omitted: 1 s queued + 17 s processing, 8 s of audio."""
    assert expected_seconds(8, 25) == pytest.approx(17.0)
    request_id = (await client.post(SUBMIT, json={"prompt": "a door slams"}, headers=KEY)).json()["request_id"]
    clock.now = START + 17.9
    assert (await poll(client, request_id)).json()["status"] == "PROCESSING"
    clock.now = START + 18.0
    body = (await poll(client, request_id)).json()
    assert body["status"] == "COMPLETED"
    audio = await client.get(body["output"]["media_url"][0])
    assert len(riff_chunks(audio.content)[b"data"]) == 8 * 44100 * 4


async def test_speed_scales_the_timeline_and_zero_completes_at_the_first_poll(clock: FakeClock) -> None:
    """speed multiplies queue and processing time; 0 makes jobs finish immediately."""
    for speed, queued_until in ((0.0, None), (2.0, 2.0)):
        sandbox = create_sandbox(SandboxConfig(speed=speed, clock=clock))
        async with client_for(sandbox) as client:
            clock.now = START
            request_id = (await submit(client)).json()["request_id"]
            if queued_until is None:
                assert (await poll(client, request_id)).json()["status"] == "COMPLETED"
                continue
            clock.now = START + queued_until - 0.01
            assert (await poll(client, request_id)).json()["status"] == "QUEUED"
            clock.now = START + speed * (1.0 + expected_seconds(2, 25)) - 0.01
            assert (await poll(client, request_id)).json()["status"] == "PROCESSING"


async def test_timestamps_come_in_the_two_shapes_the_real_service_mixes(
    client: httpx2.AsyncClient, clock: FakeClock
) -> None:
    """created_at is ISO 8601 with milliseconds and Z; updated_at/completed_at are zone-less UTC."""
    body = await finished_job(client, clock)
    assert body["created_at"] == "2026-03-31T10:00:00.000Z"
    assert datetime.fromisoformat(body["created_at"]).timestamp() == START
    finished = datetime.strptime(body["completed_at"], "%Y-%m-%d %H:%M:%S").replace(tzinfo=UTC)
    assert finished.timestamp() == pytest.approx(START + 1.0 + expected_seconds(2, 25), abs=1)
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d", body["updated_at"])


async def test_an_unknown_request_id_gets_the_documented_404(client: httpx2.AsyncClient) -> None:
    """Status of an id the gateway never issued is a JSON 404."""
    response = await poll(client, "mmaudio-v2-text-to-audio_nope")
    assert response.status_code == 404
    assert response.json() == {"error": "Not Found", "message": "Request mmaudio-v2-text-to-audio_nope not found"}


async def test_the_media_url_is_on_another_origin_and_serves_a_float_extensible_wav(
    client: httpx2.AsyncClient, clock: FakeClock
) -> None:
    """The CDN origin swaps 127.0.0.1 for localhost; the WAV is 44.1 kHz mono float32 EXTENSIBLE with fact."""
    body = await finished_job(client, clock, duration=3)
    url = body["output"]["media_url"][0]
    assert url == f"http://localhost/cdn/v1/{body['request_id']}/output.wav"
    response = await client.get(url)
    assert response.headers["content-type"] == "audio/wav"
    assert int(response.headers["content-length"]) == len(response.content)
    chunks = riff_chunks(response.content)
    tag, channels, rate, byte_rate, align, bits, extra, valid, mask = struct.unpack("<HHIIHHHHI", chunks[b"fmt "][:24])
    assert (tag, channels, rate, byte_rate, align, bits) == (0xFFFE, 1, 44100, 44100 * 4, 4, 32)
    assert (extra, valid, mask, len(chunks[b"fmt "])) == (22, 32, 4, 40)
    assert uuid.UUID(bytes_le=chunks[b"fmt "][24:40]) == FLOAT_SUBTYPE
    assert struct.unpack("<I", chunks[b"fact"]) == (3 * 44100,)
    assert len(chunks[b"data"]) == 3 * 44100 * 4


@pytest.mark.parametrize(
    ("base_url", "config_origin", "expected_origin"),
    [
        ("http://localhost:8123", None, "http://127.0.0.1:8123"),
        ("http://sandbox.test:9000", None, "http://sandbox.test:9000"),
        ("http://127.0.0.1", "https://cdn.example.com/", "https://cdn.example.com"),
    ],
)
async def test_the_media_origin_keeps_scheme_and_port_or_uses_the_configured_one(
    clock: FakeClock, base_url: str, config_origin: str | None, expected_origin: str
) -> None:
    """Host swaps only between localhost and 127.0.0.1; media_base_url overrides the derivation."""
    sandbox = create_sandbox(SandboxConfig(clock=clock, media_base_url=config_origin))
    async with client_for(sandbox, base_url) as client:
        body = await finished_job(client, clock)
    assert body["output"]["media_url"] == [f"{expected_origin}/cdn/v1/{body['request_id']}/output.wav"]


async def test_sending_the_key_to_the_cdn_is_refused_and_counted(
    client: httpx2.AsyncClient, clock: FakeClock, sandbox: Sandbox
) -> None:
    """A client that leaks the subscription key to the media origin gets 400 and shows up in rejected_keys."""
    body = await finished_job(client, clock)
    response = await client.get(body["output"]["media_url"][0], headers=KEY)
    assert response.status_code == 400
    assert response.json() == {"error": "Bad Request", "message": "credentials must not be sent to the CDN"}
    assert sandbox.stats().rejected_keys == 1
    assert sandbox.stats().media_fetches == {body["request_id"]: 1}


async def test_media_of_a_job_that_is_not_completed_is_404(client: httpx2.AsyncClient) -> None:
    """The CDN has nothing before COMPLETED, nor for ids it never saw."""
    request_id = (await submit(client)).json()["request_id"]
    early = await client.get(f"http://localhost/cdn/v1/{request_id}/output.wav")
    unknown = await client.get("http://localhost/cdn/v1/mmaudio-v2-text-to-audio_nope/output.wav")
    assert (early.status_code, unknown.status_code) == (404, 404)


@pytest.mark.parametrize("prompt", ["ocean waves at night", "heavy rain", "a bell ding", "piano melody", "door slam"])
async def test_every_kind_of_prompt_makes_audible_clip_length_audio_below_full_scale(
    client: httpx2.AsyncClient, clock: FakeClock, prompt: str
) -> None:
    """Each sound family is exactly duration long, not silent, peaks below 0.9 and fades in from silence."""
    samples = float_samples(await fetch_audio(client, clock, prompt=prompt, duration=2))
    assert len(samples) == 2 * 44100
    peak = max(max(samples), -min(samples))
    assert 0.3 < peak < 0.9
    assert abs(samples[0]) < 1e-3
    assert abs(samples[-1]) < 1e-3


async def test_audio_follows_the_prompt_and_is_deterministic_for_one_prompt(
    client: httpx2.AsyncClient, clock: FakeClock
) -> None:
    """Rain and beep prompts sound different; the same prompt twice gives the same bytes."""
    rain = await fetch_audio(client, clock, prompt="rain on a tin roof")
    beep = await fetch_audio(client, clock, prompt="a short beep")
    rain_again = await fetch_audio(client, clock, prompt="rain on a tin roof")
    assert rain != beep
    assert rain == rain_again


async def test_a_thirty_second_clip_is_built_whole_and_cached_for_the_next_fetch(
    client: httpx2.AsyncClient, clock: FakeClock
) -> None:
    """The longest clip is built whole (30 s of float32 samples) and served identically on the next fetch."""
    body = await finished_job(client, clock, prompt="a door slams twice", duration=30)
    first = await client.get(body["output"]["media_url"][0])
    second = await client.get(body["output"]["media_url"][0])
    assert len(riff_chunks(first.content)[b"data"]) == 30 * 44100 * 4
    assert first.content == second.content


@pytest.mark.parametrize(
    ("kind", "status", "body"),
    [
        (FaultKind.FORBIDDEN, 403, None),
        (FaultKind.BAD_REQUEST, 400, MODEL_NOT_FOUND),
        (FaultKind.INSUFFICIENT_BALANCE, 402, NO_BALANCE),
    ],
)
async def test_queue_system_faults_answer_submit_with_their_documented_json(
    client: httpx2.AsyncClient, sandbox: Sandbox, kind: FaultKind, status: int, body: dict[str, str] | None
) -> None:
    """Forbidden, model-not-found and insufficient-balance faults give their status and {error, message} body."""
    sandbox.add_fault(Fault(kind, times=1))
    refused = await submit(client)
    assert refused.status_code == status
    assert set(refused.json()) == {"error", "message"}
    if body is not None:
        assert refused.json() == body
    assert (await submit(client)).status_code == 202


async def test_unauthorized_and_forbidden_faults_hit_status_polls_too(
    client: httpx2.AsyncClient, sandbox: Sandbox
) -> None:
    """Auth faults apply to every gateway call, even with the right key."""
    request_id = (await submit(client)).json()["request_id"]
    sandbox.add_fault(Fault(FaultKind.UNAUTHORIZED, times=1))
    sandbox.add_fault(Fault(FaultKind.FORBIDDEN, times=1))
    assert (await poll(client, request_id)).status_code == 401
    assert (await poll(client, request_id)).status_code == 403
    assert (await poll(client, request_id)).status_code == 200


async def test_rate_limiting_answers_429_with_retry_after_and_no_json(
    client: httpx2.AsyncClient, sandbox: Sandbox
) -> None:
    """429 on submit and status carries Retry-After: 1 and a plain-text or empty body."""
    request_id = (await submit(client)).json()["request_id"]
    sandbox.add_fault(Fault(FaultKind.RATE_LIMITED, times=2))
    responses = [await submit(client), await poll(client, request_id)]
    for response in responses:
        assert response.status_code == 429
        assert response.headers["retry-after"] == "1"
        assert not response.headers["content-type"].startswith("application/json")
        with pytest.raises(json.JSONDecodeError):
            json.loads(response.content)
    assert (await poll(client, request_id)).status_code == 200


async def test_server_error_faults_answer_with_html_not_json(client: httpx2.AsyncClient, sandbox: Sandbox) -> None:
    """SUBMIT_500 gives an HTML 500 on submit; POLL_500 alternates HTML 500 and 502 on polls."""
    sandbox.add_fault(Fault(FaultKind.SUBMIT_500, times=1))
    failed = await submit(client)
    assert (failed.status_code, failed.headers["content-type"].split(";")[0]) == (500, "text/html")
    assert failed.text.startswith("<html>")
    request_id = (await submit(client)).json()["request_id"]
    sandbox.add_fault(Fault(FaultKind.POLL_500, times=2))
    codes = [(await poll(client, request_id)).status_code for _ in range(3)]
    assert codes == [500, 502, 200]


@pytest.mark.parametrize(
    ("kind", "status", "error"),
    [
        (FaultKind.JOB_FAILED, "FAILED", "Generation failed: the model produced no audio"),
        (FaultKind.JOB_ERROR, "ERROR", "Internal error; you were not charged"),
    ],
)
async def test_job_faults_end_the_next_job_failed_or_error_with_no_output(
    client: httpx2.AsyncClient, clock: FakeClock, sandbox: Sandbox, kind: FaultKind, status: str, error: str
) -> None:
    """A job created under a job fault ends with error text and output null; the one after it completes."""
    sandbox.add_fault(Fault(kind, times=1))
    request_id = (await submit(client)).json()["request_id"]
    assert (await poll(client, request_id)).json()["error"] is None
    next_job = await finished_job(client, clock)
    body = (await poll(client, request_id)).json()
    assert (body["status"], body["error"], body["output"]) == (status, error, None)
    assert body["completed_at"] is not None
    assert (await client.get(f"http://localhost/cdn/v1/{request_id}/output.wav")).status_code == 404
    assert next_job["status"] == "COMPLETED"


async def test_a_truncated_wav_promises_more_data_than_it_sends(
    client: httpx2.AsyncClient, clock: FakeClock, sandbox: Sandbox
) -> None:
    """TRUNCATED_WAV keeps the header of the full file but cuts the body."""
    body = await finished_job(client, clock)
    sandbox.add_fault(Fault(FaultKind.TRUNCATED_WAV, times=1))
    cut = (await client.get(body["output"]["media_url"][0])).content
    whole = (await client.get(body["output"]["media_url"][0])).content
    assert cut[:4] == b"RIFF"
    assert struct.unpack("<I", cut[4:8])[0] + 8 > len(cut)
    assert len(cut) < len(whole)
    assert whole.startswith(cut)


async def test_not_wav_and_media_404_faults_break_the_download(
    client: httpx2.AsyncClient, clock: FakeClock, sandbox: Sandbox
) -> None:
    """NOT_WAV answers 200 with an HTML page; MEDIA_404 answers 404; both only as often as asked."""
    url = (await finished_job(client, clock))["output"]["media_url"][0]
    sandbox.add_fault(Fault(FaultKind.NOT_WAV, times=1))
    sandbox.add_fault(Fault(FaultKind.MEDIA_404, times=1))
    first, second, third = [await client.get(url) for _ in range(3)]
    assert (first.status_code, first.content[:4]) == (200, b"<!DO")
    assert second.status_code == 404
    assert (third.status_code, third.content[:4]) == (200, b"RIFF")


async def test_a_fault_without_times_fires_until_cleared_and_the_callers_fault_is_not_mutated(
    client: httpx2.AsyncClient, sandbox: Sandbox
) -> None:
    """times=None repeats; times=N fires N times and counts down a copy, not the caller's object."""
    counted = Fault(FaultKind.SUBMIT_500, times=2)
    sandbox.add_fault(counted)
    assert [(await submit(client)).status_code for _ in range(3)] == [500, 500, 202]
    assert counted.times == 2
    sandbox.add_fault(Fault(FaultKind.INSUFFICIENT_BALANCE))
    assert [(await submit(client)).status_code for _ in range(3)] == [402, 402, 402]
    sandbox.clear_faults()
    assert (await submit(client)).status_code == 202
    with pytest.raises(ValueError, match="times"):
        sandbox.add_fault(Fault(FaultKind.NOT_WAV, times=0))


async def test_stats_count_submits_polls_per_job_and_media_fetches(
    client: httpx2.AsyncClient, clock: FakeClock, sandbox: Sandbox
) -> None:
    """Every request is counted on its route, per job, whatever the answer."""
    first = (await submit(client)).json()["request_id"]
    second = (await submit(client)).json()["request_id"]
    for _ in range(3):
        await poll(client, first)
    clock.advance(3600)
    url = (await poll(client, second)).json()["output"]["media_url"][0]
    await client.get(url)
    stats = sandbox.stats()
    assert stats.submits == 2
    assert stats.polls == {first: 3, second: 1}
    assert stats.media_fetches == {second: 1}
    assert stats.rejected_keys == 0


async def test_admin_routes_inject_and_clear_faults_and_report_stats(client: httpx2.AsyncClient) -> None:
    """/_sandbox/faults and /_sandbox/stats drive a sandbox running in another process; /healthz answers ok."""
    added = await client.post("/_sandbox/faults", json={"kind": "insufficient_balance", "times": 1})
    assert (added.status_code, added.json()) == (201, {"kind": "insufficient_balance", "times": 1})
    assert (await submit(client)).status_code == 402
    assert (await client.post("/_sandbox/faults", json={"kind": "submit_500", "times": None})).status_code == 201
    assert (await client.delete("/_sandbox/faults")).status_code == 204
    request_id = (await submit(client)).json()["request_id"]
    stats = (await client.get("/_sandbox/stats")).json()
    timing = {
        "submitted_at": START,
        "started_at": START + 1.0,
        "completed_at": START + 1.0 + expected_seconds(2, 25),
        "status": "COMPLETED",
        "first_terminal_poll_at": None,
        "polls": 0,
        "poll_times": [],
        "webhooks_sent": 0,
        "webhook_url": None,
        "api_key_hash": key_hash(SANDBOX_API_KEY),
    }
    assert stats == {
        "submits": 2,
        "polls": {},
        "media_fetches": {},
        "rejected_keys": 0,
        "jobs": {request_id: timing},
        "webhook_failures": 0,
    }
    assert (await client.get("/healthz")).json() == {"status": "ok"}


@pytest.mark.parametrize(
    "body", [{"kind": "meteor"}, {"kind": "not_wav", "times": 0}, {"kind": "not_wav", "times": "2"}]
)
async def test_admin_refuses_unknown_fault_kinds_and_bad_counts(
    client: httpx2.AsyncClient, body: dict[str, Any]
) -> None:
    """A malformed fault is a 400, not a crash or a silent no-op."""
    response = await client.post("/_sandbox/faults", json=body)
    assert response.status_code == 400
    assert response.json()["error"] == "Bad Request"


class Receiver:
    """A webhook endpoint behind a MockTransport: records every callback and answers 200."""

    def __init__(self) -> None:
        self.requests: list[httpx2.Request] = []
        self.transport = httpx2.MockTransport(self.handle)

    def handle(self, request: httpx2.Request) -> httpx2.Response:
        self.requests.append(request)
        return httpx2.Response(200)

    def bodies(self) -> list[dict[str, Any]]:
        return [json.loads(request.content) for request in self.requests]


@asynccontextmanager
async def delivering(sandbox: Sandbox, transport: httpx2.AsyncBaseTransport) -> AsyncGenerator[None]:
    """Run the sandbox's webhook dispatcher (ticking fast) for the duration of the block."""
    async with anyio.create_task_group() as tasks:
        tasks.start_soon(partial(sandbox.deliver_webhooks, transport, tick=TICK))
        yield
        tasks.cancel_scope.cancel()


async def settle() -> None:
    """Give the dispatcher a few ticks (real time) to send whatever is due."""
    await anyio.sleep(5 * TICK)


async def until(condition: Callable[[], bool], limit: float = 1.0) -> None:
    """Wait (real time, at most `limit` s) until `condition` holds, then settle so that any extra callback shows."""
    with anyio.fail_after(limit):
        while not condition():  # noqa: ASYNC110 (the condition reads counters, there is no event to wait on)
            await anyio.sleep(TICK)
    await settle()


async def statuses(client: httpx2.AsyncClient, request_ids: list[str]) -> list[str]:
    return [(await poll(client, request_id)).json()["status"] for request_id in request_ids]


async def test_jitter_spreads_processing_times_within_bounds_and_a_seed_repeats_them(clock: FakeClock) -> None:
    """jitter 0.3 keeps every processing time in [0.7, 1.3] x expected; one seed gives the same times twice."""

    async def processing_times(seed: int) -> list[float]:
        sandbox = create_sandbox(SandboxConfig(clock=clock, jitter=0.3, seed=seed))
        async with client_for(sandbox) as client:
            for _ in range(30):
                await submit(client)
        return [timing.completed_at - timing.started_at for timing in sandbox.stats().jobs.values()]

    first, again, other = await processing_times(7), await processing_times(7), await processing_times(8)
    base = expected_seconds(2, 25)
    assert all(0.7 * base <= seconds <= 1.3 * base for seconds in first)
    assert max(first) - min(first) > 0.2 * base
    assert first == again
    assert first != other


async def test_status_follows_the_jittered_schedule(clock: FakeClock) -> None:
    """A jittered job is PROCESSING until its own completed_at and COMPLETED from then on."""
    sandbox = create_sandbox(SandboxConfig(clock=clock, jitter=0.5, seed=1))
    async with client_for(sandbox) as client:
        request_id = (await submit(client)).json()["request_id"]
        timing = sandbox.stats().jobs[request_id]
        assert timing.completed_at - timing.started_at != pytest.approx(expected_seconds(2, 25))
        clock.now = timing.completed_at - 0.01
        assert await statuses(client, [request_id]) == ["PROCESSING"]
        clock.now = timing.completed_at
        assert await statuses(client, [request_id]) == ["COMPLETED"]


@pytest.mark.parametrize(
    "config",
    [
        {"jitter": -0.1},
        {"jitter": 1.5},
        {"concurrency": 0},
        {"webhook_duplicates": -1},
        {"drip_seconds": -0.1},
        {"huge_media_bytes": 1_000_001},
        {"huge_media_bytes": 80},
        {"huge_media_bytes": 2**32},
        {"extra_api_keys": "other-key"},
        {"extra_api_keys": ("other-key", "")},
    ],
    ids=[
        "negative-jitter",
        "jitter-over-one",
        "no-slots",
        "negative-duplicates",
        "negative-drip",
        "huge-not-whole-samples",
        "huge-header-only",
        "huge-over-riff-limit",
        "keys-as-a-string",
        "empty-extra-key",
    ],
)
def test_a_config_that_makes_no_sense_is_refused(config: dict[str, Any]) -> None:
    """Bad jitter, slots, duplicates, drip, huge size or extra keys raise ValueError naming the field at creation."""
    with pytest.raises(ValueError, match=next(iter(config))):
        create_sandbox(SandboxConfig(**config))


async def test_with_two_slots_later_jobs_stay_queued_and_start_in_submit_order(clock: FakeClock) -> None:
    """concurrency 2: jobs 3 and 4 wait QUEUED, then take the slots as jobs 1 and 2 end, 3 before 4."""
    sandbox = create_sandbox(SandboxConfig(clock=clock, concurrency=2))
    durations = (2, 4, 30, 2)
    async with client_for(sandbox) as client:
        ids = [(await submit(client, duration=duration)).json()["request_id"] for duration in durations]
        first_end = START + 1.0 + expected_seconds(2, 25)
        second_end = START + 1.0 + expected_seconds(4, 25)
        timeline = [
            (START + 1.0, ["PROCESSING", "PROCESSING", "QUEUED", "QUEUED"]),
            (first_end - 0.01, ["PROCESSING", "PROCESSING", "QUEUED", "QUEUED"]),
            (first_end, ["COMPLETED", "PROCESSING", "PROCESSING", "QUEUED"]),
            (second_end - 0.01, ["COMPLETED", "PROCESSING", "PROCESSING", "QUEUED"]),
            (second_end, ["COMPLETED", "COMPLETED", "PROCESSING", "PROCESSING"]),
            (second_end + expected_seconds(2, 25), ["COMPLETED", "COMPLETED", "PROCESSING", "COMPLETED"]),
        ]
        for moment, expected in timeline:
            clock.now = moment
            assert await statuses(client, ids) == expected, moment - START
    started = [sandbox.stats().jobs[request_id].started_at for request_id in ids]
    assert started == [START + 1.0, START + 1.0, first_end, second_end]


async def test_a_free_slot_is_taken_after_the_queue_wait_not_before(clock: FakeClock) -> None:
    """A job submitted while a slot is idle still waits queue_seconds, as without a cap."""
    sandbox = create_sandbox(SandboxConfig(clock=clock, concurrency=1))
    async with client_for(sandbox) as client:
        await submit(client)
        clock.advance(3600)
        late = (await submit(client)).json()["request_id"]
    assert sandbox.stats().jobs[late].started_at == clock.now + 1.0


@pytest.mark.parametrize(
    "url",
    [
        "http://example.com/hook",
        "http://10.0.0.1/hook",
        "http://localhost.example.com/hook",
        "ftp://127.0.0.1/hook",
        "https:///hook",
        "hook",
        "",
        "http://[::1/hook",
    ],
)
async def test_a_webhook_url_that_is_not_https_or_loopback_http_is_refused(
    client: httpx2.AsyncClient, sandbox: Sandbox, url: str
) -> None:
    """Plain http to a non-loopback host, other schemes and malformed URLs get a 400 and create no job."""
    response = await client.post(SUBMIT, json={"prompt": "rain"}, headers=KEY | {"X-Webhook-URL": url})
    assert response.status_code == 400
    assert response.json()["error"] == "Bad Request"
    assert "X-Webhook-URL" in response.json()["message"]
    assert sandbox.stats().jobs == {}


@pytest.mark.parametrize(
    "url",
    [
        "https://example.com/hook",
        "https://93.184.216.34:8443/hook?token=x",
        "http://127.0.0.1:8000/hook",
        "http://127.9.8.7/hook",
        "http://[::1]:8000/hook",
        "http://localhost/hook",
    ],
)
async def test_https_and_loopback_http_webhook_urls_are_accepted(client: httpx2.AsyncClient, url: str) -> None:
    """https anywhere and http to 127.0.0.0/8, ::1 or localhost (for tests) are accepted."""
    await submit_hooked(client, url)


async def test_an_unknown_webhook_mode_is_refused(client: httpx2.AsyncClient) -> None:
    """X-Webhook-Mode must be terminal or sync (any case)."""
    headers = KEY | {"X-Webhook-URL": HOOK, "X-Webhook-Mode": "always"}
    response = await client.post(SUBMIT, json={"prompt": "rain"}, headers=headers)
    assert response.status_code == 400
    assert "X-Webhook-Mode" in response.json()["message"]
    await submit_hooked(client, mode="SYNC")


@pytest.mark.parametrize("duplicates", [0, 2])
async def test_terminal_mode_posts_the_status_body_once_at_the_end_plus_the_configured_duplicates(
    clock: FakeClock, duplicates: int
) -> None:
    """Nothing while QUEUED or PROCESSING; at the end 1 + N identical unsigned POSTs of the GET status body."""
    sandbox = create_sandbox(SandboxConfig(clock=clock, webhook_duplicates=duplicates))
    receiver = Receiver()
    async with client_for(sandbox) as client, delivering(sandbox, receiver.transport):
        request_id = await submit_hooked(client)
        clock.advance(5.0)
        await settle()
        assert receiver.requests == []
        clock.advance(3600)
        await until(lambda: len(receiver.requests) >= 1 + duplicates)
        status = (await poll(client, request_id)).json()
    assert receiver.bodies() == [status] * (1 + duplicates)
    assert status["status"] == "COMPLETED"
    for request in receiver.requests:
        assert (request.method, str(request.url)) == ("POST", HOOK)
        assert request.headers["content-type"] == "application/json"
        assert "ocp-apim-subscription-key" not in request.headers
    assert sandbox.stats().jobs[request_id].webhooks_sent == 1 + duplicates


async def test_terminal_mode_reports_a_failed_job_with_its_error(clock: FakeClock) -> None:
    """A job that ends FAILED sends one callback with status FAILED, the error text and output null."""
    sandbox = create_sandbox(SandboxConfig(clock=clock))
    sandbox.add_fault(Fault(FaultKind.JOB_FAILED, times=1))
    receiver = Receiver()
    async with client_for(sandbox) as client, delivering(sandbox, receiver.transport):
        await submit_hooked(client, mode="terminal")
        clock.advance(3600)
        await until(lambda: len(receiver.requests) >= 1)
    [body] = receiver.bodies()
    assert (body["status"], body["output"]) == ("FAILED", None)
    assert body["error"] == "Generation failed: the model produced no audio"


async def test_sync_mode_posts_queued_processing_and_completed_in_order(clock: FakeClock) -> None:
    """Each status change is one callback, in order, stamped with the time it happened, even across a clock jump."""
    sandbox = create_sandbox(SandboxConfig(clock=clock))
    receiver = Receiver()
    async with client_for(sandbox) as client, delivering(sandbox, receiver.transport):
        stepped = await submit_hooked(client, "http://127.0.0.1:8999/stepped", mode="sync")
        await until(lambda: len(receiver.requests) >= 1)
        clock.advance(1.0)
        await until(lambda: len(receiver.requests) >= 2)
        clock.advance(3600)
        await until(lambda: len(receiver.requests) >= 3)
        jumped = await submit_hooked(client, "http://127.0.0.1:8999/jumped", mode="sync")
        clock.advance(3600)
        await until(lambda: len(receiver.requests) >= 6)
    by_job = {
        request_id: [body for body in receiver.bodies() if body["request_id"] == request_id]
        for request_id in (stepped, jumped)
    }
    for bodies in by_job.values():
        assert [body["status"] for body in bodies] == ["QUEUED", "PROCESSING", "COMPLETED"]
        assert bodies[0]["output"] is None
        assert bodies[-1]["output"]["media_type"] == "audio/wav"
    assert [body["updated_at"] for body in by_job[stepped]] == [
        "2026-03-31 10:00:00",
        "2026-03-31 10:00:01",
        "2026-03-31 10:00:06",
    ]
    assert len(receiver.requests) == 6


async def test_failed_deliveries_are_counted_and_never_stop_the_dispatcher(clock: FakeClock) -> None:
    """Connection errors, non-2xx answers and crashing receivers count as failures; other callbacks still go."""
    sandbox = create_sandbox(SandboxConfig(clock=clock))
    delivered: list[str] = []

    def handle(request: httpx2.Request) -> httpx2.Response:
        if request.url.path == "/down":
            raise httpx2.ConnectError("connection refused", request=request)
        if request.url.path == "/crash":
            raise RuntimeError("receiver bug")
        delivered.append(request.url.path)
        return httpx2.Response(500 if request.url.path == "/broken" else 204)

    async with client_for(sandbox) as client, delivering(sandbox, httpx2.MockTransport(handle)):
        ids = [await submit_hooked(client, f"http://127.0.0.1:8999/{path}") for path in ("down", "crash", "broken")]
        clock.advance(3600)
        await until(lambda: sandbox.stats().webhook_failures >= 3)
        ok = await submit_hooked(client, "http://127.0.0.1:8999/ok")
        clock.advance(3600)
        await until(lambda: "/ok" in delivered)
    stats = sandbox.stats()
    assert stats.webhook_failures == 3
    assert [stats.jobs[request_id].webhooks_sent for request_id in [*ids, ok]] == [1, 1, 1, 1]
    assert delivered == ["/broken", "/ok"]


async def test_the_app_lifespan_runs_the_dispatcher(clock: FakeClock) -> None:
    """Under a server with lifespan on, callbacks go out with no explicit dispatcher (here to a closed port)."""
    sandbox = create_sandbox(SandboxConfig(clock=clock))
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))  # bound but not listening: connections are refused at once
        url = f"http://127.0.0.1:{closed.getsockname()[1]}/hook"
        async with sandbox.app.router.lifespan_context(sandbox.app), client_for(sandbox) as client:
            request_id = await submit_hooked(client, url)
            clock.advance(3600)
            await until(lambda: sandbox.stats().webhook_failures >= 1, limit=2.0)
    assert sandbox.stats().jobs[request_id].webhooks_sent == 1


async def test_job_timing_records_the_schedule_polls_and_the_first_terminal_poll(
    client: httpx2.AsyncClient, clock: FakeClock, sandbox: Sandbox
) -> None:
    """first_terminal_poll_at is the clock at the first poll answering a terminal status; later ones keep it."""
    request_id = (await submit(client)).json()["request_id"]
    await poll(client, request_id)
    clock.advance(30.0)
    await poll(client, request_id)
    clock.advance(10.0)
    await poll(client, request_id)
    assert sandbox.stats().jobs[request_id] == JobTiming(
        submitted_at=START,
        started_at=START + 1.0,
        completed_at=START + 1.0 + expected_seconds(2, 25),
        status="COMPLETED",
        first_terminal_poll_at=START + 30.0,
        polls=3,
        poll_times=[START, START + 30.0, START + 40.0],
        webhooks_sent=0,
        api_key_hash=key_hash(SANDBOX_API_KEY),
    )


async def test_job_timing_knows_the_final_status_at_submit_and_stats_are_a_snapshot(
    client: httpx2.AsyncClient, sandbox: Sandbox
) -> None:
    """A job under a JOB_ERROR fault is recorded as ERROR from the start; editing a snapshot changes nothing."""
    sandbox.add_fault(Fault(FaultKind.JOB_ERROR, times=1))
    request_id = (await submit(client)).json()["request_id"]
    snapshot = sandbox.stats()
    assert snapshot.jobs[request_id].status == "ERROR"
    snapshot.jobs[request_id].polls = 99
    assert sandbox.stats().jobs[request_id].polls == 0


SHORT = httpx2.Timeout(2.0, read=0.2)  # for the request a fault makes hang or drip


@asynccontextmanager
async def served(sandbox: Sandbox) -> AsyncGenerator[httpx2.AsyncClient]:
    """Serve the sandbox on a loopback port (hostile faults need a real server) and yield a client for it.

    The whole block, server shutdown included, must end within 3 s: a handler left running would keep the server
    from stopping.
    """
    with anyio.fail_after(3):
        async with serve_on_loopback(sandbox.app) as url, httpx2.AsyncClient(base_url=url) as client:
            yield client


async def completed_media_path(client: httpx2.AsyncClient, clock: FakeClock) -> str:
    """Submit a 2 s job, let it complete, and return its media path (relative: the server is on 127.0.0.1)."""
    request_id = (await submit(client)).json()["request_id"]
    clock.advance(3600)
    assert (await poll(client, request_id)).json()["status"] == "COMPLETED"
    return f"/cdn/v1/{request_id}/output.wav"


async def asgi_get(sandbox: Sandbox, path: str) -> tuple[dict[str, str], list[bytes]]:
    """GET `path` from the app itself (ASGITransport joins the body), returning the headers and each body piece."""
    scope = {"type": "http", "method": "GET", "path": path, "headers": [], "query_string": b""}
    scope |= {"scheme": "http", "server": ("127.0.0.1", 80), "root_path": "", "http_version": "1.1"}
    headers: dict[str, str] = {}
    parts: list[bytes] = []

    pending = [{"type": "http.request", "body": b"", "more_body": False}]

    async def receive() -> dict[str, Any]:
        if pending:
            return pending.pop()
        await anyio.sleep_forever()  # the client never leaves
        raise AssertionError("unreachable")

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            headers.update((name.decode(), value.decode()) for name, value in message["headers"])
            headers[":status"] = str(message["status"])
        elif message.get("body"):
            parts.append(message["body"])

    await sandbox.app(scope, receive, send)
    return headers, parts


async def test_slow_media_drips_the_whole_valid_wav_in_one_kib_pieces_once(clock: FakeClock) -> None:
    """SLOW_MEDIA (times=1) sends the same WAV, Content-Length set, 1 KiB at a time; the next fetch is whole."""
    sandbox = create_sandbox(SandboxConfig(clock=clock, drip_seconds=0.0))
    async with client_for(sandbox) as client:
        path = await completed_media_path(client, clock)
    sandbox.add_fault(Fault(FaultKind.SLOW_MEDIA, times=1))
    dripped, parts = await asgi_get(sandbox, path)
    normal, whole = await asgi_get(sandbox, path)
    wav = b"".join(whole)
    assert (dripped[":status"], dripped["content-type"]) == ("200", "audio/wav")
    assert dripped["content-length"] == str(len(wav))
    assert b"".join(parts) == wav
    assert len(parts) == math.ceil(len(wav) / 1024)
    assert all(len(part) == 1024 for part in parts[:-1])
    assert (normal[":status"], len(whole)) == ("200", 1)
    assert len(float_samples(wav)) == 2 * 44100


async def test_slow_media_makes_a_client_with_a_read_timeout_give_up(clock: FakeClock) -> None:
    """Headers and the first KiB come at once, then drip_seconds of silence: a 0.2 s read timeout fires."""
    sandbox = create_sandbox(SandboxConfig(clock=clock, drip_seconds=0.5))
    async with served(sandbox) as client:
        path = await completed_media_path(client, clock)
        whole = (await client.get(path)).content  # the audio is synthesized (slowly) once, then cached
        sandbox.add_fault(Fault(FaultKind.SLOW_MEDIA, times=1))
        async with client.stream("GET", path, timeout=SHORT) as response:
            assert (response.status_code, response.headers["content-length"]) == (200, str(len(whole)))
            with pytest.raises(httpx2.ReadTimeout):
                await response.aread()
        again = await client.get(path, timeout=SHORT)
    assert again.content == whole


async def test_huge_media_claims_eighty_mib_and_streams_silence_lazily(clock: FakeClock) -> None:
    """HUGE_MEDIA: Content-Length and the WAV header say 80 MiB; a client can read a few chunks and hang up."""
    size = 80 * 1024 * 1024
    sandbox = create_sandbox(SandboxConfig(clock=clock))
    async with served(sandbox) as client:
        path = await completed_media_path(client, clock)
        sandbox.add_fault(Fault(FaultKind.HUGE_MEDIA, times=1))
        received = bytearray()
        async with client.stream("GET", path) as response:
            assert (response.status_code, response.headers["content-length"]) == (200, str(size))
            async for part in response.aiter_raw():
                received += part
                if len(received) >= 4 * 64 * 1024:
                    break
        normal = await client.get(path)
    assert received[:4] == b"RIFF"
    assert struct.unpack("<I", received[4:8])[0] == size - 8
    assert received[WAV_HEADER_BYTES - 8 : WAV_HEADER_BYTES - 4] == b"data"
    assert struct.unpack("<I", received[WAV_HEADER_BYTES - 4 : WAV_HEADER_BYTES])[0] == size - WAV_HEADER_BYTES
    assert not any(received[WAV_HEADER_BYTES:])
    assert (normal.status_code, len(float_samples(normal.content))) == (200, 2 * 44100)


async def test_huge_media_is_a_well_formed_silent_wav_of_the_configured_size(clock: FakeClock) -> None:
    """Read to the end (at 1 MiB), the body is exactly huge_media_bytes of valid float WAV, all zeros."""
    size = 1024 * 1024
    sandbox = create_sandbox(SandboxConfig(clock=clock, huge_media_bytes=size))
    sandbox.add_fault(Fault(FaultKind.HUGE_MEDIA))
    async with client_for(sandbox) as client:
        path = await completed_media_path(client, clock)
    headers, parts = await asgi_get(sandbox, path)
    body = b"".join(parts)
    assert (len(body), headers["content-length"]) == (size, str(size))
    assert max(len(part) for part in parts) == 64 * 1024
    samples = float_samples(body)
    assert len(samples) == (size - WAV_HEADER_BYTES) // 4
    assert not any(samples)


@pytest.mark.parametrize(
    ("kind", "location"),
    [
        (FaultKind.MEDIA_REDIRECT_FILE, "file:///etc/passwd"),
        (FaultKind.MEDIA_REDIRECT_OTHER_HOST, "http://169.254.169.254/latest/meta-data/"),
    ],
)
async def test_media_redirect_faults_answer_302_to_a_place_a_client_must_not_follow(
    client: httpx2.AsyncClient, clock: FakeClock, kind: FaultKind, location: str
) -> None:
    """The redirect (injected through the admin route) goes to a local file or a link-local metadata service."""
    path = await completed_media_path(client, clock)
    assert (await client.post("/_sandbox/faults", json={"kind": kind, "times": 2})).status_code == 201
    first, second, third = [await client.get(path) for _ in range(3)]
    for redirect in (first, second):
        assert (redirect.status_code, redirect.headers["location"]) == (302, location)
    assert (third.status_code, third.content[:4]) == (200, b"RIFF")


async def test_a_hanging_poll_times_the_client_out_and_leaves_the_sandbox_responsive(clock: FakeClock) -> None:
    """POLL_HANG (times=1): the poll never answers, a 0.2 s read timeout fires; the next poll answers at once."""
    sandbox = create_sandbox(SandboxConfig(clock=clock))
    async with served(sandbox) as client:
        request_id = (await submit(client)).json()["request_id"]
        sandbox.add_fault(Fault(FaultKind.POLL_HANG, times=1))
        with pytest.raises(httpx2.ReadTimeout):
            await client.get(f"/v2/requests/status/{request_id}", headers=KEY, timeout=SHORT)
        answered = await client.get(f"/v2/requests/status/{request_id}", headers=KEY, timeout=SHORT)
        healthy = await client.get("/healthz")
    assert (answered.status_code, answered.json()["status"]) == (200, "QUEUED")
    assert healthy.status_code == 200
    assert sandbox.stats().polls == {request_id: 2}


async def test_a_hanging_submit_creates_the_job_before_the_client_gives_up(clock: FakeClock) -> None:
    """SUBMIT_HANG (times=1): the job exists (possibly billed) though no answer came; the next submit answers."""
    sandbox = create_sandbox(SandboxConfig(clock=clock))
    async with served(sandbox) as client:
        sandbox.add_fault(Fault(FaultKind.SUBMIT_HANG, times=1))
        with pytest.raises(httpx2.ReadTimeout):
            await client.post(SUBMIT, json={"prompt": "rain", "duration": 2}, headers=KEY, timeout=SHORT)
        [lost] = sandbox.stats().jobs
        clock.advance(3600)
        found = await poll(client, lost)
        answered = await client.post(SUBMIT, json={"prompt": "rain", "duration": 2}, headers=KEY, timeout=SHORT)
    assert (found.status_code, found.json()["status"]) == (200, "COMPLETED")
    assert answered.status_code == 202
    assert set(sandbox.stats().jobs) == {lost, answered.json()["request_id"]}


async def test_a_hanging_handler_is_cancelled_cleanly_in_process(client: httpx2.AsyncClient, sandbox: Sandbox) -> None:
    """Cancelling a hung in-process request (no socket, no timeout) ends it; the sandbox keeps answering."""
    request_id = (await submit(client)).json()["request_id"]
    sandbox.add_fault(Fault(FaultKind.POLL_HANG, times=1))
    with anyio.move_on_after(0.05) as scope:
        await poll(client, request_id)
    assert scope.cancelled_caught
    assert (await poll(client, request_id)).status_code == 200


async def test_extra_api_keys_are_accepted_and_any_accepted_key_reaches_any_job(clock: FakeClock) -> None:
    """A job submitted with an extra key can be polled with the main key and fetched; wrong keys still get 401."""
    sandbox = create_sandbox(SandboxConfig(clock=clock, extra_api_keys=("client-b", "client-c")))
    other = {KEY_HEADER: "client-b"}
    async with client_for(sandbox) as client:
        submitted = await client.post(SUBMIT, json={"prompt": "rain", "duration": 2}, headers=other)
        request_id = submitted.json()["request_id"]
        clock.advance(3600)
        by_main_key = await poll(client, request_id)
        by_third_key = await client.get(f"/v2/requests/status/{request_id}", headers={KEY_HEADER: "client-c"})
        media = await client.get(by_main_key.json()["output"]["media_url"][0])
        refused = [
            await client.post(SUBMIT, json={"prompt": "rain"}, headers={KEY_HEADER: key})
            for key in ("client-d", "client-b ", "CLIENT-B", "")
        ]
        refused_poll = await client.get(f"/v2/requests/status/{request_id}", headers={KEY_HEADER: "client-d"})
    assert submitted.status_code == 202
    assert (by_main_key.status_code, by_third_key.status_code, media.status_code) == (200, 200, 200)
    assert [response.status_code for response in [*refused, refused_poll]] == [401] * 5
    assert len(sandbox.stats().jobs) == 1


async def test_each_job_records_a_hash_of_the_key_that_submitted_it_never_the_key(clock: FakeClock) -> None:
    """api_key_hash is a short sha256 hex prefix per key, different per key; the keys appear nowhere in stats."""
    sandbox = create_sandbox(SandboxConfig(clock=clock, extra_api_keys=("client-b",)))
    async with client_for(sandbox) as client:
        first = (await submit(client)).json()["request_id"]
        second = await client.post(SUBMIT, json={"prompt": "rain"}, headers={KEY_HEADER: "client-b"})
        dumped = (await client.get("/_sandbox/stats")).text
    jobs = sandbox.stats().jobs
    hashes = {jobs[first].api_key_hash, jobs[second.json()["request_id"]].api_key_hash}
    assert hashes == {key_hash(SANDBOX_API_KEY), key_hash("client-b")}
    for recorded in hashes:
        assert recorded is not None
        assert re.fullmatch(r"[0-9a-f]{8,16}", recorded)
    assert SANDBOX_API_KEY not in dumped
    assert "client-b" not in dumped


@pytest.mark.parametrize(
    "kind",
    ["slow_media", "huge_media", "media_redirect_file", "media_redirect_other_host", "poll_hang", "submit_hang"],
)
async def test_admin_route_accepts_the_hostile_fault_kinds(client: httpx2.AsyncClient, kind: str) -> None:
    """POST /_sandbox/faults takes each new kind with its count (the redirect test drives one through it)."""
    added = await client.post("/_sandbox/faults", json={"kind": kind, "times": 2})
    assert (added.status_code, added.json()) == (201, {"kind": kind, "times": 2})


async def test_a_new_sandbox_with_the_same_state_path_answers_for_jobs_an_earlier_one_created(
    clock: FakeClock, tmp_path: Path
) -> None:
    """With state_path, a sandbox made later (as a new process would) answers status and media for old jobs."""
    state = tmp_path / "state" / "sandbox.sqlite3"
    async with client_for(create_sandbox(SandboxConfig(clock=clock, state_path=state))) as first:
        request_id = (await submit(first)).json()["request_id"]
        clock.advance(3600)
        media = (await first.get((await poll(first, request_id)).json()["output"]["media_url"][0])).content
    later = create_sandbox(SandboxConfig(clock=clock, state_path=state))
    async with client_for(later) as second:
        body = (await poll(second, request_id)).json()
        assert body["status"] == "COMPLETED"
        again = await second.get(body["output"]["media_url"][0])
    assert again.status_code == 200 and again.content == media
    assert later.stats().jobs[request_id].api_key_hash == key_hash(SANDBOX_API_KEY)
    without = create_sandbox(SandboxConfig(clock=clock))
    async with client_for(without) as third:
        assert (await poll(third, request_id)).status_code == 404


async def test_a_job_another_sandbox_process_created_meanwhile_is_found_too(clock: FakeClock, tmp_path: Path) -> None:
    """Two sandboxes sharing a state file (two processes) each answer for the other's jobs."""
    state = tmp_path / "sandbox.sqlite3"
    one = create_sandbox(SandboxConfig(clock=clock, state_path=state))
    two = create_sandbox(SandboxConfig(clock=clock, state_path=state))
    async with client_for(one) as first, client_for(two) as second:
        request_id = (await submit(first)).json()["request_id"]
        assert (await poll(second, request_id)).json()["status"] == "QUEUED"
