"""`mmaudio-mcp sync`: make a project's declared sounds exist, paying only for what is missing or changed.

A project declares its sounds in `sounds.toml` (name -> prompt, duration, steps, format, loudness, loop, out...).
`sync` compares each declaration with the lock file beside it (`sounds.lock.json`: request_id, declaration hash,
sha256 of the file made) and then, for each sound:

- up to date: the file is there with the recorded checksum and the declaration has not changed; nothing happens;
- remade: the generation part (prompt, duration, steps, cfg) is unchanged, so the file is made again from the job
  already paid for (new loudness, format, folder; or the file was deleted), at no cost;
- generated: a new job is paid for. Its request_id is written to the lock the moment Pixazo answers, so an
  interrupted run resumes the same job next time (it is in the job store) instead of paying again.

Several sounds are generated at once (bounded), under one live progress display.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import tomllib
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Literal, cast

import anyio
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from mmaudio_mcp.audio import checked_filename, sha256_of
from mmaudio_mcp.errors import InvalidArgumentError, MmaudioError
from mmaudio_mcp.models import (
    CfgStrength,
    Channels,
    Duration,
    FadeMs,
    Format,
    GenerationParams,
    NegativePrompt,
    NumSteps,
    Prompt,
    SampleRate,
    TargetLufs,
    explain_validation_error,
)
from mmaudio_mcp.placement import resolve_destination
from mmaudio_mcp.processing_options import asked_options

if TYPE_CHECKING:
    import argparse
    from collections.abc import Callable, Generator

    from mmaudio_mcp.jobs import JobService
    from mmaudio_mcp.models import AudioFile, AudioJob
    from mmaudio_mcp.processing_options import ProcessOptions
    from mmaudio_mcp.settings import Settings

LOCK_SUFFIX: Final = ".lock.json"
DEFAULT_PARALLEL: Final = 4
Action = Literal["up to date", "remade", "generated", "resumed"]


class Sound(BaseModel):
    """One declared sound (every key but `prompt` optional; `[defaults]` in the file fills the gaps)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    prompt: Prompt
    negative_prompt: NegativePrompt = ""
    duration: Duration = 8
    steps: NumSteps = 25
    cfg_strength: CfgStrength = 4.5
    format: Format = "wav"
    loudness: TargetLufs | None = Field(default=None, description="Normalize to this many LUFS (peaks <= -1 dBTP).")
    loop: bool = False
    trim_silence: bool = False
    fade_ms: FadeMs = 0
    sample_rate: SampleRate = None
    channels: Channels = None
    out: str = Field(default=".", description="Folder for the file, relative to the sounds.toml's folder.")

    def params(self) -> GenerationParams:
        return GenerationParams(
            prompt=self.prompt,
            negative_prompt=self.negative_prompt,
            duration=self.duration,
            num_steps=self.steps,
            cfg_strength=self.cfg_strength,
        )

    def options(self) -> ProcessOptions:
        return asked_options(self, self.loudness)

    def generation_hash(self) -> str:
        """What a paid job depends on: the same hash means the same job can be reused."""
        return _digest(self.params().model_dump(mode="json"))

    def declaration_hash(self) -> str:
        """Everything declared: the same hash (and the same file) means there is nothing to do."""
        return _digest(self.model_dump(mode="json"))


class Locked(BaseModel):
    """What the lock file remembers of one sound."""

    request_id: str
    generation: str
    declaration: str | None = None
    sha256: str | None = None
    path: str | None = None


@dataclass
class Plan:
    """What sync will do for one sound."""

    name: str
    sound: Sound
    target: Path
    action: Action
    request_id: str | None = None


@dataclass
class Outcome:
    """What sync did for one sound (error set when it failed)."""

    plan: Plan
    path: Path | None = None
    request_id: str | None = None
    error: str | None = None
    paid: bool = False
    note: str | None = None
    """What did not come out as declared (a loudness out of reach, a loop shorter than the clip)."""


@dataclass
class Project:
    """A sounds.toml with its declarations and its lock file."""

    file: Path
    sounds: dict[str, Sound]
    lock: dict[str, Locked] = field(default_factory=dict[str, Locked])

    @property
    def root(self) -> Path:
        return self.file.parent

    @property
    def lock_file(self) -> Path:
        return self.file.with_name(self.file.stem + LOCK_SUFFIX)


def _digest(data: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(data, sort_keys=True, separators=(",", ":")).encode()).hexdigest()[:16]


def load_project(file: Path) -> Project:
    """Read and check sounds.toml (and its lock file, if any): every problem is refused before anything is paid."""
    try:
        data = tomllib.loads(file.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise InvalidArgumentError(f"{file} does not exist; declare your sounds there (see `sync --help`).") from exc
    except tomllib.TOMLDecodeError as exc:
        raise InvalidArgumentError(f"{file} is not valid TOML: {exc}.") from exc
    defaults: Any = data.pop("defaults", {})
    declared: Any = data.pop("sounds", None)
    if data or not isinstance(declared, dict) or not isinstance(defaults, dict):
        raise InvalidArgumentError(f"{file} should hold [sounds.<name>] tables (and an optional [defaults]).")
    sounds: dict[str, Sound] = {}
    tables: dict[str, Any] = dict(cast("dict[str, Any]", declared))
    for name, body in tables.items():
        if not isinstance(body, dict):
            raise InvalidArgumentError(f"{file}: sounds.{name} should be a table.")
        try:
            sounds[name] = sound = Sound.model_validate({**defaults, **body})
        except ValidationError as exc:
            raise InvalidArgumentError(f"{file}: sounds.{name}: {explain_validation_error(exc)}") from exc
        try:
            checked_filename(name, sound.format)
        except InvalidArgumentError as exc:
            raise InvalidArgumentError(f"{file}: the sound name {exc.message}") from exc
    project = Project(file.resolve(), sounds)
    if project.lock_file.exists():
        raw = json.loads(project.lock_file.read_text(encoding="utf-8"))
        project.lock = {name: Locked.model_validate(entry) for name, entry in raw.get("sounds", {}).items()}
    return project


def plan(project: Project) -> list[Plan]:
    """Decide, without any network call, what each sound needs."""
    plans: list[Plan] = []
    for name, sound in project.sounds.items():
        folder = resolve_destination(sound.out, [project.root], project.root).folder
        target = folder / checked_filename(name, sound.format)
        locked = project.lock.get(name)
        if locked is None or locked.generation != sound.generation_hash():
            plans.append(Plan(name, sound, target, "generated"))
        elif locked.sha256 is None:  # paid for, never finished: resume that job
            plans.append(Plan(name, sound, target, "resumed", locked.request_id))
        elif locked.declaration == sound.declaration_hash() and _same_file(target, locked.sha256):
            plans.append(Plan(name, sound, target, "up to date", locked.request_id))
        else:
            plans.append(Plan(name, sound, target, "remade", locked.request_id))
    return plans


def _same_file(path: Path, sha256: str) -> bool:
    return path.is_file() and sha256_of(path) == sha256


class Lock:
    """The lock file, rewritten atomically after every change (so an interrupted run loses nothing)."""

    def __init__(self, project: Project) -> None:
        self._project = project
        self._guard = anyio.Lock()

    @property
    def root(self) -> Path:
        return self._project.root

    async def record(self, name: str, entry: Locked) -> None:
        async with self._guard:
            self._project.lock[name] = entry
            await anyio.to_thread.run_sync(self._write)

    def _write(self) -> None:
        lock = self._project.lock
        known = {name: lock[name].model_dump(mode="json") for name in sorted(lock) if name in self._project.sounds}
        text = json.dumps({"version": 1, "sounds": known}, indent=2) + "\n"
        temporary = self._project.lock_file.with_suffix(".tmp")
        temporary.write_text(text, encoding="utf-8")
        os.replace(temporary, self._project.lock_file)


async def run(
    project: Project,
    plans: list[Plan],
    jobs: JobService,
    *,
    parallel: int = DEFAULT_PARALLEL,
    wait_seconds: float = 600,
    progress_for: Callable[[str], Any] | None = None,
) -> list[Outcome]:
    """Carry out the plans, at most `parallel` jobs at a time; each outcome says what happened."""
    lock = Lock(project)
    limiter = anyio.CapacityLimiter(max(1, parallel))
    outcomes: list[Outcome] = []

    async def one(item: Plan) -> None:
        async with limiter:
            show = progress_for(item.name) if progress_for else None
            outcomes.append(await _carry_out(item, jobs, lock, wait_seconds, show))

    async with anyio.create_task_group() as group:
        for item in plans:
            if item.action != "up to date":
                group.start_soon(one, item)
    done = {outcome.plan.name for outcome in outcomes}
    outcomes += [Outcome(item, item.target, item.request_id) for item in plans if item.name not in done]
    order = [item.name for item in plans]
    return sorted(outcomes, key=lambda outcome: order.index(outcome.plan.name))


async def _carry_out(item: Plan, jobs: JobService, lock: Lock, wait_seconds: float, show: Any) -> Outcome:
    sound = item.sound
    generation = sound.generation_hash()
    request_id, paid = item.request_id, False
    try:
        if request_id is None:
            submitted = await jobs.generate(sound.params(), wait_seconds=0)
            request_id, paid = submitted.request_id, True
            await lock.record(item.name, Locked(request_id=request_id, generation=generation))
        job = await jobs.check(request_id, wait_seconds=wait_seconds, progress=show)
        if job.file is None:
            return Outcome(item, None, request_id, _unfinished(job), paid)
        file = await _save(item, jobs, request_id)
        saved = Path(file.path)
        entry = Locked(
            request_id=request_id,
            generation=generation,
            declaration=sound.declaration_hash(),
            sha256=await anyio.to_thread.run_sync(sha256_of, saved),
            path=item.target.relative_to(lock.root).as_posix(),
        )
        await lock.record(item.name, entry)
        return Outcome(item, saved, request_id, None, paid, file.note)
    except MmaudioError as exc:
        return Outcome(item, None, request_id, exc.message, paid)


async def adopt_from_store(project: Project, plans: list[Plan], jobs: JobService) -> None:
    """Point sounds that would be paid for at a job the store already holds with the same generation parameters
    (a run interrupted before its lock was written, or a declaration changed back): no network call."""
    used = {entry.request_id for entry in project.lock.values()}
    records = [r for r in await jobs.recent(1000) if r.request_id and r.params and not _failed(r.status.value)]
    for item in plans:
        if item.action != "generated":
            continue
        wanted = item.sound.params()
        for record in records:
            if record.params == wanted and record.request_id not in used:
                item.action, item.request_id = "resumed", record.request_id
                break


def _failed(status: str) -> bool:
    return status in ("FAILED", "ERROR", "REJECTED", "CANCELLED")


async def _save(item: Plan, jobs: JobService, request_id: str) -> AudioFile:
    destination = resolve_destination(str(item.target.parent), [item.target.parent], item.target.parent)
    job = await jobs.download(
        request_id, filename=item.target.name, options=item.sound.options(), destination=destination, overwrite=True
    )
    assert job.file is not None
    return job.file


def _unfinished(job: AudioJob) -> str:
    if job.status.is_terminal:
        return f"job {job.request_id} ended {job.status.value}: {job.error.message if job.error else 'no reason'}"
    return f"job {job.request_id} is still {job.status.value}; run sync again to resume it (nothing is paid again)"


# --- the command ------------------------------------------------------------------------------------------------

_WORDS: Final = {
    "generated": "generate (paid)",
    "resumed": "resume its paid job",
    "remade": "remake from its paid job (free)",
    "up to date": "up to date",
}


def command(args: argparse.Namespace, settings: Settings) -> int:
    """`mmaudio-mcp sync [FILE] [--dry-run] [--parallel N]`: print one line per sound; exit 1 if any failed."""
    return anyio.run(_command, args, settings)


async def _command(args: argparse.Namespace, settings: Settings) -> int:
    from mmaudio_mcp.terminal import EXIT_ERROR, EXIT_OK, job_service, require_key

    project = load_project(Path(args.file))
    plans = plan(project)
    if not args.dry_run:
        require_key(args, settings)
    async with job_service(args, settings) as jobs:
        await adopt_from_store(project, plans, jobs)
        if args.dry_run:
            _print_plans(project, plans, args.json)
            return EXIT_OK
        with _display() as progress_for:
            outcomes = await run(project, plans, jobs, parallel=args.parallel, progress_for=progress_for)
    _print_outcomes(project, outcomes, args.json)
    return EXIT_ERROR if any(outcome.error for outcome in outcomes) else EXIT_OK


def _print_plans(project: Project, plans: list[Plan], as_json: bool) -> None:
    paid = sum(item.action == "generated" for item in plans)
    if as_json:
        rows = [{"name": p.name, "action": p.action, "path": _shown(project, p.target)} for p in plans]
        print(json.dumps({"to_pay_for": paid, "sounds": rows}, indent=2))
        return
    for item in plans:
        print(f"{item.name}: would {_WORDS[item.action]} -> {_shown(project, item.target)}")
    print(f"{paid} job(s) would be paid for; {len(plans) - paid} sound(s) cost nothing.")


def _print_outcomes(project: Project, outcomes: list[Outcome], as_json: bool) -> None:
    if as_json:
        rows = [
            {"name": o.plan.name, "action": o.plan.action, "path": _shown(project, o.plan.target),
             "request_id": o.request_id, "paid": o.paid, "error": o.error, "note": o.note}
            for o in outcomes
        ]  # fmt: skip
        print(json.dumps({"paid": sum(o.paid for o in outcomes), "sounds": rows}, indent=2))
        return
    for outcome in outcomes:
        if outcome.error:
            print(f"{outcome.plan.name}: FAILED: {outcome.error}", file=sys.stderr)
        else:
            print(f"{outcome.plan.name}: {_WORDS[outcome.plan.action]} -> {_shown(project, outcome.plan.target)}")
            if outcome.note:
                print(f"{outcome.plan.name}: note: {outcome.note}", file=sys.stderr)
    paid = sum(o.paid for o in outcomes)
    failed = sum(bool(o.error) for o in outcomes)
    print(f"{paid} job(s) paid for, {failed} failed; lock file: {_shown(project, project.lock_file)}", file=sys.stderr)


def _shown(project: Project, path: Path) -> str:
    return path.relative_to(project.root).as_posix() if path.is_relative_to(project.root) else str(path)


@contextmanager
def _display() -> Generator[Callable[[str], Any]]:
    """One live progress display on stderr, a row per sound being made."""
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    columns = (
        TextColumn("{task.fields[name]:<20}"),
        BarColumn(),
        TextColumn("{task.description}"),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=Console(stderr=True), transient=True) as bar:

        def progress_for(name: str) -> Callable[[float, float | None, str], Any]:
            task = bar.add_task("starting", total=None, name=name)

            async def show(progress: float, total: float | None, message: str) -> None:
                bar.update(task, completed=progress, total=total, description=message)

            return show

        yield progress_for


__all__ = [
    "DEFAULT_PARALLEL",
    "Outcome",
    "Plan",
    "Project",
    "Sound",
    "adopt_from_store",
    "command",
    "load_project",
    "plan",
    "run",
]
