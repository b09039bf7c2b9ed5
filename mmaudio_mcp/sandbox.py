"""Play the Pixazo gateway for MMAudio v2 offline: submit, status and media, with real WAV audio and faults.

The wire contract is re-implemented from the published API docs, not imported from the client, so drift shows up
as failing tests. `/_sandbox/` admin routes let a test running the sandbox in another process drive it.
"""

from __future__ import annotations

import hmac
import json
import math
import operator
import random
import re
import struct
import sys
import time
import uuid
from array import array
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from enum import StrEnum
from functools import cache
from itertools import accumulate, chain, repeat
from typing import TYPE_CHECKING, cast

from starlette.applications import Starlette
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

if TYPE_CHECKING:
    from collections.abc import Callable

    from starlette.requests import Request

SANDBOX_API_KEY = "sandbox-key"
MODEL_ID = "mmaudio-v2-text-to-audio"
SUBMIT_PATH = f"/{MODEL_ID}/v1/{MODEL_ID}-request"
KEY_HEADER = "Ocp-Apim-Subscription-Key"
SAMPLE_RATE = 44_100
# KSDATAFORMAT_SUBTYPE_IEEE_FLOAT (00000003-0000-0010-8000-00aa00389b71) in its on-disk, mixed-endian byte order.
_FLOAT_SUBFORMAT = bytes.fromhex("0300000000001000800000aa00389b71")
_NOT_WAV_PAGE = b"<!DOCTYPE html><html><head><title>Error</title></head><body><h1>Access Denied</h1></body></html>"
# Prompt keyword (as a word prefix) -> box-filter width of the noise: wide boxes rumble, narrow ones hiss.
_NOISE_WIDTHS = {"rain": 2, "water": 4, "crowd": 6, "storm": 16, "wave": 24, "ocean": 24, "wind": 32}
_TONE_WORDS = ("beep", "bell", "chime", "alarm", "tone", "ding")
_MUSIC_WORDS = ("music", "piano", "melody", "synth", "guitar")
_CHORDS = ((0, 4, 7, 12), (-3, 0, 4, 9), (-7, -3, 0, 5), (-5, -1, 2, 7))  # I vi IV V, semitones from the root


class FaultKind(StrEnum):
    """A failure the sandbox can inject, as the real gateway, model or CDN shows it."""

    UNAUTHORIZED = "unauthorized"  # 401 on every gateway call, even with the right key
    FORBIDDEN = "forbidden"  # 403 on every gateway call
    BAD_REQUEST = "bad_request"  # 400 "Model not found" on submit
    INSUFFICIENT_BALANCE = "insufficient_balance"  # 402 on submit
    RATE_LIMITED = "rate_limited"  # 429 + Retry-After: 1; plain text body on submit, empty body on status
    SUBMIT_500 = "submit_500"  # 500 with an HTML body on submit
    POLL_500 = "poll_500"  # 500 or 502 (alternating) with an HTML body on status polls
    JOB_FAILED = "job_failed"  # the next job ends FAILED
    JOB_ERROR = "job_error"  # the next job ends ERROR
    TRUNCATED_WAV = "truncated_wav"  # media body cut in half; the header still promises all the data
    NOT_WAV = "not_wav"  # media answers 200 with an HTML page labelled audio/wav
    MEDIA_404 = "media_404"  # media answers 404


_JOB_OUTCOMES = {
    FaultKind.JOB_FAILED: ("FAILED", "Generation failed: the model produced no audio"),
    FaultKind.JOB_ERROR: ("ERROR", "Internal error; you were not charged"),
}


@dataclass
class Fault:
    """A fault to inject `times` times (None: until cleared)."""

    kind: FaultKind
    times: int | None = None


@dataclass
class SandboxConfig:
    """How the fake gateway behaves: accepted key, timing (speed 0: done at the first poll), media origin."""

    api_key: str = SANDBOX_API_KEY
    speed: float = 1.0
    queue_seconds: float = 1.0
    media_base_url: str | None = None
    clock: Callable[[], float] = time.time


@dataclass
class SandboxStats:
    """Requests received per route (whatever the answer), and media requests refused for carrying the key."""

    submits: int = 0
    polls: dict[str, int] = field(default_factory=dict[str, int])
    media_fetches: dict[str, int] = field(default_factory=dict[str, int])
    rejected_keys: int = 0


@dataclass
class _Job:
    request_id: str
    prompt: str
    duration: int
    num_steps: int
    created: float
    fate: FaultKind | None
    wav: bytes | None = None


class _BadRequest(ValueError):
    """A body the sandbox refuses with 400; the message says what is wrong."""


def expected_seconds(duration: int, num_steps: int) -> float:
    """Return the simulated processing time at speed 1: 2 + 0.075 * duration * num_steps (8 s, 25 steps: 17 s)."""
    return 2.0 + 0.075 * duration * num_steps


def create_sandbox(config: SandboxConfig | None = None) -> Sandbox:
    """Build a fake gateway with the given (or default) configuration."""
    return Sandbox(config)


class Sandbox:
    """State of one fake gateway: config, jobs, faults and request statistics."""

    def __init__(self, config: SandboxConfig | None = None) -> None:
        """Start with no jobs, no faults and zeroed statistics."""
        self.config = config or SandboxConfig()
        self._jobs: dict[str, _Job] = {}
        self._faults: list[Fault] = []
        self._stats = SandboxStats()
        self.app = Starlette(
            routes=[
                Route(SUBMIT_PATH, self._submit, methods=["POST"]),
                Route("/v2/requests/status/{request_id}", self._status, methods=["GET"]),
                Route("/cdn/v1/{request_id}/output.wav", self._media, methods=["GET"]),
                Route("/_sandbox/stats", self._admin_stats, methods=["GET"]),
                Route("/_sandbox/faults", self._admin_add_fault, methods=["POST"]),
                Route("/_sandbox/faults", self._admin_clear_faults, methods=["DELETE"]),
                Route("/healthz", self._healthz, methods=["GET"]),
            ]
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
        return replace(self._stats, polls=dict(self._stats.polls), media_fetches=dict(self._stats.media_fetches))

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
        return sent is not None and hmac.compare_digest(sent.encode(), self.config.api_key.encode())

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
        except _BadRequest as exc:
            return _error(400, "Bad Request", str(exc))
        request_id = f"{MODEL_ID}_{uuid.uuid4()}"
        fate = self._take_fault(FaultKind.JOB_FAILED, FaultKind.JOB_ERROR)
        self._jobs[request_id] = _Job(request_id, prompt, duration, num_steps, self.config.clock(), fate)
        polling_url = f"{str(request.base_url).rstrip('/')}/v2/requests/status/{request_id}"
        return JSONResponse({"request_id": request_id, "status": "QUEUED", "polling_url": polling_url}, 202)

    async def _status(self, request: Request) -> Response:
        request_id = str(request.path_params["request_id"])
        self._stats.polls[request_id] = self._stats.polls.get(request_id, 0) + 1
        refused = self._guard(request, submit=False)
        if refused is not None:
            return refused
        if self._take_fault(FaultKind.POLL_500):
            return _html_error(500 if self._stats.polls[request_id] % 2 else 502)
        job = self._jobs.get(request_id)
        if job is None:
            return _error(404, "Not Found", f"Request {request_id} not found")
        return JSONResponse(self._status_body(job, request))

    def _phase(self, job: _Job) -> tuple[str, float, bool]:
        """Return the job's status now, when it last changed, and whether it is terminal."""
        speed = self.config.speed
        started = job.created + self.config.queue_seconds * speed
        finished = started + expected_seconds(job.duration, job.num_steps) * speed
        now = self.config.clock()
        if now >= finished:
            return (_JOB_OUTCOMES[job.fate][0] if job.fate else "COMPLETED"), finished, True
        if now >= started:
            return "PROCESSING", started, False
        return "QUEUED", job.created, False

    def _status_body(self, job: _Job, request: Request) -> dict[str, object]:
        status, changed, terminal = self._phase(job)
        output = None
        if status == "COMPLETED":
            media_url = f"{_media_origin(request, self.config.media_base_url)}/cdn/v1/{job.request_id}/output.wav"
            output = {"media_url": [media_url], "media_type": "audio/wav"}
        return {
            "request_id": job.request_id,
            "status": status,
            "model_id": MODEL_ID,
            "error": _JOB_OUTCOMES[job.fate][1] if terminal and job.fate else None,
            "output": output,
            "created_at": _iso_millis(job.created),
            "updated_at": _plain_utc(changed),
            "completed_at": _plain_utc(changed) if terminal else None,
        }

    async def _media(self, request: Request) -> Response:
        request_id = str(request.path_params["request_id"])
        self._stats.media_fetches[request_id] = self._stats.media_fetches.get(request_id, 0) + 1
        if KEY_HEADER in request.headers:
            self._stats.rejected_keys += 1
            return _error(400, "Bad Request", "credentials must not be sent to the CDN")
        job = self._jobs.get(request_id)
        if job is None or self._phase(job)[0] != "COMPLETED":
            return Response("Not Found", 404, media_type="text/plain")
        fault = self._take_fault(FaultKind.MEDIA_404, FaultKind.TRUNCATED_WAV, FaultKind.NOT_WAV)
        if fault is FaultKind.MEDIA_404:
            return Response("Not Found", 404, media_type="text/plain")
        if job.wav is None:
            job.wav = _wav_bytes(_synthesize(job.prompt, job.duration))
        body = job.wav
        if fault is FaultKind.TRUNCATED_WAV:
            body = body[: len(body) // 2]
        elif fault is FaultKind.NOT_WAV:
            body = _NOT_WAV_PAGE
        return Response(body, 200, media_type="audio/wav")

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


def _synthesize(prompt: str, duration: int) -> array[float]:
    """Make `duration` seconds of audio that follows the prompt a little, the same every time for one prompt."""
    rng = random.Random(prompt)
    count = duration * SAMPLE_RATE
    words = re.findall(r"[a-z]+", prompt.lower())
    widths = [width for key, width in _NOISE_WIDTHS.items() if any(word.startswith(key) for word in words)]
    if widths:
        samples = _ambience(rng, count, widths[0])
    elif any(word.startswith(_TONE_WORDS) for word in words):
        samples = _chimes(rng, count)
    elif any(word.startswith(_MUSIC_WORDS) for word in words):
        samples = _arpeggio(rng, count)
    else:
        samples = _bursts(rng, count)
    return _fade(samples, SAMPLE_RATE // 50)


def _ambience(rng: random.Random, count: int, width: int) -> array[float]:
    """Loop a few seconds of low-passed noise that swells once per loop, like surf or gusts of wind."""
    # Filtering the whole clip sample by sample is too slow in pure Python; a seamless loop of 3-5 s is not.
    block = SAMPLE_RATE // 100
    blocks = min(count // block + 1, rng.randrange(300, 500))
    length = blocks * block
    white = array("b", rng.randbytes(length))
    smooth = _box(_box(white[length - 2 * width + 2 :] + white, width), width)  # circular padding: no seam
    gains = (0.55 - 0.45 * math.cos(math.tau * index / blocks) for index in range(blocks))
    loop = _normalized(array("f", map(operator.mul, smooth, chain.from_iterable(map(repeat, gains, repeat(block))))))
    return (loop * (count // length + 1))[:count]


def _box(values: array[int], width: int) -> array[int]:
    """Sum every `width` consecutive values (a box low-pass), via a running sum so the loop stays in C."""
    running = array("q", accumulate(values, initial=0))
    return array("q", map(operator.sub, running[width:], running[:-width]))


def _chimes(rng: random.Random, count: int) -> array[float]:
    """Ring decaying bell tones, alternating two pitches a major third apart."""
    gap = int(SAMPLE_RATE * rng.uniform(0.5, 1.0))
    base = rng.choice((660.0, 880.0, 1046.5))
    bells = [_normalized(_mix(_tone(hz, gap, 5.0), _tone(hz * 2.76, gap, 12.0), 0.3)) for hz in (base, base * 1.26)]
    return _sequence(count, gap, lambda index: bells[index % 2])


def _arpeggio(rng: random.Random, count: int) -> array[float]:
    """Play a broken-chord I-vi-IV-V progression with plucked, decaying notes."""
    root = rng.choice((220.0, 246.94, 261.63, 293.66))
    step = int(SAMPLE_RATE * rng.choice((0.15, 0.2, 0.25)))

    @cache
    def pluck(semitones: int) -> array[float]:
        pitch = root * 2 ** (semitones / 12)
        return _normalized(_mix(_tone(pitch, step, 4.0), _tone(pitch * 2, step, 8.0), 0.35))

    return _sequence(count, step, lambda index: pluck(_CHORDS[index // 8 % len(_CHORDS)][index % 4]))


def _sequence(count: int, step: int, note_at: Callable[[int], array[float]]) -> array[float]:
    """Place note `note_at(i)` every `step` samples, for `count` samples."""
    out = array("f", bytes(4 * count))
    for index, start in enumerate(range(0, count, step)):
        _place(out, note_at(index), start)
    return out


def _bursts(rng: random.Random, count: int) -> array[float]:
    """Scatter short decaying noise bursts, each over a low thump, with silences between them."""
    out = array("f", bytes(4 * count))
    start = int(SAMPLE_RATE * rng.uniform(0.05, 0.3))
    while start < count:
        length = int(SAMPLE_RATE * rng.uniform(0.1, 0.4))
        decay = accumulate(repeat(math.exp(-15.0 / SAMPLE_RATE), length - 1), operator.mul, initial=1 / 128)
        hiss = array("f", map(operator.mul, array("b", rng.randbytes(length)), decay))
        burst = _mix(hiss, _tone(rng.uniform(50.0, 140.0), length, 10.0), 0.8)
        _place(out, _normalized(_fade(burst, 64), rng.uniform(0.4, 0.8)), start)
        start += length + int(SAMPLE_RATE * rng.uniform(0.05, 0.6))
    return out


def _tone(pitch: float, count: int, decay: float) -> array[float]:
    """Return a sine at `pitch` Hz decaying by e every 1/`decay` seconds, with a click-free start and end."""
    step = math.tau * pitch / SAMPLE_RATE
    sines = map(math.sin, map(operator.mul, range(count), repeat(step)))
    envelope = accumulate(repeat(math.exp(-decay / SAMPLE_RATE), count - 1), operator.mul, initial=1.0)
    return _fade(array("f", map(operator.mul, sines, envelope)), 64)


def _mix(first: array[float], second: array[float], gain: float) -> array[float]:
    return array("f", map(operator.add, first, map(operator.mul, second, repeat(gain))))


def _normalized(samples: array[float], peak: float = 0.8) -> array[float]:
    """Scale the samples so that the loudest one reaches `peak` (below full scale, as real outputs are)."""
    gain = peak / max(max(samples), -min(samples), 1e-9)
    return array("f", map(operator.mul, samples, repeat(gain)))


def _place(out: array[float], clip: array[float], start: int) -> None:
    """Copy `clip` into `out` at `start`, cut at the end of `out`."""
    end = min(start + len(clip), len(out))
    out[start:end] = clip[: end - start]


def _fade(samples: array[float], length: int) -> array[float]:
    """Ramp the first and last `length` samples in place, so nothing clicks; return the samples."""
    length = min(length, len(samples) // 2)
    for index in range(length):
        samples[index] *= index / length
        samples[-1 - index] *= index / length
    return samples


def _wav_bytes(samples: array[float]) -> bytes:
    """Encode mono 32-bit float samples as WAVE_FORMAT_EXTENSIBLE with a fact chunk, little-endian on any host."""
    if sys.byteorder == "big":
        samples = array("f", samples)
        samples.byteswap()
    rate, width = SAMPLE_RATE, samples.itemsize
    fmt = struct.pack("<HHIIHHHHI16s", 0xFFFE, 1, rate, rate * width, width, 32, 22, 32, 4, _FLOAT_SUBFORMAT)
    chunks = b"".join(
        tag + struct.pack("<I", len(payload)) + payload
        for tag, payload in ((b"fmt ", fmt), (b"fact", struct.pack("<I", len(samples))), (b"data", samples.tobytes()))
    )
    return b"RIFF" + struct.pack("<I", 4 + len(chunks)) + b"WAVE" + chunks
