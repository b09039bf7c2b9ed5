"""Command line: `serve` (the default, what MCP hosts launch), the terminal commands, and the `sandbox` gateway.

Logging goes to stderr: under stdio, stdout carries nothing but protocol messages.
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, NoReturn

from mmaudio_mcp import __version__

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from mmaudio_mcp.models import GenerationParams
    from mmaudio_mcp.settings import Settings

logger = logging.getLogger("mmaudio_mcp")

COMMANDS = ("serve", "generate", "status", "jobs", "sync", "doctor", "sandbox")
EXIT_USAGE = 2
BARE_HELP: Final = """mmaudio-mcp is an MCP server: an MCP host (Claude Desktop, Claude Code, VS Code, Cursor...)
starts it and talks to it over stdin/stdout, so run by hand it would just wait. To try it from a terminal:

  mmaudio-mcp generate "rain on a tin roof" --sandbox     (no key needed; prints the path of a WAV)
  mmaudio-mcp doctor                                      (checks your set-up, prints a host config)
  mmaudio-mcp --help                                      (every command)

To serve MCP over stdio from a terminal anyway: mmaudio-mcp serve (Ctrl+D or Ctrl+C to stop)."""
EXIT_INTERRUPTED = 130


def main(argv: Sequence[str] | None = None) -> None:
    """Parse the command line and run the chosen command (`serve` when none is named).

    Exit codes: 0 done, 1 error (one line on stderr; --debug shows the traceback), 2 usage, 3 job not finished
    within the wait (its request_id is printed), 130 interrupted.
    """
    words = list(sys.argv[1:] if argv is None else argv)
    if not words and sys.stdin.isatty():  # a person, not a host: say what this is instead of waiting silently
        print(BARE_HELP, file=sys.stderr)
        sys.exit(0)
    if not words or words[0] not in {*COMMANDS, "-h", "--help", "--version"}:
        words.insert(0, "serve")
    args = _parser().parse_args(words)
    # Hosts keep the server's stderr as a log, so it gets timestamps; a person at a terminal gets plain lines.
    fmt = "%(asctime)s %(levelname)s %(name)s: %(message)s" if args.command == "serve" else "%(levelname)s: %(message)s"
    logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr, format=fmt)
    try:
        code = _dispatch(args)
        sys.stdout.flush()  # here, so a closed pipe is caught below rather than at interpreter exit
        sys.exit(code)
    except KeyboardInterrupt:
        sys.exit(EXIT_INTERRUPTED)
    except BrokenPipeError:  # `mmaudio-mcp jobs --json | head`: the reader has what it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(0)
    except Exception as exc:
        if args.debug:
            raise
        print(f"error: {_one_line(exc)}", file=sys.stderr)
        sys.exit(1)


def _dispatch(args: argparse.Namespace) -> int:
    if args.command == "sandbox":
        _run_sandbox(args.host, args.port, args.speed)
        return 0
    if args.command == "serve":
        _run_serve(args)
        return 0
    from mmaudio_mcp import terminal

    settings = _settings(args)
    if args.command == "generate":
        return terminal.generate(args, settings, _params(args))
    if args.command == "status":
        return terminal.status(args, settings)
    if args.command == "jobs":
        return terminal.jobs(args, settings)
    if args.command == "sync":
        from mmaudio_mcp import sync

        return sync.command(args, settings)
    return terminal.doctor(args, settings)


def _one_line(exc: Exception) -> str:
    """Say what went wrong in one line: our errors carry an actionable message, others their type and text."""
    from pydantic import ValidationError

    from mmaudio_mcp.errors import MmaudioError
    from mmaudio_mcp.models import explain_validation_error

    if isinstance(exc, MmaudioError):
        return exc.message
    if isinstance(exc, ValidationError):
        return as_flags(explain_validation_error(exc))
    return f"{type(exc).__name__}: {exc} (run with --debug for the traceback)"


_FLAGS: Final = {"target_lufs": "--normalize", "prompt": "the prompt"}
"""Arguments whose command-line spelling is not `--` plus the name with dashes."""


def as_flags(sentences: str) -> str:
    """Reword argument errors for the command line: "duration must be ..." becomes "--duration must be ..."."""

    def flag(match: re.Match[str]) -> str:
        name = match[2]
        return match[1] + _FLAGS.get(name, "--" + name.replace("_", "-"))

    return re.sub(r"(^|\. )([a-z][a-z_]*)(?= must| is )", flag, sentences)


class _Parser(argparse.ArgumentParser):
    """argparse, with a usage error said in one line (the usage block is one --help away)."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: {_usage_sentence(message).rstrip('.')}; see {self.prog} --help.\n")


def _usage_sentence(message: str) -> str:
    """argparse's wording turned into ours: the flag, what it takes, and what was given."""
    kinds = {"int": "a whole number", "float": "a number"}
    if match := re.fullmatch(r"argument (\S+): invalid (int|float) value: (.*)", message):
        return f"{match[1]} must be {kinds[match[2]]} (got {match[3]})."
    if match := re.fullmatch(r"argument (\S+): invalid choice: (.*) \(choose from (.*)\)", message):
        return f"{match[1]} must be one of {match[3].replace(chr(39), '')} (got {match[2]})."
    if match := re.fullmatch(r"argument (\S+): (\1 .*)", message):
        return match[2]
    return message[0].upper() + message[1:] + ("" if message.endswith(".") else ".")


def _whole(flag: str, low: int, high: int) -> Callable[[str], int]:
    """An argparse type for a whole number in [low, high], refused in one sentence otherwise."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is None or not low <= value <= high:
            raise argparse.ArgumentTypeError(f"{flag} must be a whole number between {low} and {high} (got {text!r}).")
        return value

    return parse


def _transport(text: str) -> str:
    """Check a --transport value against the names Settings knows (imported only when the flag is given)."""
    from mmaudio_mcp.settings import Transport

    if text not in tuple(Transport):
        raise argparse.ArgumentTypeError(f"--transport must be one of {', '.join(Transport)} (got {text!r}).")
    return text


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="mmaudio-mcp",
        description="MCP server for Sony AI's MMAudio v2 text-to-audio on the Pixazo gateway. "
        "With no command it serves MCP over stdio, which is what MCP hosts launch.",
        epilog="Exit codes: 0 done, 1 error, 2 usage, 3 job not finished yet (its request_id is printed), "
        "130 interrupted.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="{" + ",".join(COMMANDS) + "}")
    _add_serve(commands.add_parser("serve", help="serve MCP (the default when no command is given)"))
    _add_generate(commands.add_parser("generate", help="generate one sound and print the path of its WAV"))
    status = commands.add_parser("status", help="report a job (and save its WAV once complete)")
    status.add_argument("request_id", help="the request_id that generate printed or a tool returned")
    status.add_argument("--wait-seconds", type=float, default=0.0, help="wait up to this long for it to finish")
    _add_saving(status)
    jobs = commands.add_parser("jobs", help="list recent jobs from the local store (no network)")
    jobs.add_argument("--limit", type=_whole("--limit", 1, 1000), default=20, help="how many, 1-1000 (default 20)")
    sync = commands.add_parser(
        "sync", help="make the sounds declared in sounds.toml, paying only for what is missing or changed"
    )
    sync.add_argument("file", nargs="?", default="sounds.toml", help="the declarations (default sounds.toml)")
    sync.add_argument("--dry-run", action="store_true", help="say what would be paid for, and do nothing")
    sync.add_argument("--parallel", type=_whole("--parallel", 1, 16), default=4, help="jobs at once, 1-16 (default 4)")
    doctor = commands.add_parser("doctor", help="check key, gateway, folders and versions; print a host config")
    sandbox = commands.add_parser("sandbox", help="run the offline Pixazo sandbox gateway")
    sandbox.add_argument("--host", default="127.0.0.1")
    sandbox.add_argument("--port", type=int, default=8787)
    sandbox.add_argument("--speed", type=float, default=1.0, help="time factor for jobs (0 = instant)")
    for command in (status, jobs, sync, doctor):
        _add_common(command)
    for command in commands.choices.values():
        command.add_argument("--log-level", default="warning", choices=["debug", "info", "warning", "error"])
        command.add_argument("--debug", action="store_true", help="show tracebacks")
        if command.prog.split()[-1] in ("generate", "status", "jobs", "sync", "doctor"):
            command.add_argument("--json", action="store_true", help="print JSON for scripts")
    return parser


def _add_serve(serve: argparse.ArgumentParser) -> None:
    serve.add_argument(
        "--transport",
        type=_transport,
        help="how hosts connect: stdio (the default), sse or streamable-http (MMAUDIO_TRANSPORT)",
    )
    serve.add_argument("--host", help="address for the HTTP transports (MMAUDIO_HOST; 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port for the HTTP transports (MMAUDIO_PORT; 8000)")
    serve.add_argument(
        "--allow-unauthenticated",
        action="store_true",
        help="serve HTTP on a non-loopback address without MMAUDIO_HTTP_TOKEN (only behind an authenticating proxy)",
    )
    serve.add_argument("--wait-seconds", type=float, help="default wait inside one tool call (MMAUDIO_WAIT_SECONDS)")
    serve.add_argument(
        "--stateless",
        action="store_true",
        default=None,
        help="streamable HTTP without sessions, for replicas behind a load balancer (MMAUDIO_STATELESS; automatic "
        "with MMAUDIO_DATABASE_URL)",
    )
    _add_common(serve)


def _add_generate(generate: argparse.ArgumentParser) -> None:
    generate.add_argument("prompt", help="what the sound is, e.g. 'rain on a tin roof'")
    generate.add_argument("--negative-prompt", default="", help="sounds to avoid, e.g. 'music, voices'")
    generate.add_argument("--duration", type=int, default=8, help="seconds, 2-30 (default 8)")
    generate.add_argument("--num-steps", type=int, default=25, help="10-100 (default 25)")
    generate.add_argument("--cfg-strength", type=float, default=4.5, help="1.0-10.0 (default 4.5)")
    generate.add_argument("--mask-away-clip", action="store_true")
    generate.add_argument("--wait-seconds", type=float, default=300.0, help="how long to wait (default 300)")
    _add_saving(generate)
    _add_common(generate)


def _add_saving(parser: argparse.ArgumentParser) -> None:
    saving = parser.add_argument_group("saving into a project (processing is local, on the delivered WAV)")
    saving.add_argument("--out", metavar="DIR", help="save a copy in DIR, inside the current directory")
    saving.add_argument("--name", metavar="FILENAME", help="file name for the copy (suffix optional)")
    saving.add_argument("--overwrite", action="store_true", help="replace an existing file of that name")
    saving.add_argument("--format", choices=["wav", "flac", "ogg", "mp3"], default="wav", help="default wav")
    saving.add_argument("--sample-rate", type=int, help="resample, e.g. 48000")
    saving.add_argument("--channels", type=int, choices=[1, 2], help="1 mono, 2 stereo")
    # Alone, --normalize gives True, read as processing_options.DEFAULT_TARGET_LUFS (not imported here: the audio
    # stack's import would slow every start, --help included; test_cli checks that this help names the same number).
    saving.add_argument(
        "--normalize", nargs="?", type=float, const=True, metavar="LUFS", help="loudness target (default -16)"
    )
    saving.add_argument("--trim-silence", action="store_true", help="trim leading and trailing silence")
    saving.add_argument("--fade-ms", type=int, default=0, help="fade in and out (ms)")
    saving.add_argument("--loop", action="store_true", help="make the clip loop seamlessly")


def _add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--sandbox", action="store_true", help="use a built-in fake Pixazo gateway (no key needed)")
    parser.add_argument("--sandbox-speed", type=float, default=0.25, help="time factor for sandbox jobs")
    parser.add_argument("--output-dir", type=Path, help="where WAV files go (MMAUDIO_OUTPUT_DIR)")
    parser.add_argument("--state-dir", type=Path, help="where the job store lives (MMAUDIO_STATE_DIR)")
    parser.add_argument("--gateway-url", help="Pixazo gateway (PIXAZO_GATEWAY_URL)")


def _settings(args: argparse.Namespace, **extra: Any) -> Settings:
    from mmaudio_mcp.settings import load_settings

    return load_settings(output_dir=args.output_dir, state_dir=args.state_dir, gateway_url=args.gateway_url, **extra)


def _params(args: argparse.Namespace) -> GenerationParams:
    from mmaudio_mcp.models import GenerationParams

    return GenerationParams(
        prompt=args.prompt,
        negative_prompt=args.negative_prompt,
        duration=args.duration,
        num_steps=args.num_steps,
        cfg_strength=args.cfg_strength,
        mask_away_clip=args.mask_away_clip,
    )


def _run_serve(args: argparse.Namespace) -> None:
    import anyio

    anyio.run(_serve, args)


async def _serve(args: argparse.Namespace) -> None:
    from mmaudio_mcp.server import build_server
    from mmaudio_mcp.settings import Transport
    from mmaudio_mcp.terminal import gateway
    from mmaudio_mcp.transport import Exposure, serve

    settings = _settings(
        args,
        wait_seconds=args.wait_seconds,
        transport=args.transport,
        host=args.host,
        port=args.port,
        stateless=args.stateless,
    )
    exposure = Exposure(
        host=settings.host,
        port=settings.port,
        token=settings.http_token.get_secret_value() if settings.http_token else None,
        allow_unauthenticated=args.allow_unauthenticated,
        public_url=settings.public_url,
        allowed_hosts=tuple(settings.allowed_hosts),
        stateless=settings.stateless_http,
    )
    transport = settings.transport
    if transport is not Transport.STDIO:
        # Refused before anything starts (the sandbox included), so the refusal is the only thing the user sees;
        # serve() checks again without a word (it only refuses) and logs the no-token warning once.
        exposure.check(transport)
        _port_free(settings.host, settings.port)
        print(
            f"mmaudio-mcp: serving MCP ({transport}) on http://{settings.host}:{settings.port}{transport.path}; "
            "Ctrl+C stops it.",
            file=sys.stderr,
            flush=True,
        )
    elif sys.stdin.isatty():  # `mmaudio-mcp serve` typed at a terminal: say why nothing happens
        print(
            "mmaudio-mcp: serving MCP over stdio, waiting for a host's messages on stdin; Ctrl+D or Ctrl+C stops it.",
            file=sys.stderr,
            flush=True,
        )
    async with gateway(args, settings) as (settings, policy):
        await serve(build_server(settings, policy=policy), transport, exposure)


def _port_free(host: str, port: int) -> None:
    """Refuse a port already in use in one line (uvicorn would log an errno and exit 3, our "not finished" code)."""
    import socket

    from mmaudio_mcp.errors import ConfigurationError

    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn does: a closing socket is no obstacle
        try:
            probe.bind((host, port))
        except OSError as exc:
            raise ConfigurationError(
                f"Cannot listen on {host}:{port}: {exc.strerror or exc} (another server on that port?); "
                "choose another with --port or MMAUDIO_PORT."
            ) from exc


def _run_sandbox(host: str, port: int, speed: float) -> None:
    import uvicorn

    from mmaudio_mcp.sandbox import SANDBOX_API_KEY, SandboxConfig, create_sandbox

    print(f"Pixazo sandbox on http://{host}:{port} (key: {SANDBOX_API_KEY}); press Ctrl+C to stop.", file=sys.stderr)
    uvicorn.run(create_sandbox(SandboxConfig(speed=speed)).app, host=host, port=port, log_level="warning")


__all__ = ["main"]
