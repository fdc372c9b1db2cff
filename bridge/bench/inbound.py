"""The model side's view of one session's input audio: which call it is, then when it talks.

Sans-I/O. Appended audio (PCM16 24 kHz, or mu-law 8 kHz for `audio/pcmu` sessions) is cut into
20 ms windows on the session's timeline, one RMS each: first they decode the call-id preamble
(`signature`), then an energy VAD turns them into speech started / stopped, as server VAD does.
"""

from __future__ import annotations

import audioop
import dataclasses
from typing import Literal

from bridge.bench.signature import PREAMBLE_FRAMES, PreambleDecoder

__all__ = ["VAD_RMS", "Heard", "InboundAudio"]

WINDOW_MS = 20
VAD_RMS = 32768.0 * 10 ** (-40.0 / 20.0)  # -40 dBFS, as the generic simulator


@dataclasses.dataclass(frozen=True, slots=True)
class Heard:
    """`call`: the preamble named call `value`; `started`: speech from `value` ms on the
    session's timeline; `stopped`: speech ended at `value` ms (after the silence duration)."""

    kind: Literal["call", "started", "stopped"]
    value: int


class InboundAudio:
    def __init__(self, *, silence_ms: int = 500) -> None:
        self.pcmu = False
        self.silence_ms = silence_ms
        self.caller_bytes = 0.0  # audio received so far, as caller-side mu-law bytes
        self.decoder = PreambleDecoder()
        self.in_speech = False
        self.voice_end_ms = 0
        self._pending = b""
        self._window = 0
        self._vad_from: int | None = None  # first window after the preamble

    def feed(self, raw: bytes) -> tuple[float, list[Heard]]:
        """One append: its size in caller-side bytes, and what it made the model side hear."""
        if self.pcmu:
            size = float(len(raw))
            pcm, window = audioop.ulaw2lin(raw, 2), 320
        else:
            size = len(raw) / 6.0
            pcm, window = raw, 960
        data = self._pending + pcm if self._pending else pcm
        whole = len(data) - len(data) % window
        heard: list[Heard] = []
        for start in range(0, whole, window):
            event = self._on_window(audioop.rms(data[start : start + window], 2))
            if event is not None:
                heard.append(event)
        self._pending = data[whole:]
        self.caller_bytes += size
        return size, heard

    def _on_window(self, rms: float) -> Heard | None:
        w = self._window
        self._window += 1
        if self._vad_from is None:
            call_id = self.decoder.feed(rms)
            if call_id is None:
                return None
            assert self.decoder.sync is not None
            self._vad_from = self.decoder.sync + PREAMBLE_FRAMES + 1
            return Heard("call", call_id)
        if w < self._vad_from:
            return None
        t_ms = w * WINDOW_MS
        if rms >= VAD_RMS:
            self.voice_end_ms = t_ms + WINDOW_MS
            if not self.in_speech:
                self.in_speech = True
                return Heard("started", t_ms)
        elif self.in_speech and t_ms + WINDOW_MS - self.voice_end_ms >= self.silence_ms:
            self.in_speech = False
            return Heard("stopped", self.voice_end_ms)
        return None
