"""How jobs look to an MCP client: result content, summaries, listings and trimmed JSON schemas."""

from __future__ import annotations

import base64
import logging
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, cast

import anyio
from mcp.server.mcpserver.exceptions import ToolError
from mcp.types import (
    AudioContent,
    BlobResourceContents,
    CallToolResult,
    ContentBlock,
    EmbeddedResource,
    ResourceLink,
    TextContent,
)

from mmaudio_mcp.audio import run_audio_work
from mmaudio_mcp.errors import MmaudioError
from mmaudio_mcp.models import JobStatus
from mmaudio_mcp.player import AUDIO_META_KEY, CHUNK_CAP, PEAKS_META_KEY, wav_peaks
from mmaudio_mcp.processing import process_file
from mmaudio_mcp.processing_options import ProcessOptions

if TYPE_CHECKING:
    from mmaudio_mcp.models import AudioFile, AudioJob, JobRecord

logger = logging.getLogger(__name__)

MAX_MESSAGE_BYTES: Final = 1024 * 1024
"""No message we send may exceed this: the Python SDK's HTTP clients refuse a larger server-sent event (on SSE
the whole session dies), and other hosts' limits are undocumented."""
INLINE_AUDIO_LIMIT: Final = 600 * 1024
"""Raw bytes we inline or link: base64 grows them by a third, leaving room in a 1 MiB message."""
LINKABLE_BYTES: Final = INLINE_AUDIO_LIMIT
MIME_TYPES: Final = {"wav": "audio/wav", "flac": "audio/flac", "ogg": "audio/ogg", "mp3": "audio/mpeg"}
PREVIEW_NAME: Final = "preview.ogg"
PREVIEW_OPTIONS: Final = ProcessOptions(format="ogg", sample_rate=22050, channels=1)
"""The compressed preview of a job's delivered WAV that always fits in one message (30 s: about 0.2 MB)."""
RESOURCE_LINKS_SINCE: Final = "2025-06-18"
"""resource_link content blocks exist from this protocol version on; older clients get the same facts as text."""
AUDIO_CONTENT_SINCE: Final = "2025-03-26"


def audio_uri(request_id: str, variant_key: str | None = None, fmt: str = "wav") -> str:
    """The resource URI of a job's delivered WAV (no key) or of one of its variants (its own URI each)."""
    return f"audio://{request_id}" if variant_key is None else f"audio://{request_id}/{variant_key}.{fmt}"


def preview_uri(request_id: str) -> str:
    return f"audio://{request_id}/{PREVIEW_NAME}"


def compact_schema(schema: dict[str, Any], *, for_output: bool = False) -> dict[str, Any]:
    """Trim a JSON schema to what a model needs (it pays for every token): no titles (the key says it), `X | None`
    as a type list without its null default; for outputs also no descriptions or validation keywords, but the
    root title (the result's model name) stays."""
    trimmed = _trim(schema, for_output)
    if for_output and "title" in schema:
        trimmed["title"] = schema["title"]
    return trimmed


_OUTPUT_DROPS: Final = frozenset(
    {"title", "description", "default", "minLength", "maxLength", "minimum", "maximum", "pattern", "format"}
)


def _trim(node: Any, for_output: bool) -> Any:
    if isinstance(node, list):
        return [_trim(item, for_output) for item in cast("list[Any]", node)]
    if not isinstance(node, dict):
        return node
    dropped = _OUTPUT_DROPS if for_output else {"title"}
    trimmed: dict[str, Any] = {}
    for key, value in cast("dict[str, Any]", node).items():
        if key in ("properties", "$defs"):  # keys here are names, not keywords
            trimmed[key] = {name: _trim(sub, for_output) for name, sub in cast("dict[str, Any]", value).items()}
        elif key not in dropped:
            trimmed[key] = _trim(value, for_output)
    return _nullable_as_type_list(trimmed)


def _nullable_as_type_list(node: dict[str, Any]) -> dict[str, Any]:
    """Write `anyOf: [{type: T, ...}, {type: null}]` as `type: [T, null], ...` when T is a plain type."""
    options = node.get("anyOf")
    if not isinstance(options, list) or len(options) != 2 or {"type": "null"} not in options:  # pyright: ignore[reportUnknownArgumentType]
        return node
    other = next(option for option in cast("list[dict[str, Any]]", options) if option != {"type": "null"})
    if not isinstance(other.get("type"), str):
        return node
    merged = {key: value for key, value in node.items() if key != "anyOf"} | other
    merged["type"] = [other["type"], "null"]
    if "enum" in other:
        merged["enum"] = [*other["enum"], None]
    if "default" in merged and merged["default"] is None:
        del merged["default"]
    return merged


async def make_preview(delivered: AudioFile, request_id: str, folder: Path) -> Path:
    """The preview of a job's delivered WAV: made once per WAV content, kept in `folder` (the state folder, not among
    the user's files), written atomically so concurrent callers are safe."""
    dest = folder / f"{request_id}-{delivered.sha256[:16]}.ogg"
    if not await anyio.Path(dest).is_file():
        await anyio.Path(folder).mkdir(parents=True, exist_ok=True)
        await run_audio_work(process_file, Path(delivered.path), dest, PREVIEW_OPTIONS)
    return dest


async def preview_size(delivered: AudioFile | None, request_id: str, folder: Path) -> int | None:
    """The preview's size in bytes for a result's link; None while there is no file, or if it cannot be made
    (the result still names the file's path)."""
    if delivered is None:
        return None
    try:
        return (await anyio.Path(await make_preview(delivered, request_id, folder)).stat()).st_size
    except (MmaudioError, OSError) as exc:
        logger.warning("no preview for %s: %s", request_id, exc)
        return None


def tool_result(job: AudioJob, *, file_uri: str | None = None, preview_bytes: int | None = None) -> CallToolResult:
    """Shape a job as a tool result: an error if it failed, else a summary, links and the structured job.

    Only resources a client can read in one message (at most 1 MiB) are linked, each link naming exactly what its
    URI returns: the job's file at `file_uri` (its delivered WAV by default) when small enough, and the `preview`
    (always small). A file too large to link is named by its path in the text."""
    job = worded(job)
    if job.status in (JobStatus.FAILED, JobStatus.ERROR, JobStatus.REJECTED):
        reason = job.error.message if job.error else "no reason given"
        raise ToolError(f"Job {job.request_id} ended {job.status.value}: {reason}")
    content: list[ContentBlock] = [TextContent(type="text", text=summary(job))]
    if job.reattached:
        note = (
            f"This call joined job {job.request_id}, which an identical earlier call started and whose answer never "
            "reached you (it was cancelled or its connection closed): nothing was paid again."
        )
        content.insert(0, TextContent(type="text", text=note))
    if job.file is not None:
        name = job.file.path.rsplit("/", 1)[-1]
        if job.file.bytes <= LINKABLE_BYTES:
            content.append(_link(file_uri or audio_uri(job.request_id), name, job.file))
        if preview_bytes is not None and preview_bytes <= LINKABLE_BYTES:
            stem = name.rsplit(".", 1)[0]
            link = ResourceLink(
                type="resource_link",
                uri=preview_uri(job.request_id),
                name=f"{stem}-preview.ogg",
                mime_type="audio/ogg",
                size=preview_bytes,
            )
            content.append(link)
        if job.file.bytes > LINKABLE_BYTES:
            note = f"The file ({job.file.bytes:,} bytes) is too large for one MCP message: open it at its path" + (
                f", or listen to the preview {preview_uri(job.request_id)}." if preview_bytes is not None else "."
            )
            content.append(TextContent(type="text", text=note))
    return CallToolResult(content=content, structured_content=job.model_dump(mode="json"))


def _link(uri: str, name: str, file: AudioFile) -> ResourceLink:
    return ResourceLink(
        type="resource_link", uri=uri, name=name, mime_type=MIME_TYPES.get(file.format, "audio/wav"), size=file.bytes
    )


def for_protocol(result: CallToolResult, version: str | None) -> CallToolResult:
    """The result as a client of `version` can parse it: before 2025-06-18 there are no resource links (each
    becomes a line of text with the same facts), before 2025-03-26 no audio content (it becomes an embedded blob)."""
    if version is None or version >= RESOURCE_LINKS_SINCE:
        return result
    content: list[ContentBlock] = []
    for block in result.content:
        if isinstance(block, ResourceLink):
            text = f"Resource {block.uri} ({block.mime_type}, {block.size:,} bytes): {block.name}"
            content.append(TextContent(type="text", text=text))
        elif isinstance(block, AudioContent) and version < AUDIO_CONTENT_SINCE:
            blob = BlobResourceContents(uri="audio://inline", mime_type=block.mime_type, blob=block.data)
            content.append(EmbeddedResource(type="resource", resource=blob))
        else:
            content.append(block)
    return result.model_copy(update={"content": content})


def worded(job: AudioJob) -> AudioJob:
    """The job with its next step (data from the domain) worded for a model: as the tool call to make."""
    step, rid = job.next, job.request_id
    words = {
        "wait": f'Call check_status(request_id="{rid}", wait_seconds=30) to wait for the audio.',
        "download": f'Call download_audio(request_id="{rid}") to fetch the audio.',
        "generate_again": "Call generate_audio again, perhaps with a simpler prompt.",
    }
    return job.model_copy(update={"next_step": words[step.action] if step else None})


def summary(job: AudioJob) -> str:
    """One or two sentences a person (or model) can act on."""
    what = f"'{job.params.prompt[:60]}'" if job.params else job.request_id
    if job.file is not None:
        f = job.file
        shape = f"{f.duration_seconds:g} s, {f.sample_rate} Hz, {f.channels} ch {f.sample_format}, {f.bytes:,} bytes"
        return f"Audio for {what} is ready ({shape}): {f.path}"
    if job.status is JobStatus.COMPLETED:
        return f"Job {job.request_id} is complete. {job.next_step or ''}".strip()
    eta = f", about {job.eta_seconds:.0f} s left" if job.eta_seconds is not None else ""
    return (
        f"Job {job.request_id} for {what} is {job.status.value} after {job.elapsed_seconds:.0f} s{eta}. {job.next_step}"
    )


async def with_inline_audio(result: CallToolResult, job: AudioJob) -> CallToolResult:
    assert job.file is not None
    if job.file.bytes > INLINE_AUDIO_LIMIT:
        note = (
            f"The audio ({job.file.bytes:,} bytes) is too large to inline (limit {INLINE_AUDIO_LIMIT:,}); "
            f"open the file at its path instead, or read the preview {preview_uri(job.request_id)}."
        )
        result.content.append(TextContent(type="text", text=note))
        return result
    data = await anyio.Path(job.file.path).read_bytes()
    mime = MIME_TYPES.get(job.file.format, "audio/wav")
    result.content.append(AudioContent(type="audio", data=base64.b64encode(data).decode(), mime_type=mime))
    return result


async def with_player(result: CallToolResult, job: AudioJob, delivered: AudioFile | None = None) -> CallToolResult:
    """Add what the player view needs to a finished job's result, in `_meta` (models do not pay for it): the
    waveform peaks of the delivered WAV (`delivered`, else the job's file) and how to read its bytes."""
    file = delivered or job.file
    if file is None:
        return result
    meta = dict(result.meta or {})
    meta[AUDIO_META_KEY] = {
        "uri": audio_uri(job.request_id),
        "bytes": file.bytes,
        "duration_seconds": file.duration_seconds,
        "chunk_bytes": CHUNK_CAP,
    }
    try:
        meta[PEAKS_META_KEY] = list(await run_audio_work(_cached_peaks, file.path, file.sha256))
    except (OSError, RuntimeError, ValueError) as exc:  # the text result stands without a waveform
        logger.warning("no waveform peaks for %s: %s", file.path, exc)
    result.meta = meta
    return result


@lru_cache(maxsize=64)
def _cached_peaks(path: str, sha256: str) -> tuple[float, ...]:
    del sha256  # part of the cache key only: a changed file has new peaks
    return tuple(wav_peaks(Path(path)))


def job_listing(record: JobRecord) -> dict[str, object]:
    entry: dict[str, object] = {
        "request_id": record.request_id,
        "status": record.status.value,
        "prompt": record.params.prompt if record.params else None,
        "created_at": record.created_at.isoformat(),
        "file": record.file.path if record.file else None,
    }
    if record.request_id is None and record.status is JobStatus.SUBMITTING:
        entry["note"] = "may have been submitted and billed; request_id unknown (the submit got no answer)"
    if record.error is not None:
        entry["error"] = record.error.message
    return entry


__all__ = [
    "INLINE_AUDIO_LIMIT",
    "LINKABLE_BYTES",
    "MAX_MESSAGE_BYTES",
    "MIME_TYPES",
    "PREVIEW_NAME",
    "PREVIEW_OPTIONS",
    "audio_uri",
    "compact_schema",
    "for_protocol",
    "job_listing",
    "make_preview",
    "preview_size",
    "preview_uri",
    "summary",
    "tool_result",
    "with_inline_audio",
    "with_player",
]
