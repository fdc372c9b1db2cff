"""Which Realtime session belongs to which call: a call id spoken as loud and silent frames.

The bridge opens one Realtime session per call but tells the model side nothing about the call,
so each simulated caller starts with a preamble the model side can decode from the audio alone,
through the transcoder or passed through: one loud sync frame, one silent frame, 12 id bits and a
4-bit check, one 20 ms frame each (loud = 1). It starts at frame `PREAMBLE_AT`, which also fixes
where the caller's and the model's timelines line up. Also the generator's audio material:
speech-like caller bursts and assistant replies, encoded once and shared by every call.
"""

from __future__ import annotations

import audioop
import base64

import numpy as np
from numpy.typing import NDArray

from bridge.audio import FRAME_BYTES
from bridge.sim import signals
from bridge.sim.playback import RATE, SILENCE

__all__ = [
    "ID_BITS",
    "PREAMBLE_AT",
    "PREAMBLE_FRAMES",
    "PreambleDecoder",
    "preamble_bits",
    "preamble_frames",
    "speechlike",
    "utterance_frames",
]

PREAMBLE_AT = 25  # frames of silence first: time for the bridge to open its Realtime session
ID_BITS = 12
CHECK_BITS = 4
PREAMBLE_FRAMES = 2 + ID_BITS + CHECK_BITS
MAX_CALLS = 1 << ID_BITS
_TONE_HZ = 1000.0
_TONE_AMPLITUDE = 0.3
# RMS (PCM16) of a loud frame is ~6950. Through the transcoder a loud frame keeps >= 89% of it
# and the silent frame after one gets <= 46% (its first 4.1 ms are the filter's delayed tail),
# so 65% separates them with margin on both sides.
LOUD_RMS = _TONE_AMPLITUDE * 32768.0 / np.sqrt(2.0)
THRESHOLD_RMS = 0.65 * LOUD_RMS


def _check(call_id: int) -> int:
    return (call_id + (call_id >> 4) + (call_id >> 8) + 5) & 0xF


def preamble_bits(call_id: int) -> list[bool]:
    if not 0 <= call_id < MAX_CALLS:
        raise ValueError(f"call id {call_id} outside 0..{MAX_CALLS - 1}")
    bits = [True, False]
    bits += [bool(call_id >> (ID_BITS - 1 - i) & 1) for i in range(ID_BITS)]
    check = _check(call_id)
    bits += [bool(check >> (CHECK_BITS - 1 - i) & 1) for i in range(CHECK_BITS)]
    return bits


def _loud_frame() -> bytes:
    return signals.to_ulaw(signals.tone(_TONE_HZ, FRAME_BYTES / RATE, RATE, _TONE_AMPLITUDE))


_LOUD = _loud_frame()
_SILENT = SILENCE


def preamble_frames(call_id: int) -> list[bytes]:
    """The mu-law frames the caller sends from `PREAMBLE_AT` on."""
    return [_LOUD if bit else _SILENT for bit in preamble_bits(call_id)]


class PreambleDecoder:
    """Fed the RMS of each 20 ms window of a session's input (in order); finds the call id.

    `result` is the decoded id once the preamble has been read, `sync` the window it began at;
    `failed` is set if a preamble's check did not match.
    """

    def __init__(self) -> None:
        self.sync: int | None = None
        self.result: int | None = None
        self.failed = False
        self._bits: list[bool] = []
        self._window = 0

    def feed(self, rms: float) -> int | None:
        window = self._window
        self._window += 1
        if self.result is not None or self.failed:
            return self.result
        loud = rms >= THRESHOLD_RMS
        if self.sync is None:
            if loud:
                self.sync = window
            return None
        self._bits.append(loud)
        if len(self._bits) < PREAMBLE_FRAMES - 1:
            return None
        bits = self._bits[1:]  # after the silent frame
        call_id = 0
        for bit in bits[:ID_BITS]:
            call_id = call_id << 1 | bit
        check = 0
        for bit in bits[ID_BITS:]:
            check = check << 1 | bit
        if self._bits[0] or check != _check(call_id):
            self.failed = True
            return None
        self.result = call_id
        return call_id


def speechlike(seconds: float, rate: int, seed: int, amplitude: float) -> NDArray[np.float32]:
    """Voiced harmonics with a wandering pitch and a syllable envelope that never goes quiet."""
    rng = np.random.default_rng(seed)
    n = round(seconds * rate)
    t = np.arange(n) / rate
    f0 = 150.0 + 25.0 * np.sin(2 * np.pi * 0.7 * t + rng.uniform(0, 6.28))
    phase = 2 * np.pi * np.cumsum(f0) / rate
    x = sum(np.sin(k * phase) / k for k in range(1, 9))
    envelope = 0.55 + 0.45 * np.sin(2 * np.pi * 4.0 * t + rng.uniform(0, 6.28))
    y = np.asarray(x * envelope, dtype=np.float64)
    y *= amplitude / np.max(np.abs(y))
    return signals.fade(y.astype(np.float32), rate, 0.01)


def utterance_frames(seconds: float = 3.0, seed: int = 1) -> list[str]:
    """A caller burst as base64 mu-law frames (the caller sends a prefix of it)."""
    ulaw = signals.to_ulaw(speechlike(seconds, 8000, seed, 0.25))
    frames = [ulaw[i : i + FRAME_BYTES] for i in range(0, len(ulaw), FRAME_BYTES)]
    return [base64.b64encode(f).decode("ascii") for f in frames if len(f) == FRAME_BYTES]


def window_rms(pcm16: bytes) -> float:
    """RMS of PCM16 samples (native byte order)."""
    return float(audioop.rms(pcm16, 2)) if pcm16 else 0.0
