"""The simulated model's ear: an energy VAD over 20 ms windows of PCM16, as server VAD reports it.

Sans-I/O and cheap per call (one audioop C call per window). One implementation for the Realtime
simulator (`feed`) and the benchmark's lean model side, which reads each window's RMS itself
first (to decode its call-id preamble) and then hands the windows on (`windows`, `step`, `skip`).
"""

from __future__ import annotations

import audioop
import dataclasses

from bridge.audio import FRAME_MS

__all__ = ["WINDOW_MS", "EnergyVad", "VadTransition"]

WINDOW_MS = FRAME_MS


@dataclasses.dataclass(frozen=True, slots=True)
class VadTransition:
    """Speech started (`started=True`) or stopped, at `ms` on the session's input timeline."""

    started: bool
    ms: int


class EnergyVad:
    """Energy VAD over 20 ms windows; timeline = ms of audio appended in the whole session.

    Reports onsets (window start) and ends (end of the last voiced window, reported once
    `silence_duration_ms` of silence has followed it).
    """

    __slots__ = (
        "_pending",
        "_pending_rate",
        "_voice_end_ms",
        "in_speech",
        "threshold_dbfs",
        "threshold_rms",
        "timeline_ms",
    )

    def __init__(self, threshold_dbfs: float = -40.0) -> None:
        self.threshold_dbfs = threshold_dbfs
        # As an RMS of PCM16 samples, so each window costs one C call and a compare.
        self.threshold_rms = 32768.0 * 10.0 ** (threshold_dbfs / 20.0)
        self.in_speech = False
        self.timeline_ms = 0  # end of the last whole window processed
        self._voice_end_ms = 0
        self._pending = b""
        self._pending_rate = 0

    def reset(self) -> None:
        """Forget an ongoing utterance (buffer cleared or committed by hand)."""
        self.in_speech = False

    def feed(
        self, pcm: bytes, rate: int, silence_duration_ms: int, *, detect: bool = True
    ) -> list[VadTransition]:
        """Advance the timeline by `pcm`; with `detect` false only time passes."""
        out: list[VadTransition] = []
        for rms in self.windows(pcm, rate):
            if not detect:
                self.skip()
                continue
            transition = self.step(rms, silence_duration_ms)
            if transition is not None:
                out.append(transition)
        return out

    def windows(self, pcm: bytes, rate: int) -> list[int]:
        """The RMS of each whole 20 ms window `pcm` completes (a partial one waits for the next
        call); the timeline does not move until each is passed to `step` or `skip`."""
        if rate != self._pending_rate:
            self._pending = b""  # format changed mid-session: drop the partial window
            self._pending_rate = rate
        data = self._pending + pcm if self._pending else pcm
        window = rate * WINDOW_MS // 1000 * 2
        whole = len(data) - len(data) % window
        self._pending = data[whole:]
        rms = audioop.rms
        return [rms(data[start : start + window], 2) for start in range(0, whole, window)]

    def step(self, rms: float, silence_duration_ms: int) -> VadTransition | None:
        """The next window, of RMS `rms`: a transition if speech starts or has stopped."""
        t = self.timeline_ms
        self.timeline_ms = end = t + WINDOW_MS
        if rms >= self.threshold_rms:
            self._voice_end_ms = end
            if not self.in_speech:
                self.in_speech = True
                return VadTransition(True, t)
        elif self.in_speech and end - self._voice_end_ms >= silence_duration_ms:
            self.in_speech = False
            return VadTransition(False, self._voice_end_ms)
        return None

    def skip(self) -> None:
        """The next window passes without detection (turn detection off, or not listening yet)."""
        self.timeline_ms += WINDOW_MS
        self.in_speech = False
