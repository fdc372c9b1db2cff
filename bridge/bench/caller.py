"""Lean simulated Twilio callers: one asyncio Protocol per call, driven by a shared 20 ms ticker.

The generic `bridge.sim.twilio_caller` runs two tasks, a lock and a `websockets` connection per
call; hundreds of those would measure the generator instead of the bridge. Here a call is a
callback object over the same Sans-I/O core (`bridge.sim.caller_core`) in its lean mode: `Ticker`
calls `tick()` once per 20 ms at the call's own phase (calls are spread over the period, as
independent phone calls are), and each tick's frame and mark echoes go out in one socket write.

The script: silence, the call-id preamble, then turns: a speech-like burst, wait for the reply,
listen to it, pause, and again; a set share of replies is talked over (barge-in).
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import random
import time
import typing
from collections.abc import Mapping

import orjson

from bridge.bench import wire
from bridge.bench.probe import CallProbe, Metrics
from bridge.bench.signature import PREAMBLE_AT, PREAMBLE_FRAMES, preamble_frames
from bridge.fastws.frames import OP_CLOSE, OP_PING, OP_PONG, OP_TEXT, ZERO_KEY, close_payload, frame
from bridge.sim.caller_core import SILENCE_B64, CallerCore
from bridge.sim.playback import RATE, SILENCE

__all__ = ["Caller", "Script", "Ticker"]

PERIOD_S = 0.02
_SPEAK_AFTER = PREAMBLE_AT + PREAMBLE_FRAMES + 10


@dataclasses.dataclass(frozen=True, slots=True)
class Script:
    """The shape of each simulated conversation (seconds; ranges are drawn per turn)."""

    barge_in_share: float = 0.3
    utterance_s: tuple[float, float] = (0.8, 1.6)
    pause_s: tuple[float, float] = (0.3, 0.8)
    barge_after_s: tuple[float, float] = (0.4, 1.2)
    reply_timeout_s: float = 6.0
    end_of_reply_s: float = 0.3  # playback quiet this long: the reply is over


class Ticker:
    """Calls `tick(now)` on every registered call once per 20 ms, at `slots` spread phases;
    records its own lateness (the generator's, not the bridge's) while metrics are recording."""

    def __init__(self, metrics: Metrics, slots: int = 10) -> None:
        self.metrics = metrics
        self._slots: list[list[Caller]] = [[] for _ in range(slots)]
        self._next_slot = 0
        self._step = PERIOD_S / slots
        self._handle: asyncio.TimerHandle | None = None
        self._t0 = 0.0
        self._i = 0

    def add(self, caller: Caller) -> None:
        self._slots[self._next_slot].append(caller)
        self._next_slot = (self._next_slot + 1) % len(self._slots)

    def discard(self, caller: Caller) -> None:
        for slot in self._slots:
            if caller in slot:
                slot.remove(caller)

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._t0 = loop.time() + self._step
        self._i = 0
        self._handle = loop.call_at(self._t0, self._fire)

    def stop(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def _fire(self) -> None:
        loop = asyncio.get_running_loop()
        now = time.monotonic()
        if self.metrics.recording:
            self.metrics.tick_lag.add((now - self._t0 - self._i * self._step) * 1000.0)
        for caller in self._slots[self._i % len(self._slots)]:
            caller.tick(now)
        self._i += 1
        self._handle = loop.call_at(self._t0 + self._i * self._step, self._fire)


class Caller(asyncio.Protocol):
    """One call on the bridge's Media Stream socket; `failure` says why it did not hold."""

    def __init__(
        self,
        probe: CallProbe,
        ticker: Ticker,
        *,
        host: str,
        target: str,
        custom_parameters: Mapping[str, str],
        call_sid: str,
        stream_sid: str,
        script: Script,
        utterance: list[str],
    ) -> None:
        loop = asyncio.get_running_loop()
        self.probe = probe
        self.metrics = probe.metrics
        self.failure: str | None = None
        self.opened: asyncio.Future[None] = loop.create_future()
        self.closed: asyncio.Future[None] = loop.create_future()
        self._ticker = ticker
        self._script = script
        self._utterance = utterance
        self._rng = random.Random(probe.call_id)
        self._request, self._accept = wire.client_request(host, target, {})
        self._params = dict(custom_parameters)
        self.core = CallerCore(stream_sid, call_sid, self._payload)
        self.playback = self.core.playback
        self._stream_sid = stream_sid
        self._preamble = [
            SILENCE_B64 if f == SILENCE else _b64(f) for f in preamble_frames(probe.call_id)
        ]
        self._transport: asyncio.Transport | None = None
        self._head = b""
        self._reader: wire.FrameReader | None = None
        self._hanging_up = False
        self._open = False
        # script state
        self._state = "idle"
        self._speak_at = _SPEAK_AFTER
        self._left = 0
        self._pos = 0
        self._since = 0
        self._after_reply = 0
        self._barge_at: int | None = None
        self._quiet = 0

    # ---- socket ------------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self._transport = typing.cast(asyncio.Transport, transport)
        self._transport.write(self._request)

    def data_received(self, data: bytes) -> None:
        reader = self._reader
        if reader is None:
            self._head += data
            end = self._head.find(b"\r\n\r\n")
            if end < 0:
                if len(self._head) > wire.MAX_HEAD:
                    self._fail("oversized handshake response")
                return
            head, rest = self._head[:end], self._head[end + 4 :]
            self._head = b""
            start, headers = wire.parse_head(head)
            if " 101 " not in f"{start} " or headers.get("sec-websocket-accept") != self._accept:
                self._fail(f"handshake refused: {start[:80]}")
                return
            self._reader = reader = wire.FrameReader()
            self._open = True
            for message in self.core.opening(self._params):
                self._send_text(message)
            self._ticker.add(self)
            if not self.opened.done():
                self.opened.set_result(None)
            if not rest:
                return
            data = rest
        for opcode, payload in reader.feed(data):
            if opcode == OP_TEXT:
                self._on_text(payload)
            elif opcode == OP_PING:
                self._write(frame(OP_PONG, payload, ZERO_KEY))
            elif opcode == OP_CLOSE:
                self._on_close(payload)

    def connection_lost(self, exc: Exception | None) -> None:
        self._open = False
        self._ticker.discard(self)
        if not self._hanging_up and self.failure is None:
            self.failure = "connection lost"
        if not self.opened.done():
            self.opened.set_result(None)
        if not self.closed.done():
            self.closed.set_result(None)

    def hangup(self) -> None:
        """Twilio's `stop`, then a normal close; `closed` resolves when the socket is gone."""
        self._ticker.discard(self)
        if self._hanging_up:
            return
        self._hanging_up = True
        if self._open and self._transport is not None:
            self._send_text(self.core.stop())
            self._write(frame(OP_CLOSE, close_payload(1000), ZERO_KEY))

    def abort(self) -> None:
        if self._transport is not None:
            self._transport.abort()

    def _fail(self, reason: str) -> None:
        if self.failure is None:
            self.failure = reason
        if self._transport is not None:
            self._transport.close()

    def _on_close(self, payload: bytes) -> None:
        if not self._hanging_up:
            code = int.from_bytes(payload[:2], "big") if len(payload) >= 2 else 1005
            self.failure = f"closed by the bridge ({code} {payload[2:].decode(errors='replace')})"
            self._hanging_up = True
            self._write(frame(OP_CLOSE, payload[:2], ZERO_KEY))
        self._ticker.discard(self)
        if self._transport is not None:
            self._transport.close()

    def _write(self, data: bytes) -> None:
        if self._transport is not None and not self._transport.is_closing():
            self._transport.write(data)

    def _send_text(self, text: str) -> None:
        self._write(frame(OP_TEXT, text.encode(), ZERO_KEY))

    # ---- what the bridge sends ---------------------------------------------------------------

    def _on_text(self, payload: bytes) -> None:
        try:
            message = orjson.loads(payload)
            event = message["event"]
            if message.get("streamSid") != self._stream_sid:
                raise ValueError("wrong streamSid")
        except (ValueError, KeyError, TypeError):
            self.metrics.protocol_errors += 1
            return
        now = time.monotonic()
        probe, playback, metrics = self.probe, self.playback, self.metrics
        if event == "media":
            encoded = message["media"]["payload"]
            n = len(encoded) * 3 // 4 - encoded.endswith("=") - encoded.endswith("==")
            before = playback.underruns
            self.core.media_size(n, probe.reply, now)
            if playback.underruns != before and metrics.recording:
                metrics.underruns += 1
                metrics.gaps.add(playback.gaps_ms[-1])
            probe.output.media_received(n, now, metrics.sink(metrics.model_to_caller))
        elif event == "mark":
            for text in self.core.mark(message["mark"]["name"], now):
                self._send_text(text)
        elif event == "clear":
            probe.cleared(now, playback.heard(probe.reply, now))
            for text in self.core.clear(now):
                self._send_text(text)
        else:
            metrics.protocol_errors += 1

    # ---- the 20 ms tick ----------------------------------------------------------------------

    @property
    def frames_sent(self) -> int:
        return self.core.frames_sent

    def tick(self, now: float) -> None:
        if not self._open or self._hanging_up:
            return
        texts = self.core.tick(now)
        self.probe.input.sent(now)
        if len(texts) == 1:
            self._write(frame(OP_TEXT, texts[0].encode(), ZERO_KEY))
        else:
            self._write(b"".join(frame(OP_TEXT, text.encode(), ZERO_KEY) for text in texts))

    def _payload(self, k: int) -> str:
        if k < PREAMBLE_AT:
            return SILENCE_B64
        if k < PREAMBLE_AT + PREAMBLE_FRAMES:
            return self._preamble[k - PREAMBLE_AT]
        state = self._state
        if state == "idle":
            if k < self._speak_at:
                return SILENCE_B64
            self._start_utterance()
        elif state == "waiting":
            self._waiting(k)
        elif state == "listening":
            self._listening(k)
        if self._state != "speaking":
            return SILENCE_B64
        payload = self._utterance[self._pos % len(self._utterance)]
        self._pos += 1
        self._left -= 1
        if self._left <= 0:
            self._state = "waiting"
            self._since = k
            self._after_reply = self.probe.reply
        return payload

    def _start_utterance(self) -> None:
        script = self._script
        self._state = "speaking"
        self._left = round(self._rng.uniform(*script.utterance_s) / PERIOD_S)
        self._pos = self._rng.randrange(len(self._utterance))

    def _pause(self, k: int) -> None:
        self._state = "idle"
        self._speak_at = k + round(self._rng.uniform(*self._script.pause_s) / PERIOD_S)

    def _waiting(self, k: int) -> None:
        reply = self.probe.reply
        if reply > self._after_reply and self.playback.played.get(reply, 0) > 0:
            self._state = "listening"
            self._quiet = 0
            self._barge_at = None
            script = self._script
            if self._rng.random() < script.barge_in_share:
                self._barge_at = round(self._rng.uniform(*script.barge_after_s) * RATE)
        elif (k - self._since) * PERIOD_S > self._script.reply_timeout_s:
            if self.metrics.recording:
                self.metrics.missed_replies += 1
            self._pause(k)

    def _listening(self, k: int) -> None:
        playback = self.playback
        played = playback.played.get(self.probe.reply, 0)
        if self._barge_at is not None and played >= self._barge_at and playback.buffered:
            if self.metrics.recording:
                self.metrics.barge_ins += 1
            self._start_utterance()
        elif playback.buffered == 0:
            self._quiet += 1
            if self._quiet * PERIOD_S >= self._script.end_of_reply_s:
                self._pause(k)
        else:
            self._quiet = 0


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")
