"""Sans-I/O model of Twilio's outbound playback buffer: media, marks and clear, drained one 20 ms
frame per tick. No sockets and no clock of its own: the caller passes the loop time in.

One model for every simulated caller, in two modes: the test/demo caller feeds the bytes
(`feed`/`play`) so it can record what was heard; the benchmark's lean callers feed sizes tagged
with the reply they belong to (`feed_size`/`tick`) and never copy audio.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import NamedTuple

from bridge.audio import FRAME_BYTES, ULAW_SILENCE

__all__ = ["BYTES_PER_MS", "FRAME_BYTES", "RATE", "SILENCE", "MarkEcho", "PlaybackBuffer"]

RATE = 8000
"""µ-law bytes per second (one byte per sample)."""
BYTES_PER_MS = RATE // 1000
SILENCE = bytes((ULAW_SILENCE,)) * FRAME_BYTES
"""One frame of µ-law silence (0xFF decodes to zero)."""


@dataclass(slots=True)
class _Segment:
    reply: int | None
    nbytes: int


class MarkEcho(NamedTuple):
    """A mark that is due to be echoed back to the bridge (a tuple: built on a hot path)."""

    name: str
    cleared: bool
    """True when echoed because a `clear` dropped the audio ahead of it."""
    played: int
    """Bytes actually played between the previous mark (or clear) and this one."""


# Echoes are made on the benchmark's hot path: `tuple.__new__` costs half of `MarkEcho(...)`.
_new_echo = tuple.__new__


class PlaybackBuffer:
    """Twilio's playback buffer: audio and marks in arrival order, drained one frame per tick.

    Positions are absolute byte counts since the stream began. Invariants:
    ``consumed <= appended``; ``buffered == appended - consumed``; pending marks are in
    non-decreasing position order and every one is ``<= appended``; ``boundary`` is where the
    audio counted for the next mark begins (the last echoed mark, or the end of the last clear).

    Underruns are gaps heard inside a reply. Audio tagged with its reply (`feed_size`) is an
    underrun when the reply that ran dry resumes after silence was played (the gap: the silence
    the ticks played). Untagged audio (what a real caller gets) is one when audio resumes within
    `underrun_window` seconds after at least one silent tick (the gap: end of audio to resume).
    """

    def __init__(self, *, frame_bytes: int = FRAME_BYTES, underrun_window: float = 1.0) -> None:
        self.frame_bytes = frame_bytes
        self.underrun_window = underrun_window
        self.buffered = 0
        """Bytes waiting to be played."""
        self.played: dict[int | None, int] = {}
        """Bytes played per reply tag (None for untagged audio)."""
        self.played_total = 0
        """Bytes of bridge audio played so far (clear-dropped bytes excluded)."""
        self.dropped_total = 0
        """Bytes dropped by `clear` before they were played."""
        self.underruns = 0
        self.gaps_ms: list[float] = []
        self._audio = bytearray()  # the bytes themselves, in full mode only
        self._segments: deque[_Segment] = deque()  # audio per reply, in arrival order
        self._marks: deque[tuple[int, str]] = deque()
        self._appended = 0
        self._consumed = 0
        self._boundary = 0
        # Since the buffer last ran dry after playing: the tick that emptied it, which reply it
        # played, the part of that frame left silent, and the wholly silent ticks since.
        self._dry_at: float | None = None
        self._dry_reply: int | None = None
        self._dry_short = 0
        self._empty_ticks = 0
        # The last tick: when, which reply it played, how many bytes (for `heard`).
        self._tick_at = 0.0
        self._tick_reply: int | None = None
        self._tick_bytes = 0

    @property
    def pending_marks(self) -> list[str]:
        """Names of marks not yet echoed, in order."""
        return [name for _, name in self._marks]

    # ---- full mode: the bytes themselves -------------------------------------------------

    def feed(self, data: bytes, now: float) -> None:
        """Append received media at the end of the buffer (untagged)."""
        if data:
            self._audio += data
            self.feed_size(len(data), None, now)

    def play(self, now: float) -> tuple[bytes, list[MarkEcho]]:
        """Run one tick at loop time `now`: returns (bytes played, possibly short; echoes due)."""
        n, echoes = self.tick(now)
        if n == 0:
            return b"", echoes
        data = bytes(self._audio[:n])
        # CPython deletes from the front of a bytearray in O(1) (it moves its start offset).
        del self._audio[:n]
        return data, echoes

    # ---- lean mode: sizes only -----------------------------------------------------------

    def feed_size(self, nbytes: int, reply: int | None = None, now: float = 0.0) -> None:
        """Append `nbytes` of audio belonging to `reply` (None: unknown) at loop time `now`."""
        if nbytes <= 0:
            return
        if self._dry_at is not None:
            if reply is None or (
                reply == self._dry_reply and (self._dry_short or self._empty_ticks)
            ):
                self._gap(reply, now)
            self._dry_at = None
        segments = self._segments
        if segments and segments[-1].reply == reply:
            segments[-1].nbytes += nbytes
        else:
            segments.append(_Segment(reply, nbytes))
        self.buffered += nbytes
        self._appended += nbytes

    def tick(self, now: float = 0.0) -> tuple[int, list[MarkEcho]]:
        """Play one frame's worth at `now`: returns (bytes played, echoes due).

        A mark is echoed on the first tick after the audio ahead of it has finished playing,
        so an echo never claims more than the caller heard.
        """
        echoes = self._reached() if self._marks else []
        want = self.frame_bytes
        last: int | None = None
        segments, played = self._segments, self.played
        while want and segments:
            head = segments[0]
            last, size = head.reply, head.nbytes
            take = want if want < size else size
            want -= take
            played[last] = played.get(last, 0) + take
            if take == size:
                segments.popleft()
            else:
                head.nbytes = size - take
        n = self.frame_bytes - want
        self._tick_at, self._tick_reply, self._tick_bytes = now, last, n
        if n == 0:
            if self._dry_at is not None:
                self._empty_ticks += 1
            return 0, echoes
        self.buffered -= n
        self._consumed += n
        self.played_total += n
        if not segments:  # ran dry: silence from here on is a gap, if the audio resumes
            self._dry_at = now
            self._dry_reply = last
            self._dry_short = want
            self._empty_ticks = 0
        return n, echoes

    # ---- both modes ----------------------------------------------------------------------

    def mark(self, name: str) -> list[MarkEcho]:
        """Place a mark at the current end of the buffer; returns the echoes due at once."""
        self._marks.append((self._appended, name))
        if self._appended == self._consumed:
            # Nothing buffered ahead of it: Twilio echoes at once (after any earlier marks
            # that were reached but not echoed yet, to keep the order).
            return self._reached()
        return []

    def clear(self) -> list[MarkEcho]:
        """Drop all buffered audio; every pending mark is echoed at once, in order."""
        played_upto = self._consumed
        echoes: list[MarkEcho] = []
        for position, name in self._marks:
            played = max(0, min(position, played_upto) - self._boundary)
            echoes.append(MarkEcho(name, cleared=position > played_upto, played=played))
            self._boundary = max(self._boundary, position)
        self._marks.clear()
        self._segments.clear()
        self._audio.clear()
        self.dropped_total += self.buffered
        self.buffered = 0
        self._consumed = self._appended
        self._boundary = self._appended
        self._dry_at = None
        self._tick_reply = None  # nothing is playing any more
        return echoes

    def heard(self, reply: int | None, now: float) -> float:
        """Bytes of `reply` the caller has heard by `now`: what was played, less the part of
        the frame started at the last tick that is still playing (a frame lasts 20 ms)."""
        played = float(self.played.get(reply, 0))
        if reply == self._tick_reply:
            elapsed = (now - self._tick_at) * 1000.0 * BYTES_PER_MS
            played -= max(0.0, self._tick_bytes - elapsed)
        return max(0.0, played)

    def _gap(self, reply: int | None, now: float) -> None:
        """Audio resumed after the buffer ran dry and silence was heard: count an underrun if
        the gap was inside a reply (see the class docstring)."""
        assert self._dry_at is not None
        if reply is not None:  # the reply that ran dry goes on
            silent = self._dry_short + self._empty_ticks * self.frame_bytes
            self.underruns += 1
            self.gaps_ms.append(silent / BYTES_PER_MS)
            return
        gap = now - self._dry_at - (self.frame_bytes - self._dry_short) / RATE
        if self._empty_ticks >= 1 and gap <= self.underrun_window:
            self.underruns += 1
            self.gaps_ms.append(max(gap, 0.0) * 1000.0)

    def _reached(self) -> list[MarkEcho]:
        echoes: list[MarkEcho] = []
        while self._marks and self._marks[0][0] <= self._consumed:
            position, name = self._marks.popleft()
            echoes.append(_new_echo(MarkEcho, (name, False, position - self._boundary)))
            self._boundary = position
        return echoes
