"""The audio of finished jobs on disk: downloaded once, checked, processed into cached variants, copied where asked.

Every write goes through a temporary file and a rename; concurrent callers for one job share one download.
"""

from __future__ import annotations

import gc
import logging
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Final, Self

import anyio

from mmaudio_mcp.audio import (
    DEFAULT_MAX_BYTES,
    audio_filename,
    checked_filename,
    file_digest,
    remove_stale_parts,
    run_audio_work,
    save_audio,
    verify_file,
)
from mmaudio_mcp.errors import MediaError, MmaudioError
from mmaudio_mcp.models import AudioFile, JobError, JobRecord, utc_now
from mmaudio_mcp.placement import (
    Destination,
    local_storage_error,
    place_copy,
    remove_leftovers,
    resolve_destination,
)
from mmaudio_mcp.processing import process_file
from mmaudio_mcp.store import LeaseLostError

if TYPE_CHECKING:
    from collections.abc import AsyncGenerator, Awaitable, Callable
    from types import TracebackType

    from anyio.abc import TaskGroup

    from mmaudio_mcp.objects import ObjectStorage
    from mmaudio_mcp.pixazo import PixazoClient
    from mmaudio_mcp.processing_options import ProcessedAudio, ProcessOptions
    from mmaudio_mcp.store import JobStore, Leases

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Limits:
    """Bounds on what one job may cost in time and space, whatever the upstream does."""

    http_timeout: float = 30.0
    """Connect/read/write timeout of one request to Pixazo or its CDN."""
    download_seconds: float = 120.0
    """A whole media download, however slowly the CDN drips it."""
    max_media_bytes: int = DEFAULT_MAX_BYTES
    downloads_at_once: int = 8
    """Media downloads streaming at once in this process; more wait their turn (their time limit starts then).
    Each chunk of each stream is handled on the event loop: 200 jobs completing together started 200 streams (plus
    their file, decode and database steps) in the same second, and a concurrent request waited 50-110 ms behind
    them; 8 streams keep that queue short and still fill the line (a burst's audio is bandwidth-bound anyway)."""


GC_YOUNG_THRESHOLD: Final = 10_000
"""Net allocations between two collections of the youngest generation, from the first submit on (default 700)."""


class JobFiles:
    """Files for the jobs in one output folder."""

    def __init__(
        self,
        client: PixazoClient,
        store: JobStore,
        output_dir: Path,
        limits: Limits,
        refresh: Callable[[JobRecord], Awaitable[JobRecord]],
        *,
        leases: Leases | None = None,
        objects: ObjectStorage | None = None,
    ) -> None:
        """`refresh` re-reads a job's status from Pixazo (for a fresh media URL when the stored one fails);
        `leases` make one process at a time download a job (others wait for its file); with `objects`, the audio
        is kept in object storage too, and the output folder is only this replica's cache of it."""
        self._leases = leases
        self._objects = objects
        self._client = client
        self._store = store
        self._output_dir = output_dir
        self._limits = limits
        self._refresh = refresh
        self._locks: dict[str, anyio.Lock] = {}
        self._output_checked = False
        self._streams = anyio.CapacityLimiter(limits.downloads_at_once)

    @asynccontextmanager
    async def _job_lock(self, request_id: str) -> AsyncGenerator[None]:
        """One writer per job at a time; the lock is dropped once nobody holds or awaits it (a long-running server
        sees many jobs)."""
        lock = self._locks.setdefault(request_id, anyio.Lock())
        try:
            async with lock:
                yield
        finally:
            if not lock.locked() and not lock.statistics().tasks_waiting:
                self._locks.pop(request_id, None)

    async def clean_leftovers(self) -> None:
        """Remove temporary files that interrupted writes left in the output folder (none another process is
        writing); run once at start-up, in the background."""
        try:
            await remove_leftovers(self._output_dir)
        except OSError as exc:
            logger.warning("could not clean interrupted downloads in %s: %s", self._output_dir, exc)

    async def ensure(self, record: JobRecord, *, verify: bool = False) -> JobRecord:
        """Download the audio once per job: concurrent callers wait for the first, later ones reuse the file."""
        request_id = record.request_id
        assert request_id is not None
        async with self._job_lock(request_id):
            record = await self._store.get(request_id) or record
            if await self._here(record, verify=verify):
                return record
            # One process at a time downloads a job: the lease holder. Another waits for its file, or for its
            # lease to end (a holder that died is taken over at most one lease later).
            leases = self._leases
            while leases is not None and not await leases.acquire(request_id):
                await anyio.sleep(leases.follow_seconds)
                record = await self._store.get(request_id) or record
                if await self._here(record, verify=verify):
                    return record
            try:
                record = await self._store.get(request_id) or record
                if await self._here(record, verify=verify):
                    return record
                return await self._download_and_record(record)
            finally:
                if leases is not None:
                    await leases.release(request_id)

    async def _here(self, record: JobRecord, *, verify: bool) -> bool:
        """Whether the job's file is usable here; with object storage, a file another replica recorded is first
        copied into this replica's cache (checked against the recorded sha256)."""
        if self._objects is None or record.file is None or record.request_id is None:
            return await _usable(record, verify=verify)
        path = Path(record.file.path)
        if not verify and await anyio.Path(path).is_file():
            return True
        if verify and await verify_file(path, record.file.sha256):
            return True
        if path.parent.resolve() != self._output_dir.resolve():
            return False  # recorded by a replica with another output folder: fetched from Pixazo again instead
        key = self._objects.key(record.request_id, path.name)
        return await self._objects.fetch(key, path, record.file.sha256)

    async def presigned(self, record: JobRecord) -> str | None:
        """A time-limited URL of the job's stored audio for remote clients, when object storage signs them."""
        if self._objects is None or record.file is None or record.request_id is None:
            return None
        try:
            return await self._objects.presigned(self._objects.key(record.request_id, Path(record.file.path).name))
        except MmaudioError as exc:  # the result is still useful without it
            logger.warning("no presigned URL for %s: %s", record.request_id, exc.message)
            return None

    async def _download_and_record(self, record: JobRecord) -> JobRecord:
        try:
            file = await self._fetch(record)
            if self._objects is not None and record.request_id is not None:
                key = self._objects.key(record.request_id, Path(file.path).name)
                await self._objects.put(key, Path(file.path), file.sha256)  # before the row names the file
        except MediaError as exc:
            await self._store.save(record_error(record, exc))
            raise type(exc)(
                f"Job {record.request_id} completed, but its audio could not be saved: {exc.message} "
                f'Call download_audio(request_id="{record.request_id}") to try again.'
            ) from exc
        except OSError as exc:
            error = local_storage_error(exc, self._output_dir, record.request_id or "")
            await self._store.save(record_error(record, error))
            raise error from exc
        record = record.model_copy(update={"file": file, "error": None, "updated_at": utc_now()})
        fence = self._leases.holder if self._leases is not None else None
        try:
            return await self._store.save(record, fence=fence)
        except LeaseLostError:  # held up past the lease: another process took over; its row wins, the file is here
            return await self._store.get(record.request_id or "") or record

    async def _fetch(self, record: JobRecord) -> AudioFile:
        """Download the media, asking Pixazo once for a fresh URL if the stored one fails."""
        try:
            return await self._download(record)
        except MediaError:
            return await self._download(await self._refresh(record))

    async def _download(self, record: JobRecord) -> AudioFile:
        if not record.media_url:
            raise MediaError("Pixazo reported the job complete but gave no media URL; try download_audio again.")
        prompt = record.params.prompt if record.params else ""
        dest = self._output_dir / audio_filename(prompt, record.request_id or record.local_id)
        if not self._output_checked:
            self._output_checked = True
            if removed := await remove_stale_parts(self._output_dir):
                logger.info("removed %d interrupted download(s) from %s", removed, self._output_dir)
        cap, deadline = self._limits.max_media_bytes, self._limits.download_seconds
        async with self._streams:
            try:
                with anyio.fail_after(deadline):
                    async with self._client.stream_media(record.media_url, max_bytes=cap) as chunks:
                        return await save_audio(chunks, dest, max_bytes=cap)
            except TimeoutError as exc:
                message = f"The audio download took longer than {deadline:g} s (the CDN is too slow)."
                raise MediaError(message) from exc

    async def variant(self, record: JobRecord, options: ProcessOptions) -> tuple[JobRecord, AudioFile]:
        """Return the processed variant, made once per job and options and reused while its checksum holds."""
        assert record.request_id is not None
        key = options.variant_key()
        async with self._job_lock(record.request_id):
            record = await self._store.get(record.request_id) or record
            cached = record.variants.get(key)
            if cached is not None and await verify_file(Path(cached.path), cached.sha256):
                return record, cached
            assert record.file is not None
            source = Path(record.file.path)
            dest = variant_path(source, key, options.format)
            try:
                processed = await run_audio_work(process_file, source, dest, options)
            except OSError as exc:
                raise local_storage_error(exc, dest.parent, record.request_id) from exc
            file = await _described(processed)
            # The store merges variants: one made by another process meanwhile is kept beside this one.
            record = record.model_copy(update={"variants": {key: file}, "updated_at": utc_now()})
            record = await self._store.save(record)
            return record, file

    async def place(
        self, file: AudioFile, destination: Destination | None, filename: str | None, *, overwrite: bool
    ) -> AudioFile:
        """Copy the file into the destination folder (the output folder by default) under its name or `filename`."""
        destination = destination or resolve_destination(None, (), self._output_dir)
        name = checked_filename(filename, file.format) if filename else Path(file.path).name
        try:
            target = await place_copy(Path(file.path), file.sha256, destination, name, overwrite=overwrite)
        except OSError as exc:
            raise local_storage_error(exc, destination.folder) from exc
        return file.model_copy(
            update={"path": str(target), "uri": target.as_uri(), "relative_path": destination.relative(target)}
        )


@dataclass
class _Pending:
    """One download running in the background, and how it ended."""

    done: anyio.Event = field(default_factory=anyio.Event)
    record: JobRecord | None = None
    failure: MmaudioError | None = None


class BackgroundDownloads:
    """Downloads that outlive the call that started them: a call waits for one only as long as its budget allows,
    so a CDN that drips the file never holds a tool call past its wait (the file still lands, for the next call)."""

    def __init__(self, files: JobFiles) -> None:
        self._files = files
        self._pending: dict[str, _Pending] = {}
        self._task_group: TaskGroup | None = None
        self._warmed = False

    async def __aenter__(self) -> Self:
        self._task_group = anyio.create_task_group()
        await self._task_group.__aenter__()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> bool | None:
        assert self._task_group is not None
        self._task_group.cancel_scope.cancel()
        await self._task_group.__aexit__(None, None, None)
        return None

    def warm_up(self) -> None:
        """Import the audio libraries a completion needs (numpy, soundfile, soxr, and pyloudnorm with scipy for the
        preview's loudness: ~1.5 s of import work holding the GIL), once, in the background: started at the first
        submit, done long before the first job completes, so the import does not land on a burst of completions.
        Then the heap built so far is frozen (`freeze_long_lived`)."""
        if not self._warmed and self._task_group is not None:
            self._warmed = True
            self._task_group.start_soon(self._warm, name="import audio libraries")

    async def _warm(self) -> None:
        try:
            await run_audio_work(_import_audio_libraries)
        except ImportError as exc:  # the first completion will say so with its context
            logger.warning("could not import the audio libraries: %s", exc)
        freeze_long_lived()

    def running(self, request_id: str) -> bool:
        """Whether this job's audio is being downloaded right now."""
        return request_id in self._pending

    def start(self, record: JobRecord) -> _Pending:
        """Start the job's download unless one runs already; return it."""
        assert record.request_id is not None
        pending = self._pending.get(record.request_id)
        if pending is None:
            if self._task_group is None:
                raise RuntimeError("BackgroundDownloads must be used as an async context manager")
            pending = self._pending[record.request_id] = _Pending()
            self._task_group.start_soon(self._run, record, pending, name=f"download {record.request_id}")
        return pending

    async def fetch(self, record: JobRecord, budget: float) -> JobRecord:
        """Start (or join) the job's download and wait up to `budget` seconds: the record with its file, or as it
        was while the download goes on. A download that fails within the budget raises its error."""
        pending = self.start(record)
        with anyio.move_on_after(max(budget, 0.0)):
            await pending.done.wait()
        if pending.failure is not None:
            raise pending.failure
        return pending.record or record

    async def _run(self, record: JobRecord, pending: _Pending) -> None:
        assert record.request_id is not None
        try:
            pending.record = await self._files.ensure(record)
        except MmaudioError as exc:  # the row notes it (ensure saved it); a waiting call gets it too
            pending.failure = exc
        except Exception as exc:  # never let one job's bug end the task group the others share
            logger.exception("downloading %s failed unexpectedly", record.request_id)
            problem = type(exc).__name__
            pending.failure = MediaError(f"Internal error while downloading {record.request_id} ({problem}).")
        finally:
            del self._pending[record.request_id]
            pending.done.set()


def _import_audio_libraries() -> None:
    import numpy  # noqa: F401  # pyright: ignore[reportUnusedImport]
    import pyloudnorm  # noqa: F401  # pyright: ignore[reportUnusedImport, reportMissingTypeStubs]
    import soundfile  # noqa: F401  # pyright: ignore[reportUnusedImport, reportMissingTypeStubs]
    import soxr  # noqa: F401  # pyright: ignore[reportUnusedImport, reportMissingTypeStubs]


def freeze_long_lived() -> None:
    """Move every object alive now out of the cyclic garbage collector's reach (`gc.freeze`): the modules, classes
    and functions imported so far live as long as the process, yet each full collection walks all of them, with the
    GIL held. With the SDK, numpy and scipy loaded that walk took 120-330 ms, the longest stalls of the event loop in
    a burst of completions (benchmarks/concurrency.py --burst). Frozen objects are still freed when their last
    reference goes; only cycles among them would stay, which modules and classes never become.

    The youngest generation is also collected less often (every GC_YOUNG_THRESHOLD net allocations instead of 700):
    a burst allocates a few hundred thousand short-lived objects (records, replies, results), and at the default
    every tenth young collection was followed by an older one and every hundredth by a full one (36-55 ms each even
    after the freeze); collected ten times less often, the burst sees no full collection at all."""
    gc.freeze()
    young, middle, old = gc.get_threshold()
    gc.set_threshold(max(young, GC_YOUNG_THRESHOLD), middle, old)


async def _usable(record: JobRecord, *, verify: bool) -> bool:
    """Whether the job's file is recorded (and, when asked, still on disk with its checksum)."""
    if record.file is None:
        return False
    return not verify or await verify_file(Path(record.file.path), record.file.sha256)


_SAMPLE_FORMATS: Final = {"wav": "float32", "flac": "pcm24", "ogg": "vorbis", "mp3": "mp3"}


async def _described(processed: ProcessedAudio) -> AudioFile:
    """Describe a processed file the way downloads are described (with its checksum, for the cache)."""
    sha256, size = await file_digest(processed.path)
    return AudioFile(
        path=str(processed.path),
        uri=processed.path.as_uri(),
        bytes=size,
        sha256=sha256,
        sample_rate=processed.sample_rate,
        channels=processed.channels,
        sample_format=_SAMPLE_FORMATS[processed.format],
        duration_seconds=round(processed.duration_seconds, 3),
        format=processed.format,
        loudness_lufs=round(processed.loudness_lufs, 1) if processed.loudness_lufs is not None else None,
        loop_seconds=round(processed.loop_seconds, 3) if processed.loop_seconds is not None else None,
        true_peak_db=processed.true_peak_db,
        note=processed.note,
    )


def variant_path(source: Path, key: str, fmt: str) -> Path:
    """Where the variant `key` (ProcessOptions.variant_key()) of a delivered file lives: beside it. The one naming
    rule, for making variants and for finding one again by key (the audio://{request_id}/{key}.{fmt} resources)."""
    return source.with_name(f"{source.stem}-{key}.{fmt}")


def record_error(record: JobRecord, exc: MmaudioError) -> JobRecord:
    """The record with this failure noted in it (kind, message, whether trying again can help)."""
    error = JobError(kind=exc.kind, message=exc.message, retryable=exc.retryable)
    return record.model_copy(update={"error": error, "updated_at": utc_now()})


__all__ = ["BackgroundDownloads", "JobFiles", "Limits", "freeze_long_lived", "record_error", "variant_path"]
