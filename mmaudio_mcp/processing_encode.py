"""Read and write the files of processing: decode a source, encode the result (again, while a lossy codec's peaks
overshoot the ceiling), and publish it atomically with the facts measured on the written file.

soundfile (libsndfile) reads and writes every format; it and numpy are imported inside the functions that use them.
"""

from __future__ import annotations

import contextlib
import math
import os
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, cast

from mmaudio_mcp.audio import part_file_for
from mmaudio_mcp.errors import InvalidArgumentError, InvalidAudioError
from mmaudio_mcp.processing_dsp import (
    LOUDNESS_TOLERANCE_LU,
    MAX_LIMIT_DB,
    TRUE_PEAK_MARGIN_DB,
    db_to_gain,
    gain_to_db,
    integrated_loudness,
    limit,
    true_peak,
)
from mmaudio_mcp.processing_options import MP3_SAMPLE_RATES, ProcessedAudio, list_rates

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

    from mmaudio_mcp.processing_dsp import Audio
    from mmaudio_mcp.processing_options import AudioFormat, ProcessOptions

__all__ = ["check_encodable", "encode_within", "publish", "read_audio"]


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

_LOSSY_HEADROOM_DB = 0.3
"""First extra headroom for ogg and mp3, whose decoded peaks overshoot; more is taken while the file exceeds."""
_ENCODE_ROUNDS = 5


def encode_within(part: Path, data: Audio, rate: int, options: ProcessOptions) -> None:
    """Encode; when normalizing, decode the file again and, while its true peak is over the ceiling or its
    loudness off the target (lossy codecs move both), limit and gain again and re-encode."""
    _encode(part, data, rate, options.format)
    if not options.normalize:
        return
    ceiling_db = options.true_peak_db - TRUE_PEAK_MARGIN_DB
    ceiling_db -= _LOSSY_HEADROOM_DB if options.format in ("ogg", "mp3") else 0.0
    gain_db = 0.0
    peak = true_peak(data, rate)
    most_gain_db = gain_to_db(db_to_gain(options.true_peak_db) / peak) + MAX_LIMIT_DB if peak > 0 else 0.0
    for _ in range(_ENCODE_ROUNDS):
        decoded, decoded_rate = read_audio(part)
        over = gain_to_db(true_peak(decoded, decoded_rate)) - (options.true_peak_db - TRUE_PEAK_MARGIN_DB / 2)
        loudness = integrated_loudness(decoded, decoded_rate)
        off = options.target_lufs - loudness if loudness is not None and math.isfinite(loudness) else 0.0
        if over <= 0.0 and (abs(off) <= LOUDNESS_TOLERANCE_LU or (off > 0 and gain_db >= most_gain_db)):
            return
        if over > 0.0:
            ceiling_db -= over + 0.05
        gain_db = min(gain_db + off, most_gain_db)
        _encode(part, limit(data * db_to_gain(gain_db), rate, db_to_gain(ceiling_db)), rate, options.format)


def read_audio(path: Path) -> tuple[Audio, int]:
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


def check_encodable(fmt: AudioFormat, rate: int, channels: int) -> None:
    """Refuse, with advice, what the chosen encoder cannot carry."""
    if fmt != "mp3":
        return
    if rate not in MP3_SAMPLE_RATES:
        raise InvalidArgumentError(
            f"mp3 cannot carry {rate} Hz audio; set sample_rate to one of {list_rates(MP3_SAMPLE_RATES)}, "
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


def publish(dest: Path, write: Callable[[Path], object], options: ProcessOptions) -> ProcessedAudio:
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

    data, rate = read_audio(path)
    frames, channels = data.shape
    duration = round(frames / rate, 6)
    loudness = integrated_loudness(data, rate) if channels <= 5 else None
    if loudness is not None and not math.isfinite(loudness):
        loudness = None
    peak = float(np.max(np.abs(data)))
    true_peak_db = round(gain_to_db(true_peak(data, rate)), 2) if options.normalize else None
    return ProcessedAudio(
        path=path,
        format=options.format,
        sample_rate=rate,
        channels=channels,
        duration_seconds=duration,
        loudness_lufs=None if loudness is None else round(loudness, 2),
        peak_db=round(gain_to_db(peak), 2),
        loop_seconds=duration if options.loop else None,
        true_peak_db=true_peak_db,
    )
