"""Tests for mmaudio_mcp.processing: real audio in, real files out, checked by independent decoders and meters."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from types import SimpleNamespace
from typing import TYPE_CHECKING, cast

import av
import numpy as np
import pyloudnorm  # pyright: ignore[reportMissingTypeStubs]  # pyloudnorm ships no types
import pytest
import soundfile as sf  # pyright: ignore[reportMissingTypeStubs]  # typed inline, but no py.typed marker
from pydantic import ValidationError

from mmaudio_mcp.errors import InvalidArgumentError, InvalidAudioError
from mmaudio_mcp.processing import process_file
from mmaudio_mcp.processing_options import DEFAULT_TARGET_LUFS, ProcessedAudio, ProcessOptions, asked_options

if TYPE_CHECKING:
    from pathlib import Path

    from numpy.typing import NDArray

RATE = 44100
SECONDS = 3.0
FILENAME_SAFE = re.compile(r"^[a-z0-9]+(-[a-z0-9]+)*$")


# --- sources -----------------------------------------------------------------------------------------------------


def ambience(seconds: float = SECONDS, gain: float = 1.0, seed: int = 7) -> NDArray[np.float64]:
    """Low-passed noise over two tones that swell: steady enough to loop, but its ends differ (the 97.5 Hz tone
    starts on a crest and ends half a period later, in a trough), so a naive repetition clicks."""
    rng = np.random.default_rng(seed)
    frames = round(seconds * RATE)
    t = np.arange(frames) / RATE
    noise = np.convolve(rng.standard_normal(frames), np.ones(16) / 16, mode="same")
    swell = 0.5 + 0.5 * t / seconds
    tones = 0.3 * np.cos(2 * np.pi * 97.5 * t) + 0.1 * np.sin(2 * np.pi * 310.0 * t)
    return gain * (0.2 * noise + swell * tones)


def write_wav(path: Path, samples: NDArray[np.float64], rate: int = RATE, subtype: str = "FLOAT") -> Path:
    sf.write(str(path), samples.astype(np.float32), rate, subtype=subtype)
    return path


@pytest.fixture
def source(tmp_path: Path) -> Path:
    return write_wav(tmp_path / "source.wav", ambience())


def read(path: Path) -> NDArray[np.float64]:
    """The samples of a written file as (frames, channels) float64."""
    data, _rate = sf.read(str(path), dtype="float64", always_2d=True)
    return cast("NDArray[np.float64]", data)


def decode_with_av(path: Path) -> tuple[int, int, int]:
    """Decode with FFmpeg (PyAV), not libsndfile: return the sample rate, channel count and decoded frame count."""
    with av.open(str(path)) as container:
        stream = container.streams.audio[0]
        frames = 0
        channels = 0
        for frame in container.decode(stream):
            frames += frame.samples
            channels = len(frame.layout.channels)
        return stream.rate, channels, frames


def lufs(samples: NDArray[np.float64], rate: int = RATE) -> float:
    return float(pyloudnorm.Meter(rate).integrated_loudness(samples))  # pyright: ignore[reportUnknownMemberType]  # untyped


def seam_is_clean(x: NDArray[np.float64], window: int = 64) -> bool:
    """Whether playing x on repeat has no click where the end meets the start: the wrap-around step is no larger
    than the clip's 99th-percentile sample step, and the RMS of the first difference in a window around the
    wrap-around is within 2x the median of the same measure over the whole clip."""
    steps = np.abs(np.diff(x))
    jump = abs(x[-1] - x[0])
    around_seam = np.diff(np.concatenate([x[-window:], x[:window]]))
    seam_rms = float(np.sqrt(np.mean(around_seam**2)))
    windows = steps[: steps.size // (2 * window) * (2 * window)].reshape(-1, 2 * window)
    typical_rms = float(np.median(np.sqrt(np.mean(windows**2, axis=1))))
    return jump <= np.percentile(steps, 99) and seam_rms <= 2 * typical_rms


def leftovers(folder: Path) -> list[str]:
    return sorted(name for name in os.listdir(folder) if name.endswith(".part"))


# --- formats, rates, channels ------------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["wav", "flac", "ogg", "mp3"])
def test_each_format_decodes_with_ffmpeg_at_the_right_rate_channels_and_duration(
    source: Path, tmp_path: Path, fmt: str
) -> None:
    """Every output format is a real file of its kind: FFmpeg decodes it at 44.1 kHz, mono, 3 s long."""
    options = ProcessOptions.model_validate({"format": fmt})
    result = process_file(source, tmp_path / f"out.{fmt}", options)
    rate, channels, frames = decode_with_av(result.path)
    tolerance = 0 if fmt in ("wav", "flac") else round(0.05 * RATE)  # lossy codecs may pad a little
    assert (rate, channels) == (RATE, 1)
    assert abs(frames - SECONDS * RATE) <= tolerance
    assert result.format == fmt
    assert (result.sample_rate, result.channels) == (RATE, 1)
    assert result.duration_seconds == pytest.approx(SECONDS, abs=0.05)
    assert result.loop_seconds is None


def test_wav_output_is_32_bit_float_and_flac_is_24_bit(source: Path, tmp_path: Path) -> None:
    """WAV variants keep float samples like MMAudio's output; FLAC uses 24-bit PCM."""
    wav = process_file(source, tmp_path / "out.wav", ProcessOptions(channels=1))
    flac = process_file(source, tmp_path / "out.flac", ProcessOptions(format="flac"))
    assert sf.info(str(wav.path)).subtype == "FLOAT"
    assert sf.info(str(flac.path)).subtype == "PCM_24"
    np.testing.assert_allclose(read(flac.path), read(source), atol=2**-22)


def test_resampling_to_48k_keeps_a_tone_exact_and_the_duration(tmp_path: Path) -> None:
    """Resampling to 48 kHz gives 3 s of 48 kHz audio whose samples are the same tone sampled at 48 kHz."""
    t = np.arange(round(SECONDS * RATE)) / RATE
    tone = write_wav(tmp_path / "tone.wav", 0.5 * np.sin(2 * np.pi * 1000.0 * t))
    result = process_file(tone, tmp_path / "out.wav", ProcessOptions(sample_rate=48000))
    rate, channels, frames = decode_with_av(result.path)
    assert (rate, channels, frames) == (48000, 1, round(SECONDS * 48000))
    samples = read(result.path)[:, 0]
    expected = 0.5 * np.sin(2 * np.pi * 1000.0 * np.arange(samples.size) / 48000)
    middle = slice(4800, -4800)
    np.testing.assert_allclose(samples[middle], expected[middle], atol=1e-4)


def test_stereo_duplicates_the_mono_channel_at_the_new_rate(source: Path, tmp_path: Path) -> None:
    """channels=2 with sample_rate=48000 gives two identical channels at 48 kHz, still 3 s long."""
    options = ProcessOptions(format="flac", sample_rate=48000, channels=2)
    result = process_file(source, tmp_path / "out.flac", options)
    rate, channels, frames = decode_with_av(result.path)
    assert (rate, channels, frames) == (48000, 2, round(SECONDS * 48000))
    samples = read(result.path)
    np.testing.assert_array_equal(samples[:, 0], samples[:, 1])
    assert (result.sample_rate, result.channels) == (48000, 2)


def test_mono_is_the_mean_of_a_stereo_source(tmp_path: Path) -> None:
    """channels=1 downmixes a stereo source by averaging its two channels."""
    left, right = ambience(seed=1), ambience(seed=2)
    stereo = write_wav(tmp_path / "stereo.wav", np.stack([left, right], axis=1))
    result = process_file(stereo, tmp_path / "out.wav", ProcessOptions(channels=1))
    mean = (left.astype(np.float32).astype(np.float64) + right.astype(np.float32).astype(np.float64)) / 2
    np.testing.assert_allclose(read(result.path)[:, 0], mean, atol=1e-6)


# --- loudness ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("gain", [0.02, 1.6], ids=["quiet", "loud"])
def test_normalization_lands_quiet_and_loud_sources_on_the_target_under_the_ceiling(
    tmp_path: Path, gain: float
) -> None:
    """A quiet (about -45 LUFS) and a loud source both end within 0.5 LU of -16 LUFS with the peak under -1 dB."""
    loud_or_quiet = write_wav(tmp_path / "source.wav", ambience(gain=gain))
    result = process_file(loud_or_quiet, tmp_path / "out.wav", ProcessOptions(normalize=True))
    samples = read(result.path)
    assert abs(lufs(samples) - -16.0) <= 0.5
    assert result.loudness_lufs is not None
    assert abs(result.loudness_lufs - -16.0) <= 0.5
    peak_db = 20 * np.log10(np.max(np.abs(samples)))
    assert peak_db <= -1.0
    assert result.peak_db == pytest.approx(peak_db, abs=0.01)


def punchy(seconds: float = SECONDS, seed: int = 3) -> NDArray[np.float64]:
    """An impact: a 2 ms click and a noise burst that decays in 60 ms, three times, over silence; its peaks stand
    some 20 dB over its loudness, so a -16 LUFS target cannot be reached by gain alone under -1 dBTP."""
    rng = np.random.default_rng(seed)
    frames = round(seconds * RATE)
    out = np.zeros(frames)
    for start in (0.1, 1.1, 2.1):
        first = round(start * RATE)
        length = round(0.4 * RATE)
        t = np.arange(length) / RATE
        out[first : first + length] += rng.standard_normal(length) * np.exp(-t / 0.06) * 0.3
        out[first : first + 88] += np.hanning(88)
    return out


def decoded_with_av(path: Path) -> tuple[NDArray[np.float64], int]:
    """All samples of a file as FFmpeg (PyAV) decodes them, as float64 (frames, channels), and the rate."""
    chunks: list[NDArray[np.float64]] = []
    with av.open(str(path)) as container:
        stream = container.streams.audio[0]
        rate = stream.codec_context.sample_rate
        for frame in container.decode(stream):
            block = frame.to_ndarray()
            if np.issubdtype(block.dtype, np.integer):
                block = block / float(np.iinfo(block.dtype).max + 1)
            count = len(frame.layout.channels)
            chunks.append(block.T if frame.format.is_planar else block.reshape(-1, count))
    return np.concatenate(chunks).astype(np.float64), rate


def true_peak_db(samples: NDArray[np.float64], rate: int) -> float:
    """4x-oversampled peak (soxr), as BS.1770's true-peak meter estimates it."""
    import soxr  # pyright: ignore[reportMissingTypeStubs]

    oversampled = cast("NDArray[np.float64]", soxr.resample(samples, rate, rate * 4, quality="VHQ"))
    return float(20 * np.log10(max(np.max(np.abs(samples)), np.max(np.abs(oversampled)))))


@pytest.mark.parametrize("fmt", ["wav", "flac", "ogg", "mp3"])
@pytest.mark.parametrize("kind", ["punchy", "ambience"])
def test_loudness_meets_the_target_and_the_true_peak_ceiling_in_every_decoded_format(
    tmp_path: Path, fmt: str, kind: str
) -> None:
    """Measured on the file as FFmpeg decodes it: integrated loudness within 1 LU of -16 LUFS and true peak at or
    under -1 dBTP, for a punchy impact (the limiter's case) and a steady ambience, in every format."""
    clip = punchy() if kind == "punchy" else ambience(gain=0.3)
    source = write_wav(tmp_path / "source.wav", clip)
    result = process_file(source, tmp_path / f"out.{fmt}", ProcessOptions(format=fmt, normalize=True))  # pyright: ignore[reportArgumentType]
    samples, rate = decoded_with_av(result.path)
    assert abs(lufs(samples, rate) - -16.0) <= 1.0, lufs(samples, rate)
    assert true_peak_db(samples, rate) <= -1.0
    assert result.note is None


def test_a_loudness_target_out_of_reach_is_said_in_the_result(tmp_path: Path) -> None:
    """Asked for -5 LUFS of an impact, the limiter takes at most 12 dB off its peaks: the file stays quieter, under
    the ceiling, and the result says how loud it is and why."""
    source = write_wav(tmp_path / "source.wav", punchy())
    options = ProcessOptions(normalize=True, target_lufs=-5.0, true_peak_db=-1.0)
    result = process_file(source, tmp_path / "out.wav", options)
    samples = read(result.path)
    assert true_peak_db(samples, RATE) <= -1.0
    assert lufs(samples) < -6.0
    assert result.note is not None and "not -5" in result.note and f"{result.loudness_lufs:.1f} LUFS" in result.note


def test_a_clip_too_short_to_gate_is_peak_normalized_to_the_ceiling(tmp_path: Path) -> None:
    """A 0.3 s clip has no BS.1770 loudness: it is brought to the peak ceiling and its loudness is None."""
    short = write_wav(tmp_path / "short.wav", ambience(seconds=0.3, gain=0.1))
    result = process_file(short, tmp_path / "out.wav", ProcessOptions(normalize=True, true_peak_db=-3.0))
    assert result.loudness_lufs is None
    assert -3.5 <= result.peak_db <= -3.0


# --- trimming and fades --------------------------------------------------------------------------------------------


def test_trim_silence_removes_a_second_of_digital_silence_at_each_end(tmp_path: Path) -> None:
    """A 3 s clip padded with 1 s of zeros on each side comes back about 3 s long, starting where the sound does."""
    silence = np.zeros(RATE)
    padded = write_wav(tmp_path / "padded.wav", np.concatenate([silence, ambience(), silence]))
    result = process_file(padded, tmp_path / "out.wav", ProcessOptions(trim_silence=True))
    assert SECONDS <= result.duration_seconds <= SECONDS + 0.03
    samples = read(result.path)[:, 0]
    original = ambience().astype(np.float32)
    start = int(np.flatnonzero(samples == original[0])[0])
    assert start <= round(0.01 * RATE)  # no more than the 10 ms margin is kept
    np.testing.assert_array_equal(samples[start : start + original.size], original)


def test_fades_silence_the_ends_and_leave_the_middle_untouched(source: Path, tmp_path: Path) -> None:
    """With 100 ms fades the first and last samples are 0, and everything between the fades is bit-identical."""
    result = process_file(source, tmp_path / "out.wav", ProcessOptions(fade_ms=100))
    samples = read(result.path)[:, 0]
    original = read(source)[:, 0]
    fade = round(0.1 * RATE)
    assert abs(samples[0]) < 1e-6
    assert abs(samples[-1]) < 1e-6
    np.testing.assert_array_equal(samples[fade:-fade], original[fade:-fade])
    assert np.max(np.abs(samples[: fade // 10])) < np.max(np.abs(original[: fade // 10]))


# --- loops ---------------------------------------------------------------------------------------------------------


def test_naive_repetition_of_the_original_clicks_at_the_seam(source: Path) -> None:
    """The seam check can fail: the original clip, repeated as it is, jumps where its end meets its start."""
    assert not seam_is_clean(read(source)[:, 0])


def test_a_loop_wraps_around_without_a_click(source: Path, tmp_path: Path) -> None:
    """The looped clip's last sample runs on into its first like any two neighbours, with no burst around it."""
    result = process_file(source, tmp_path / "out.wav", ProcessOptions(loop=True))
    samples = read(result.path)[:, 0]
    assert seam_is_clean(samples)
    # A quarter of the clip (0.75 s) became the crossfade, and the tail start moved by at most 25 ms.
    assert SECONDS - 0.75 - 0.026 <= result.duration_seconds <= SECONDS - 0.75
    assert result.loop_seconds == result.duration_seconds


def test_an_ogg_loop_resampled_to_48k_in_stereo_still_wraps_without_a_click(source: Path, tmp_path: Path) -> None:
    """Resampling a loop (as a periodic signal) and Vorbis encoding keep the seam clean, decoded by FFmpeg too."""
    options = ProcessOptions(format="ogg", sample_rate=48000, channels=2, normalize=True, loop=True)
    result = process_file(source, tmp_path / "out.ogg", options)
    assert (result.sample_rate, result.channels) == (48000, 2)
    assert seam_is_clean(read(result.path)[:, 0])
    with av.open(str(result.path)) as container:
        decoded = np.concatenate([frame.to_ndarray()[0] for frame in container.decode(audio=0)])
    assert seam_is_clean(decoded.astype(np.float64))
    assert result.loop_seconds == pytest.approx(decoded.size / 48000, abs=1e-6)


def test_a_looped_steady_tone_keeps_its_level_through_the_crossfade(tmp_path: Path) -> None:
    """The tail is phase-matched to the head, so a steady tone neither dips nor bulges where they overlap."""
    t = np.arange(round(SECONDS * RATE)) / RATE
    tone = write_wav(tmp_path / "tone.wav", 0.5 * np.sin(2 * np.pi * 123.4 * t))
    result = process_file(tone, tmp_path / "out.wav", ProcessOptions(loop=True))
    samples = read(result.path)[:, 0]
    block = RATE // 20  # 50 ms: six periods of 123.4 Hz
    rms = np.sqrt(np.mean(samples[: samples.size // block * block].reshape(-1, block) ** 2, axis=1))
    assert np.max(rms) / np.min(rms) < 1.03
    # The wrap-around step is one of the tone's own steps (the 99th-percentile rule is too tight for a pure tone,
    # whose steepest steps all sit at its zero crossings, where the seam lands).
    assert abs(samples[-1] - samples[0]) <= 1.001 * np.max(np.abs(np.diff(samples)))


def test_a_loop_resampled_to_48k_stays_seamless_when_its_ends_sit_on_a_crest(tmp_path: Path) -> None:
    """A loop is resampled as a periodic signal: a 55 Hz hum whose loop starts and ends at its crest does not
    ring at the seam (resampling it as a one-off clip, padded with silence, would jump by about 0.07 there)."""
    t = np.arange(round(SECONDS * RATE)) / RATE
    hum = write_wav(tmp_path / "hum.wav", 0.5 * np.cos(2 * np.pi * 55.0 * t))
    result = process_file(hum, tmp_path / "out.wav", ProcessOptions(loop=True, sample_rate=48000))
    samples = read(result.path)[:, 0]
    assert result.sample_rate == 48000
    assert samples[0] > 0.49
    assert seam_is_clean(samples)
    assert np.max(np.abs(np.diff(samples))) <= 1.001 * 0.5 * 2 * np.pi * 55.0 / 48000  # no ringing anywhere


def test_fades_are_ignored_for_loops(source: Path, tmp_path: Path) -> None:
    """A fade would put silence at the seam, so loop=True with fade_ms gives the same audio as the loop alone."""
    faded = process_file(source, tmp_path / "faded.wav", ProcessOptions(loop=True, fade_ms=500))
    plain = process_file(source, tmp_path / "plain.wav", ProcessOptions(loop=True))
    np.testing.assert_array_equal(read(faded.path), read(plain.path))


def test_a_clip_too_short_to_loop_is_refused(tmp_path: Path) -> None:
    """A 50 ms clip cannot hold a crossfade: InvalidArgumentError, and nothing is written."""
    blip = write_wav(tmp_path / "blip.wav", ambience(seconds=0.05))
    with pytest.raises(InvalidArgumentError, match="too short to loop"):
        process_file(blip, tmp_path / "out" / "blip.wav", ProcessOptions(loop=True))
    assert not (tmp_path / "out" / "blip.wav").exists()


# --- options -------------------------------------------------------------------------------------------------------


def test_variant_key_names_the_changes_in_a_fixed_order() -> None:
    """The key lists format, rate, layout, loudness and loop in that order, whatever order they were given in."""
    forward = ProcessOptions(format="ogg", sample_rate=48000, channels=2, normalize=True, loop=True)
    backward = ProcessOptions.model_validate(
        {"loop": True, "normalize": True, "channels": 2, "sample_rate": 48000, "format": "ogg"}
    )
    assert forward.variant_key() == backward.variant_key() == "ogg-48k-st-n16-loop"
    assert ProcessOptions().variant_key() == "wav"
    assert ProcessOptions(sample_rate=44100, channels=1).variant_key() == "wav-44k1-mono"
    assert ProcessOptions(sample_rate=22050).variant_key() == "wav-22k05"
    tuned = ProcessOptions(format="mp3", normalize=True, target_lufs=-14.5, true_peak_db=-2.0, trim_silence=True)
    assert tuned.variant_key() == "mp3-n14p5-tp2-trim"
    assert ProcessOptions(fade_ms=250).variant_key() == "wav-f250"


def test_variant_key_is_stable_filename_safe_and_distinct() -> None:
    """Keys survive a JSON round trip, use only [a-z0-9-], and differ whenever the audio would differ."""
    variants = [
        ProcessOptions(),
        ProcessOptions(format="flac"),
        ProcessOptions(format="ogg", loop=True),
        ProcessOptions(format="ogg", loop=True, trim_silence=True),
        ProcessOptions(sample_rate=48000),
        ProcessOptions(sample_rate=8000),
        ProcessOptions(channels=1),
        ProcessOptions(channels=2),
        ProcessOptions(normalize=True),
        ProcessOptions(normalize=True, target_lufs=-23.0),
        ProcessOptions(normalize=True, true_peak_db=0.0),
        ProcessOptions(normalize=True, true_peak_db=-1.5),
        ProcessOptions(fade_ms=10),
        ProcessOptions(fade_ms=100),
    ]
    keys = [options.variant_key() for options in variants]
    assert len(set(keys)) == len(keys)
    for options, key in zip(variants, keys, strict=True):
        assert FILENAME_SAFE.match(key), key
        assert ProcessOptions.model_validate_json(options.model_dump_json()).variant_key() == key


def test_options_that_give_the_same_audio_share_a_key() -> None:
    """Loudness settings without normalize, a fade on a loop and sub-0.1 dB differences do not split the cache."""
    assert ProcessOptions(format="ogg", target_lufs=-20.0).variant_key() == "ogg"
    assert ProcessOptions(loop=True, fade_ms=300).variant_key() == ProcessOptions(loop=True).variant_key()
    nearly = ProcessOptions(normalize=True, target_lufs=-16.04)
    assert nearly == ProcessOptions(normalize=True)
    assert nearly.variant_key() == "wav-n16"


def test_is_identity_only_when_nothing_but_a_wav_copy_is_asked_for() -> None:
    """Defaults (and loudness values without normalize) are the original WAV; any real change is not."""
    assert ProcessOptions().is_identity
    assert ProcessOptions(target_lufs=-20.0, true_peak_db=-2.0).is_identity
    changes = [
        {"format": "flac"},
        {"sample_rate": 44100},
        {"channels": 1},
        {"normalize": True},
        {"trim_silence": True},
        {"fade_ms": 1},
        {"loop": True},
    ]
    for change in changes:
        assert not ProcessOptions.model_validate(change).is_identity, change


@pytest.mark.parametrize(
    "bad",
    [
        {"format": "aac"},
        {"sample_rate": 100},
        {"sample_rate": 384000},
        {"fade_ms": -1},
        {"fade_ms": 5001},
        {"target_lufs": 0.5},
        {"target_lufs": float("nan")},
        {"true_peak_db": 1.0},
        {"channels": 3},
        {"format": "mp3", "sample_rate": 96000},
        {"bitrate": 320},
    ],
    ids=lambda bad: "-".join(f"{key}={value}" for key, value in bad.items()),
)
def test_bad_options_are_refused(bad: dict[str, object]) -> None:
    """Out-of-range, unknown or impossible options raise a pydantic ValidationError."""
    with pytest.raises(ValidationError):
        ProcessOptions.model_validate(bad)


def test_a_face_asks_for_loudness_as_a_target_the_default_target_or_none() -> None:
    """asked_options reads a loudness in LUFS as "normalize to it", True as the default target, None as "leave it";
    the other options pass through by their ProcessOptions names."""
    asked = SimpleNamespace(format="ogg", sample_rate=48000, channels=2, trim_silence=True, fade_ms=20, loop=False)
    shaped = {"format": "ogg", "sample_rate": 48000, "channels": 2, "trim_silence": True, "fade_ms": 20}
    assert asked_options(asked, -20.0) == ProcessOptions(normalize=True, target_lufs=-20.0, **shaped)
    assert asked_options(asked, True) == ProcessOptions(normalize=True, target_lufs=DEFAULT_TARGET_LUFS, **shaped)
    assert asked_options(asked, None) == ProcessOptions(**shaped)
    assert asked_options(asked, None).target_lufs == DEFAULT_TARGET_LUFS == ProcessOptions().target_lufs
    with pytest.raises(ValidationError):
        asked_options(asked, -50.0)


def test_options_are_frozen() -> None:
    """Options cannot change after their key was taken."""
    options = ProcessOptions()
    with pytest.raises(ValidationError):
        options.loop = True  # pyright: ignore[reportAttributeAccessIssue]


# --- files ---------------------------------------------------------------------------------------------------------


def test_the_identity_variant_is_a_byte_for_byte_copy(tmp_path: Path) -> None:
    """With no change asked for, dest holds exactly the source's bytes (a 16-bit source is not re-encoded)."""
    source = write_wav(tmp_path / "pcm16.wav", ambience(), subtype="PCM_16")
    result = process_file(source, tmp_path / "copy.wav", ProcessOptions())
    assert result.path.read_bytes() == source.read_bytes()
    assert result.loudness_lufs is not None
    assert result.path == (tmp_path / "copy.wav").resolve()


@pytest.mark.parametrize(
    ("name", "content"),
    [("text.wav", b"this is not audio at all, just some text" * 4), ("empty.wav", b""), ("missing.wav", None)],
)
def test_an_unreadable_source_raises_invalid_audio_and_writes_nothing(
    tmp_path: Path, name: str, content: bytes | None
) -> None:
    """Text, an empty file or a missing file is InvalidAudioError, with no dest and no temporary file left."""
    bad = tmp_path / name
    if content is not None:
        bad.write_bytes(content)
    out = tmp_path / "out"
    with pytest.raises(InvalidAudioError):
        process_file(bad, out / "result.ogg", ProcessOptions(format="ogg"))
    assert not (out / "result.ogg").exists()
    assert not out.exists() or leftovers(out) == []


def test_success_leaves_only_the_destination_in_its_folder(source: Path, tmp_path: Path) -> None:
    """The temporary file beside dest is renamed onto it: after success the folder holds dest alone."""
    out = tmp_path / "assets" / "sfx"
    result = process_file(source, out / "door_creak.ogg", ProcessOptions(format="ogg"))
    assert os.listdir(out) == ["door_creak.ogg"]
    assert isinstance(result, ProcessedAudio)
    assert result.path == (out / "door_creak.ogg").resolve()


def test_a_failed_write_keeps_the_previous_file_and_leaves_no_temporary_file(
    source: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """When encoding fails half-way, the old dest is untouched and the partial file is removed."""
    dest = tmp_path / "out.ogg"
    dest.write_bytes(b"previous version")

    def broken_write(file: str, *_args: object, **_kwargs: object) -> None:
        with open(file, "wb") as partial:
            partial.write(b"half an ogg")
        raise RuntimeError("disk full")

    monkeypatch.setattr(sf, "write", broken_write)
    with pytest.raises(RuntimeError, match="disk full"):
        process_file(source, dest, ProcessOptions(format="ogg"))
    assert dest.read_bytes() == b"previous version"
    assert leftovers(tmp_path) == []


def test_the_source_is_never_the_destination(source: Path) -> None:
    """Processing refuses to write over the original download, and leaves it as it was."""
    before = source.read_bytes()
    with pytest.raises(InvalidArgumentError, match="never replaces the original"):
        process_file(source, source, ProcessOptions(normalize=True))
    assert source.read_bytes() == before


def test_mp3_refuses_a_rate_it_cannot_carry(tmp_path: Path) -> None:
    """A 96 kHz source cannot become an mp3 at its own rate: InvalidArgumentError says which rates work."""
    hi_res = write_wav(tmp_path / "hires.wav", np.zeros(9600), rate=96000)
    with pytest.raises(InvalidArgumentError, match="48000"):
        process_file(hi_res, tmp_path / "out.mp3", ProcessOptions(format="mp3"))
    assert leftovers(tmp_path) == []


def test_importing_the_module_does_not_import_numpy() -> None:
    """Server start-up stays light: the audio libraries are imported only when a file is processed."""
    code = (
        "import sys, mmaudio_mcp.processing\n"
        "heavy = {'numpy', 'soundfile', 'soxr', 'pyloudnorm', 'scipy'} & set(sys.modules)\n"
        "assert not heavy, heavy"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=30)
