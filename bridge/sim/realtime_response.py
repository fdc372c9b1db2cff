"""One streaming response of the Realtime simulator, as GA server events (items: realtime_items).

Sans-I/O: a `ResponseStream` yields its opening events, one pacing step of deltas at a time, and
its closing events (completed or cancelled); the session decides when. Output items in order:
MCP calls (one pacing step each, with a pause for the server's answer), the message (absent
when a response with tool calls has nothing to say), then function calls (at the end).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import orjson

from bridge.sim.realtime_config import SimToolCall
from bridge.sim.realtime_items import (
    Event,
    EventFactory,
    Item,
    function_call_item,
    item_from_client,
    mcp_call_item,
)
from bridge.sim.realtime_media import EncodedAudio

__all__ = ["Event", "EventFactory", "Item", "ResponseStream", "item_from_client"]

RATE_LIMITS = [
    {"name": "requests", "limit": 5000, "remaining": 4999, "reset_seconds": 0.012},
    {"name": "tokens", "limit": 40000, "remaining": 35904, "reset_seconds": 6.144},
]


@dataclasses.dataclass(slots=True)
class ResponseStream:
    """The response being generated: what to say, and how far its deltas have got."""

    id: str
    item: Item
    modality: str  # "audio" or "text": what is actually produced
    requested: list[str]  # what the client asked for (reported in the response object)
    text: str
    audio_format: dict[str, Any]
    voice: Any
    conversation: dict[str, Item] | None  # where output items go; None: out of band
    metadata: Any
    render: Callable[[], EncodedAudio]
    audio: EncodedAudio | None = None
    next_chunk: int = 0
    words_sent: int = 0
    drop_after: int | None = None  # DROP_MID_RESPONSE: abort after this many audio deltas
    mcp_calls: list[SimToolCall] = dataclasses.field(default_factory=list)  # still to run
    function_calls: list[SimToolCall] = dataclasses.field(default_factory=list)  # at the end
    has_message: bool = True
    mcp_call_ms: int = 0  # the pause an MCP call takes
    hold_ms: int = 0  # a pause before the next step, requested of the pacer (`take_hold_ms`)
    outputs: list[Item] = dataclasses.field(default_factory=list)  # output items so far
    message_index: int = 0  # output_index of the message
    _index: dict[str, int] = dataclasses.field(default_factory=dict)  # item id -> output_index
    _previous: dict[str, str | None] = dataclasses.field(default_factory=dict)
    _running: Item | None = None  # the MCP call waiting for its server
    _wire_part: bytes = b""  # the part fields as JSON, built on the first serialised step

    @property
    def in_conversation(self) -> bool:
        """Whether output items join the conversation (`conversation: auto`)."""
        return self.conversation is not None

    @property
    def words(self) -> list[str]:
        """The reply split into transcript deltas."""
        return self.text.split()

    @property
    def exhausted(self) -> bool:
        """Everything generated: the next step only closes the response."""
        if self.mcp_calls:
            return False
        if self.modality == "text":
            return self.words_sent >= len(self.words)
        return self.next_chunk >= len(self.ensure_audio().chunks)

    def ensure_audio(self) -> EncodedAudio:
        """The encoded reply, rendered here if the binding has not done so off-loop."""
        if self.audio is None:
            self.audio = self.render()
        return self.audio

    def take_hold_ms(self) -> int:
        """The pause the pacer owes before the next step (an MCP call running), once."""
        hold, self.hold_ms = self.hold_ms, 0
        return hold

    def opening(self, ev: EventFactory) -> list[Event]:
        """`response.created` up to the first MCP call's `in_progress`, or to the message's
        `response.content_part.added` (the item has no content yet)."""
        events = [
            ev.event("response.created", response=self.response_object("in_progress")),
            ev.event("rate_limits.updated", rate_limits=RATE_LIMITS),
        ]
        if self.mcp_calls:
            return events + self._start_mcp(ev)
        return events + self._open_message(ev)

    def _open_message(self, ev: EventFactory) -> list[Event]:
        if not self.has_message:
            return []
        item = self.item
        self.message_index = len(self.outputs)
        events = self._open_item(ev, item)
        # Content parts in these events say "audio"/"text"; items say "output_audio"/"output_text".
        if self.modality == "audio":
            item.content = [{"type": "output_audio", "transcript": ""}]
            part: Event = {"type": "audio", "transcript": ""}
        else:
            item.content = [{"type": "output_text", "text": ""}]
            part = {"type": "text", "text": ""}
        events.append(self._part_event(ev, "response.content_part.added", part=part))
        return events

    def _open_item(self, ev: EventFactory, item: Item) -> list[Event]:
        """`response.output_item.added`, and the item joins the conversation."""
        index = self._index[item.id] = len(self.outputs)
        self.outputs.append(item)
        events = [
            ev.event(
                "response.output_item.added",
                response_id=self.id,
                output_index=index,
                item=item.wire(),
            )
        ]
        conversation = self.conversation
        if conversation is not None:
            previous = self._previous[item.id] = next(reversed(conversation), None)
            conversation[item.id] = item
            events.append(
                ev.event("conversation.item.added", item=item.wire(), previous_item_id=previous)
            )
        return events

    def _close_item(self, ev: EventFactory, item: Item) -> list[Event]:
        """`response.output_item.done`, and `conversation.item.done` unless it was deleted."""
        events = [
            ev.event(
                "response.output_item.done",
                response_id=self.id,
                output_index=self._index[item.id],
                item=item.wire(),
            )
        ]
        if self.conversation is not None and item.id in self.conversation:
            events.append(
                ev.event(
                    "conversation.item.done",
                    item=item.wire(),
                    previous_item_id=self._previous.get(item.id),
                )
            )
        return events

    def _arguments(self, ev: EventFactory, kind: str, item: Item, arguments: str) -> list[Event]:
        """The arguments streamed in (up to) two deltas, then `done`."""
        fields: Event = {"response_id": self.id, "item_id": item.id}
        fields["output_index"] = self._index[item.id]
        if kind == "response.function_call_arguments":
            fields["call_id"] = item.extra["call_id"]
        half = (len(arguments) + 1) // 2
        pieces = [p for p in (arguments[:half], arguments[half:]) if p] or [""]
        events = [ev.event(f"{kind}.delta", **fields, delta=piece) for piece in pieces]
        if kind == "response.function_call_arguments":
            fields["name"] = item.extra["name"]
        item.extra["arguments"] = arguments
        events.append(ev.event(f"{kind}.done", **fields, arguments=arguments))
        return events

    def _start_mcp(self, ev: EventFactory) -> list[Event]:
        """The head MCP call, up to `response.mcp_call.in_progress`; its answer waits a pause."""
        call = self.mcp_calls[0]
        item = self._running = mcp_call_item(ev.new_id("item"), call.server_label, call.name)
        events = self._open_item(ev, item)
        events += self._arguments(ev, "response.mcp_call_arguments", item, call.arguments_json)
        events.append(self._mcp_event(ev, "response.mcp_call.in_progress", item))
        self.hold_ms = self.mcp_call_ms
        return events

    def _finish_mcp(self, ev: EventFactory) -> list[Event]:
        """The running MCP call's answer, then the next call or the message."""
        call = self.mcp_calls.pop(0)
        item = self._running
        assert item is not None
        self._running = None
        item.status = "completed"
        if call.error:
            item.extra["error"] = {"type": "tool_execution_error", "message": call.error}
            events = [self._mcp_event(ev, "response.mcp_call.failed", item)]
        else:
            item.extra["output"] = call.output
            events = [self._mcp_event(ev, "response.mcp_call.completed", item)]
        events += self._close_item(ev, item)
        if self.mcp_calls:
            return events + self._start_mcp(ev)
        return events + self._open_message(ev)

    def _mcp_event(self, ev: EventFactory, kind: str, item: Item) -> Event:
        return ev.event(kind, item_id=item.id, output_index=self._index[item.id])

    def _function_call(self, ev: EventFactory, call: SimToolCall) -> list[Event]:
        """One function call, from `response.output_item.added` to `conversation.item.done`."""
        item = function_call_item(ev.new_id("item"), call.call_id or ev.new_id("call"), call.name)
        events = self._open_item(ev, item)
        events += self._arguments(ev, "response.function_call_arguments", item, call.arguments_json)
        item.status = "completed"
        return events + self._close_item(ev, item)

    def step(self, ev: EventFactory) -> list[Event]:
        """The next audio delta (with its share of transcript), or all text deltas at once; while
        MCP calls run, the next call's answer instead."""
        if self.mcp_calls:
            return self._finish_mcp(ev)
        if self.modality == "text":
            words = self.words[self.words_sent :]
            first = self.words_sent == 0
            self.words_sent += len(words)
            return [
                self._part_event(
                    ev, "response.output_text.delta", delta=w if first and i == 0 else f" {w}"
                )
                for i, w in enumerate(words)
            ]
        k, transcript = self._next_audio()
        if k < 0:
            return []
        assert self.audio is not None
        events = [self._part_event(ev, "response.output_audio.delta", delta=self.audio.chunks[k])]
        if transcript is not None:
            events.append(
                self._part_event(ev, "response.output_audio_transcript.delta", delta=transcript)
            )
        return events

    def step_serialised(self, ev: EventFactory) -> list[bytes]:
        """`step` of an audio response, its events as JSON built by hand from the encoded chunk
        (the benchmark's hot path: no dicts, no serialiser pass over the audio)."""
        k, words = self._next_audio()
        if k < 0:
            return []
        assert self.audio is not None
        part = self._wire_part
        if not part:
            part = self._wire_part = (
                orjson.dumps(
                    {
                        "response_id": self.id,
                        "item_id": self.item.id,
                        "output_index": self.message_index,
                    }
                )[1:-1]
                + b',"content_index":0'
            )
        new_id = ev.new_id
        out = [
            b'{"type":"response.output_audio.delta","event_id":"%s",%s,"delta":"%s"}'
            % (new_id("event").encode(), part, self.audio.wire[k])
        ]
        if words is not None:
            out.append(
                b'{"type":"response.output_audio_transcript.delta","event_id":"%s",%s,"delta":%s}'
                % (new_id("event").encode(), part, orjson.dumps(words))
            )
        return out

    def _next_audio(self) -> tuple[int, str | None]:
        """Account for the next audio chunk: its index (-1 when all are sent) and the
        transcript that goes with it (None when no word is due)."""
        audio = self.ensure_audio()
        k = self.next_chunk
        if k >= len(audio.chunks):
            return -1, None
        self.next_chunk = k + 1
        self.item.audio_bytes += audio.sizes[k]
        words = self.words
        target = -(-(k + 1) * len(words) // len(audio.chunks))  # ceil
        if target <= self.words_sent:
            return k, None
        chunk = " ".join(words[self.words_sent : target])
        delta = chunk if self.words_sent == 0 else f" {chunk}"
        self.words_sent = target
        return k, delta

    def closing(
        self, ev: EventFactory, status: str, *, reason: str | None, usage: Event
    ) -> list[Event]:
        """`*.done` events down to `response.done`, for a `completed` or `cancelled` response;
        a completed one makes its function calls first."""
        events: list[Event] = []
        running = self._running
        if running is not None:  # cancelled while an MCP server was answering
            self._running = None
            running.status = "incomplete"
            events += self._close_item(ev, running)
        if self.item.id in self._index:
            events += self._close_message(ev, status)
        if status == "completed":
            for call in self.function_calls:
                events += self._function_call(ev, call)
        done = self.response_object(status)
        if reason is not None:
            done["status_details"] = {"type": status, "reason": reason}
        done["output"] = [item.wire() for item in self.outputs]
        done["usage"] = usage
        events.append(ev.event("response.done", response=done))
        return events

    def _close_message(self, ev: EventFactory, status: str) -> list[Event]:
        item = self.item
        item.status = "completed" if status == "completed" else "incomplete"
        said = " ".join(self.words[: self.words_sent])
        if self.modality == "audio":
            # A truncated item keeps no transcript: the model holds only what the caller heard.
            item.content = [{"type": "output_audio", "transcript": "" if item.truncated else said}]
            events = [
                self._part_event(ev, "response.output_audio.done"),
                self._part_event(ev, "response.output_audio_transcript.done", transcript=said),
                self._part_event(
                    ev, "response.content_part.done", part={"type": "audio", "transcript": said}
                ),
            ]
        else:
            item.content = [{"type": "output_text", "text": said}]
            events = [
                self._part_event(ev, "response.output_text.done", text=said),
                self._part_event(
                    ev, "response.content_part.done", part={"type": "text", "text": said}
                ),
            ]
        return events + self._close_item(ev, item)

    def response_object(self, status: str) -> Event:
        """The `response` of `response.created` / `response.done` (output and usage empty)."""
        return {
            "object": "realtime.response",
            "id": self.id,
            "status": status,
            "status_details": None,
            "output": [],
            "conversation_id": "conv_default" if self.conversation is not None else None,
            "output_modalities": self.requested,
            "max_output_tokens": "inf",
            "audio": {"output": {"format": self.audio_format, "voice": self.voice}},
            "usage": None,
            "metadata": self.metadata,
        }

    def usage(self, text_in: int, audio_in: int) -> Event:
        """Token usage in the GA shape; output audio at 20 tokens per second."""
        text_out = self.words_sent * 4 // 3
        audio_out = self.item.audio_ms // 50 if self.modality == "audio" else 0
        return {
            "total_tokens": text_in + audio_in + text_out + audio_out,
            "input_tokens": text_in + audio_in,
            "output_tokens": text_out + audio_out,
            "input_token_details": {
                "text_tokens": text_in,
                "audio_tokens": audio_in,
                "cached_tokens": 0,
                "cached_tokens_details": {"text_tokens": 0, "audio_tokens": 0, "image_tokens": 0},
            },
            "output_token_details": {"text_tokens": text_out, "audio_tokens": audio_out},
        }

    def _part_event(self, ev: EventFactory, kind: str, **fields: Any) -> Event:
        return ev.event(
            kind,
            response_id=self.id,
            item_id=self.item.id,
            output_index=self.message_index,
            content_index=0,
            **fields,
        )
