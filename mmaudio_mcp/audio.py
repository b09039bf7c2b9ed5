"""Audio files on disk: stream a download into place, check it is complete audio (any container), name it safely."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import re
import struct
import sys
import tempfile
import threading
import time
import unicodedata
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar, TypeVarTuple, Unpack

import anyio
import anyio.to_thread
from anyio.lowlevel import RunVar

from mmaudio_mcp.containers import AudioInfo, check_decoded, sniff
from mmaudio_mcp.errors import InvalidArgumentError, InvalidAudioError, MediaTooLargeError
from mmaudio_mcp.models import AudioFile

if TYPE_CHECKING:
    from collections.abc import AsyncIterable, Callable

DEFAULT_MAX_BYTES = 64 * 1024 * 1024
"""Cap for one download (30 s of float32 stereo at 48 kHz is ~11.5 MB)."""

_MIB = 1024 * 1024
AUDIO_WORK_THREADS = 2
"""Worker threads that may decode, encode or hash audio at once: a burst of completions then queues its CPU work
instead of handing the GIL to dozens of threads while the event loop waits its turn to answer."""
AUDIO_WORK_NICENESS = 10
"""How much lower the audio threads' CPU priority is than the event loop's (Linux nice). A burst of completions
keeps both cores of a small machine busy with previews, decode checks and hashes; at the same priority the loop's
thread, and the threads that carry its stdio, waited for a core behind them (a stdout write took 20-220 ms instead
of microseconds), and a concurrent request waited 50-200 ms for its answer. At nice 10 the scheduler gives the loop
the core first; the audio work takes whatever is left, which in a burst is most of it."""
_AUDIO_LIMITER: RunVar[anyio.CapacityLimiter] = RunVar("mmaudio_audio_limiter")
_Args = TypeVarTuple("_Args")
_T = TypeVar("_T")
_AUDIO_EXECUTOR: RunVar[ThreadPoolExecutor] = RunVar("mmaudio_audio_executor")
_HEAD_BYTES = 64 * 1024
_BLOCK_BYTES = _MIB

_PCM = 0x0001
_IEEE_FLOAT = 0x0003
_EXTENSIBLE = 0xFFFE
_KSDATAFORMAT_TAIL = bytes.fromhex("000010008000" + "00aa00389b71")
"""The last 12 bytes of every KSDATAFORMAT_SUBTYPE GUID; the first 4 hold the plain format tag."""

_SAMPLE_FORMATS = {(_PCM, bits): f"pcm{bits}" for bits in (8, 16, 24, 32)} | {
    (_IEEE_FLOAT, bits): f"float{bits}" for bits in (32, 64)
}
_SUPPORTED = "PCM 8/16/24/32-bit and IEEE float 32/64-bit (plain or WAVE_FORMAT_EXTENSIBLE)"
_ENCODING_NAMES = {0x02: "Microsoft ADPCM", 0x06: "A-law", 0x07: "mu-law", 0x11: "IMA ADPCM", 0x55: "MP3"}
_OTHER_FORMATS = {b"ID3": "an MP3", b"OggS": "an Ogg", b"fLaC": "a FLAC", b"RF64": "an RF64 (64-bit WAV)"}
_NOT_AUDIO = {
    b"%PDF": "a PDF document",
    b"PK\x03\x04": "a ZIP archive",
    b"\x89PNG": "a PNG image",
    b"\xff\xd8\xff": "a JPEG image",
    b"GIF8": "a GIF image",
    b"\x1f\x8b": "a gzip archive",
}
_ACCEPTED = "WAV (incl. RF64), FLAC, Ogg Vorbis/Opus or MP3"

_SLUG_MAX = 40
_SHORT_ID_LENGTH = 8
_WORD = re.compile(r"[a-z0-9]+")
_ALPHANUMERIC = re.compile(r"[A-Za-z0-9]")

_MAX_NAME = 120
_WINDOWS_FORBIDDEN = frozenset('<>:"|?*')
_RESERVED_NAMES = frozenset(
    {"CON", "PRN", "AUX", "NUL"} | {f"{port}{n}" for port in ("COM", "LPT") for n in (*"123456789", *"¹²³")}
)
_NAME_HINT = (
    "a bare file name such as 'rain-on-roof.wav': no folders, no leading dot, "
    'no <>:"|?* or control characters, at most 120 characters, a suffix matching the format or none'
)
_NAME_RULES: tuple[tuple[Callable[[str], bool], str], ...] = (
    (lambda name: not name, "is empty"),
    (lambda name: "/" in name or "\\" in name, "contains a path separator (/ or \\)"),
    (lambda name: ".." in name, "contains '..'"),
    (lambda name: name.startswith("."), "starts with a dot"),
    (
        # Cc: C0/C1 controls and DEL; Cf: invisible format characters such as bidi overrides, which can make
        # 'evil\u202egnp.wav' look like 'evilvaw.png' in a file browser.
        lambda name: any(unicodedata.category(c) in ("Cc", "Cf") for c in name),
        "contains a control or invisible formatting character",
    ),
    (lambda name: not _WINDOWS_FORBIDDEN.isdisjoint(name), 'contains a character Windows forbids (<>:"|?*)'),
    (lambda name: name.endswith((".", " ")), "ends with a dot or a space"),
    (
        lambda name: name.split(".")[0].rstrip(" ").upper() in _RESERVED_NAMES,
        "is a reserved Windows device name (CON, PRN, AUX, NUL, COM1-9, LPT1-9)",
    ),
)


@dataclass(frozen=True)
class WavInfo:
    """What a WAV header says about the audio it holds."""

    sample_rate: int
    channels: int
    sample_format: str
    frames: int
    duration_seconds: float


def parse_wav(head: bytes, total_size: int) -> WavInfo:
    """Parse a RIFF/WAVE header from the first bytes of a file whose full size is total_size."""
    if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
        raise InvalidAudioError(_not_wav_message(head, total_size))
    fmt_body, data_offset, data_size = _find_chunks(head, total_size)
    sample_format, channels, sample_rate, block_align = _parse_fmt(fmt_body)
    if data_offset + data_size > total_size:
        present = max(total_size - data_offset, 0)
        raise InvalidAudioError(
            f"the WAV file is truncated: its data chunk declares {data_size} bytes of audio but only {present} "
            "are present (the download was probably cut off; fetch it again)"
        )
    if data_size == 0:
        raise InvalidAudioError("the WAV file holds no audio: its data chunk is empty")
    if data_size % block_align:
        raise InvalidAudioError(
            f"the WAV data chunk is {data_size} bytes, not a whole number of {block_align}-byte frames "
            f"({channels} channel(s) of {sample_format}); the file is damaged"
        )
    frames = data_size // block_align
    return WavInfo(sample_rate, channels, sample_format, frames, frames / sample_rate)


def read_wav_info(path: Path) -> WavInfo:
    """Read and parse the header of a WAV file (blocking: call it from a worker thread)."""
    with path.open("rb") as file:
        head = file.read(_HEAD_BYTES)
        size = os.fstat(file.fileno()).st_size
    return parse_wav(head, size)


def _find_chunks(head: bytes, total_size: int) -> tuple[bytes, int, int]:
    """Walk the RIFF chunks in any order; return the fmt body and the data chunk's offset and declared size."""
    fmt: bytes | None = None
    data: tuple[int, int] | None = None
    offset = 12
    while offset + 8 <= len(head) and (fmt is None or data is None):
        chunk_id, size = struct.unpack_from("<4sI", head, offset)
        body = offset + 8
        if chunk_id == b"fmt ":
            if body + size > len(head):
                raise InvalidAudioError(f"the WAV fmt chunk ends beyond the first {len(head)} bytes of the file")
            fmt = head[body : body + size]
        elif chunk_id == b"data":
            data = (body, size)
        offset = body + size + (size & 1)  # chunks of odd size are followed by a pad byte
    walked_whole_file = offset >= total_size or len(head) >= total_size
    if fmt is None:
        raise _missing_chunk("fmt", walked_whole_file, len(head))
    if data is None:
        raise _missing_chunk("data", walked_whole_file, len(head))
    return fmt, data[0], data[1]


def _missing_chunk(name: str, walked_whole_file: bool, head_size: int) -> InvalidAudioError:
    """Explain a chunk that was not found, in the whole file or in the part that was read."""
    if walked_whole_file:
        return InvalidAudioError(f"the WAV file has no {name} chunk, so it is not playable audio")
    return InvalidAudioError(
        f"the WAV file has no {name} chunk in its first {head_size} bytes; headers that long are not supported"
    )


def _parse_fmt(body: bytes) -> tuple[str, int, int, int]:
    """Return the sample format, channels, sample rate and block align of a fmt chunk body we can use."""
    if len(body) < 16:
        raise InvalidAudioError(f"the WAV fmt chunk is {len(body)} bytes, too short to describe the audio (needs 16)")
    tag, channels, rate, _byte_rate, block_align, bits = struct.unpack_from("<HHIIHH", body)
    if tag == _EXTENSIBLE:
        tag = _extensible_subformat(body)
    sample_format = _SAMPLE_FORMATS.get((tag, bits))
    if sample_format is None:
        raise InvalidAudioError(f"unsupported WAV encoding: {_encoding_name(tag, bits)}; supported are {_SUPPORTED}")
    if channels == 0:
        raise InvalidAudioError("the WAV header declares 0 channels")
    if rate == 0:
        raise InvalidAudioError("the WAV header declares a sample rate of 0 Hz")
    if block_align != channels * bits // 8:
        raise InvalidAudioError(
            f"the WAV header is inconsistent: a block align of {block_align} bytes for {channels} channel(s) "
            f"of {bits}-bit samples (expected {channels * bits // 8})"
        )
    return sample_format, channels, rate, block_align


def _extensible_subformat(body: bytes) -> int:
    """Return the plain format tag inside a WAVE_FORMAT_EXTENSIBLE fmt chunk."""
    if len(body) < 40:
        raise InvalidAudioError(f"the WAVE_FORMAT_EXTENSIBLE fmt chunk is {len(body)} bytes, too short (needs 40)")
    guid = body[24:40]
    if guid[4:] != _KSDATAFORMAT_TAIL:
        raise InvalidAudioError(
            f"unsupported WAVE_FORMAT_EXTENSIBLE subformat {guid.hex()}; supported are {_SUPPORTED}"
        )
    return int.from_bytes(guid[:4], "little")


def _encoding_name(tag: int, bits: int) -> str:
    """Name an encoding for an error message."""
    if tag == _PCM:
        return f"{bits}-bit PCM"
    if tag == _IEEE_FLOAT:
        return f"{bits}-bit IEEE float"
    return f"{_ENCODING_NAMES.get(tag, 'an unknown encoding')} (format tag {tag:#06x})"


def _not_wav_message(head: bytes, total_size: int) -> str:
    """Say what a body that is not a RIFF/WAVE file looks like instead."""
    if total_size == 0 or not head:
        return "the file is empty (0 bytes), not a WAV"
    text = head[:64].lstrip().lower()
    if text.startswith(b"<"):
        return f"the file is an HTML/XML page, not a WAV (the media URL probably answered an error): {_excerpt(head)}"
    if text.startswith((b"{", b"[")):
        return f"the file is JSON, not a WAV (the media URL probably answered an error): {_excerpt(head)}"
    if head.startswith(b"RIFF") and len(head) >= 12:
        return f"the file is a RIFF file of type {head[8:12]!r}, not WAVE"
    for magic, what in _OTHER_FORMATS.items():
        if head.startswith(magic):
            return f"the file is {what} file, not a WAV"
    if len(head) < 12:
        return f"the file is only {len(head)} bytes, too short to be a WAV"
    return f"the file does not start with a RIFF/WAVE header (first bytes: {head[:12].hex(' ')})"


def not_audio_message(head: bytes, total_size: int) -> str:
    """Say what a body that is no audio container we know looks like instead."""
    if total_size == 0 or not head:
        return "the file is empty (0 bytes), not audio"
    text = head[:64].lstrip().lower()
    if text.startswith(b"<"):
        return f"the file is an HTML/XML page, not audio (the media URL probably answered an error): {_excerpt(head)}"
    if text.startswith((b"{", b"[")):
        return f"the file is JSON, not audio (the media URL probably answered an error): {_excerpt(head)}"
    if head.startswith(b"RIFF") and len(head) >= 12:
        return f"the file is a RIFF file of type {head[8:12]!r}, not audio ({_ACCEPTED})"
    for magic, what in _NOT_AUDIO.items():
        if head.startswith(magic):
            return f"the file is {what}, not audio"
    if len(head) < 12:
        return f"the file is only {len(head)} bytes, too short to be audio"
    return f"the file is not audio in a container this server reads ({_ACCEPTED}); first bytes: {head[:12].hex(' ')}"


def check_audio(path: Path, head: bytes, size: int) -> AudioInfo:
    """Identify a file's container by its bytes and decode it whole (blocking); InvalidAudioError says what is
    wrong, or what the file is when it is not audio."""
    kind = sniff(head)
    if kind is None:
        raise InvalidAudioError(not_audio_message(head, size))
    if kind == "wav":
        parse_wav(head, size)  # the header's own checks: encodings we refuse, and truncation by declared size
    return check_decoded(path, head, size, kind)


def _excerpt(head: bytes) -> str:
    """Quote the start of a text body on one line."""
    text = " ".join(head[:120].decode("utf-8", "replace").split())
    return repr("".join(c if c.isprintable() else "?" for c in text)[:80])


def audio_filename(prompt: str, request_id: str) -> str:
    """Build a bare, OS-safe, collision-free name `<slug>-<short id>.wav` from a prompt and a request id."""
    return f"{_slug(prompt)}-{_short_id(request_id)}.wav"


def _slug(prompt: str) -> str:
    """Fold a prompt to ASCII words joined by '-', cut at a word boundary; 'audio' when nothing is left."""
    folded = unicodedata.normalize("NFKD", prompt).encode("ascii", "ignore").decode("ascii").lower()
    words = _WORD.findall(folded)
    slug = ""
    for word in words:
        candidate = f"{slug}-{word}" if slug else word
        if len(candidate) > _SLUG_MAX:
            break
        slug = candidate
    if not slug and words:
        slug = words[0][:_SLUG_MAX]
    return slug or "audio"


def _short_id(request_id: str) -> str:
    """Take the last 8 alphanumerics of a request id, lower-cased: the random tail of a UUIDv7."""
    alphanumerics = "".join(_ALPHANUMERIC.findall(request_id)).lower()
    if len(alphanumerics) >= _SHORT_ID_LENGTH:
        return alphanumerics[-_SHORT_ID_LENGTH:]
    # Too short to be distinctive on its own: a digest keeps the name unique and the length fixed.
    return hashlib.sha256(request_id.encode()).hexdigest()[:_SHORT_ID_LENGTH]


def checked_filename(name: str, suffix: str = "wav") -> str:
    """Validate a user-supplied bare file name and return it, adding `.<suffix>` when it has none."""
    for broken, problem in _NAME_RULES:
        if broken(name):
            raise InvalidArgumentError(f"the filename {_shown(name)} {problem}; use {_NAME_HINT}")
    _stem, dot, given = name.rpartition(".")
    if not dot:
        name = f"{name}.{suffix}"
    elif given.lower() != suffix:
        raise InvalidArgumentError(
            f"the filename {_shown(name)} ends in '.{given}', but the file is {suffix.upper()} "
            f"(leave the suffix off to get .{suffix}, or ask for format='{given.lower()}')"
        )
    if len(name) > _MAX_NAME:
        raise InvalidArgumentError(f"the filename {_shown(name)} is {len(name)} characters long; use {_NAME_HINT}")
    return name


def _shown(name: str) -> str:
    """Quote a possibly long or hostile name for an error message."""
    return repr(name if len(name) <= 60 else f"{name[:57]}...")


def audio_work_limiter() -> anyio.CapacityLimiter:
    """The limiter every CPU-heavy piece of audio work runs under (one per event loop)."""
    try:
        return _AUDIO_LIMITER.get()
    except LookupError:
        limiter = anyio.CapacityLimiter(AUDIO_WORK_THREADS)
        _AUDIO_LIMITER.set(limiter)
        return limiter


async def run_audio_work(func: Callable[[Unpack[_Args]], _T], *args: *_Args) -> _T:
    """Run a CPU-heavy piece of audio work (decode, encode, hash, measure) in one of this event loop's audio
    threads: at most AUDIO_WORK_THREADS at once (`audio_work_limiter`), in threads of their own that run at a lower
    CPU priority than the event loop (AUDIO_WORK_NICENESS, on Linux). Like `anyio.to_thread.run_sync`, a cancelled
    caller waits for work already started, so nothing is left half-written."""
    async with audio_work_limiter():
        done = asyncio.wrap_future(_audio_executor().submit(func, *args))
        with anyio.CancelScope(shield=True):
            await asyncio.wait([done])
        return done.result()


def _audio_executor() -> ThreadPoolExecutor:
    try:
        return _AUDIO_EXECUTOR.get()
    except LookupError:
        # Its idle threads end when the executor is collected with the event loop that owned it.
        executor = ThreadPoolExecutor(AUDIO_WORK_THREADS, "mmaudio-audio", initializer=_lower_priority)
        _AUDIO_EXECUTOR.set(executor)
        return executor


def _lower_priority() -> None:
    """Lower the calling thread's CPU priority by AUDIO_WORK_NICENESS (Linux: nice applies per thread; elsewhere
    it would apply to the whole process, so nothing changes). It can never be raised back without privileges: the
    audio threads are kept for audio work only."""
    if sys.platform != "linux":
        return
    thread = threading.get_native_id()
    with contextlib.suppress(OSError):
        os.setpriority(os.PRIO_PROCESS, thread, os.getpriority(os.PRIO_PROCESS, thread) + AUDIO_WORK_NICENESS)


def file_uri(path: Path) -> str:
    """Return the file:// URI of a path, made absolute."""
    return path.resolve().as_uri()


def part_file_for(dest: Path) -> tuple[int, Path]:
    """Create the hidden temporary file a write to dest goes through (`.name.<random>.part`, beside it), readable
    like any file the user makes (mkstemp alone would leave it private to this user); return its fd and path."""
    fd, name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
    os.fchmod(fd, 0o644)
    return fd, Path(name)


class _PartFile:
    """A hidden temporary file beside the destination that counts, hashes and keeps the head of what is written."""

    def __init__(self, dest: Path, max_bytes: int) -> None:
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd, self.path = part_file_for(dest)
        self.file = os.fdopen(fd, "wb")
        self.max_bytes = max_bytes
        self.size = 0
        self.head = bytearray()
        self.digest = hashlib.sha256()
        self.pending = bytearray()

    async def write(self, chunk: bytes) -> None:
        """Count a chunk against the cap; hash and write in a worker thread once about 1 MiB has gathered (one
        thread hop per network chunk would cost more than the disk)."""
        self.size += len(chunk)
        if self.size > self.max_bytes:
            raise MediaTooLargeError(
                f"the audio is larger than the download cap of {self.max_bytes / _MIB:g} MB "
                f"({self.max_bytes} bytes); the download was stopped"
            )
        if len(self.head) < _HEAD_BYTES:
            self.head += chunk[: _HEAD_BYTES - len(self.head)]
        self.pending += chunk
        if len(self.pending) >= _BLOCK_BYTES:
            await anyio.to_thread.run_sync(self._flush_pending)

    def _flush_pending(self) -> None:
        """Hash the gathered bytes and append them to the file."""
        self.digest.update(self.pending)
        self.file.write(self.pending)
        self.pending.clear()

    def commit(self, dest: Path) -> tuple[Path, AudioInfo]:
        """Finish the file, check it is complete audio and rename it onto dest, under its container's extension
        (the file is kept as delivered); return the final path, resolved."""
        self._flush_pending()
        self.file.flush()
        # Durable before the rename, so a crash cannot leave dest renamed but empty.
        os.fsync(self.file.fileno())
        self.file.close()
        info = check_audio(self.path, bytes(self.head), self.size)
        final = dest.with_suffix(f".{info.container}")
        os.replace(self.path, final)
        return final.resolve(), info

    def discard(self) -> None:
        """Close and remove the temporary file."""
        with contextlib.suppress(OSError):
            self.file.close()
        self.path.unlink(missing_ok=True)


async def save_audio(chunks: AsyncIterable[bytes], dest: Path, *, max_bytes: int = DEFAULT_MAX_BYTES) -> AudioFile:
    """Stream chunks into a temporary file beside dest, check it is complete audio, then rename it into place
    (with the suffix of the container it turned out to be: a FLAC delivery named `x.wav` is saved as `x.flac`)."""
    part = await anyio.to_thread.run_sync(_PartFile, dest, max_bytes)
    try:
        async for chunk in chunks:
            await part.write(chunk)
        final, info = await run_audio_work(part.commit, dest)
    except BaseException:
        # Shielded so that a cancelled download still removes its temporary file before cancellation goes on.
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(part.discard)
        raise
    return _audio_file(final, part.size, part.digest.hexdigest(), info)


async def remove_stale_parts(folder: Path, *, older_than: float = 3600.0) -> int:
    """Delete temporary download files left by a killed process (older than an hour, so that another process's
    download in progress is never touched); return how many were removed."""
    return await anyio.to_thread.run_sync(_remove_stale_parts, folder, older_than)


def _remove_stale_parts(folder: Path, older_than: float) -> int:
    cutoff = time.time() - older_than
    removed = 0
    for part in folder.glob(".*.part") if folder.is_dir() else ():
        with contextlib.suppress(OSError):
            if part.is_file() and not part.is_symlink() and part.stat().st_mtime < cutoff:
                part.unlink()
                removed += 1
    return removed


async def file_digest(path: Path) -> tuple[str, int]:
    """Return the file's sha256 (hex) and size, hashing in a worker thread."""
    digest, _head, size = await run_audio_work(_digest_and_head, path)
    return digest, size


def sha256_of(path: Path) -> str:
    """Hash a file in 1 MiB blocks (blocking: for worker threads)."""
    return _digest_and_head(path)[0]


async def verify_file(path: Path, sha256: str) -> bool:
    """Tell whether the file exists and its sha256 matches."""
    return await run_audio_work(_matches, path, sha256)


async def describe_file(path: Path) -> AudioFile:
    """Hash and decode an existing audio file into an AudioFile; InvalidAudioError if it is not usable audio."""
    return await run_audio_work(_describe, path)


def _matches(path: Path, sha256: str) -> bool:
    """Hash a file and compare; False when it cannot be read."""
    try:
        digest, _head, _size = _digest_and_head(path)
    except OSError:
        return False
    return digest == sha256.lower()


def _describe(path: Path) -> AudioFile:
    """Hash and decode an audio file (blocking)."""
    digest, head, size = _digest_and_head(path)
    return _audio_file(path.resolve(), size, digest, check_audio(path, head, size))


def _digest_and_head(path: Path) -> tuple[str, bytes, int]:
    """Hash a file in 1 MiB blocks; return its sha256 hex digest, its first 64 KiB and its size."""
    digest = hashlib.sha256()
    head = b""
    size = 0
    with path.open("rb") as file:
        while block := file.read(_BLOCK_BYTES):
            if not size:
                head = block[:_HEAD_BYTES]
            digest.update(block)
            size += len(block)
    return digest.hexdigest(), head, size


def _audio_file(path: Path, size: int, sha256: str, info: AudioInfo) -> AudioFile:
    """Assemble the result for an absolute path."""
    return AudioFile(
        path=str(path),
        uri=path.as_uri(),
        bytes=size,
        sha256=sha256,
        sample_rate=info.sample_rate,
        channels=info.channels,
        sample_format=info.sample_format,
        duration_seconds=round(info.duration_seconds, 3),
        format=info.container,
    )


__all__ = [
    "AUDIO_WORK_THREADS",
    "DEFAULT_MAX_BYTES",
    "WavInfo",
    "audio_filename",
    "audio_work_limiter",
    "check_audio",
    "checked_filename",
    "describe_file",
    "file_digest",
    "file_uri",
    "not_audio_message",
    "parse_wav",
    "part_file_for",
    "read_wav_info",
    "remove_stale_parts",
    "run_audio_work",
    "save_audio",
    "sha256_of",
    "verify_file",
]
