"""Lean Realtime (GA) model side of the generator: enough of the protocol to hold a conversation.

One asyncio Protocol per session, no tasks: frames are read in `data_received`, reply deltas are
paced with `call_at`. The simulator's VAD, as `PreambleVad`, turns the input audio into the call's
id (its preamble) and then speech started / stopped, which drive replies as server VAD does.
Replies are encoded once by the simulator's encoder and stream faster than real time;
`response.cancel` and `conversation.item.truncate` behave as the GA service does. Everything is
reported to the call's `CallProbe`. The full-featured simulator for tests is
`bridge.sim.realtime_server`: its session state (`RealtimeSessionState`) is not used here because
building and serialising its events cost the generator about 10 % more CPU per call (measured).
"""

from __future__ import annotations

import asyncio
import binascii
import itertools
import json
import time
import typing
from typing import Any

import numpy as np
import orjson

from bridge.audio import CallerToModel, ulaw_to_pcm16
from bridge.bench import wire
from bridge.bench.inbound import PreambleVad, caller_side_bytes
from bridge.bench.probe import CallProbe, Metrics
from bridge.bench.signature import PREAMBLE_AT, speechlike
from bridge.fastws.frames import OP_CLOSE, OP_PING, OP_PONG, OP_TEXT, frame
from bridge.sim.realtime_media import EncodedAudio, encode_audio

__all__ = ["ModelServer"]

REPLY_SECONDS = (2.0, 2.8, 3.6)
_WORD = " word"
_PCMU = {"type": "audio/pcmu"}
_PCM = {"type": "audio/pcm", "rate": 24000}


def reply_samples(turn: int) -> np.ndarray:
    """Reply `turn` (cycled) as 24 kHz float audio: a speech-like burst of a set length."""
    index = turn % len(REPLY_SECONDS)
    return speechlike(REPLY_SECONDS[index], 24000, index, 0.3)


class ModelServer:
    """Serves `/v1/realtime` on a loopback port; `probes` maps call ids to calls (set by the
    load runner before each call starts)."""

    def __init__(self, *, chunk_ms: int = 100, speedup: float = 5.0) -> None:
        self.chunk_ms = chunk_ms
        self.interval = chunk_ms / 1000.0 / speedup
        self.metrics = Metrics()
        self.probes: dict[int, CallProbe] = {}
        self.sessions = 0
        self.unlinked: list[str] = []  # why sessions could not be tied to a call
        self.url = ""
        self._server: asyncio.Server | None = None
        self._encoded: dict[tuple[str, int], EncodedAudio] = {}
        self._chunks: dict[tuple[bool, int], list[tuple[bytes, int]]] = {}

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

    def reply(self, audio_format: dict[str, Any], turn: int) -> EncodedAudio:
        """Reply `turn` (cycled) encoded for `audio_format`, once per format, shared by all."""
        key = (str(audio_format.get("type")), turn % len(REPLY_SECONDS))
        encoded = self._encoded.get(key)
        if encoded is None:
            samples = reply_samples(turn)
            encoded = self._encoded[key] = encode_audio(samples, audio_format, self.chunk_ms)
        return encoded

    def reply_chunks(self, pcmu: bool, turn: int) -> list[tuple[bytes, int]]:
        """`reply` as (base64 delta as bytes, decoded size) per chunk, ready to frame."""
        key = (pcmu, turn % len(REPLY_SECONDS))
        chunks = self._chunks.get(key)
        if chunks is None:
            encoded = self.reply(_PCMU if pcmu else _PCM, turn)
            pairs = zip(encoded.chunks, encoded.sizes, strict=True)
            chunks = self._chunks[key] = [(chunk.encode("ascii"), size) for chunk, size in pairs]
        return chunks


class _Reply:
    __slots__ = ("chunks", "handle", "id", "item", "k", "number", "part", "sent_ms", "start")

    def __init__(self, rid: str, item: str, number: int, chunks: list[tuple[bytes, int]]) -> None:
        self.id = rid
        self.item = item
        self.number = number
        self.chunks = chunks
        self.k = 0
        self.sent_ms = 0.0
        self.start = 0.0
        self.handle: asyncio.Handle | None = None
        self.part = f',"response_id":"{rid}","item_id":"{item}","output_index":0,"content_index":0'


class _Session(asyncio.Protocol):
    def __init__(self, server: ModelServer) -> None:
        self.server = server
        self.probe: CallProbe | None = None
        self._transport: asyncio.Transport | None = None
        self._head = b""
        self._reader: wire.FrameReader | None = None
        self._ids = itertools.count(1)
        self._prefix = f"{id(self) & 0xFFFFFF:06x}"
        self._vad = PreambleVad()
        self._silence_ms = 500
        self._caller_bytes = 0.0  # audio received so far, as caller-side mu-law bytes
        self._pcmu = False
        self._interrupt = True
        self._create = True
        self._user_item = ""
        self._reply: _Reply | None = None
        self._replies = 0
        self._items: dict[str, _Reply] = {}

    # ---- socket ------------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self._transport = typing.cast(asyncio.Transport, transport)
        self.server.sessions += 1

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
            self._send(self._event("session.created", ',"session":{"type":"realtime"}'))
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
        if self._reply is not None and self._reply.handle is not None:
            self._reply.handle.cancel()
        self._reply = None
        if self.probe is None and self._caller_bytes:
            self.server.unlinked.append("preamble not decoded")

    def _close_transport(self) -> None:
        if self._transport is not None:
            self._transport.close()

    def _write(self, data: bytes) -> None:
        if self._transport is not None and not self._transport.is_closing():
            self._transport.write(data)

    def _send(self, text: str) -> None:
        self._write(frame(OP_TEXT, text.encode()))

    def _event(self, kind: str, fields: str = "") -> str:
        return f'{{"type":"{kind}","event_id":"event_{self._prefix}{next(self._ids)}"{fields}}}'

    # ---- client events -----------------------------------------------------------------------

    def _on_event(self, payload: bytes) -> None:
        try:
            event = orjson.loads(payload)
            kind = event["type"]
            if kind == "input_audio_buffer.append":
                self._append(binascii.a2b_base64(event["audio"]))
            elif kind == "session.update":
                self._session_update(event["session"])
            elif kind == "response.cancel":
                self._cancel(event)
            elif kind == "conversation.item.truncate":
                self._truncate(event)
            elif kind == "response.create":
                if self._reply is None:
                    self._start_reply()
                else:
                    self._error("conversation_already_has_active_response", event)
        except (ValueError, KeyError, TypeError, binascii.Error):
            self.server.metrics.rejected_events += 1

    def _session_update(self, session: dict[str, Any]) -> None:
        audio_in = session.get("audio", {}).get("input", {})
        self._pcmu = audio_in.get("format", {}).get("type") == "audio/pcmu"
        detection = audio_in.get("turn_detection") or {}
        self._silence_ms = int(detection.get("silence_duration_ms") or 500)
        self._interrupt = bool(detection.get("interrupt_response", True))
        self._create = bool(detection.get("create_response", True))
        self._send(self._event("session.updated", f',"session":{json.dumps(session)}'))

    def _error(self, code: str, event: dict[str, Any]) -> None:
        event_id = json.dumps(event.get("event_id"))
        self._send(
            self._event(
                "error",
                f',"error":{{"type":"invalid_request_error","code":"{code}",'
                f'"message":"{code}","param":null,"event_id":{event_id}}}',
            )
        )

    def _cancel(self, event: dict[str, Any]) -> None:
        if self._reply is None:
            self._error("response_cancel_not_active", event)
        else:
            self._finish("cancelled", "client_cancelled")

    def _truncate(self, event: dict[str, Any]) -> None:
        item_id, end_ms = event["item_id"], int(event["audio_end_ms"])
        reply = self._items.get(item_id)
        if reply is None or end_ms < 0 or end_ms > reply.sent_ms:
            self.server.metrics.rejected_events += 1
            self._error("invalid_value", event)
            return
        if self.probe is not None:
            self.probe.truncated(reply.number, end_ms)
        self._send(
            self._event(
                "conversation.item.truncated",
                f',"item_id":"{item_id}","content_index":0,"audio_end_ms":{end_ms}',
            )
        )

    # ---- input audio: preamble, then VAD -----------------------------------------------------

    def _append(self, raw: bytes) -> None:
        now = time.monotonic()
        before = self._caller_bytes
        size = caller_side_bytes(len(raw), pcmu=self._pcmu)
        self._caller_bytes += size
        vad = self._vad
        if self._pcmu:
            heard = vad.feed(ulaw_to_pcm16(raw), 8000, self._silence_ms)
        else:
            heard = vad.feed(raw, 24000, self._silence_ms)
        if self.probe is None:
            if vad.call_id is None:
                return  # not tied to a call (yet): no conversation
            self._link(vad.call_id, now, before)
        for transition in heard:
            if transition.started:
                self._speech_started(transition.ms, now)
            else:
                self._speech_stopped(transition.ms)
        probe = self.probe
        if probe is not None:
            metrics = probe.metrics
            probe.input.received(size, now, metrics.sink(metrics.caller_to_model))

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

    def _speech_started(self, t_ms: int, now: float) -> None:
        self._user_item = f"item_u{self._prefix}{next(self._ids)}"
        self._send(
            self._event(
                "input_audio_buffer.speech_started",
                f',"audio_start_ms":{max(0, t_ms - 300)},"item_id":"{self._user_item}"',
            )
        )
        if self.probe is not None:
            self.probe.speech_started(now)
        if self._reply is not None and self._interrupt:
            self._finish("cancelled", "turn_detected")

    def _speech_stopped(self, end_ms: int) -> None:
        item = self._user_item
        self._send(
            self._event(
                "input_audio_buffer.speech_stopped",
                f',"audio_end_ms":{end_ms},"item_id":"{item}"',
            )
        )
        self._send(
            self._event(
                "input_audio_buffer.committed", f',"item_id":"{item}","previous_item_id":null'
            )
        )
        self._send(
            self._event(
                "conversation.item.input_audio_transcription.completed",
                f',"item_id":"{item}","content_index":0,"transcript":"Hello there."',
            )
        )
        if self._reply is None and self._create:
            self._start_reply()

    # ---- replies -----------------------------------------------------------------------------

    def _start_reply(self) -> None:
        number = self.probe.reply_started() if self.probe is not None else 0
        n = next(self._ids)
        reply = _Reply(
            f"resp_{self._prefix}{n}",
            f"item_a{self._prefix}{n}",
            number,
            self.server.reply_chunks(self._pcmu, self._replies),
        )
        self._replies += 1
        self._reply = reply
        self._items[reply.item] = reply
        if len(self._items) > 16:
            self._items.pop(next(iter(self._items)))
        rid, item = reply.id, reply.item
        self._send(
            self._event(
                "response.created",
                f',"response":{{"object":"realtime.response","id":"{rid}",'
                '"status":"in_progress","output":[],"output_modalities":["audio"]}',
            )
        )
        self._send(
            self._event(
                "response.output_item.added",
                f',"response_id":"{rid}","output_index":0,"item":{{"id":"{item}",'
                '"object":"realtime.item","type":"message","role":"assistant","content":[],'
                '"status":"in_progress"}',
            )
        )
        loop = asyncio.get_running_loop()
        reply.start = loop.time()
        reply.handle = loop.call_soon(self._delta, reply)

    def _delta(self, reply: _Reply) -> None:
        if self._reply is not reply:
            return
        chunk, size = reply.chunks[reply.k]
        now = time.monotonic()
        metrics = self.server.metrics
        if metrics.recording:
            metrics.delta_lag.add((now - reply.start - reply.k * self.server.interval) * 1000.0)
        part = reply.part
        head = self._event("response.output_audio.delta", part + ',"delta":"')[:-1]
        words = self._event("response.output_audio_transcript.delta", part + f',"delta":"{_WORD}"')
        self._write(frame(OP_TEXT, head.encode() + chunk + b'"}') + frame(OP_TEXT, words.encode()))
        reply.sent_ms += size / (8.0 if self._pcmu else 48.0)
        if self.probe is not None:
            self.probe.output.delta_sent(size if self._pcmu else size / 6.0, now)
        reply.k += 1
        if reply.k >= len(reply.chunks):
            self._finish("completed", None)
        else:
            loop = asyncio.get_running_loop()
            reply.handle = loop.call_at(
                reply.start + reply.k * self.server.interval, self._delta, reply
            )

    def _finish(self, status: str, reason: str | None) -> None:
        reply = self._reply
        assert reply is not None
        self._reply = None
        if reply.handle is not None:
            reply.handle.cancel()
        part = reply.part
        transcript = _WORD.strip() if reply.k else ""
        self._send(self._event("response.output_audio.done", part))
        self._send(
            self._event(
                "response.output_audio_transcript.done", part + f',"transcript":"{transcript}"'
            )
        )
        item = (
            f'{{"id":"{reply.item}","object":"realtime.item","type":"message","role":"assistant",'
            f'"status":"{"completed" if status == "completed" else "incomplete"}",'
            f'"content":[{{"type":"output_audio","transcript":"{transcript}"}}]}}'
        )
        self._send(
            self._event(
                "response.output_item.done",
                f',"response_id":"{reply.id}","output_index":0,"item":{item}',
            )
        )
        details = "null" if reason is None else f'{{"type":"{status}","reason":"{reason}"}}'
        self._send(
            self._event(
                "response.done",
                f',"response":{{"object":"realtime.response","id":"{reply.id}",'
                f'"status":"{status}","status_details":{details},"output":[{item}],'
                '"usage":{"total_tokens":60,"input_tokens":20,"output_tokens":40}}',
            )
        )
