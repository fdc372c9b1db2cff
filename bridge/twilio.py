"""Sans-I/O Twilio side: Media Stream messages <-> typed objects, and the TwiML we answer with.

No sockets here: `call.py` feeds text frames in and writes the strings produced here out.
"""

from __future__ import annotations

import binascii
import dataclasses
import json
import re
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import orjson
import pybase64
from twilio.twiml.voice_response import Connect, VoiceResponse

from bridge.after_stream import ACTION_PATH
from bridge.errors import ProtocolViolation

MEDIA_PATH = "/twilio/media"
# Twilio sends 20 ms (160 byte) frames; anything past one second is not a phone frame.
MAX_MEDIA_BYTES = 8000
MAX_MESSAGE_CHARS = 64 * 1024
ENCODING = "audio/x-mulaw"  # the only mediaFormat a Media Stream carries
SAMPLE_RATE = 8000
_SID = re.compile(r"^[A-Za-z0-9]{2,64}$")


@dataclasses.dataclass(frozen=True, slots=True)
class Connected:
    protocol: str


@dataclasses.dataclass(frozen=True, slots=True)
class Start:
    stream_sid: str
    call_sid: str
    account_sid: str
    custom_parameters: dict[str, str]
    encoding: str
    sample_rate: int


@dataclasses.dataclass(frozen=True, slots=True)
class Media:
    payload: bytes
    timestamp: int


@dataclasses.dataclass(frozen=True, slots=True)
class Mark:
    name: str


@dataclasses.dataclass(frozen=True, slots=True)
class Dtmf:
    digit: str


@dataclasses.dataclass(frozen=True, slots=True)
class Stop:
    pass


TwilioMessage = Connected | Start | Media | Mark | Dtmf | Stop


class BadStart(ProtocolViolation):
    """A `start` message we cannot serve a call from; `field` and `value` say what is wrong.

    Unlike a bad media frame, which is skipped, a bad `start` ends the call as a protocol error.
    """

    def __init__(self, field: str, value: object, problem: str) -> None:
        super().__init__(f"start.{field}: {problem}, got {value!r:.40}")
        self.field = field
        self.value = value


def _field(obj: Any, key: str, kind: type, where: str) -> Any:
    if not isinstance(obj, dict):
        raise ProtocolViolation(f"{where}: expected an object")
    value = obj.get(key)
    if not isinstance(value, kind):
        raise ProtocolViolation(f"{where}.{key}: expected {kind.__name__}, got {value!r:.40}")
    return value


def _start_field(start: dict[str, Any], key: str) -> str:
    value = start.get(key)
    if not isinstance(value, str) or not _SID.match(value):
        raise BadStart(key, value, "expected a SID (2-64 letters and digits)")
    return value


def _parse_start(data: dict[str, Any]) -> Start:
    start = data.get("start")
    if not isinstance(start, dict):
        raise BadStart("start", start, "expected an object")
    stream_sid = _start_field(start, "streamSid")
    call_sid = _start_field(start, "callSid")
    account_sid = start.get("accountSid", "")
    if not isinstance(account_sid, str):
        raise BadStart("accountSid", account_sid, "expected a string")
    params = start.get("customParameters", {})
    if not isinstance(params, dict):
        raise BadStart("customParameters", params, "expected an object")
    for name, value in params.items():
        if not isinstance(value, str):
            raise BadStart(f"customParameters.{name}", value, "expected a string")
    media_format = start.get("mediaFormat", {})
    if not isinstance(media_format, dict):
        raise BadStart("mediaFormat", media_format, "expected an object")
    encoding = media_format.get("encoding", ENCODING)
    if encoding != ENCODING:
        raise BadStart("mediaFormat.encoding", encoding, f"expected {ENCODING!r}")
    sample_rate = media_format.get("sampleRate", SAMPLE_RATE)
    # bool is an int subclass; Twilio sends a JSON number, never a string or true.
    if type(sample_rate) is not int or sample_rate != SAMPLE_RATE:
        raise BadStart("mediaFormat.sampleRate", sample_rate, f"expected {SAMPLE_RATE}")
    channels = media_format.get("channels", 1)
    if type(channels) is not int or channels != 1:
        raise BadStart("mediaFormat.channels", channels, "expected 1")
    return Start(
        stream_sid=stream_sid,
        call_sid=call_sid,
        account_sid=account_sid,
        custom_parameters=dict(params),
        encoding=encoding,
        sample_rate=sample_rate,
    )


def parse_message(text: str) -> TwilioMessage:
    """Parse one Media Stream text frame; raise ProtocolViolation saying what is wrong."""
    if len(text) > MAX_MESSAGE_CHARS:
        raise ProtocolViolation(f"message of {len(text)} chars exceeds {MAX_MESSAGE_CHARS}")
    try:
        data = orjson.loads(text)
    except ValueError as exc:
        raise ProtocolViolation(f"invalid JSON: {exc}") from exc
    event = _field(data, "event", str, "message")
    if event == "media":
        media = _field(data, "media", dict, "media")
        encoded = _field(media, "payload", str, "media")
        if len(encoded) > MAX_MEDIA_BYTES * 4 // 3 + 4:
            raise ProtocolViolation(f"media payload of {len(encoded)} chars is oversize")
        try:
            payload = pybase64.b64decode(encoded, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise ProtocolViolation(f"media.payload: invalid base64 ({exc})") from exc
        try:
            timestamp = int(media.get("timestamp", 0))
        except (TypeError, ValueError) as exc:
            raise ProtocolViolation("media.timestamp: not an integer") from exc
        return Media(payload=payload, timestamp=timestamp)
    if event == "mark":
        mark = _field(data, "mark", dict, "mark")
        return Mark(name=_field(mark, "name", str, "mark"))
    if event == "start":
        return _parse_start(data)
    if event == "connected":
        return Connected(protocol=str(data.get("protocol", "")))
    if event == "stop":
        return Stop()
    if event == "dtmf":
        dtmf = _field(data, "dtmf", dict, "dtmf")
        return Dtmf(digit=_field(dtmf, "digit", str, "dtmf"))
    raise ProtocolViolation(f"unknown event {event!r:.40}")


class StreamWriter:
    """Builds the messages we send on one stream (its `streamSid` checked once, at start)."""

    __slots__ = ("_media_prefix", "stream_sid")

    def __init__(self, stream_sid: str) -> None:
        if not _SID.match(stream_sid):
            raise ProtocolViolation(f"malformed streamSid {stream_sid!r:.40}")
        self.stream_sid = stream_sid
        # Hot path: constant prefix, base64 payload (JSON-safe): no json.dumps per frame.
        self._media_prefix = f'{{"event":"media","streamSid":"{stream_sid}","media":{{"payload":"'

    def media(self, ulaw: bytes) -> str:
        return self._media_prefix + pybase64.b64encode_as_string(ulaw) + '"}}'

    def mark(self, name: str) -> str:
        mark = {"event": "mark", "streamSid": self.stream_sid, "mark": {"name": name}}
        return orjson.dumps(mark).decode()

    def clear(self) -> str:
        return json.dumps({"event": "clear", "streamSid": self.stream_sid})


def stream_url(public_base: str) -> str:
    """The Media Stream URL for a public base URL: https -> wss, http -> ws, no query string."""
    parts = urlsplit(public_base)
    scheme = {"https": "wss", "http": "ws"}.get(parts.scheme, parts.scheme)
    path = parts.path.rstrip("/") + MEDIA_PATH
    return urlunsplit((scheme, parts.netloc, path, "", ""))


def action_url(public_base: str) -> str:
    """The `<Connect action>` URL: Twilio asks it what to do once the stream has ended."""
    return public_base.rstrip("/") + ACTION_PATH


def connect_twiml(
    url: str,
    parameters: Mapping[str, str],
    *,
    status_callback: str | None = None,
    action: str | None = None,
) -> str:
    """`<Connect><Stream>` TwiML; parameters travel in `<Parameter>` since Twilio drops queries.
    `action`: where Twilio asks for the call's next step when the stream ends."""
    response = VoiceResponse()
    connect = Connect(action=action, method="POST") if action else Connect()
    if status_callback:
        stream = connect.stream(
            url=url, status_callback=status_callback, status_callback_method="POST"
        )
    else:
        stream = connect.stream(url=url)
    for name, value in parameters.items():
        stream.parameter(name=name, value=value)
    response.append(connect)
    return str(response)


def reject_twiml(reason: str = "rejected") -> str:
    """`<Reject>`: the caller hears busy or a rejection tone; no media stream is opened."""
    response = VoiceResponse()
    response.reject(reason=reason)
    return str(response)
