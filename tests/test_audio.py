"""Tests for mmaudio_mcp.audio: WAV checks on real RIFF bytes, atomic downloads into real folders, safe names."""

from __future__ import annotations

import hashlib
import io
import re
import struct
import wave
from typing import TYPE_CHECKING

import anyio
import anyio.lowlevel
import pytest

from mmaudio_mcp.audio import (
    DEFAULT_MAX_BYTES,
    WavInfo,
    audio_filename,
    checked_filename,
    describe_file,
    file_uri,
    parse_wav,
    read_wav_info,
    save_audio,
    verify_file,
)
from mmaudio_mcp.errors import InvalidArgumentError, InvalidAudioError, MediaTooLargeError

if TYPE_CHECKING:
    from collections.abc import AsyncIterator
    from pathlib import Path

SAFE_NAME = re.compile(r"^[a-z0-9-]+-[a-z0-9]{8}\.wav$")
GUID_TAIL = bytes.fromhex("000010008000" + "00aa00389b71")
PCM, IEEE_FLOAT, EXTENSIBLE = 1, 3, 0xFFFE


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


# --- WAV builders ----------------------------------------------------------------------------------------------------


def chunk(chunk_id: bytes, body: bytes) -> bytes:
    """Encode one RIFF chunk, with the pad byte an odd size needs."""
    return chunk_id + struct.pack("<I", len(body)) + body + (b"\x00" if len(body) % 2 else b"")


def riff(*chunks: bytes) -> bytes:
    """Wrap chunks in a RIFF/WAVE container."""
    body = b"WAVE" + b"".join(chunks)
    return b"RIFF" + struct.pack("<I", len(body)) + body


def fmt(tag: int, channels: int, rate: int, bits: int) -> bytes:
    """Encode a plain 16-byte fmt chunk."""
    align = channels * bits // 8
    return chunk(b"fmt ", struct.pack("<HHIIHH", tag, channels, rate, rate * align, align, bits))


def fmt_extensible(subformat: int, channels: int, rate: int, bits: int, *, tail: bytes = GUID_TAIL) -> bytes:
    """Encode a 40-byte WAVE_FORMAT_EXTENSIBLE fmt chunk."""
    align = channels * bits // 8
    head = struct.pack("<HHIIHHHHI", EXTENSIBLE, channels, rate, rate * align, align, bits, 22, bits, 0x4)
    return chunk(b"fmt ", head + struct.pack("<I", subformat) + tail)


def data(frames: int, channels: int, bits: int) -> bytes:
    """Encode a data chunk of silence."""
    return chunk(b"data", bytes(frames * channels * bits // 8))


def pcm16_wav(frames: int = 4410, channels: int = 2, rate: int = 44100) -> bytes:
    """Write a PCM16 WAV with the stdlib wave module."""
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as writer:
        writer.setnchannels(channels)
        writer.setsampwidth(2)
        writer.setframerate(rate)
        writer.writeframes(bytes(frames * channels * 2))
    return buffer.getvalue()


def float32_wav(frames: int = 4800, channels: int = 2, rate: int = 48000) -> bytes:
    """Write a float32 WAV (format tag 3) with a fact chunk, the way many tools do."""
    return riff(
        fmt(IEEE_FLOAT, channels, rate, 32), chunk(b"fact", struct.pack("<I", frames)), data(frames, channels, 32)
    )


HTML_PAGE = b"<!DOCTYPE html>\n<html><head><title>403 Forbidden</title></head><body>AccessDenied</body></html>"
JSON_ERROR = b'{"error": "NotFound", "message": "The media has expired"}'


# --- parse_wav -------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("wav", "expected"),
    [
        pytest.param(pcm16_wav(), WavInfo(44100, 2, "pcm16", 4410, 0.1), id="pcm16-stdlib-wave"),
        pytest.param(float32_wav(), WavInfo(48000, 2, "float32", 4800, 0.1), id="float32-with-fact"),
        pytest.param(
            riff(fmt_extensible(IEEE_FLOAT, 1, 44100, 32), data(441, 1, 32)),
            WavInfo(44100, 1, "float32", 441, 0.01),
            id="extensible-float32",
        ),
        pytest.param(
            riff(fmt_extensible(PCM, 2, 96000, 24), data(960, 2, 24)),
            WavInfo(96000, 2, "pcm24", 960, 0.01),
            id="extensible-pcm24",
        ),
        pytest.param(
            riff(fmt(PCM, 1, 16000, 16), chunk(b"LIST", b"INFOISFT\x05\x00\x00\x00test\x00"), data(1600, 1, 16)),
            WavInfo(16000, 1, "pcm16", 1600, 0.1),
            id="list-chunk-before-data",
        ),
        pytest.param(
            riff(chunk(b"junk", b"odd"), fmt(PCM, 1, 8000, 8), data(3, 1, 8), chunk(b"id3 ", b"x")),
            WavInfo(8000, 1, "pcm8", 3, 3 / 8000),
            id="odd-sized-chunks-padded-pcm8",
        ),
        pytest.param(
            riff(data(100, 1, 32), fmt(PCM, 1, 1000, 32)),
            WavInfo(1000, 1, "pcm32", 100, 0.1),
            id="fmt-after-data",
        ),
        pytest.param(
            riff(fmt(IEEE_FLOAT, 1, 22050, 64), data(2205, 1, 64)),
            WavInfo(22050, 1, "float64", 2205, 0.1),
            id="float64",
        ),
    ],
)
def test_each_supported_encoding_parses_with_its_rate_channels_format_and_duration(
    wav: bytes, expected: WavInfo
) -> None:
    """PCM 8/16/24/32 and float 32/64, plain or extensible, with extra chunks in any order, parse exactly."""
    info = parse_wav(wav, len(wav))
    assert info.sample_rate == expected.sample_rate
    assert info.channels == expected.channels
    assert info.sample_format == expected.sample_format
    assert info.frames == expected.frames
    assert info.duration_seconds == pytest.approx(expected.duration_seconds)


def test_trailing_bytes_after_the_data_chunk_are_accepted() -> None:
    """Bytes after the data chunk (metadata, padding) do not make a WAV invalid."""
    wav = pcm16_wav() + b"\x00" * 37

    assert parse_wav(wav, len(wav)).frames == 4410


@pytest.mark.parametrize(
    ("body", "match"),
    [
        pytest.param(pcm16_wav()[:-100], "truncated", id="truncated-data"),
        pytest.param(HTML_PAGE, "HTML", id="html-page"),
        pytest.param(JSON_ERROR, "JSON.*expired", id="json-error"),
        pytest.param(b"", "empty", id="empty-body"),
        pytest.param(riff(fmt(7, 1, 8000, 8), data(80, 1, 8)), "mu-law", id="mu-law"),
        pytest.param(riff(fmt(2, 1, 8000, 4), data(80, 1, 8)), "ADPCM", id="adpcm"),
        pytest.param(riff(fmt(PCM, 1, 8000, 12), data(80, 1, 16)), "12-bit PCM", id="pcm12"),
        pytest.param(riff(fmt_extensible(7, 1, 8000, 8), data(80, 1, 8)), "mu-law", id="extensible-mu-law"),
        pytest.param(riff(fmt_extensible(1, 1, 8000, 16, tail=bytes(12)), data(80, 1, 16)), "subformat", id="guid"),
        pytest.param(riff(fmt(PCM, 0, 8000, 16), data(80, 1, 16)), "0 channels", id="zero-channels"),
        pytest.param(riff(fmt(PCM, 1, 0, 16), data(80, 1, 16)), "0 Hz", id="zero-rate"),
        pytest.param(riff(fmt(PCM, 1, 8000, 16)), "no data chunk", id="no-data-chunk"),
        pytest.param(riff(data(80, 1, 16)), "no fmt chunk", id="no-fmt-chunk"),
        pytest.param(riff(fmt(PCM, 2, 8000, 16), chunk(b"data", bytes(6))), "whole number", id="partial-frame"),
        pytest.param(riff(fmt(PCM, 1, 8000, 16), chunk(b"data", b"")), "no audio", id="empty-data"),
        pytest.param(riff(chunk(b"fmt ", bytes(8)), data(8, 1, 16)), "too short", id="short-fmt"),
        pytest.param(b"RIFF\x04\x00\x00\x00AVI ", "AVI", id="riff-avi"),
        pytest.param(b"ID3\x04\x00" + bytes(40), "MP3", id="mp3"),
    ],
)
def test_bodies_that_are_not_complete_usable_wavs_are_refused_with_a_clear_reason(body: bytes, match: str) -> None:
    """Truncation, web pages, empty bodies, other encodings and broken headers raise InvalidAudioError naming why."""
    with pytest.raises(InvalidAudioError, match=match):
        parse_wav(body, len(body))


def test_a_data_chunk_beyond_the_head_buffer_is_refused_as_unsupported() -> None:
    """When the first 64 KiB end before the data chunk header, the header is refused rather than misread."""
    wav = riff(fmt(PCM, 1, 8000, 16), chunk(b"LIST", bytes(70_000)), data(800, 1, 16))

    with pytest.raises(InvalidAudioError, match="first 65536 bytes"):
        parse_wav(wav[: 64 * 1024], len(wav))


def test_read_wav_info_reads_the_header_of_a_file_on_disk(tmp_path: Path) -> None:
    """read_wav_info parses a real file from its head and its size on disk."""
    path = tmp_path / "a.wav"
    path.write_bytes(float32_wav())

    assert read_wav_info(path) == parse_wav(float32_wav(), len(float32_wav()))


# --- save_audio ------------------------------------------------------------------------------------------------------


def names(folder: Path) -> list[str]:
    """List the entries of a folder, hidden ones included."""
    return sorted(entry.name for entry in folder.iterdir())


async def stream(body: bytes, size: int = 1000) -> AsyncIterator[bytes]:
    """Yield a body in chunks, as an HTTP client would."""
    for start in range(0, len(body), size):
        yield body[start : start + size]
        await anyio.lowlevel.checkpoint()


async def test_save_wav_writes_the_file_atomically_with_its_sha256(tmp_path: Path) -> None:
    """The file lands at dest with the streamed bytes, the right sha256 and header, and no temp file is left."""
    wav = float32_wav(frames=48000 * 3)  # ~1.1 MB, several chunks
    dest = tmp_path / "out" / "rain.wav"

    result = await save_audio(stream(wav, 64 * 1024), dest)

    assert dest.read_bytes() == wav
    assert result.sha256 == hashlib.sha256(wav).hexdigest()
    assert result.path == str(dest.resolve())
    assert result.uri == dest.resolve().as_uri()
    assert (result.bytes, result.sample_rate, result.channels) == (len(wav), 48000, 2)
    assert (result.sample_format, result.duration_seconds) == ("float32", 3.0)
    assert list(dest.parent.iterdir()) == [dest]


async def test_save_wav_replaces_an_existing_file(tmp_path: Path) -> None:
    """A successful save atomically replaces what was at dest before."""
    dest = tmp_path / "rain.wav"
    dest.write_bytes(b"old")

    await save_audio(stream(pcm16_wav()), dest)

    assert dest.read_bytes() == pcm16_wav()


async def test_a_download_over_the_cap_stops_early_and_leaves_nothing(tmp_path: Path) -> None:
    """MediaTooLargeError, naming the cap in MB, is raised as soon as the cap is passed, and the temp file is gone."""
    yielded = 0

    async def big() -> AsyncIterator[bytes]:
        nonlocal yielded
        for _ in range(100):
            yielded += 1
            yield bytes(1000)

    with pytest.raises(MediaTooLargeError, match=r"0\.0047\d* MB"):
        await save_audio(big(), tmp_path / "big.wav", max_bytes=5000)

    assert yielded == 6
    assert names(tmp_path) == []


async def test_invalid_audio_is_not_saved_and_leaves_no_temp_file(tmp_path: Path) -> None:
    """An HTML body raises InvalidAudioError and nothing is left in the folder."""
    with pytest.raises(InvalidAudioError, match="HTML"):
        await save_audio(stream(HTML_PAGE), tmp_path / "x.wav")

    assert names(tmp_path) == []


async def test_cancelling_mid_stream_removes_the_temp_file(tmp_path: Path) -> None:
    """A download cancelled while waiting for the next chunk removes its .part file and writes no dest."""
    parts_seen: list[str] = []

    async def stalls() -> AsyncIterator[bytes]:
        yield pcm16_wav()[:1000]
        parts_seen.extend(names(tmp_path))
        await anyio.sleep_forever()

    with anyio.move_on_after(0.1) as scope:
        await save_audio(stalls(), tmp_path / "x.wav")

    assert scope.cancelled_caught
    assert len(parts_seen) == 1
    assert parts_seen[0].startswith(".x.wav.")
    assert parts_seen[0].endswith(".part")
    assert names(tmp_path) == []


@pytest.mark.parametrize(
    ("body", "max_bytes", "error"),
    [
        pytest.param(JSON_ERROR, DEFAULT_MAX_BYTES, InvalidAudioError, id="invalid-audio"),
        pytest.param(pcm16_wav(), 1000, MediaTooLargeError, id="too-large"),
        pytest.param(pcm16_wav()[:-2], DEFAULT_MAX_BYTES, InvalidAudioError, id="truncated"),
    ],
)
async def test_a_failed_save_leaves_the_previous_file_untouched(
    tmp_path: Path, body: bytes, max_bytes: int, error: type[Exception]
) -> None:
    """When a save fails, the file already at dest keeps its bytes and no temp file remains."""
    dest = tmp_path / "rain.wav"
    dest.write_bytes(float32_wav())

    with pytest.raises(error):
        await save_audio(stream(body), dest, max_bytes=max_bytes)

    assert dest.read_bytes() == float32_wav()
    assert names(tmp_path) == ["rain.wav"]


# --- verify_file, describe_file, file_uri ----------------------------------------------------------------------------


async def test_verify_file_is_true_for_a_match_and_false_for_a_mismatch_or_a_missing_file(tmp_path: Path) -> None:
    """verify_file compares the sha256 of the bytes on disk, and a missing file or a folder is simply False."""
    path = tmp_path / "a.wav"
    path.write_bytes(pcm16_wav())
    digest = hashlib.sha256(pcm16_wav()).hexdigest()

    assert await verify_file(path, digest)
    assert await verify_file(path, digest.upper())
    assert not await verify_file(path, hashlib.sha256(b"other").hexdigest())
    assert not await verify_file(tmp_path / "missing.wav", digest)
    assert not await verify_file(tmp_path, digest)


async def test_describe_file_matches_what_save_wav_reported(tmp_path: Path) -> None:
    """describe_file rebuilds the same AudioFile from a file on disk."""
    saved = await save_audio(stream(float32_wav()), tmp_path / "a.wav")

    assert await describe_file(tmp_path / "a.wav") == saved


async def test_describe_file_refuses_a_file_that_is_not_a_wav(tmp_path: Path) -> None:
    """describe_file raises InvalidAudioError for a file holding an error page."""
    path = tmp_path / "a.wav"
    path.write_bytes(HTML_PAGE)

    with pytest.raises(InvalidAudioError):
        await describe_file(path)


def test_file_uri_is_absolute_and_percent_encoded(tmp_path: Path) -> None:
    """file_uri resolves the path and escapes characters a URI cannot hold."""
    uri = file_uri(tmp_path / "x" / ".." / "rain on roof.wav")

    assert uri == (tmp_path / "rain on roof.wav").resolve().as_uri()
    assert uri.startswith("file:///")
    assert uri.endswith("/rain%20on%20roof.wav")


# --- names -----------------------------------------------------------------------------------------------------------

REQUEST_ID = "mmaudio-v2-text-to-audio_0190A1B2-C3D4-7E5F-8A9B-0C1D2E3F4A5B"


@pytest.mark.parametrize(
    ("prompt", "slug"),
    [
        ("Rain on a tin roof", "rain-on-a-tin-roof"),
        ("Café crème, ambiance — été", "cafe-creme-ambiance-ete"),
        ("🔥🌧️ thunder ⚡", "thunder"),
        ("🔥🔥🔥", "audio"),
        ("日本語の雨", "audio"),
        ("../../etc/passwd", "etc-passwd"),
        ("rain/on\\roof", "rain-on-roof"),
        ("", "audio"),
        ("CON", "con"),
        ("a\x00b\nc", "a-b-c"),
        ("\uff46\uff55\uff4c\uff4c\uff57\uff49\uff44\uff54\uff48 \uff21\uff22\uff23", "fullwidth-abc"),
    ],
)
def test_audio_filename_is_a_bare_safe_name_for_any_prompt(prompt: str, slug: str) -> None:
    """Unicode, emoji, control characters and path traversal all become an ASCII `<slug>-<8 chars>.wav`."""
    name = audio_filename(prompt, REQUEST_ID)

    assert SAFE_NAME.fullmatch(name)
    assert name == f"{slug}-2e3f4a5b.wav"


def test_audio_filename_cuts_a_long_prompt_at_a_word_boundary() -> None:
    """The slug stays within 40 characters and ends on a whole word; a single huge word is cut."""
    assert audio_filename("thunder " * 20, REQUEST_ID) == "thunder-thunder-thunder-thunder-thunder-2e3f4a5b.wav"
    assert audio_filename("x" * 100, REQUEST_ID) == f"{'x' * 40}-2e3f4a5b.wav"


def test_two_uuid7_ids_from_the_same_minute_give_different_names() -> None:
    """The short id comes from the random tail, so jobs sharing a UUIDv7 timestamp prefix do not collide."""
    first = audio_filename("rain", "mmaudio-v2-text-to-audio_0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b")
    second = audio_filename("rain", "mmaudio-v2-text-to-audio_0190a1b2-c3e0-7a11-9f00-77aa88bb99cc")

    assert first != second
    assert SAFE_NAME.fullmatch(first)
    assert SAFE_NAME.fullmatch(second)


def test_a_request_id_with_few_alphanumerics_still_gives_a_fixed_length_safe_name() -> None:
    """Ids shorter than 8 alphanumerics fall back to a digest, still 8 characters and still distinct."""
    first, second = audio_filename("rain", "a-b"), audio_filename("rain", "ab")

    assert SAFE_NAME.fullmatch(first)
    assert SAFE_NAME.fullmatch(second)
    assert first != second


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("rain.wav", "rain.wav"),
        ("rain", "rain.wav"),
        ("Rain On Roof.WAV", "Rain On Roof.WAV"),
        ("pluie-d'été_2.wav", "pluie-d'été_2.wav"),
        ("console.wav", "console.wav"),
        ("x" * 116, "x" * 116 + ".wav"),
    ],
)
def test_checked_filename_accepts_bare_names_and_adds_wav(name: str, expected: str) -> None:
    """Good bare names come back unchanged, or with .wav added when they have no suffix."""
    assert checked_filename(name) == expected


@pytest.mark.parametrize(
    ("name", "match"),
    [
        ("", "empty"),
        ("a/b.wav", "path separator"),
        ("a\\b.wav", "path separator"),
        ("/etc/passwd", "path separator"),
        ("..", r"'\.\.'"),
        ("a..wav", r"'\.\.'"),
        (".hidden.wav", "starts with a dot"),
        ("a\x00b.wav", "control character"),
        ("a\nb.wav", "control character"),
        *[(f"a{c}b.wav", "Windows forbids") for c in '<>:"|?*'],
        ("rain.", "ends with a dot"),
        ("rain ", "ends with a dot or a space"),
        ("CON", "reserved"),
        ("con.wav", "reserved"),
        ("Com1.wav", "reserved"),
        ("lpt9", "reserved"),
        ("NUL .wav", "reserved"),
        ("aux.backup.wav", "reserved"),
        ("song.mp3", "but the file is WAV"),
        ("x" * 117, "121 characters"),
        ("x" * 121 + ".wav", "125 characters"),
    ],
)
def test_checked_filename_refuses_each_unsafe_class_of_name(name: str, match: str) -> None:
    """Each unsafe name raises InvalidArgumentError saying what is wrong and what is allowed."""
    with pytest.raises(InvalidArgumentError, match=match) as caught:
        checked_filename(name)

    assert ".wav" in caught.value.message


async def test_stale_partial_downloads_are_removed_but_fresh_ones_are_kept(tmp_path: Path) -> None:
    """A .part file left by a killed process is cleaned up; one that another process may be writing is not."""
    import os
    import time

    from mmaudio_mcp.audio import remove_stale_parts

    stale = tmp_path / ".rain-1234abcd.wav.x1.part"
    fresh = tmp_path / ".rain-1234abcd.wav.x2.part"
    done = tmp_path / "rain-1234abcd.wav"
    for path in (stale, fresh, done):
        path.write_bytes(b"RIFF")
    old = time.time() - 7200
    os.utime(stale, (old, old))
    os.utime(done, (old, old))
    assert await remove_stale_parts(tmp_path) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([fresh.name, done.name])
    assert await remove_stale_parts(tmp_path / "missing") == 0


# --- any container the gateway delivers ------------------------------------------------------------------------------

CONTAINERS = [
    # (encoding asked of the sandbox's encoder, saved suffix, sample rate, sample format)
    ("rf64", ".wav", 44_100, "float32"),
    ("flac", ".flac", 44_100, "pcm24"),
    ("ogg", ".ogg", 44_100, "vorbis"),
    ("opus", ".ogg", 48_000, "opus"),
    ("mp3", ".mp3", 44_100, "mp3"),
]


def delivered(encoding: str, seconds: int = 2) -> bytes:
    from mmaudio_mcp.sandbox_audio import wav_for
    from mmaudio_mcp.sandbox_media import encode

    return encode(wav_for("rain on a tin roof", seconds), encoding)


@pytest.mark.parametrize(("encoding", "suffix", "rate", "sample_format"), CONTAINERS, ids=[c[0] for c in CONTAINERS])
async def test_every_audio_container_is_kept_as_delivered_under_its_own_suffix(
    tmp_path: Path, encoding: str, suffix: str, rate: int, sample_format: str
) -> None:
    """Detected by its bytes (the name asked for says .wav), checked by decoding it whole, kept byte for byte under
    the container's suffix, and described from the decoded stream."""
    body = delivered(encoding)
    saved = await save_audio(stream(body, 4096), tmp_path / "rain-12345678.wav")
    path = tmp_path / f"rain-12345678{suffix}"
    assert saved.path == str(path.resolve())
    assert path.read_bytes() == body
    assert saved.sha256 == hashlib.sha256(body).hexdigest()
    assert (saved.sample_rate, saved.channels, saved.sample_format) == (rate, 1, sample_format)
    assert saved.duration_seconds == pytest.approx(2.0, abs=0.06)
    assert saved.format == suffix.removeprefix(".")
    assert not (tmp_path / "rain-12345678.wav").exists() or suffix == ".wav"
    assert (await describe_file(path)).model_dump() == saved.model_dump()


@pytest.mark.parametrize("encoding", ["rf64", "flac", "ogg", "mp3"])
async def test_a_cut_off_delivery_in_any_container_is_refused_as_truncated(tmp_path: Path, encoding: str) -> None:
    """Half a file is caught whatever the container (by its declared size, its decoder, or a missing end of stream)
    and leaves nothing behind."""
    body = delivered(encoding, 4)
    with pytest.raises(InvalidAudioError, match=r"truncated|cut off"):
        await save_audio(stream(body[: len(body) // 2], 4096), tmp_path / "x.wav")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("body", "said"),
    [
        (b"%PDF-1.7\n" + bytes(4000), "a PDF document, not audio"),
        (b"PK\x03\x04" + bytes(4000), "a ZIP archive, not audio"),
        (b"\x89PNG\r\n\x1a\n" + bytes(4000), "a PNG image, not audio"),
        (b"RIFF\x00\x10\x00\x00AVI LIST" + bytes(4000), "RIFF file of type b'AVI ', not audio"),
        (b"<!DOCTYPE html><html>Access denied</html>", "HTML/XML page, not audio"),
        (bytes(range(256)) * 20, "not audio in a container this server reads"),
    ],
    ids=["pdf", "zip", "png", "avi", "html", "noise"],
)
async def test_only_what_is_not_audio_is_refused_saying_what_it_is(tmp_path: Path, body: bytes, said: str) -> None:
    """Refused with a message that names what the body is."""
    with pytest.raises(InvalidAudioError, match=re.escape(said)):
        await save_audio(stream(body), tmp_path / "x.wav")
    assert list(tmp_path.iterdir()) == []
