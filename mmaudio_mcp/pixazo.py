"""Typed async client for Pixazo's MMAudio v2 endpoints: submit, status and the media download.

Retries only where they cannot cost money twice: the submit is retried on 429 (honouring Retry-After) and on
failures that happen before the request left this machine; status polls are retried on any transient failure.
The API key travels only in the gateway's header, never to the media CDN and never into any text.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import socket
from contextlib import asynccontextmanager
from email.utils import parsedate_to_datetime
from time import time
from typing import TYPE_CHECKING, Any, Final, cast
from urllib.parse import quote, urlsplit

import anyio
import httpx2
from pydantic import SecretStr, ValidationError

from mmaudio_mcp.errors import (
    AuthenticationError,
    BadRequestError,
    ConfigurationError,
    ForbiddenError,
    InsufficientBalanceError,
    MediaError,
    MediaTooLargeError,
    NetworkError,
    RateLimitedError,
    SubmissionUncertainError,
    UpstreamError,
    UpstreamProtocolError,
    UpstreamUnavailableError,
    unknown_job,
)
from mmaudio_mcp.models import GenerationParams, StatusReply, SubmitReply, is_valid_request_id

if TYPE_CHECKING:
    from collections.abc import AsyncGenerator, AsyncIterator, Callable

logger = logging.getLogger(__name__)

SUBMIT_PATH: Final = "/mmaudio-v2-text-to-audio/v1/mmaudio-v2-text-to-audio-request"
STATUS_PATH: Final = "/v2/requests/status/{request_id}"
KEY_HEADER: Final = "Ocp-Apim-Subscription-Key"
DEFAULT_TIMEOUT: Final = httpx2.Timeout(30.0, connect=10.0)
MAX_RETRY_AFTER: Final = 30.0
MAX_REDIRECTS: Final = 5
MAX_JSON_BYTES: Final = 1024 * 1024
"""Cap on a submit or status answer (a real one is under 1 KiB): it is read in chunks and never held beyond this."""
_UNFINISHED_HINT: Final = (
    "check your Pixazo dashboard, or the unfinished-jobs resource (mmaudio://jobs/unfinished), before generating again"
)
_NOT_SENT: Final = (httpx2.ConnectError, httpx2.ConnectTimeout, httpx2.PoolTimeout)
_MISSING_KEY: Final = (
    "No Pixazo API key is configured. Set the PIXAZO_API_KEY environment variable (in your MCP host's config, "
    "under env) to your Pixazo subscription key, or run `mmaudio-mcp serve --sandbox` to try the server offline."
)


def new_http_client(
    transport: httpx2.AsyncBaseTransport | None = None, timeout: float | None = None
) -> httpx2.AsyncClient:
    """Build the one HTTP client (and connection pool) the server uses for its whole life."""
    limit = DEFAULT_TIMEOUT if timeout is None else httpx2.Timeout(timeout, connect=min(timeout, 10.0))
    return httpx2.AsyncClient(transport=transport, timeout=limit, follow_redirects=False)


class PixazoClient:
    """Pixazo's MMAudio v2 API over one shared `httpx2.AsyncClient`.

    Pass `http` to share a client you own; without it the client builds its own on first use (so that a server
    that is only asked to list its tools never pays for a connection pool) and closes it in `aclose`.
    """

    def __init__(
        self,
        http: httpx2.AsyncClient | None,
        api_key: SecretStr | None,
        base_url: str,
        *,
        transport: httpx2.AsyncBaseTransport | None = None,
        timeout: float | None = None,
    ) -> None:
        self._given = http
        self._timeout = timeout
        self._own: httpx2.AsyncClient | None = None
        self._transport = transport
        self._key = api_key
        self._base_url = base_url.rstrip("/")
        self._deadline = 1.5 * (timeout if timeout is not None else DEFAULT_TIMEOUT.read or 30.0)
        """Overall limit of one request, body included (the HTTP timeout alone is per read: a body that drips one
        byte at a time would never end). Longer than the HTTP timeout, so a plain hang is still reported as one."""

    @property
    def _http(self) -> httpx2.AsyncClient:
        if self._given is not None:
            return self._given
        if self._own is None:
            self._own = new_http_client(self._transport, self._timeout)
        return self._own

    async def aclose(self) -> None:
        """Close the HTTP client if this object created it."""
        if self._own is not None:
            await self._own.aclose()
            self._own = None

    def __repr__(self) -> str:
        return f"PixazoClient(base_url={self._base_url!r}, api_key={'***' if self._key else None})"

    def require_key(self, api_key: SecretStr | None = None) -> None:
        """Fail early, with instructions, when neither the caller nor the server has an API key."""
        if api_key is None and self._key is None:
            raise ConfigurationError(_MISSING_KEY)

    async def submit(
        self, params: GenerationParams, *, webhook_url: str | None = None, api_key: SecretStr | None = None
    ) -> SubmitReply:
        """Ask Pixazo for one job; never resend once the request may have reached the service.

        `api_key` replaces the server's key for this call (a client that brings its own)."""
        headers = self._headers(api_key)
        if webhook_url:
            headers |= {"X-Webhook-URL": webhook_url, "X-Webhook-Mode": "terminal"}
        import stamina  # only needed once a request is made: keeps server start-up light

        async for attempt in stamina.retry_context(on=_submit_backoff, attempts=4, timeout=90.0, wait_max=10.0):
            with attempt:
                return await self._submit_once(params, headers)
        raise AssertionError("unreachable: stamina re-raises the last failure")  # pragma: no cover

    @property
    def status_deadline(self) -> float:
        """The longest one `status` call may take, retries included."""
        return self._deadline * 2

    async def status(self, request_id: str, *, api_key: SecretStr | None = None) -> StatusReply:
        """Read a job's status, retrying transient failures with backoff and jitter."""
        import stamina

        # The retry library stops starting attempts after its timeout but never cancels a running one: this does.
        try:
            with anyio.fail_after(self.status_deadline):
                async for attempt in stamina.retry_context(
                    on=_status_backoff, attempts=4, timeout=self._deadline, wait_max=5.0
                ):
                    with attempt:
                        return await self._status_once(request_id, api_key)
        except TimeoutError as exc:
            raise NetworkError(_too_slow("status", self.status_deadline)) from exc
        raise AssertionError("unreachable: stamina re-raises the last failure")  # pragma: no cover

    @asynccontextmanager
    async def stream_media(self, url: str, *, max_bytes: int) -> AsyncGenerator[AsyncIterator[bytes]]:
        """Open the media URL (without credentials) and yield its body as chunks, capped at max_bytes."""
        response = await self._open_media(url)
        try:
            _check_media_response(response, max_bytes)
            yield _capped(response.aiter_bytes(), max_bytes)
        finally:
            await response.aclose()

    async def _exchange(
        self, method: str, url: str, headers: dict[str, str], body: object = None
    ) -> tuple[httpx2.Response, bytes, bool]:
        """Send one request and read at most MAX_JSON_BYTES of its answer, all within the overall deadline;
        return the response, the body read and whether that is the whole body. TimeoutError past the deadline."""
        with anyio.fail_after(self._deadline):
            request = self._http.build_request(method, url, headers=headers, json=body)
            response = await self._http.send(request, stream=True)
            try:
                content, whole = await _read_capped(response, MAX_JSON_BYTES)
            finally:
                await response.aclose()
        return response, content, whole

    async def _submit_once(self, params: GenerationParams, headers: dict[str, str]) -> SubmitReply:
        url = self._base_url + SUBMIT_PATH
        try:
            response, body, whole = await self._exchange("POST", url, headers, params.model_dump())
        except _NOT_SENT as exc:
            raise NetworkError(_unreachable(exc), before_sending=True) from exc
        except (httpx2.HTTPError, TimeoutError) as exc:
            what = "took too long" if isinstance(exc, TimeoutError) else f"failed ({type(exc).__name__})"
            raise SubmissionUncertainError(
                f"The submit to Pixazo {what} after it was sent, so the job may exist and may be billed. It was not "
                f"resent, to avoid paying twice: {_UNFINISHED_HINT}."
            ) from exc
        if response.status_code != 202 and response.status_code != 200:
            raise _error_from_response(response, body, during="submit")
        return _accepted(response.status_code, body, whole)

    async def _status_once(self, request_id: str, api_key: SecretStr | None) -> StatusReply:
        url = self._base_url + STATUS_PATH.format(request_id=quote(request_id, safe=""))
        try:
            response, body, whole = await self._exchange("GET", url, self._headers(api_key))
        except httpx2.HTTPError as exc:
            raise NetworkError(_unreachable(exc), before_sending=isinstance(exc, _NOT_SENT)) from exc
        except TimeoutError as exc:
            raise NetworkError(_too_slow("status", self._deadline)) from exc
        if response.status_code == 404:
            raise unknown_job(request_id)
        if response.status_code != 200:
            raise _error_from_response(response, body, during="status")
        return _status_reply(body, whole)

    def _headers(self, api_key: SecretStr | None = None) -> dict[str, str]:
        self.require_key(api_key)
        key = api_key or self._key
        assert key is not None
        value = key.get_secret_value()
        if not value.isascii() or not value.isprintable():
            raise ConfigurationError("The Pixazo API key holds characters no key has; check PIXAZO_API_KEY.")
        return {KEY_HEADER: value, "Cache-Control": "no-cache"}

    async def _open_media(self, url: str) -> httpx2.Response:
        # A remote gateway's media lives on the public internet: refuse URLs (or redirects) that lead to this
        # machine or its private network. A gateway on loopback is the sandbox, whose CDN is loopback too.
        allow_private = is_loopback(urlsplit(self._base_url).hostname or "")
        for _ in range(MAX_REDIRECTS + 1):
            _check_media_url(url)
            if not allow_private:
                await _check_public_host(url)
            try:
                request = self._http.build_request("GET", url)
                response = await self._http.send(request, stream=True)
            except httpx2.HTTPError as exc:
                raise MediaError(f"Could not download the audio ({type(exc).__name__}); try again.") from exc
            if not response.is_redirect:
                return response
            await response.aclose()
            next_url = str(response.next_request.url) if response.next_request else ""
            if urlsplit(url).scheme == "https" and urlsplit(next_url).scheme != "https":
                raise MediaError("The audio URL redirected from https to another scheme; refusing to follow it.")
            url = next_url
        raise MediaError(f"The audio URL redirected more than {MAX_REDIRECTS} times; refusing to follow it.")


def _submit_backoff(exc: Exception) -> bool | float:
    if isinstance(exc, RateLimitedError):
        return exc.retry_after if exc.retry_after is not None else True
    return isinstance(exc, NetworkError) and exc.before_sending


def _status_backoff(exc: Exception) -> bool | float:
    if isinstance(exc, RateLimitedError) and exc.retry_after is not None:
        return exc.retry_after
    return isinstance(exc, RateLimitedError | UpstreamUnavailableError | NetworkError)


def _unreachable(exc: httpx2.HTTPError) -> str:
    return f"Could not reach Pixazo ({type(exc).__name__}). Check the network and PIXAZO_GATEWAY_URL, then try again."


def _too_slow(what: str, seconds: float) -> str:
    return (
        f"Pixazo did not finish answering the {what} request within {seconds:g} s (it is too slow or stalled); "
        "the job is kept: try again in a minute."
    )


async def _read_capped(response: httpx2.Response, cap: int) -> tuple[bytes, bool]:
    """Read the body chunk by chunk, stopping once it passes `cap`; return what was read and whether it is all."""
    declared = response.headers.get("Content-Length", "")
    if declared.isdigit() and int(declared) > cap:
        return b"", False
    content = bytearray()
    async for chunk in response.aiter_bytes():
        content += chunk
        if len(content) > cap:
            return bytes(content[:cap]), False
    return bytes(content), True


def _accepted(code: int, body: bytes, whole: bool) -> SubmitReply:
    """Read a 202: without a request_id this server can use, the job may still exist and be billed."""
    reply: SubmitReply | None = None
    if whole:
        try:
            reply = SubmitReply.model_validate_json(body)
        except ValidationError:
            reply = None
    if reply is not None and is_valid_request_id(reply.request_id):
        return reply
    if reply is None:
        what = "an answer over 1 MiB" if not whole else "no request_id this server can read"
    else:
        what = f"a request_id this server refuses ({_quoted_id(reply.request_id)}: not the shape of a Pixazo id)"
    raise SubmissionUncertainError(
        f"Pixazo accepted the job (HTTP {code}) but answered with {what}, so the job may exist and may be billed. "
        f"It was not resent, to avoid paying twice: {_UNFINISHED_HINT}."
    )


def _quoted_id(value: str) -> str:
    shown = value if len(value) <= 60 else f"{value[:57]}..."
    return repr("".join(c if c.isprintable() else "?" for c in shown)) + (
        f" ({len(value):,} characters)" if len(value) > 60 else ""
    )


def _status_reply(body: bytes, whole: bool) -> StatusReply:
    """Read a status answer; an oversized or unreadable one is a protocol error that asking again will not fix."""
    if not whole:
        raise UpstreamProtocolError(
            f"Pixazo answered the status request with a body over {MAX_JSON_BYTES // 1024} KiB (a real one is "
            "under 1 KiB); it was not read. The job is kept: try check_status later.",
            status_code=200,
        )
    try:
        reply = StatusReply.model_validate_json(body)
    except ValidationError as exc:
        if exc.errors()[0]["type"] == "json_invalid":  # an HTML page from a proxy in front: may pass
            raise UpstreamUnavailableError(
                "Pixazo answered HTTP 200 with a body this client cannot read (not JSON); try again later.",
                status_code=200,
            ) from exc
        raise UpstreamProtocolError(
            f"Pixazo answered the status request with something this client cannot read ({_problem(exc)}). "
            "The job is kept: try check_status later; if it persists, the gateway's API has changed.",
            status_code=200,
        ) from exc
    if not is_valid_request_id(reply.request_id):
        raise UpstreamProtocolError(
            f"Pixazo's status answer names a request_id this server refuses ({_quoted_id(reply.request_id)}).",
            status_code=200,
        )
    return reply


def _problem(exc: ValidationError) -> str:
    """Name the first unreadable field of a status answer, without quoting a possibly huge value."""
    first = exc.errors()[0]
    where = ".".join(str(part) for part in first["loc"]) or "the body"
    if first["type"] == "enum":
        value = first.get("input")
        shown = repr(value[:40]) if isinstance(value, str) else "a value"
        return f"{where} is {shown}, not one of QUEUED, PROCESSING, COMPLETED, FAILED, ERROR"
    return f"{where}: {first['msg'].lower()}"


def _error_from_response(response: httpx2.Response, body: bytes, *, during: str) -> UpstreamError:
    """Turn an error answer into a typed error whose message says what happened and what to do."""
    code = response.status_code
    detail = _upstream_detail(response, body)
    factories: dict[int, Callable[[], UpstreamError]] = {
        400: lambda: BadRequestError(
            f"Pixazo rejected the request (400){detail}. Check the parameters.", status_code=code
        ),
        401: lambda: AuthenticationError(
            f"Pixazo rejected the API key (401){detail}. Check PIXAZO_API_KEY: it must be a valid Pixazo "
            "subscription key.",
            status_code=code,
        ),
        402: lambda: InsufficientBalanceError(
            f"Pixazo says the balance is insufficient (402){detail}: top up the account; nothing was generated.",
            status_code=code,
        ),
        403: lambda: ForbiddenError(
            f"Pixazo refused access (403){detail}: the key is not allowed to use MMAudio v2; check the subscription.",
            status_code=code,
        ),
        429: lambda: RateLimitedError(
            f"Pixazo is rate-limiting requests (429){detail}; wait a little and try again.",
            retry_after=_retry_after(response),
        ),
    }
    if code in factories:
        return factories[code]()
    if during == "submit" and code >= 500:
        return UpstreamUnavailableError(
            f"Pixazo failed while accepting the job (HTTP {code}){detail}. The job may or may not exist; it was not "
            "resent, to avoid paying twice. Try again in a minute.",
            status_code=code,
        )
    return UpstreamUnavailableError(f"Pixazo answered HTTP {code}{detail}; try again in a minute.", status_code=code)


def _upstream_detail(response: httpx2.Response, content: bytes) -> str:
    """Quote Pixazo's own `message` when the body is the documented JSON; say nothing for HTML or empty bodies."""
    try:
        body: Any = json.loads(content)
    except ValueError:
        return ""
    fields = cast("dict[str, object]", body) if isinstance(body, dict) else {}
    message = fields.get("message") or fields.get("error")
    if not isinstance(message, str) or not message.strip():
        return ""
    text = " ".join(message.split())[:200]
    key = response.request.headers.get(KEY_HEADER)
    return f': "{text.replace(key, "***") if key else text}"'


def _retry_after(response: httpx2.Response) -> float | None:
    value = response.headers.get("Retry-After", "").strip()
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            seconds = parsedate_to_datetime(value).timestamp() - time()
        except (TypeError, ValueError):
            return None
    return min(max(seconds, 0.0), MAX_RETRY_AFTER)


def _check_media_url(url: str) -> None:
    """Allow https anywhere, and plain http only to loopback (the sandbox)."""
    parts = urlsplit(url)
    if parts.scheme == "https" and parts.hostname:
        return
    if parts.scheme == "http" and parts.hostname and is_loopback(parts.hostname):
        return
    raise MediaError(f"Refusing to download audio from {parts.scheme or 'a'}:// URL: only https is allowed.")


async def _check_public_host(url: str) -> None:
    """Refuse a host that is, or resolves to, a loopback, private, link-local or otherwise non-public address.

    A name that does not resolve is left to fail at connect time. (The HTTP client resolves again when it connects,
    so a DNS server that changes its answer in between is not stopped here.)"""
    host = urlsplit(url).hostname or ""
    try:
        addresses = [ipaddress.ip_address(host)]
    except ValueError:
        try:
            found = await anyio.getaddrinfo(host, 443, type=socket.SOCK_STREAM)
        except OSError:
            return
        addresses = [ipaddress.ip_address(str(sockaddr[0]).split("%", 1)[0]) for *_, sockaddr in found]
    if any(not address.is_global for address in addresses):
        raise MediaError("Refusing to download audio from a private or local network address given by Pixazo.")


def is_loopback(host: str) -> bool:
    """Tell whether a host name or address stays on this machine."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _check_media_response(response: httpx2.Response, max_bytes: int) -> None:
    if response.status_code == 404:
        raise MediaError("The audio file is not (or no longer) available at its URL (404).")
    if response.status_code != 200:
        raise MediaError(f"The audio download failed with HTTP {response.status_code}; try again.")
    declared = response.headers.get("Content-Length", "")
    if declared.isdigit() and int(declared) > max_bytes:
        raise MediaTooLargeError(f"The audio is {int(declared):,} bytes, over the {max_bytes:,}-byte download cap.")


async def _capped(chunks: AsyncIterator[bytes], max_bytes: int) -> AsyncIterator[bytes]:
    received = 0
    try:
        async for chunk in chunks:
            received += len(chunk)
            if received > max_bytes:
                raise MediaTooLargeError(f"The audio is larger than the {max_bytes:,}-byte download cap.")
            yield chunk
    except httpx2.HTTPError as exc:
        raise MediaError(f"The audio download broke off ({type(exc).__name__}); try again.") from exc


__all__ = ["KEY_HEADER", "STATUS_PATH", "SUBMIT_PATH", "PixazoClient", "is_loopback", "new_http_client"]
