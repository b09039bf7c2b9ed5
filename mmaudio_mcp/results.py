"""How jobs look to an MCP client: result content, summaries, listings and trimmed JSON schemas."""

from __future__ import annotations

import base64
import logging
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, cast

import anyio
import anyio.to_thread
from mcp.server.mcpserver.exceptions import ToolError
from mcp.types import AudioContent, CallToolResult, ContentBlock, ResourceLink, TextContent

from mmaudio_mcp.models import JobStatus
from mmaudio_mcp.player import AUDIO_META_KEY, CHUNK_CAP, PEAKS_META_KEY, wav_peaks

if TYPE_CHECKING:
    from mmaudio_mcp.models import AudioFile, AudioJob, JobRecord

logger = logging.getLogger(__name__)

INLINE_AUDIO_LIMIT: Final = 600 * 1024
"""Raw bytes we inline: base64 grows them by a third, and the SDK's HTTP clients refuse messages over 1 MiB."""


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


def tool_result(job: AudioJob) -> CallToolResult:
    """Shape a job as a tool result: an error if it failed, else a summary, a link and the structured job."""
    job = worded(job)
    if job.status in (JobStatus.FAILED, JobStatus.ERROR, JobStatus.REJECTED):
        reason = job.error.message if job.error else "no reason given"
        raise ToolError(f"Job {job.request_id} ended {job.status.value}: {reason}")
    content: list[ContentBlock] = [TextContent(type="text", text=summary(job))]
    if job.file is not None:
        content.append(
            ResourceLink(
                type="resource_link",
                uri=f"audio://{job.request_id}",
                name=job.file.path.rsplit("/", 1)[-1],
                mime_type="audio/wav",
                size=job.file.bytes,
            )
        )
    return CallToolResult(content=content, structured_content=job.model_dump(mode="json"))


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
            f"read the resource audio://{job.request_id} or open the file instead."
        )
        result.content.append(TextContent(type="text", text=note))
        return result
    data = await anyio.Path(job.file.path).read_bytes()
    result.content.append(AudioContent(type="audio", data=base64.b64encode(data).decode(), mime_type="audio/wav"))
    return result


async def with_player(result: CallToolResult, job: AudioJob, delivered: AudioFile | None = None) -> CallToolResult:
    """Add what the player view needs to a finished job's result, in `_meta` (models do not pay for it): the
    waveform peaks of the delivered WAV (`delivered`, else the job's file) and how to read its bytes."""
    file = delivered or job.file
    if file is None:
        return result
    meta = dict(result.meta or {})
    meta[AUDIO_META_KEY] = {
        "uri": f"audio://{job.request_id}",
        "bytes": file.bytes,
        "duration_seconds": file.duration_seconds,
        "chunk_bytes": CHUNK_CAP,
    }
    try:
        meta[PEAKS_META_KEY] = list(await anyio.to_thread.run_sync(_cached_peaks, file.path, file.sha256))
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
    "compact_schema",
    "job_listing",
    "summary",
    "tool_result",
    "with_inline_audio",
    "with_player",
]
