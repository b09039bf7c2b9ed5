"""Play the Pixazo gateway for MMAudio v2 offline: submit, status, media and webhooks, with real WAV audio and faults.

The wire contract is re-implemented from the published API docs, not imported from the client, so drift shows up
as failing tests. `/_sandbox/` admin routes let a test running the sandbox in another process drive it.

This module is the gateway itself (its routes and their order of checks) and the one place its public names are
imported from. The parts live beside it: the fault table in `sandbox_faults`, the job model and schedule in
`sandbox_jobs`, request reading in `sandbox_requests`, answer shapes in `sandbox_answers`, webhook delivery in
`sandbox_webhooks`, audio in `sandbox_audio`/`sandbox_media`, the state file in `sandbox_state`.
"""

from __future__ import annotations

import hmac
import json
import uuid
from contextlib import asynccontextmanager
from dataclasses import asdict, replace
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import anyio
from starlette.applications import Starlette
from starlette.responses import JSONResponse, RedirectResponse, Response, StreamingResponse
from starlette.routing import Route

from mmaudio_mcp.sandbox_answers import drip, error, hang, html_error, huge_json, media_body, silent_wav, streamed
from mmaudio_mcp.sandbox_audio import SAMPLE_RATE, wav_for
from mmaudio_mcp.sandbox_faults import ENCODED, JOB_OUTCOMES, ODD_IDS, REDIRECTS, Fault, FaultKind, Faults, faults_at
from mmaudio_mcp.sandbox_jobs import (
    SANDBOX_API_KEY,
    Job,
    JobTiming,
    Phase,
    SandboxConfig,
    SandboxStats,
    Schedule,
    check_config,
    expected_seconds,
)
from mmaudio_mcp.sandbox_requests import (
    KEY_HEADER,
    MODEL_ID,
    SUBMIT_PATH,
    BadRequest,
    key_hash,
    media_origin,
    parse_fault,
    parse_json,
    validate,
    webhook,
)
from mmaudio_mcp.sandbox_state import SandboxState
from mmaudio_mcp.sandbox_webhooks import Webhooks

if TYPE_CHECKING:
    from collections.abc import AsyncGenerator

    import httpx2
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


def create_sandbox(config: SandboxConfig | None = None) -> Sandbox:
    """Build a fake gateway with the given (or default) configuration."""
    return Sandbox(config)


class Sandbox:
    """State of one fake gateway: config, jobs and their schedule, faults, webhooks and request statistics."""

    def __init__(self, config: SandboxConfig | None = None) -> None:
        """Start with no jobs, no faults and zeroed statistics; refuse a config that makes no sense."""
        self.config = config or SandboxConfig()
        check_config(self.config)
        self._jobs: dict[str, Job] = {}
        self._faults = Faults()
        self._stats = SandboxStats()
        self._schedule = Schedule(self.config)
        self._webhooks = Webhooks(self.config, self._stats, self._callback_body)
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
        self._faults.add(fault)

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
        await self._webhooks.deliver(transport, tick=tick)

    @asynccontextmanager
    async def _lifespan(self, app: Starlette) -> AsyncGenerator[None]:
        """Deliver webhooks for as long as a server runs the app with lifespan on."""
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(self.deliver_webhooks)
            yield
            tasks.cancel_scope.cancel()

    def _callback_body(self, job: Job, phase: Phase) -> dict[str, object]:
        return _status_body(job, phase, job.media_origin, self.config)

    def _guard(self, request: Request, *, submit: bool) -> Response | None:
        """Answer as the API gateway in front of the model would (auth and rate limit), or None to go on."""
        if self._faults.take(FaultKind.UNAUTHORIZED) or not self._key_ok(request):
            return error(401, "Unauthorized", "Access denied due to missing or invalid subscription key.")
        if self._faults.take(FaultKind.FORBIDDEN):
            return error(403, "Forbidden", "This subscription key is not allowed to use this API.")
        if self._faults.take(FaultKind.RATE_LIMITED):
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
        kind = self._faults.take(FaultKind.BAD_REQUEST, FaultKind.INSUFFICIENT_BALANCE, FaultKind.SUBMIT_500)
        if kind is FaultKind.BAD_REQUEST:
            return error(400, "Model not found", f"Model '{MODEL_ID}' not found or is disabled")
        if kind is FaultKind.INSUFFICIENT_BALANCE:
            return error(402, "Insufficient Balance", "Your wallet does not have enough balance.")
        return html_error(500) if kind else None

    async def _submit(self, request: Request) -> Response:
        self._stats.submits += 1
        refused = self._guard(request, submit=True) or self._submit_fault()
        if refused is not None:
            return refused
        try:
            prompt, duration, num_steps = validate(parse_json(await request.body()))
            hook = webhook(request.headers)
        except BadRequest as exc:
            return error(400, "Bad Request", str(exc))
        job = self._new_job(prompt, duration, num_steps, media_origin(request, self.config.media_base_url))
        timing = self._stats.jobs[job.request_id]
        timing.api_key_hash = key_hash(request.headers[KEY_HEADER])  # _guard let it through: it is an accepted key
        if self._state is not None:
            self._state.save(job.stored(timing.api_key_hash))
        if hook is not None:
            job.webhook = hook
            self._webhooks.watch(job)
            timing.webhook_url = hook.url
        answer = self._faults.take(FaultKind.SUBMIT_HANG, FaultKind.SUBMIT_NO_ID, *ODD_IDS)
        if answer is FaultKind.SUBMIT_HANG:
            return await hang(request)
        if answer is FaultKind.SUBMIT_NO_ID:
            return Response("<html><body>Accepted</body></html>", 202, media_type="text/html")
        request_id = ODD_IDS.get(answer, job.request_id) if answer else job.request_id
        polling_url = f"{str(request.base_url).rstrip('/')}/v2/requests/status/{job.request_id}"
        return JSONResponse({"request_id": request_id, "status": "QUEUED", "polling_url": polling_url}, 202)

    def _new_job(self, prompt: str, duration: int, num_steps: int, origin: str) -> Job:
        """Create a job with its fate and schedule fixed now, and record its timing."""
        request_id = f"{MODEL_ID}_{uuid.uuid4()}"
        fate = self._faults.take(FaultKind.JOB_FAILED, FaultKind.JOB_ERROR)
        created = self.config.clock()
        started, finished = self._schedule.place(created, expected_seconds(duration, num_steps))
        job = Job(request_id, prompt, duration, created, started, finished, fate, origin)
        self._jobs[request_id] = job
        self._stats.jobs[request_id] = job.timing()
        return job

    def _load_jobs(self) -> None:
        """Read the jobs an earlier (or another) sandbox process stored, keeping the ones already known."""
        if self._state is None:
            return
        for row in self._state.load():
            if row.request_id in self._jobs:
                continue
            job = Job.restored(row)
            self._jobs[row.request_id] = job
            timing = job.timing()
            timing.api_key_hash = row.key_hash
            self._stats.jobs[row.request_id] = timing

    def _known(self, request_id: str) -> Job | None:
        """The job with this id, looking in the state file too (another process may have created it since)."""
        if request_id not in self._jobs:
            self._load_jobs()
        return self._jobs.get(request_id)

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
        fault = self._faults.take(FaultKind.POLL_500, FaultKind.POLL_HANG)
        if fault is FaultKind.POLL_HANG:
            return await hang(request)
        if fault is FaultKind.POLL_500:
            return html_error(500 if self._stats.polls[request_id] % 2 else 502)
        if job is None or timing is None:
            return error(404, "Not Found", f"Request {request_id} not found")
        now = self.config.clock()
        phase = job.phase_at(now)
        if phase.terminal and timing.first_terminal_poll_at is None:
            timing.first_terminal_poll_at = now
        body = _status_body(job, phase, media_origin(request, self.config.media_base_url), self.config)
        quirk = self._faults.take(FaultKind.POLL_DRIP, FaultKind.POLL_HUGE, FaultKind.POLL_UNKNOWN_STATUS)
        if quirk is FaultKind.POLL_UNKNOWN_STATUS:
            body["status"] = "DONE"
        if quirk is FaultKind.POLL_DRIP:
            raw = json.dumps(body).encode()
            return StreamingResponse(drip(raw, self.config.drip_seconds, 1), 200, media_type="application/json")
        if quirk is FaultKind.POLL_HUGE:
            return StreamingResponse(huge_json(body, self.config.huge_status_bytes), media_type="application/json")
        return JSONResponse(body)

    async def _media(self, request: Request) -> Response:
        request_id = str(request.path_params["request_id"])
        self._stats.media_fetches[request_id] = self._stats.media_fetches.get(request_id, 0) + 1
        if KEY_HEADER in request.headers:
            self._stats.rejected_keys += 1
            return error(400, "Bad Request", "credentials must not be sent to the CDN")
        job = self._known(request_id)
        if job is None or job.phase_at(self.config.clock()).status != "COMPLETED":
            return Response("Not Found", 404, media_type="text/plain")
        fault = self._faults.take(*faults_at("media"))
        if fault is FaultKind.MEDIA_404:
            return Response("Not Found", 404, media_type="text/plain")
        if fault is not None and fault in REDIRECTS:
            return RedirectResponse(REDIRECTS[fault], 302)
        if fault is FaultKind.HUGE_MEDIA:
            size = self.config.huge_media_bytes
            return streamed(silent_wav(size), size)
        # Synthesized in a worker thread: 50-400 ms of pure Python that would hold every other answer back.
        wav = job.wav if job.wav is not None else await anyio.to_thread.run_sync(_wav, job)
        encoding = ENCODED.get(fault) if fault else None
        if encoding is not None:
            from mmaudio_mcp.sandbox_media import encode

            media = await anyio.to_thread.run_sync(encode, wav, encoding[0])
            if fault is FaultKind.TRUNCATED_FLAC:
                media = media[: len(media) // 2]
            return Response(media, 200, media_type=encoding[1])
        return media_body(wav, fault, self.config.drip_seconds)

    async def _admin_stats(self, request: Request) -> Response:
        return JSONResponse(asdict(self.stats()))

    async def _admin_add_fault(self, request: Request) -> Response:
        try:
            fault = parse_fault(parse_json(await request.body()))
        except BadRequest as exc:
            return error(400, "Bad Request", str(exc))
        self.add_fault(fault)
        return JSONResponse({"kind": fault.kind.value, "times": fault.times}, 201)

    async def _admin_clear_faults(self, request: Request) -> Response:
        self.clear_faults()
        return Response(status_code=204)

    async def _healthz(self, request: Request) -> Response:
        return JSONResponse({"status": "ok"})


# The benchmarks replace `wav_for` and `_plain_utc` in this module (benchmarks/_common.py: a cached synthesis,
# finer stamps), so the two functions that call them stay here and look them up at call time.


def _wav(job: Job) -> bytes:
    """Return the job's audio, synthesized at the first fetch and cached."""
    if job.wav is None:
        job.wav = wav_for(job.prompt, job.duration)
    return job.wav


def _status_body(job: Job, phase: Phase, origin: str, config: SandboxConfig) -> dict[str, object]:
    """Return the GET status body (also the webhook payload) of `job` in `phase`, stamped by the gateway's clock."""
    skew = config.clock_skew_seconds
    plain = skew + config.plain_stamp_offset_hours * 3600
    output = None
    if phase.status == "COMPLETED":
        output = {"media_url": [f"{origin}/cdn/v1/{job.request_id}/output.wav"], "media_type": "audio/wav"}
    return {
        "request_id": job.request_id,
        "status": phase.status,
        "model_id": MODEL_ID,
        "error": JOB_OUTCOMES[job.fate][1] if phase.terminal and job.fate else None,
        "output": output,
        "created_at": _iso_millis(job.created + skew),
        "updated_at": _plain_utc(phase.since + plain),
        "completed_at": _plain_utc(phase.since + plain) if phase.terminal else None,
    }


def _iso_millis(moment: float) -> str:
    return datetime.fromtimestamp(moment, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _plain_utc(moment: float) -> str:
    return datetime.fromtimestamp(moment, UTC).strftime("%Y-%m-%d %H:%M:%S")
