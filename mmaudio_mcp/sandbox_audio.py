"""Synthesize the sandbox's audio: a few seconds of sound that follows the prompt a little, as a float WAV file.

Pure stdlib and deterministic for one prompt; it imports nothing else from mmaudio_mcp.
"""

from __future__ import annotations

import math
import operator
import random
import re
import struct
import sys
from array import array
from functools import cache
from itertools import accumulate, chain, repeat
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Callable

SAMPLE_RATE = 44_100
# KSDATAFORMAT_SUBTYPE_IEEE_FLOAT (00000003-0000-0010-8000-00aa00389b71) in its on-disk, mixed-endian byte order.
_FLOAT_SUBFORMAT = bytes.fromhex("0300000000001000800000aa00389b71")
WAV_HEADER_BYTES = 80  # RIFF/WAVE (12) + fmt (8 + 40) + fact (8 + 4) + the data chunk's tag and size (8)
_MAX_DATA_BYTES = (0xFFFF_FFFF - (WAV_HEADER_BYTES - 8)) & ~3  # the RIFF size field is 32 bits
# Prompt keyword (as a word prefix) -> box-filter width of the noise: wide boxes rumble, narrow ones hiss.
_NOISE_WIDTHS = {"rain": 2, "water": 4, "crowd": 6, "storm": 16, "wave": 24, "ocean": 24, "wind": 32}
_TONE_WORDS = ("beep", "bell", "chime", "alarm", "tone", "ding")
_MUSIC_WORDS = ("music", "piano", "melody", "synth", "guitar")
_CHORDS = ((0, 4, 7, 12), (-3, 0, 4, 9), (-7, -3, 0, 5), (-5, -1, 2, 7))  # I vi IV V, semitones from the root


def wav_for(prompt: str, duration: int) -> bytes:
    """Return `duration` seconds of audio for `prompt` as a 44.1 kHz mono float32 WAVE_FORMAT_EXTENSIBLE file."""
    return _wav_bytes(_synthesize(prompt, duration))


def _synthesize(prompt: str, duration: int) -> array[float]:
    """Make `duration` seconds of audio that follows the prompt a little, the same every time for one prompt."""
    rng = random.Random(prompt)
    count = duration * SAMPLE_RATE
    words = re.findall(r"[a-z]+", prompt.lower())
    widths = [width for key, width in _NOISE_WIDTHS.items() if any(word.startswith(key) for word in words)]
    if widths:
        samples = _ambience(rng, count, widths[0])
    elif any(word.startswith(_TONE_WORDS) for word in words):
        samples = _chimes(rng, count)
    elif any(word.startswith(_MUSIC_WORDS) for word in words):
        samples = _arpeggio(rng, count)
    else:
        samples = _bursts(rng, count)
    return _fade(samples, SAMPLE_RATE // 50)


def _ambience(rng: random.Random, count: int, width: int) -> array[float]:
    """Loop a few seconds of low-passed noise that swells once per loop, like surf or gusts of wind."""
    # Filtering the whole clip sample by sample is too slow in pure Python; a seamless loop of 3-5 s is not.
    block = SAMPLE_RATE // 100
    blocks = min(count // block + 1, rng.randrange(300, 500))
    length = blocks * block
    white = array("b", rng.randbytes(length))
    smooth = _box(_box(white[length - 2 * width + 2 :] + white, width), width)  # circular padding: no seam
    gains = (0.55 - 0.45 * math.cos(math.tau * index / blocks) for index in range(blocks))
    loop = _normalized(array("f", map(operator.mul, smooth, chain.from_iterable(map(repeat, gains, repeat(block))))))
    return (loop * (count // length + 1))[:count]


def _box(values: array[int], width: int) -> array[int]:
    """Sum every `width` consecutive values (a box low-pass), via a running sum so the loop stays in C."""
    running = array("q", accumulate(values, initial=0))
    return array("q", map(operator.sub, running[width:], running[:-width]))


def _chimes(rng: random.Random, count: int) -> array[float]:
    """Ring decaying bell tones, alternating two pitches a major third apart."""
    gap = int(SAMPLE_RATE * rng.uniform(0.5, 1.0))
    base = rng.choice((660.0, 880.0, 1046.5))
    bells = [_normalized(_mix(_tone(hz, gap, 5.0), _tone(hz * 2.76, gap, 12.0), 0.3)) for hz in (base, base * 1.26)]
    return _sequence(count, gap, lambda index: bells[index % 2])


def _arpeggio(rng: random.Random, count: int) -> array[float]:
    """Play a broken-chord I-vi-IV-V progression with plucked, decaying notes."""
    root = rng.choice((220.0, 246.94, 261.63, 293.66))
    step = int(SAMPLE_RATE * rng.choice((0.15, 0.2, 0.25)))

    @cache
    def pluck(semitones: int) -> array[float]:
        pitch = root * 2 ** (semitones / 12)
        return _normalized(_mix(_tone(pitch, step, 4.0), _tone(pitch * 2, step, 8.0), 0.35))

    return _sequence(count, step, lambda index: pluck(_CHORDS[index // 8 % len(_CHORDS)][index % 4]))


def _sequence(count: int, step: int, note_at: Callable[[int], array[float]]) -> array[float]:
    """Place note `note_at(i)` every `step` samples, for `count` samples."""
    out = array("f", bytes(4 * count))
    for index, start in enumerate(range(0, count, step)):
        _place(out, note_at(index), start)
    return out


def _bursts(rng: random.Random, count: int) -> array[float]:
    """Scatter short decaying noise bursts, each over a low thump, with silences between them."""
    out = array("f", bytes(4 * count))
    start = int(SAMPLE_RATE * rng.uniform(0.05, 0.3))
    while start < count:
        length = int(SAMPLE_RATE * rng.uniform(0.1, 0.4))
        decay = accumulate(repeat(math.exp(-15.0 / SAMPLE_RATE), length - 1), operator.mul, initial=1 / 128)
        hiss = array("f", map(operator.mul, array("b", rng.randbytes(length)), decay))
        burst = _mix(hiss, _tone(rng.uniform(50.0, 140.0), length, 10.0), 0.8)
        _place(out, _normalized(_fade(burst, 64), rng.uniform(0.4, 0.8)), start)
        start += length + int(SAMPLE_RATE * rng.uniform(0.05, 0.6))
    return out


def _tone(pitch: float, count: int, decay: float) -> array[float]:
    """Return a sine at `pitch` Hz decaying by e every 1/`decay` seconds, with a click-free start and end."""
    step = math.tau * pitch / SAMPLE_RATE
    sines = map(math.sin, map(operator.mul, range(count), repeat(step)))
    envelope = accumulate(repeat(math.exp(-decay / SAMPLE_RATE), count - 1), operator.mul, initial=1.0)
    return _fade(array("f", map(operator.mul, sines, envelope)), 64)


def _mix(first: array[float], second: array[float], gain: float) -> array[float]:
    return array("f", map(operator.add, first, map(operator.mul, second, repeat(gain))))


def _normalized(samples: array[float], peak: float = 0.8) -> array[float]:
    """Scale the samples so that the loudest one reaches `peak` (below full scale, as real outputs are)."""
    gain = peak / max(max(samples), -min(samples), 1e-9)
    return array("f", map(operator.mul, samples, repeat(gain)))


def _place(out: array[float], clip: array[float], start: int) -> None:
    """Copy `clip` into `out` at `start`, cut at the end of `out`."""
    end = min(start + len(clip), len(out))
    out[start:end] = clip[: end - start]


def _fade(samples: array[float], length: int) -> array[float]:
    """Ramp the first and last `length` samples in place, so nothing clicks; return the samples."""
    length = min(length, len(samples) // 2)
    for index in range(length):
        samples[index] *= index / length
        samples[-1 - index] *= index / length
    return samples


def wav_header(data_bytes: int) -> bytes:
    """Return the WAV_HEADER_BYTES that start a mono float32 file (as `wav_for` writes) of `data_bytes` of samples.

    The header alone lets a streamed body be any size without building it: the samples follow it as they come.
    """
    if data_bytes < 0 or data_bytes % 4 or data_bytes > _MAX_DATA_BYTES:
        raise ValueError("data_bytes must be a whole number of float32 samples that fits a RIFF file")
    rate, width = SAMPLE_RATE, 4
    fmt = struct.pack("<HHIIHHHHI16s", 0xFFFE, 1, rate, rate * width, width, 32, 22, 32, 4, _FLOAT_SUBFORMAT)
    chunks = b"".join(
        tag + struct.pack("<I", len(payload)) + payload
        for tag, payload in ((b"fmt ", fmt), (b"fact", struct.pack("<I", data_bytes // width)))
    )
    riff_size = 4 + len(chunks) + 8 + data_bytes
    return b"RIFF" + struct.pack("<I", riff_size) + b"WAVE" + chunks + b"data" + struct.pack("<I", data_bytes)


def _wav_bytes(samples: array[float]) -> bytes:
    """Encode mono 32-bit float samples as WAVE_FORMAT_EXTENSIBLE with a fact chunk, little-endian on any host."""
    if sys.byteorder == "big":
        samples = array("f", samples)
        samples.byteswap()
    data = samples.tobytes()
    return wav_header(len(data)) + data
