"""Test signals for tests, demo and simulators: tones, speech, offline resampling, codecs, WAV.

Not the hot path: clarity over speed. Samples are float32 in [-1, 1].
"""

from __future__ import annotations

import functools
import io
import logging
import math
import os
import shutil
import subprocess
import wave
import zlib

import numpy as np
from numpy.typing import NDArray

from bridge.audio import pcm16_to_ulaw, ulaw_to_pcm16

__all__ = [
    "fade",
    "from_pcm16",
    "from_ulaw",
    "has_espeak",
    "read_wav",
    "resample",
    "silence",
    "speech",
    "to_pcm16",
    "to_ulaw",
    "tone",
    "write_wav",
]

logger = logging.getLogger(__name__)

Samples = NDArray[np.float32]

_ESPEAK = "espeak-ng"
_ESPEAK_TIMEOUT_S = 30.0
_SPEECH_PEAK = 0.5
_SECONDS_PER_CHAR = 0.07


def tone(freq_hz: float, seconds: float, rate: int, amplitude: float = 0.5) -> Samples:
    """A sine of `freq_hz` starting at phase 0, `round(seconds * rate)` samples long."""
    n = np.arange(round(seconds * rate), dtype=np.float64)
    return (amplitude * np.sin(2.0 * np.pi * freq_hz * n / rate)).astype(np.float32)


def silence(seconds: float, rate: int) -> Samples:
    """`round(seconds * rate)` zero samples."""
    return np.zeros(round(seconds * rate), dtype=np.float32)


def fade(x: NDArray[np.floating], rate: int, seconds: float = 0.01) -> Samples:
    """A copy of `x` with raised-cosine fade-in and fade-out of `seconds` each.

    A hard-gated tone splatters energy far from its frequency (a 5 kHz tone cut to 1 s puts
    -43 dB of its energy below 4 kHz); fading makes out-of-band tests measure the filter.
    """
    y = np.array(x, dtype=np.float32)
    n = min(round(seconds * rate), len(y) // 2)
    if n > 0:
        ramp = (0.5 - 0.5 * np.cos(np.pi * (np.arange(n) + 0.5) / n)).astype(np.float32)
        y[:n] *= ramp
        y[len(y) - n :] *= ramp[::-1]
    return y


def to_pcm16(x: NDArray[np.floating]) -> bytes:
    """Float samples in [-1, 1] -> PCM16LE bytes (rounded, saturated)."""
    scaled = np.clip(np.rint(np.asarray(x, dtype=np.float64) * 32768.0), -32768, 32767)
    return scaled.astype("<i2").tobytes()


def from_pcm16(data: bytes) -> Samples:
    """PCM16LE bytes -> float32 samples in [-1, 1)."""
    return (np.frombuffer(data, dtype="<i2").astype(np.float32) / np.float32(32768.0)).astype(
        np.float32
    )


def to_ulaw(x: NDArray[np.floating]) -> bytes:
    """Float samples -> mu-law bytes at the same rate."""
    return pcm16_to_ulaw(to_pcm16(x))


def from_ulaw(data: bytes) -> Samples:
    """mu-law bytes -> float32 samples at the same rate."""
    return from_pcm16(ulaw_to_pcm16(data))


def _smooth_size(n: int) -> int:
    """Smallest 2·3·5-smooth integer >= n (fast FFT sizes)."""
    best = 1 << max(0, math.ceil(math.log2(max(n, 1))))
    p5 = 1
    while p5 < best:
        p35 = p5
        while p35 < best:
            p = p35
            while p < n:
                p *= 2
            best = min(best, p)
            p35 *= 3
        p5 *= 5
    return best


def resample(x: NDArray[np.floating], from_rate: int, to_rate: int) -> Samples:
    """Offline band-limited resampling by FFT, with a raised-cosine roll-off below the lower
    Nyquist (90-100 %) so there is no aliasing and little ringing.

    Returns `round(len(x) * to_rate / from_rate)` samples, time-aligned with the input.
    """
    if from_rate <= 0 or to_rate <= 0:
        raise ValueError(f"rates must be positive, got {from_rate} -> {to_rate}")
    x64 = np.asarray(x, dtype=np.float64)
    n = len(x64)
    if from_rate == to_rate or n == 0:
        return x64.astype(np.float32)
    g = math.gcd(from_rate, to_rate)
    up, down = to_rate // g, from_rate // g
    n_out = round(n * to_rate / from_rate)
    # Zero padding keeps the circular convolution of the FFT from wrapping the end onto the
    # start; the padded length is a multiple of `down` so the output length is an integer.
    blocks = _smooth_size(math.ceil((n + 2048 + n // 16) / down))
    n_in_p, n_out_p = blocks * down, blocks * up
    spectrum = np.fft.rfft(x64, n_in_p)
    out_spec = np.zeros(n_out_p // 2 + 1, dtype=np.complex128)
    keep = min(len(spectrum), len(out_spec))
    out_spec[:keep] = spectrum[:keep]
    freqs = np.arange(keep) * (from_rate / n_in_p)
    nyquist = min(from_rate, to_rate) / 2.0
    ramp = np.clip((freqs - 0.9 * nyquist) / (0.1 * nyquist), 0.0, 1.0)
    out_spec[:keep] *= 0.5 * (1.0 + np.cos(np.pi * ramp))
    y = np.fft.irfft(out_spec, n_out_p) * (n_out_p / n_in_p)
    return y[:n_out].astype(np.float32)


def has_espeak() -> bool:
    """True when the `espeak-ng` program is on PATH."""
    return shutil.which(_ESPEAK) is not None


def speech(text: str, rate: int) -> Samples:
    """`text` spoken by espeak-ng (or a speech-like synthetic signal without it), peak 0.5.

    Results are cached per (text, rate, engine); each call returns a fresh copy.
    """
    return _speech_cached(text, rate, has_espeak()).copy()


@functools.lru_cache(maxsize=64)
def _speech_cached(text: str, rate: int, use_espeak: bool) -> Samples:
    x: Samples | None = None
    if use_espeak:
        x = _espeak(text, rate)
    if x is None or not np.any(x):
        x = _synthetic_speech(text, rate)
    peak = float(np.max(np.abs(x)))
    if peak > 0.0:
        x = (x * (_SPEECH_PEAK / peak)).astype(np.float32)
    x.setflags(write=False)
    return x


def _espeak(text: str, rate: int) -> Samples | None:
    try:
        proc = subprocess.run(
            [_ESPEAK, "--stdout"],
            input=text.encode(),
            capture_output=True,
            timeout=_ESPEAK_TIMEOUT_S,
            check=True,
        )
        # espeak-ng writes a streaming WAV header (sizes 0x7fffffff); wave reads to EOF.
        with wave.open(io.BytesIO(proc.stdout), "rb") as w:
            width, channels, src_rate = w.getsampwidth(), w.getnchannels(), w.getframerate()
            raw = w.readframes(w.getnframes())
    except (OSError, subprocess.SubprocessError, wave.Error, EOFError) as exc:
        logger.warning("espeak-ng failed (%s); using synthetic speech", exc)
        return None
    if width != 2:
        logger.warning("espeak-ng produced %d-byte samples; using synthetic speech", width)
        return None
    frame = width * channels
    pcm = np.frombuffer(raw[: len(raw) - len(raw) % frame], dtype="<i2").astype(np.float32)
    mono = pcm.reshape(-1, channels).mean(axis=1) / 32768.0
    return resample(mono, src_rate, rate)


# (F1, F2, F3) in Hz for a handful of vowels; bandwidths are fixed below.
_VOWELS = (
    (730.0, 1090.0, 2440.0),  # a
    (270.0, 2290.0, 3010.0),  # i
    (300.0, 870.0, 2240.0),  # u
    (530.0, 1840.0, 2480.0),  # e
    (570.0, 840.0, 2410.0),  # o
)
_BANDWIDTHS = (80.0, 100.0, 150.0)


def _synthetic_speech(text: str, rate: int) -> Samples:
    """Voiced glottal pulses (~120 Hz) through vowel formants, syllable envelope at ~4 Hz."""
    rng = np.random.default_rng(zlib.crc32(text.encode()))
    seconds = max(0.3, _SECONDS_PER_CHAR * len(text))
    n = round(seconds * rate)
    t = np.arange(n) / rate
    # Falling pitch with slow intonation, as in a declarative sentence.
    f0 = 120.0 * (1.0 + 0.08 * np.sin(2.0 * np.pi * 0.7 * t)) * (1.0 - 0.1 * t / seconds)
    phase = np.cumsum(f0) / rate
    pulses = np.zeros(n)
    pulses[1:][np.diff(np.floor(phase)) > 0] = 1.0
    # Rosenberg-style glottal pulse (about 4 ms), differentiated: smooth spectral tilt.
    m = max(4, round(0.004 * rate))
    k = np.arange(m) / m
    glottal = np.diff(
        np.where(k < 0.6, 0.5 * (1 - np.cos(np.pi * k / 0.6)), np.cos(np.pi * (k - 0.6) / 0.8)),
        prepend=0.0,
    )
    source = np.convolve(pulses, glottal)[:n] + 0.01 * rng.standard_normal(n)

    syllable_s = 0.25
    count = max(1, round(seconds / syllable_s))
    edges = np.linspace(0, n, count + 1).astype(int)
    out = np.zeros(n)
    for i in range(count):
        a, b = edges[i], edges[i + 1]
        seg = source[a:b]
        size = _smooth_size(2 * len(seg))
        freqs = np.fft.rfftfreq(size, 1.0 / rate)
        response = np.ones(len(freqs), dtype=np.complex128)
        z = np.exp(-2j * np.pi * freqs / rate)
        for formant, bw in zip(_VOWELS[int(rng.integers(len(_VOWELS)))], _BANDWIDTHS, strict=True):
            if formant >= rate / 2:
                continue
            r = math.exp(-math.pi * bw / rate)
            theta = 2.0 * math.pi * formant / rate
            gain = (1 - r) * math.sqrt(1 - 2 * r * math.cos(2 * theta) + r * r)  # ~unity peak
            response *= gain / (1 - 2 * r * math.cos(theta) * z + r * r * z * z)
        filtered = np.fft.irfft(np.fft.rfft(seg, size) * response, size)[: len(seg)]
        # Syllable envelope: rise and fall over 80 % of the syllable, a short pause after it.
        voiced = int(0.8 * len(seg))
        env = np.zeros(len(seg))
        env[:voiced] = np.sin(np.pi * np.arange(voiced) / max(voiced, 1)) ** 2
        out[a:b] = filtered * env
    return out.astype(np.float32)


def write_wav(path: str | os.PathLike[str], x: NDArray[np.floating], rate: int) -> None:
    """Write float samples as a 16-bit mono WAV file."""
    with wave.open(os.fspath(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(to_pcm16(x))


def read_wav(path: str | os.PathLike[str]) -> tuple[Samples, int]:
    """Read a 16-bit PCM WAV file; channels are averaged to mono. Returns (samples, rate)."""
    with wave.open(os.fspath(path), "rb") as w:
        width, channels, rate = w.getsampwidth(), w.getnchannels(), w.getframerate()
        raw = w.readframes(w.getnframes())
    if width != 2:
        raise ValueError(f"{os.fspath(path)}: only 16-bit WAV is supported, got {8 * width}-bit")
    pcm = np.frombuffer(raw, dtype="<i2").astype(np.float32).reshape(-1, channels)
    return (pcm.mean(axis=1) / np.float32(32768.0)).astype(np.float32), rate
