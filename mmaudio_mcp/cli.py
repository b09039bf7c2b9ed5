"""Command line: `serve` (the default, what MCP hosts launch), `generate` from a terminal, and the `sandbox` gateway.

Logging goes to stderr: under stdio, stdout carries nothing but protocol messages.
"""

from __future__ import annotations

import argparse
import logging
import sys
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mmaudio_mcp import __version__

if TYPE_CHECKING:
    from collections.abc import AsyncGenerator, Sequence

    from mmaudio_mcp.models import AudioJob, GenerationParams
    from mmaudio_mcp.schedule import PollPolicy
    from mmaudio_mcp.settings import Settings

logger = logging.getLogger("mmaudio_mcp")

COMMANDS = ("serve", "generate", "sandbox")
EXIT_ERROR = 1
EXIT_NOT_FINISHED = 3


def main(argv: Sequence[str] | None = None) -> None:
    """Parse the command line and run the chosen command (`serve` when none is named)."""
    words = list(sys.argv[1:] if argv is None else argv)
    if not words or words[0] not in {*COMMANDS, "-h", "--help", "--version"}:
        words.insert(0, "serve")
    args = _parser().parse_args(words)
    logging.basicConfig(
        level=args.log_level.upper(), stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    command = args.command
    try:
        if command == "sandbox":
            _run_sandbox(args.host, args.port, args.speed)
        elif command == "generate":
            sys.exit(_run_generate(args))
        else:
            _run_serve(args)
    except KeyboardInterrupt:
        sys.exit(130)
    except Exception as exc:
        from mmaudio_mcp.errors import MmaudioError

        if not isinstance(exc, MmaudioError):
            raise
        print(f"error: {exc.message}", file=sys.stderr)
        sys.exit(EXIT_ERROR)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mmaudio-mcp", description="MCP server for MMAudio v2 text-to-audio on the Pixazo gateway."
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="{serve,generate,sandbox}")

    serve = commands.add_parser("serve", help="serve MCP (the default when no command is given)")
    serve.add_argument(
        "--transport", choices=["stdio", "sse", "streamable-http"], help="how hosts connect (MMAUDIO_TRANSPORT; stdio)"
    )
    serve.add_argument("--host", help="address for the HTTP transports (MMAUDIO_HOST; 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port for the HTTP transports (MMAUDIO_PORT; 8000)")
    serve.add_argument(
        "--allow-unauthenticated",
        action="store_true",
        help="serve HTTP on a non-loopback address without MMAUDIO_HTTP_TOKEN (only behind an authenticating proxy)",
    )
    serve.add_argument("--wait-seconds", type=float, help="default wait inside one tool call (MMAUDIO_WAIT_SECONDS)")
    _add_common(serve)

    generate = commands.add_parser("generate", help="generate one sound from the terminal")
    generate.add_argument("prompt", help="what the sound is, e.g. 'rain on a tin roof'")
    generate.add_argument("--negative-prompt", default="")
    generate.add_argument("--duration", type=int, default=8, help="seconds, 2-30 (default 8)")
    generate.add_argument("--num-steps", type=int, default=25, help="10-100 (default 25)")
    generate.add_argument("--cfg-strength", type=float, default=4.5, help="1.0-10.0 (default 4.5)")
    generate.add_argument("--mask-away-clip", action="store_true")
    generate.add_argument("--wait-seconds", type=float, default=300.0, help="how long to wait (default 300)")
    _add_common(generate)

    sandbox = commands.add_parser("sandbox", help="run the offline Pixazo sandbox gateway")
    sandbox.add_argument("--host", default="127.0.0.1")
    sandbox.add_argument("--port", type=int, default=8787)
    sandbox.add_argument("--speed", type=float, default=1.0, help="time factor for jobs (0 = instant)")
    for command in (serve, generate, sandbox):
        command.add_argument("--log-level", default="warning", choices=["debug", "info", "warning", "error"])
    return parser


def _add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--sandbox", action="store_true", help="use a built-in fake Pixazo gateway (no key needed)")
    parser.add_argument("--sandbox-speed", type=float, default=0.25, help="time factor for sandbox jobs")
    parser.add_argument("--output-dir", type=Path, help="where WAV files go (MMAUDIO_OUTPUT_DIR)")
    parser.add_argument("--state-dir", type=Path, help="where the job store lives (MMAUDIO_STATE_DIR)")
    parser.add_argument("--gateway-url", help="Pixazo gateway (PIXAZO_GATEWAY_URL)")


def _settings(args: argparse.Namespace, **extra: Any) -> Settings:
    from mmaudio_mcp.settings import load_settings

    return load_settings(output_dir=args.output_dir, state_dir=args.state_dir, gateway_url=args.gateway_url, **extra)


def _run_serve(args: argparse.Namespace) -> None:
    import anyio

    anyio.run(_serve, args)


async def _serve(args: argparse.Namespace) -> None:
    from mmaudio_mcp.server import build_server
    from mmaudio_mcp.transport import Exposure, Transport, serve

    settings = _settings(args, wait_seconds=args.wait_seconds, transport=args.transport, host=args.host, port=args.port)
    exposure = Exposure(
        host=settings.host,
        port=settings.port,
        token=settings.http_token.get_secret_value() if settings.http_token else None,
        allow_unauthenticated=args.allow_unauthenticated,
        public_url=settings.public_url,
        allowed_hosts=tuple(settings.allowed_hosts),
    )
    transport = Transport(settings.transport)
    if transport is not Transport.STDIO:
        exposure.check()  # before anything starts, so the refusal is the only thing the user sees
    async with _gateway(args, settings) as (settings, policy):
        await serve(build_server(settings, policy=policy), transport, exposure)


@asynccontextmanager
async def _gateway(args: argparse.Namespace, settings: Settings) -> AsyncGenerator[tuple[Settings, PollPolicy | None]]:
    """Yield the settings and poll policy to use: as given, or for an in-process sandbox on a free loopback port."""
    if not args.sandbox:
        yield settings, None
        return
    from mmaudio_mcp.sandbox import SANDBOX_API_KEY, SandboxConfig, create_sandbox
    from mmaudio_mcp.schedule import PollPolicy
    from mmaudio_mcp.transport import serve_on_loopback

    async with serve_on_loopback(create_sandbox(SandboxConfig(speed=args.sandbox_speed)).app) as url:
        logger.warning("sandbox mode: fake Pixazo gateway at %s; no real audio is generated", url)
        sandboxed = settings.model_copy(
            update={
                "gateway_url": url,
                "api_key": _secret(SANDBOX_API_KEY),
                "state_dir": settings.state_dir / "sandbox",
                "output_dir": settings.output_dir / "sandbox",
            }
        )
        yield sandboxed, PollPolicy().scaled(max(args.sandbox_speed, 0.01))


def _secret(value: str) -> Any:
    from pydantic import SecretStr

    return SecretStr(value)


def _run_sandbox(host: str, port: int, speed: float) -> None:
    import uvicorn

    from mmaudio_mcp.sandbox import SANDBOX_API_KEY, SandboxConfig, create_sandbox

    print(
        f"Pixazo sandbox on http://{host}:{port} (key: {SANDBOX_API_KEY}); press Ctrl+C to stop.",
        file=sys.stderr,
    )
    uvicorn.run(create_sandbox(SandboxConfig(speed=speed)).app, host=host, port=port, log_level="warning")


def _run_generate(args: argparse.Namespace) -> int:
    import anyio
    from pydantic import ValidationError

    from mmaudio_mcp.errors import MmaudioError
    from mmaudio_mcp.models import GenerationParams

    try:
        params = GenerationParams(
            prompt=args.prompt,
            negative_prompt=args.negative_prompt,
            duration=args.duration,
            num_steps=args.num_steps,
            cfg_strength=args.cfg_strength,
            mask_away_clip=args.mask_away_clip,
        )
        job = anyio.run(_generate, args, params)
    except ValidationError as exc:
        print(f"error: {exc.errors()[0]['loc'][0]}: {exc.errors()[0]['msg']}", file=sys.stderr)
        return EXIT_ERROR
    except MmaudioError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return EXIT_ERROR
    if job.status.is_terminal and job.file is None:
        return EXIT_ERROR
    if job.file is None:
        print(f"Not finished yet: {job.next_step}", file=sys.stderr)
        print(job.request_id)
        return EXIT_NOT_FINISHED
    print(job.file.path)
    return 0


async def _generate(args: argparse.Namespace, params: GenerationParams) -> AudioJob:
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from mmaudio_mcp.jobs import open_job_service

    async with (
        _gateway(args, _settings(args)) as (settings, policy),
        open_job_service(
            api_key=settings.api_key,
            gateway_url=settings.gateway_url,
            state_dir=settings.state_dir,
            output_dir=settings.output_dir,
            policy=policy,
        ) as jobs,
    ):
        columns = (TextColumn("{task.description}"), BarColumn(), TimeElapsedColumn())
        with Progress(*columns, console=Console(stderr=True), transient=True) as bar:
            task = bar.add_task(f"Submitting '{params.prompt[:40]}'", total=None)

            async def show(progress: float, total: float | None, message: str) -> None:
                bar.update(task, completed=progress, total=total, description=message)

            job = await jobs.generate(params, wait_seconds=args.wait_seconds, progress=show)
        if job.error is not None and job.file is None:
            print(f"error: {job.error.message}", file=sys.stderr)
        return job


__all__ = ["main"]
