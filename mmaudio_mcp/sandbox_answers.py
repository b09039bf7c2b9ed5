"""Shape the sandbox's answers as the gateway and its CDN send them: JSON and HTML errors, hangs, drips, huge bodies.

Hostile answers (slow or huge media, hanging submits and polls) only show their effect under a real server:
`httpx2.ASGITransport` buffers whole responses and enforces no timeout. A hanging handler ends when its client
disconnects (or the server cancels it), so it never keeps a server from shutting down.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

import anyio
import anyio.lowlevel
from starlette.responses import JSONResponse, Response, StreamingResponse

from mmaudio_mcp.sandbox_audio import WAV_HEADER_BYTES, wav_header
from mmaudio_mcp.sandbox_faults import FaultKind

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from starlette.requests import Request

__all__ = ["drip", "error", "hang", "html_error", "huge_json", "media_body", "silent_wav", "streamed"]

DRIP_CHUNK_BYTES = 1024
HUGE_CHUNK_BYTES = 64 * 1024
_NOT_WAV_PAGE = b"<!DOCTYPE html><html><head><title>Error</title></head><body><h1>Access Denied</h1></body></html>"


def error(status: int, title: str, message: str) -> JSONResponse:
    """Answer as the gateway does: `{"error": title, "message": message}` with `status`."""
    return JSONResponse({"error": title, "message": message}, status)


def html_error(status: int) -> Response:
    """Answer as a proxy in front of the gateway does: an HTML page, not JSON."""
    title = f"{status} {'Bad Gateway' if status == 502 else 'Internal Server Error'}"
    page = f"<html><head><title>{title}</title></head><body><center><h1>{title}</h1></center></body></html>"
    return Response(page, status, media_type="text/html")


async def hang(request: Request) -> Response:
    """Never answer: sleep until the client disconnects (or the server cancels the handler), leaving no task behind.

    The answer returned then goes nowhere: the client is gone.
    """
    async with anyio.create_task_group() as tasks:
        tasks.start_soon(_cancel_on_disconnect, request, tasks.cancel_scope)
        await anyio.sleep_forever()
    return Response("Gateway Timeout", 504, media_type="text/plain")


async def _cancel_on_disconnect(request: Request, scope: anyio.CancelScope) -> None:
    """Read what is left of the request until the server reports the client gone, then cancel `scope`."""
    while (await request.receive())["type"] != "http.disconnect":
        pass
    scope.cancel()


def media_body(wav: bytes, fault: FaultKind | None, drip_seconds: float) -> Response:
    """Answer a media fetch with the job's WAV as a fault (truncated, not WAV, slow) or nothing shapes it."""
    if fault is FaultKind.SLOW_MEDIA:
        return streamed(drip(wav, drip_seconds), len(wav))
    if fault is FaultKind.TRUNCATED_WAV:
        wav = wav[: len(wav) // 2]
    elif fault is FaultKind.NOT_WAV:
        wav = _NOT_WAV_PAGE
    return Response(wav, 200, media_type="audio/wav")


def streamed(chunks: AsyncIterator[bytes], size: int) -> StreamingResponse:
    """Answer with a WAV streamed from `chunks`, announcing `size` bytes."""
    return StreamingResponse(chunks, 200, headers={"Content-Length": str(size)}, media_type="audio/wav")


async def drip(body: bytes, delay: float, piece: int = DRIP_CHUNK_BYTES) -> AsyncIterator[bytes]:
    """Yield `body` in `piece`-byte pieces, sleeping `delay` seconds between two pieces."""
    for start in range(0, len(body), piece):
        if start:
            await anyio.sleep(delay)
        yield body[start : start + piece]


async def huge_json(body: dict[str, object], size: int) -> AsyncIterator[bytes]:
    """Yield `body` as JSON padded to about `size` bytes in its error field, one reused block at a time."""
    head = json.dumps({**body, "error": ""}).encode()
    cut = head.index(b'"error": "') + len(b'"error": "')
    yield head[:cut]
    block = b"x" * HUGE_CHUNK_BYTES
    for _ in range(max(size - len(head), 0) // HUGE_CHUNK_BYTES):
        await anyio.lowlevel.checkpoint()
        yield block
    yield head[cut:]


async def silent_wav(size: int) -> AsyncIterator[bytes]:
    """Yield a `size`-byte WAV of silence: its header, then one reused block of zeros at a time, never the whole."""
    yield wav_header(size - WAV_HEADER_BYTES)
    zeros = bytes(HUGE_CHUNK_BYTES)
    for start in range(WAV_HEADER_BYTES, size, HUGE_CHUNK_BYTES):
        await anyio.lowlevel.checkpoint()  # stays cancellable even when the socket never pushes back
        yield zeros if size - start >= HUGE_CHUNK_BYTES else zeros[: size - start]
