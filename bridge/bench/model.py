"""Lean binding of the Realtime simulator for the generator: its session rules, without its server.

One asyncio Protocol per session, no tasks: frames are read in `data_received` with the
generator's own wire code, and reply deltas are paced with `call_at`. Every rule (server VAD,
replies, cancel, truncate, errors) is the simulator's `RealtimeSessionState` in its lean use
(appends decoded straight into `append_audio`, deltas pre-serialised, input not recorded), so the
benchmark and the tests hold the same conversation; its VAD is `PreambleVad`, which first ties
the session to its call. Replies repeat every few turns and are encoded once per format for all
sessions. Everything is reported to the call's `CallProbe`.

For the soak: `tool_every` makes every Nth answer of a session call a function tool as well
(`TOOL_NAME`), and `drop_every` aborts each connection after about that many seconds (0.5 to 1.5
times, so drops spread out), as a lost upstream would.
"""

from __future__ import annotations

import asyncio
import binascii
import random
import time
import typing
from collections.abc import Sequence
from typing import Any

import numpy as np
import orjson

from bridge.audio import CallerToModel
from bridge.bench import wire
from bridge.bench.inbound import PreambleVad, caller_side_bytes
from bridge.bench.probe import CallProbe, Metrics
from bridge.bench.signature import PREAMBLE_AT, speechlike
from bridge.fastws.frames import OP_CLOSE, OP_PING, OP_PONG, OP_TEXT, frame
from bridge.sim.realtime_config import SimConfig, SimToolCall
from bridge.sim.realtime_media import EncodedAudio, turn_audio
from bridge.sim.realtime_response import Event, ResponseStream
from bridge.sim.realtime_session import RealtimeSessionState

__all__ = ["ModelServer"]

REPLY_SECONDS = (2.0, 2.8, 3.6)
TRANSCRIPT = "Hello there."
TOOL_NAME = "lookup_order"
TOOL_CALL = SimToolCall(TOOL_NAME, {"order": "A-17"})
MAX_ANSWERS = 100_000  # tool calls are planned this far into a session (hours of answers)
# What a client may ask for that the service refuses without anything being wrong: races between
# the bridge and the model, not rejected events.
_BENIGN_ERRORS = frozenset(
    {"response_cancel_not_active", "conversation_already_has_active_response"}
)


def tool_calls(every: int) -> dict[int, Sequence[SimToolCall]]:
    """Every `every`-th answer of a session (the 1st, the Nth, ...: answer k with k % every ==
    0) calls `TOOL_NAME`; none for 0."""
    if every <= 0:
        return {}
    return {answer: (TOOL_CALL,) for answer in range(0, MAX_ANSWERS, every)}


def reply_samples(turn: int) -> np.ndarray:
    """Reply `turn` (cycled) as 24 kHz float audio: a speech-like burst of a set length."""
    index = turn % len(REPLY_SECONDS)
    return speechlike(REPLY_SECONDS[index], 24000, index, 0.3)


class ModelServer:
    """Serves `/v1/realtime` on a loopback port; `probes` maps call ids to calls (set by the
    load runner before each call starts)."""

    def __init__(
        self,
        *,
        chunk_ms: int = 100,
        speedup: float = 5.0,
        tool_every: int = 0,
        drop_every: float | None = None,
    ) -> None:
        self.config = SimConfig(
            reply_audio=reply_samples,
            reply_turns=len(REPLY_SECONDS),
            chunk_ms=chunk_ms,
            speedup=speedup,
            caller_transcripts=(TRANSCRIPT,),
            record_input=False,
            tool_calls=tool_calls(tool_every),
        )
        self.drop_every = drop_every
        self.drops = 0  # connections aborted by `drop_every`
        self._rng = random.Random(0)
        self.interval = chunk_ms / 1000.0 / speedup
        self.metrics = Metrics()
        self.probes: dict[int, CallProbe] = {}
        self.sessions = 0
        self.live: set[_Session] = set()  # sessions with an open connection
        self.unlinked: list[str] = []  # why sessions could not be tied to a call
        self.url = ""
        self._server: asyncio.Server | None = None

    @property
    def chunk_ms(self) -> int:
        return self.config.chunk_ms

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(lambda: _Session(self), host, port, backlog=1024)
        bound = self._server.sockets[0].getsockname()
        self.url = f"ws://{bound[0]}:{bound[1]}/v1/realtime"
        return self.url

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None

    def drop_after(self) -> float | None:
        """How long a new connection lives before the injected drop (None: no drops)."""
        if not self.drop_every:
            return None
        return self.drop_every * self._rng.uniform(0.5, 1.5)

    def reply(self, audio_format: dict[str, Any], turn: int) -> EncodedAudio:
        """Reply `turn` (cycled) encoded for `audio_format`, once per format, shared by all."""
        return turn_audio(reply_samples, turn % len(REPLY_SECONDS), audio_format, self.chunk_ms)


class _Session(asyncio.Protocol):
    def __init__(self, server: ModelServer) -> None:
        self.server = server
        self.probe: CallProbe | None = None
        self._transport: asyncio.Transport | None = None
        self._head = b""
        self._reader: wire.FrameReader | None = None
        self._vad = PreambleVad()
        self.state = RealtimeSessionState(server.config, vad=self._vad)
        self._pcmu = False
        self._caller_bytes = 0.0  # audio received so far, as caller-side mu-law bytes
        self._paced: ResponseStream | None = None
        self._handle: asyncio.Handle | None = None
        self._replies: dict[str, int] = {}  # assistant item id -> the probe's reply number
        self._drop: asyncio.TimerHandle | None = None

    # ---- socket ------------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self._transport = typing.cast(asyncio.Transport, transport)
        server = self.server
        server.sessions += 1
        server.live.add(self)
        after = server.drop_after()
        if after is not None:
            self._drop = asyncio.get_running_loop().call_later(after, self._dropped)

    def _dropped(self) -> None:
        """The injected failure: the connection is cut, as a lost upstream would be."""
        self._drop = None
        if self._transport is not None and not self._transport.is_closing():
            self.server.drops += 1
            if self.probe is not None:
                self.probe.lost_at = time.monotonic()
            self._transport.abort()

    def data_received(self, data: bytes) -> None:
        reader = self._reader
        if reader is None:
            self._head += data
            end = self._head.find(b"\r\n\r\n")
            if end < 0:
                if len(self._head) > wire.MAX_HEAD:
                    self._close_transport()
                return
            head, data = self._head[:end], self._head[end + 4 :]
            self._head = b""
            try:
                response, _ = wire.server_response(head)
            except wire.HandshakeError:
                self._write(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
                self._close_transport()
                return
            self._write(response)
            self._reader = reader = wire.FrameReader()
            self._send(self.state.connected())
            if not data:
                return
        for opcode, payload in reader.feed(data):
            if opcode == OP_TEXT:
                self._on_event(payload)
            elif opcode == OP_PING:
                self._write(frame(OP_PONG, payload))
            elif opcode == OP_CLOSE:
                self._write(frame(OP_CLOSE, payload[:2]))
                self._close_transport()

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_pacing()
        self.server.live.discard(self)
        if self._drop is not None:
            self._drop.cancel()
            self._drop = None
        if self.probe is None and self._caller_bytes:
            self.server.unlinked.append("preamble not decoded")

    def _close_transport(self) -> None:
        if self._transport is not None:
            self._transport.close()

    def _write(self, data: bytes) -> None:
        if self._transport is not None and not self._transport.is_closing():
            self._transport.write(data)

    def _send(self, events: list[Event]) -> None:
        if events:
            self._write(b"".join(frame(OP_TEXT, orjson.dumps(event)) for event in events))

    def _send_serialised(self, texts: list[bytes]) -> None:
        if texts:
            self._write(b"".join(frame(OP_TEXT, text) for text in texts))

    # ---- client events -----------------------------------------------------------------------

    def _on_event(self, payload: bytes) -> None:
        now = time.monotonic()
        state = self.state
        try:
            event = orjson.loads(payload)
        except orjson.JSONDecodeError:
            self.server.metrics.rejected_events += 1
            self._send(state.invalid_json("not JSON"))
            return
        size = 0.0
        try:  # the hot path: an append decoded here, straight into the session's audio rules
            if event["type"] != "input_audio_buffer.append":
                raise LookupError
            raw = binascii.a2b_base64(event["audio"], strict_mode=True)
        except (LookupError, TypeError, ValueError):
            events = state.handle(event)  # everything else, and the session's errors
        else:
            size = caller_side_bytes(len(raw), pcmu=self._pcmu)
            events = state.append_audio(raw)
        before = self._caller_bytes
        self._caller_bytes += size
        if self.probe is None and self._vad.call_id is not None:
            self._link(self._vad.call_id, now, before)
        if events:
            self._observe(events, now)
            self._send(events)
        probe = self.probe
        if size and probe is not None:
            metrics = probe.metrics
            probe.input.received(size, now, metrics.sink(metrics.caller_to_model))
        if state.response is not self._paced:
            self._start_pacing()

    def _observe(self, events: list[Event], now: float) -> None:
        """Report what the session decided to the probe (and count refused client events)."""
        for event in events:
            kind = event["type"]
            if kind == "input_audio_buffer.speech_started":
                if self.probe is not None:
                    self.probe.speech_started(now)
            elif kind == "conversation.item.truncated":
                number = self._replies.get(event["item_id"])
                if self.probe is not None and number is not None:
                    self.probe.truncated(number, event["audio_end_ms"])
            elif kind == "session.updated":
                audio_in = event["session"]["audio"]["input"]
                self._pcmu = audio_in["format"]["type"] == "audio/pcmu"
            elif kind == "error" and event["error"]["code"] not in _BENIGN_ERRORS:
                self.server.metrics.rejected_events += 1

    def _link(self, call_id: int, now: float, received_before: float) -> None:
        probe = self.server.probes.get(call_id)
        sync = self._vad.decoder.sync
        if probe is None or probe.linked or sync is None:
            self.server.unlinked.append(f"unknown or duplicate call id {call_id}")
            self._vad.ignore()
            return
        probe.linked = True
        probe.lead_ms = 0.0 if self._pcmu else CallerToModel.delay_ms
        probe.input.offset = sync - PREAMBLE_AT
        probe.input.received(received_before, now, None)
        self.probe = probe

    # ---- replies -----------------------------------------------------------------------------

    def _start_pacing(self) -> None:
        self._stop_pacing()
        stream = self.state.response
        if stream is None:
            return
        self._paced = stream
        number = self.probe.reply_started() if self.probe is not None else 0
        self._replies[stream.item.id] = number
        if len(self._replies) > 16:
            self._replies.pop(next(iter(self._replies)))
        loop = asyncio.get_running_loop()
        self._handle = loop.call_soon(self._delta, stream, loop.time(), 0)

    def _stop_pacing(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        self._paced = None

    def _delta(self, stream: ResponseStream, start: float, step: int) -> None:
        if self.state.response is not stream:
            return
        now = time.monotonic()
        server = self.server
        metrics = server.metrics
        if metrics.recording:
            metrics.delta_lag.add((now - start - step * server.interval) * 1000.0)
        chunk = stream.next_chunk
        self._send_serialised(self.state.advance_serialised())
        audio = stream.audio
        if self.probe is not None and audio is not None and stream.next_chunk > chunk:
            size = caller_side_bytes(audio.sizes[chunk], pcmu=audio.bytes_per_ms == 8)
            self.probe.output.delta_sent(size, now)
        if self.state.response is stream:
            loop = asyncio.get_running_loop()
            at = start + (step + 1) * server.interval
            self._handle = loop.call_at(at, self._delta, stream, start, step + 1)
        else:  # completed: only a client event starts the next one
            self._handle = None
            self._paced = None
