"""The signal steps of processing, on float64 samples shaped (frames, channels): trim, loop, resample, channel
layout, loudness with a true-peak limiter, fades, and the measurements they rest on.

Each step is a function of samples and rate that returns new samples; `processing` runs them in their fixed order.
numpy, soxr, pyloudnorm and scipy are imported inside the functions that use them.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Final, TypeAlias, cast

from mmaudio_mcp.errors import InvalidArgumentError

if TYPE_CHECKING:
    import numpy as np
    from numpy.typing import NDArray

    Audio: TypeAlias = NDArray[np.float64]
    """Samples as (frames, channels), float64 while they are worked on."""

__all__ = [
    "LOUDNESS_TOLERANCE_LU",
    "MAX_LIMIT_DB",
    "TRUE_PEAK_MARGIN_DB",
    "db_to_gain",
    "fade",
    "gain_to_db",
    "integrated_loudness",
    "limit",
    "make_loop",
    "normalize",
    "resample",
    "set_channels",
    "trim_silence",
    "true_peak",
]

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

TRUE_PEAK_MARGIN_DB = 0.1
"""Aim this far under the ceiling: true-peak meters differ by a few hundredths of a dB (oversampling filters)."""


def trim_silence(data: Audio, rate: int) -> Audio:
    """Cut what lies before the first and after the last audible sample, keeping a 10 ms margin."""
    import numpy as np

    level = np.max(np.abs(data), axis=1)
    peak = float(np.max(level))
    threshold = min(db_to_gain(_TRIM_FLOOR_DB), peak * db_to_gain(-_TRIM_BELOW_PEAK_DB))
    audible = np.flatnonzero(level > threshold)
    if audible.size == 0:
        return data  # silence throughout: nothing to keep apart from the rest
    margin = round(_TRIM_MARGIN_SECONDS * rate)
    first = max(int(audible[0]) - margin, 0)
    last = min(int(audible[-1]) + margin + 1, data.shape[0])
    return data[first:last]


def make_loop(data: Audio, rate: int) -> Audio:
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


def resample(data: Audio, rate: int, new_rate: int, *, periodic: bool) -> Audio:
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


def set_channels(data: Audio, channels: int) -> Audio:
    """Average to mono, or duplicate mono (or the mono downmix) to stereo."""
    import numpy as np

    if data.shape[1] == channels:
        return data
    mono = data.mean(axis=1, keepdims=True)
    return mono if channels == 1 else np.repeat(mono, channels, axis=1)


MAX_LIMIT_DB: Final = 12.0
"""The most the limiter may take off a peak: beyond that a punchy sound loses its punch."""
_LOUDNESS_ROUNDS = 6
LOUDNESS_TOLERANCE_LU = 0.5


def normalize(data: Audio, rate: int, target_lufs: float, ceiling_db: float) -> Audio:
    """Gain to the loudness target with a true-peak limiter under the ceiling (a few rounds, as limiting lowers
    the loudness); without the loudness in reach, as loud as the limiter's bound allows. Short clips are
    peak-normalized to the ceiling."""
    if data.shape[1] > 5:
        raise InvalidArgumentError(
            f"loudness is measured for at most 5 channels and this audio has {data.shape[1]}; ask for channels=1 or 2"
        )
    peak = true_peak(data, rate)
    if peak == 0.0:
        return data  # digital silence: no gain makes it louder
    ceiling = db_to_gain(ceiling_db)
    loudness = integrated_loudness(data, rate)
    if loudness is None:
        return data * (ceiling / peak)
    if not math.isfinite(loudness):
        return data  # every block under the -70 LUFS gate: too quiet to measure, and boosting it would boost noise
    gain_db = target_lufs - loudness
    result = data
    for _ in range(_LOUDNESS_ROUNDS):
        # Never more gain than lets the limiter stay within its bound on the loudest peak.
        gain_db = min(gain_db, gain_to_db(ceiling / peak) + MAX_LIMIT_DB)
        result = limit(data * db_to_gain(gain_db), rate, ceiling)
        reached = integrated_loudness(result, rate)
        if reached is None or not math.isfinite(reached) or abs(target_lufs - reached) <= LOUDNESS_TOLERANCE_LU:
            break
        step = target_lufs - reached
        if step > 0 and gain_db >= gain_to_db(ceiling / peak) + MAX_LIMIT_DB - 1e-9:
            break  # out of reach: the result says so
        gain_db += step
    return result


_LIMIT_WINDOW_SECONDS = 0.002
"""Half the limiter's window: its gain starts falling 2 ms before a peak and is back 2 ms after it."""


def limit(data: Audio, rate: int, ceiling: float) -> Audio:
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


def integrated_loudness(data: Audio, rate: int) -> float | None:
    """BS.1770 integrated loudness in LUFS (-inf when every block is under the -70 LUFS gate), or None when the
    clip is shorter than one 400 ms gating block."""
    if data.shape[0] < _MIN_GATED_SECONDS * rate:
        return None
    import pyloudnorm  # pyright: ignore[reportMissingTypeStubs]  # pyloudnorm ships no types

    meter = pyloudnorm.Meter(rate)
    return float(meter.integrated_loudness(data))  # pyright: ignore[reportUnknownMemberType]  # untyped method


def true_peak(data: Audio, rate: int) -> float:
    """The largest magnitude of the signal oversampled 4x (soxr): an estimate of its true (inter-sample) peak."""
    import numpy as np

    oversampled = _soxr(data, rate, rate * _TRUE_PEAK_OVERSAMPLING)
    return max(float(np.max(np.abs(data))), float(np.max(np.abs(oversampled))))


def fade(data: Audio, rate: int, fade_ms: int) -> Audio:
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


def db_to_gain(db: float) -> float:
    return 10.0 ** (db / 20.0)


def gain_to_db(gain: float) -> float:
    return max(20.0 * math.log10(gain), _SILENCE_DB) if gain > 0.0 else _SILENCE_DB
