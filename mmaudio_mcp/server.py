"""The MCP face of the job service: three thin tools, the audio resources, and one error translation."""

from __future__ import annotations

import inspect
import json
import logging
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Final, TypeVar

from mcp.server import MCPServer
from mcp.server.mcpserver import Context  # noqa: TC002 (the SDK reads tool annotations at runtime)
from mcp.server.mcpserver.exceptions import ResourceError, ResourceNotFoundError, ToolError
from mcp.server.mcpserver.tools import Tool
from mcp.types import CallToolResult, ToolAnnotations
from pydantic import Field
from starlette.requests import Request  # noqa: TC002 (route signatures are read at runtime)
from starlette.responses import JSONResponse, Response

from mmaudio_mcp import __version__, prompts
from mmaudio_mcp.errors import InvalidArgumentError, MmaudioError, UnknownJobError
from mmaudio_mcp.jobs import Caller, JobService, open_job_service
from mmaudio_mcp.models import REQUEST_ID_PATTERN, AudioJob, GenerationParams
from mmaudio_mcp.results import compact_schema, job_listing, tool_result, with_inline_audio

if TYPE_CHECKING:
    from collections.abc import AsyncGenerator, Awaitable, Callable

    import httpx2

    from mmaudio_mcp.schedule import PollPolicy
    from mmaudio_mcp.settings import Settings

logger = logging.getLogger(__name__)

CLIENT_KEY_HEADER: Final = "x-pixazo-api-key"
"""HTTP header through which a client brings its own Pixazo key (used instead of the server's, for its jobs only)."""
_T = TypeVar("_T")
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


@dataclass
class _Live:
    """The running lifespan's state, for static resources (the SDK gives them no Context)."""

    state: AppState | None = None

    @property
    def jobs(self) -> JobService:
        if self.state is None:
            raise ResourceError("The server is not running.")
        return self.state.jobs


def build_server(
    settings: Settings,
    *,
    http_transport: httpx2.AsyncBaseTransport | None = None,
    policy: PollPolicy | None = None,
) -> MCPServer[AppState]:
    """Assemble the server; nothing touches the network or disk until the lifespan starts."""

    @asynccontextmanager
    async def lifespan(_: MCPServer[AppState]) -> AsyncGenerator[AppState]:
        if live.state is not None:  # SSE enters the lifespan per connection: share the app-wide service
            yield live.state
            return
        async with open_job_service(
            api_key=settings.api_key,
            gateway_url=settings.gateway_url,
            state_dir=settings.state_dir,
            output_dir=settings.output_dir,
            http_transport=http_transport,
            policy=policy,
            webhook_base=settings.public_url if settings.transport != "stdio" else None,
        ) as jobs:
            live.state = AppState(jobs=jobs)
            try:
                yield live.state
            finally:
                live.state = None

    live = _Live()

    server = MCPServer[AppState](
        "mmaudio-mcp",
        version=__version__,
        instructions=INSTRUCTIONS,
        lifespan=lifespan,
        log_level="WARNING",
        tools=_tools(settings.wait_seconds),
    )
    _add_resources(server, live)
    _add_routes(server, live)
    _add_prompts(server)
    return server


def _add_prompts(server: MCPServer[AppState]) -> None:
    server.prompt(name="sound_effect", title="Sound effect", description="Write a good MMAudio sound-effect request.")(
        prompts.sound_effect
    )
    server.prompt(name="ambience", title="Ambience", description="Write a good MMAudio ambience request.")(
        prompts.ambience
    )


def _tools(default_wait: float) -> list[Tool]:
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
        jobs, caller = await _jobs_for(ctx)
        work = jobs.generate(params, wait_seconds=wait_seconds, progress=_progress(ctx), caller=caller)
        return tool_result(await _call(work))

    async def check_status(
        ctx: Context[AppState],
        request_id: RequestId,
        wait_seconds: Annotated[float, Field(ge=0, le=300, description="Seconds to wait for completion.")] = 0,
    ) -> Annotated[CallToolResult, AudioJob]:
        """Report a generate_audio job; when it is complete, its WAV is saved (finished jobs are answered locally)."""
        jobs, caller = await _jobs_for(ctx)
        work = jobs.check(request_id, wait_seconds=wait_seconds, progress=_progress(ctx), caller=caller)
        return tool_result(await _call(work))

    async def download_audio(
        ctx: Context[AppState],
        request_id: RequestId,
        filename: FileName = None,
        include_audio: Annotated[bool, Field(description="Also return the audio inline, if under ~600 KB.")] = False,
    ) -> Annotated[CallToolResult, AudioJob]:
        """Make sure a finished job's WAV is on disk (a verified copy is reused, never re-fetched) and describe it."""
        jobs, caller = await _jobs_for(ctx)
        job = await _call(jobs.download(request_id, filename=filename, caller=caller))
        return await with_inline_audio(tool_result(job), job) if include_audio else tool_result(job)

    return [
        _tool(generate_audio, "Generate audio", idempotent=False),
        _tool(check_status, "Check an audio job", idempotent=True),
        _tool(download_audio, "Download generated audio", idempotent=True),
    ]


def _tool(fn: Callable[..., Awaitable[CallToolResult]], title: str, *, idempotent: bool) -> Tool:
    """Register a tool with honest hints and schemas trimmed to what a model needs (it pays for every token)."""
    hints = ToolAnnotations(
        read_only_hint=False, destructive_hint=False, idempotent_hint=idempotent, open_world_hint=True
    )
    tool = Tool.from_function(
        fn, title=title, description=inspect.cleandoc(fn.__doc__ or ""), annotations=hints, structured_output=True
    )
    tool.parameters = compact_schema(tool.parameters)
    tool.fn_metadata.output_schema = compact_schema(tool.fn_metadata.output_schema or {}, for_output=True)
    return tool


def _add_resources(server: MCPServer[AppState], live: _Live) -> None:
    @server.resource(
        "audio://{request_id}", name="audio", title="Generated audio", mime_type="audio/wav", description="A WAV file."
    )
    async def audio(request_id: str, ctx: Context[AppState]) -> bytes:
        try:
            jobs, caller = await _jobs_for(ctx)
            return await jobs.read_audio(request_id, caller=caller)
        except (UnknownJobError, InvalidArgumentError) as exc:
            raise ResourceNotFoundError(exc.message) from exc
        except MmaudioError as exc:
            raise ResourceError(exc.message) from exc

    @server.resource(
        "mmaudio://jobs",
        name="jobs",
        title="Recent audio jobs",
        mime_type="application/json",
        description="The 20 newest jobs made with the server's key, including any whose submit got no answer.",
    )
    async def recent_jobs() -> str:
        records = await live.jobs.recent(20)
        return json.dumps([job_listing(record) for record in records], indent=1)

    @server.resource(
        "mmaudio://jobs/unfinished",
        name="unfinished-jobs",
        title="Unfinished audio jobs",
        mime_type="application/json",
        description="Jobs still running or interrupted (e.g. by a restart); resume one with check_status.",
    )
    async def unfinished_jobs() -> str:
        records = await live.jobs.unfinished()
        return json.dumps([job_listing(record) for record in records], indent=1)


def _add_routes(server: MCPServer[AppState], live: _Live) -> None:
    """HTTP-only routes: a health probe and the webhook receiver (both outside MCP auth by design)."""

    @server.custom_route("/healthz", methods=["GET"])
    async def healthz(_: Request) -> Response:
        if live.state is None:
            return JSONResponse({"status": "starting"}, status_code=503)
        try:
            await live.jobs.recent(1)  # opens the job store if nothing has yet: ready means usable
        except Exception:  # the probe's whole point is to report any failure, not to raise it
            logger.exception("health check: the job store is not usable")
            return JSONResponse({"status": "unavailable"}, status_code=503)
        return JSONResponse({"status": "ok"})

    @server.custom_route("/webhooks/{token}", methods=["POST"])
    async def webhook(request: Request) -> Response:
        # The unguessable token is the only credential; the body is ignored (Pixazo's callbacks are unsigned).
        known = live.state is not None and await live.jobs.on_webhook(request.path_params["token"])
        return Response(status_code=202 if known else 404)


async def _jobs_for(ctx: Context[AppState]) -> tuple[JobService, Caller]:
    """The job service, and who is calling: a client may bring its own Pixazo key in the CLIENT_KEY_HEADER
    header (HTTP transports only); its jobs are then visible to that key alone."""
    jobs = ctx.request_context.lifespan_context.jobs
    headers = ctx.headers or {}
    return jobs, await jobs.caller(headers.get(CLIENT_KEY_HEADER))


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


__all__ = ["AppState", "build_server"]
