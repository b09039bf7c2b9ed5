"""The in-host audio player (an MCP Apps view): its HTML, the waveform peaks and the chunked reads it relies on.

No MCP types here: the server links the view to its tools and the result layer puts peaks in a result's `_meta`.
numpy and soundfile are imported only when peaks are computed.
"""

from __future__ import annotations

import itertools
import os
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Final, cast

if TYPE_CHECKING:
    import numpy as np
    from numpy.typing import NDArray

PLAYER_URI: Final = "ui://mmaudio/player.html"
"""The view's resource; generate_audio, check_status and download_audio link to it."""

CHUNK_CAP: Final = 512 * 1024
"""Raw bytes per audio message: a file above it is read in chunks (base64 makes 683 KiB, under the 1 MiB that
the SDK's HTTP clients accept in one message)."""

PEAK_COUNT: Final = 400
"""Waveform columns sent with a finished job, so the view draws before the audio bytes arrive."""

PEAKS_META_KEY: Final = "io.github.mmaudio-mcp/peaks"
AUDIO_META_KEY: Final = "io.github.mmaudio-mcp/audio"


@cache
def player_html() -> str:
    """The view: one self-contained HTML file (inline script and style, nothing fetched)."""
    return Path(__file__).with_name("player.html").read_text(encoding="utf-8")


def wav_peaks(path: Path, count: int = PEAK_COUNT) -> list[float]:
    """Absolute peak level (0..1, all channels) of `count` equal slices of an audio file.

    Blocking: run it in a worker thread. Raises OSError/RuntimeError/ValueError when the file is not readable audio.
    """
    import numpy as np
    import soundfile as sf  # pyright: ignore[reportMissingTypeStubs]  # typed inline, but no py.typed marker

    raw, _rate = sf.read(str(path), dtype="float32", always_2d=True)
    data = cast("NDArray[np.float32]", raw)
    level = np.max(np.abs(data), axis=1) if data.size else np.zeros(1, dtype=np.float32)
    edges = np.linspace(0, level.shape[0], count + 1).astype(np.int64)
    peaks = [float(level[start:end].max()) if end > start else 0.0 for start, end in itertools.pairwise(edges)]
    return [round(min(max(peak, 0.0), 1.0), 3) for peak in peaks]


def read_chunk(path: Path, offset: int, length: int) -> tuple[bytes, int]:
    """Up to `length` bytes of a file from `offset`, and the file's size (blocking: run it in a worker thread)."""
    with path.open("rb") as file:
        size = os.fstat(file.fileno()).st_size
        file.seek(offset)
        return file.read(max(0, min(length, CHUNK_CAP))), size


__all__ = [
    "AUDIO_META_KEY",
    "CHUNK_CAP",
    "PEAKS_META_KEY",
    "PEAK_COUNT",
    "PLAYER_URI",
    "player_html",
    "read_chunk",
    "wav_peaks",
]
