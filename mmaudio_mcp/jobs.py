"""The job lifecycle: submit once, record durably, wait with one poller per job, download once.

`JobService` knows nothing of MCP: tools, the CLI and tests call it alike and pass a plain async progress callback.
"""

from __future__ import annotations

import logging
import secrets
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final, Self
from uuid import uuid4

import anyio
from pydantic import SecretStr

from mmaudio_mcp.audio import (
    checked_filename,
)
from mmaudio_mcp.errors import (
    ConfigurationError,
    InvalidArgumentError,
    JobFailedError,
    JobNotReadyError,
    MmaudioError,
    SpendingCapError,
    SubmissionUncertainError,
    UnknownJobError,
    UpstreamUnavailableError,
    unknown_job,
)
from mmaudio_mcp.files import BackgroundDownloads, JobFiles, Limits, record_error
from mmaudio_mcp.ledger import RUNNING_GRACE, Ledger, SpendCap, Spent, fingerprint
from mmaudio_mcp.models import AudioJob, JobError, JobRecord, JobStatus, NextStep, is_valid_request_id, utc_now
from mmaudio_mcp.objects import ObjectStorage
from mmaudio_mcp.pixazo import PixazoClient
from mmaudio_mcp.polling import Pollers, elapsed_seconds
from mmaudio_mcp.schedule import PollPolicy, eta_seconds, learn, progress_message
from mmaudio_mcp.store import DEFAULT_LEASE_SECONDS, LeaseLostError, Leases, SqliteJobStore

if TYPE_CHECKING:
    from collections.abc import AsyncGenerator, Awaitable, Callable
    from datetime import datetime
    from pathlib import Path
    from types import TracebackType

    import httpx2

    from mmaudio_mcp.models import GenerationParams, StatusReply
    from mmaudio_mcp.placement import Destination
    from mmaudio_mcp.processing_options import ProcessOptions
    from mmaudio_mcp.settings import Settings
    from mmaudio_mcp.store import JobStore

    ProgressCallback = Callable[[float, float | None, str], Awaitable[None]]
    Listen = Callable[[Callable[[str], None]], Awaitable[None]]

POKE: Final = "poll:"
"""How a job-change message asks the lease holder to poll now (mmaudio_mcp.pgstore.POKE; that module is only
imported when PostgreSQL is used)."""

logger = logging.getLogger(__name__)

HISTORY_SIZE: Final = 50
REPLAN_CHANGE: Final = 0.1
"""How much the learned speed must move before every poller recomputes its schedule."""
DOWNLOAD_GRACE: Final = 3.0
"""How far past its wait a call may run to finish a download already under way (then it goes on in the background)."""


@dataclass(frozen=True)
class Caller:
    """Who is asking: by default the server's own Pixazo key; or a client that brings its own key, whose jobs are
    stored under a salted hash of it and visible to nobody else."""

    api_key: SecretStr | None = None
    owner: str | None = None


SERVER: Final = Caller()
_NOT_JOINED: Final = (JobStatus.FAILED, JobStatus.ERROR, JobStatus.REJECTED)
"""A re-issued call never joins a job that ended like this: the user still wants audio, so it is a new take."""


@dataclass
class Attempt:
    """One generate call, as the ledger tracks it: `joins` is the job of an identical earlier call whose result
    never reached its caller, which this call takes over instead of paying again."""

    call_id: str
    joins: str | None = None


class JobService:
    """Generate, wait for and download MMAudio jobs, keeping every job in the store."""

    def __init__(
        self,
        client: PixazoClient,
        store: JobStore,
        output_dir: Path,
        *,
        limits: Limits | None = None,
        policy: PollPolicy | None = None,
        webhook_base: str | None = None,
        lease_seconds: float = DEFAULT_LEASE_SECONDS,
        ledger: Ledger | None = None,
        spend_cap: SpendCap | None = None,
        objects: ObjectStorage | None = None,
    ) -> None:
        """`lease_seconds`: how long a job's lease lasts without renewal (MMAUDIO_LEASE_SECONDS, else 20 s); a
        process that dies holding one is taken over that much later. `ledger` records calls and paid submits (by
        default beside a SQLite store's jobs); `spend_cap` is the spending guard (default: 60 jobs per 60 minutes)."""
        self._client = client
        self._store = store
        self._own_ledger = ledger is None and isinstance(store, SqliteJobStore)
        self._ledger = Ledger(store.path) if ledger is None and isinstance(store, SqliteJobStore) else ledger
        self.spend_cap = spend_cap or SpendCap()
        self._output_dir = output_dir
        self._leases = Leases(store, lease_seconds)
        self._files = JobFiles(
            client, store, output_dir, limits or Limits(), self._refresh, leases=self._leases, objects=objects
        )
        self._policy = policy or PollPolicy()
        self._webhook_base = webhook_base
        self._pollers = Pollers(
            self._step,
            self._expected,
            self._policy,
            webhooks=webhook_base is not None,
            leases=self._leases,
            learned=lambda: self._learned,
        )
        self._webhook_jobs: dict[str, str] = {}
        self._keys: dict[str, SecretStr] = {}  # owner hash -> key, in memory only, to poll for absent callers
        self._learned = learn((), self._policy)  # the prior, until a job finishes
        self._rate_learned = False
        self._downloads = BackgroundDownloads(self._files)

    async def __aenter__(self) -> Self:
        # Nothing touches disk or network here: start-up stays fast, and a host that only lists tools pays nothing.
        await self._leases.__aenter__()
        await self._downloads.__aenter__()
        await self._pollers.__aenter__()
        self._leases.start_soon(self._files.clean_leftovers, name="clean leftovers")
        if (listen := getattr(self._store, "listen", None)) is not None:
            self._leases.start_soon(lambda: self._follow_changes(listen), name="job change wake-ups")
        return self

    async def _follow_changes(self, listen: Listen) -> None:
        """Wake this process's followers the moment another replica writes a job's row (PostgreSQL NOTIFY)."""
        try:
            await listen(self._changed_elsewhere)
        except MmaudioError as exc:  # a StoreError: the followers still re-read every tick
            logger.warning("no wake-ups from other replicas: %s", exc.message)

    def _changed_elsewhere(self, message: str) -> None:
        if message.startswith(POKE):  # a webhook reached another replica: the holder polls now
            if self._leases.holds(request_id := message.removeprefix(POKE)):
                self._pollers.nudge(request_id)
        elif not self._leases.holds(message):  # our own poller's writes need no wake-up (it would poll again)
            self._pollers.nudge(message)

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> bool | None:
        try:
            return await self._pollers.__aexit__(exc_type, exc, tb)
        finally:
            try:
                await self._downloads.__aexit__(exc_type, exc, tb)
            finally:
                try:
                    await self._leases.__aexit__(exc_type, exc, tb)
                finally:
                    if self._own_ledger and self._ledger is not None:
                        with anyio.CancelScope(shield=True):
                            await self._ledger.aclose()

    # --- the three operations ---------------------------------------------------------------------------------------

    async def caller(self, api_key: str | None) -> Caller:
        """The caller for a request that may carry its own Pixazo key."""
        if not api_key:
            return SERVER
        if not api_key.isascii() or not api_key.isprintable():
            raise InvalidArgumentError("The X-Pixazo-Api-Key header holds characters no Pixazo key has; check it.")
        owner = await self._store.owner_of(api_key)
        self._keys[owner] = SecretStr(api_key)
        return Caller(SecretStr(api_key), owner)

    async def generate(
        self,
        params: GenerationParams,
        *,
        wait_seconds: float,
        progress: ProgressCallback | None = None,
        caller: Caller = SERVER,
        attempt: Attempt | None = None,
    ) -> AudioJob:
        """Submit one job, record it, then wait up to wait_seconds for the audio. Within an `attempt` that joins an
        earlier call's job, nothing is submitted: that job is waited for instead (and the result says so)."""
        self._client.require_key(caller.api_key)
        await self._learn_rate_once()
        joined = await self._store.get(attempt.joins) if attempt is not None and attempt.joins else None
        if joined is not None:
            record = joined
        else:
            record = await self._submit(params, caller)
            if attempt is not None and self._ledger is not None and record.request_id is not None:
                with anyio.CancelScope(shield=True):  # no checkpoint since the shielded save: this always runs
                    await self._ledger.bind(attempt.call_id, record.request_id)
        if wait_seconds > 0 and not record.status.is_terminal:
            deadline = anyio.current_time() + wait_seconds
            record = await self._pollers.wait(record, wait_seconds, progress)
            record = await self._finish(record, deadline)
        elif wait_seconds > 0:
            record = await self._finish(record, anyio.current_time() + wait_seconds)
        job = self.view(record)
        return job.model_copy(update={"reattached": True}) if joined is not None else job

    @asynccontextmanager
    async def attempt(
        self, params: GenerationParams, caller: Caller = SERVER, extra: str | None = None
    ) -> AsyncGenerator[Attempt]:
        """Track one generate call (pass the Attempt to `generate`): if an identical call (same key, parameters and
        `extra`, e.g. the folder) ended within the last few minutes without its caller receiving a result, this one
        joins that call's job instead of paying again. The call counts as answered when the block ends normally or
        with an error (the caller hears of both); cancelled, it is left for the same call made again."""
        if self._ledger is None:
            yield Attempt(uuid4().hex)
            return
        key = fingerprint(params, caller.owner, extra)
        joins = None
        until = anyio.current_time() + RUNNING_GRACE
        while joins is None:
            found, running = await self._ledger.abandoned(key)
            for request_id in found:
                record = await self._store.get(request_id)
                if record is not None and record.owner == caller.owner and record.status not in _NOT_JOINED:
                    joins = request_id
                    break
            if joins is not None or not running or anyio.current_time() > until:
                break
            await anyio.sleep(0.05)  # an identical call is still running: it may be ending (a re-issue follows it)
        attempt = Attempt(uuid4().hex, joins)
        await self._ledger.begin(attempt.call_id, key, self._leases.holder, joins)
        answered = False
        try:
            yield attempt
            answered = True
        except Exception:
            answered = True  # the caller gets the error as its result
            raise
        finally:
            with anyio.CancelScope(shield=True):
                await self._ledger.end(attempt.call_id, answered=answered)

    async def peek(self, request_id: str, caller: Caller = SERVER) -> tuple[AudioJob, str]:
        """The caller's job as stored (no network call), and where it is in the words progress notifications use."""
        record = await self._store.get(request_id)
        if record is None or record.owner != caller.owner:
            raise unknown_job(request_id)
        elapsed = elapsed_seconds(record)
        words = progress_message(record.status, elapsed, self._expected(record), heard=record.polled_at is not None)
        return self.view(record), words

    @property
    def ledger(self) -> Ledger | None:
        """Where calls, paid submits and tasks are recorded (None for a store without one)."""
        return self._ledger

    async def spent(self, caller: Caller = SERVER) -> Spent:
        """The caller's paid submits in the spending guard's current window."""
        if self._ledger is None:
            return Spent(0, None)
        return await self._ledger.spent(caller.owner, self.spend_cap)

    async def check(
        self,
        request_id: str,
        *,
        wait_seconds: float = 0,
        progress: ProgressCallback | None = None,
        caller: Caller = SERVER,
    ) -> AudioJob:
        """Report a job: from the store when it is finished, else from Pixazo, waiting if asked."""
        await self._learn_rate_once()
        deadline = anyio.current_time() + wait_seconds
        record = await self._find(request_id, caller)
        if not record.status.is_terminal:
            if wait_seconds > 0:
                record = await self._pollers.wait(record, wait_seconds, progress)
            else:
                record = await self._step(record)
        record = await self._finish(record, deadline)
        return self.view(record).model_copy(update={"audio_url": await self._files.presigned(record)})

    async def _finish(self, record: JobRecord, deadline: float) -> JobRecord:
        """Wait for a completed job's audio until the call's deadline (plus a grace of DOWNLOAD_GRACE seconds);
        past it the download goes on in the background and the job is returned as downloading."""
        if record.status is not JobStatus.COMPLETED or record.file is not None:
            return record
        budget = deadline - anyio.current_time() + DOWNLOAD_GRACE
        return await self._downloads.fetch(record, budget)

    @property
    def output_dir(self) -> Path:
        return self._output_dir

    async def download(
        self,
        request_id: str,
        *,
        filename: str | None = None,
        caller: Caller = SERVER,
        options: ProcessOptions | None = None,
        destination: Destination | None = None,
        overwrite: bool = False,
    ) -> AudioJob:
        """Make sure the job's audio is on disk (reusing a verified copy), processed as asked (each variant made
        once, from the delivered WAV, which is never replaced) and copied where asked; describe the result."""
        if filename is not None:
            checked_filename(filename, options.format if options else "wav")  # refuse bad names before any work
        record = await self._find(request_id, caller)
        # A file this call fetches was checked on the way in; only one from an earlier call is hashed again.
        earlier_file = record.file is not None
        if not record.status.is_terminal:
            record = await self._step(record)
        if record.status is not JobStatus.COMPLETED:
            raise _not_downloadable(self.view(record))
        record = await self._files.ensure(record, verify=earlier_file)
        assert record.file is not None
        file = record.file
        if options is not None and not options.is_identity:
            record, file = await self._files.variant(record, options)
        if filename is not None or destination is not None:
            file = await self._files.place(file, destination, filename, overwrite=overwrite)
        return self.view(record).model_copy(update={"file": file, "audio_url": await self._files.presigned(record)})

    async def read_audio(self, request_id: str, *, caller: Caller = SERVER) -> bytes:
        """Return the WAV bytes of a finished job, downloading them first if needed."""
        job = await self.download(request_id, caller=caller)
        assert job.file is not None
        return await anyio.Path(job.file.path).read_bytes()

    async def on_webhook(self, token: str, request_id_hint: str | None = None) -> bool:
        """Handle a callback for the job owning this token: poll it now. The body is never trusted (callbacks are
        not signed), so only the status Pixazo gives us matters; duplicates are harmless. False if unknown.

        `request_id_hint` (from the callback's body) completes a row whose submit answer was lost (its process was
        killed between Pixazo's answer and the row update): it is used only if Pixazo confirms the job under the
        same key."""
        request_id = self._webhook_jobs.get(token)
        if request_id is None:
            pending = [job for job in await self._store.unfinished() if job.webhook_token == token]
            if pending and pending[0].request_id is None and request_id_hint is not None:
                pending[0] = await self._recover_submit(pending[0], request_id_hint)
            request_id = pending[0].request_id if pending else None
        record = await self._store.get(request_id) if request_id else None
        if record is None:
            return False
        if not record.status.is_terminal:
            self._pollers.wake(record)
            poke = getattr(self._store, "poke", None)
            if poke is not None and record.request_id and not self._leases.holds(record.request_id):
                await poke(record.request_id)  # the replica polling it may be another one
        return True

    async def _recover_submit(self, record: JobRecord, request_id: str) -> JobRecord:
        """Give a SUBMITTING row the request_id a callback names, once Pixazo confirms that job under the row's key."""
        key = self._keys.get(record.owner) if record.owner is not None else None
        if (record.owner is not None and key is None) or not is_valid_request_id(request_id):
            return record  # a client's own key is not known here: the job cannot be checked
        if await self._store.get(request_id) is not None:
            return record  # that job already has its row
        try:
            reply = await self._client.status(request_id, api_key=key)
        except MmaudioError as exc:
            logger.warning("a callback named %s, which Pixazo did not confirm: %s", request_id, exc.message)
            return record
        logger.warning("recovered %s from its callback (its submit's answer was lost)", request_id)
        found = record.model_copy(update={"request_id": request_id, "error": None, "updated_at": utc_now()})
        return await self._apply(await self._store.save(found), reply)

    async def unfinished(self, caller: Caller = SERVER) -> list[JobRecord]:
        """Return the caller's jobs that have not finished (to resume after a restart), unanswered submits included."""
        return [job for job in await self._store.unfinished() if job.owner == caller.owner]

    async def recent(self, limit: int = 20, caller: Caller = SERVER) -> list[JobRecord]:
        """Return the caller's newest jobs, including ones whose submit never got an answer."""
        return [job for job in await self._store.recent(limit) if job.owner == caller.owner]

    def view(self, record: JobRecord) -> AudioJob:
        """Describe a stored job the way tools report it."""
        if record.request_id is None:
            raise UnknownJobError("This job never received a request_id from Pixazo.")
        elapsed = elapsed_seconds(record)
        running = not record.status.is_terminal
        return AudioJob(
            request_id=record.request_id,
            status=record.status,
            params=record.params,
            created_at=record.created_at,
            updated_at=record.updated_at,
            completed_at=record.finished_at or record.completed_at,
            elapsed_seconds=round(elapsed, 1),
            eta_seconds=round(eta_seconds(elapsed, self._expected(record)), 1) if running else None,
            media_url=record.media_url,
            file=record.file,
            error=record.error,
            next=_next_step(record),
            downloading=record.file is None and self._downloads.running(record.request_id),
        )

    # --- submit -----------------------------------------------------------------------------------------------------

    async def _submit(self, params: GenerationParams, caller: Caller) -> JobRecord:
        now = utc_now()
        token = secrets.token_urlsafe(24) if self._webhook_base else None
        record = JobRecord(
            local_id=uuid4().hex,
            params=params,
            created_at=now,
            updated_at=now,
            webhook_token=token,
            owner=caller.owner,
        )
        if self._ledger is not None:
            spent = await self._ledger.reserve(caller.owner, record.local_id, self.spend_cap)
            if spent is not None:
                raise _over_cap(spent, self.spend_cap)
        await self._store.save(record)
        webhook_url = f"{self._webhook_base}/webhooks/{token}" if token else None
        try:
            reply = await self._client.submit(params, webhook_url=webhook_url, api_key=caller.api_key)
        except (SubmissionUncertainError, UpstreamUnavailableError) as exc:
            await self._store.save(record_error(record, exc))
            raise
        except MmaudioError as exc:
            await self._store.save(record_error(record, exc).model_copy(update={"status": JobStatus.REJECTED}))
            if self._ledger is not None:
                await self._ledger.refund(record.local_id)  # refused: nothing was billed
            raise
        now = utc_now()
        record = record.model_copy(
            update={"request_id": reply.request_id, "status": JobStatus.QUEUED, "submitted_at": now, "updated_at": now}
        )
        with anyio.CancelScope(shield=True):  # the 202 arrived: this row must exist even if the call is cancelled
            await self._store.save(record)
        self._downloads.warm_up()  # the audio libraries, before any job of this process completes
        if token:
            self._webhook_jobs[token] = reply.request_id
        logger.info("submitted %s", reply.request_id)
        return record

    # --- polling ----------------------------------------------------------------------------------------------------

    async def _step(self, record: JobRecord) -> JobRecord:
        """Poll once; once the job is complete, start fetching its audio in the background (it goes on even if the
        caller goes away; a caller waits for it within its own budget, see _finish). Only the process holding the
        job's lease does this; any other re-reads the row that process keeps up to date."""
        request_id = record.request_id
        assert request_id is not None
        if not await self._leases.acquire(request_id):
            return await self._store.get(request_id) or record
        try:
            record = await self._store.get(request_id) or record  # the last holder may have got further
            if not record.status.is_terminal:
                record = await self._apply(record, await self._status(record))
        finally:
            await self._leases.release(request_id)
        if record.status is JobStatus.COMPLETED and record.file is None:
            self._downloads.start(record)  # a paid result is saved even if the last waiter leaves
        return record

    async def _apply(self, record: JobRecord, reply: StatusReply) -> JobRecord:
        """Merge a status answer into the record, saving it when something changed."""
        media_url = reply.output.media_url[0] if reply.output and reply.output.media_url else record.media_url
        heard = utc_now()  # our clock only: Pixazo's stamps never enter elapsed time, progress or the ETA
        update: dict[str, object] = {"status": reply.status, "media_url": media_url}
        if reply.status.is_terminal:
            update["completed_at"] = reply.completed_at or heard
            update["finished_at"] = record.finished_at or heard
            update["run_seconds"] = _run_seconds(record, reply, heard)
        if reply.status in (JobStatus.FAILED, JobStatus.ERROR):
            update["error"] = _failure(reply)
        seen = {"polled_at": heard} | ({} if reply.status.is_terminal else {"pending_at": heard})
        if all(getattr(record, key) == value for key, value in update.items()):
            return record.model_copy(update=seen)  # nothing worth a write: remembered in memory only
        update |= seen
        record = record.model_copy(update={**update, "updated_at": utc_now()})
        rid = record.request_id or ""
        with anyio.CancelScope(shield=True):  # fenced: a process that lost the lease writes nothing
            try:
                record = await self._store.save(record, fence=self._leases.holder if self._leases.holds(rid) else None)
            except LeaseLostError:
                return await self._store.get(rid) or record
        if record.status is JobStatus.COMPLETED:
            await self._learn_rate()
        return record

    # --- lookups and estimates --------------------------------------------------------------------------------------

    async def _refresh(self, record: JobRecord) -> JobRecord:
        """Re-read the job's status from Pixazo (a fresh media URL, when the stored one failed)."""
        return await self._apply(record, await self._status(record))

    async def _status(self, record: JobRecord) -> StatusReply:
        """Ask Pixazo about a job with the key it was made with."""
        api_key = self._keys.get(record.owner) if record.owner else None
        if record.owner and api_key is None:
            raise ConfigurationError(
                f"Job {record.request_id} was made with a client's own Pixazo key, which this server does not keep; "
                "it resumes when that client calls check_status again."
            )
        return await self._client.status(record.request_id or "", api_key=api_key)

    async def _find(self, request_id: str, caller: Caller) -> JobRecord:
        """Return the caller's stored job, or adopt one made elsewhere if Pixazo knows it under the caller's key."""
        if not is_valid_request_id(request_id):
            raise InvalidArgumentError(
                f"{request_id[:80]!r} is not a Pixazo request_id (expected something like "
                "'mmaudio-v2-text-to-audio_<uuid>', as returned by generate_audio)."
            )
        record = await self._store.get(request_id)
        if record is not None:
            if record.owner != caller.owner:
                raise unknown_job(request_id)  # another key's job: exactly as if it did not exist
            return record
        now = utc_now()
        adopted = JobRecord(
            local_id=uuid4().hex,
            request_id=request_id,
            status=JobStatus.QUEUED,
            created_at=now,
            updated_at=now,
            owner=caller.owner,
        )
        reply = await self._client.status(request_id, api_key=caller.api_key)
        adopted = adopted.model_copy(update={"submitted_at": now})  # our clock: Pixazo's may be off ours
        return await self._apply(adopted, reply)

    def _expected(self, record: JobRecord) -> float:
        return self._learned.expected(record.params, self._policy)

    async def _learn_rate(self) -> None:
        before = self._learned
        self._learned = learn(await self._store.recent(HISTORY_SIZE), self._policy)
        self._rate_learned = True
        moved = self._learned.expected(None, self._policy) / before.expected(None, self._policy) - 1
        if before.samples == 0 or abs(moved) > REPLAN_CHANGE:
            self._pollers.replan()  # worth every poller's attention (not each small shift in a burst of completions)

    async def _learn_rate_once(self) -> None:
        if not self._rate_learned:
            await self._learn_rate()


def _run_seconds(record: JobRecord, reply: StatusReply, heard: datetime) -> float | None:
    """How long the job ran, for learning: bracketed by our own observations (after the last poll that saw it
    running, by the first that saw it done), refined by Pixazo's stamps only where they agree with that bracket (its
    clock may be off ours, and its zone-less stamps may not be UTC)."""
    if record.submitted_at is None:
        return None  # adopted: we did not see it start
    start = record.submitted_at
    high = (heard - start).total_seconds()
    low = (record.pending_at - start).total_seconds() if record.pending_at else 0.0
    low, high = max(low, 0.0), max(high, 0.0)
    if reply.created_at and reply.completed_at:
        seconds = (reply.completed_at - reply.created_at).total_seconds()
        if reply.completed_at.microsecond == 0 and reply.created_at.microsecond != 0:
            seconds += 0.5  # completed_at comes truncated to the second: unbiased, the ETA is not learned too low
        if low - 1.0 <= seconds <= high + 1.0:  # one second of slack: the stamps have whole-second precision
            return min(max(seconds, low), high)
    return (low + high) / 2 if low > 0 else high


def _over_cap(spent: Spent, cap: SpendCap) -> SpendingCapError:
    minutes = max((spent.frees_at or time.time()) - time.time(), 0) / 60
    frees = f" The next place frees in about {max(minutes, 1):.0f} min." if spent.frees_at else ""
    return SpendingCapError(
        f"Spending guard: {spent.count} jobs were already paid with this key in the last {cap.window_minutes:g} "
        f"minutes (the cap is {cap.jobs}), so this one was not submitted.{frees} To allow more, raise "
        "MMAUDIO_SPEND_CAP (jobs per window) or lower MMAUDIO_SPEND_WINDOW_MINUTES in the server's environment and "
        "restart it; MMAUDIO_SPEND_CAP=0 turns the guard off."
    )


def _failure(reply: StatusReply) -> JobError:
    detail = (reply.error or "no reason given").strip()[:300]
    if reply.status is JobStatus.ERROR:
        return JobError(kind="job_error", message=f"Pixazo hit a system error: {detail}. You were not charged.")
    return JobError(kind="job_failed", message=f"The generation failed at Pixazo: {detail}.")


def _not_downloadable(job: AudioJob) -> MmaudioError:
    if job.status.is_terminal:
        reason = job.error.message if job.error else "it did not complete"
        return JobFailedError(f"Job {job.request_id} ended {job.status.value}, so there is no audio: {reason}")
    return JobNotReadyError(
        f"Job {job.request_id} is still {job.status.value} (about {job.eta_seconds or 0:.0f} s left). "
        f'Call check_status(request_id="{job.request_id}", wait_seconds=30), then download_audio.'
    )


def _next_step(record: JobRecord) -> NextStep | None:
    """What should happen next, as data: the tools and the terminal each word it their way."""
    rid = record.request_id
    if not record.status.is_terminal:
        return NextStep(action="wait", request_id=rid)
    if record.status is JobStatus.COMPLETED and record.file is None:
        return NextStep(action="download", request_id=rid)
    if record.status is not JobStatus.COMPLETED:
        return NextStep(action="generate_again", request_id=rid)
    return None


@asynccontextmanager
async def open_job_service(
    settings: Settings,
    *,
    http_transport: httpx2.AsyncBaseTransport | None = None,
    policy: PollPolicy | None = None,
    limits: Limits | None = None,
) -> AsyncGenerator[JobService]:
    """Assemble the Pixazo client, the store and the service from `settings`, and close them in order afterwards.
    The HTTP client and the database open on first use: a host that only lists tools pays for neither. With a
    database URL (MMAUDIO_DATABASE_URL), jobs live in that PostgreSQL database, shared by every replica; with a
    storage URL (MMAUDIO_STORAGE_URL, s3://bucket/prefix) their audio lives in that bucket, the output folder being a
    cache. Webhooks are asked for when an HTTP transport has a public URL (MMAUDIO_PUBLIC_URL)."""
    database_url = settings.database_url.get_secret_value() if settings.database_url else None
    storage_url = settings.storage_url
    webhook_base = settings.public_url if settings.transport != "stdio" else None
    limits = limits or Limits()
    client = PixazoClient(
        None, settings.api_key, settings.gateway_url, transport=http_transport, timeout=limits.http_timeout
    )
    store: JobStore
    ledger: Ledger | None = None  # SQLite: the service keeps its ledger beside the jobs itself
    if database_url:
        from mmaudio_mcp.pgledger import PostgresLedger  # replicas only: stdio never loads the driver
        from mmaudio_mcp.pgstore import PostgresJobStore

        store = PostgresJobStore(database_url)
        ledger = PostgresLedger(store)
    else:
        store = SqliteJobStore.in_folder(settings.state_dir)
    try:
        service = JobService(
            client,
            store,
            settings.output_dir,
            limits=limits,
            policy=policy,
            webhook_base=webhook_base,
            lease_seconds=settings.lease_seconds,
            spend_cap=SpendCap(settings.spend_cap, settings.spend_window_minutes),
            objects=ObjectStorage(storage_url, presign_seconds=settings.presign_seconds) if storage_url else None,
            ledger=ledger,
        )
        async with service:
            yield service
    finally:
        with anyio.CancelScope(shield=True):
            await store.aclose()
            await client.aclose()


__all__ = ["SERVER", "Attempt", "Caller", "JobService", "Limits", "open_job_service"]
