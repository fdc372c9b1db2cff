"""One streaming response of the Realtime simulator, as GA server events (items: realtime_items).

Sans-I/O: a `ResponseStream` yields its opening events, one pacing step of deltas at a time, and
its closing events (completed or cancelled); the session decides when.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import orjson

from bridge.sim.realtime_items import Event, EventFactory, Item, item_from_client
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
