"""Sans-I/O wire format of the caller simulator: the messages Twilio sends on a Media Stream, and
Twilio's checks on what the bridge sends back (warnings 31950/31951)."""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

__all__ = ["BridgeMessage", "InvalidMessage", "StreamMessages", "read_bridge_message"]

# Fields Twilio accepts at the top level of each message it receives (D.3); anything else is 31951.
_ALLOWED_KEYS: dict[str, frozenset[str]] = {
    "media": frozenset({"event", "streamSid", "media"}),
    "mark": frozenset({"event", "streamSid", "mark"}),
    "clear": frozenset({"event", "streamSid"}),
}


class StreamMessages:
    """Builds Twilio's messages for one stream; owns the per-message `sequenceNumber`.

    Numbers are strings on the wire; `connected` has none, `start` is "1", then +1 per message.
    """

    def __init__(self, stream_sid: str, account_sid: str, call_sid: str) -> None:
        self.stream_sid = stream_sid
        self.account_sid = account_sid
        self.call_sid = call_sid
        self.sequence = 0
        self._sid_json = json.dumps(stream_sid)
        self._media_head = f'","streamSid":{self._sid_json},"media":{{"track":"inbound","chunk":"'

    def _next(self) -> int:
        self.sequence += 1
        return self.sequence

    @staticmethod
    def connected() -> str:
        """The first message on every stream."""
        return '{"event":"connected","protocol":"Call","version":"1.0.0"}'

    def start(self, custom_parameters: Mapping[str, str]) -> str:
        """`start` with the call's identifiers, `<Parameter>` values and the µ-law format."""
        return json.dumps(
            {
                "event": "start",
                "sequenceNumber": str(self._next()),
                "streamSid": self.stream_sid,
                "start": {
                    "streamSid": self.stream_sid,
                    "accountSid": self.account_sid,
                    "callSid": self.call_sid,
                    "tracks": ["inbound"],
                    "customParameters": dict(custom_parameters),
                    "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1},
                },
            }
        )

    def media(self, chunk: int, timestamp_ms: int, audio: bytes) -> str:
        """One inbound frame of µ-law `audio`."""
        return self.media_payload(chunk, timestamp_ms, base64.b64encode(audio).decode("ascii"))

    def media_payload(self, chunk: int, timestamp_ms: int, payload: str) -> str:
        """One inbound frame, its audio already base64; formatted by hand from a prepared head
        because every call sends it 50 times a second."""
        self.sequence += 1
        return (
            f'{{"event":"media","sequenceNumber":"{self.sequence}{self._media_head}{chunk}",'
            f'"timestamp":"{timestamp_ms}","payload":"{payload}"}}}}'
        )

    def mark(self, name: str) -> str:
        """The echo of a mark the bridge sent."""
        return (
            f'{{"event":"mark","sequenceNumber":"{self._next()}","streamSid":{self._sid_json},'
            f'"mark":{{"name":{json.dumps(name)}}}}}'
        )

    def dtmf(self, digit: str) -> str:
        """A key the caller pressed (bidirectional streams only), as Twilio sends it."""
        dtmf = {"track": "inbound_track", "digit": digit}
        return (
            f'{{"event":"dtmf","streamSid":{self._sid_json},'
            f'"sequenceNumber":"{self._next()}","dtmf":{json.dumps(dtmf)}}}'
        )

    def stop(self) -> str:
        """Sent when the caller hangs up."""
        stop = {"accountSid": self.account_sid, "callSid": self.call_sid}
        return (
            f'{{"event":"stop","sequenceNumber":"{self._next()}","streamSid":{self._sid_json},'
            f'"stop":{json.dumps(stop)}}}'
        )


class InvalidMessage(ValueError):
    """A message Twilio would reject; `str()` starts with the Twilio warning code."""

    def __init__(self, code: int, problem: str) -> None:
        super().__init__(f"{code}: {problem}")
        self.code = code
        self.problem = problem


@dataclass(frozen=True, slots=True)
class BridgeMessage:
    """A valid message from the bridge."""

    event: Literal["media", "mark", "clear"]
    message: dict[str, Any]
    """As received, except that a media payload is replaced by `payload_bytes` (its length)."""
    audio: bytes = field(default=b"", repr=False)
    name: str = ""
    """The mark name (mark only)."""


def read_bridge_message(raw: str | bytes, stream_sid: str) -> BridgeMessage:
    """Parse and check one WebSocket message from the bridge; raises InvalidMessage."""
    if isinstance(raw, bytes):
        raise InvalidMessage(31950, f"binary frame ({len(raw)} bytes)")
    try:
        message = json.loads(raw)
    except ValueError as exc:
        raise InvalidMessage(31951, f"invalid JSON ({exc})") from None
    if not isinstance(message, dict):
        raise InvalidMessage(31951, "message is not a JSON object")
    event = message.get("event")
    allowed = _ALLOWED_KEYS.get(event) if isinstance(event, str) else None
    if allowed is None:
        raise InvalidMessage(31951, f"unknown event {event!r}")
    if message.get("streamSid") != stream_sid:
        raise InvalidMessage(31951, f"{event}: wrong or missing streamSid")
    extra = sorted(set(message) - allowed)
    if extra:
        raise InvalidMessage(31951, f"{event}: unexpected field(s) {extra}")
    if event == "media":
        media = message.get("media")
        if not isinstance(media, dict) or not isinstance(media.get("payload"), str):
            raise InvalidMessage(31951, "media: missing media.payload")
        try:
            audio = base64.b64decode(media["payload"], validate=True)
        except (binascii.Error, ValueError):
            raise InvalidMessage(31951, "media: payload is not valid base64") from None
        others = {k: v for k, v in media.items() if k != "payload"}
        message["media"] = {**others, "payload_bytes": len(audio)}
        return BridgeMessage("media", message, audio=audio)
    if event == "mark":
        mark = message.get("mark")
        if not isinstance(mark, dict) or not isinstance(mark.get("name"), str):
            raise InvalidMessage(31951, "mark: missing mark.name")
        return BridgeMessage("mark", message, name=mark["name"])
    return BridgeMessage("clear", message)
