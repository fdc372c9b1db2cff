"""Call records -> table rows (pure functions), honouring the profile's privacy switches.

A profile with `keep_transcripts = false` leaves turn text and tool call arguments and results
NULL, and text is taken out of event details, so no words of that call reach the database or
the live feed. A profile's `redact` kinds (phone, card, email) are replaced here in every text
that is kept, so the database, the live feed, the API and the post-call webhook never hold them.
"""

from __future__ import annotations

import email.utils
import time
from collections.abc import Mapping
from typing import Any

from bridge.record import CallEvent, CallRecord, ToolCall, Turn
from bridge.redact import redact, redact_json
from bridge.store.pricing import PriceTable
from bridge.store.schema import ERROR_KINDS

PRIVATE_KEYS = frozenset({"text", "transcript", "delta", "instructions"})
FINAL_STATUSES = ("completed", "busy", "no-answer", "canceled", "failed")
STATUS_PARAMS = (  # Twilio callback parameters worth keeping with the status event
    "CallStatus",
    "CallDuration",
    "StreamEvent",
    "StreamError",
    "StreamSid",
    "ErrorCode",
    "ErrorMessage",
    "SipResponseCode",
    "AnsweredBy",
    "Reason",
)


def call_row(record: CallRecord, prices: PriceTable, instance: str) -> dict[str, Any]:
    """Everything about the call that the record knows (not Twilio's status: see status_row)."""
    ended = record.ended_at
    return {
        "call_sid": record.call_sid,
        "stream_sid": record.stream_sid,
        "direction": record.direction,
        "from_number": record.from_number,
        "to_number": record.to_number,
        "profile": record.profile,
        "model": record.model,
        "voice": record.voice,
        "keep_transcripts": record.keep_transcripts,
        "started_at": record.started_at,
        "answered_at": record.started_at,  # <Connect><Stream> runs once Twilio has answered
        "ended_at": ended,
        "duration_s": round(record.duration, 3) if ended is not None else None,
        "end_reason": str(record.end_reason) if record.end_reason is not None else None,
        "end_detail": record.end_detail[:2000],
        "frames_in": record.frames_in,
        "frames_out": record.frames_out,
        "barge_ins": record.barge_ins,
        "text_only_recoveries": record.text_only_recoveries,
        "protocol_errors": record.protocol_errors,
        "errors": sum(record.events.kinds[kind] for kind in ERROR_KINDS),
        "usage": dict(record.usage),
        "cost_usd": prices.cost(record.model, record.usage),
        "tool_calls": record.tool_calls.total,
        "transfer_to": record.transfer_to[:64],
        "transfer_number": record.transfer_number[:64],
        "recording": record.recording or None,
        "recording_bytes": record.recording_bytes or None,
        "instance": instance,
        "updated_at": time.time(),
    }


def turn_row(record: CallRecord, seq: int, turn: Turn) -> dict[str, Any]:
    return {"call_sid": record.call_sid, "seq": seq, **turn_fields(record, turn)}


def turn_fields(record: CallRecord, turn: Turn) -> dict[str, Any]:
    """A turn as stored and as streamed live; no text when the profile keeps no transcripts."""
    return {
        "item_id": turn.item_id,
        "role": turn.role,
        "source": turn.source,
        "started_at": turn.started_at,
        "ended_at": turn.ended_at,
        "text": (
            redact(turn.text, record.redact, partial=turn.ended_at is None)
            if record.keep_transcripts
            else None
        ),
        "interrupted": turn.interrupted,
        "heard_ms": turn.heard_ms,
        "audio_ms": round(turn.audio_ms, 1),
        "latency_ms": turn.latency_ms,
    }


def tool_call_row(record: CallRecord, seq: int, tool_call: ToolCall) -> dict[str, Any]:
    return {"call_sid": record.call_sid, "seq": seq, **tool_call_fields(record, tool_call)}


def tool_call_fields(record: CallRecord, tool_call: ToolCall) -> dict[str, Any]:
    """A tool call as stored and as streamed live; no arguments or result (the caller's words)
    when the profile keeps no transcripts."""
    keep = record.keep_transcripts
    kinds = record.redact
    return {
        "call_id": tool_call.call_id[:128],
        "name": tool_call.name[:128],
        "kind": tool_call.kind[:32],
        "arguments": redact(tool_call.arguments, kinds) if keep else None,
        "started_at": tool_call.started_at,
        "ended_at": tool_call.ended_at,
        "duration_ms": tool_call.duration_ms,
        "outcome": tool_call.outcome[:16],
        "result": redact(tool_call.result, kinds) if keep else None,
        "error": redact(tool_call.error[:2000], kinds),
        "holding_phrase": tool_call.holding_phrase,
    }


def event_row(record: CallRecord, seq: int, event: CallEvent) -> dict[str, Any]:
    return {
        "call_sid": record.call_sid,
        "seq": seq,
        "at": event.at,
        "ts": record.started_at + event.at,
        "kind": event.kind,
        "detail": event_detail(
            event.detail, keep_text=record.keep_transcripts, kinds=record.redact
        ),
    }


def event_detail(
    detail: Mapping[str, Any], *, keep_text: bool, kinds: frozenset[str] = frozenset()
) -> dict[str, Any]:
    """A JSON-safe copy of an event's detail, without words when transcripts are not kept, and
    with the profile's redactions applied to every string in it."""
    safe = redact_json(_jsonable(detail), kinds) if kinds else _jsonable(detail)
    assert isinstance(safe, dict)
    if not keep_text:
        for key in PRIVATE_KEYS & set(safe):
            safe[key] = None
    return safe


def _jsonable(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(key): _jsonable(item) for key, item in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [_jsonable(item) for item in value]
    if value is None or isinstance(value, bool | int | float | str):
        return value
    return str(value)


def status_rows(
    call_sid: str, status: str, params: Mapping[str, str], received_at: float
) -> tuple[dict[str, Any], dict[str, Any]]:
    """A Twilio status callback -> (partial call row, event row)."""
    when = _twilio_time(params.get("Timestamp")) or received_at
    stream_event = params.get("StreamEvent", "")
    is_call_status = "CallStatus" in params and not stream_event
    duration = params.get("CallDuration", "")
    rejected = status == "rejected"  # refused at the voice webhook (number routing)
    call = {
        "call_sid": call_sid,
        "started_at": when,
        "twilio_status": status if is_call_status else None,
        "twilio_duration_s": int(duration) if duration.isdigit() else None,
        "from_number": params.get("From", ""),
        "to_number": params.get("To", ""),
        "direction": params.get("Direction", ""),
        "profile": params.get("Profile", ""),
        "end_reason": "rejected" if rejected else None,
        "end_detail": params.get("Reason", "") if rejected else "",
        "updated_at": received_at,
    }
    failed = stream_event == "stream-error" or bool(params.get("ErrorCode"))
    event = {
        "call_sid": call_sid,
        "seq": None,
        "at": None,
        "ts": when,
        "kind": "stream_error" if failed else "twilio_status",
        "detail": {"status": status} | {k: params[k] for k in STATUS_PARAMS if params.get(k)},
    }
    return call, event


def _twilio_time(value: str | None) -> float | None:
    """Twilio's `Timestamp` (RFC 2822) -> epoch seconds."""
    if not value:
        return None
    try:
        return email.utils.parsedate_to_datetime(value).timestamp()
    except (TypeError, ValueError):
        return None
