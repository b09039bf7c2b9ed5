"""The MCP face of the job service: three thin tools, the audio resources, and one error translation."""

from __future__ import annotations

import base64
import json
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Final, TypeVar

import anyio
from mcp.server import MCPServer
from mcp.server.mcpserver import Context  # noqa: TC002 (the SDK reads tool annotations at runtime)
from mcp.server.mcpserver.exceptions import ResourceError, ResourceNotFoundError, ToolError
from mcp.types import AudioContent, CallToolResult, ResourceLink, TextContent, ToolAnnotations
from pydantic import Field

from mmaudio_mcp import __version__
from mmaudio_mcp.errors import InvalidArgumentError, MmaudioError, UnknownJobError
from mmaudio_mcp.jobs import JobService, open_job_service
from mmaudio_mcp.models import REQUEST_ID_PATTERN, AudioJob, GenerationParams, JobStatus

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Callable

    import httpx2

    from mmaudio_mcp.models import JobRecord
    from mmaudio_mcp.schedule import PollPolicy
    from mmaudio_mcp.settings import Settings

_T = TypeVar("_T")
INLINE_AUDIO_LIMIT: Final = 600 * 1024
"""Raw bytes we inline: base64 grows them by a third, and the SDK's HTTP clients refuse messages over 1 MiB."""

INSTRUCTIONS: Final = (
    "Generate sound effects, ambience and short music clips from text with MMAudio v2. "
    "generate_audio waits for the result when it can; otherwise call check_status with the request_id it returns. "
    "Every job is kept by request_id, so nothing is lost if a call times out."
)

Prompt = Annotated[
    str,
    Field(
        min_length=1,
        max_length=2000,
        pattern=r"\S",
        description="What the sound is, in plain words (e.g. 'rain on a tin roof, distant thunder'). "
        "Only about the first 60 words are read (77 CLIP tokens); put the essentials first.",
    ),
]
NegativePrompt = Annotated[str, Field(max_length=2000, description="Sounds to avoid, e.g. 'music, voices'.")]
Duration = Annotated[int, Field(ge=2, le=30, description="Length in seconds. The model was trained on 8 s clips.")]
NumSteps = Annotated[int, Field(ge=10, le=100, description="Diffusion steps: more is slower, sometimes cleaner.")]
CfgStrength = Annotated[
    float, Field(ge=1.0, le=10.0, allow_inf_nan=False, description="How literally to follow the prompt.")
]
MaskAwayClip = Annotated[bool, Field(description="Passed through to MMAudio; may have no effect for text-only audio.")]
RequestId = Annotated[
    str, Field(max_length=128, pattern=REQUEST_ID_PATTERN, description="The request_id from generate_audio.")
]
FileName = Annotated[
    str | None,
    Field(max_length=120, description="Bare file name (no folders) for a copy in the output folder, e.g. 'rain.wav'."),
]


WaitSeconds = Annotated[
    float,
    Field(
        ge=0,
        le=300,
        description="Seconds to wait for the audio inside this call (progress is reported meanwhile); "
        "0 returns at once with the request_id.",
    ),
]


@dataclass
class AppState:
    """What the lifespan owns for the server's life."""

    jobs: JobService


def build_server(
    settings: Settings,
    *,
    http_transport: httpx2.AsyncBaseTransport | None = None,
    policy: PollPolicy | None = None,
) -> MCPServer[AppState]:
    """Assemble the server; nothing touches the network or disk until the lifespan starts."""

    @asynccontextmanager
    async def lifespan(_: MCPServer[AppState]) -> AsyncIterator[AppState]:
        async with open_job_service(
            api_key=settings.api_key,
            gateway_url=settings.gateway_url,
            state_dir=settings.state_dir,
            output_dir=settings.output_dir,
            http_transport=http_transport,
            policy=policy,
        ) as jobs:
            yield AppState(jobs=jobs)

    server = MCPServer[AppState](
        "mmaudio-mcp", version=__version__, instructions=INSTRUCTIONS, lifespan=lifespan, log_level="WARNING"
    )
    _add_tools(server, settings.wait_seconds)
    _add_resources(server)
    return server


def _add_tools(server: MCPServer[AppState], default_wait: float) -> None:
    @server.tool(
        title="Generate audio",
        annotations=ToolAnnotations(
            read_only_hint=False, destructive_hint=False, idempotent_hint=False, open_world_hint=True
        ),
        structured_output=True,
    )
    async def generate_audio(
        ctx: Context[AppState],
        prompt: Prompt,
        negative_prompt: NegativePrompt = "",
        duration: Duration = 8,
        num_steps: NumSteps = 25,
        cfg_strength: CfgStrength = 4.5,
        mask_away_clip: MaskAwayClip = False,
        wait_seconds: WaitSeconds = default_wait,
    ) -> Annotated[CallToolResult, AudioJob]:
        """Generate a sound effect, ambience or music clip from text with MMAudio v2 and save it as a WAV file.

        Each call is a new paid job (10-90 s); there is no seed, so runs differ. If it is not done within
        wait_seconds, the result holds a request_id: call check_status with it instead of generating again.
        """
        params = GenerationParams(
            prompt=prompt,
            negative_prompt=negative_prompt,
            duration=duration,
            num_steps=num_steps,
            cfg_strength=cfg_strength,
            mask_away_clip=mask_away_clip,
        )
        jobs = _jobs(ctx)
        return _result(await _call(jobs.generate(params, wait_seconds=wait_seconds, progress=_progress(ctx))))

    @server.tool(
        title="Check an audio job",
        annotations=ToolAnnotations(
            read_only_hint=False, destructive_hint=False, idempotent_hint=True, open_world_hint=True
        ),
        structured_output=True,
    )
    async def check_status(
        ctx: Context[AppState],
        request_id: RequestId,
        wait_seconds: Annotated[float, Field(ge=0, le=300, description="Seconds to wait for completion.")] = 0,
    ) -> Annotated[CallToolResult, AudioJob]:
        """Report a generate_audio job; when it is complete, its WAV is saved (finished jobs are answered locally)."""
        jobs = _jobs(ctx)
        return _result(await _call(jobs.check(request_id, wait_seconds=wait_seconds, progress=_progress(ctx))))

    @server.tool(
        title="Download generated audio",
        annotations=ToolAnnotations(
            read_only_hint=False, destructive_hint=False, idempotent_hint=True, open_world_hint=True
        ),
        structured_output=True,
    )
    async def download_audio(
        ctx: Context[AppState],
        request_id: RequestId,
        filename: FileName = None,
        include_audio: Annotated[bool, Field(description="Also return the audio inline, if under ~600 KB.")] = False,
    ) -> Annotated[CallToolResult, AudioJob]:
        """Make sure a finished job's WAV is on disk (a verified copy is reused, never re-fetched) and describe it."""
        job = await _call(_jobs(ctx).download(request_id, filename=filename))
        return await _with_inline_audio(_result(job), job) if include_audio else _result(job)


def _add_resources(server: MCPServer[AppState]) -> None:
    @server.resource(
        "audio://{request_id}", name="audio", title="Generated audio", mime_type="audio/wav", description="A WAV file."
    )
    async def audio(request_id: str, ctx: Context[AppState]) -> bytes:
        try:
            return await _jobs(ctx).read_audio(request_id)
        except (UnknownJobError, InvalidArgumentError) as exc:
            raise ResourceNotFoundError(exc.message) from exc
        except MmaudioError as exc:
            raise ResourceError(exc.message) from exc

    @server.resource(
        "mmaudio://jobs",
        name="jobs",
        title="Recent audio jobs",
        mime_type="application/json",
        description="The 20 newest jobs, including any whose submit never got an answer.",
    )
    async def recent_jobs(ctx: Context[AppState]) -> str:
        records = await _jobs(ctx).recent(20)
        return json.dumps([_listing(record) for record in records], indent=1)


def _jobs(ctx: Context[AppState]) -> JobService:
    return ctx.request_context.lifespan_context.jobs


def _progress(ctx: Context[AppState]) -> Callable[[float, float | None, str], Awaitable[None]]:
    async def report(progress: float, total: float | None, message: str) -> None:
        await ctx.report_progress(progress, total, message)

    return report


async def _call(work: Awaitable[_T]) -> _T:
    """Run domain work, turning our typed errors into the tool error the model sees."""
    try:
        return await work
    except MmaudioError as exc:
        raise ToolError(exc.message) from exc


def _result(job: AudioJob) -> CallToolResult:
    """Shape a job as a tool result: an error if it failed, else a summary, a link and the structured job."""
    if job.status in (JobStatus.FAILED, JobStatus.ERROR, JobStatus.REJECTED):
        reason = job.error.message if job.error else "no reason given"
        raise ToolError(f"Job {job.request_id} ended {job.status.value}: {reason}")
    content: list[TextContent | ResourceLink | AudioContent] = [TextContent(type="text", text=summary(job))]
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


async def _with_inline_audio(result: CallToolResult, job: AudioJob) -> CallToolResult:
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


def _listing(record: JobRecord) -> dict[str, object]:
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


__all__ = ["AppState", "build_server", "summary"]
