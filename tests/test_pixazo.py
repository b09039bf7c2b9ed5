"""The Pixazo client against hand-made answers: exact status codes, retries, and where the key may travel."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

import httpx2
import pytest
import stamina
from pydantic import SecretStr

from mmaudio_mcp import errors
from mmaudio_mcp.models import GenerationParams, JobStatus
from mmaudio_mcp.pixazo import KEY_HEADER, PixazoClient

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable, Iterator

KEY = "canary-key-5f1c9a"
BASE = "https://gateway.example"
RID = "mmaudio-v2-text-to-audio_019d0000-0000-7000-8000-000000000001"
PARAMS = GenerationParams(prompt="a door creaks")
ACCEPTED = {"request_id": RID, "status": "QUEUED", "polling_url": f"{BASE}/v2/requests/status/{RID}"}


@pytest.fixture(autouse=True)
def no_retry_waits() -> Iterator[None]:
    """Keep stamina's retries (and their counts) but skip the sleeping."""
    stamina.set_testing(True, attempts=4)
    yield
    stamina.set_testing(False)


def client_for(
    handler: Callable[[httpx2.Request], httpx2.Response], key: str | None = KEY, base: str = BASE
) -> PixazoClient:
    http = httpx2.AsyncClient(transport=httpx2.MockTransport(handler))
    return PixazoClient(http, SecretStr(key) if key else None, base)


def answer(status: int, body: object = None, **headers: str) -> httpx2.Response:
    content = b"" if body is None else body.encode() if isinstance(body, str) else json.dumps(body).encode()
    return httpx2.Response(status, content=content, headers=headers)


async def test_submit_sends_the_documented_request_and_reads_the_202() -> None:
    """The POST goes to the documented path with the key header, no-cache and the full JSON body."""
    seen: list[httpx2.Request] = []

    def handler(request: httpx2.Request) -> httpx2.Response:
        seen.append(request)
        return answer(202, ACCEPTED)

    reply = await client_for(handler).submit(PARAMS)
    assert reply.request_id == RID
    (request,) = seen
    assert str(request.url) == f"{BASE}/mmaudio-v2-text-to-audio/v1/mmaudio-v2-text-to-audio-request"
    assert request.headers[KEY_HEADER] == KEY
    assert request.headers["Cache-Control"] == "no-cache"
    assert json.loads(request.content) == {
        "prompt": "a door creaks",
        "negative_prompt": "",
        "duration": 8,
        "num_steps": 25,
        "cfg_strength": 4.5,
        "mask_away_clip": False,
    }


@pytest.mark.parametrize(
    ("status", "error", "words"),
    [
        (400, errors.BadRequestError, "rejected the request"),
        (401, errors.AuthenticationError, "PIXAZO_API_KEY"),
        (402, errors.InsufficientBalanceError, "top up"),
        (403, errors.ForbiddenError, "not allowed"),
        (500, errors.UpstreamUnavailableError, "not resent"),
    ],
)
async def test_submit_errors_become_typed_errors_with_actionable_messages(
    status: int, error: type[errors.MmaudioError], words: str
) -> None:
    """Each documented status maps to its own error type whose message says what to do."""
    calls = 0

    def handler(request: httpx2.Request) -> httpx2.Response:
        nonlocal calls
        calls += 1
        return answer(status, {"error": "Nope", "message": f"echoing {KEY} back"})

    with pytest.raises(error, match=words) as caught:
        await client_for(handler).submit(PARAMS)
    assert calls == 1, "a failed submit must never be resent"
    assert KEY not in str(caught.value)
    assert "***" in str(caught.value)


async def test_submit_is_not_retried_after_a_read_timeout() -> None:
    """A timeout after sending may mean a billed job, so it is reported as uncertain and not resent."""
    calls = 0

    def handler(request: httpx2.Request) -> httpx2.Response:
        nonlocal calls
        calls += 1
        raise httpx2.ReadTimeout("slow", request=request)

    with pytest.raises(errors.SubmissionUncertainError, match="may be billed"):
        await client_for(handler).submit(PARAMS)
    assert calls == 1


async def test_submit_is_retried_when_the_connection_never_opened() -> None:
    """A connect error happens before anything is sent, so trying again cannot pay twice."""
    calls = 0

    def handler(request: httpx2.Request) -> httpx2.Response:
        nonlocal calls
        calls += 1
        if calls < 3:
            raise httpx2.ConnectError("refused", request=request)
        return answer(202, ACCEPTED)

    assert (await client_for(handler).submit(PARAMS)).request_id == RID
    assert calls == 3


async def test_submit_honours_429_with_retry_after_then_succeeds() -> None:
    """429 is retried (it was refused, not run); a non-JSON 429 body does not confuse the client."""
    replies = iter([answer(429, "Too Many Requests", **{"Retry-After": "1"}), answer(202, ACCEPTED)])
    assert (await client_for(lambda _: next(replies)).submit(PARAMS)).request_id == RID


async def test_a_persistent_429_ends_as_a_rate_limit_error_with_the_delay() -> None:
    """When Pixazo keeps refusing, the caller learns it is rate-limited and how long to wait."""
    with pytest.raises(errors.RateLimitedError) as caught:
        await client_for(lambda _: answer(429, "<html>slow down</html>", **{"Retry-After": "7"})).submit(PARAMS)
    assert caught.value.retry_after == 7.0


async def test_status_parses_both_timestamp_shapes_and_null_output() -> None:
    """ISO-with-Z and naive 'YYYY-MM-DD HH:MM:SS' timestamps both parse, as UTC."""
    body = {
        "request_id": RID,
        "status": "PROCESSING",
        "model_id": "mmaudio-v2-text-to-audio",
        "error": None,
        "output": None,
        "created_at": "2026-03-31T10:00:00.000Z",
        "updated_at": "2026-03-31 10:00:15",
        "completed_at": None,
    }
    reply = await client_for(lambda _: answer(200, body)).status(RID)
    assert reply.status is JobStatus.PROCESSING
    assert reply.created_at is not None
    assert reply.updated_at is not None
    assert (reply.updated_at - reply.created_at).total_seconds() == 15
    assert reply.output is None


async def test_status_survives_garbage_timestamps() -> None:
    """An unreadable timestamp becomes None instead of failing the whole answer."""
    body = {"request_id": RID, "status": "QUEUED", "created_at": "yesterday", "updated_at": 12}
    reply = await client_for(lambda _: answer(200, body)).status(RID)
    assert (reply.created_at, reply.updated_at) == (None, None)


async def test_status_retries_5xx_html_pages_then_reads_the_answer() -> None:
    """A gateway's HTML 502 is transient for a poll: it is retried, and the next answer is used."""
    replies = iter([answer(502, "<html>Bad gateway</html>"), answer(200, {"request_id": RID, "status": "QUEUED"})])
    assert (await client_for(lambda _: next(replies)).status(RID)).status is JobStatus.QUEUED


async def test_status_404_is_an_unknown_job() -> None:
    """Pixazo not knowing the id is reported as such, not as a server failure."""
    with pytest.raises(errors.UnknownJobError, match="Unknown request_id"):
        await client_for(lambda _: answer(404, {"error": "Not Found", "message": "nope"})).status(RID)


async def test_an_unreadable_200_is_an_upstream_error_not_a_crash() -> None:
    """HTML with a 200 status is reported as an unreadable answer."""
    with pytest.raises(errors.UpstreamUnavailableError, match="cannot read"):
        await client_for(lambda _: answer(200, "<html>maintenance</html>")).status(RID)


async def test_without_a_key_nothing_is_sent_and_the_error_names_the_variable() -> None:
    """A missing key fails before any request, saying how to configure it."""

    def handler(request: httpx2.Request) -> httpx2.Response:
        raise AssertionError("no request may be sent without a key")

    with pytest.raises(errors.ConfigurationError, match="PIXAZO_API_KEY"):
        await client_for(handler, key=None).submit(PARAMS)


async def test_media_is_fetched_without_the_key() -> None:
    """The CDN is another origin: the subscription key must never be sent there."""
    seen: list[httpx2.Request] = []

    def handler(request: httpx2.Request) -> httpx2.Response:
        seen.append(request)
        return answer(200, "RIFF....")

    async with client_for(handler).stream_media("https://cdn.example/a/output.wav", max_bytes=100) as chunks:
        body = b"".join([chunk async for chunk in chunks])
    assert body == b"RIFF...."
    assert KEY_HEADER not in seen[0].headers


@pytest.mark.parametrize(
    "url",
    ["http://cdn.example/output.wav", "file:///etc/passwd", "ftp://cdn.example/x.wav", "https:///nohost"],
)
async def test_media_urls_must_be_https_unless_loopback(url: str) -> None:
    """Plain http is allowed only to loopback (the sandbox); other schemes never."""

    def handler(request: httpx2.Request) -> httpx2.Response:
        raise AssertionError("nothing may be fetched")

    with pytest.raises(errors.MediaError, match="only https"):
        async with client_for(handler).stream_media(url, max_bytes=100):
            pass


async def test_loopback_http_media_is_allowed_for_the_sandbox() -> None:
    """With the gateway on loopback (the sandbox), its http://localhost CDN may be fetched."""
    async with client_for(lambda _: answer(200, "RIFF"), base="http://127.0.0.1:8787").stream_media(
        "http://localhost:8787/cdn/x.wav", max_bytes=10
    ) as chunks:
        assert b"".join([chunk async for chunk in chunks]) == b"RIFF"


async def test_a_redirect_from_https_to_http_or_file_is_refused() -> None:
    """Redirects are followed by hand so that each hop passes the same URL policy."""
    for target in ["http://evil.example/x.wav", "file:///etc/passwd"]:
        handler = lambda _, t=target: answer(302, "", Location=t)  # noqa: E731
        with pytest.raises(errors.MediaError, match=r"redirected|only https"):
            async with client_for(handler).stream_media("https://cdn.example/x.wav", max_bytes=100):
                pass


async def test_media_over_the_cap_is_refused_by_header_and_by_count() -> None:
    """The cap holds whether or not the CDN declares the length."""
    with pytest.raises(errors.MediaTooLargeError):
        async with client_for(lambda _: answer(200, "x" * 50)).stream_media("https://c.example/x", max_bytes=10):
            pass

    async def body() -> AsyncIterator[bytes]:
        for _ in range(4):
            yield b"x" * 8

    def chunked(_: httpx2.Request) -> httpx2.Response:
        return httpx2.Response(200, content=body())

    with pytest.raises(errors.MediaTooLargeError):
        async with client_for(chunked).stream_media("https://c.example/x", max_bytes=10) as chunks:
            async for _ in chunks:
                pass


def test_the_client_repr_hides_the_key() -> None:
    """Debug output of the client never shows the key."""
    assert KEY not in repr(client_for(lambda _: answer(200)))


@pytest.mark.parametrize(
    "url",
    ["https://127.0.0.1/x.wav", "https://10.0.0.7/x.wav", "https://169.254.169.254/latest", "https://[::1]/x.wav"],
)
async def test_a_remote_gateways_media_may_not_point_into_a_private_network(url: str) -> None:
    """With a remote gateway, media (or a redirect) aimed at loopback, private or link-local addresses is refused."""

    def handler(request: httpx2.Request) -> httpx2.Response:
        raise AssertionError("nothing may be fetched")

    with pytest.raises(errors.MediaError, match="private or local"):
        async with client_for(handler).stream_media(url, max_bytes=100):
            pass


async def test_a_redirect_into_the_private_network_is_refused() -> None:
    """A public CDN answer that redirects to an internal address is not followed."""
    seen: list[str] = []

    def handler(request: httpx2.Request) -> httpx2.Response:
        seen.append(str(request.url))
        return answer(302, "", Location="https://192.168.1.1/admin")

    with pytest.raises(errors.MediaError, match="private or local"):
        async with client_for(handler).stream_media("https://93.184.215.14/x.wav", max_bytes=100):
            pass
    assert seen == ["https://93.184.215.14/x.wav"]
