"""Commands for people at a terminal: generate, status, jobs and doctor, with progress bars, tables and --json.

Results go to stdout (a path, a table, or JSON for scripts); progress, warnings and errors go to stderr.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import shutil
import sys
from contextlib import asynccontextmanager
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import anyio

from mmaudio_mcp import __version__
from mmaudio_mcp.errors import ConfigurationError, InvalidArgumentError, JobFailedError, MmaudioError, NotSavedError
from mmaudio_mcp.placement import Destination, resolve_destination

if TYPE_CHECKING:
    import argparse
    from collections.abc import AsyncGenerator, Callable

    from rich.console import Console

    from mmaudio_mcp.jobs import JobService
    from mmaudio_mcp.models import AudioJob, GenerationParams, JobRecord
    from mmaudio_mcp.processing_options import ProcessOptions
    from mmaudio_mcp.schedule import PollPolicy
    from mmaudio_mcp.settings import Settings

logger = logging.getLogger("mmaudio_mcp")

EXIT_OK: Final = 0
EXIT_ERROR: Final = 1
EXIT_NOT_FINISHED: Final = 3


@asynccontextmanager
async def gateway(args: argparse.Namespace, settings: Settings) -> AsyncGenerator[tuple[Settings, PollPolicy | None]]:
    """Yield the settings and poll policy to use: as given, or for an in-process sandbox on a free loopback port."""
    if not args.sandbox:
        yield settings, None
        return
    from pydantic import SecretStr

    from mmaudio_mcp.sandbox import SANDBOX_API_KEY, SandboxConfig, create_sandbox
    from mmaudio_mcp.schedule import PollPolicy
    from mmaudio_mcp.transport import serve_on_loopback

    # The fake gateway keeps its jobs in the state folder, so `status <id> --sandbox` works after any exit.
    config = SandboxConfig(speed=args.sandbox_speed, state_path=settings.state_dir / "sandbox" / "gateway.sqlite3")
    async with serve_on_loopback(create_sandbox(config).app) as url:
        logger.warning("sandbox mode: fake Pixazo gateway at %s; no real audio is generated", url)
        sandboxed = settings.model_copy(
            update={
                "gateway_url": url,
                "api_key": SecretStr(SANDBOX_API_KEY),
                "state_dir": settings.state_dir / "sandbox",
                "output_dir": settings.output_dir / "sandbox",
            }
        )
        yield sandboxed, PollPolicy().scaled(max(args.sandbox_speed, 0.01))


@asynccontextmanager
async def job_service(args: argparse.Namespace, settings: Settings) -> AsyncGenerator[JobService]:
    """Open the job service the way the server does, on the real gateway or the sandbox."""
    from mmaudio_mcp.jobs import open_job_service

    async with (
        gateway(args, settings) as (settings, policy),
        open_job_service(_on_this_machine(settings), policy=policy) as jobs,
    ):
        yield jobs


def _on_this_machine(settings: Settings) -> Settings:
    """The terminal works on this machine's store and folder: no replicas' database or bucket, no webhooks."""
    return settings.model_copy(update={"database_url": None, "storage_url": None, "public_url": None})


# --- generate and status ----------------------------------------------------------------------------------------


def generate(args: argparse.Namespace, settings: Settings, params: GenerationParams) -> int:
    """Generate one sound with a progress bar; print its path (or JSON)."""
    job = anyio.run(_generate, args, settings, params)
    return _report_job(job, args)


async def _generate(args: argparse.Namespace, settings: Settings, params: GenerationParams) -> AudioJob:
    options = processing_options(args)
    require_key(args, settings)
    async with job_service(args, settings) as jobs:
        saving = check_saving(args, options, jobs.output_dir)  # everything checked before anything is paid for
        async with _progress_bar(f"Submitting '{params.prompt[:40]}'") as show:
            job = await jobs.generate(params, wait_seconds=args.wait_seconds, progress=show)
        return await _save(jobs, job, saving)


@dataclass(frozen=True)
class Saving:
    """Where and how the command line saves a finished job's audio (checked before the job is paid for)."""

    options: ProcessOptions
    destination: Destination | None
    name: str | None
    overwrite: bool

    @property
    def wanted(self) -> bool:
        return not self.options.is_identity or self.destination is not None or self.name is not None


def check_saving(args: argparse.Namespace, options: ProcessOptions, output_dir: Path) -> Saving:
    """Refuse, before paying, every saving request that would fail afterwards: the name, the folder (inside the
    current directory, the project), a file already there without --overwrite, a folder that cannot be written."""
    from mmaudio_mcp.audio import checked_filename

    name = _flagged("--name", checked_filename, args.name, options.format) if args.name else None
    destination = _project_folder(args.out) if args.out else None
    folder = destination.folder if destination else output_dir
    _writable(output_dir)
    _writable(folder)
    if name is not None and (folder / name).exists() and not args.overwrite:
        shown = destination.relative(folder / name) if destination else str(folder / name)
        raise InvalidArgumentError(
            f"{shown} already exists; pass --overwrite to replace it or choose another --name (nothing was paid for)."
        )
    return Saving(options, destination, name, bool(args.overwrite))


def _flagged(flag: str, check: Callable[..., str], *values: Any) -> str:
    """Run a check whose message names the tool argument; say the command-line flag instead."""
    try:
        return check(*values)
    except InvalidArgumentError as exc:
        raise InvalidArgumentError(f"{flag}: {exc.message}") from exc


def _project_folder(out: str) -> Destination:
    """--out as a folder inside the current directory (the project), symlinks resolved."""
    project = Path.cwd()
    try:
        return resolve_destination(out, [project], project)
    except InvalidArgumentError as exc:
        raise InvalidArgumentError(
            f"--out {out[:200]} is outside the current directory ({project}); give a folder inside it, "
            "e.g. --out assets/sfx (nothing was paid for)."
        ) from exc


def _writable(folder: Path) -> None:
    """The folder, or the nearest part of it that exists, can be written to (it is created when the file arrives)."""
    existing = folder
    while not existing.exists() and existing.parent != existing:
        existing = existing.parent
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        raise InvalidArgumentError(f"{folder} cannot be written to ({existing} is not a writable folder).")


async def _save(jobs: JobService, job: AudioJob, saving: Saving) -> AudioJob:
    """Save the finished job as asked; if that fails, the job is paid for: say where its audio is and how to retry."""
    if job.file is None or not saving.wanted:
        return job
    try:
        return await jobs.download(
            job.request_id,
            filename=saving.name,
            options=saving.options,
            destination=saving.destination,
            overwrite=saving.overwrite,
        )
    except MmaudioError as exc:
        raise NotSavedError(
            f"Job {job.request_id} completed and its WAV is at {job.file.path}, but the copy you asked for could not "
            f"be made: {exc.message.replace('overwrite=true', '--overwrite')} To try again without paying: "
            f"mmaudio-mcp status {job.request_id} "
            "with the same saving options."
        ) from exc


def require_key(args: argparse.Namespace, settings: Settings) -> None:
    if not args.sandbox and settings.api_key is None:
        raise ConfigurationError(
            "No Pixazo API key: set PIXAZO_API_KEY to your subscription key, "
            "or add --sandbox to try it offline (fake audio)."
        )


def processing_options(args: argparse.Namespace) -> ProcessOptions:
    """The processing the command line asked for (none by default)."""
    from mmaudio_mcp.processing_options import asked_options

    return asked_options(args, args.normalize)


def status(args: argparse.Namespace, settings: Settings) -> int:
    """Report (and with --wait-seconds, wait for) one job; a completed job's WAV is saved."""
    job = anyio.run(_status, args, settings)
    return _report_job(job, args)


async def _status(args: argparse.Namespace, settings: Settings) -> AudioJob:
    options = processing_options(args)
    async with job_service(args, settings) as jobs:
        saving = check_saving(args, options, jobs.output_dir)
        request_id = await full_request_id(jobs, args.request_id)
        async with _progress_bar(f"Checking {request_id}") as show:
            try:
                job = await jobs.check(request_id, wait_seconds=args.wait_seconds, progress=show)
            except ConfigurationError:
                require_key(args, settings)  # a job not in the store needs the key: say so in command-line words
                raise
        return await _save(jobs, job, saving)


async def full_request_id(jobs: JobService, given: str) -> str:
    """The stored request_id that `given` is a unique prefix of (with or without the model's `..._` part)."""
    records = await jobs.recent(10_000)
    ids = {record.request_id for record in records if record.request_id}
    if given in ids:
        return given
    matches = sorted(rid for rid in ids if rid.startswith(given) or rid.partition("_")[2].startswith(given))
    if len(matches) > 1:
        shown = ", ".join(matches[:3]) + (", ..." if len(matches) > 3 else "")
        raise InvalidArgumentError(f"{given!r} matches {len(matches)} jobs ({shown}); give more of the request_id.")
    return matches[0] if matches else given


@asynccontextmanager
async def _progress_bar(description: str) -> AsyncGenerator[Any]:
    """A transient progress bar on stderr, fed by the job service's progress callback."""
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    columns = (TextColumn("{task.description}"), BarColumn(), TimeElapsedColumn())
    with Progress(*columns, console=_console(stderr=True), transient=True) as bar:
        task = bar.add_task(description, total=None)

        async def show(progress: float, total: float | None, message: str) -> None:
            bar.update(task, completed=progress, total=total, description=message)

        yield show


def _report_job(job: AudioJob, args: argparse.Namespace) -> int:
    """Print the job for a person (the path) or a script (JSON); choose the exit code."""
    job = job.model_copy(update={"next_step": next_command(job, args) or None})  # in this face's words
    if job.status.is_terminal and job.file is None and job.error is not None:
        raise JobFailedError(
            f"Job {job.request_id} ended {job.status.value}: {job.error.message} {next_command(job, args)}"
        )
    if args.json:
        print(job.model_dump_json(indent=2))
    elif job.file is not None:
        print(job.file.path)
    else:
        print(job.request_id)
    if job.file is not None and job.file.note:
        print(f"note: {job.file.note}", file=sys.stderr)
    if job.file is None:
        eta = f", about {job.eta_seconds:.0f} s left" if job.eta_seconds is not None else ""
        print(f"Not finished yet ({job.status.value}{eta}). {next_command(job, args)}".strip(), file=sys.stderr)
        return EXIT_NOT_FINISHED
    return EXIT_OK


def next_command(job: AudioJob, args: argparse.Namespace) -> str:
    """The job's next step (data from the domain) worded for a person at a terminal: the command to run."""
    if job.next is None:
        return ""
    sandbox = " --sandbox" if args.sandbox else ""
    if job.next.action == "wait":
        return f"To wait for it (nothing is paid again): mmaudio-mcp status {job.request_id} --wait-seconds 60{sandbox}"
    if job.next.action == "download":
        return f"To fetch its audio: mmaudio-mcp status {job.request_id}{sandbox}"
    return "Generating again (a new, paid job), perhaps with a simpler prompt, may help."


# --- jobs -------------------------------------------------------------------------------------------------------


def jobs(args: argparse.Namespace, settings: Settings) -> int:
    """List recent jobs from the store (no network call) as a table or JSON."""
    state_dir = settings.state_dir / "sandbox" if args.sandbox else settings.state_dir
    records = anyio.run(_recent, state_dir, args.limit)
    if args.json:
        print(json.dumps([record.model_dump(mode="json", exclude={"webhook_token"}) for record in records], indent=2))
        return EXIT_OK
    from rich.table import Table

    rows = [_job_row(record) for record in records]
    table = Table(title=f"{len(records)} recent jobs", caption=anyio.run(_spend_window, state_dir, settings))
    # request ids are copied into `status`: never cut or wrapped; the prompt gives way first.
    table.add_column("request_id", no_wrap=True, min_width=max((len(row[0]) for row in rows), default=10))
    table.add_column("status", no_wrap=True)
    table.add_column("prompt", no_wrap=True, overflow="ellipsis", max_width=40)
    table.add_column("created (UTC)", no_wrap=True)
    table.add_column("file", overflow="fold")
    for row in rows:
        table.add_row(*row)
    _console(wide=not sys.stdout.isatty()).print(table)  # piped or captured: no 80-column squeeze
    return EXIT_OK


async def _spend_window(state_dir: Path, settings: Settings) -> str:
    from mmaudio_mcp.ledger import SpendCap, read_spent, spend_summary

    cap = SpendCap(settings.spend_cap, settings.spend_window_minutes)
    return spend_summary(await read_spent(state_dir, cap), cap)


async def _recent(state_dir: Path, limit: int) -> list[JobRecord]:
    from mmaudio_mcp.store import SqliteJobStore

    store = SqliteJobStore.in_folder(state_dir)
    try:
        return await store.recent(limit)
    finally:
        await store.aclose()


def _job_row(record: JobRecord) -> tuple[str, str, str, str, str]:
    prompt = record.params.prompt if record.params else ""
    return (
        record.request_id or "(no answer: may be billed)",
        record.status.value,
        prompt if len(prompt) <= 40 else prompt[:39] + "…",
        record.created_at.strftime("%Y-%m-%d %H:%M"),
        record.file.path if record.file else "",
    )


# --- doctor -----------------------------------------------------------------------------------------------------


def doctor(args: argparse.Namespace, settings: Settings) -> int:
    """Check what a working set-up needs and print the host config to paste; exit 1 if something is missing."""
    checks = anyio.run(_doctor_checks, args, settings)
    config = host_config(settings)
    if args.json:
        print(json.dumps({"checks": checks, "host_config": config}, indent=2))
    else:
        _print_checks(checks, config)
    return EXIT_OK if all(check["ok"] for check in checks) else EXIT_ERROR


async def _doctor_checks(args: argparse.Namespace, settings: Settings) -> list[dict[str, Any]]:
    """The checks, against the real gateway or (--sandbox) the built-in fake one."""
    async with gateway(args, settings) as (checked, _policy):
        return await _checks(checked)


async def _checks(settings: Settings) -> list[dict[str, Any]]:
    from mmaudio_mcp.settings import Transport

    key = settings.api_key
    return [
        _check("API key", key is not None, "set" if key else "PIXAZO_API_KEY is not set (try --sandbox meanwhile)"),
        await _gateway_check(settings),
        _folder_check("output folder", settings.output_dir),
        _folder_check("state folder", settings.state_dir),
        _check(
            "versions",
            True,
            f"mmaudio-mcp {__version__}, mcp {version('mcp')}, Python {platform.python_version()}",
        ),
        _check("transports", True, ", ".join(Transport) + _webhook_note(settings)),
    ]


def _check(name: str, ok: bool, detail: str) -> dict[str, Any]:
    return {"name": name, "ok": ok, "detail": detail}


async def _gateway_check(settings: Settings) -> dict[str, Any]:
    """Reach the gateway without spending anything: the status of a job that does not exist, asked through the
    server's own client (its retries, its words). Without a key, a made-up one: only the gateway's answer counts."""
    from pydantic import SecretStr

    from mmaudio_mcp.errors import AuthenticationError, ForbiddenError, MmaudioError, NetworkError, UnknownJobError
    from mmaudio_mcp.pixazo import PixazoClient

    where = settings.gateway_url
    client = PixazoClient(None, settings.api_key or SecretStr("no-key"), where, timeout=10.0)
    # The client retries a refused connection a few times; its retry notices say nothing to a person here.
    logging.getLogger("stamina").setLevel(logging.ERROR)
    try:
        await client.status("mmaudio-v2-text-to-audio_doctor")
    except UnknownJobError:
        return _check("gateway", True, f"{where}: reachable (a made-up job is unknown, as it should be)")
    except (AuthenticationError, ForbiddenError) as exc:
        # Without a key, the API key check already says what to do; the gateway itself answered.
        return _check("gateway", settings.api_key is None, f"{where}: reachable, but {exc.message}")
    except NetworkError as exc:
        return _check("gateway", False, f"{where} is unreachable: {exc.message}")
    except MmaudioError as exc:
        return _check("gateway", True, f"{where}: reachable ({exc.message})")
    finally:
        await client.aclose()
    return _check("gateway", True, f"{where}: reachable")


def _folder_check(name: str, folder: Path) -> dict[str, Any]:
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / ".mmaudio-doctor"
        probe.write_bytes(b"ok")
        probe.unlink()
    except OSError as exc:
        return _check(name, False, f"{folder} is not writable ({exc.strerror})")
    return _check(name, True, f"{folder} (writable)")


def _webhook_note(settings: Settings) -> str:
    return f"; webhooks at {settings.public_url} when serving HTTP" if settings.public_url else ""


def host_config(settings: Settings) -> dict[str, Any]:
    """The Claude Desktop / Cursor style entry for this installation, with every setting in `env`."""
    command = shutil.which("mmaudio-mcp") or os.path.abspath(sys.argv[0])
    env = {"PIXAZO_API_KEY": "<your Pixazo key>", "MMAUDIO_OUTPUT_DIR": str(settings.output_dir)}
    return {"mcpServers": {"mmaudio": {"command": command, "env": env}}}


def _print_checks(checks: list[dict[str, Any]], config: dict[str, Any]) -> None:
    from rich.table import Table

    table = Table("check", "", "detail", title="mmaudio-mcp doctor")
    for check in checks:
        table.add_row(check["name"], "[green]ok[/]" if check["ok"] else "[red]fail[/]", check["detail"])
    console = _console()
    console.print(table)
    console.print("Paste into your host's MCP config (Claude Desktop: claude_desktop_config.json):")
    console.print_json(json.dumps(config))


def _console(*, stderr: bool = False, wide: bool = False) -> Console:
    from rich.console import Console

    return Console(stderr=stderr, highlight=False, width=240 if wide else None)


__all__ = [
    "EXIT_ERROR",
    "EXIT_NOT_FINISHED",
    "EXIT_OK",
    "doctor",
    "full_request_id",
    "gateway",
    "generate",
    "host_config",
    "job_service",
    "jobs",
    "require_key",
    "status",
]
