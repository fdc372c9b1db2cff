"""The live feed: what is happening on calls right now, for dashboards and `bridge calls tail`.

Messages are plain dicts (`kind` + data) published by this instance's recorder or, through
the PostgreSQL relay, by other replicas. The feed keeps the recent state of every live call it
has heard of (so a new subscriber starts from a snapshot: its last turns, tool calls and events;
the whole call is in the call log) and fans messages out to subscribers, each with a bounded
buffer: a subscriber that falls behind is cut off and reconnects.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from collections.abc import Callable
from typing import Any

from bridge.record import CallEvent, CallRecord, ToolCall, Turn
from bridge.store.rows import event_detail, tool_call_fields, turn_fields

logger = logging.getLogger(__name__)

Message = dict[str, Any]
# The latest of each live call, for a new subscriber's snapshot (a long call must not grow the
# feed); the dashboard keeps what arrives after it.
KEEP_EVENTS = 20
KEEP_TURNS = 20
KEEP_TOOL_CALLS = 10


def call_info(record: CallRecord, instance: str) -> dict[str, Any]:
    return {
        "call_sid": record.call_sid,
        "stream_sid": record.stream_sid,
        "from_number": record.from_number,
        "to_number": record.to_number,
        "profile": record.profile,
        "direction": record.direction,
        "model": record.model,
        "started_at": record.started_at,
        "instance": instance,
    }


def turn_info(record: CallRecord, turn: Turn) -> dict[str, Any]:
    return turn_fields(record, turn)


def tool_call_info(record: CallRecord, tool_call: ToolCall) -> dict[str, Any]:
    return tool_call_fields(record, tool_call)


class Subscription:
    """One listener's queue; `lagged` once it fell more than `limit` messages behind."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.lagged = False
        self.closed = False
        self._queue: collections.deque[Message] = collections.deque()
        self._ready = asyncio.Event()

    def put(self, message: Message) -> None:
        if self.lagged or self.closed:
            return
        if len(self._queue) >= self.limit:
            self.lagged = True
            self._queue.clear()
        else:
            self._queue.append(message)
        self._ready.set()

    def close(self) -> None:
        self.closed = True
        self._ready.set()

    async def get(self) -> Message | None:
        """The next message; None once the subscription is over (lagged or closed)."""
        while not self._queue:
            if self.lagged or self.closed:
                return None
            self._ready.clear()
            await self._ready.wait()
        return self._queue.popleft()


class LiveFeed:
    """Live call state plus fan-out; all methods are sync and cheap (called on the audio path)."""

    def __init__(self, instance: str, *, subscriber_limit: int = 2000) -> None:
        self.instance = instance
        self.subscriber_limit = subscriber_limit
        # call_sid -> {call, turns, tool_calls, events}
        self.calls: dict[str, dict[str, Any]] = {}
        self._subscribers: set[Subscription] = set()
        self.closed = False
        self.relay: Callable[[Message], None] | None = None  # set by the PostgreSQL relay

    # ---- from this instance's recorder ---------------------------------------------------------

    def call_started(self, record: CallRecord) -> None:
        self.publish({"kind": "call_started", "call": call_info(record, self.instance)})

    def turn_updated(self, record: CallRecord, turn: Turn) -> None:
        self.publish({"kind": "turn", "call_sid": record.call_sid, "turn": turn_info(record, turn)})

    def tool_call_updated(self, record: CallRecord, tool_call: ToolCall) -> None:
        self.publish(
            {
                "kind": "tool_call",
                "call_sid": record.call_sid,
                "tool_call": tool_call_info(record, tool_call),
            }
        )

    def call_event(self, record: CallRecord, event: CallEvent) -> None:
        detail = event_detail(event.detail, keep_text=record.keep_transcripts, kinds=record.redact)
        self.publish(
            {
                "kind": "event",
                "call_sid": record.call_sid,
                "event": {"at": event.at, "kind": event.kind, "detail": detail},
            }
        )

    def call_ended(self, record: CallRecord) -> None:
        self.publish(
            {
                "kind": "call_ended",
                "call_sid": record.call_sid,
                "end_reason": str(record.end_reason) if record.end_reason else None,
                "duration": round(record.duration, 3),
                "ended_at": record.ended_at,
            }
        )

    def publish(self, message: Message, *, remote: bool = False) -> None:
        """Apply to the live state, hand to subscribers, and (if ours) to the relay."""
        self._apply(message)
        for subscription in self._subscribers:
            subscription.put(message)
        if not remote and self.relay is not None:
            self.relay(message)

    def _apply(self, message: Message) -> None:
        kind = message["kind"]
        if kind == "call_started":
            info = message["call"]
            entry = self.calls.setdefault(info["call_sid"], _empty())
            entry["call"] = dict(info)
            return
        call_sid = message.get("call_sid")
        if not isinstance(call_sid, str):
            return
        if kind == "call_ended":
            self.calls.pop(call_sid, None)
            return
        if call_sid not in self.calls:  # a replica's call whose start we missed
            self.calls[call_sid] = _empty()
            self.calls[call_sid]["call"] = {"call_sid": call_sid, "instance": message.get("origin")}
        entry = self.calls[call_sid]
        if kind == "turn":
            turn = message["turn"]
            _keep_latest(entry["turns"], turn["item_id"], turn, KEEP_TURNS)
        elif kind == "tool_call":
            tool_call = message["tool_call"]
            _keep_latest(entry["tool_calls"], tool_call["call_id"], tool_call, KEEP_TOOL_CALLS)
        elif kind == "event":
            entry["events"].append(message["event"])
            del entry["events"][:-KEEP_EVENTS]

    # ---- subscribers ---------------------------------------------------------------------------

    def subscribe(self) -> Subscription:
        """A new listener; after close() it gets nothing (its stream ends after the snapshot)."""
        subscription = Subscription(self.subscriber_limit)
        if self.closed:
            subscription.close()
        else:
            self._subscribers.add(subscription)
        return subscription

    def unsubscribe(self, subscription: Subscription) -> None:
        self._subscribers.discard(subscription)
        subscription.close()

    @property
    def subscribers(self) -> int:
        return len(self._subscribers)

    def snapshot(self) -> Message:
        """Every live call with its turns and tool calls so far, oldest call first."""
        calls = sorted(self.calls.values(), key=lambda c: c["call"].get("started_at") or 0.0)
        return {
            "kind": "snapshot",
            "at": time.time(),
            "calls": [
                {
                    "call": entry["call"],
                    "turns": list(entry["turns"].values()),
                    "tool_calls": list(entry["tool_calls"].values()),
                    "events": list(entry["events"]),
                }
                for entry in calls
            ],
        }

    def instance_calls(self, instance: str) -> list[str]:
        return [
            sid for sid, entry in self.calls.items() if entry["call"].get("instance") == instance
        ]

    def close(self) -> None:
        """End every subscription (their streams finish; clients reconnect elsewhere)."""
        self.closed = True
        for subscription in list(self._subscribers):
            subscription.close()
        self._subscribers.clear()


def _keep_latest(held: dict[str, Message], key: str, value: Message, keep: int) -> None:
    """Set `key` (an update keeps its place); past `keep`, the oldest goes."""
    held[key] = value
    if len(held) > keep:
        del held[next(iter(held))]


def _empty() -> dict[str, Any]:
    return {"call": {}, "turns": {}, "tool_calls": {}, "events": []}
