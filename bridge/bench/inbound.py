"""The benchmark's model side's ear: which call a session is, then when its caller talks.

Sans-I/O. The Realtime session state decodes each append and hands the PCM to its VAD; here that
VAD is `PreambleVad`, the simulator's own `EnergyVad` that first reads each 20 ms window's RMS to
decode the call-id preamble (`signature`), then detects speech as server VAD does.
"""

from __future__ import annotations

import sys

from bridge.bench.signature import PREAMBLE_FRAMES, PreambleDecoder
from bridge.sim.vad import WINDOW_MS, EnergyVad, VadTransition

__all__ = ["PreambleVad", "caller_side_bytes"]


def caller_side_bytes(nbytes: int, *, pcmu: bool) -> float:
    """Appended audio as the caller's mu-law bytes (PCM16 at 24 kHz is six times larger)."""
    return float(nbytes) if pcmu else nbytes / 6.0


class PreambleVad(EnergyVad):
    """`EnergyVad` that listens only after the call-id preamble; `call_id` is set once read."""

    __slots__ = ("_vad_from", "call_id", "decoder")

    def __init__(self) -> None:
        super().__init__()  # -40 dBFS, as the Realtime simulator's default
        self.decoder = PreambleDecoder()
        self.call_id: int | None = None
        self._vad_from: int | None = None  # first window after the preamble

    def ignore(self) -> None:
        """Stop listening for good: a session not tied to a call holds no conversation."""
        self.call_id = None
        self._vad_from = sys.maxsize  # a window never reached

    def feed(
        self, pcm: bytes, rate: int, silence_duration_ms: int, *, detect: bool = True
    ) -> list[VadTransition]:
        out: list[VadTransition] = []
        for rms in self.windows(pcm, rate):
            window = self.timeline_ms // WINDOW_MS
            if self._vad_from is None:
                self.skip()
                call_id = self.decoder.feed(rms)
                if call_id is not None:
                    assert self.decoder.sync is not None
                    self._vad_from = self.decoder.sync + PREAMBLE_FRAMES + 1
                    self.call_id = call_id
            elif window < self._vad_from or not detect:
                self.skip()
            else:
                transition = self.step(rms, silence_duration_ms)
                if transition is not None:
                    out.append(transition)
        return out
