"""Conversation items of the Realtime simulator, as GA shapes, and the server events' ids.

`item_from_client` validates a `conversation.item.create` as the GA service does; the tool
items (function calls, MCP calls and tool listings) are built here too.
"""

from __future__ import annotations

import dataclasses
import itertools
import secrets
from collections.abc import Collection, Sequence
from typing import Any

from bridge.sim.realtime_config import ClientError, missing

__all__ = [
    "Event",
    "EventFactory",
    "Item",
    "function_call_item",
    "item_from_client",
    "mcp_call_item",
    "mcp_list_tools",
]

Event = dict[str, Any]


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


def item_from_client(
    raw: dict[str, Any], item_id: str, *, call_ids: Collection[str] | None = None
) -> Item:
    """The item of a `conversation.item.create`, validated as GA does (assistant text is
    `output_text`, never the beta `text`). With `call_ids`, a `function_call_output` must
    answer one of those calls."""
    kind = raw.get("type")
    if kind in ("function_call", "function_call_output"):
        return _tool_item(raw, item_id, kind, call_ids)
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


def _tool_item(
    raw: dict[str, Any], item_id: str, kind: str, call_ids: Collection[str] | None
) -> Item:
    required = ("name", "arguments") if kind == "function_call" else ("call_id", "output")
    for name in (*required, "call_id"):
        if name not in raw:
            if name in required:
                raise missing(f"item.{name}")
        elif not isinstance(raw[name], str):
            raise ClientError(
                f"Invalid type for 'item.{name}': expected a string.",
                code="invalid_type",
                param=f"item.{name}",
            )
    if kind == "function_call_output" and call_ids is not None and raw["call_id"] not in call_ids:
        raise ClientError(
            f"No tool call found for function call output with call_id {raw['call_id']}.",
            param="item.call_id",
        )
    extra: dict[str, Any] = {
        k: raw[k] for k in ("call_id", "name", "arguments", "output") if k in raw
    }
    return Item(item_id, kind, None, [], extra=extra)


def function_call_item(item_id: str, call_id: str, name: str) -> Item:
    """A function call the model is about to stream (arguments still empty)."""
    extra = {"call_id": call_id, "name": name, "arguments": ""}
    return Item(item_id, "function_call", None, [], status="in_progress", extra=extra)


def mcp_call_item(item_id: str, server_label: str, name: str) -> Item:
    """An MCP tool call the service is about to run (arguments, output and error still empty)."""
    extra: dict[str, Any] = {
        "server_label": server_label,
        "name": name,
        "arguments": "",
        "approval_request_id": None,
        "output": None,
        "error": None,
    }
    return Item(item_id, "mcp_call", None, [], status="in_progress", extra=extra)


def mcp_list_tools(
    ev: EventFactory,
    item_id: str,
    server_label: str,
    tools: Sequence[str] | None,
    previous: str | None,
) -> tuple[Item, list[Event]]:
    """Listing one MCP server's tools: the item and its events, from `in_progress` to
    `completed` with the tools filled in (`tools`), or to `failed` (None)."""
    item = Item(
        item_id,
        "mcp_list_tools",
        None,
        [],
        status="in_progress",
        extra={"server_label": server_label, "tools": []},
    )
    events = [
        ev.event("mcp_list_tools.in_progress", item_id=item_id),
        ev.event("conversation.item.added", item=item.wire(), previous_item_id=previous),
    ]
    if tools is None:
        item.status = "incomplete"
        events.append(ev.event("mcp_list_tools.failed", item_id=item_id))
    else:
        item.status = "completed"
        item.extra["tools"] = [
            {
                "name": name,
                "description": f"{name} on {server_label} (simulated).",
                "input_schema": {"type": "object", "properties": {}},
                "annotations": None,
            }
            for name in tools
        ]
        events.append(ev.event("mcp_list_tools.completed", item_id=item_id))
    events.append(ev.event("conversation.item.done", item=item.wire(), previous_item_id=previous))
    return item, events
