"""The sandbox's fault table: every failure or quirk it can inject, where it fires, and the switchboard that fires it.

A fault is armed `times` times (or until cleared); each request that can show one takes the first armed fault of
the kinds it knows and counts it down. The steady behaviours (speed, jitter, clock skew, zone of the zone-less
stamps) are not faults but `SandboxConfig` fields.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from enum import StrEnum
from typing import Final

__all__ = [
    "ENCODED",
    "FAULTS",
    "JOB_OUTCOMES",
    "ODD_IDS",
    "REDIRECTS",
    "Fault",
    "FaultKind",
    "Faults",
    "faults_at",
]


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
REDIRECTS: Final = {
    FaultKind.MEDIA_REDIRECT_FILE: "file:///etc/passwd",
    FaultKind.MEDIA_REDIRECT_OTHER_HOST: "http://169.254.169.254/latest/meta-data/",
}
ODD_IDS: Final = {FaultKind.SUBMIT_ODD_ID: "../../etc/passwd", FaultKind.SUBMIT_LONG_ID: "x" * 10_000}
ENCODED: Final = {
    # kind: (container sandbox_media.encode writes, Content-Type of the answer)
    FaultKind.MEDIA_RF64: ("rf64", "audio/wav"),
    FaultKind.MEDIA_FLAC: ("flac", "application/octet-stream"),
    FaultKind.MEDIA_OGG: ("ogg", "audio/ogg"),
    FaultKind.MEDIA_OPUS: ("opus", "audio/ogg"),
    FaultKind.MEDIA_MP3: ("mp3", "audio/mpeg"),
    FaultKind.TRUNCATED_FLAC: ("flac", "application/octet-stream"),
}
JOB_OUTCOMES: Final = {
    # kind: (terminal status, error message)
    FaultKind.JOB_FAILED: ("FAILED", "Generation failed: the model produced no audio"),
    FaultKind.JOB_ERROR: ("ERROR", "Internal error; you were not charged"),
}


def faults_at(where: str) -> tuple[FaultKind, ...]:
    """Return the kinds that fire at `where` (gateway, submit, job, status or media), in FAULTS order."""
    return tuple(kind for kind, (place, _effect) in FAULTS.items() if place == where)


@dataclass
class Fault:
    """A fault to inject `times` times (None: until cleared)."""

    kind: FaultKind
    times: int | None = None


class Faults:
    """The armed faults, in the order they were added."""

    def __init__(self) -> None:
        """Start with none armed."""
        self._armed: list[Fault] = []

    def add(self, fault: Fault) -> None:
        """Arm a fault (a copy, so the caller's object is never counted down)."""
        if fault.times is not None and fault.times < 1:
            raise ValueError("times must be None or at least 1")
        self._armed.append(replace(fault))

    def clear(self) -> None:
        """Disarm every fault."""
        self._armed.clear()

    def take(self, *kinds: FaultKind) -> FaultKind | None:
        """Fire the first armed fault of one of these kinds, counting it down; None if there is none."""
        for fault in self._armed:
            if fault.kind in kinds:
                if fault.times is not None:
                    fault.times -= 1
                    if fault.times == 0:
                        self._armed.remove(fault)
                return fault.kind
        return None
