"""What is remembered about a call: who, when, how long, turns, barge-ins, errors, usage.

`Recorder` is the interface the call log implements; the call never waits on storage beyond
handing a record over. Every turn, event and tool call is handed over as it happens, so a live
record keeps only the most recent ones (`History`): an hour-long call holds no more than a short
one.
"""

from __future__ import annotations

import collections
import dataclasses
import enum
import logging
import time
from collections.abc import Iterable, Mapping
from typing import Any, Protocol, TypeVar

logger = logging.getLogger(__name__)

_T = TypeVar("_T")

# What a live record keeps of each history; everything older has been handed to the recorder.
# Turns: a late transcript or mark echo names one of the last few, and a model session that
# takes a call over is told the recent conversation (bridge/call/context.py: its last 6000
# characters, about 32 turns of a sentence or two). Events and finished tool calls are never
# looked at again by the call; a few are kept for whoever reads the record afterwards.
KEEP_TURNS = 32
KEEP_EVENTS = 16
KEEP_TOOL_CALLS = 8


class EndReason(enum.StrEnum):
    """Why a call ended; one per call, written to the record and the end-of-call log line."""

    CALLER_HANGUP = "caller_hangup"
    CALLER_DISCONNECTED = "caller_disconnected"
    UPSTREAM_CLOSED = "upstream_closed"
    UPSTREAM_ERROR = "upstream_error"
    UPSTREAM_REJECTED = "upstream_rejected"
    UPSTREAM_UNAVAILABLE = "upstream_unavailable"
    UPSTREAM_FAILED = "upstream_failed"  # reconnecting to the model failed for reconnect_seconds
    CALLER_TIMEOUT = "caller_timeout"  # the Media Stream went silent: no message for seconds
    PROTOCOL_ERROR = "protocol_error"
    START_TIMEOUT = "start_timeout"
    NO_AUDIO = "no_audio"
    MAX_DURATION = "max_duration"
    SERVER_SHUTDOWN = "server_shutdown"
    ASSISTANT_HANGUP = "assistant_hangup"  # `end_call` (the model's tool or a keypad key)
    TRANSFERRED = "transferred"  # `transfer_call` (tool or keypad): Twilio dials a person next
    INTERNAL_ERROR = "internal_error"


@dataclasses.dataclass(slots=True)
class CallEvent:
    at: float  # seconds since the call started
    kind: str  # barge_in, text_only_recovery, upstream_error, protocol_error, ...
    detail: dict[str, Any]


@dataclasses.dataclass(slots=True)
class Turn:
    role: str  # "caller" or "assistant"
    item_id: str
    started_at: float  # seconds since the call started
    ended_at: float | None = None
    text: str = ""
    interrupted: bool = False
    heard_ms: int | None = None  # assistant turns: audio the caller heard (None: all of it)
    audio_ms: float = 0.0  # assistant turns: audio the model produced
    latency_ms: float | None = None  # assistant turns: caller stopped speaking -> audio playing
    source: str = "model"  # assistant turns: "model", "reask" or "tts"


@dataclasses.dataclass(slots=True)
class ToolCall:
    """One action or tool run on the call: `end_call`, `transfer_call`, an HTTP tool, an MCP
    tool the Realtime service ran, or a keypad key's action. Secrets are scrubbed out."""

    call_id: str  # the model's call_id (keypad: "key_<n>")
    name: str
    kind: str  # "end_call" | "transfer_call" | "http" | "mcp" | "keypad"
    arguments: str  # JSON text as the model sent it
    started_at: float  # seconds since the call started
    ended_at: float | None = None
    outcome: str = "running"  # "running", "ok", "error" or "cancelled" (the call ended first)
    result: str = ""  # the output handed to the model (truncated)
    error: str = ""  # what went wrong, when outcome is "error"
    holding_phrase: bool = False  # the caller was told to hold on while it ran

    @property
    def duration_ms(self) -> float | None:
        if self.ended_at is None:
            return None
        return round((self.ended_at - self.started_at) * 1000, 1)


class History(list[_T]):
    """The most recent part of one of a call's histories (turns, events, tool calls).

    Append-only: `append` keeps the last `keep` items and forgets older ones, which the
    recorder was handed when they happened. `total` counts every item ever appended; `seq(item)`
    is an item's position in the whole history (the call log's `seq`).
    """

    __slots__ = ("dropped", "keep")

    def __init__(self, items: Iterable[_T] = (), *, keep: int = KEEP_TURNS) -> None:
        super().__init__()
        self.keep = keep
        self.dropped = 0  # items forgotten, all before `self[0]`
        self.extend(items)

    def append(self, item: _T) -> None:
        super().append(item)
        if len(self) > self.keep:
            del self[0]
            self.dropped += 1

    def extend(self, items: Iterable[_T]) -> None:
        for item in items:
            self.append(item)

    @property
    def total(self) -> int:
        """Items appended so far, forgotten ones included."""
        return self.dropped + len(self)

    def seq(self, item: _T) -> int | None:
        """`item`'s position in the whole history, found by identity (newest first); None if
        it is not (or no longer) held."""
        for index in range(len(self) - 1, -1, -1):
            if self[index] is item:
                return self.dropped + index
        return None


class EventHistory(History[CallEvent]):
    """A call's recent events, and how many of each kind it has had (errors are counted)."""

    __slots__ = ("kinds",)

    def __init__(self, items: Iterable[CallEvent] = (), *, keep: int = KEEP_EVENTS) -> None:
        self.kinds: collections.Counter[str] = collections.Counter()
        super().__init__(items, keep=keep)

    def append(self, item: CallEvent) -> None:
        self.kinds[item.kind] += 1
        super().append(item)


def _turns() -> History[Turn]:
    return History(keep=KEEP_TURNS)


def _tool_calls() -> History[ToolCall]:
    return History(keep=KEEP_TOOL_CALLS)


@dataclasses.dataclass(slots=True)
class CallRecord:
    call_sid: str
    stream_sid: str
    from_number: str = ""
    to_number: str = ""
    profile: str = ""
    direction: str = "inbound"
    keep_transcripts: bool = True  # the profile's privacy switch; the store honours it
    redact: frozenset[str] = frozenset()  # the profile's redactions (bridge/redact.py)
    webhook_url: str = ""  # where the post-call webhook goes ("" = none)
    recording: str = ""  # the WAV's key in the recording store ("" = not recorded)
    recording_bytes: int = 0
    model: str = ""
    voice: str = ""
    started_at: float = dataclasses.field(default_factory=time.time)  # wall clock, epoch seconds
    ended_at: float | None = None
    end_reason: EndReason | None = None
    end_detail: str = ""
    frames_in: int = 0
    frames_out: int = 0
    barge_ins: int = 0
    text_only_recoveries: int = 0
    protocol_errors: int = 0
    # The most recent of each (see `History`); the recorder has every one.
    turns: History[Turn] = dataclasses.field(default_factory=_turns)
    events: EventHistory = dataclasses.field(default_factory=EventHistory)
    usage: dict[str, int] = dataclasses.field(default_factory=dict)
    tool_calls: History[ToolCall] = dataclasses.field(default_factory=_tool_calls)
    transfer_to: str = ""  # destination name of a transfer ("" when none)
    transfer_number: str = ""  # its number

    @property
    def duration(self) -> float:
        end = self.ended_at if self.ended_at is not None else time.time()
        return max(0.0, end - self.started_at)

    def summary(self) -> str:
        """The end-of-call log line: reason, duration and the counters (no numbers, no text)."""
        detail = f" detail={self.end_detail!r}" if self.end_detail else ""
        return (
            f"reason={self.end_reason} duration={self.duration:.1f}s frames_in={self.frames_in} "
            f"frames_out={self.frames_out} barge_ins={self.barge_ins} "
            f"text_only_recoveries={self.text_only_recoveries} "
            f"protocol_errors={self.protocol_errors}{detail}"
        )

    def add_usage(self, usage: dict[str, Any]) -> None:
        """Sum token counts from `response.done`, flattening the per-kind details."""
        for key, value in usage.items():
            if isinstance(value, int):
                self.usage[key] = self.usage.get(key, 0) + value
            elif isinstance(value, dict):
                for sub, count in value.items():
                    if isinstance(count, int):
                        name = f"{key}.{sub}"
                        self.usage[name] = self.usage.get(name, 0) + count


class Recorder(Protocol):
    """Where call records go. Every method is called on the event loop and must return at once:
    implementations queue work, they never block or await on the audio path."""

    def call_started(self, record: CallRecord) -> None: ...

    def call_event(self, record: CallRecord, event: CallEvent) -> None: ...

    def turn_updated(self, record: CallRecord, turn: Turn) -> None:
        """A turn began, its text grew, or it ended (live transcript)."""

    def tool_call_updated(self, record: CallRecord, tool_call: ToolCall) -> None:
        """A tool call started or finished."""

    def call_ended(self, record: CallRecord) -> None: ...

    def call_status(self, call_sid: str, status: str, params: Mapping[str, str]) -> None:
        """A Twilio status callback (call status, or a stream event) for `call_sid`."""


class MemoryRecorder:
    """Keeps the most recent records in memory (tests, the demo, and until the call log lands)."""

    def __init__(self, keep: int = 1000) -> None:
        self.keep = keep
        self.live: dict[str, CallRecord] = {}
        self.finished: list[CallRecord] = []
        self.statuses: list[tuple[str, str, dict[str, str]]] = []

    def call_started(self, record: CallRecord) -> None:
        self.live[record.call_sid] = record

    def call_event(self, record: CallRecord, event: CallEvent) -> None:
        logger.debug("call event %s %s", event.kind, event.detail)

    def turn_updated(self, record: CallRecord, turn: Turn) -> None:
        pass

    def tool_call_updated(self, record: CallRecord, tool_call: ToolCall) -> None:
        pass

    def call_status(self, call_sid: str, status: str, params: Mapping[str, str]) -> None:
        self.statuses.append((call_sid, status, dict(params)))

    def call_ended(self, record: CallRecord) -> None:
        self.live.pop(record.call_sid, None)
        self.finished.append(record)
        del self.finished[: -self.keep]

    def find(self, call_sid: str) -> CallRecord | None:
        for record in reversed(self.finished):
            if record.call_sid == call_sid:
                return record
        return self.live.get(call_sid)


class FanOutRecorder:
    """Hands every record to several recorders (the demo: memory for its report, and the log)."""

    def __init__(self, *recorders: Recorder) -> None:
        self.recorders = recorders

    def call_started(self, record: CallRecord) -> None:
        for recorder in self.recorders:
            recorder.call_started(record)

    def call_event(self, record: CallRecord, event: CallEvent) -> None:
        for recorder in self.recorders:
            recorder.call_event(record, event)

    def turn_updated(self, record: CallRecord, turn: Turn) -> None:
        for recorder in self.recorders:
            recorder.turn_updated(record, turn)

    def tool_call_updated(self, record: CallRecord, tool_call: ToolCall) -> None:
        for recorder in self.recorders:
            recorder.tool_call_updated(record, tool_call)

    def call_ended(self, record: CallRecord) -> None:
        for recorder in self.recorders:
            recorder.call_ended(record)

    def call_status(self, call_sid: str, status: str, params: Mapping[str, str]) -> None:
        for recorder in self.recorders:
            recorder.call_status(call_sid, status, params)
