"""What processing makes of a generated WAV: the options (validated, with a stable cache key) and the facts measured.

Pure data, importing no audio library: the server, the CLI and the sync command describe variants with it, and only
`processing.process_file` turns one into a file.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Final, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

if TYPE_CHECKING:
    from pathlib import Path

__all__ = [
    "DEFAULT_TARGET_LUFS",
    "MP3_SAMPLE_RATES",
    "AudioFormat",
    "ProcessOptions",
    "ProcessedAudio",
    "asked_options",
    "list_rates",
]

AudioFormat = Literal["wav", "flac", "ogg", "mp3"]

DEFAULT_TARGET_LUFS: Final = -16.0
"""The loudness to normalize to when none is named (-16 LUFS, the usual target for streamed and game audio)."""

MP3_SAMPLE_RATES = frozenset({8000, 11025, 12000, 16000, 22050, 24000, 32000, 44100, 48000})
"""The only rates MPEG-1/2/2.5 Layer III can carry."""


class ProcessOptions(BaseModel):
    """What to make of a generated WAV. The defaults change nothing: see `is_identity`."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    format: AudioFormat = Field(default="wav", description="Output format: wav (32-bit float), flac, ogg, mp3.")
    sample_rate: int | None = Field(
        default=None, ge=8000, le=192000, description="Resample to this rate in Hz; None keeps the source rate."
    )
    channels: Literal[1, 2] | None = Field(
        default=None, description="1 for mono (channels averaged), 2 for stereo (mono duplicated); None keeps them."
    )
    normalize: bool = Field(default=False, description="Set the integrated loudness to target_lufs.")
    target_lufs: float = Field(
        default=DEFAULT_TARGET_LUFS,
        ge=-40.0,
        le=-5.0,
        allow_inf_nan=False,
        description="Loudness target in LUFS (0.1 steps).",
    )
    true_peak_db: float = Field(
        default=-1.0,
        ge=-9.0,
        le=0.0,
        allow_inf_nan=False,
        description="True-peak ceiling in dBTP after normalization (0.1 steps); it wins over the loudness target.",
    )
    trim_silence: bool = Field(default=False, description="Cut leading and trailing silence.")
    fade_ms: int = Field(default=0, ge=0, le=5000, description="Fade in and out over this many ms; ignored for loops.")
    loop: bool = Field(default=False, description="Crossfade the end into the start so the clip loops seamlessly.")

    @field_validator("target_lufs", "true_peak_db")
    @classmethod
    def _to_tenths(cls, value: float) -> float:
        """Keep 0.1 dB: finer steps are inaudible, and one value per key keeps the cache honest."""
        return round(value, 1) + 0.0  # + 0.0 turns -0.0 into 0.0

    @model_validator(mode="after")
    def _mp3_rate(self) -> ProcessOptions:
        if self.format == "mp3" and self.sample_rate is not None and self.sample_rate not in MP3_SAMPLE_RATES:
            raise ValueError(f"mp3 cannot carry {self.sample_rate} Hz; use one of {list_rates(MP3_SAMPLE_RATES)}")
        return self

    @property
    def is_identity(self) -> bool:
        """True when the result is just the original WAV: format wav and nothing else asked for."""
        return (
            self.format == "wav"
            and self.sample_rate is None
            and self.channels is None
            and not self.normalize
            and not self.trim_silence
            and self.fade_ms == 0
            and not self.loop
        )

    def variant_key(self) -> str:
        """A short, stable, filename-safe key ([a-z0-9-]) of what the options change, such as
        'ogg-48k-st-n16-loop'. It starts with the format and names only options that take effect (no loudness
        values without normalize, no fade on a loop), so options that give the same audio share a key."""
        parts: list[str] = [self.format]
        if self.sample_rate is not None:
            parts.append(_rate_key(self.sample_rate))
        if self.channels is not None:
            parts.append("mono" if self.channels == 1 else "st")
        if self.normalize:
            parts.append(f"n{_db_key(self.target_lufs)}")
            if self.true_peak_db != -1.0:
                parts.append(f"tp{_db_key(self.true_peak_db)}")
        if self.trim_silence:
            parts.append("trim")
        if self.fade_ms and not self.loop:
            parts.append(f"f{self.fade_ms}")
        if self.loop:
            parts.append("loop")
        return "-".join(parts)


_ASKED_AS_NAMED: Final = ("format", "sample_rate", "channels", "trim_silence", "fade_ms", "loop")
"""The options the command line and sounds.toml name exactly as ProcessOptions does."""


def asked_options(asked: object, loudness: float | bool | None) -> ProcessOptions:
    """The options a face asks for: the attributes of `asked` named as in ProcessOptions (format, sample_rate,
    channels, trim_silence, fade_ms, loop), and `loudness`: a target in LUFS, True for DEFAULT_TARGET_LUFS, or
    None (or False) to leave the loudness alone."""
    named = {name: getattr(asked, name) for name in _ASKED_AS_NAMED}
    if loudness is None or loudness is False:
        return ProcessOptions(**named)
    target = DEFAULT_TARGET_LUFS if loudness is True else loudness
    return ProcessOptions(normalize=True, target_lufs=target, **named)


def _rate_key(rate: int) -> str:
    """48000 -> '48k', 44100 -> '44k1', 22050 -> '22k05', 12345 -> '12k345'."""
    thousands, rest = divmod(rate, 1000)
    return f"{thousands}k{str(rest).zfill(3).rstrip('0')}"


def _db_key(value: float) -> str:
    """-16.0 -> '16', -14.5 -> '14p5', 0.0 -> '0' (every value in range is at most 0)."""
    return f"{abs(value):.1f}".removesuffix(".0").replace(".", "p")


def list_rates(rates: frozenset[int]) -> str:
    """Return the rates in ascending order, comma-separated, for a message."""
    return ", ".join(str(rate) for rate in sorted(rates))


@dataclass(frozen=True)
class ProcessedAudio:
    """Facts measured on the written file (decoded again after writing), not on the intent."""

    path: Path
    format: AudioFormat
    sample_rate: int
    channels: int
    duration_seconds: float
    loudness_lufs: float | None
    """Integrated loudness; None when the clip is shorter than 0.4 s or silent."""
    peak_db: float
    """Sample peak in dBFS (-150 for digital silence)."""
    loop_seconds: float | None
    """The length of one repetition when the clip was made to loop."""
    true_peak_db: float | None = None
    """True (4x oversampled) peak of the decoded file in dBTP, when normalized."""
    note: str | None = None
    """What did not come out as asked, and why (a loudness target out of reach, a loop shorter than the clip)."""
