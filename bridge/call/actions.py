"""The tool calls of one call, Sans-I/O: which ran, which run, and when to hold the line.

`CallSession` decides what a function call does (hang up, transfer, run an HTTP tool, refuse);
this keeps the books: one `ToolCall` per call_id (a call_id seen twice runs once), the HTTP
tools still running and when a holding phrase is due, secrets scrubbed out of everything that is
recorded, and the metrics of each finished call.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
from typing import Any

from bridge import metrics
from bridge.record import CallRecord, ToolCall
from bridge.tools.config import ProfileTools, scrub

HOLD_AFTER = 1.5  # a tool still running this long gets a holding phrase...
HOLD_GAP = 0.5  # ...or this long after the audio the caller is hearing has played out
RECHECK = 0.25  # while the caller talks or a response runs, look again this often
MAX_RECORDED_CHARS = 2000  # of arguments and results kept in the call log


@dataclasses.dataclass(slots=True)
class Running:
    """An HTTP tool in flight."""

    call: ToolCall
    hold_at: float  # loop time at which a holding phrase is due (if still running)


class ToolCalls:
    """The books of one call's tool calls."""

    def __init__(self, tools: ProfileTools, record: CallRecord) -> None:
        self.tools = tools
        self._record = record
        self._secrets = tools.secrets()
        self._seen: set[str] = set()
        self._keys = itertools.count(1)
        self.running: dict[str, Running] = {}
        self.held = False  # a holding phrase was asked for while the current tools run

    def begin(
        self, call_id: str, name: str, kind: str, arguments: str, at: float
    ) -> ToolCall | None:
        """Record a new call; None if this call_id was seen before (it runs once)."""
        if call_id in self._seen:
            return None
        self._seen.add(call_id)
        call = ToolCall(call_id, name, kind, self._clip(arguments), at)
        self._record.tool_calls.append(call)
        return call

    def keypad(self, key: str, name: str, destination: str, at: float) -> ToolCall:
        """A keypad key's action: recorded as a finished call of kind `keypad`."""
        arguments = {"key": key} | ({"destination": destination} if destination else {})
        call = self.begin(f"key_{next(self._keys)}", name, "keypad", json.dumps(arguments), at)
        assert call is not None
        return self.finish(call, at, ok=True)

    def started(self, call: ToolCall, now: float) -> None:
        """An HTTP tool went out: it holds the line from now."""
        if not self.running:
            self.held = False
        self.running[call.call_id] = Running(call, now + HOLD_AFTER)

    def finish(
        self, call: ToolCall, at: float, *, ok: bool, result: str = "", error: str = ""
    ) -> ToolCall:
        """The call is over: outcome, result and error recorded (scrubbed), metrics counted."""
        self.running.pop(call.call_id, None)
        call.ended_at = at
        call.outcome = "ok" if ok else "error"
        call.result = self._clip(result)
        call.error = self._clip(error)
        seconds = at - call.started_at if call.kind in ("http", "mcp") else None
        metrics.tool_call(call.name, call.kind, call.outcome, seconds)
        return call

    def cancel_running(self, at: float) -> list[ToolCall]:
        """The call ended with tools in flight: they are recorded as cancelled."""
        cancelled = []
        for running in self.running.values():
            call = running.call
            call.ended_at = at
            call.outcome = "cancelled"
            metrics.tool_call(call.name, call.kind, call.outcome, None)
            cancelled.append(call)
        self.running.clear()
        return cancelled

    def holding_due(self, now: float) -> bool:
        """A tool has been running long enough that the caller must hear something."""
        if self.held:
            return False
        return any(running.hold_at <= now for running in self.running.values())

    def postpone_hold(self, until: float) -> None:
        for running in self.running.values():
            running.hold_at = max(running.hold_at, until)

    def next_hold(self) -> float | None:
        """When the next holding check is due (None: no tool waits for one)."""
        if self.held or not self.running:
            return None
        return min(running.hold_at for running in self.running.values())

    def holding(self) -> list[ToolCall]:
        """A holding phrase was asked for: every running tool is marked as held."""
        self.held = True
        calls = [running.call for running in self.running.values()]
        for call in calls:
            call.holding_phrase = True
        return calls

    def scrub(self, text: str) -> str:
        return scrub(text, self._secrets)

    def _clip(self, text: str) -> str:
        text = self.scrub(text)
        if len(text) > MAX_RECORDED_CHARS:
            return text[:MAX_RECORDED_CHARS] + " [truncated]"
        return text


def parse_arguments(arguments: str) -> dict[str, Any] | None:
    """The model's arguments as a JSON object ("" is an empty one); None if they are not."""
    if not arguments.strip():
        return {}
    try:
        value = json.loads(arguments)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def holding_instructions(base_instructions: str) -> str:
    """Per-response instructions for a holding phrase (they replace the session's, so the
    persona stays)."""
    return (
        f"{base_instructions}\n\nA lookup you started for the caller is still running. Tell "
        'the caller, in one short sentence such as "One moment while I check that for you.", '
        "that you are on it. Do not guess the result and do not call any tool."
    )


def error_output(message: str) -> str:
    return json.dumps({"error": message})
