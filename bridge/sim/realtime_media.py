"""Audio for the Realtime simulator: input decoding and reply audio encoding (its VAD is
`bridge.sim.vad`).

Sans-I/O and cheap per call: audioop (C) on the per-frame input path, and reply audio encoded
once per (text, format, chunk size) into ready-to-send base64 chunks.
"""

from __future__ import annotations

import audioop
import base64
import dataclasses
import threading
from collections.abc import Callable
from typing import Any

import numpy as np

from bridge.audio import ulaw_to_pcm16
from bridge.sim import signals

__all__ = [
    "EncodedAudio",
    "InputDecoder",
    "bytes_per_ms",
    "cached_speech",
    "encode_audio",
    "reply_renderer",
    "speech_audio",
    "turn_audio",
]


def bytes_per_ms(audio_format: dict[str, Any]) -> int:
    """Bytes per millisecond of a GA audio format: PCM16 at 24 kHz, or G.711 at 8 kHz."""
    return 48 if audio_format.get("type") == "audio/pcm" else 8


class InputDecoder:
    """Decodes `input_audio_buffer.append` payloads to PCM16LE at their native rate.

    Optionally keeps everything as PCM16LE 24 kHz (G.711 is upsampled ×3 by linear interpolation
    with carried state), plus the raw mu-law bytes for `audio/pcmu` sessions.
    """

    def __init__(self, *, record: bool) -> None:
        self.record = record
        self.pcm24 = bytearray()
        self.ulaw = bytearray()
        self._last = 0.0  # last 8 kHz sample, for interpolation across appends

    def decode(self, raw: bytes, audio_format: dict[str, Any]) -> tuple[bytes, int]:
        """Return `(pcm16le, sample_rate)` for `raw` in `audio_format`; record if enabled."""
        kind = audio_format.get("type")
        if kind == "audio/pcm":
            pcm = raw[: len(raw) & ~1]
            rate = 24000
            if self.record:
                self.pcm24 += pcm
            return pcm, rate
        if kind == "audio/pcmu":
            pcm = ulaw_to_pcm16(raw)
            if self.record:
                self.ulaw += raw
        else:
            pcm = audioop.alaw2lin(raw, 2)
        if self.record and pcm:
            self.pcm24 += self._upsample3(pcm)
        return pcm, 8000

    def _upsample3(self, pcm: bytes) -> bytes:
        """×3 by linear interpolation from the previous sample (carried across calls): exactly
        three output samples per input sample, delayed by 2/3 of an 8 kHz sample."""
        x = np.frombuffer(pcm, dtype="<i2").astype(np.float32)
        prev = np.empty_like(x)
        prev[0] = self._last
        prev[1:] = x[:-1]
        step = (x - prev) / np.float32(3.0)
        out = np.empty(3 * len(x), dtype=np.float32)
        out[0::3] = prev + step
        out[1::3] = prev + 2 * step
        out[2::3] = x
        self._last = float(x[-1])
        return np.rint(out).astype("<i2").tobytes()


@dataclasses.dataclass(frozen=True, slots=True)
class EncodedAudio:
    """Reply audio cut into deltas: base64 text and decoded byte count per chunk."""

    chunks: tuple[str, ...]
    sizes: tuple[int, ...]
    bytes_per_ms: int
    wire: tuple[bytes, ...] = ()
    """`chunks` as ASCII bytes, for bindings that frame events by hand."""

    @property
    def total_bytes(self) -> int:
        """Decoded size of the whole reply."""
        return sum(self.sizes)


def encode_audio(audio: np.ndarray, audio_format: dict[str, Any], chunk_ms: int) -> EncodedAudio:
    """Encode 24 kHz float audio as `audio_format` chunks of `chunk_ms` (the last may be short)."""
    if audio_format.get("type") == "audio/pcm":
        data = signals.to_pcm16(audio)
    else:
        audio8 = signals.resample(audio, 24000, 8000)
        if audio_format.get("type") == "audio/pcma":
            data = audioop.lin2alaw(signals.to_pcm16(audio8), 2)
        else:
            data = signals.to_ulaw(audio8)
    per_ms = bytes_per_ms(audio_format)
    step = max(1, chunk_ms) * per_ms
    pieces = [data[i : i + step] for i in range(0, len(data), step)]
    wire = tuple(base64.b64encode(p) for p in pieces)
    return EncodedAudio(
        chunks=tuple(w.decode("ascii") for w in wire),
        sizes=tuple(len(p) for p in pieces),
        bytes_per_ms=per_ms,
        wire=wire,
    )


_CACHE: dict[tuple[str, str, int], EncodedAudio] = {}
_CACHE_LIMIT = 256
_CACHE_LOCK = threading.Lock()


def cached_speech(text: str, audio_format: dict[str, Any], chunk_ms: int) -> EncodedAudio | None:
    """The encoded `speech(text)` if already computed, without doing any work."""
    return _CACHE.get((text, str(audio_format.get("type")), chunk_ms))


def speech_audio(text: str, audio_format: dict[str, Any], chunk_ms: int) -> EncodedAudio:
    """`speech(text, 24000)` encoded for `audio_format`; cached, safe to call from a thread."""
    key = (text, str(audio_format.get("type")), chunk_ms)
    hit = _CACHE.get(key)
    if hit is not None:
        return hit
    encoded = encode_audio(signals.speech(text, 24000), audio_format, chunk_ms)
    with _CACHE_LOCK:
        if len(_CACHE) >= _CACHE_LIMIT:
            _CACHE.clear()
        _CACHE[key] = encoded
    return encoded


_TURNS: dict[tuple[Callable[[int], np.ndarray], int, str, int], EncodedAudio] = {}


def turn_audio(
    reply_audio: Callable[[int], np.ndarray], turn: int, audio_format: dict[str, Any], chunk_ms: int
) -> EncodedAudio:
    """`reply_audio(turn)` encoded for `audio_format`, once per (function, turn, format, chunk
    size) and shared: for replies that repeat, so that no session encodes them again."""
    key = (reply_audio, turn, str(audio_format.get("type")), chunk_ms)
    hit = _TURNS.get(key)
    if hit is not None:
        return hit
    encoded = encode_audio(reply_audio(turn), audio_format, chunk_ms)
    with _CACHE_LOCK:
        if len(_TURNS) >= _CACHE_LIMIT:
            _TURNS.clear()
        _TURNS[key] = encoded
    return encoded


def reply_renderer(
    reply_audio: Callable[[int], np.ndarray] | None,
    turn: int,
    text: str,
    audio_format: dict[str, Any],
    chunk_ms: int,
    *,
    reply_turns: int = 0,
) -> tuple[Callable[[], EncodedAudio], EncodedAudio | None]:
    """How to render a reply (`reply_audio(turn)` if set, else `speech(text)`), and the result
    if it is already cached. With `reply_turns`, `reply_audio` repeats after that many turns
    and each is encoded once (`turn_audio`)."""
    if reply_audio is not None:
        audio_fn = reply_audio
        if reply_turns > 0:
            shared = turn_audio(audio_fn, turn % reply_turns, audio_format, chunk_ms)
            return lambda: shared, shared

        def render_tone() -> EncodedAudio:
            return encode_audio(audio_fn(turn), audio_format, chunk_ms)

        return render_tone, None

    def render_speech() -> EncodedAudio:
        return speech_audio(text, audio_format, chunk_ms)

    return render_speech, cached_speech(text, audio_format, chunk_ms)
