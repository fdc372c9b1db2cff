"""Sans-I/O core of a simulated Twilio caller: one call's Media Stream state and rules.

No sockets and no clock: the binding passes loop time in and carries the returned messages out.
Both callers are bindings over it: `bridge.sim.twilio_caller` (tasks and `websockets`, for tests
and the demo) and `bridge.bench.caller` (a Protocol on the generator's shared ticker). With
`observe` it keeps what tests assert on (clears, echoes), with `record` also the audio heard and
sent; without both it never copies audio or grows a list, so the benchmark's callers stay cheap.
"""

from __future__ import annotations

import base64
from collections.abc import Callable, Mapping

from bridge.sim.playback import FRAME_BYTES, RATE, SILENCE, MarkEcho, PlaybackBuffer
from bridge.sim.twilio_messages import StreamMessages

__all__ = ["FRAME_S", "MAX_BURST", "CallerCore", "Microphone", "frames_to_drop"]

FRAME_S = FRAME_BYTES / RATE
MAX_BURST = 10
"""Overdue frames sent back to back after a stall (200 ms, as TCP would deliver after a
hiccup); older ones are dropped, like audio lost on a congested path (Twilio 31930)."""

SILENCE_B64 = base64.b64encode(SILENCE).decode("ascii")


def frames_to_drop(started_at: float, now: float, ticks: int) -> int:
    """On an absolute 20 ms schedule from `started_at` (so no drift accumulates), with `ticks`
    run so far: how many overdue ticks must run with their microphone frame lost, not sent."""
    return max(0, int((now - started_at) / FRAME_S) - ticks - MAX_BURST)


class Microphone:
    """Queued µ-law audio for the caller to say; each frame is padded with a filler (silence or
    cycled comfort noise). A frame source for `CallerCore` (base64 text, as sent)."""

    def __init__(self, noise: bytes | None = None) -> None:
        self.queued = 0
        """Bytes ever queued by `say`."""
        self.sent = 0
        """Bytes of queued audio taken into frames so far."""
        self._pending = bytearray()
        self._noise = noise

    def say(self, ulaw: bytes) -> None:
        """Queue µ-law bytes; they go out in the next frames."""
        self._pending += ulaw
        self.queued += len(ulaw)

    @property
    def speaking(self) -> bool:
        """True while queued audio has not gone into a frame yet."""
        return bool(self._pending)

    def frame(self, tick: int) -> str:
        """The microphone frame of tick `tick`, as the base64 payload of a media message."""
        if not self._pending and self._noise is None:
            return SILENCE_B64
        data = bytes(self._pending[:FRAME_BYTES])
        del self._pending[:FRAME_BYTES]
        self.sent += len(data)
        if len(data) < FRAME_BYTES:
            data += self._filler(tick)[len(data) :]
        return base64.b64encode(data).decode("ascii")

    def _filler(self, tick: int) -> bytes:
        if self._noise is None:
            return SILENCE
        offset = (tick * FRAME_BYTES) % len(self._noise)
        return self._noise[offset : offset + FRAME_BYTES]


class CallerCore:
    """One call as Twilio's media server runs it: what the caller sends, and its playback buffer.

    `tick` is the 20 ms clock: it plays one frame of bridge audio, then returns the media frame
    from `source(tick)` followed by the echoes of the marks that frame reached, sequence numbers
    in that order. `mark` and `clear` return the echoes due at once.
    """

    def __init__(
        self,
        stream_sid: str,
        call_sid: str,
        source: Callable[[int], str],
        *,
        account_sid: str = "AC" + "0" * 32,
        observe: bool = False,
        record: bool = False,
    ) -> None:
        self.messages = StreamMessages(stream_sid, account_sid, call_sid)
        self.playback = PlaybackBuffer()
        self.source = source
        self.observe = observe or record
        self.record = record
        self.ticks = 0
        self.frames_sent = 0
        self.frames_played = 0
        """Ticks that played at least one byte of bridge audio."""
        self.frames_dropped = 0
        """Microphone frames lost instead of sent (see `frames_to_drop`)."""
        self.last_audio_end = 0.0
        """Loop time at which the last frame of bridge audio played finishes."""
        # Kept only with `record`:
        self.heard = bytearray()
        """µ-law the caller heard, one frame per tick (silence where nothing played)."""
        self.sent = bytearray()
        """µ-law the microphone sent, one frame per tick (silence where a frame was dropped)."""
        # Kept only with `observe`:
        self.clears: list[float] = []
        self.marks_echoed: list[tuple[float, str, bool]] = []
        self.played_per_mark: dict[str, int] = {}
        self.media_after_clear: list[int] = []
        """Bytes of media received after each clear, until the next mark."""
        self._after_clear = False

    def opening(self, custom_parameters: Mapping[str, str]) -> list[str]:
        """`connected` and `start`: the first two messages of every stream."""
        return [self.messages.connected(), self.messages.start(custom_parameters)]

    def stop(self) -> str:
        """The `stop` message of a hangup."""
        return self.messages.stop()

    # ---- the 20 ms tick ------------------------------------------------------------------

    def tick(self, now: float, *, send: bool = True) -> list[str]:
        """Run tick number `ticks` at `now`: play a frame; the media frame (unless `send` is
        False: lost to a stall) then the mark echoes due, as messages to send in order."""
        k = self.ticks
        self.ticks = k + 1
        # Play first: the source may decide what to say from what has just been heard.
        if self.record:
            played, echoes = self.playback.play(now)
            n = len(played)
            self.heard += played + SILENCE[n:]
            payload = self.source(k)
            self.sent += base64.b64decode(payload) if send else SILENCE
        else:
            n, echoes = self.playback.tick(now)
            payload = self.source(k)
        if n:
            self.frames_played += 1
            self.last_audio_end = now + n / RATE
        out: list[str] = []
        if send:
            out.append(self.messages.media_payload(k + 1, k * 20, payload))
            self.frames_sent += 1
        else:
            self.frames_dropped += 1
        if echoes:
            out += [self._echo(echo, now) for echo in echoes]
        return out

    # ---- what the bridge sends -----------------------------------------------------------

    def media(self, audio: bytes, now: float) -> None:
        """Received media: appended to the playback buffer (the bytes only with `record`)."""
        if self.record:
            self.playback.feed(audio, now)
        else:
            self.playback.feed_size(len(audio), None, now)
        if self._after_clear:
            self.media_after_clear[-1] += len(audio)

    def media_size(self, nbytes: int, reply: int | None, now: float) -> None:
        """Received media by size only, tagged with the reply it belongs to (lean callers;
        not with `record`, which plays the bytes fed by `media`)."""
        self.playback.feed_size(nbytes, reply, now)

    def mark(self, name: str, now: float) -> list[str]:
        """A mark from the bridge: placed after the buffered audio; echoes due at once."""
        self._after_clear = False
        echoes = self.playback.mark(name)
        return [self._echo(echo, now) for echo in echoes] if echoes else []

    def clear(self, now: float) -> list[str]:
        """`clear`: buffered audio is dropped and every pending mark is echoed at once."""
        if self.observe:
            self.clears.append(now)
            self.media_after_clear.append(0)
            self._after_clear = True
        return [self._echo(echo, now) for echo in self.playback.clear()]

    def _echo(self, echo: MarkEcho, now: float) -> str:
        if self.observe:
            self.marks_echoed.append((now, echo.name, echo.cleared))
            self.played_per_mark[echo.name] = echo.played
        return self.messages.mark(echo.name)
