"""Media Stream message parsing and building, and TwiML."""

from __future__ import annotations

import base64
import json
import xml.etree.ElementTree as ET

import pytest

from bridge import twilio
from bridge.errors import ProtocolViolation


def media(payload: bytes, timestamp: str = "20") -> str:
    body = {"track": "inbound", "chunk": "1", "timestamp": timestamp}
    body["payload"] = base64.b64encode(payload).decode()
    return json.dumps({"event": "media", "sequenceNumber": "3", "streamSid": "MZ1", "media": body})


def test_parse_start_keeps_custom_parameters() -> None:
    text = json.dumps(
        {
            "event": "start",
            "sequenceNumber": "1",
            "streamSid": "MZabc123",
            "start": {
                "streamSid": "MZabc123",
                "accountSid": "AC1",
                "callSid": "CA1",
                "tracks": ["inbound"],
                "customParameters": {"From": "+15550100001", "To": "+15550100000"},
                "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1},
            },
        }
    )
    start = twilio.parse_message(text)
    assert isinstance(start, twilio.Start)
    assert start.stream_sid == "MZabc123"
    assert start.call_sid == "CA1"
    assert start.custom_parameters == {"From": "+15550100001", "To": "+15550100000"}
    assert start.sample_rate == 8000


def test_parse_media_decodes_payload_and_string_timestamp() -> None:
    message = twilio.parse_message(media(b"\xff" * 160, timestamp="1234"))
    assert message == twilio.Media(payload=b"\xff" * 160, timestamp=1234)


@pytest.mark.parametrize(
    ("text", "complaint"),
    [
        ("{not json", "invalid JSON"),
        ('{"event": "bogus"}', "unknown event"),
        ('{"no": "event"}', "message.event"),
        ('{"event": "media", "media": {"payload": "!!!notbase64"}}', "invalid base64"),
        ('{"event": "media", "media": {"payload": 5}}', "media.payload"),
        ('{"event": "mark", "mark": {}}', "mark.name"),
        ('{"event": "start", "start": {"streamSid": "bad sid!", "callSid": "CA"}}', "streamSid"),
        ("[1, 2]", "expected an object"),
    ],
)
def test_malformed_messages_raise_protocol_violation(text: str, complaint: str) -> None:
    with pytest.raises(ProtocolViolation, match=complaint):
        twilio.parse_message(text)


def test_oversize_frames_are_refused() -> None:
    with pytest.raises(ProtocolViolation, match="oversize"):
        twilio.parse_message(media(b"\x00" * (twilio.MAX_MEDIA_BYTES + 100)))
    with pytest.raises(ProtocolViolation, match="exceeds"):
        twilio.parse_message(" " * (twilio.MAX_MESSAGE_CHARS + 1))


def test_other_events() -> None:
    assert twilio.parse_message('{"event":"mark","mark":{"name":"x:1"}}') == twilio.Mark("x:1")
    assert twilio.parse_message('{"event":"stop","stop":{}}') == twilio.Stop()
    assert twilio.parse_message('{"event":"dtmf","dtmf":{"digit":"5"}}') == twilio.Dtmf("5")
    assert twilio.parse_message('{"event":"connected","protocol":"Call"}') == twilio.Connected(
        "Call"
    )


def test_writer_builds_valid_json() -> None:
    writer = twilio.StreamWriter("MZ42")
    sent = json.loads(writer.media(b"\x01\x02\x03"))
    assert sent == {
        "event": "media",
        "streamSid": "MZ42",
        "media": {"payload": base64.b64encode(b"\x01\x02\x03").decode()},
    }
    assert json.loads(writer.mark("item:7")) == {
        "event": "mark",
        "streamSid": "MZ42",
        "mark": {"name": "item:7"},
    }
    assert json.loads(writer.clear()) == {"event": "clear", "streamSid": "MZ42"}
    with pytest.raises(ProtocolViolation):
        twilio.StreamWriter('MZ"injected')


def test_stream_url_has_wss_scheme_and_no_query() -> None:
    assert (
        twilio.stream_url("https://bridge.example.com") == "wss://bridge.example.com/twilio/media"
    )
    assert twilio.stream_url("https://h.example/base/") == "wss://h.example/base/twilio/media"
    assert twilio.stream_url("http://localhost:8080") == "ws://localhost:8080/twilio/media"


def test_connect_twiml_carries_parameters() -> None:
    xml = twilio.connect_twiml("wss://h/twilio/media", {"From": "+1555", "To": "+1666"})
    root = ET.fromstring(xml)
    stream = root.find("./Connect/Stream")
    assert stream is not None
    assert stream.get("url") == "wss://h/twilio/media"
    params = {p.get("name"): p.get("value") for p in stream.findall("Parameter")}
    assert params == {"From": "+1555", "To": "+1666"}
    assert ET.fromstring(twilio.reject_twiml()).find("Reject") is not None


def start_message(**changes: object) -> str:
    """A well-formed `start`, with fields of `start` replaced (None: removed)."""
    start: dict[str, object] = {
        "streamSid": "MZabc123",
        "accountSid": "AC1",
        "callSid": "CA1",
        "tracks": ["inbound"],
        "customParameters": {"From": "+15550100001"},
        "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1},
    }
    for key, value in changes.items():
        if value is None:
            del start[key]
        else:
            start[key] = value
    return json.dumps({"event": "start", "streamSid": "MZabc123", "start": start})


def media_format(**changes: object) -> dict[str, object]:
    return {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1} | changes


@pytest.mark.parametrize(
    ("text", "field", "value"),
    [
        (
            start_message(mediaFormat=media_format(sampleRate="8000")),
            "mediaFormat.sampleRate",
            "8000",
        ),
        (
            start_message(mediaFormat=media_format(sampleRate="fast")),
            "mediaFormat.sampleRate",
            "fast",
        ),
        (
            start_message(mediaFormat=media_format(sampleRate=8000.5)),
            "mediaFormat.sampleRate",
            8000.5,
        ),
        (
            start_message(mediaFormat=media_format(sampleRate=16000)),
            "mediaFormat.sampleRate",
            16000,
        ),
        (start_message(mediaFormat=media_format(sampleRate=True)), "mediaFormat.sampleRate", True),
        (
            start_message(mediaFormat=media_format(encoding="audio/l16")),
            "mediaFormat.encoding",
            "audio/l16",
        ),
        (start_message(mediaFormat=media_format(encoding=7)), "mediaFormat.encoding", 7),
        (start_message(mediaFormat=media_format(channels=2)), "mediaFormat.channels", 2),
        (start_message(mediaFormat=media_format(channels="1")), "mediaFormat.channels", "1"),
        (start_message(mediaFormat="audio/x-mulaw"), "mediaFormat", "audio/x-mulaw"),
        (start_message(mediaFormat=[8000]), "mediaFormat", [8000]),
        (start_message(streamSid=None), "streamSid", None),
        (start_message(streamSid=12), "streamSid", 12),
        (start_message(callSid=None), "callSid", None),
        (start_message(callSid=""), "callSid", ""),
        (start_message(callSid='CA"1'), "callSid", 'CA"1'),
        (start_message(accountSid=5), "accountSid", 5),
        (start_message(customParameters=["From"]), "customParameters", ["From"]),
        (start_message(customParameters={"To": 5}), "customParameters.To", 5),
        ('{"event": "start", "start": "now"}', "start", "now"),
        ('{"event": "start"}', "start", None),
    ],
)
def test_a_malformed_start_raises_bad_start_naming_field_and_value(
    text: str, field: str, value: object
) -> None:
    with pytest.raises(twilio.BadStart) as raised:
        twilio.parse_message(text)
    assert isinstance(raised.value, ProtocolViolation)  # a protocol error, not internal_error
    assert raised.value.field == field
    assert raised.value.value == value
    assert type(raised.value.value) is type(value)
    assert f"start.{raised.value.field}" in raised.value.detail
    assert repr(value)[:40] in raised.value.detail


def test_a_start_without_optional_fields_takes_twilios_defaults() -> None:
    start = twilio.parse_message(start_message(mediaFormat=None, customParameters=None))
    assert start == twilio.Start(
        stream_sid="MZabc123",
        call_sid="CA1",
        account_sid="AC1",
        custom_parameters={},
        encoding="audio/x-mulaw",
        sample_rate=8000,
    )


def test_only_start_problems_are_bad_start() -> None:
    with pytest.raises(ProtocolViolation) as raised:
        twilio.parse_message('{"event": "media", "media": {"payload": 5}}')
    assert not isinstance(raised.value, twilio.BadStart)
