"""Re-encode the sandbox's WAV into the other containers a real gateway may deliver: RF64, FLAC, Ogg and MP3.

libsndfile (through soundfile, a runtime dependency) writes them all; imported lazily, as only media faults need it.
"""

from __future__ import annotations

import io
from typing import Final

_FORMATS: Final = {
    "rf64": ("RF64", "FLOAT"),
    "flac": ("FLAC", "PCM_24"),
    "ogg": ("OGG", "VORBIS"),
    "opus": ("OGG", "OPUS"),
    "mp3": ("MP3", "MPEG_LAYER_III"),
}
OPUS_RATE: Final = 48_000
"""Opus knows 8, 12, 16, 24 and 48 kHz only: the 44.1 kHz audio is resampled for it."""


def encode(wav: bytes, container: str) -> bytes:
    """Return the audio of a WAV file re-encoded as `container` (rf64, flac, ogg, opus or mp3)."""
    import numpy as np
    import soundfile  # pyright: ignore[reportMissingTypeStubs]  # typed inline, but no py.typed marker

    samples, rate = soundfile.read(io.BytesIO(wav), dtype="float32", always_2d=True)
    if container == "opus" and rate != OPUS_RATE:
        count = round(len(samples) * OPUS_RATE / rate)
        positions = np.linspace(0, len(samples) - 1, count)
        samples = np.stack(
            [np.interp(positions, np.arange(len(samples)), samples[:, c]) for c in range(samples.shape[1])], axis=1
        ).astype("float32")
        rate = OPUS_RATE
    out = io.BytesIO()
    kind, subtype = _FORMATS[container]
    soundfile.write(out, samples, rate, format=kind, subtype=subtype)
    return out.getvalue()


__all__ = ["OPUS_RATE", "encode"]
