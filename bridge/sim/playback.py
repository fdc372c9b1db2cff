"""Sans-I/O model of Twilio's outbound playback buffer: media, marks and clear, drained in
real time. No sockets and no clock of its own: the caller passes the loop time in.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

RATE = 8000
"""µ-law bytes per second (one byte per sample)."""
FRAME_BYTES = 160
"""Bytes played per 20 ms tick."""


@dataclass(frozen=True, slots=True)
class MarkEcho:
    """A mark that is due to be echoed back to the bridge."""

    name: str
    cleared: bool
    """True when echoed because a `clear` dropped the audio ahead of it."""
    played: int
    """Bytes actually played between the previous mark (or clear) and this one."""


class PlaybackBuffer:
    """Twilio's playback buffer: bytes and marks in arrival order, drained one frame per tick.

    Positions are absolute byte counts since the stream began. Invariants:
    ``consumed <= appended``; ``len(buffer) == appended - consumed``; pending marks are in
    non-decreasing position order and every one is ``<= appended``; ``boundary`` is where the
    audio counted for the next mark begins (the last echoed mark, or the end of the last clear).
    """

    def __init__(self, *, frame_bytes: int = FRAME_BYTES, underrun_window: float = 1.0) -> None:
        self.frame_bytes = frame_bytes
        self.underrun_window = underrun_window
        self._buffer = bytearray()
        self._marks: deque[tuple[int, str]] = deque()
        self._appended = 0
        self._consumed = 0
        self._boundary = 0
        self.played_total = 0
        """Bytes of bridge audio played so far (clear-dropped bytes excluded)."""
        self.dropped_total = 0
        """Bytes dropped by `clear` before they were played."""
        self.underruns = 0
        self.gaps_ms: list[float] = []
        # Underrun detection: when the buffer ran dry after playing audio, and how many
        # whole ticks have found it empty since then.
        self._dry_at: float | None = None
        self._empty_ticks = 0

    @property
    def buffered(self) -> int:
        """Bytes waiting to be played."""
        return len(self._buffer)

    @property
    def pending_marks(self) -> list[str]:
        """Names of marks not yet echoed, in order."""
        return [name for _, name in self._marks]

    def feed(self, data: bytes, now: float) -> None:
        """Append received media at the end of the buffer."""
        if not data:
            return
        if self._dry_at is not None:
            gap = now - self._dry_at
            # Audio came back soon after a gap the caller actually heard: an underrun,
            # not the pause between two replies.
            if self._empty_ticks >= 1 and gap <= self.underrun_window:
                self.underruns += 1
                self.gaps_ms.append(max(gap, 0.0) * 1000.0)
            self._dry_at = None
        self._buffer += data
        self._appended += len(data)

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
        self.dropped_total += len(self._buffer)
        self._buffer.clear()
        self._consumed = self._appended
        self._boundary = self._appended
        self._dry_at = None
        return echoes

    def play(self, now: float) -> tuple[bytes, list[MarkEcho]]:
        """Run one tick at loop time `now`: returns (bytes played, possibly short; echoes due).

        A mark is echoed on the first tick after the audio ahead of it has finished playing,
        so an echo never claims more than the caller heard.
        """
        echoes = self._reached()
        n = min(self.frame_bytes, len(self._buffer))
        if n == 0:
            if self._dry_at is not None:
                self._empty_ticks += 1
            return b"", echoes
        data = bytes(self._buffer[:n])
        # CPython deletes from the front of a bytearray in O(1) (it moves its start offset).
        del self._buffer[:n]
        self._consumed += n
        self.played_total += n
        if not self._buffer:
            self._dry_at = now + n / RATE
            self._empty_ticks = 0
        return data, echoes

    def _reached(self) -> list[MarkEcho]:
        echoes: list[MarkEcho] = []
        while self._marks and self._marks[0][0] <= self._consumed:
            position, name = self._marks.popleft()
            echoes.append(MarkEcho(name, cleared=False, played=position - self._boundary))
            self._boundary = position
        return echoes
