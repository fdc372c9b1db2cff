"""Sans-I/O state machine of one simulated GA Realtime session: client events in, server events out.

The bindings feed parsed client events and pacing ticks (`advance`); nothing here awaits, so
every rule (VAD, cancel, truncate, modality quirks, scripted tool calls) is a plain method call.
Two bindings: the simulator for tests and the demo (`realtime_server`), and the benchmark's lean
model side (`bridge.bench.model`), which hands decoded appends straight to `append_audio` and
takes audio deltas pre-serialised (`advance_serialised`).
"""

from __future__ import annotations

import binascii
import itertools
import re
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import orjson
import pybase64

from bridge.sim.realtime_config import (
    ClientError,
    Mode,
    SimConfig,
    SimToolCall,
    added_mcp_servers,
    apply_session_update,
    default_session,
    mcp_allowed,
    missing,
    require,
    session_expired_message,
    validate_audio_format,
    validate_output_modalities,
    validate_tool_choice,
    validate_tools,
)
from bridge.sim.realtime_items import mcp_list_tools
from bridge.sim.realtime_media import EncodedAudio, InputDecoder, bytes_per_ms, reply_renderer
from bridge.sim.realtime_response import (
    Event,
    EventFactory,
    Item,
    ResponseStream,
    item_from_client,
)
from bridge.sim.vad import EnergyVad

__all__ = ["RealtimeSessionState"]

_QUOTED = re.compile(r'"([^"]+)"')


class RealtimeSessionState:
    """One session: conversation, input buffer + VAD, and at most one active response."""

    def __init__(
        self,
        config: SimConfig,
        *,
        model: str = "gpt-realtime",
        vad: EnergyVad | None = None,
        mode: Mode | None = None,
        max_seconds: float | None = None,
        transcripts: Iterator[int] | None = None,
    ) -> None:
        """`mode` fixes the session's mode (None: `config.mode`, read live); `max_seconds` is
        its maximum duration (its `expires_at`, and `expire`'s message); `transcripts` numbers
        the caller transcripts, shared to cycle them across sessions (None: per session)."""
        self.config = config
        self.session: dict[str, Any] = default_session(model)
        self.max_seconds = max_seconds
        if max_seconds is not None:
            self.session["expires_at"] = int(time.time() + max_seconds)
        self._mode = mode
        self.items: dict[str, Item] = {}  # insertion order = conversation order
        self.truncations: list[dict[str, Any]] = []
        self.response: ResponseStream | None = None
        self.responses_started = 0
        self.abort_requested = False  # DROP_MID_RESPONSE: the binding must abort the socket
        self.audio_produced = False
        self.input = InputDecoder(record=config.record_input)
        self._vad = vad or EnergyVad(config.vad_threshold_dbfs)
        self._ev = EventFactory()
        self._buffer_ms = 0.0  # input audio since the last commit/clear
        self._input_ms_total = 0.0
        self._speech_item_id: str | None = None
        self._reply_index = 0
        self._answers = 0  # responses so far that answered the caller (keys of `tool_calls`)
        self._transcripts = itertools.count() if transcripts is None else transcripts
        self._handlers: dict[str, Callable[[Event], list[Event]]] = {
            "session.update": self._session_update,
            "input_audio_buffer.append": self._append,
            "input_audio_buffer.commit": self._commit_by_client,
            "input_audio_buffer.clear": self._clear,
            "conversation.item.create": self._item_create,
            "conversation.item.retrieve": self._item_retrieve,
            "conversation.item.truncate": self._item_truncate,
            "conversation.item.delete": self._item_delete,
            "response.create": self._response_create,
            "response.cancel": self._response_cancel,
            "output_audio_buffer.clear": self._output_audio_buffer_clear,
        }
        self._input_settings()

    # ---- entry points --------------------------------------------------------------------

    def connected(self) -> list[Event]:
        """The first server event of a connection."""
        return [self._ev.event("session.created", session=self.session)]

    def handle(self, event: Any) -> list[Event]:
        """Apply one parsed client event; invalid ones yield an `error` and change nothing."""
        client_event_id = None
        try:
            if not isinstance(event, dict):
                raise ClientError(
                    "Invalid client event: expected a JSON object.", code="invalid_type"
                )
            raw_id = event.get("event_id")
            client_event_id = raw_id if isinstance(raw_id, str) else None
            kind = event.get("type")
            if not isinstance(kind, str):
                raise ClientError(
                    "Missing required parameter: 'type'.",
                    code="missing_required_parameter",
                    param="type",
                )
            handler = self._handlers.get(kind)
            if handler is None:
                supported = ", ".join(f"'{name}'" for name in self._handlers)
                raise ClientError(
                    f"Invalid value: '{kind}'. Supported values are: {supported}.", param="type"
                )
            return handler(event)
        except ClientError as exc:
            return [self.error(exc, client_event_id)]

    def invalid_json(self, detail: str) -> list[Event]:
        """A text frame that is not JSON."""
        return [
            self.error(
                ClientError(
                    f"We could not parse the JSON body of your request. ({detail})",
                    code="invalid_json",
                )
            )
        ]

    def error(self, exc: ClientError, client_event_id: str | None = None) -> Event:
        """An `error` server event for `exc`."""
        return self._ev.error(exc, client_event_id)

    @property
    def mode(self) -> Mode:
        """How this session behaves."""
        return self._mode or self.config.mode

    def expire(self) -> list[Event]:
        """The session reached its maximum duration: the `session_expired` error, after which
        the binding closes the socket (1000). A running response ends without closing events."""
        self.response = None
        message = session_expired_message(3600.0 if self.max_seconds is None else self.max_seconds)
        return [self.error(ClientError(message, code="session_expired"))]

    def advance(self) -> list[Event]:
        """One pacing step of the active response: the next delta(s), and its end if reached."""
        stream = self.response
        if stream is None:
            return []
        return stream.step(self._ev) + self._after_step(stream)

    def advance_serialised(self) -> list[bytes]:
        """`advance`, its events as JSON texts; an audio step's are built by hand, unparsed."""
        stream = self.response
        if stream is None:
            return []
        if stream.modality != "audio" or stream.mcp_calls:
            return [orjson.dumps(event) for event in self.advance()]
        out = stream.step_serialised(self._ev)
        after = self._after_step(stream)
        if after:
            out += [orjson.dumps(event) for event in after]
        return out

    def _after_step(self, stream: ResponseStream) -> list[Event]:
        """What follows a pacing step: the end of the response, or the abort of a drop test."""
        if stream.modality == "audio" and stream.next_chunk:
            self.audio_produced = True
        if stream.exhausted:
            return self._finish("completed")
        if stream.drop_after is not None and stream.next_chunk >= stream.drop_after:
            self.abort_requested = True
            self.response = None
        return []

    # ---- session and input audio ---------------------------------------------------------

    def _session_update(self, event: Event) -> list[Event]:
        if "session" not in event:
            raise missing("session")
        old_tools = self.session.get("tools")
        self.session = apply_session_update(
            self.session, event["session"], audio_produced=self.audio_produced
        )
        self._input_settings()
        events = [self._ev.event("session.updated", session=self.session)]
        for tool in added_mcp_servers(old_tools, self.session.get("tools")):
            label = tool["server_label"]
            names = self.config.mcp_tools.get(label)
            item, listed = mcp_list_tools(
                self._ev,
                self._ev.new_id("item"),
                label,
                None if names is None else mcp_allowed(tool, names),
                self._last_item_id(),
            )
            self.items[item.id] = item
            events += listed
        return events

    def _append(self, event: Event) -> list[Event]:
        audio = require(event, "audio", str)
        try:
            raw = pybase64.b64decode(audio, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise ClientError(
                "Invalid 'audio'. Expected base64-encoded audio bytes.", param="audio"
            ) from exc
        return self.append_audio(raw)

    def append_audio(self, raw: bytes) -> list[Event]:
        """Input audio, already decoded from base64: `input_audio_buffer.append` without the
        parsing (a lean binding, on the hottest path, calls this directly)."""
        pcm, rate = self.input.decode(raw, self._input_format)
        ms = len(pcm) * 500.0 / rate
        self._buffer_ms += ms
        self._input_ms_total += ms
        td = self._turn_detection
        transitions = self._vad.feed(pcm, rate, self._silence_ms, detect=td is not None)
        if not transitions:
            return []
        assert td is not None  # transitions only come with detection on
        out: list[Event] = []
        for transition in transitions:
            if transition.started:
                out += self._speech_started(transition.ms, td)
            else:
                out += self._speech_stopped(transition.ms, td)
        return out

    def _input_settings(self) -> None:
        """What every append reads, looked up once per session update instead of per append."""
        audio_in = self.session["audio"]["input"]
        self._input_format: dict[str, Any] = audio_in["format"]
        td = audio_in.get("turn_detection")
        self._turn_detection: dict[str, Any] | None = td
        self._silence_ms = int(td.get("silence_duration_ms") or 500) if td else 500

    def _speech_started(self, onset_ms: int, td: dict[str, Any]) -> list[Event]:
        item_id = self._speech_item_id = self._ev.new_id("item")
        prefix = td.get("prefix_padding_ms")
        start = max(0, onset_ms - int(300 if prefix is None else prefix))
        events = [
            self._ev.event(
                "input_audio_buffer.speech_started", audio_start_ms=start, item_id=item_id
            )
        ]
        stream = self.response
        if td.get("interrupt_response", True) and stream is not None and stream.in_conversation:
            events += self._finish("cancelled", reason="turn_detected")
        return events

    def _speech_stopped(self, end_ms: int, td: dict[str, Any]) -> list[Event]:
        item_id = self._speech_item_id or self._ev.new_id("item")
        self._speech_item_id = None
        events = [
            self._ev.event(
                "input_audio_buffer.speech_stopped", audio_end_ms=end_ms, item_id=item_id
            )
        ]
        events += self._commit(item_id)
        # With interrupt_response off the model may still be talking: no second response then.
        if td.get("create_response", True) and self.response is None:
            events += self._start_response({}, explicit=False)
        return events

    def _commit(self, item_id: str) -> list[Event]:
        previous = self._last_item_id()
        item = Item(item_id, "message", "user", [{"type": "input_audio", "transcript": None}])
        self.items[item_id] = item
        self._buffer_ms = 0.0
        events = [
            self._ev.event(
                "input_audio_buffer.committed", item_id=item_id, previous_item_id=previous
            ),
            self._ev.event("conversation.item.added", item=item.wire(), previous_item_id=previous),
            self._ev.event("conversation.item.done", item=item.wire(), previous_item_id=previous),
        ]
        if self.session["audio"]["input"].get("transcription"):
            transcripts = self.config.caller_transcripts or ("",)
            text = transcripts[next(self._transcripts) % len(transcripts)]
            events += item.transcribed(self._ev, text)
        return events

    def _commit_by_client(self, event: Event) -> list[Event]:
        if self._buffer_ms < 100.0:
            raise ClientError(
                "Error committing input audio buffer: buffer too small. Expected at least 100ms "
                f"of audio, but buffer only has {self._buffer_ms:.2f}ms of audio.",
                code="input_audio_buffer_commit_empty",
            )
        item_id = self._speech_item_id if self._vad.in_speech else None
        self._vad.reset()
        self._speech_item_id = None
        return self._commit(item_id or self._ev.new_id("item"))

    def _clear(self, event: Event) -> list[Event]:
        self._buffer_ms = 0.0
        self._vad.reset()
        self._speech_item_id = None
        return [self._ev.event("input_audio_buffer.cleared")]

    # ---- conversation items --------------------------------------------------------------

    def _item_create(self, event: Event) -> list[Event]:
        raw = require(event, "item", dict)
        item_id = raw.get("id") or self._ev.new_id("item")
        if not isinstance(item_id, str) or item_id in self.items:
            raise ClientError(f"Invalid 'item.id': '{item_id}' is already in use.", param="item.id")
        answers = raw.get("type") == "function_call_output"
        item = item_from_client(raw, item_id, call_ids=self._known_call_ids() if answers else None)
        previous = self._last_item_id()
        self.items[item_id] = item
        return [
            self._ev.event("conversation.item.added", item=item.wire(), previous_item_id=previous),
            self._ev.event("conversation.item.done", item=item.wire(), previous_item_id=previous),
        ]

    def _item_retrieve(self, event: Event) -> list[Event]:
        item = self._lookup(require(event, "item_id", str), "retrieving")
        return [self._ev.event("conversation.item.retrieved", item=item.wire())]

    def _item_delete(self, event: Event) -> list[Event]:
        item_id = require(event, "item_id", str)
        self._lookup(item_id, "deleting")
        del self.items[item_id]
        return [self._ev.event("conversation.item.deleted", item_id=item_id)]

    def _item_truncate(self, event: Event) -> list[Event]:
        item_id = require(event, "item_id", str)
        content_index = require(event, "content_index", int)
        audio_end_ms = require(event, "audio_end_ms", int)
        if audio_end_ms < 0:
            raise ClientError(
                "Invalid 'audio_end_ms': integer below minimum value. Expected a value >= 0, "
                f"but got {audio_end_ms} instead.",
                code="integer_below_min_value",
                param="audio_end_ms",
            )
        item = self._lookup(item_id, "truncating")
        audio_ms_before = item.audio_ms
        item.truncate(content_index, audio_end_ms)
        self.truncations.append(
            {
                "item_id": item_id,
                "content_index": content_index,
                "audio_end_ms": audio_end_ms,
                "audio_ms_before": audio_ms_before,
                "time": time.monotonic(),
            }
        )
        return [
            self._ev.event(
                "conversation.item.truncated",
                item_id=item_id,
                content_index=content_index,
                audio_end_ms=audio_end_ms,
            )
        ]

    # ---- responses -----------------------------------------------------------------------

    def _response_create(self, event: Event) -> list[Event]:
        params = event.get("response", {})
        if not isinstance(params, dict):
            raise ClientError("Invalid type for 'response': expected an object.", param="response")
        if self.response is not None:
            raise ClientError(
                "Conversation already has an active response in progress: "
                f"{self.response.id}. Wait until the response is finished before creating a new "
                "one.",
                code="conversation_already_has_active_response",
            )
        params = dict(params)
        if "output_modalities" in params:
            params["output_modalities"] = validate_output_modalities(
                params["output_modalities"], "response.output_modalities"
            )
        output = (params.get("audio") or {}).get("output") or {}
        if "format" in output:
            validate_audio_format(output["format"], "response.audio.output.format")
        if "tools" in params:
            params["tools"] = validate_tools(params["tools"], "response.tools")
        if "tool_choice" in params:
            params["tool_choice"] = validate_tool_choice(
                params["tool_choice"], "response.tool_choice"
            )
        if params.get("conversation", "auto") not in ("auto", "none"):
            raise ClientError(
                "Invalid value for 'response.conversation'. Supported values are: 'auto' and "
                "'none'.",
                param="response.conversation",
            )
        return self._start_response(params, explicit=True)

    def _response_cancel(self, event: Event) -> list[Event]:
        wanted = event.get("response_id")
        if self.response is None or (wanted is not None and wanted != self.response.id):
            raise ClientError(
                "Cancellation failed: no active response found", code="response_cancel_not_active"
            )
        return self._finish("cancelled", reason="client_cancelled")

    def _output_audio_buffer_clear(self, event: Event) -> list[Event]:
        raise ClientError(
            "output_audio_buffer.clear is only supported for WebRTC and SIP connections.",
            param="type",
        )

    def _start_response(self, params: dict[str, Any], *, explicit: bool) -> list[Event]:
        config, session, mode = self.config, self.session, self.mode
        turn = self.responses_started
        self.responses_started += 1
        requested = list(params.get("output_modalities") or session["output_modalities"])
        modality = requested[0]
        if mode is Mode.ALWAYS_TEXT or (
            mode is Mode.STICKY_TEXT
            and (turn == 0 or any(i.text_only_assistant for i in self.items.values()))
        ):
            modality = "text"
        instructions = params.get("instructions") if explicit else None
        last = self.items.get(self._last_item_id() or "")
        after_output = last is not None and last.type == "function_call_output"
        calls: Sequence[SimToolCall] = ()
        if not instructions and not after_output:
            calls = config.tool_calls.get(self._answers, ())
            self._answers += 1
        mcp_calls = [call for call in calls if call.server_label]
        function_calls = [call for call in calls if not call.server_label]
        text = self._reply_text(instructions, last if after_output else None, mcp_calls)
        has_message = bool(text) or not calls
        output = (params.get("audio") or {}).get("output") or {}
        session_out = session["audio"]["output"]
        audio_format = (
            validate_audio_format(output["format"], "format")
            if "format" in output
            else session_out["format"]
        )
        render, ready = reply_renderer(
            config.reply_audio,
            turn,
            text,
            audio_format,
            config.chunk_ms,
            reply_turns=config.reply_turns,
        )
        if not has_message:
            ready = EncodedAudio((), (), bytes_per_ms(audio_format), ())
        in_conversation = params.get("conversation", "auto") != "none"
        item = Item(
            self._ev.new_id("item"),
            "message",
            "assistant",
            [],
            status="in_progress",
            bytes_per_ms=bytes_per_ms(audio_format),
        )
        stream = ResponseStream(
            id=self._ev.new_id("resp"),
            item=item,
            modality=modality,
            requested=requested,
            text=text,
            audio_format=audio_format,
            voice=output.get("voice", session_out.get("voice")),
            conversation=self.items if in_conversation else None,
            metadata=params.get("metadata"),
            render=render,
            audio=ready if modality == "audio" else None,
            drop_after=(
                config.drop_after_deltas if mode is Mode.DROP_MID_RESPONSE and turn == 0 else None
            ),
            mcp_calls=mcp_calls,
            function_calls=function_calls,
            has_message=has_message,
            mcp_call_ms=config.mcp_call_ms,
        )
        self.response = stream
        return stream.opening(self._ev)

    def _reply_text(
        self, instructions: Any, tool_output: Item | None, mcp_calls: Sequence[SimToolCall]
    ) -> str:
        """The last quoted line of explicit instructions ("say exactly"); else, after a tool
        result (a `function_call_output`, or this response's MCP calls), `tool_reply` if set;
        else the next reply."""
        if isinstance(instructions, str):
            quoted = _QUOTED.findall(instructions)
            if quoted:
                return str(quoted[-1])
        tool_reply = self.config.tool_reply
        if tool_reply is not None and tool_output is not None:
            call_id = tool_output.extra.get("call_id")
            name = next(
                (
                    str(item.extra.get("name", ""))
                    for item in reversed(self.items.values())
                    if item.type == "function_call" and item.extra.get("call_id") == call_id
                ),
                "",
            )
            return tool_reply(name, str(tool_output.extra.get("output", "")))
        if tool_reply is not None and mcp_calls:
            call = mcp_calls[-1]
            return tool_reply(call.name, call.error or call.output)
        replies = self.config.replies or ("",)
        text = replies[self._reply_index % len(replies)]
        self._reply_index += 1
        return text

    def _finish(self, status: str, *, reason: str | None = None) -> list[Event]:
        """End the active response as `completed` or `cancelled`, with its closing events."""
        stream = self.response
        assert stream is not None
        self.response = None
        events: list[Event] = []
        if status == "cancelled" and stream.modality == "audio" and not stream.mcp_calls:
            # Deltas already in flight when the cancel arrived still reach the client.
            for _ in range(self.config.late_deltas_after_cancel):
                if stream.exhausted:
                    break
                events += stream.step(self._ev)
        text_in = len(str(self.session.get("instructions") or "")) // 4 + 10
        usage = stream.usage(text_in, int(self._input_ms_total / 100))
        return events + stream.closing(self._ev, status, reason=reason, usage=usage)

    # ---- helpers -------------------------------------------------------------------------

    def _last_item_id(self) -> str | None:
        return next(reversed(self.items), None)

    def _known_call_ids(self) -> set[str] | None:
        """The call ids a `function_call_output` may answer: those of the conversation's
        function calls. None (anything goes) while the session uses no tools at all, so
        tool-less sessions keep accepting orphan outputs as the simulator always has."""
        call_ids = {
            str(item.extra.get("call_id"))
            for item in self.items.values()
            if item.type == "function_call"
        }
        if not call_ids and not self.session.get("tools"):
            return None
        return call_ids

    def _lookup(self, item_id: str, action: str) -> Item:
        item = self.items.get(item_id)
        if item is None:
            raise ClientError(
                f"Error {action} item: the item with id '{item_id}' does not exist.",
                param="item_id",
            )
        return item
