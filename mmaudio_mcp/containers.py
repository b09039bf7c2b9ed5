"""Whatever audio the gateway delivers: identify the container by its bytes and check it by decoding it whole.

The docs show `output.wav` / `audio/wav` in one place and `output.ext` / `application/octet-stream` in another, so the
URL and the media type prove nothing. WAV (plain, WAVE_FORMAT_EXTENSIBLE and RF64), FLAC, Ogg (Vorbis or Opus) and
MP3 are accepted; the file is kept as delivered, under its container's extension, and described from the decoded
stream. Blocking (libsndfile through soundfile, imported lazily): call from a worker thread.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

from mmaudio_mcp.errors import InvalidAudioError

if TYPE_CHECKING:
    from pathlib import Path

_BLOCK_FRAMES: Final = 65_536
_TAIL_BYTES: Final = 64 * 1024
_SUBTYPES: Final = {
    "PCM_S8": "pcm8",
    "PCM_U8": "pcm8",
    "PCM_16": "pcm16",
    "PCM_24": "pcm24",
    "PCM_32": "pcm32",
    "FLOAT": "float32",
    "DOUBLE": "float64",
    "VORBIS": "vorbis",
    "OPUS": "opus",
    "MPEG_LAYER_III": "mp3",
    "MPEG_LAYER_II": "mp2",
    "MPEG_LAYER_I": "mp1",
}
_NAMES: Final = {"wav": "WAV", "rf64": "RF64", "flac": "FLAC", "ogg": "Ogg", "mp3": "MP3"}


@dataclass(frozen=True)
class AudioInfo:
    """What the decoded stream says about a delivered file."""

    container: str
    """The file's extension and AudioFile.format: wav (RF64 included), flac, ogg (Vorbis or Opus) or mp3."""
    sample_rate: int
    channels: int
    sample_format: str
    frames: int

    @property
    def duration_seconds(self) -> float:
        return self.frames / self.sample_rate


def sniff(head: bytes) -> str | None:
    """Name the audio container these first bytes start (wav, rf64, flac, ogg, mp3), or None."""
    if head[:4] == b"RIFF" and head[8:12] == b"WAVE":
        return "wav"
    if head[:4] in (b"RF64", b"BW64") and head[8:12] == b"WAVE":
        return "rf64"
    if head[:4] == b"fLaC":
        return "flac"
    if head[:4] == b"OggS":
        return "ogg"
    if head[:3] == b"ID3" or (len(head) >= 2 and head[0] == 0xFF and head[1] & 0xE0 == 0xE0 and head[1] & 0x06):
        return "mp3"  # an ID3 tag, or an MPEG audio frame sync with a layer set
    return None


def check_decoded(path: Path, head: bytes, size: int, kind: str) -> AudioInfo:
    """Check a file of a known container (see sniff) beyond its header and decode it whole; InvalidAudioError says
    what is wrong. (A plain WAV's header is checked by audio.parse_wav first.)"""
    if kind == "rf64":
        _check_rf64(head, size)
    elif kind == "ogg":
        _check_ogg_end(path, size)
    return _decode(path, kind)


def _decode(path: Path, kind: str) -> AudioInfo:
    import soundfile as sf  # pyright: ignore[reportMissingTypeStubs]  # typed inline, but no py.typed marker

    name = _NAMES[kind]
    try:
        with sf.SoundFile(str(path)) as stream:
            declared, rate, channels, subtype = stream.frames, stream.samplerate, stream.channels, stream.subtype
            decoded = 0
            while True:
                block = stream.read(_BLOCK_FRAMES, dtype="float32", always_2d=True)
                if not len(block):
                    break
                decoded += len(block)
    except (RuntimeError, ValueError, OSError) as exc:  # LibsndfileError is a RuntimeError
        detail = " ".join(str(exc).replace(str(path), "the file").split())[:160]
        raise InvalidAudioError(
            f"the {name} file is damaged or cut off (its decoder says: {detail}); fetch it again"
        ) from exc
    if decoded == 0:
        raise InvalidAudioError(f"the {name} file holds no audio")
    if declared > decoded * 1.01 + 1152:  # an MP3 frame of slack: encoders round their declared length
        raise InvalidAudioError(
            f"the {name} file is truncated: its header declares {declared} frames but only {decoded} decode "
            "(the download was probably cut off; fetch it again)"
        )
    sample_format = _SUBTYPES.get(str(subtype), str(subtype).lower())
    return AudioInfo("wav" if kind == "rf64" else kind, int(rate), int(channels), sample_format, decoded)


def _check_rf64(head: bytes, size: int) -> None:
    """RF64 keeps its real sizes in a ds64 chunk: the data it declares must all be there."""
    if len(head) < 48 or head[12:16] != b"ds64":
        raise InvalidAudioError("the RF64 file has no ds64 chunk right after its header, so its size is unknown")
    _riff_size, data_size = struct.unpack_from("<QQ", head, 20)
    offset = 12
    while offset + 8 <= len(head):
        chunk_id, chunk_size = struct.unpack_from("<4sI", head, offset)
        if chunk_id == b"data":
            present = size - (offset + 8)
            if data_size > present:
                raise InvalidAudioError(
                    f"the RF64 file is truncated: its ds64 chunk declares {data_size} bytes of audio but only "
                    f"{max(present, 0)} are present (the download was probably cut off; fetch it again)"
                )
            return
        offset += 8 + chunk_size + (chunk_size & 1)
    raise InvalidAudioError(f"the RF64 file has no data chunk in its first {len(head)} bytes")


def _check_ogg_end(path: Path, size: int) -> None:
    """An Ogg stream ends with a page flagged end-of-stream; a cut-off download does not (the decoder cannot tell)."""
    with path.open("rb") as file:
        file.seek(max(size - _TAIL_BYTES, 0))
        tail = file.read()
    last = tail.rfind(b"OggS")
    if last < 0 or last + 6 > len(tail) or not tail[last + 5] & 0x04:
        raise InvalidAudioError(
            "the Ogg file is truncated: its last page is not the end of the stream (the download was probably "
            "cut off; fetch it again)"
        )


__all__ = ["AudioInfo", "check_decoded", "sniff"]
