"""Turn a downloaded WAV into the asset a project needs: another format, rate or layout, a loudness, a clean loop.

Processing is local and pure: `process_file` reads the original WAV, never touches it, and writes one variant to
a destination chosen by the caller (atomically, through a hidden temporary file beside it). `ProcessOptions`
describes the variant and gives it a stable `variant_key`, so that a cache can keep one file per request and
options.

The steps always run in this order, each only when asked for:

1. trim_silence: cut leading and trailing silence (samples below -50 dBFS, or 40 dB under the clip's peak when
   that is lower, so that quiet clips keep their quiet parts), keeping 10 ms of margin on each side.
2. loop: crossfade the tail into the head and drop the tail, so that the last sample runs on into the first one
   exactly as two neighbouring samples of the original do. The tail's start is moved by up to 25 ms to the
   position that best matches the head in phase, and the crossfade gains follow the correlation of the two
   parts (equal-power for unrelated sound such as noise, linear for matching sound such as a steady tone), so
   the loudness neither dips nor bulges across the crossfade.
3. sample_rate: resample with soxr at high quality; a loop is resampled as a periodic signal (with its own end
   and start as context), so the seam stays clean.
4. channels: mono by averaging the channels, stereo by duplicating a mono channel (or by duplicating the mono
   downmix of a source with more than two channels).
5. normalize: gain to the integrated loudness target (ITU-R BS.1770 via pyloudnorm), then a true-peak limiter
   (4x oversampled peaks, 1.5 ms look-ahead, smooth gain) keeps peaks under the ceiling; a few rounds of gain
   and limiting bring the loudness within 0.5 LU of the target. A limiter changes punchy sounds (the transient
   is what it lowers), so it may take at most 12 dB off a peak: when the target needs more, the clip stays
   quieter and the result says so (`loudness_note`). Clips shorter than 0.4 s have no gated loudness: they are
   peak-normalized to the ceiling instead.
6. fade_ms: equal-power fade in and fade out, each at most half the clip. Fades are ignored for loops: a fade
   would put silence at the seam.

Then the audio is encoded: WAV as 32-bit float (like MMAudio's own output), FLAC as 24-bit PCM (clipped to
full scale), Ogg Vorbis at quality 0.6 and MP3 as LAME VBR V2. Ogg Vorbis is the format to choose for loops:
its decoders are sample-accurate, whereas many MP3 players add a gap at the start of every repetition. Lossy
codecs overshoot peaks, so a normalized ogg or mp3 is decoded again and, while its true peak is above the
ceiling, limited with more headroom and encoded again: the promise holds for the file, not for the intent.

A loop is shorter than the clip it is made from: the crossfade that hides the seam uses up to 1 s (at most a
quarter of the clip) of its end, plus up to 25 ms for the phase match. The result's `loop_seconds` is the exact
length of one repetition.

numpy, soundfile, soxr and pyloudnorm (with scipy) are imported only inside the functions that use them: the
server starts without them, and most calls never process audio.
"""

from __future__ import annotations

import contextlib
import math
import os
import shutil
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Final, Literal, TypeAlias, cast

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from mmaudio_mcp.audio import part_file_for
from mmaudio_mcp.errors import InvalidArgumentError, InvalidAudioError

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

    import numpy as np
    from numpy.typing import NDArray

    Audio: TypeAlias = NDArray[np.float64]
    """Samples as (frames, channels), float64 while they are worked on."""

AudioFormat = Literal["wav", "flac", "ogg", "mp3"]

DEFAULT_TARGET_LUFS: Final = -16.0
"""The loudness to normalize to when none is named (-16 LUFS, the usual target for streamed and game audio)."""

MP3_SAMPLE_RATES = frozenset({8000, 11025, 12000, 16000, 22050, 24000, 32000, 44100, 48000})
"""The only rates MPEG-1/2/2.5 Layer III can carry."""

_MIN_GATED_SECONDS = 0.4
"""BS.1770 integrated loudness needs at least one 400 ms gating block."""
_MIN_LOOP_SECONDS = 0.1
_LOOP_CROSSFADE_SECONDS = 1.0
_LOOP_CROSSFADE_FRACTION = 4
"""The loop crossfade is at most 1 s and at most a quarter of the clip."""
_LOOP_SEARCH_SECONDS = 0.025
"""How far the tail's start may move to match the head in phase: one period of 40 Hz."""
_PERIODIC_CONTEXT_SECONDS = 0.05
_TRIM_FLOOR_DB = -50.0
_TRIM_BELOW_PEAK_DB = 40.0
_TRIM_MARGIN_SECONDS = 0.01
_TRUE_PEAK_OVERSAMPLING = 4
_SILENCE_DB = -150.0
"""The peak reported for digital silence, instead of minus infinity."""


@dataclass(frozen=True)
class _Encoding:
    """How soundfile writes one output format."""

    format: str
    subtype: str
    compression_level: float | None = None
    bitrate_mode: str | None = None


_ENCODINGS: dict[str, _Encoding] = {
    "wav": _Encoding("WAV", "FLOAT"),
    "flac": _Encoding("FLAC", "PCM_24"),
    # libsndfile's compression level is 1 - Vorbis quality: 0.4 is quality 0.6 (about 100 kbit/s mono).
    "ogg": _Encoding("OGG", "VORBIS", compression_level=0.4),
    # For VBR, libsndfile passes 10 x the level to LAME as the VBR quality: 0.2 is the V2 preset.
    "mp3": _Encoding("MP3", "MPEG_LAYER_III", compression_level=0.2, bitrate_mode="VARIABLE"),
}


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
            raise ValueError(f"mp3 cannot carry {self.sample_rate} Hz; use one of {_rates(MP3_SAMPLE_RATES)}")
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


def _rates(rates: frozenset[int]) -> str:
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


def process_file(source: Path, dest: Path, options: ProcessOptions) -> ProcessedAudio:
    """Make one variant of the source WAV at dest and return what the written file measures.

    Blocking: run it in a worker thread. The source is read with soundfile (any WAV it reads: PCM, float,
    ADPCM...) and never modified; dest is written through a hidden `.<name>.<random>.part` file beside it and
    renamed into place, so it is either absent, the old file, or complete. When `options.is_identity`, dest is
    a byte-for-byte copy of the source. Raises InvalidAudioError when the source cannot be read as audio, and
    InvalidArgumentError when the options cannot apply to it (dest is the source, a clip too short to loop, an
    mp3 of a rate or channel count MP3 cannot carry, more than five channels to normalize).
    """
    if _same_file(source, dest):
        raise InvalidArgumentError("the destination is the source file; processing never replaces the original")
    data, rate = _read_audio(source)
    if options.is_identity:
        return _publish(dest, lambda part: shutil.copyfile(source, part), options)
    source_seconds = data.shape[0] / rate
    rendered, new_rate = _render(data, rate, options)
    _check_encodable(options.format, new_rate, rendered.shape[1])
    facts = _publish(dest, lambda part: _encode_within(part, rendered, new_rate, options), options)
    return replace(facts, note=_note(facts, options, source_seconds))


_TRUE_PEAK_MARGIN_DB = 0.1
"""Aim this far under the ceiling: true-peak meters differ by a few hundredths of a dB (oversampling filters)."""
_LOSSY_HEADROOM_DB = 0.3
"""First extra headroom for ogg and mp3, whose decoded peaks overshoot; more is taken while the file exceeds."""
_ENCODE_ROUNDS = 5


def _encode_within(part: Path, data: Audio, rate: int, options: ProcessOptions) -> None:
    """Encode; when normalizing, decode the file again and, while its true peak is over the ceiling or its
    loudness off the target (lossy codecs move both), limit and gain again and re-encode."""
    _encode(part, data, rate, options.format)
    if not options.normalize:
        return
    ceiling_db = options.true_peak_db - _TRUE_PEAK_MARGIN_DB
    ceiling_db -= _LOSSY_HEADROOM_DB if options.format in ("ogg", "mp3") else 0.0
    gain_db = 0.0
    peak = _true_peak(data, rate)
    most_gain_db = _gain_to_db(_db_to_gain(options.true_peak_db) / peak) + _MAX_LIMIT_DB if peak > 0 else 0.0
    for _ in range(_ENCODE_ROUNDS):
        decoded, decoded_rate = _read_audio(part)
        over = _gain_to_db(_true_peak(decoded, decoded_rate)) - (options.true_peak_db - _TRUE_PEAK_MARGIN_DB / 2)
        loudness = _integrated_loudness(decoded, decoded_rate)
        off = options.target_lufs - loudness if loudness is not None and math.isfinite(loudness) else 0.0
        if over <= 0.0 and (abs(off) <= _LOUDNESS_TOLERANCE_LU or (off > 0 and gain_db >= most_gain_db)):
            return
        if over > 0.0:
            ceiling_db -= over + 0.05
        gain_db = min(gain_db + off, most_gain_db)
        _encode(part, _limit(data * _db_to_gain(gain_db), rate, _db_to_gain(ceiling_db)), rate, options.format)


def _note(facts: ProcessedAudio, options: ProcessOptions, source_seconds: float) -> str | None:
    """Say what did not come out as asked."""
    notes: list[str] = []
    if options.normalize and facts.loudness_lufs is not None and facts.loudness_lufs < options.target_lufs - 1.0:
        notes.append(
            f"Loudness {facts.loudness_lufs:.1f} LUFS, not {options.target_lufs:g}: reaching it would take more "
            f"than {_MAX_LIMIT_DB:g} dB off the peaks (true peak kept at {options.true_peak_db:g} dBTP); "
            "a lower target or a less punchy sound gets there."
        )
    if options.loop and facts.loop_seconds is not None:
        short = source_seconds - facts.loop_seconds
        notes.append(
            f"The loop repeats every {facts.loop_seconds:.3f} s: {short:.3f} s of the {source_seconds:.3f} s clip "
            "went into the crossfade that hides the seam."
        )
    return " ".join(notes) or None


def _same_file(source: Path, dest: Path) -> bool:
    if source.resolve() == dest.resolve():
        return True
    try:
        return os.path.samefile(source, dest)
    except OSError:
        return False


def _read_audio(path: Path) -> tuple[Audio, int]:
    """Read a whole file as float64 (frames, channels); InvalidAudioError when it is not usable audio."""
    import numpy as np
    import soundfile as sf  # pyright: ignore[reportMissingTypeStubs]  # typed inline, but no py.typed marker

    if not path.is_file():
        raise InvalidAudioError(f"the audio file {path.name!r} does not exist or is not a regular file")
    try:
        raw, rate = sf.read(str(path), dtype="float64", always_2d=True)
    except (RuntimeError, OSError, ValueError, TypeError) as exc:  # sf.LibsndfileError is a RuntimeError
        raise InvalidAudioError(f"the file {path.name!r} cannot be read as audio: {exc}") from exc
    data = cast("Audio", raw)
    if data.shape[0] == 0:
        raise InvalidAudioError(f"the file {path.name!r} holds no audio (0 frames)")
    if not bool(np.all(np.isfinite(data))):
        raise InvalidAudioError(f"the file {path.name!r} contains NaN or infinite samples")
    return data, rate


def _render(data: Audio, rate: int, options: ProcessOptions) -> tuple[Audio, int]:
    """Apply the asked-for steps in their fixed order."""
    if options.trim_silence:
        data = _trim_silence(data, rate)
    if options.loop:
        data = _make_loop(data, rate)
    if options.sample_rate is not None and options.sample_rate != rate:
        data = _resample(data, rate, options.sample_rate, periodic=options.loop)
        rate = options.sample_rate
    if options.channels is not None:
        data = _set_channels(data, options.channels)
    if options.normalize:
        data = _normalize(data, rate, options.target_lufs, options.true_peak_db - _TRUE_PEAK_MARGIN_DB)
    if options.fade_ms and not options.loop:
        data = _fade(data, rate, options.fade_ms)
    return data, rate


def _trim_silence(data: Audio, rate: int) -> Audio:
    """Cut what lies before the first and after the last audible sample, keeping a 10 ms margin."""
    import numpy as np

    level = np.max(np.abs(data), axis=1)
    peak = float(np.max(level))
    threshold = min(_db_to_gain(_TRIM_FLOOR_DB), peak * _db_to_gain(-_TRIM_BELOW_PEAK_DB))
    audible = np.flatnonzero(level > threshold)
    if audible.size == 0:
        return data  # silence throughout: nothing to keep apart from the rest
    margin = round(_TRIM_MARGIN_SECONDS * rate)
    first = max(int(audible[0]) - margin, 0)
    last = min(int(audible[-1]) + margin + 1, data.shape[0])
    return data[first:last]


def _make_loop(data: Audio, rate: int) -> Audio:
    """Crossfade the tail into the head and drop the tail; the result's end runs on into its start."""
    import numpy as np

    frames = data.shape[0]
    if frames < _MIN_LOOP_SECONDS * rate:
        raise InvalidArgumentError(
            f"the clip is {frames / rate:.3f} s long, too short to loop (at least {_MIN_LOOP_SECONDS} s)"
        )
    overlap = min(round(_LOOP_CROSSFADE_SECONDS * rate), frames // _LOOP_CROSSFADE_FRACTION)
    search = min(round(_LOOP_SEARCH_SECONDS * rate), frames // _LOOP_CROSSFADE_FRACTION)
    # start >= frames - overlap - search >= frames / 2 >= overlap: the head and the tail never overlap.
    start, correlation = _best_tail_start(data.mean(axis=1), overlap, search)
    head = data[:overlap]
    tail = data[start : start + overlap]
    fade_in = (np.arange(overlap, dtype=np.float64) / overlap)[:, np.newaxis]
    fade_out = 1.0 - fade_in
    # Gains that keep the power constant for parts this correlated: linear at 1, equal-power at 0.
    rho = min(max(correlation, 0.0), 1.0)
    gain = 1.0 / np.sqrt(fade_in**2 + fade_out**2 + 2.0 * rho * fade_in * fade_out)
    looped = data[:start].copy()
    looped[:overlap] = gain * (fade_in * head + fade_out * tail)
    return looped


def _best_tail_start(mono: NDArray[np.float64], overlap: int, search: int) -> tuple[int, float]:
    """Pick where the tail's crossfade starts, within `search` frames before the end position, by the highest
    normalized correlation with the head; return it and that correlation."""
    import numpy as np

    frames = mono.shape[0]
    first = frames - overlap - search
    head = mono[:overlap]
    region = mono[first:frames]
    size = 1 << (region.shape[0] + overlap - 1).bit_length()
    spectrum = np.fft.rfft(region, size) * np.conj(np.fft.rfft(head, size))
    products = np.fft.irfft(spectrum, size)[: search + 1]
    energy = np.concatenate(([0.0], np.cumsum(region**2)))
    window_energy = energy[overlap : overlap + search + 1] - energy[: search + 1]
    denominator = np.sqrt(np.maximum(window_energy, 0.0) * float(np.sum(head**2)))
    scores = np.where(denominator > 1e-12, products / np.maximum(denominator, 1e-12), 0.0)
    best = int(np.argmax(scores))
    return first + best, float(scores[best])


def _resample(data: Audio, rate: int, new_rate: int, *, periodic: bool) -> Audio:
    """Resample with soxr (high quality); a periodic clip is resampled with its own end and start as context."""
    import numpy as np

    if not periodic:
        return _soxr(data, rate, new_rate)
    # Context of a whole number of rate ratios, so that it maps to a whole number of output frames.
    divisor = math.gcd(rate, new_rate)
    step_in, step_out = rate // divisor, new_rate // divisor
    steps = math.ceil(_PERIODIC_CONTEXT_SECONDS * rate / step_in)
    pad_in, pad_out = steps * step_in, steps * step_out
    extended = np.pad(data, ((pad_in, pad_in), (0, 0)), mode="wrap")
    resampled = _soxr(extended, rate, new_rate)
    frames = round(data.shape[0] * new_rate / rate)
    return resampled[pad_out : pad_out + frames]


def _soxr(data: Audio, rate: int, new_rate: int) -> Audio:
    """soxr's one-shot resampler at high quality (delay-compensated: output frame k is at time k / new_rate)."""
    import soxr  # pyright: ignore[reportMissingTypeStubs]  # soxr ships a .pyi for its extension but no py.typed

    return cast("Audio", soxr.resample(data, rate, new_rate, quality="HQ"))


def _set_channels(data: Audio, channels: int) -> Audio:
    """Average to mono, or duplicate mono (or the mono downmix) to stereo."""
    import numpy as np

    if data.shape[1] == channels:
        return data
    mono = data.mean(axis=1, keepdims=True)
    return mono if channels == 1 else np.repeat(mono, channels, axis=1)


_MAX_LIMIT_DB = 12.0
"""The most the limiter may take off a peak: beyond that a punchy sound loses its punch."""
_LOUDNESS_ROUNDS = 6
_LOUDNESS_TOLERANCE_LU = 0.5


def _normalize(data: Audio, rate: int, target_lufs: float, ceiling_db: float) -> Audio:
    """Gain to the loudness target with a true-peak limiter under the ceiling (a few rounds, as limiting lowers
    the loudness); without the loudness in reach, as loud as the limiter's bound allows. Short clips are
    peak-normalized to the ceiling."""
    if data.shape[1] > 5:
        raise InvalidArgumentError(
            f"loudness is measured for at most 5 channels and this audio has {data.shape[1]}; ask for channels=1 or 2"
        )
    peak = _true_peak(data, rate)
    if peak == 0.0:
        return data  # digital silence: no gain makes it louder
    ceiling = _db_to_gain(ceiling_db)
    loudness = _integrated_loudness(data, rate)
    if loudness is None:
        return data * (ceiling / peak)
    if not math.isfinite(loudness):
        return data  # every block under the -70 LUFS gate: too quiet to measure, and boosting it would boost noise
    gain_db = target_lufs - loudness
    result = data
    for _ in range(_LOUDNESS_ROUNDS):
        # Never more gain than lets the limiter stay within its bound on the loudest peak.
        gain_db = min(gain_db, _gain_to_db(ceiling / peak) + _MAX_LIMIT_DB)
        result = _limit(data * _db_to_gain(gain_db), rate, ceiling)
        reached = _integrated_loudness(result, rate)
        if reached is None or not math.isfinite(reached) or abs(target_lufs - reached) <= _LOUDNESS_TOLERANCE_LU:
            break
        step = target_lufs - reached
        if step > 0 and gain_db >= _gain_to_db(ceiling / peak) + _MAX_LIMIT_DB - 1e-9:
            break  # out of reach: the result says so
        gain_db += step
    return result


_LIMIT_WINDOW_SECONDS = 0.002
"""Half the limiter's window: its gain starts falling 2 ms before a peak and is back 2 ms after it."""


def _limit(data: Audio, rate: int, ceiling: float) -> Audio:
    """A true-peak limiter: a smooth gain that keeps every 4x-oversampled peak at or under `ceiling`.

    The gain each sample needs is the ceiling over its true peak (at most 1). A minimum over a window centred on
    each sample, then a moving average over the same window, ramps smoothly and never exceeds what any sample
    needs: every value averaged for a sample is a minimum over a window that contains that sample."""
    import numpy as np
    from scipy.ndimage import (  # pyright: ignore[reportMissingTypeStubs, reportUnknownVariableType]
        minimum_filter1d,  # pyright: ignore[reportUnknownVariableType]
        uniform_filter1d,  # pyright: ignore[reportUnknownVariableType]
    )

    frames = data.shape[0]
    oversampled = np.abs(_soxr(data, rate, rate * _TRUE_PEAK_OVERSAMPLING)).max(axis=1)
    count = min(oversampled.shape[0] // _TRUE_PEAK_OVERSAMPLING, frames)
    envelope = np.abs(data).max(axis=1)
    grouped = oversampled[: count * _TRUE_PEAK_OVERSAMPLING].reshape(count, _TRUE_PEAK_OVERSAMPLING).max(axis=1)
    envelope[:count] = np.maximum(envelope[:count], grouped)
    # An inter-sample peak lies between two samples: both keep it under the ceiling.
    envelope = np.maximum(envelope, np.concatenate((envelope[1:], envelope[-1:])))
    envelope = np.maximum(envelope, np.concatenate((envelope[:1], envelope[:-1])))
    if float(envelope.max()) <= ceiling:
        return data
    needed = np.minimum(1.0, ceiling / np.maximum(envelope, 1e-12))
    width = 2 * max(1, round(_LIMIT_WINDOW_SECONDS * rate)) + 1
    held = cast("NDArray[np.float64]", minimum_filter1d(needed, size=width, mode="nearest"))
    smooth = cast("NDArray[np.float64]", uniform_filter1d(held, size=width, mode="nearest"))
    return data * (np.minimum(smooth, needed) * 0.999)[:, np.newaxis]


def _integrated_loudness(data: Audio, rate: int) -> float | None:
    """BS.1770 integrated loudness in LUFS (-inf when every block is under the -70 LUFS gate), or None when the
    clip is shorter than one 400 ms gating block."""
    if data.shape[0] < _MIN_GATED_SECONDS * rate:
        return None
    import pyloudnorm  # pyright: ignore[reportMissingTypeStubs]  # pyloudnorm ships no types

    meter = pyloudnorm.Meter(rate)
    return float(meter.integrated_loudness(data))  # pyright: ignore[reportUnknownMemberType]  # untyped method


def _true_peak(data: Audio, rate: int) -> float:
    """The largest magnitude of the signal oversampled 4x (soxr): an estimate of its true (inter-sample) peak."""
    import numpy as np

    oversampled = _soxr(data, rate, rate * _TRUE_PEAK_OVERSAMPLING)
    return max(float(np.max(np.abs(data))), float(np.max(np.abs(oversampled))))


def _fade(data: Audio, rate: int, fade_ms: int) -> Audio:
    """Equal-power (quarter-sine) fade in and out, each at most half the clip; the end samples become 0."""
    import numpy as np

    frames = data.shape[0]
    length = min(round(fade_ms * rate / 1000), frames // 2)
    if length == 0:
        return data
    ramp = np.sin(0.5 * np.pi * np.arange(length, dtype=np.float64) / length)[:, np.newaxis]
    faded = data.copy()
    faded[:length] *= ramp
    faded[frames - length :] *= ramp[::-1]
    return faded


def _check_encodable(fmt: AudioFormat, rate: int, channels: int) -> None:
    """Refuse, with advice, what the chosen encoder cannot carry."""
    if fmt != "mp3":
        return
    if rate not in MP3_SAMPLE_RATES:
        raise InvalidArgumentError(
            f"mp3 cannot carry {rate} Hz audio; set sample_rate to one of {_rates(MP3_SAMPLE_RATES)}, "
            "or choose ogg, flac or wav"
        )
    if channels > 2:
        raise InvalidArgumentError(f"mp3 carries at most 2 channels and this audio has {channels}; set channels")


def _encode(part: Path, data: Audio, rate: int, fmt: AudioFormat) -> None:
    """Write the samples in the chosen format (float32 in; FLAC clipped to full scale for its integer samples)."""
    import numpy as np
    import soundfile as sf  # pyright: ignore[reportMissingTypeStubs]  # typed inline, but no py.typed marker

    encoding = _ENCODINGS[fmt]
    samples = data.astype(np.float32)
    if encoding.subtype.startswith("PCM"):
        samples = np.clip(samples, -1.0, 1.0)
    sf.write(
        str(part),
        samples,
        rate,
        subtype=encoding.subtype,
        format=encoding.format,
        compression_level=encoding.compression_level,
        bitrate_mode=encoding.bitrate_mode,
    )


def _publish(dest: Path, write: Callable[[Path], object], options: ProcessOptions) -> ProcessedAudio:
    """Write through a hidden temporary file beside dest, measure it, make it durable and rename it onto dest."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, part = part_file_for(dest)
    os.close(fd)
    try:
        write(part)
        facts = _measure(part, options)
        with part.open("r+b") as file:
            os.fsync(file.fileno())
        os.replace(part, dest)
    except BaseException:
        with contextlib.suppress(OSError):
            part.unlink()
        raise
    return replace(facts, path=dest.resolve())


def _measure(path: Path, options: ProcessOptions) -> ProcessedAudio:
    """Decode the written file again and report what it holds."""
    import numpy as np

    data, rate = _read_audio(path)
    frames, channels = data.shape
    duration = round(frames / rate, 6)
    loudness = _integrated_loudness(data, rate) if channels <= 5 else None
    if loudness is not None and not math.isfinite(loudness):
        loudness = None
    peak = float(np.max(np.abs(data)))
    true_peak = round(_gain_to_db(_true_peak(data, rate)), 2) if options.normalize else None
    return ProcessedAudio(
        path=path,
        format=options.format,
        sample_rate=rate,
        channels=channels,
        duration_seconds=duration,
        loudness_lufs=None if loudness is None else round(loudness, 2),
        peak_db=round(_gain_to_db(peak), 2),
        loop_seconds=duration if options.loop else None,
        true_peak_db=true_peak,
    )


def _db_to_gain(db: float) -> float:
    return 10.0 ** (db / 20.0)


def _gain_to_db(gain: float) -> float:
    return max(20.0 * math.log10(gain), _SILENCE_DB) if gain > 0.0 else _SILENCE_DB


__all__ = ["MP3_SAMPLE_RATES", "AudioFormat", "ProcessOptions", "ProcessedAudio", "process_file"]
