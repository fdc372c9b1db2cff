"""What the capacity benchmark measures, as pure state machines over (time, bytes) timelines.

Sans-I/O, so the pairing rules are tested on synthetic timelines:
- `InputPairing`, caller -> model: every 20 ms caller frame is paired with the moment the model
  side has received the audio up to that frame's end (positions on the audio timeline, so a bridge
  that merged or split frames would still pair correctly).
- `OutputPairing`, model -> caller: every delta is paired with the moment the caller has received
  the reply's audio up to the last whole frame that delta completes.
Twilio's playback buffer at the caller is `bridge.sim.playback.PlaybackBuffer` (in its lean mode).
- `summary`, `find_knee`: percentiles and the highest level that meets the latency limits.
"""

from __future__ import annotations

import array
import collections
import math
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from bridge.audio import FRAME_BYTES

__all__ = [
    "InputPairing",
    "OutputPairing",
    "Samples",
    "find_knee",
    "quantiles",
    "summary",
]


class Samples:
    """A growing series of floats (milliseconds, usually); cheap to append."""

    __slots__ = ("values",)

    def __init__(self, values: Iterable[float] = ()) -> None:
        self.values = array.array("d", values)

    def add(self, value: float) -> None:
        self.values.append(value)

    def __len__(self) -> int:
        return len(self.values)


def summary(values: Sequence[float] | array.array[float]) -> dict[str, float | int | None]:
    """count, p50, p99, max and mean; the statistics are None when there are no values."""
    if len(values) == 0:
        return {"count": 0, "p50": None, "p99": None, "max": None, "mean": None}
    x = np.asarray(values, dtype=np.float64)
    p50, p99 = np.percentile(x, [50.0, 99.0])
    return {
        "count": int(x.size),
        "p50": round(float(p50), 3),
        "p99": round(float(p99), 3),
        "max": round(float(np.max(x)), 3),
        "mean": round(float(x.mean()), 3),
    }


def quantiles(values: Sequence[float] | array.array[float], points: int = 101) -> list[float]:
    """`points` evenly spaced quantiles from 0 to 1 (a compact CDF for the chart)."""
    if len(values) == 0:
        return []
    q = np.linspace(0.0, 100.0, points)
    return [round(float(v), 3) for v in np.percentile(np.asarray(values, dtype=np.float64), q)]


class InputPairing:
    """Caller -> model latency per caller frame.

    The caller reports each frame it sends (`sent`); the model side reports each chunk it
    receives as caller-side bytes (`received`: mu-law bytes, or PCM bytes / 6). `offset` is how
    many frames the model's timeline runs ahead of the caller's (frames the bridge dropped make it
    negative; zero when every frame arrives).
    """

    __slots__ = ("_done", "_received", "offset", "sent_at")

    def __init__(self) -> None:
        self.sent_at = array.array("d")
        self.offset = 0
        self._received = 0.0
        self._done = 0  # model-side frames completed so far

    def sent(self, now: float) -> None:
        self.sent_at.append(now)

    def received(self, caller_bytes: float, now: float, out: Samples | None) -> None:
        """Model-side audio arrived at `now`; adds a latency in ms to `out` per completed frame."""
        self._received += caller_bytes
        done = int(self._received // FRAME_BYTES)
        if out is not None:
            sent_at, n = self.sent_at, len(self.sent_at)
            for frame in range(self._done, done):
                k = frame - self.offset
                if 0 <= k < n:
                    out.add((now - sent_at[k]) * 1000.0)
        self._done = done

    @property
    def frames_received(self) -> int:
        return self._done


class OutputPairing:
    """Model -> caller latency per delta, within one reply at a time.

    A bridge can only forward whole 20 ms frames, so a delta is paired with the arrival of the
    reply's audio up to the last frame boundary it completes; a delta that completes none is not
    paired. `clear` and a new reply drop what is still unpaired: the bridge discards those deltas.
    """

    __slots__ = ("_got", "_pending", "_produced", "_target")

    def __init__(self) -> None:
        self._pending: collections.deque[tuple[int, float]] = collections.deque()
        self._produced = 0.0
        self._target = 0
        self._got = 0

    def new_reply(self) -> None:
        self._pending.clear()
        self._produced = 0.0
        self._target = 0
        self._got = 0

    def delta_sent(self, caller_bytes: float, now: float) -> None:
        self._produced += caller_bytes
        target = int(self._produced // FRAME_BYTES) * FRAME_BYTES
        if target > self._target:
            self._target = target
            self._pending.append((target, now))

    def media_received(self, nbytes: int, now: float, out: Samples | None) -> None:
        self._got += nbytes
        pending = self._pending
        while pending and pending[0][0] <= self._got:
            _, sent_at = pending.popleft()
            if out is not None:
                out.add((now - sent_at) * 1000.0)

    def clear(self) -> None:
        self._pending.clear()

    @property
    def unpaired(self) -> int:
        return len(self._pending)


def passes(level: dict[str, Any], limit_ms: float) -> bool:
    """A level meets the capacity criteria: no failed calls, p99 within `limit_ms` each way,
    and no underruns."""
    c2m = level["latency_ms"]["caller_to_model"]["p99"]
    m2c = level["latency_ms"]["model_to_caller"]["p99"]
    return (
        level["calls"]["failed"] == 0
        and level["calls"]["held"] > 0
        and c2m is not None
        and m2c is not None
        and c2m <= limit_ms
        and m2c <= limit_ms
        and level["underruns"]["count"] == 0
    )


def find_knee(levels: Sequence[dict[str, Any]], limit_ms: float = 20.0) -> dict[str, Any] | None:
    """The level holding the most calls that passes (`passes`); None if none does."""
    best: dict[str, Any] | None = None
    for level in levels:
        if passes(level, limit_ms) and (
            best is None or level["calls"]["held"] > best["calls"]["held"]
        ):
            best = level
    return best


def cpu_per_call_minute(cpu_seconds: float, call_seconds: float) -> float | None:
    """CPU seconds spent per minute of live call; None without any call time."""
    if call_seconds <= 0 or math.isnan(cpu_seconds):
        return None
    return cpu_seconds / (call_seconds / 60.0)
