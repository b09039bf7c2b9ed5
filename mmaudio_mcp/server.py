"""The MCP face of the job service: three thin tools, the audio resources and the prompts (errors: wire_errors)."""

from __future__ import annotations

import contextlib
import inspect
import json
import logging
import re
import warnings
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path, PurePath
from typing import TYPE_CHECKING, Annotated, Any, Final
from urllib.parse import urlsplit
from urllib.request import url2pathname
from weakref import WeakKeyDictionary

import anyio
from mcp import MCPDeprecationWarning, MCPError
from mcp.server import MCPServer
from mcp.server.apps import Apps, ResourceCsp
from mcp.server.context import ServerRequestContext  # noqa: TC002 (handler signatures)
from mcp.server.mcpserver import Context  # noqa: TC002 (the SDK reads tool annotations at runtime)
from mcp.server.mcpserver.exceptions import ResourceError
from mcp.server.mcpserver.resolve import ListRoots, Resolve
from mcp.server.mcpserver.tools import Tool
from mcp.server.request_state import RequestStateSecurity
from mcp.server.session import ServerSession  # noqa: TC002
from mcp.types import (
    CallToolResult,
    EmptyResult,
    GetPromptResult,
    InputRequiredResult,
    ListRootsResult,
    SetLevelRequestParams,
    ToolAnnotations,
)
from pydantic import Field, ValidationError
from starlette.requests import Request  # noqa: TC002 (route signatures are read at runtime)
from starlette.responses import JSONResponse, Response

from mmaudio_mcp import __version__, prompts
from mmaudio_mcp.errors import InvalidArgumentError
from mmaudio_mcp.files import variant_path
from mmaudio_mcp.jobs import Caller, JobService, Limits, open_job_service
from mmaudio_mcp.models import (
    AudioJob,
    CfgStrength,
    Channels,
    Duration,
    FadeMs,
    FileName,
    Folder,
    Format,
    GenerationParams,
    Loop,
    MaskAwayClip,
    NegativePrompt,
    Normalize,
    NumSteps,
    Overwrite,
    Prompt,
    RequestId,
    SampleRate,
    TargetLufs,
    TrimSilence,
    WaitSeconds,
    is_valid_request_id,
)
from mmaudio_mcp.placement import Destination, resolve_destination
from mmaudio_mcp.player import CHUNK_CAP, PLAYER_URI, player_html, read_chunk
from mmaudio_mcp.processing_options import ProcessOptions
from mmaudio_mcp.results import (
    MIME_TYPES,
    PREVIEW_NAME,
    audio_uri,
    compact_schema,
    for_protocol,
    job_listing,
    make_preview,
    preview_size,
    preview_uri,
    tool_result,
    with_inline_audio,
    with_player,
)
from mmaudio_mcp.tasks import MODERN, MODERN_PROTOCOL_VERSIONS, TaskRunner, TasksExtension, listen_guard, task_request
from mmaudio_mcp.wire_errors import (
    NotFoundError,
    prompt_error,
    prompt_errors,
    resource_errors,
    tool_argument_error,
    tool_errors,
)

if TYPE_CHECKING:
    from collections.abc import AsyncGenerator, Awaitable, Callable, Iterable, Mapping, Sequence

    import httpx2
    from mcp.server.lowlevel.helper_types import ReadResourceContents
    from mcp.types import CallToolRequestParams
    from pydantic import AnyUrl

    from mmaudio_mcp.ledger import TaskRow
    from mmaudio_mcp.schedule import PollPolicy
    from mmaudio_mcp.settings import Settings

logger = logging.getLogger(__name__)

CLIENT_KEY_HEADER: Final = "x-pixazo-api-key"
"""HTTP header through which a client brings its own Pixazo key (used instead of the server's, for its jobs only)."""
INSTRUCTIONS: Final = (
    "Generate sound effects, ambience and short music clips from text with MMAudio v2. "
    "generate_audio waits for the result when it can; otherwise call check_status with the request_id it returns. "
    "Every job is kept by request_id, so nothing is lost if a call times out."
)


@dataclass
class AppState:
    """What the lifespan owns for the server's life."""

    jobs: JobService
    tasks: TaskRunner | None = None


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
    limits: Limits | None = None,
) -> MCPServer[AppState]:
    """Assemble the server; nothing touches the network or disk until the lifespan starts."""

    @asynccontextmanager
    async def lifespan(_: MCPServer[AppState]) -> AsyncGenerator[AppState]:
        if live.state is not None:  # SSE enters the lifespan per connection: share the app-wide service
            yield live.state
            return
        async with (
            open_job_service(settings, http_transport=http_transport, policy=policy, limits=limits) as jobs,
            anyio.create_task_group() as workers,
        ):
            ledger = jobs.ledger
            runner = TaskRunner(jobs, ledger, _task_result(previews), workers) if ledger is not None else None
            live.state = AppState(jobs=jobs, tasks=runner)
            try:
                yield live.state
            finally:
                live.state = None
                workers.cancel_scope.cancel()  # task workers resume on the next tasks/get after a restart

    live = _Live()

    levels: WeakKeyDictionary[Any, str] = WeakKeyDictionary()  # each session's logging/setLevel
    previews = settings.state_dir / "previews"  # not among the user's files
    server = _Server(
        "mmaudio-mcp",
        version=__version__,
        instructions=INSTRUCTIONS,
        lifespan=lifespan,
        log_level="WARNING",
        tools=_tools(settings.wait_seconds, levels, previews, settings.allowed_dirs),
        extensions=[_player_app(), TasksExtension(lambda: live.state.tasks if live.state else None, _caller, _as_task)],
        middleware=[listen_guard],
        request_state_security=_request_state_security(settings),
    )
    _add_resources(server, live, previews)
    _add_routes(server, live)
    _add_prompts(server)
    _add_logging(server, levels)
    return server


def _player_app() -> Apps:
    """The MCP Apps view the three tools link to (hosts without MCP Apps just show the text result)."""
    apps = Apps()
    apps.add_html_resource(
        PLAYER_URI,
        player_html(),
        name="player",
        title="Audio player",
        description="Plays a job's audio with its waveform.",
        csp=ResourceCsp(),  # the spec's default: inline code only, media from data: URLs
        prefers_border=True,
    )
    return apps


def _add_prompts(server: MCPServer[AppState]) -> None:
    server.prompt(name="sound_effect", title="Sound effect", description="Write a good MMAudio sound-effect request.")(
        prompts.sound_effect
    )
    server.prompt(name="ambience", title="Ambience", description="Write a good MMAudio ambience request.")(
        prompts.ambience
    )


def _request_state_security(settings: Settings) -> RequestStateSecurity | None:
    """Replicas share the key that seals request state (MMAUDIO_REQUEST_STATE_KEY), so a client's second round
    trip may land on any of them; otherwise each process has its own (the SDK's default)."""
    if settings.request_state_key is None:
        if settings.database_url is not None:
            logger.warning(
                "MMAUDIO_REQUEST_STATE_KEY is not set: a 2026-07-28 client's second round trip (its roots, for "
                "folder) fails when it reaches another replica; set the same key on every replica"
            )
        return None
    return RequestStateSecurity(keys=[settings.request_state_key.get_secret_value()])


class _Server(MCPServer[AppState]):
    """The SDK's server, with prompt errors as the spec says (-32602, Invalid params) where the SDK answers an
    unknown prompt or a missing argument with code 0 (2025-11-25 and older) or -32603 (2026-07-28)."""

    async def get_prompt(
        self, name: str, arguments: dict[str, Any] | None = None, context: Context[AppState, Any] | None = None
    ) -> GetPromptResult | InputRequiredResult:
        known = {prompt.name: prompt for prompt in await self.list_prompts()}
        if name not in known:
            prompt_error(f"Unknown prompt {name!r}: the prompts are {', '.join(sorted(known))}.")
        required = [arg.name for arg in known[name].arguments or [] if arg.required]
        if missing := [arg for arg in required if arg not in (arguments or {})]:
            prompt_error(f"Prompt {name!r} needs the argument(s) {', '.join(missing)}.")
        with prompt_errors():
            return await super().get_prompt(name, arguments, context)

    async def read_resource(
        self, uri: AnyUrl | str, context: Context[AppState, Any] | None = None
    ) -> Iterable[ReadResourceContents] | InputRequiredResult:
        """An unknown URI is "not found" in the code of the client's protocol version (the SDK: always -32602)."""
        with resource_errors(str(uri), context.protocol_version if context is not None else None):
            return await super().read_resource(uri, context)


_LOG_LEVELS: Final = ("debug", "info", "notice", "warning", "error", "critical", "alert", "emergency")


def _add_logging(server: MCPServer[AppState], levels: WeakKeyDictionary[Any, str]) -> None:
    """Declare the logging capability and honour logging/setLevel (protocol versions up to 2025-11-25; from
    2026-07-28 a client opts in per request and the SDK filters)."""

    async def set_level(ctx: ServerRequestContext[AppState], params: SetLevelRequestParams) -> EmptyResult:
        levels[_connection(ctx.session)] = params.level
        return EmptyResult()

    # The SDK has no public hook for this handler; registering it is also what declares the capability.
    server._lowlevel_server.add_request_handler("logging/setLevel", SetLevelRequestParams, set_level)  # pyright: ignore[reportPrivateUsage]


def _tools(
    default_wait: float, levels: WeakKeyDictionary[Any, str], previews: Path, allowed_dirs: Sequence[Path] = ()
) -> list[Tool]:
    """The three tools; `previews` is the folder for the compressed previews their results link to; `allowed_dirs`
    (MMAUDIO_ALLOWED_DIRS) where an absolute `folder` may point when the client offers no roots."""

    async def generate_audio(
        ctx: Context[AppState],
        prompt: Prompt,
        negative_prompt: NegativePrompt = "",
        duration: Duration = 8,
        num_steps: NumSteps = 25,
        cfg_strength: CfgStrength = 4.5,
        mask_away_clip: MaskAwayClip = False,
        wait_seconds: WaitSeconds = default_wait,
        folder: Folder = None,
        workspace: Annotated[ListRootsResult | None, Resolve(_ask_roots)] = None,
    ) -> Annotated[CallToolResult, AudioJob]:
        """Generate a sound effect, ambience or music clip from text (MMAudio v2) as a WAV file.

        Each call is a new paid job (10-90 s, no seed); repeating a call whose answer never came joins its job. If
        not done within wait_seconds, call check_status with the returned request_id; never generate again for it.
        """
        with tool_errors("Invalid request"):
            params = GenerationParams(
                prompt=prompt,
                negative_prompt=negative_prompt,
                duration=duration,
                num_steps=num_steps,
                cfg_strength=cfg_strength,
                mask_away_clip=mask_away_clip,
            )
            jobs, caller = await _jobs_for(ctx)
            destination = await _destination(ctx, jobs, folder, workspace, allowed_dirs)
            if (pending := task_request()) is not None and (runner := ctx.request_context.lifespan_context.tasks):
                async with jobs.attempt(params, caller, folder) as attempt:  # the task handle is this call's answer
                    job = await jobs.generate(params, wait_seconds=0, caller=caller, attempt=attempt)
                    pending.task = await runner.create("generate_audio", job, caller, _place(destination))
                    pending.caller = caller
                    return tool_result(job)
            report = _progress(ctx, levels)
            # A call whose predecessor never got its result (cancelled, stream closed) joins that job: no new payment.
            async with jobs.attempt(params, caller, folder) as attempt:
                job = await jobs.generate(
                    params, wait_seconds=wait_seconds, progress=report, caller=caller, attempt=attempt
                )
                if destination is not None and job.file is not None:
                    placed = await jobs.download(job.request_id, caller=caller, destination=destination)
                    job = placed.model_copy(update={"reattached": job.reattached})
                preview = await preview_size(job.file, job.request_id, previews)
                return await with_player(tool_result(job, preview_bytes=preview), job)

    async def check_status(
        ctx: Context[AppState],
        request_id: RequestId,
        wait_seconds: Annotated[WaitSeconds, Field(description="Seconds to wait for completion.")] = 0,
    ) -> Annotated[CallToolResult, AudioJob]:
        """Report a generate_audio job; when it is complete, its WAV is saved (finished jobs are answered locally)."""
        with tool_errors():
            jobs, caller = await _jobs_for(ctx)
            if (pending := task_request()) is not None and (runner := ctx.request_context.lifespan_context.tasks):
                job = await jobs.check(request_id, caller=caller)
                if not job.status.is_terminal or job.file is None:  # a finished job is answered at once, as always
                    pending.task = await runner.create("check_status", job, caller, {})
                    pending.caller = caller
                    return tool_result(job)
            report = _progress(ctx, levels)
            job = await jobs.check(request_id, wait_seconds=wait_seconds, progress=report, caller=caller)
            preview = await preview_size(job.file, job.request_id, previews)
            return await with_player(tool_result(job, preview_bytes=preview), job)

    async def download_audio(
        ctx: Context[AppState],
        request_id: RequestId,
        filename: FileName = None,
        folder: Folder = None,
        overwrite: Overwrite = False,
        format: Format = "wav",
        sample_rate: SampleRate = None,
        channels: Channels = None,
        normalize: Normalize = False,
        target_lufs: TargetLufs = -16.0,
        trim_silence: TrimSilence = False,
        fade_ms: FadeMs = 0,
        loop: Loop = False,
        include_audio: Annotated[bool, Field(description="Also inline the audio if under ~600 KB.")] = False,
        workspace: Annotated[ListRootsResult | None, Resolve(_ask_roots)] = None,
    ) -> Annotated[CallToolResult, AudioJob]:
        """Save a finished job's audio into the project, converted, normalized, trimmed, faded or looped as asked.

        The delivered WAV is kept; each variant is made once."""
        with tool_errors("Invalid processing options"):
            options = ProcessOptions(
                format=format,
                sample_rate=sample_rate,
                channels=channels,
                normalize=normalize,
                target_lufs=target_lufs,
                trim_silence=trim_silence,
                fade_ms=fade_ms,
                loop=loop,
            )
        with tool_errors():
            jobs, caller = await _jobs_for(ctx)
            destination = await _destination(ctx, jobs, folder, workspace, allowed_dirs)
            job = await jobs.download(
                request_id,
                filename=filename,
                caller=caller,
                options=options,
                destination=destination,
                overwrite=overwrite,
            )
            key = None if options.is_identity else options.variant_key()
            uri = audio_uri(job.request_id, key, options.format)
            delivered = (await jobs.check(request_id, caller=caller)).file  # the WAV the player plays
            preview = await preview_size(delivered, job.request_id, previews)
            result = tool_result(job, file_uri=uri, preview_bytes=preview)
            if include_audio:
                result = await with_inline_audio(result, job)
            return await with_player(result, job, delivered)

    player = {"resourceUri": PLAYER_URI}
    return [
        _tool(generate_audio, "Generate audio", idempotent=False, ui=player),
        _tool(check_status, "Check an audio job", idempotent=True, ui=player),
        # destructive: with overwrite=true it replaces a file in the user's project.
        _tool(download_audio, "Save generated audio", idempotent=True, destructive=True, ui=player),
    ]


def _tool(
    fn: Callable[..., Awaitable[CallToolResult]],
    title: str,
    *,
    idempotent: bool,
    destructive: bool = False,
    ui: dict[str, Any] | None = None,
) -> Tool:
    """Register a tool with honest hints and schemas trimmed to what a model needs (it pays for every token);
    `ui` links it to an MCP Apps view (`_meta.ui`)."""
    hints = ToolAnnotations(
        read_only_hint=False, destructive_hint=destructive, idempotent_hint=idempotent, open_world_hint=True
    )
    tool = _Tool.from_function(
        fn,
        title=title,
        description=inspect.cleandoc(fn.__doc__ or ""),
        annotations=hints,
        structured_output=True,
        meta={"ui": ui} if ui else None,
    )
    tool.parameters = compact_schema(tool.parameters)
    tool.fn_metadata.output_schema = compact_schema(tool.fn_metadata.output_schema or {}, for_output=True)
    return tool


class _Tool(Tool):
    """A tool whose argument errors read as sentences ("duration must be between 2 and 30 seconds (got 99).")
    instead of the SDK's validator dump (the SDK validates before the function runs, so this is the seam), and
    whose results take the shape the client's protocol version can parse."""

    async def run(self, arguments: dict[str, Any], context: Context[Any, Any], convert_result: bool = False) -> Any:
        try:
            self.fn_metadata.validate_arguments(arguments)
        except ValidationError as exc:
            raise tool_argument_error(exc) from exc
        result = await super().run(arguments, context, convert_result)
        return for_protocol(result, context.protocol_version) if isinstance(result, CallToolResult) else result


_VARIANT_KEY: Final = re.compile(r"[a-z0-9]+(?:-[a-z0-9]+)*")


def _add_resources(server: MCPServer[AppState], live: _Live, previews: Path) -> None:
    @server.resource(
        "audio://{request_id}",
        name="audio",
        title="Generated audio",
        mime_type="audio/wav",
        description="A job's delivered WAV, whole (often over 1 MiB: the player reads it in chunks; links point to "
        "the preview instead when it is that large).",
    )
    async def audio(request_id: str, ctx: Context[AppState]) -> bytes:
        with resource_errors(audio_uri(request_id), ctx.protocol_version):
            jobs, caller = await _jobs_for(ctx)
            return await jobs.read_audio(request_id, caller=caller)

    @server.resource(
        f"audio://{{request_id}}/{PREVIEW_NAME}",
        name="audio-preview",
        title="Preview of generated audio",
        mime_type="audio/ogg",
        description="A compressed preview (mono 22.05 kHz Ogg Vorbis) of a job's WAV that fits in one message.",
    )
    async def audio_preview(request_id: str, ctx: Context[AppState]) -> bytes:
        with resource_errors(preview_uri(request_id), ctx.protocol_version):
            jobs, caller = await _jobs_for(ctx)
            delivered = (await jobs.download(request_id, caller=caller)).file
            assert delivered is not None
            return await anyio.Path(await make_preview(delivered, request_id, previews)).read_bytes()

    for fmt, mime in MIME_TYPES.items():
        _add_variant_resource(server, fmt, mime)

    @server.resource(
        "audio://{request_id}/chunks/{index}",
        name="audio-chunk",
        title="Part of generated audio",
        mime_type="application/octet-stream",
        description=f"Bytes index*{CHUNK_CAP} to (index+1)*{CHUNK_CAP} of audio://{{request_id}} (for the player).",
    )
    async def audio_chunk(request_id: str, index: str, ctx: Context[AppState]) -> bytes:
        with resource_errors(f"audio://{request_id}/chunks/{index}", ctx.protocol_version):
            if not index.isdigit() or len(index) > 6:
                raise NotFoundError(f"No chunk {index!r}: chunks are numbered 0, 1, 2...")
            jobs, caller = await _jobs_for(ctx)
            job = await jobs.download(request_id, caller=caller)
            assert job.file is not None
            path, offset = Path(job.file.path), int(index) * CHUNK_CAP
            data, size = await anyio.to_thread.run_sync(read_chunk, path, offset, CHUNK_CAP)
            if not data and size:
                raise NotFoundError(f"No chunk {index}: the file has {-(-size // CHUNK_CAP)} chunk(s).")
            return data

    @server.resource(
        "mmaudio://jobs",
        name="jobs",
        title="Recent audio jobs",
        mime_type="application/json",
        description="The 20 newest jobs made with the server's key, including any whose submit got no answer.",
    )
    async def recent_jobs() -> str:
        with resource_errors("mmaudio://jobs", None):
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
        with resource_errors("mmaudio://jobs/unfinished", None):
            records = await live.jobs.unfinished()
            return json.dumps([job_listing(record) for record in records], indent=1)


def _add_variant_resource(server: MCPServer[AppState], fmt: str, mime: str) -> None:
    """audio://{request_id}/{variant}.{fmt}: a variant download_audio made (its own URI, its own mime type)."""

    @server.resource(
        f"audio://{{request_id}}/{{variant}}.{fmt}",
        name=f"audio-variant-{fmt}",
        title=f"Processed audio ({fmt})",
        mime_type=mime,
        description=f"A {fmt} variant of a job's audio made by download_audio; the key is in its result's link.",
    )
    async def variant(request_id: str, variant: str, ctx: Context[AppState]) -> bytes:
        uri = audio_uri(request_id, variant, fmt)
        with resource_errors(uri, ctx.protocol_version):
            if not _VARIANT_KEY.fullmatch(variant) or not variant.startswith(fmt):
                raise NotFoundError(f"No variant {variant!r}: a variant key starts with its format, e.g. ogg-loop.")
            jobs, caller = await _jobs_for(ctx)
            delivered = (await jobs.download(request_id, caller=caller)).file
            assert delivered is not None
            path = anyio.Path(variant_path(Path(delivered.path), variant, fmt))
            if not await path.is_file():
                raise NotFoundError(f"No variant {variant} of {request_id}: make it with download_audio first.")
            return await path.read_bytes()


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
        # The unguessable token is the only credential (Pixazo's callbacks are unsigned): the body's request_id is
        # only a hint, used to complete a row whose submit answer was lost, and only once Pixazo confirms it.
        hint = await _request_id_hint(request)
        known = live.state is not None and await live.jobs.on_webhook(request.path_params["token"], hint)
        return Response(status_code=202 if known else 404)


async def _request_id_hint(request: Request) -> str | None:
    """The request_id a callback's JSON body names, if it is well formed (bodies over 64 KiB are not read)."""
    if int(request.headers.get("content-length") or 0) > 65536:
        return None
    try:
        body: object = json.loads(await request.body())
    except ValueError:
        return None
    match body:
        case {"request_id": str() as value} if is_valid_request_id(value):
            return value
        case _:
            return None


def _as_task(params: CallToolRequestParams) -> bool:
    """The calls a tasks-capable client gets a task for: generate_audio, and check_status when it would wait."""
    arguments: dict[str, Any] = params.arguments or {}
    wait: Any = arguments.get("wait_seconds", 0)
    waits = isinstance(wait, int | float) and wait > 0
    return params.name == "generate_audio" or (params.name == "check_status" and waits)


def _place(destination: Destination | None) -> dict[str, Any]:
    """A destination as a task stores it (to save the audio there when the job completes, even after a restart)."""
    if destination is None:
        return {}
    return {"folder": str(destination.folder), "root": str(destination.root)}


def _task_result(previews: Path) -> Callable[[JobService, TaskRow, Caller], Awaitable[CallToolResult]]:
    """How a task's final result is made: exactly what the blocking call returns once its job has finished."""

    async def finish(jobs: JobService, row: TaskRow, caller: Caller) -> CallToolResult:
        job = await jobs.check(row.request_id, caller=caller)
        extra = json.loads(row.extra)
        if row.tool == "generate_audio" and extra.get("folder") and job.file is not None:
            destination = Destination(Path(extra["folder"]), Path(extra["root"]))
            job = await jobs.download(job.request_id, caller=caller, destination=destination)
        preview = await preview_size(job.file, job.request_id, previews)
        result = await with_player(tool_result(job, preview_bytes=preview), job)
        return for_protocol(result, MODERN)

    return finish


async def _caller(ctx: ServerRequestContext[Any, Any]) -> Caller:
    """Who sends a tasks/* request: the same per-key binding as the tools (CLIENT_KEY_HEADER over HTTP)."""
    state: AppState = ctx.lifespan_context
    headers: Mapping[str, str] = getattr(ctx.request, "headers", None) or {}
    return await state.jobs.caller(headers.get(CLIENT_KEY_HEADER))


def _ask_roots(ctx: Context[AppState], folder: str | None = None) -> ListRoots | ListRootsResult:
    """On 2026-07-28 a server cannot send a request mid-call: when a folder is given and the request declares the
    roots capability, the SDK's multi-round-trip resolver asks for them (the call is answered with an input request
    for roots/list and retried with the answer). Older versions are asked mid-call by `_client_roots`."""
    capabilities = ctx.client_capabilities
    if folder is None or ctx.protocol_version not in MODERN_PROTOCOL_VERSIONS:
        return ListRootsResult(roots=[])
    if capabilities is None or capabilities.roots is None:
        return ListRootsResult(roots=[])
    return ListRoots()


async def _destination(
    ctx: Context[AppState],
    jobs: JobService,
    folder: str | None,
    workspace: ListRootsResult | None = None,
    allowed_dirs: Sequence[Path] = (),
) -> Destination | None:
    """Where `folder` points: inside the client's workspace roots (asked only when a folder is given); without
    roots, an absolute folder may lie inside MMAUDIO_ALLOWED_DIRS; anything else inside the output folder. Symlinks
    are resolved before every check."""
    if folder is None:
        return None
    if ctx.protocol_version in MODERN_PROTOCOL_VERSIONS:
        roots = _file_roots([str(root.uri) for root in workspace.roots] if workspace else [])
    else:
        roots = await _client_roots(ctx)
    if roots:
        return resolve_destination(folder, roots, jobs.output_dir)
    if allowed_dirs and (folder.startswith("~") or PurePath(folder).is_absolute()):
        with contextlib.suppress(InvalidArgumentError):
            return resolve_destination(folder, allowed_dirs, jobs.output_dir)
    try:
        return resolve_destination(folder, [], jobs.output_dir)
    except InvalidArgumentError as exc:
        if not allowed_dirs:
            raise
        where = ", ".join(str(path) for path in allowed_dirs)
        raise InvalidArgumentError(
            f"The folder {folder[:200]!r} is outside the output folder ({jobs.output_dir}) and the allowed folders "
            f"(MMAUDIO_ALLOWED_DIRS: {where}); use a folder inside one of them."
        ) from exc


def _file_roots(uris: list[str]) -> list[Path]:
    return [Path(url2pathname(urlsplit(uri).path)) for uri in uris if uri.startswith("file:")]


async def _client_roots(ctx: Context[AppState]) -> list[Path]:
    """The client's workspace folders (MCP roots), or none if it has none or cannot be asked (2026-07-28)."""
    capabilities = ctx.client_capabilities
    if capabilities is None or capabilities.roots is None:
        return []  # asking a client that never offered roots could stall the call until the timeout
    with warnings.catch_warnings():
        # Roots are deprecated in protocol 2026-07-28 but are how today's IDE hosts name the workspace.
        warnings.simplefilter("ignore", MCPDeprecationWarning)
        try:
            with anyio.fail_after(10):
                listed = await ctx.session.list_roots()  # pyright: ignore[reportDeprecated] (see above)
        except (MCPError, TimeoutError):
            return []
    return _file_roots([str(root.uri) for root in listed.roots])


async def _jobs_for(ctx: Context[AppState]) -> tuple[JobService, Caller]:
    """The job service, and who is calling: a client may bring its own Pixazo key in the CLIENT_KEY_HEADER
    header (HTTP transports only); its jobs are then visible to that key alone."""
    jobs = ctx.request_context.lifespan_context.jobs
    headers = ctx.headers or {}
    return jobs, await jobs.caller(headers.get(CLIENT_KEY_HEADER))


def _progress(
    ctx: Context[AppState], levels: WeakKeyDictionary[Any, str]
) -> Callable[[float, float | None, str], Awaitable[None]]:
    """Report progress, and tell the client's log when the job's status changes (its message starts with it)."""
    last_status: list[str] = []

    async def report(progress: float, total: float | None, message: str) -> None:
        await ctx.report_progress(progress, total, message)
        status = message.split(",", 1)[0].split(" ", 1)[0]  # the message starts with the status word
        if last_status and status != last_status[-1]:
            await _log_to_client(ctx, levels, f"Job status: {status}")
        last_status.append(status)

    return report


def _connection(session: ServerSession) -> object:
    """The client connection a request came on (sessions are per request in this SDK): a level set by one request
    holds for the later ones. The SDK has no public accessor for it."""
    return session._connection  # pyright: ignore[reportPrivateUsage]


async def _log_to_client(ctx: Context[AppState], levels: WeakKeyDictionary[Any, str], message: str) -> None:
    """An info message for the client's log, unless it asked (logging/setLevel) for a higher level only. From
    2026-07-28 the SDK sends it only to a request that opted in (`_meta` log level); progress messages carry the
    same news for everyone."""
    wanted = levels.get(_connection(ctx.request_context.session), "info")
    if _LOG_LEVELS.index("info") < _LOG_LEVELS.index(wanted):
        return
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", MCPDeprecationWarning)
        try:
            await ctx.info(message)  # pyright: ignore[reportDeprecated] (see above)
        except MCPError:
            logger.debug("the client could not take a log message", exc_info=True)


__all__ = ["AppState", "build_server"]
