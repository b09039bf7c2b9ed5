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

The options and results are in `processing_options`, the signal steps in `processing_dsp`, reading, encoding
and publishing files in `processing_encode`; this module runs the pipeline (`process_file`).
"""

from __future__ import annotations

import os
import shutil
from dataclasses import replace
from typing import TYPE_CHECKING

from mmaudio_mcp.errors import InvalidArgumentError
from mmaudio_mcp.processing_dsp import (
    MAX_LIMIT_DB,
    TRUE_PEAK_MARGIN_DB,
    fade,
    make_loop,
    normalize,
    resample,
    set_channels,
    trim_silence,
)
from mmaudio_mcp.processing_encode import check_encodable, encode_within, publish, read_audio

if TYPE_CHECKING:
    from pathlib import Path

    from mmaudio_mcp.processing_dsp import Audio
    from mmaudio_mcp.processing_options import ProcessedAudio, ProcessOptions

__all__ = ["process_file"]


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
    data, rate = read_audio(source)
    if options.is_identity:
        return publish(dest, lambda part: shutil.copyfile(source, part), options)
    source_seconds = data.shape[0] / rate
    rendered, new_rate = _render(data, rate, options)
    check_encodable(options.format, new_rate, rendered.shape[1])
    facts = publish(dest, lambda part: encode_within(part, rendered, new_rate, options), options)
    return replace(facts, note=_note(facts, options, source_seconds))


def _note(facts: ProcessedAudio, options: ProcessOptions, source_seconds: float) -> str | None:
    """Say what did not come out as asked."""
    notes: list[str] = []
    if options.normalize and facts.loudness_lufs is not None and facts.loudness_lufs < options.target_lufs - 1.0:
        notes.append(
            f"Loudness {facts.loudness_lufs:.1f} LUFS, not {options.target_lufs:g}: reaching it would take more "
            f"than {MAX_LIMIT_DB:g} dB off the peaks (true peak kept at {options.true_peak_db:g} dBTP); "
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


def _render(data: Audio, rate: int, options: ProcessOptions) -> tuple[Audio, int]:
    """Apply the asked-for steps in their fixed order."""
    if options.trim_silence:
        data = trim_silence(data, rate)
    if options.loop:
        data = make_loop(data, rate)
    if options.sample_rate is not None and options.sample_rate != rate:
        data = resample(data, rate, options.sample_rate, periodic=options.loop)
        rate = options.sample_rate
    if options.channels is not None:
        data = set_channels(data, options.channels)
    if options.normalize:
        data = normalize(data, rate, options.target_lufs, options.true_peak_db - TRUE_PEAK_MARGIN_DB)
    if options.fade_ms and not options.loop:
        data = fade(data, rate, options.fade_ms)
    return data, rate
