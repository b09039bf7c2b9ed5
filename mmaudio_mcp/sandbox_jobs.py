"""The sandbox's job model: its configuration, each job's schedule and phases, and the statistics clients leave.

Timing is clock-driven with no background task: each job's schedule (queue wait, optional concurrency limit,
jittered processing time) and fate are fixed at submit, and every answer reads the schedule against the clock.
"""

from __future__ import annotations

import heapq
import random
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, cast

from mmaudio_mcp.sandbox_audio import WAV_HEADER_BYTES
from mmaudio_mcp.sandbox_faults import JOB_OUTCOMES, FaultKind
from mmaudio_mcp.sandbox_state import StoredJob

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

__all__ = [
    "SANDBOX_API_KEY",
    "Job",
    "JobTiming",
    "Phase",
    "SandboxConfig",
    "SandboxStats",
    "Schedule",
    "Webhook",
    "check_config",
    "expected_seconds",
]

SANDBOX_API_KEY = "sandbox-key"


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


def check_config(config: SandboxConfig) -> None:
    """Refuse a config that makes no sense, with a ValueError naming the field."""
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
class Phase:
    """A status a job holds from `since` on; terminal ones never change."""

    status: str
    since: float
    terminal: bool


@dataclass
class Webhook:
    """Where a job's callbacks go, whether every phase (sync) or only the end is announced, and what is pending."""

    url: str
    sync: bool
    announced: int = 0  # callback phases already put in the outbox
    outbox: list[dict[str, object]] = field(default_factory=list[dict[str, object]])


@dataclass
class Job:
    """A job as the gateway knows it: what was asked, its schedule and fate, fixed at submit."""

    request_id: str
    prompt: str
    duration: int
    created: float
    started: float
    finished: float
    fate: FaultKind | None
    media_origin: str  # the CDN origin as seen by the submit request, for callbacks
    webhook: Webhook | None = None
    wav: bytes | None = None

    @classmethod
    def restored(cls, row: StoredJob) -> Job:
        """Return the job a state file row describes."""
        fate = FaultKind(row.fate) if row.fate else None
        return cls(
            row.request_id, row.prompt, row.duration, row.created, row.started, row.finished, fate, row.media_origin
        )

    def stored(self, key_hash: str | None) -> StoredJob:
        """Return the row that lets another sandbox process answer for this job."""
        fate = self.fate.value if self.fate else None
        return StoredJob(
            self.request_id,
            self.prompt,
            self.duration,
            self.created,
            self.started,
            self.finished,
            fate,
            self.media_origin,
            None,
            key_hash,
        )

    def timing(self) -> JobTiming:
        """Return a fresh timing record of this job's schedule."""
        return JobTiming(self.created, self.started, self.finished, self.phases()[2].status)

    def phases(self) -> tuple[Phase, Phase, Phase]:
        """Return the job's QUEUED, PROCESSING and terminal phases."""
        outcome = JOB_OUTCOMES[self.fate][0] if self.fate else "COMPLETED"
        return (
            Phase("QUEUED", self.created, False),
            Phase("PROCESSING", self.started, False),
            Phase(outcome, self.finished, True),
        )

    def phase_at(self, now: float) -> Phase:
        """Return the phase the job is in at `now`."""
        queued, processing, end = self.phases()
        if now >= self.finished:
            return end
        return processing if now >= self.started else queued

    def callback_phases(self) -> list[Phase]:
        """Return the phases its webhook announces: the terminal one, or (sync) every one the job goes through."""
        queued, processing, end = self.phases()
        if self.webhook is None or not self.webhook.sync:
            return [end]
        return [queued, processing, end] if self.started < self.finished else [queued, end]


def expected_seconds(duration: int, num_steps: int) -> float:
    """Return the simulated processing time at speed 1: 2 + 0.075 * duration * num_steps (8 s, 25 steps: 17 s)."""
    return 2.0 + 0.075 * duration * num_steps


class Schedule:
    """Places jobs in time: queue wait, jittered processing, and (with a concurrency cap) free slots in FIFO order."""

    def __init__(self, config: SandboxConfig) -> None:
        """Start with every slot free and the jitter drawn from `random.Random(config.seed)`."""
        self._config = config
        self._rng = random.Random(config.seed)
        self._slots: list[float] = []  # heap of the times the busy processing slots free up

    def place(self, created: float, seconds: float) -> tuple[float, float]:
        """Return when a job submitted at `created` starts and ends processing, taking a free slot in FIFO order."""
        speed, jitter = self._config.speed, self._config.jitter
        processing = seconds * speed * (self._rng.uniform(1 - jitter, 1 + jitter) if jitter else 1.0)
        started = created + self._config.queue_seconds * speed
        if self._config.concurrency is not None:
            if len(self._slots) >= self._config.concurrency:
                started = max(started, heapq.heappop(self._slots))
            heapq.heappush(self._slots, started + processing)
        return started, started + processing
