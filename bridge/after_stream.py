"""What Twilio does once a call's Media Stream has ended: the `<Connect action>` answer.

The call decides (`NextStep`) and saves it before it closes the stream; Twilio then POSTs the
action URL, maybe to another worker or replica, which loads the step and answers its TwiML.
`MemoryNextSteps` serves one process; the call log's `StoredNextSteps` (bridge.store) shares
steps through the database. A call with no saved step is hung up.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any, Literal, Protocol

from twilio.twiml.voice_response import Dial, VoiceResponse

ACTION_PATH = "/twilio/stream-ended"
KEEP_SECONDS = 3600.0  # Twilio asks within seconds; steps are kept an hour, then pruned


@dataclasses.dataclass(frozen=True, slots=True)
class NextStep:
    """`hangup`, or `dial` a number (after an optional `say`)."""

    action: Literal["hangup", "dial"] = "hangup"
    number: str = ""
    say: str = ""
    timeout_seconds: int = 30
    caller_id: str = ""

    def twiml(self) -> str:
        response = VoiceResponse()
        if self.say:
            response.say(self.say)
        if self.action == "dial" and self.number:
            options: dict[str, Any] = {"timeout": self.timeout_seconds}
            if self.caller_id:
                options["caller_id"] = self.caller_id
            dial = Dial(**options)
            dial.number(self.number)
            response.append(dial)
        response.hangup()  # after a <Dial> that ended (or never connected) the call is over
        return str(response)

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> NextStep:
        data = json.loads(text)
        if not isinstance(data, dict):
            raise ValueError("a next step is a JSON object")
        fields = {field.name for field in dataclasses.fields(cls)}
        return cls(**{key: value for key, value in data.items() if key in fields})


HANGUP = NextStep()


class NextSteps(Protocol):
    """Where calls leave their next step for the action request."""

    async def save(self, call_sid: str, step: NextStep) -> None:
        """Store the step; raises on failure (the caller then hears a hang-up)."""

    async def load(self, call_sid: str) -> NextStep | None:
        """The saved step, or None."""


class MemoryNextSteps:
    """One process's steps (tests, the demo, a bridge without a shared database)."""

    def __init__(self, keep: int = 10_000) -> None:
        self._steps: dict[str, NextStep] = {}
        self._keep = keep

    async def save(self, call_sid: str, step: NextStep) -> None:
        self._steps[call_sid] = step
        while len(self._steps) > self._keep:
            self._steps.pop(next(iter(self._steps)))

    async def load(self, call_sid: str) -> NextStep | None:
        return self._steps.get(call_sid)
