"""Pydantic models at every boundary: tool parameters, stored jobs, tool results and Pixazo's wire format."""

from __future__ import annotations

import re
import unicodedata
from datetime import UTC, datetime
from enum import StrEnum
from typing import TYPE_CHECKING, Annotated, Any, Final, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, field_validator
from pydantic.json_schema import SkipJsonSchema

if TYPE_CHECKING:
    from pydantic import ValidationError
    from pydantic_core import ErrorDetails

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


# --- Argument bounds, declared once: the tool signatures (and so their JSON schemas) and the models share them -----

_RANGES: Final[dict[str, tuple[float, float, str]]] = {
    "duration": (2, 30, "seconds"),
    "num_steps": (10, 100, ""),
    "cfg_strength": (1.0, 10.0, ""),
    "wait_seconds": (0, 300, "seconds"),
    "sample_rate": (8000, 192000, "Hz"),
    "target_lufs": (-40, -5, "LUFS"),
    "fade_ms": (0, 5000, "ms"),
}
"""Allowed range and unit of each bounded argument, by name: read by the types below and by the error sentences."""


def _ranged(name: str, description: str, **extra: Any) -> Any:
    low, high, _ = _RANGES[name]
    return Field(ge=low, le=high, description=description, **extra)


PROMPT_MAX_CHARS: Final = 2000
Prompt = Annotated[
    str,
    Field(
        min_length=1,
        max_length=PROMPT_MAX_CHARS,
        pattern=r"\S",
        description="The sound in plain words, essentials first (only ~60 words are read), "
        "e.g. 'rain on a tin roof, distant thunder'.",
    ),
]
NegativePrompt = Annotated[
    str, Field(max_length=PROMPT_MAX_CHARS, description="Sounds to avoid, e.g. 'music, voices'.")
]
Duration = Annotated[int, _ranged("duration", "Seconds; the model was trained on 8 s clips.")]
NumSteps = Annotated[int, _ranged("num_steps", "Diffusion steps; more is slower.")]
CfgStrength = Annotated[float, _ranged("cfg_strength", "How literally to follow the prompt.", allow_inf_nan=False)]
MaskAwayClip = Annotated[bool, Field(description="Passed to MMAudio; likely no effect on text-only audio.")]
WaitSeconds = Annotated[
    float,
    _ranged(
        "wait_seconds",
        "Seconds to wait in this call, with progress; 0 returns the request_id at once.",
        allow_inf_nan=False,
    ),
]
RequestId = Annotated[
    str, Field(max_length=128, pattern=REQUEST_ID_PATTERN, description="The request_id from generate_audio.")
]
FileName = Annotated[
    str | None, Field(max_length=120, description="Bare file name for the copy, e.g. 'door_creak' (suffix optional).")
]
Folder = Annotated[
    str | None,
    Field(
        max_length=1024, description="Also save into this folder, e.g. 'assets/sfx' (relative to the workspace root)."
    ),
]
Overwrite = Annotated[bool, Field(description="Replace an existing file of the same name.")]
Format = Annotated[Literal["wav", "flac", "ogg", "mp3"], Field(description="Output format (ogg suits loops).")]
SampleRate = Annotated[int | None, _ranged("sample_rate", "Resample, e.g. 48000.")]
Channels = Annotated[Literal[1, 2] | None, Field(description="1 mono, 2 stereo (duplicated).")]
Normalize = Annotated[bool, Field(description="Normalize loudness to target_lufs (peak <= -1 dBTP).")]
TargetLufs = Annotated[float, _ranged("target_lufs", "Loudness target when normalizing.", allow_inf_nan=False)]
TrimSilence = Annotated[bool, Field(description="Trim leading and trailing silence.")]
FadeMs = Annotated[int, _ranged("fade_ms", "Fade in/out in ms (not for loops).")]
Loop = Annotated[bool, Field(description="Make the clip loop seamlessly.")]

_RANGE_ERRORS: Final = frozenset({"greater_than_equal", "less_than_equal", "greater_than", "less_than"})
_KIND_ERRORS: Final = {
    "int_type": "a whole number",
    "int_parsing": "a whole number",
    "int_from_float": "a whole number",
    "float_type": "a number",
    "float_parsing": "a number",
    "finite_number": "a finite number",
    "bool_type": "true or false",
    "bool_parsing": "true or false",
    "string_type": "a string",
}


def explain_validation_error(exc: ValidationError) -> str:
    """Say what is wrong with some arguments, one sentence per error: the argument, what is allowed, what was given
    (e.g. "duration must be between 2 and 30 seconds (got 99)."). For tool results and the command line alike."""
    return " ".join(dict.fromkeys(_sentence(error) for error in exc.errors(include_url=False)))


def _sentence(error: ErrorDetails) -> str:
    name = ".".join(str(part) for part in error["loc"]) or "the arguments"
    field = str(error["loc"][-1]) if error["loc"] else ""
    kind = error["type"]
    ctx: dict[str, Any] = dict(error.get("ctx") or {})
    given = f" (got {_shown(error.get('input'))})"
    if kind in _RANGE_ERRORS:
        return f"{name} must be {_range_words(field, kind, ctx)}{given}."
    if kind in _KIND_ERRORS:
        return f"{name} must be {_KIND_ERRORS[kind]}{given}."
    return _other_sentence(name, field, kind, error, ctx, given)


def _range_words(field: str, kind: str, ctx: dict[str, Any]) -> str:
    if field in _RANGES:
        low, high, unit = _RANGES[field]
        return f"between {low:g} and {high:g}{' ' + unit if unit else ''}"
    words = {"greater_than_equal": "at least", "less_than_equal": "at most", "greater_than": "more than"}
    return f"{words.get(kind, 'less than')} {next(iter(ctx.values()), '?')}"


def _other_sentence(name: str, field: str, kind: str, error: ErrorDetails, ctx: dict[str, Any], given: str) -> str:
    if kind == "missing":
        return f"{name} is required."
    if kind == "extra_forbidden":
        return f"{name} is not an argument here."
    if kind in ("literal_error", "enum"):
        return f"{name} must be one of {ctx.get('expected', '')}{given}."
    if kind == "string_too_short":
        return f"{name} must not be empty{given}." if ctx.get("min_length") == 1 else f"{name} is too short{given}."
    if kind == "string_too_long":
        size = len(error["input"]) if isinstance(error.get("input"), str) else "more"
        return f"{name} must be at most {ctx.get('max_length')} characters (got {size})."
    if kind == "string_pattern_mismatch" and field == "request_id":
        return f"{name} must be a request_id returned by generate_audio{given}."
    if kind == "string_pattern_mismatch":
        return f"{name} must say something{given}." if field == "prompt" else f"{name} is malformed{given}."
    reason = error["msg"].removeprefix("Value error, ").removeprefix("Assertion failed, ").rstrip(".")
    return f"{name}: {reason}{given}."


def _shown(value: Any, limit: int = 40) -> str:
    """A given value as the sentence quotes it: short, on one line."""
    text = str(value).lower() if isinstance(value, bool) else "null" if value is None else repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


class GenerationParams(BaseModel):
    """What MMAudio v2 is asked to make; the bounds are Pixazo's."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    prompt: Prompt
    negative_prompt: NegativePrompt = ""
    duration: Annotated[Duration, Field(strict=True)] = 8
    num_steps: Annotated[NumSteps, Field(strict=True)] = 25
    cfg_strength: CfgStrength = 4.5
    mask_away_clip: MaskAwayClip = False

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
    true_peak_db: float | None = Field(default=None, description="True peak in dBTP, when normalized.")
    note: str | None = Field(default=None, description="What did not come out as asked, and why.")


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
    completed_at: datetime | None = Field(default=None, description="When Pixazo says it finished, by its clock.")
    finished_at: datetime | None = Field(default=None, description="When this server first saw it finished.")
    polled_at: datetime | None = Field(default=None, description="When this server last heard its status.")
    pending_at: datetime | None = Field(
        default=None, description="When this server last heard it was not finished (learning brackets the run)."
    )
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


class NextStep(BaseModel):
    """What should happen next with a job, as data: each face words it (the tools as a tool call, the terminal as a
    command). `wait`: it is still running; `download`: it completed but its audio is not on disk yet;
    `generate_again`: it failed, and only a new (paid) job can help."""

    action: Literal["wait", "download", "generate_again"]
    request_id: str | None = None


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
    next: SkipJsonSchema[NextStep | None] = Field(default=None, exclude=True)
    """What happens next, as data; each face words it into next_step (kept out of the wire format and schema)."""
    downloading: bool = Field(
        default=False, description="The audio is being downloaded in the background; ask again in a few seconds."
    )
    audio_url: str | None = Field(
        default=None,
        description="A time-limited URL of the audio in the team's object storage (servers run as replicas with "
        "MMAUDIO_PRESIGN_SECONDS): the server's file path means nothing on another machine.",
    )
    reattached: bool = Field(
        default=False,
        description="This call joined the job an identical earlier call started, whose result never reached you "
        "(it was cancelled or its connection closed): nothing was paid again.",
    )


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
    "CfgStrength",
    "Channels",
    "Duration",
    "FadeMs",
    "FileName",
    "Folder",
    "Format",
    "GenerationParams",
    "JobError",
    "JobRecord",
    "JobStatus",
    "Loop",
    "MaskAwayClip",
    "NegativePrompt",
    "NextStep",
    "Normalize",
    "NumSteps",
    "Overwrite",
    "Prompt",
    "RequestId",
    "SampleRate",
    "StatusOutput",
    "StatusReply",
    "SubmitReply",
    "TargetLufs",
    "TrimSilence",
    "WaitSeconds",
    "explain_validation_error",
    "is_valid_request_id",
    "utc_now",
]
