"""The tool calls of one call, Sans-I/O: what each means, which run, when to hold the line.

`ToolCalls.decide` says what a function call of the model means (hang up or transfer once the
reply is heard, run an HTTP tool, or refuse it with an error for the model) and `key_exit` what
a keypad key bound to an action means; `CallSession` carries those out. The books: one
`ToolCall` per call_id (a call_id seen twice runs once), the HTTP tools still running and when a
holding phrase is due, secrets scrubbed out of everything recorded, the metrics of each call.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
from typing import Any

from bridge import metrics
from bridge.after_stream import HANGUP, NextStep
from bridge.call.recent import RecentKeys
from bridge.record import CallRecord, EndReason, ToolCall
from bridge.tools.config import END_CALL, TRANSFER_CALL, HttpTool, KeyAction, ProfileTools, scrub

HOLD_AFTER = 1.5  # a tool still running this long gets a holding phrase...
HOLD_GAP = 0.5  # ...or this long after the audio the caller is hearing has played out
RECHECK = 0.25  # while the caller talks or a response runs, look again this often
MAX_RECORDED_CHARS = 2000  # of arguments and results kept in the call log
SEEN_CALL_IDS = 64  # a call_id comes twice within one response (item done, response done)


@dataclasses.dataclass(frozen=True, slots=True)
class Exit:
    """How a closing call ends once its goodbye has been heard."""

    reason: EndReason
    detail: str = ""
    next_step: NextStep | None = None
    destination: str = ""  # a transfer's destination name
    via: str = "tool"  # what asked for it: "tool", "keypad" or "server"
    call: ToolCall | None = None  # the end_call / transfer_call that asked for it


SHUTDOWN = Exit(EndReason.SERVER_SHUTDOWN, "the server is shutting down", via="server")


@dataclasses.dataclass(frozen=True, slots=True)
class Refuse:
    """Answer the call with an error output; the model tells the caller."""

    message: str


@dataclasses.dataclass(frozen=True, slots=True)
class Run:
    """Run this HTTP tool with these arguments."""

    tool: HttpTool
    arguments: dict[str, Any]


@dataclasses.dataclass(frozen=True, slots=True)
class ExitAfterReply:
    """End the call (hang up, transfer) once the reply that asked for it has been heard."""

    exit: Exit


Decision = Refuse | Run | ExitAfterReply


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
        self._seen = RecentKeys(SEEN_CALL_IDS)
        self._keys = itertools.count(1)
        self.running: dict[str, Running] = {}
        self.held = False  # a holding phrase was asked for while the current tools run

    def kind_of(self, name: str) -> str:
        """`end_call` or `transfer_call` when the profile offers them; anything else is an
        HTTP tool, or refused as unknown by `decide`."""
        if name == END_CALL and self.tools.end_call:
            return END_CALL
        if name == TRANSFER_CALL and self.tools.transfer is not None:
            return TRANSFER_CALL
        return "http"

    def decide(self, call: ToolCall, arguments_text: str) -> Decision:
        """What the model's function call means."""
        arguments = parse_arguments(arguments_text)
        if arguments is None:
            return Refuse("the arguments are not a JSON object")
        if call.kind == END_CALL:
            reason = self.scrub(str(arguments.get("reason") or "")[:200])
            detail = "end_call" + (f": {reason}" if reason else "")
            return ExitAfterReply(Exit(EndReason.ASSISTANT_HANGUP, detail, HANGUP, call=call))
        transfer = self.tools.transfer
        if call.kind == TRANSFER_CALL and transfer is not None:
            destination = str(arguments.get("destination") or "")
            if destination not in transfer.destinations:
                known = ", ".join(sorted(transfer.destinations))
                return Refuse(f"unknown destination {destination!r:.80}; use one of: {known}")
            detail = f"transfer_call to {destination}"
            step = self._dial(destination)
            return ExitAfterReply(Exit(EndReason.TRANSFERRED, detail, step, destination, call=call))
        tool = self.tools.http_tool(call.name)
        if tool is None:
            return Refuse(f"there is no tool named {call.name!r:.80}")
        return Run(tool, arguments)

    def key_exit(self, key: str, action: KeyAction, at: float) -> Exit:
        """A keypad key bound to an action: recorded as a finished call, and how the call
        ends (at once)."""
        if action.action == "transfer" and self.tools.transfer is not None:
            destination = action.destination  # checked when the profile loaded
            call = self.keypad(key, TRANSFER_CALL, destination, at)
            detail = f"keypad {key}: transfer to {destination}"
            step = self._dial(destination)
            return Exit(EndReason.TRANSFERRED, detail, step, destination, "keypad", call)
        call = self.keypad(key, END_CALL, "", at)
        detail = f"keypad {key}: end_call"
        return Exit(EndReason.ASSISTANT_HANGUP, detail, HANGUP, via="keypad", call=call)

    def exiting(self, exit_: Exit) -> None:
        """The call ends this way: a transfer's destination goes on the record."""
        if exit_.reason is EndReason.TRANSFERRED and exit_.next_step is not None:
            self._record.transfer_to = exit_.destination
            self._record.transfer_number = exit_.next_step.number
            metrics.TRANSFERS.labels(via=exit_.via).inc()

    def _dial(self, destination: str) -> NextStep:
        transfer = self.tools.transfer
        assert transfer is not None
        number = transfer.destinations[destination]
        return NextStep("dial", number, transfer.say, transfer.timeout_seconds, transfer.caller_id)

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
        metrics.tool_call(self._metric_name(call), call.kind, call.outcome, seconds)
        return call

    def _metric_name(self, call: ToolCall) -> str:
        """The name as a metric label: a name the profile does not offer is the model's
        invention, and would grow the label set without bound."""
        if call.kind == "http" and self.tools.http_tool(call.name) is None:
            return "unknown"
        return call.name

    def cancel_running(self, at: float) -> list[ToolCall]:
        """The call ended with tools in flight: they are recorded as cancelled."""
        cancelled = []
        for running in self.running.values():
            call = running.call
            call.ended_at = at
            call.outcome = "cancelled"
            metrics.tool_call(self._metric_name(call), call.kind, call.outcome, None)
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
