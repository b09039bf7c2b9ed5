"""Pydantic models at every boundary: tool parameters, stored jobs, tool results and Pixazo's wire format."""

from __future__ import annotations

import re
import unicodedata
from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, field_validator

MODEL_ID = "mmaudio-v2-text-to-audio"
REQUEST_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$"
"""Pixazo ids look like `mmaudio-v2-text-to-audio_<uuid>`; anything path-like is refused before use."""

_REQUEST_ID_RE = re.compile(REQUEST_ID_PATTERN)


class JobStatus(StrEnum):
    """Where a job is. SUBMITTING and REJECTED are local: no request_id came back (yet), or Pixazo refused the job."""

    SUBMITTING = "SUBMITTING"
    REJECTED = "REJECTED"
    QUEUED = "QUEUED"
    PROCESSING = "PROCESSING"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"
    ERROR = "ERROR"

    @property
    def is_terminal(self) -> bool:
        return self in (JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.ERROR, JobStatus.REJECTED)


def utc_now() -> datetime:
    """The current time, in UTC (every stored timestamp is)."""
    return datetime.now(UTC)


def is_valid_request_id(value: str) -> bool:
    """Tell whether a string can be a Pixazo request_id (and is safe in a URL path and a file name)."""
    return bool(_REQUEST_ID_RE.fullmatch(value)) and ".." not in value


def _parse_timestamp(value: Any) -> datetime | None:
    """Read both of Pixazo's timestamp shapes (ISO with Z, or naive `YYYY-MM-DD HH:MM:SS` in UTC); None if neither."""
    if value is None or isinstance(value, datetime):
        return value
    if not isinstance(value, str) or not value.strip():
        return None
    try:
        parsed = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


Timestamp = Annotated[datetime | None, BeforeValidator(_parse_timestamp)]


class GenerationParams(BaseModel):
    """What MMAudio v2 is asked to make; the bounds are Pixazo's."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    prompt: str = Field(min_length=1, max_length=2000)
    negative_prompt: str = Field(default="", max_length=2000)
    duration: int = Field(default=8, ge=2, le=30, strict=True)
    num_steps: int = Field(default=25, ge=10, le=100, strict=True)
    cfg_strength: float = Field(default=4.5, ge=1.0, le=10.0, allow_inf_nan=False)
    mask_away_clip: bool = False

    @field_validator("prompt")
    @classmethod
    def _prompt_not_blank(cls, value: str) -> str:
        # Controls, invisible format characters and spaces say nothing to the model: a prompt of only those would
        # be paid for and produce noise.
        if not any(unicodedata.category(c)[0] not in "CZ" for c in value):
            raise ValueError("the prompt is blank: describe the sound to generate")
        return value.strip()


class AudioFile(BaseModel):
    """A checked audio file on disk: the delivered WAV, or a processed variant of it."""

    path: str = Field(description="Absolute path of the file on this machine.")
    uri: str = Field(description="file:// URI of the same file.")
    bytes: int
    sha256: str
    sample_rate: int
    channels: int
    sample_format: str = Field(description="pcm16, pcm24, pcm32, float32, float64, vorbis or mp3.")
    duration_seconds: float
    format: str = Field(default="wav", description="wav, flac, ogg or mp3.")
    relative_path: str | None = Field(default=None, description="Path inside the workspace root it was saved to.")
    loudness_lufs: float | None = Field(default=None, description="Integrated loudness, when normalized.")
    loop_seconds: float | None = Field(default=None, description="Loop length, when made to loop.")


class JobError(BaseModel):
    """Why a job or a call failed, and whether trying again can help."""

    kind: str
    message: str
    retryable: bool = False


class JobRecord(BaseModel):
    """One stored job: written before the submit, completed as answers arrive."""

    local_id: str
    request_id: str | None = None
    status: JobStatus = JobStatus.SUBMITTING
    params: GenerationParams | None = Field(default=None, description="None for a job made elsewhere and adopted.")
    created_at: datetime
    submitted_at: datetime | None = None
    updated_at: datetime
    completed_at: datetime | None = None
    media_url: str | None = None
    run_seconds: float | None = Field(default=None, description="How long Pixazo took, for learning the ETA.")
    webhook_token: str | None = Field(default=None, description="Secret path part of this job's webhook URL.")
    owner: str | None = Field(
        default=None, description="Salted hash of the caller's own Pixazo key; None for the server's key."
    )
    variants: dict[str, AudioFile] = Field(
        default_factory=dict[str, AudioFile], description="Processed variants, by ProcessOptions.variant_key()."
    )
    error: JobError | None = None
    file: AudioFile | None = None


class AudioJob(BaseModel):
    """A text-to-audio job as the agent sees it."""

    request_id: str
    status: JobStatus
    params: GenerationParams | None = None
    created_at: datetime
    updated_at: datetime
    completed_at: datetime | None = None
    elapsed_seconds: float = Field(description="Seconds since the job was submitted (until it finished).")
    eta_seconds: float | None = Field(default=None, description="Estimated seconds until the job finishes.")
    media_url: str | None = None
    file: AudioFile | None = None
    error: JobError | None = None
    next_step: str | None = Field(default=None, description="What to call next, if anything.")


# --- Pixazo's wire format -------------------------------------------------------------------------------------------


class SubmitReply(BaseModel):
    """Pixazo's 202 answer to a submit."""

    request_id: str
    status: str = "QUEUED"
    polling_url: str | None = None


class StatusOutput(BaseModel):
    media_url: list[str] = Field(default_factory=list[str])
    media_type: str | None = None


class StatusReply(BaseModel):
    """Pixazo's answer to a status poll; tolerant of nulls and both timestamp shapes."""

    request_id: str
    status: JobStatus
    model_id: str | None = None
    error: str | None = None
    output: StatusOutput | None = None
    created_at: Timestamp = None
    updated_at: Timestamp = None
    completed_at: Timestamp = None


__all__ = [
    "MODEL_ID",
    "REQUEST_ID_PATTERN",
    "AudioFile",
    "AudioJob",
    "GenerationParams",
    "JobError",
    "JobRecord",
    "JobStatus",
    "StatusOutput",
    "StatusReply",
    "SubmitReply",
    "is_valid_request_id",
    "utc_now",
]
