"""What a caller hears when the assistant cannot take the call: a profile's `fallback` (the model
cannot be reached) and its `busy` answer (the process is at BRIDGE_MAX_CALLS).

Both are parsed with the rest of the profile (bridge.profiles) and fixed when the call starts.
"""

from __future__ import annotations

import dataclasses

from twilio.twiml.voice_response import VoiceResponse

from bridge import twilio
from bridge.after_stream import NextStep

DEFAULT_FALLBACK_SAY = "Sorry, our assistant is unavailable right now. Please call again later."


@dataclasses.dataclass(frozen=True, slots=True)
class Fallback:
    """Said (and maybe dialled) when the Realtime service cannot be reached for the call."""

    say: str = DEFAULT_FALLBACK_SAY
    dial: str = ""  # E.164; empty: the call ends after `say`

    def next_step(self) -> NextStep:
        """The `<Connect action>` answer: `say`, then a person at `dial`, or a hang-up."""
        if self.dial:
            return NextStep(action="dial", number=self.dial, say=self.say)
        return NextStep(action="hangup", say=self.say)

    def twiml(self) -> str:
        return self.next_step().twiml()


@dataclasses.dataclass(frozen=True, slots=True)
class Busy:
    """The voice webhook's answer while the process is full: a sentence and a hang-up, or busy."""

    say: str = ""  # empty: `<Reject reason="busy"/>`, the caller hears a busy tone

    def twiml(self, *, outbound: bool = False) -> str:
        """`<Say>` then `<Hangup/>`, else `<Reject reason="busy"/>`; a call we placed cannot be
        rejected, so without a sentence it is hung up."""
        if not self.say and not outbound:
            return twilio.reject_twiml("busy")
        response = VoiceResponse()
        if self.say:
            response.say(self.say)
        response.hangup()
        return str(response)
