"""Play the Pixazo gateway for MMAudio v2 offline: submit, status, media and webhooks, with real WAV audio and faults.

The wire contract is re-implemented from the published API docs, not imported from the client, so drift shows up
as failing tests. `/_sandbox/` admin routes let a test running the sandbox in another process drive it.

Timing is clock-driven with no background task: each job's schedule (queue wait, optional concurrency limit,
jittered processing time) and fate are fixed at submit, and every answer reads the schedule against the clock.
Only webhook delivery needs a task: `Sandbox.deliver_webhooks`, which the app's lifespan also runs.

Hostile faults (slow or huge media, hanging submits and polls) only show their effect under a real server:
`httpx2.ASGITransport` buffers whole responses and enforces no timeout. A hanging handler ends when its client
disconnects (or the server cancels it), so it never keeps a server from shutting down.
"""

from __future__ import annotations

import hashlib
import heapq
import hmac
import ipaddress
import json
import logging
import random
import time
import uuid
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from enum import StrEnum
from typing import TYPE_CHECKING, Final, cast
from urllib.parse import urlsplit

import anyio
import anyio.lowlevel
from starlette.applications import Starlette
from starlette.responses import JSONResponse, RedirectResponse, Response, StreamingResponse
from starlette.routing import Route

from mmaudio_mcp.sandbox_audio import SAMPLE_RATE, WAV_HEADER_BYTES, wav_for, wav_header
from mmaudio_mcp.sandbox_state import SandboxState, StoredJob

if TYPE_CHECKING:
    from collections.abc import AsyncGenerator, AsyncIterator, Callable
    from pathlib import Path

    import httpx2
    from starlette.datastructures import Headers
    from starlette.requests import Request

__all__ = [
    "SAMPLE_RATE",
    "SANDBOX_API_KEY",
    "Fault",
    "FaultKind",
    "JobTiming",
    "Sandbox",
    "SandboxConfig",
    "SandboxStats",
    "create_sandbox",
    "expected_seconds",
]

logger = logging.getLogger(__name__)

SANDBOX_API_KEY = "sandbox-key"
MODEL_ID = "mmaudio-v2-text-to-audio"
SUBMIT_PATH = f"/{MODEL_ID}/v1/{MODEL_ID}-request"
KEY_HEADER = "Ocp-Apim-Subscription-Key"
WEBHOOK_TIMEOUT = 5.0
DRIP_CHUNK_BYTES = 1024
HUGE_CHUNK_BYTES = 64 * 1024
KEY_HASH_CHARS = 12
_NOT_WAV_PAGE = b"<!DOCTYPE html><html><head><title>Error</title></head><body><h1>Access Denied</h1></body></html>"


class FaultKind(StrEnum):
    """A failure or quirk the sandbox can inject, as the real gateway, model or CDN shows it (see FAULTS)."""

    UNAUTHORIZED = "unauthorized"
    FORBIDDEN = "forbidden"
    RATE_LIMITED = "rate_limited"
    BAD_REQUEST = "bad_request"
    INSUFFICIENT_BALANCE = "insufficient_balance"
    SUBMIT_500 = "submit_500"
    SUBMIT_HANG = "submit_hang"
    SUBMIT_NO_ID = "submit_no_id"
    SUBMIT_ODD_ID = "submit_odd_id"
    SUBMIT_LONG_ID = "submit_long_id"
    JOB_FAILED = "job_failed"
    JOB_ERROR = "job_error"
    POLL_500 = "poll_500"
    POLL_HANG = "poll_hang"
    POLL_DRIP = "poll_drip"
    POLL_HUGE = "poll_huge"
    POLL_UNKNOWN_STATUS = "poll_unknown_status"
    TRUNCATED_WAV = "truncated_wav"
    NOT_WAV = "not_wav"
    MEDIA_404 = "media_404"
    SLOW_MEDIA = "slow_media"
    HUGE_MEDIA = "huge_media"
    MEDIA_REDIRECT_FILE = "media_redirect_file"
    MEDIA_REDIRECT_OTHER_HOST = "media_redirect_other_host"
    MEDIA_RF64 = "media_rf64"
    MEDIA_FLAC = "media_flac"
    MEDIA_OGG = "media_ogg"
    MEDIA_OPUS = "media_opus"
    MEDIA_MP3 = "media_mp3"
    TRUNCATED_FLAC = "truncated_flac"


FAULTS: Final[dict[FaultKind, tuple[str, str]]] = {
    # kind: (where it fires, what the client sees). Every switch the sandbox has is here; the steady behaviours
    # (speed unlike the client's prior, jitter, clock skew, zone of the zone-less stamps) are SandboxConfig fields.
    FaultKind.UNAUTHORIZED: ("gateway", "401 on every gateway call, even with the right key"),
    FaultKind.FORBIDDEN: ("gateway", "403 on every gateway call"),
    FaultKind.RATE_LIMITED: ("gateway", "429 + Retry-After: 1; plain text body on submit, empty body on status"),
    FaultKind.BAD_REQUEST: ("submit", '400 "Model not found"'),
    FaultKind.INSUFFICIENT_BALANCE: ("submit", "402"),
    FaultKind.SUBMIT_500: ("submit", "500 with an HTML body"),
    FaultKind.SUBMIT_HANG: ("submit", "the job is created, then the submit never answers: possibly billed"),
    FaultKind.SUBMIT_NO_ID: ("submit", "the job is created, then 202 with an HTML body and no request_id"),
    FaultKind.SUBMIT_ODD_ID: ("submit", "the job is created under the request_id '../../etc/passwd'"),
    FaultKind.SUBMIT_LONG_ID: ("submit", "the job is created under a 10,000-character request_id"),
    FaultKind.JOB_FAILED: ("job", "the next job ends FAILED"),
    FaultKind.JOB_ERROR: ("job", "the next job ends ERROR"),
    FaultKind.POLL_500: ("status", "500 or 502 (alternating) with an HTML body"),
    FaultKind.POLL_HANG: ("status", "never answers, until the client gives up"),
    FaultKind.POLL_DRIP: ("status", "the right answer, one byte every drip_seconds"),
    FaultKind.POLL_HUGE: ("status", "200 with a JSON body of huge_status_bytes (a padded error field)"),
    FaultKind.POLL_UNKNOWN_STATUS: ("status", 'the status is "DONE" (not a documented value)'),
    FaultKind.TRUNCATED_WAV: ("media", "the WAV cut in half; its header still promises all the data"),
    FaultKind.NOT_WAV: ("media", "200 with an HTML page labelled audio/wav"),
    FaultKind.MEDIA_404: ("media", "404"),
    FaultKind.SLOW_MEDIA: ("media", "the valid WAV in 1 KiB chunks, drip_seconds apart"),
    FaultKind.HUGE_MEDIA: ("media", "a silent WAV whose header and Content-Length say huge_media_bytes"),
    FaultKind.MEDIA_REDIRECT_FILE: ("media", "302 to file:///etc/passwd"),
    FaultKind.MEDIA_REDIRECT_OTHER_HOST: ("media", "302 to a link-local metadata service"),
    FaultKind.MEDIA_RF64: ("media", "the audio as RF64 (64-bit WAV), float32"),
    FaultKind.MEDIA_FLAC: ("media", "the audio as FLAC, 24-bit, labelled application/octet-stream"),
    FaultKind.MEDIA_OGG: ("media", "the audio as Ogg Vorbis"),
    FaultKind.MEDIA_OPUS: ("media", "the audio as Ogg Opus (48 kHz)"),
    FaultKind.MEDIA_MP3: ("media", "the audio as MP3"),
    FaultKind.TRUNCATED_FLAC: ("media", "the FLAC cut in half"),
}
_REDIRECTS = {
    FaultKind.MEDIA_REDIRECT_FILE: "file:///etc/passwd",
    FaultKind.MEDIA_REDIRECT_OTHER_HOST: "http://169.254.169.254/latest/meta-data/",
}
_ODD_IDS = {FaultKind.SUBMIT_ODD_ID: "../../etc/passwd", FaultKind.SUBMIT_LONG_ID: "x" * 10_000}
_ENCODED = {
    FaultKind.MEDIA_RF64: ("rf64", "audio/wav"),
    FaultKind.MEDIA_FLAC: ("flac", "application/octet-stream"),
    FaultKind.MEDIA_OGG: ("ogg", "audio/ogg"),
    FaultKind.MEDIA_OPUS: ("opus", "audio/ogg"),
    FaultKind.MEDIA_MP3: ("mp3", "audio/mpeg"),
    FaultKind.TRUNCATED_FLAC: ("flac", "application/octet-stream"),
}
_JOB_OUTCOMES = {
    FaultKind.JOB_FAILED: ("FAILED", "Generation failed: the model produced no audio"),
    FaultKind.JOB_ERROR: ("ERROR", "Internal error; you were not charged"),
}


def _faults_at(where: str) -> tuple[FaultKind, ...]:
    return tuple(kind for kind, (place, _effect) in FAULTS.items() if place == where)


@dataclass
class Fault:
    """A fault to inject `times` times (None: until cleared)."""

    kind: FaultKind
    times: int | None = None


@dataclass
class SandboxConfig:
    """How the fake gateway behaves: accepted keys, timing, media origin, load shape, webhook and media quirks.

    extra_api_keys are accepted besides api_key (clients bringing their own key); jobs are not scoped by key.

    speed scales queue and processing time (0: done at the first poll); jitter multiplies each job's processing
    time by a uniform factor in [1 - jitter, 1 + jitter], drawn from `random.Random(seed)`; concurrency caps how
    many jobs are PROCESSING at once (None: no cap), the rest wait QUEUED in submit order; webhook_duplicates
    extra copies follow each callback, as network retries upstream may deliver. drip_seconds is the pause between
    the 1 KiB chunks of a SLOW_MEDIA body; huge_media_bytes the size a HUGE_MEDIA body claims and streams.
    """

    api_key: str = SANDBOX_API_KEY
    speed: float = 1.0
    queue_seconds: float = 1.0
    media_base_url: str | None = None
    clock: Callable[[], float] = time.time
    jitter: float = 0.0
    seed: int | None = None
    concurrency: int | None = None
    webhook_duplicates: int = 0
    extra_api_keys: tuple[str, ...] = ()
    drip_seconds: float = 0.5
    huge_media_bytes: int = 80 * 1024 * 1024
    huge_status_bytes: int = 64 * 1024 * 1024
    clock_skew_seconds: float = 0.0
    """The gateway's clock runs this far ahead of ours (negative: behind): every timestamp it writes shows it."""
    plain_stamp_offset_hours: float = 0.0
    """The zone-less `YYYY-MM-DD HH:MM:SS` stamps are written in a zone this far from UTC (the docs imply 0)."""
    state_path: Path | None = None
    """Keep the jobs in this SQLite file: a new sandbox with the same path answers for them (status and media)."""


@dataclass
class JobTiming:
    """One job's schedule and what clients did with it; times are from the config clock."""

    submitted_at: float
    started_at: float  # processing start
    completed_at: float  # terminal status from then on
    status: str  # the final status the schedule leads to
    first_terminal_poll_at: float | None = None  # the first status poll that answered a terminal status
    polls: int = 0  # status requests for this job, whatever the answer
    poll_times: list[float] = field(default_factory=list[float])  # when each of them came, to see a schedule
    webhooks_sent: int = 0  # callback POSTs attempted, duplicates included, whatever the outcome
    webhook_url: str | None = None  # the X-Webhook-URL the submit carried
    api_key_hash: str | None = None  # a short sha256 hex prefix of the key that submitted it, never the key


@dataclass
class SandboxStats:
    """Requests received per route (whatever the answer), media requests refused for carrying the key, per-job
    timings, and callback POSTs that failed (transport error or non-2xx answer)."""

    submits: int = 0
    polls: dict[str, int] = field(default_factory=dict[str, int])
    media_fetches: dict[str, int] = field(default_factory=dict[str, int])
    rejected_keys: int = 0
    jobs: dict[str, JobTiming] = field(default_factory=dict[str, JobTiming])
    webhook_failures: int = 0


@dataclass(frozen=True)
class _Phase:
    status: str
    since: float
    terminal: bool


@dataclass
class _Webhook:
    url: str
    sync: bool
    announced: int = 0  # callback phases already put in the outbox
    outbox: list[dict[str, object]] = field(default_factory=list[dict[str, object]])


@dataclass
class _Job:
    request_id: str
    prompt: str
    duration: int
    created: float
    started: float
    finished: float
    fate: FaultKind | None
    media_origin: str  # the CDN origin as seen by the submit request, for callbacks
    webhook: _Webhook | None = None
    wav: bytes | None = None

    def phases(self) -> tuple[_Phase, _Phase, _Phase]:
        """Return the job's QUEUED, PROCESSING and terminal phases."""
        outcome = _JOB_OUTCOMES[self.fate][0] if self.fate else "COMPLETED"
        return (
            _Phase("QUEUED", self.created, False),
            _Phase("PROCESSING", self.started, False),
            _Phase(outcome, self.finished, True),
        )

    def phase_at(self, now: float) -> _Phase:
        """Return the phase the job is in at `now`."""
        queued, processing, end = self.phases()
        if now >= self.finished:
            return end
        return processing if now >= self.started else queued

    def callback_phases(self) -> list[_Phase]:
        """Return the phases its webhook announces: the terminal one, or (sync) every one the job goes through."""
        queued, processing, end = self.phases()
        if self.webhook is None or not self.webhook.sync:
            return [end]
        return [queued, processing, end] if self.started < self.finished else [queued, end]


class _BadRequest(ValueError):
    """A body the sandbox refuses with 400; the message says what is wrong."""


def expected_seconds(duration: int, num_steps: int) -> float:
    """Return the simulated processing time at speed 1: 2 + 0.075 * duration * num_steps (8 s, 25 steps: 17 s)."""
    return 2.0 + 0.075 * duration * num_steps


def create_sandbox(config: SandboxConfig | None = None) -> Sandbox:
    """Build a fake gateway with the given (or default) configuration."""
    return Sandbox(config)


class Sandbox:
    """State of one fake gateway: config, jobs and their schedule, faults, webhooks and request statistics."""

    def __init__(self, config: SandboxConfig | None = None) -> None:
        """Start with no jobs, no faults and zeroed statistics; refuse a config that makes no sense."""
        self.config = config or SandboxConfig()
        _check_config(self.config)
        self._jobs: dict[str, _Job] = {}
        self._faults: list[Fault] = []
        self._stats = SandboxStats()
        self._rng = random.Random(self.config.seed)
        self._slots: list[float] = []  # heap of the times the busy processing slots free up
        self._hooked: dict[str, _Job] = {}  # jobs with webhook phases not yet announced
        self._state = SandboxState(self.config.state_path) if self.config.state_path else None
        self._load_jobs()
        self.app = Starlette(
            routes=[
                Route(SUBMIT_PATH, self._submit, methods=["POST"]),
                Route("/v2/requests/status/{request_id}", self._status, methods=["GET"]),
                Route("/cdn/v1/{request_id}/output.wav", self._media, methods=["GET"]),
                Route("/_sandbox/stats", self._admin_stats, methods=["GET"]),
                Route("/_sandbox/faults", self._admin_add_fault, methods=["POST"]),
                Route("/_sandbox/faults", self._admin_clear_faults, methods=["DELETE"]),
                Route("/healthz", self._healthz, methods=["GET"]),
            ],
            lifespan=self._lifespan,
        )

    def add_fault(self, fault: Fault) -> None:
        """Inject a fault (a copy, so the caller's object is never counted down)."""
        if fault.times is not None and fault.times < 1:
            raise ValueError("times must be None or at least 1")
        self._faults.append(replace(fault))

    def clear_faults(self) -> None:
        """Remove every injected fault."""
        self._faults.clear()

    def stats(self) -> SandboxStats:
        """Return a snapshot of the request statistics."""
        return replace(
            self._stats,
            polls=dict(self._stats.polls),
            media_fetches=dict(self._stats.media_fetches),
            jobs={request_id: replace(timing) for request_id, timing in self._stats.jobs.items()},
        )

    async def deliver_webhooks(self, transport: httpx2.AsyncBaseTransport | None = None, *, tick: float = 0.02) -> None:
        """POST due webhook callbacks until cancelled, checking the clock every `tick` real seconds.

        Each job's callbacks go out in order (duplicates right after their original), jobs in parallel. A failed
        POST (error or non-2xx) is logged at debug and counted in `webhook_failures`, never raised or retried.
        """
        import httpx2

        if tick <= 0:
            raise ValueError("tick must be positive")
        sending: set[str] = set()
        async with (
            httpx2.AsyncClient(transport=transport, timeout=WEBHOOK_TIMEOUT) as client,
            anyio.create_task_group() as tasks,
        ):
            while True:
                for job in self._announce_due_callbacks(self.config.clock()):
                    if job.request_id not in sending:
                        sending.add(job.request_id)
                        tasks.start_soon(self._send_outbox, client, job, sending)
                await anyio.sleep(tick)

    @asynccontextmanager
    async def _lifespan(self, app: Starlette) -> AsyncGenerator[None]:
        """Deliver webhooks for as long as a server runs the app with lifespan on."""
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(self.deliver_webhooks)
            yield
            tasks.cancel_scope.cancel()

    def _announce_due_callbacks(self, now: float) -> list[_Job]:
        """Put the callbacks due at `now` in their jobs' outboxes; return the jobs with something to send."""
        copies = 1 + self.config.webhook_duplicates
        ready: list[_Job] = []
        for job in list(self._hooked.values()):
            webhook = cast("_Webhook", job.webhook)
            phases = job.callback_phases()
            while webhook.announced < len(phases) and phases[webhook.announced].since <= now:
                body = _status_body(job, phases[webhook.announced], job.media_origin, self.config)
                webhook.outbox.extend([body] * copies)
                webhook.announced += 1
            if webhook.announced == len(phases):
                del self._hooked[job.request_id]
            if webhook.outbox:
                ready.append(job)
        return ready

    async def _send_outbox(self, client: httpx2.AsyncClient, job: _Job, sending: set[str]) -> None:
        """POST the job's pending callbacks one after the other."""
        webhook = cast("_Webhook", job.webhook)
        try:
            while webhook.outbox:
                await self._post_callback(client, job.request_id, webhook.url, webhook.outbox.pop(0))
        finally:
            sending.discard(job.request_id)

    async def _post_callback(self, client: httpx2.AsyncClient, request_id: str, url: str, body: object) -> None:
        self._stats.jobs[request_id].webhooks_sent += 1
        try:
            response = await client.post(url, json=body)
        except Exception as exc:  # a broken receiver must never break the dispatcher
            problem = repr(exc)
        else:
            if response.is_success:
                return
            problem = f"HTTP {response.status_code}"
        self._stats.webhook_failures += 1
        logger.debug("webhook for %s to %s failed: %s", request_id, url, problem)

    def _take_fault(self, *kinds: FaultKind) -> FaultKind | None:
        """Fire the first injected fault of one of these kinds, counting it down; None if there is none."""
        for fault in self._faults:
            if fault.kind in kinds:
                if fault.times is not None:
                    fault.times -= 1
                    if fault.times == 0:
                        self._faults.remove(fault)
                return fault.kind
        return None

    def _guard(self, request: Request, *, submit: bool) -> Response | None:
        """Answer as the API gateway in front of the model would (auth and rate limit), or None to go on."""
        if self._take_fault(FaultKind.UNAUTHORIZED) or not self._key_ok(request):
            return _error(401, "Unauthorized", "Access denied due to missing or invalid subscription key.")
        if self._take_fault(FaultKind.FORBIDDEN):
            return _error(403, "Forbidden", "This subscription key is not allowed to use this API.")
        if self._take_fault(FaultKind.RATE_LIMITED):
            text = "Rate limit is exceeded. Try again in 1 seconds." if submit else ""
            return Response(text, 429, headers={"Retry-After": "1"}, media_type="text/plain")
        return None

    def _key_ok(self, request: Request) -> bool:
        sent = request.headers.get(KEY_HEADER)
        if sent is None:
            return False
        keys = (self.config.api_key, *self.config.extra_api_keys)
        return any([hmac.compare_digest(sent.encode(), key.encode()) for key in keys])  # all compared: no timing hint

    def _submit_fault(self) -> Response | None:
        """Answer a submit with an injected queue-system failure, or None."""
        kind = self._take_fault(FaultKind.BAD_REQUEST, FaultKind.INSUFFICIENT_BALANCE, FaultKind.SUBMIT_500)
        if kind is FaultKind.BAD_REQUEST:
            return _error(400, "Model not found", f"Model '{MODEL_ID}' not found or is disabled")
        if kind is FaultKind.INSUFFICIENT_BALANCE:
            return _error(402, "Insufficient Balance", "Your wallet does not have enough balance.")
        return _html_error(500) if kind else None

    async def _submit(self, request: Request) -> Response:
        self._stats.submits += 1
        refused = self._guard(request, submit=True) or self._submit_fault()
        if refused is not None:
            return refused
        try:
            prompt, duration, num_steps = _validate(_parse_json(await request.body()))
            webhook = _webhook(request.headers)
        except _BadRequest as exc:
            return _error(400, "Bad Request", str(exc))
        job = self._new_job(prompt, duration, num_steps, _media_origin(request, self.config.media_base_url))
        timing = self._stats.jobs[job.request_id]
        timing.api_key_hash = _key_hash(request.headers[KEY_HEADER])  # _guard let it through: it is an accepted key
        self._persist(job, timing.api_key_hash)
        if webhook is not None:
            job.webhook = webhook
            self._hooked[job.request_id] = job
            timing.webhook_url = webhook.url
        answer = self._take_fault(FaultKind.SUBMIT_HANG, FaultKind.SUBMIT_NO_ID, *_ODD_IDS)
        if answer is FaultKind.SUBMIT_HANG:
            return await _hang(request)
        if answer is FaultKind.SUBMIT_NO_ID:
            return Response("<html><body>Accepted</body></html>", 202, media_type="text/html")
        request_id = _ODD_IDS.get(answer, job.request_id) if answer else job.request_id
        polling_url = f"{str(request.base_url).rstrip('/')}/v2/requests/status/{job.request_id}"
        return JSONResponse({"request_id": request_id, "status": "QUEUED", "polling_url": polling_url}, 202)

    def _new_job(self, prompt: str, duration: int, num_steps: int, media_origin: str) -> _Job:
        """Create a job with its fate and schedule fixed now, and record its timing."""
        request_id = f"{MODEL_ID}_{uuid.uuid4()}"
        fate = self._take_fault(FaultKind.JOB_FAILED, FaultKind.JOB_ERROR)
        created = self.config.clock()
        started, finished = self._schedule(created, expected_seconds(duration, num_steps))
        job = _Job(request_id, prompt, duration, created, started, finished, fate, media_origin)
        self._jobs[request_id] = job
        self._stats.jobs[request_id] = JobTiming(created, started, finished, job.phases()[2].status)
        return job

    def _persist(self, job: _Job, key_hash: str | None) -> None:
        if self._state is not None:
            fate = job.fate.value if job.fate else None
            self._state.save(
                StoredJob(
                    job.request_id,
                    job.prompt,
                    job.duration,
                    job.created,
                    job.started,
                    job.finished,
                    fate,
                    job.media_origin,
                    None,
                    key_hash,
                )
            )

    def _load_jobs(self) -> None:
        """Read the jobs an earlier (or another) sandbox process stored, keeping the ones already known."""
        if self._state is None:
            return
        for row in self._state.load():
            if row.request_id in self._jobs:
                continue
            fate = FaultKind(row.fate) if row.fate else None
            job = _Job(
                row.request_id, row.prompt, row.duration, row.created, row.started, row.finished, fate, row.media_origin
            )
            self._jobs[row.request_id] = job
            timing = JobTiming(row.created, row.started, row.finished, job.phases()[2].status)
            timing.api_key_hash = row.key_hash
            self._stats.jobs[row.request_id] = timing

    def _known(self, request_id: str) -> _Job | None:
        """The job with this id, looking in the state file too (another process may have created it since)."""
        if request_id not in self._jobs:
            self._load_jobs()
        return self._jobs.get(request_id)

    def _schedule(self, created: float, seconds: float) -> tuple[float, float]:
        """Return when a job submitted at `created` starts and ends processing, taking a free slot in FIFO order."""
        speed, jitter = self.config.speed, self.config.jitter
        processing = seconds * speed * (self._rng.uniform(1 - jitter, 1 + jitter) if jitter else 1.0)
        started = created + self.config.queue_seconds * speed
        if self.config.concurrency is not None:
            if len(self._slots) >= self.config.concurrency:
                started = max(started, heapq.heappop(self._slots))
            heapq.heappush(self._slots, started + processing)
        return started, started + processing

    async def _status(self, request: Request) -> Response:
        request_id = str(request.path_params["request_id"])
        self._stats.polls[request_id] = self._stats.polls.get(request_id, 0) + 1
        job = self._known(request_id)
        timing = self._stats.jobs.get(request_id)
        if timing is not None:
            timing.polls += 1
            timing.poll_times.append(self.config.clock())
        refused = self._guard(request, submit=False)
        if refused is not None:
            return refused
        fault = self._take_fault(FaultKind.POLL_500, FaultKind.POLL_HANG)
        if fault is FaultKind.POLL_HANG:
            return await _hang(request)
        if fault is FaultKind.POLL_500:
            return _html_error(500 if self._stats.polls[request_id] % 2 else 502)
        if job is None or timing is None:
            return _error(404, "Not Found", f"Request {request_id} not found")
        now = self.config.clock()
        phase = job.phase_at(now)
        if phase.terminal and timing.first_terminal_poll_at is None:
            timing.first_terminal_poll_at = now
        body = _status_body(job, phase, _media_origin(request, self.config.media_base_url), self.config)
        quirk = self._take_fault(FaultKind.POLL_DRIP, FaultKind.POLL_HUGE, FaultKind.POLL_UNKNOWN_STATUS)
        if quirk is FaultKind.POLL_UNKNOWN_STATUS:
            body["status"] = "DONE"
        if quirk is FaultKind.POLL_DRIP:
            raw = json.dumps(body).encode()
            return StreamingResponse(_drip(raw, self.config.drip_seconds, 1), 200, media_type="application/json")
        if quirk is FaultKind.POLL_HUGE:
            return StreamingResponse(_huge_json(body, self.config.huge_status_bytes), media_type="application/json")
        return JSONResponse(body)

    async def _media(self, request: Request) -> Response:
        request_id = str(request.path_params["request_id"])
        self._stats.media_fetches[request_id] = self._stats.media_fetches.get(request_id, 0) + 1
        if KEY_HEADER in request.headers:
            self._stats.rejected_keys += 1
            return _error(400, "Bad Request", "credentials must not be sent to the CDN")
        job = self._known(request_id)
        if job is None or job.phase_at(self.config.clock()).status != "COMPLETED":
            return Response("Not Found", 404, media_type="text/plain")
        fault = self._take_fault(*_faults_at("media"))
        if fault is FaultKind.MEDIA_404:
            return Response("Not Found", 404, media_type="text/plain")
        if fault is not None and fault in _REDIRECTS:
            return RedirectResponse(_REDIRECTS[fault], 302)
        if fault is FaultKind.HUGE_MEDIA:
            size = self.config.huge_media_bytes
            return _streamed(_silent_wav(size), size)
        # Synthesized in a worker thread: 50-400 ms of pure Python that would hold every other answer back.
        wav = job.wav if job.wav is not None else await anyio.to_thread.run_sync(_wav, job)
        encoding = _ENCODED.get(fault) if fault else None
        if encoding is not None:
            from mmaudio_mcp.sandbox_media import encode

            media = await anyio.to_thread.run_sync(encode, wav, encoding[0])
            if fault is FaultKind.TRUNCATED_FLAC:
                media = media[: len(media) // 2]
            return Response(media, 200, media_type=encoding[1])
        return _media_body(wav, fault, self.config.drip_seconds)

    async def _admin_stats(self, request: Request) -> Response:
        return JSONResponse(asdict(self.stats()))

    async def _admin_add_fault(self, request: Request) -> Response:
        try:
            fault = _parse_fault(_parse_json(await request.body()))
        except _BadRequest as exc:
            return _error(400, "Bad Request", str(exc))
        self.add_fault(fault)
        return JSONResponse({"kind": fault.kind.value, "times": fault.times}, 201)

    async def _admin_clear_faults(self, request: Request) -> Response:
        self.clear_faults()
        return Response(status_code=204)

    async def _healthz(self, request: Request) -> Response:
        return JSONResponse({"status": "ok"})


def _check_config(config: SandboxConfig) -> None:
    if not 0 <= config.jitter <= 1:
        raise ValueError("jitter must be between 0 and 1")
    if config.concurrency is not None and config.concurrency < 1:
        raise ValueError("concurrency must be None or at least 1")
    if config.webhook_duplicates < 0:
        raise ValueError("webhook_duplicates must be at least 0")
    if not _keys_ok(config.extra_api_keys):
        raise ValueError("extra_api_keys must be a tuple of non-empty strings")
    if config.drip_seconds < 0:
        raise ValueError("drip_seconds must be at least 0")
    size = config.huge_media_bytes
    if size % 4 or not WAV_HEADER_BYTES < size <= 0xFFFF_FFFF:
        raise ValueError(f"huge_media_bytes must be a multiple of 4, over {WAV_HEADER_BYTES} and under 4 GiB")


def _keys_ok(keys: object) -> bool:
    """Accept a tuple of non-empty strings (a bare string would pass for a tuple of one-letter keys)."""
    return isinstance(keys, tuple) and all(isinstance(key, str) and key for key in cast("tuple[object, ...]", keys))


def _key_hash(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()[:KEY_HASH_CHARS]


async def _hang(request: Request) -> Response:
    """Never answer: sleep until the client disconnects (or the server cancels the handler), leaving no task behind.

    The answer returned then goes nowhere: the client is gone.
    """
    async with anyio.create_task_group() as tasks:
        tasks.start_soon(_cancel_on_disconnect, request, tasks.cancel_scope)
        await anyio.sleep_forever()
    return Response("Gateway Timeout", 504, media_type="text/plain")


async def _cancel_on_disconnect(request: Request, scope: anyio.CancelScope) -> None:
    """Read what is left of the request until the server reports the client gone, then cancel `scope`."""
    while (await request.receive())["type"] != "http.disconnect":
        pass
    scope.cancel()


def _wav(job: _Job) -> bytes:
    """Return the job's audio, synthesized at the first fetch and cached."""
    if job.wav is None:
        job.wav = wav_for(job.prompt, job.duration)
    return job.wav


def _media_body(wav: bytes, fault: FaultKind | None, drip_seconds: float) -> Response:
    """Answer a media fetch with the job's WAV as a fault (truncated, not WAV, slow) or nothing shapes it."""
    if fault is FaultKind.SLOW_MEDIA:
        return _streamed(_drip(wav, drip_seconds), len(wav))
    if fault is FaultKind.TRUNCATED_WAV:
        wav = wav[: len(wav) // 2]
    elif fault is FaultKind.NOT_WAV:
        wav = _NOT_WAV_PAGE
    return Response(wav, 200, media_type="audio/wav")


def _streamed(chunks: AsyncIterator[bytes], size: int) -> StreamingResponse:
    return StreamingResponse(chunks, 200, headers={"Content-Length": str(size)}, media_type="audio/wav")


async def _drip(body: bytes, delay: float, piece: int = DRIP_CHUNK_BYTES) -> AsyncIterator[bytes]:
    """Yield `body` in `piece`-byte pieces, sleeping `delay` seconds between two pieces."""
    for start in range(0, len(body), piece):
        if start:
            await anyio.sleep(delay)
        yield body[start : start + piece]


async def _huge_json(body: dict[str, object], size: int) -> AsyncIterator[bytes]:
    """Yield `body` as JSON padded to about `size` bytes in its error field, one reused block at a time."""
    head = json.dumps({**body, "error": ""}).encode()
    cut = head.index(b'"error": "') + len(b'"error": "')
    yield head[:cut]
    block = b"x" * HUGE_CHUNK_BYTES
    for _ in range(max(size - len(head), 0) // HUGE_CHUNK_BYTES):
        await anyio.lowlevel.checkpoint()
        yield block
    yield head[cut:]


async def _silent_wav(size: int) -> AsyncIterator[bytes]:
    """Yield a `size`-byte WAV of silence: its header, then one reused block of zeros at a time, never the whole."""
    yield wav_header(size - WAV_HEADER_BYTES)
    zeros = bytes(HUGE_CHUNK_BYTES)
    for start in range(WAV_HEADER_BYTES, size, HUGE_CHUNK_BYTES):
        await anyio.lowlevel.checkpoint()  # stays cancellable even when the socket never pushes back
        yield zeros if size - start >= HUGE_CHUNK_BYTES else zeros[: size - start]


def _status_body(job: _Job, phase: _Phase, media_origin: str, config: SandboxConfig) -> dict[str, object]:
    """Return the GET status body (also the webhook payload) of `job` in `phase`, stamped by the gateway's clock."""
    skew = config.clock_skew_seconds
    plain = skew + config.plain_stamp_offset_hours * 3600
    output = None
    if phase.status == "COMPLETED":
        output = {"media_url": [f"{media_origin}/cdn/v1/{job.request_id}/output.wav"], "media_type": "audio/wav"}
    return {
        "request_id": job.request_id,
        "status": phase.status,
        "model_id": MODEL_ID,
        "error": _JOB_OUTCOMES[job.fate][1] if phase.terminal and job.fate else None,
        "output": output,
        "created_at": _iso_millis(job.created + skew),
        "updated_at": _plain_utc(phase.since + plain),
        "completed_at": _plain_utc(phase.since + plain) if phase.terminal else None,
    }


def _webhook(headers: Headers) -> _Webhook | None:
    """Read X-Webhook-URL and X-Webhook-Mode; refuse a URL that is not https (or http to loopback) or a bad mode."""
    mode = headers.get("X-Webhook-Mode", "terminal").strip().lower()
    if mode not in {"terminal", "sync"}:
        raise _BadRequest("X-Webhook-Mode must be terminal or sync")
    url = headers.get("X-Webhook-URL")
    if url is None:
        return None
    if not _webhook_url_ok(url.strip()):
        raise _BadRequest("X-Webhook-URL must be an https URL (plain http only to a loopback host)")
    return _Webhook(url.strip(), sync=mode == "sync")


def _webhook_url_ok(url: str) -> bool:
    """Accept https to any host, and plain http only to 127.0.0.0/8, ::1 or localhost."""
    try:
        parts = urlsplit(url)
        host = parts.hostname
    except ValueError:
        return False
    if not host:
        return False
    return parts.scheme == "https" or (parts.scheme == "http" and _is_loopback(host))


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _error(status: int, error: str, message: str) -> JSONResponse:
    return JSONResponse({"error": error, "message": message}, status)


def _html_error(status: int) -> Response:
    """Answer as a proxy in front of the gateway does: an HTML page, not JSON."""
    title = f"{status} {'Bad Gateway' if status == 502 else 'Internal Server Error'}"
    page = f"<html><head><title>{title}</title></head><body><center><h1>{title}</h1></center></body></html>"
    return Response(page, status, media_type="text/html")


def _iso_millis(moment: float) -> str:
    return datetime.fromtimestamp(moment, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _plain_utc(moment: float) -> str:
    return datetime.fromtimestamp(moment, UTC).strftime("%Y-%m-%d %H:%M:%S")


def _media_origin(request: Request, configured: str | None) -> str:
    """Return the CDN origin: the configured one, else this request's with localhost and 127.0.0.1 swapped."""
    if configured:
        return configured.rstrip("/")
    host = request.url.hostname or "localhost"
    host = {"127.0.0.1": "localhost", "localhost": "127.0.0.1"}.get(host, host)
    if ":" in host:
        host = f"[{host}]"
    port = f":{request.url.port}" if request.url.port else ""
    return f"{request.url.scheme}://{host}{port}"


def _parse_json(raw: bytes) -> dict[str, object]:
    try:
        body: object = json.loads(raw)
    except ValueError:  # covers JSONDecodeError and UnicodeDecodeError
        raise _BadRequest("Request body must be valid JSON") from None
    if not isinstance(body, dict):
        raise _BadRequest("Request body must be a JSON object")
    return cast("dict[str, object]", body)


def _validate(body: dict[str, object]) -> tuple[str, int, int]:
    """Check a submit body as the API documents it; return the prompt, duration and num_steps."""
    prompt = body.get("prompt")
    if not isinstance(prompt, str) or not prompt.strip():
        raise _BadRequest("prompt is required and must be a non-empty string")
    if not isinstance(body.get("negative_prompt", ""), str):
        raise _BadRequest("negative_prompt must be a string")
    num_steps = _integer(body, "num_steps", 25, 10, 100)
    duration = _integer(body, "duration", 8, 2, 30)
    cfg_strength = body.get("cfg_strength", 4.5)
    if isinstance(cfg_strength, bool) or not isinstance(cfg_strength, int | float) or not 1 <= cfg_strength <= 10:
        raise _BadRequest("cfg_strength must be a finite number between 1.0 and 10.0")
    if not isinstance(body.get("mask_away_clip", False), bool):
        raise _BadRequest("mask_away_clip must be a boolean")
    return prompt, duration, num_steps


def _integer(body: dict[str, object], name: str, default: int, low: int, high: int) -> int:
    value = body.get(name, default)
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise _BadRequest(f"{name} must be an integer between {low} and {high}")
    return value


def _parse_fault(body: dict[str, object]) -> Fault:
    kind, times = body.get("kind"), body.get("times")
    if kind not in set(FaultKind):
        raise _BadRequest(f"kind must be one of: {', '.join(FaultKind)}")
    if times is not None and (isinstance(times, bool) or not isinstance(times, int) or times < 1):
        raise _BadRequest("times must be null or an integer >= 1")
    return Fault(FaultKind(str(kind)), times)
