"""What the two ends of one simulated call share: pairings, the current reply, barge-in timing.

The caller and the model side of the generator live in one process and one event loop; once the
model side has decoded a session's preamble, both hold the same `CallProbe` and report to it.
`Metrics` collects the samples of the steady phase only (`recording`).
"""

from __future__ import annotations

import dataclasses

from bridge.bench.measure import InputPairing, OutputPairing, Samples
from bridge.sim.playback import BYTES_PER_MS

__all__ = ["CallProbe", "Metrics"]

CLEAR_WINDOW_S = 1.0  # a clear later than this after speech_started is not its answer


@dataclasses.dataclass(slots=True)
class Metrics:
    """Samples in milliseconds and event counts, taken while `recording` is on."""

    recording: bool = False
    caller_to_model: Samples = dataclasses.field(default_factory=Samples)
    model_to_caller: Samples = dataclasses.field(default_factory=Samples)
    clear: Samples = dataclasses.field(default_factory=Samples)
    truncation_error: Samples = dataclasses.field(default_factory=Samples)
    gaps: Samples = dataclasses.field(default_factory=Samples)
    tick_lag: Samples = dataclasses.field(default_factory=Samples)  # the generator's own lateness
    delta_lag: Samples = dataclasses.field(default_factory=Samples)
    underruns: int = 0
    replies: int = 0
    missed_replies: int = 0
    barge_ins: int = 0  # the caller spoke while the reply was still playing
    clears: int = 0
    truncations: int = 0
    protocol_errors: int = 0  # messages from the bridge the caller could not read
    rejected_events: int = 0  # client events the model side refused (bad truncations, ...)

    def sink(self, samples: Samples) -> Samples | None:
        return samples if self.recording else None


@dataclasses.dataclass(slots=True)
class _Reply:
    truncate_ms: int | None = None
    heard_ms: float | None = None  # on the item's clock, when the clear reached the caller
    recording: bool = False


class CallProbe:
    """One call's shared measurement state."""

    __slots__ = (
        "_replies",
        "call_id",
        "input",
        "lead_ms",
        "linked",
        "lost_at",
        "metrics",
        "output",
        "reply",
        "speech_started_at",
    )

    def __init__(self, call_id: int, metrics: Metrics, *, lead_ms: float) -> None:
        self.call_id = call_id
        self.metrics = metrics
        # The caller hears the item `lead_ms` late (the bridge's resampling filter delay), so
        # bytes played minus the lead is how far into the item the caller got.
        self.lead_ms = lead_ms
        self.input = InputPairing()
        self.output = OutputPairing()
        self.reply = 0  # the model side's current reply; 0 before the first
        self.linked = False
        # When the model side cut this call's session on purpose (the soak's `drop_every`): a
        # session the bridge opens instead hears no preamble, so it is not tied to the call.
        self.lost_at: float | None = None
        self.speech_started_at: float | None = None
        self._replies: dict[int, _Reply] = {}

    # ---- model side --------------------------------------------------------------------------

    def reply_started(self) -> int:
        self.reply += 1
        self.output.new_reply()
        self._replies.pop(self.reply - 8, None)
        self._replies[self.reply] = _Reply(recording=self.metrics.recording)
        if self.metrics.recording:
            self.metrics.replies += 1
        return self.reply

    def speech_started(self, now: float) -> None:
        self.speech_started_at = now

    def truncated(self, reply: int, audio_end_ms: int) -> None:
        record = self._replies.get(reply)
        if record is not None:
            record.truncate_ms = audio_end_ms
            self._score(record)

    # ---- caller side -------------------------------------------------------------------------

    def cleared(self, now: float, heard_bytes: float) -> None:
        """Twilio's buffer was cleared at `now`, after the caller heard `heard_bytes` of the
        current reply."""
        metrics = self.metrics
        started = self.speech_started_at
        if started is not None and now - started <= CLEAR_WINDOW_S:
            if metrics.recording:
                metrics.clear.add((now - started) * 1000.0)
            self.speech_started_at = None
        if metrics.recording:
            metrics.clears += 1
        self.output.clear()
        record = self._replies.get(self.reply)
        if record is not None and record.heard_ms is None:
            record.heard_ms = max(0.0, heard_bytes / BYTES_PER_MS - self.lead_ms)
            self._score(record)

    def _score(self, record: _Reply) -> None:
        if record.truncate_ms is None or record.heard_ms is None or not record.recording:
            return
        metrics = self.metrics
        if metrics.recording:
            metrics.truncations += 1
            metrics.truncation_error.add(record.truncate_ms - record.heard_ms)
