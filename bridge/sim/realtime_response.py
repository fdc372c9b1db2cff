"""Conversation items and one streaming response of the Realtime simulator, as GA server events.

Sans-I/O: a `ResponseStream` yields its opening events, one pacing step of deltas at a time, and
its closing events (completed or cancelled); the session decides when.
"""

from __future__ import annotations

import dataclasses
import itertools
import secrets
from collections.abc import Callable
from typing import Any

import orjson

from bridge.sim.realtime_config import ClientError, missing
from bridge.sim.realtime_media import EncodedAudio

__all__ = ["Event", "EventFactory", "Item", "ResponseStream", "item_from_client"]

Event = dict[str, Any]

RATE_LIMITS = [
    {"name": "requests", "limit": 5000, "remaining": 4999, "reset_seconds": 0.012},
    {"name": "tokens", "limit": 40000, "remaining": 35904, "reset_seconds": 6.144},
]


class EventFactory:
    """Server events with cheap unique ids: a random per-session prefix and a counter."""

    def __init__(self) -> None:
        self._prefix = secrets.token_hex(5)
        self._counter = itertools.count(1)

    def new_id(self, kind: str) -> str:
        """A fresh id such as `item_3f2a…000012`."""
        return f"{kind}_{self._prefix}{next(self._counter):06d}"

    def event(self, kind: str, **fields: Any) -> Event:
        """A server event of type `kind`."""
        return {"type": kind, "event_id": self.new_id("event"), **fields}

    def error(self, exc: ClientError, client_event_id: str | None = None) -> Event:
        """An `error` event for `exc`, naming the client event that caused it."""
        return self.event(
            "error",
            error={
                "type": exc.error_type,
                "code": exc.code,
                "message": exc.message,
                "param": exc.param,
                "event_id": client_event_id,
            },
        )


@dataclasses.dataclass(slots=True)
class Item:
    """A conversation item as the server keeps it (audio bytes are only counted, not stored)."""

    id: str
    type: str
    role: str | None
    content: list[dict[str, Any]]
    status: str = "completed"
    audio_bytes: int = 0  # assistant audio generated so far, in the output format
    bytes_per_ms: int = 48
    truncated: bool = False
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def audio_ms(self) -> int:
        """Duration of the assistant audio generated so far (after any truncation)."""
        return self.audio_bytes // self.bytes_per_ms

    @property
    def has_audio(self) -> bool:
        """True for messages with an `output_audio` part."""
        return any(part.get("type") == "output_audio" for part in self.content)

    @property
    def text_only_assistant(self) -> bool:
        """An assistant message whose content is all text: what makes a model answer in text."""
        return (
            self.role == "assistant"
            and bool(self.content)
            and all(part.get("type") == "output_text" for part in self.content)
        )

    def truncate(self, content_index: int, audio_end_ms: int) -> None:
        """Cut assistant audio at `audio_end_ms`, or raise the service's `ClientError`."""
        if self.role != "assistant" or not self.has_audio:
            raise ClientError(
                "Only assistant messages with audio content can be truncated.", param="item_id"
            )
        if content_index != 0:
            raise ClientError(
                f"Invalid 'content_index': {content_index}. The item's audio is at index 0.",
                param="content_index",
            )
        if audio_end_ms > self.audio_ms:
            raise ClientError(
                f"Audio content of {self.audio_ms}ms is already shorter than {audio_end_ms}ms",
                code=None,
            )
        self.audio_bytes = audio_end_ms * self.bytes_per_ms
        # The transcript goes too, so the context holds nothing the caller did not hear.
        self.content[0]["transcript"] = ""
        self.truncated = True

    def transcribed(self, ev: EventFactory, text: str) -> list[Event]:
        """Input transcription of this user audio item: one delta, then `completed`."""
        self.content[0]["transcript"] = text
        tokens = max(1, len(text.split()))
        usage = {
            "type": "tokens",
            "input_tokens": tokens * 4,
            "output_tokens": tokens,
            "total_tokens": tokens * 5,
            "input_token_details": {"text_tokens": 0, "audio_tokens": tokens * 4},
        }
        part = {"item_id": self.id, "content_index": 0}
        return [
            ev.event("conversation.item.input_audio_transcription.delta", **part, delta=text),
            ev.event(
                "conversation.item.input_audio_transcription.completed",
                **part,
                transcript=text,
                usage=usage,
            ),
        ]

    def wire(self) -> Event:
        """The item as sent in server events (a fresh copy)."""
        data: Event = {"id": self.id, "object": "realtime.item", "type": self.type}
        data.update(self.extra)
        if self.type == "message":
            data["role"] = self.role
            data["content"] = [dict(part) for part in self.content]
        data["status"] = self.status
        return data


# Content part types a client may put in a message, per role (GA).
_CONTENT_TYPES = {
    "user": frozenset({"input_text", "input_audio", "input_image"}),
    "system": frozenset({"input_text"}),
    "assistant": frozenset({"output_text", "output_audio"}),
}


def item_from_client(raw: dict[str, Any], item_id: str) -> Item:
    """The item of a `conversation.item.create`, validated as GA does (assistant text is
    `output_text`, never the beta `text`)."""
    kind = raw.get("type")
    if kind in ("function_call", "function_call_output"):
        extra = {k: v for k, v in raw.items() if k in ("call_id", "name", "arguments", "output")}
        return Item(item_id, kind, None, [], extra=extra)
    if kind != "message":
        raise ClientError(
            f"Invalid value: '{kind}'. Supported values are: 'message', 'function_call' and "
            "'function_call_output'.",
            param="item.type",
        )
    role = raw.get("role")
    if role not in _CONTENT_TYPES:
        raise ClientError(
            f"Invalid value: '{role}'. Supported values are: 'user', 'assistant' and 'system'.",
            param="item.role",
        )
    parts = raw.get("content")
    if not isinstance(parts, list):
        raise missing("item.content")
    content: list[dict[str, Any]] = []
    for i, part in enumerate(parts):
        if not isinstance(part, dict) or part.get("type") not in _CONTENT_TYPES[role]:
            allowed = ", ".join(f"'{t}'" for t in sorted(_CONTENT_TYPES[role]))
            raise ClientError(
                f"Invalid value for a {role} message content part. Supported values are: "
                f"{allowed}.",
                param=f"item.content[{i}].type",
            )
        # Input audio bytes are not kept, and never repeated in later events.
        content.append({k: v for k, v in part.items() if k != "audio"})
    return Item(item_id, "message", role, content)


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
    in_conversation: bool
    previous_item_id: str | None
    metadata: Any
    render: Callable[[], EncodedAudio]
    audio: EncodedAudio | None = None
    next_chunk: int = 0
    words_sent: int = 0
    drop_after: int | None = None  # DROP_MID_RESPONSE: abort after this many audio deltas
    _wire_part: bytes = b""  # the part fields as JSON, built on the first serialised step

    @property
    def words(self) -> list[str]:
        """The reply split into transcript deltas."""
        return self.text.split()

    @property
    def exhausted(self) -> bool:
        """Everything generated: the next step only closes the response."""
        if self.modality == "text":
            return self.words_sent >= len(self.words)
        return self.next_chunk >= len(self.ensure_audio().chunks)

    def ensure_audio(self) -> EncodedAudio:
        """The encoded reply, rendered here if the binding has not done so off-loop."""
        if self.audio is None:
            self.audio = self.render()
        return self.audio

    def opening(self, ev: EventFactory) -> list[Event]:
        """`response.created` up to `response.content_part.added` (the item has no content yet)."""
        item = self.item
        events = [
            ev.event("response.created", response=self.response_object("in_progress")),
            ev.event("rate_limits.updated", rate_limits=RATE_LIMITS),
            ev.event(
                "response.output_item.added", response_id=self.id, output_index=0, item=item.wire()
            ),
        ]
        if self.in_conversation:
            events.append(
                ev.event(
                    "conversation.item.added",
                    item=item.wire(),
                    previous_item_id=self.previous_item_id,
                )
            )
        # Content parts in these events say "audio"/"text"; items say "output_audio"/"output_text".
        if self.modality == "audio":
            item.content = [{"type": "output_audio", "transcript": ""}]
            part: Event = {"type": "audio", "transcript": ""}
        else:
            item.content = [{"type": "output_text", "text": ""}]
            part = {"type": "text", "text": ""}
        events.append(self._part_event(ev, "response.content_part.added", part=part))
        return events

    def step(self, ev: EventFactory) -> list[Event]:
        """The next audio delta (with its share of transcript), or all text deltas at once."""
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
                orjson.dumps({"response_id": self.id, "item_id": self.item.id, "output_index": 0})[
                    1:-1
                ]
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
        self,
        ev: EventFactory,
        status: str,
        *,
        reason: str | None,
        usage: Event,
        item_in_conversation: bool,
    ) -> list[Event]:
        """`*.done` events down to `response.done`, for a `completed` or `cancelled` response."""
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
        events.append(
            ev.event(
                "response.output_item.done", response_id=self.id, output_index=0, item=item.wire()
            )
        )
        if self.in_conversation and item_in_conversation:
            events.append(
                ev.event(
                    "conversation.item.done",
                    item=item.wire(),
                    previous_item_id=self.previous_item_id,
                )
            )
        done = self.response_object(status)
        if reason is not None:
            done["status_details"] = {"type": status, "reason": reason}
        done["output"] = [item.wire()]
        done["usage"] = usage
        events.append(ev.event("response.done", response=done))
        return events

    def response_object(self, status: str) -> Event:
        """The `response` of `response.created` / `response.done` (output and usage empty)."""
        return {
            "object": "realtime.response",
            "id": self.id,
            "status": status,
            "status_details": None,
            "output": [],
            "conversation_id": "conv_default" if self.in_conversation else None,
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
            output_index=0,
            content_index=0,
            **fields,
        )
