"""Reading the call log: filtered, cursor-paginated call lists; one call with its turns, tool
calls and events.

Rows come back as plain dicts (JSON-ready; epoch seconds stay numbers). Pagination is keyset
on (started_at, call_sid), newest first, so pages stay stable while calls are being added.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import datetime
import json
import re
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from bridge.store.heard import split_heard
from bridge.store.schema import calls, events, tool_calls, turns, webhook_outbox

MAX_LIMIT = 500
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


class BadQuery(ValueError):
    """A filter or cursor the caller sent cannot be understood; the message says which."""


@dataclasses.dataclass(frozen=True, slots=True)
class CallFilter:
    number: str | None = None  # the called number (substring match)
    caller: str | None = None  # the calling number (substring match)
    profile: str | None = None
    since: float | None = None  # epoch seconds, on started_at
    until: float | None = None
    end_reason: str | None = None
    text: str | None = None  # words in any turn (case-insensitive)


@dataclasses.dataclass(frozen=True, slots=True)
class Page:
    calls: list[dict[str, Any]]
    next_cursor: str | None


@dataclasses.dataclass(frozen=True, slots=True)
class CallDetail:
    call: dict[str, Any]
    turns: list[dict[str, Any]]  # with heard/unheard split for interrupted replies
    events: list[dict[str, Any]]
    tool_calls: list[dict[str, Any]] = dataclasses.field(default_factory=list)  # as started

    def to_json(self) -> dict[str, Any]:
        return {
            "call": self.call,
            "turns": self.turns,
            "tool_calls": self.tool_calls,
            "events": self.events,
            # Where the call's WAV is served; null when the call was not recorded.
            "recording": (
                f"/api/calls/{self.call['call_sid']}/recording"
                if self.call.get("recording")
                else None
            ),
        }

    @property
    def keypresses(self) -> list[dict[str, Any]]:
        """The caller's keys (`dtmf` events): `at` and `digit`."""
        return [
            {"at": event["at"], "digit": str(event["detail"].get("digit", "?"))}
            for event in self.events
            if event["kind"] == "dtmf"
        ]

    def conversation(self) -> list[tuple[str, dict[str, Any]]]:
        """Turns in their order, with tool calls and keypresses placed between them by time:
        ("turn" | "tool_call" | "keypress", the dict)."""
        extras = sorted(  # stable: a key comes before the keypad action it started
            [("keypress", key) for key in self.keypresses]
            + [("tool_call", tool_call) for tool_call in self.tool_calls],
            key=lambda entry: _started(entry[1]),
        )
        merged: list[tuple[str, dict[str, Any]]] = []
        for turn in self.turns:
            while extras and _started(extras[0][1]) < turn["started_at"]:
                merged.append(extras.pop(0))
            merged.append(("turn", turn))
        return merged + extras


def _started(entry: dict[str, Any]) -> float:
    at = entry.get("started_at", entry.get("at"))
    return float(at) if at is not None else 0.0


def parse_duration(text: str) -> float:
    """ "90s", "15m", "1h", "30d", "2w" -> seconds."""
    match = _DURATION.match(text)
    if match is None:
        raise BadQuery(f"not a duration: {text!r} (use e.g. 90s, 15m, 1h, 30d)")
    return float(match[1]) * _UNITS[match[2]]


def parse_time(text: str, now: float) -> float:
    """A point in time: a duration ago ("1h"), epoch seconds, or ISO 8601 (UTC if no zone)."""
    text = text.strip()
    if _DURATION.match(text):
        return now - parse_duration(text)
    try:
        return float(text)
    except ValueError:
        pass
    try:
        moment = datetime.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise BadQuery(f"not a time: {text!r} (use 1h, epoch seconds or ISO 8601)") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=datetime.UTC)
    return moment.timestamp()


def encode_cursor(started_at: float, call_sid: str) -> str:
    raw = json.dumps([started_at, call_sid]).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[float, str]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        started_at, call_sid = json.loads(raw)
        return float(started_at), str(call_sid)
    except (ValueError, TypeError, binascii.Error):
        raise BadQuery("bad cursor") from None


def _like(text: str) -> str:
    escaped = text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped.lower()}%"


def _where(query: CallFilter) -> list[sa.ColumnElement[bool]]:
    conditions: list[sa.ColumnElement[bool]] = []
    if query.number:
        conditions.append(calls.c.to_number.like(_like(query.number), escape="\\"))
    if query.caller:
        conditions.append(calls.c.from_number.like(_like(query.caller), escape="\\"))
    if query.profile:
        conditions.append(calls.c.profile == query.profile)
    if query.since is not None:
        conditions.append(calls.c.started_at >= query.since)
    if query.until is not None:
        conditions.append(calls.c.started_at < query.until)
    if query.end_reason:
        conditions.append(calls.c.end_reason == query.end_reason)
    if query.text:
        said = sa.select(turns.c.call_sid).where(
            turns.c.call_sid == calls.c.call_sid,
            sa.func.lower(turns.c.text).like(_like(query.text), escape="\\"),
        )
        conditions.append(sa.exists(said))
    return conditions


async def list_calls(
    engine: AsyncEngine, query: CallFilter, *, limit: int = 50, cursor: str | None = None
) -> Page:
    """Calls matching `query`, newest first; `next_cursor` fetches the page after."""
    limit = max(1, min(limit, MAX_LIMIT))
    statement = sa.select(calls).where(*_where(query))
    if cursor:
        started_at, call_sid = decode_cursor(cursor)
        statement = statement.where(
            sa.or_(
                calls.c.started_at < started_at,
                sa.and_(calls.c.started_at == started_at, calls.c.call_sid < call_sid),
            )
        )
    statement = statement.order_by(calls.c.started_at.desc(), calls.c.call_sid.desc())
    async with engine.connect() as connection:
        result = await connection.execute(statement.limit(limit + 1))
        found = [dict(row._mapping) for row in result]
    more = len(found) > limit
    found = found[:limit]
    last = found[-1] if found else None
    next_cursor = encode_cursor(last["started_at"], last["call_sid"]) if more and last else None
    return Page(found, next_cursor)


async def get_call(engine: AsyncEngine, call_sid: str) -> CallDetail | None:
    """One call with its turns and tool calls (in order) and events (by time)."""
    async with engine.connect() as connection:
        row = (
            await connection.execute(sa.select(calls).where(calls.c.call_sid == call_sid))
        ).first()
        if row is None:
            return None
        turn_rows = await connection.execute(
            sa.select(turns).where(turns.c.call_sid == call_sid).order_by(turns.c.seq)
        )
        tool_call_rows = await connection.execute(
            sa.select(tool_calls)
            .where(tool_calls.c.call_sid == call_sid)
            .order_by(tool_calls.c.seq)
        )
        event_rows = await connection.execute(
            sa.select(events)
            .where(events.c.call_sid == call_sid)
            .order_by(events.c.ts, events.c.seq, events.c.id)
        )
        call = dict(row._mapping)
        return CallDetail(
            call,
            [_turn(dict(t._mapping)) for t in turn_rows],
            [_event(call, dict(e._mapping)) for e in event_rows],
            [_tool_call(dict(t._mapping)) for t in tool_call_rows],
        )


def _turn(turn: dict[str, Any]) -> dict[str, Any]:
    turn.pop("call_sid", None)
    text = turn.get("text")
    if turn["role"] == "assistant" and turn["interrupted"] and text is not None:
        split = split_heard(text, turn["heard_ms"], turn["audio_ms"])
        turn["heard_text"], turn["unheard_text"] = split.heard, split.unheard
        turn["heard_share"] = round(split.share, 3)
        turn["heard_estimated"] = split.estimated
    return turn


def _tool_call(tool_call: dict[str, Any]) -> dict[str, Any]:
    tool_call.pop("call_sid", None)
    tool_call.pop("seq", None)
    return tool_call


def _event(call: dict[str, Any], event: dict[str, Any]) -> dict[str, Any]:
    event.pop("call_sid", None)
    event.pop("id", None)
    if event.get("at") is None:  # Twilio callbacks: place them on the call's clock
        event["at"] = round(event["ts"] - call["started_at"], 3)
    return event


async def prune(engine: AsyncEngine, before: float) -> int:
    """Delete calls that started before `before` (epoch seconds), with their turns, tool calls,
    events and webhook deliveries (their recordings: `bridge.store.recordings.prune_calls`)."""
    old = sa.select(calls.c.call_sid).where(calls.c.started_at < before)
    async with engine.begin() as connection:
        # SQLite does not enforce the foreign keys' ON DELETE CASCADE: delete explicitly.
        await connection.execute(
            sa.delete(webhook_outbox).where(webhook_outbox.c.call_sid.in_(old))
        )
        await connection.execute(sa.delete(events).where(events.c.call_sid.in_(old)))
        await connection.execute(sa.delete(turns).where(turns.c.call_sid.in_(old)))
        await connection.execute(sa.delete(tool_calls).where(tool_calls.c.call_sid.in_(old)))
        result = await connection.execute(sa.delete(calls).where(calls.c.started_at < before))
    return int(result.rowcount)
