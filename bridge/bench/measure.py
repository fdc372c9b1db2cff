"""What the capacity benchmark measures, as pure state machines over (time, bytes) timelines.

Sans-I/O, so the pairing rules are tested on synthetic timelines:
- `InputPairing`, caller -> model: every 20 ms caller frame is paired with the moment the model
  side has received the audio up to that frame's end (positions on the audio timeline, so a bridge
  that merged or split frames would still pair correctly).
- `OutputPairing`, model -> caller: every delta is paired with the moment the caller has received
  the reply's audio up to the last whole frame that delta completes.
- `Playback`, Twilio's buffer at the caller: drained one frame per tick, marks echoed as played;
  an underrun is a gap heard inside a reply (audio of the same reply resumed after it).
- `summary`, `find_knee`: percentiles and the highest level that meets the latency limits.
"""

from __future__ import annotations

import array
import collections
import dataclasses
import math
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

FRAME_BYTES = 160  # 20 ms of 8 kHz mu-law
BYTES_PER_MS = 8

__all__ = [
    "FRAME_BYTES",
    "InputPairing",
    "OutputPairing",
    "Playback",
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


@dataclasses.dataclass(slots=True)
class _Segment:
    reply: int
    nbytes: int


class Playback:
    """The caller's playback buffer (as Twilio plays it), with marks and underrun detection.

    Audio arrives tagged with the reply it belongs to; `tick` plays one frame. When a tick
    finds less than a frame while a reply is playing, the caller hears a gap; if more audio of
    that same reply then arrives, the gap was an underrun (not the end of the reply).
    """

    def __init__(self, frame_bytes: int = FRAME_BYTES) -> None:
        self.frame_bytes = frame_bytes
        self.buffered = 0
        self.played: dict[int, int] = {}  # reply -> bytes played
        self.underruns = 0
        self.gaps_ms: list[float] = []
        self._segments: collections.deque[_Segment] = collections.deque()
        self._marks: collections.deque[tuple[int, str]] = collections.deque()
        self._appended = 0
        self._consumed = 0
        self._dry_reply: int | None = None  # reply whose playback ran dry
        self._gap_ms = 0.0
        self._tick_at = 0.0  # the last tick: when, which reply, how many bytes it started
        self._tick_reply: int | None = None
        self._tick_bytes = 0

    def feed(self, nbytes: int, reply: int) -> None:
        if nbytes <= 0:
            return
        if self._dry_reply is not None:
            if self._dry_reply == reply and self._gap_ms > 0.0:
                self.underruns += 1
                self.gaps_ms.append(self._gap_ms)
            self._dry_reply = None
            self._gap_ms = 0.0
        if self._segments and self._segments[-1].reply == reply:
            self._segments[-1].nbytes += nbytes
        else:
            self._segments.append(_Segment(reply, nbytes))
        self.buffered += nbytes
        self._appended += nbytes

    def mark(self, name: str) -> list[str]:
        """A mark after the audio sent so far; returns the echoes due at once."""
        self._marks.append((self._appended, name))
        return self._reached() if self._appended == self._consumed else []

    def clear(self) -> list[str]:
        """Drop the buffered audio; every pending mark is echoed at once."""
        echoes = [name for _, name in self._marks]
        self._marks.clear()
        self._segments.clear()
        self._consumed = self._appended
        self.buffered = 0
        self._dry_reply = None
        self._gap_ms = 0.0
        self._tick_reply = None  # nothing is playing any more
        return echoes

    def heard(self, reply: int, now: float) -> float:
        """Bytes of `reply` the caller has heard by `now`: what was played, less the part of
        the frame started at the last tick that is still playing (a frame lasts 20 ms)."""
        played = float(self.played.get(reply, 0))
        if reply == self._tick_reply:
            elapsed = (now - self._tick_at) * 1000.0 * BYTES_PER_MS
            played -= max(0.0, self._tick_bytes - elapsed)
        return max(0.0, played)

    def tick(self, now: float = 0.0) -> tuple[int, list[str]]:
        """Play one frame's worth at `now`; returns (bytes played, mark echoes due)."""
        echoes = self._reached() if self._marks else []
        want = self.frame_bytes
        last: int | None = None
        while want and self._segments:
            head = self._segments[0]
            take = min(want, head.nbytes)
            head.nbytes -= take
            want -= take
            last = head.reply
            self.played[last] = self.played.get(last, 0) + take
            if head.nbytes == 0:
                self._segments.popleft()
        played = self.frame_bytes - want
        self.buffered -= played
        self._consumed += played
        self._tick_at, self._tick_reply, self._tick_bytes = now, last, played
        if last is not None and not self._segments:
            self._dry_reply = last  # ran dry: silence from here on is a gap in `last`
        if want and self._dry_reply is not None:
            self._gap_ms += want / BYTES_PER_MS
        return played, echoes

    def _reached(self) -> list[str]:
        echoes: list[str] = []
        while self._marks and self._marks[0][0] <= self._consumed:
            echoes.append(self._marks.popleft()[1])
        return echoes


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
