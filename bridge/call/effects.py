"""What the call session asks its shell to do: the effects a `CallSession` input returns.

Each input (a Twilio message, a model event, a timer, a shutdown, synthesised speech) returns a
list of effects, carried out in order. Order matters on the wire: the shell hands every
`ToCaller` to the caller socket's one writer and every `ToModel` to the model socket's one
writer, so the wire shows the order the session decided.
"""

from __future__ import annotations

import dataclasses
import enum
from typing import Any

from bridge.after_stream import NextStep
from bridge.record import CallEvent, EndReason, ToolCall, Turn
from bridge.tools.config import HttpTool


class Kind(enum.Enum):
    """What a batch for the caller holds; a `CLEAR` makes queued `AUDIO` moot (see writers)."""

    AUDIO = "audio"
    CLEAR = "clear"
    CONTROL = "control"


@dataclasses.dataclass(frozen=True, slots=True)
class ToCaller:
    """Messages for Twilio, written together and in this order (a media frame, then its mark)."""

    texts: tuple[str, ...]
    kind: Kind = Kind.AUDIO


@dataclasses.dataclass(frozen=True, slots=True)
class ToModel:
    """One event for the model's socket (a dict is serialised by the shell)."""

    event: dict[str, Any] | str


@dataclasses.dataclass(frozen=True, slots=True)
class Synthesize:
    """Speak `text` with the speech endpoint; answer with `speech_ready` or `speech_failed`."""

    request: int
    text: str
    voice: str


@dataclasses.dataclass(frozen=True, slots=True)
class Wake:
    """Call `CallSession.timer` at loop time `at` (or soon after)."""

    at: float


@dataclasses.dataclass(frozen=True, slots=True)
class TurnChanged:
    """A turn began, its text grew, or it ended: the live transcript needs it."""

    turn: Turn


@dataclasses.dataclass(frozen=True, slots=True)
class Noted:
    """Something worth keeping happened (barge-in, recovery, error): the call log needs it."""

    event: CallEvent


@dataclasses.dataclass(frozen=True, slots=True)
class RunTool:
    """Run an HTTP tool; answer with `CallSession.tool_done(call_id, result)`."""

    call_id: str
    tool: HttpTool
    arguments: dict[str, Any]


@dataclasses.dataclass(frozen=True, slots=True)
class ToolCallChanged:
    """A tool call started or finished: the call log needs it."""

    tool_call: ToolCall


@dataclasses.dataclass(frozen=True, slots=True)
class Reconnect:
    """Open a new model session after `delay` seconds (closing the current one, if any);
    answer with `CallSession.reconnected` or `CallSession.reconnect_failed`."""

    delay: float = 0.0


@dataclasses.dataclass(frozen=True, slots=True)
class Rollover:
    """Open the next model session beside the current one, then move the call to it (the
    current one nears its maximum age); answer with `connected`, or `rollover_failed`."""


@dataclasses.dataclass(frozen=True, slots=True)
class EndCall:
    """The call is over; the session ignores every input after this. `next_step` is what
    Twilio does after the stream (`<Connect action>`); None: hang up."""

    reason: EndReason
    detail: str = ""
    next_step: NextStep | None = None


Effect = (
    ToCaller
    | ToModel
    | Synthesize
    | Wake
    | TurnChanged
    | Noted
    | RunTool
    | ToolCallChanged
    | Reconnect
    | Rollover
    | EndCall
)


class CallEnded(Exception):
    """Raised inside the call's task group to end the call for `reason`."""

    def __init__(
        self, reason: EndReason, detail: str = "", next_step: NextStep | None = None
    ) -> None:
        super().__init__(f"{reason}: {detail}" if detail else str(reason))
        self.reason = reason
        self.detail = detail
        self.next_step = next_step
