"""Realtime events: what we send validates against the official GA types; what we read parses."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest

from bridge import realtime
from bridge.errors import ProtocolViolation
from bridge.profiles import Profile, TurnDetection
from bridge.settings import AudioMode
from tests.ga_types import GA_CLIENT_STRICT


def validate_client_event(event: dict[str, Any]) -> None:
    GA_CLIENT_STRICT.validate_python(event)


PROFILE = Profile(
    name="t",
    instructions="Be brief.",
    voice="marin",
    model="gpt-realtime",
    turn_detection=TurnDetection(threshold=0.6, prefix_padding_ms=200, silence_duration_ms=400),
)


@pytest.mark.parametrize("mode", list(AudioMode))
def test_session_update_is_ga_and_audio_only(mode: AudioMode) -> None:
    import dataclasses

    event = realtime.session_update(dataclasses.replace(PROFILE, audio_mode=mode))
    validate_client_event(event)
    session = event["session"]
    assert session["type"] == "realtime"
    assert session["output_modalities"] == ["audio"]
    expected = (
        {"type": "audio/pcmu"} if mode is AudioMode.PCMU else {"type": "audio/pcm", "rate": 24000}
    )
    assert session["audio"]["input"]["format"] == expected
    assert session["audio"]["output"]["format"] == expected
    vad = session["audio"]["input"]["turn_detection"]
    assert (vad["threshold"], vad["prefix_padding_ms"], vad["silence_duration_ms"]) == (
        0.6,
        200,
        400,
    )
    assert session["audio"]["input"]["transcription"] == {"model": "gpt-4o-mini-transcribe"}


def test_every_client_builder_validates() -> None:
    events = [
        realtime.response_create(),
        realtime.response_create("Say hi", event_id="e1"),
        realtime.response_cancel(event_id="e2"),
        realtime.item_truncate("item_1", 1234, event_id="e3"),
        realtime.item_delete("item_1"),
        realtime.user_text("(keypad: 1234)", event_id="e4"),
        json.loads(realtime.input_audio_append(b"\x00\x01" * 10)),
    ]
    for event in events:
        validate_client_event(event)
    assert realtime.response_create()["response"]["output_modalities"] == ["audio"]
    assert realtime.item_truncate("i", -5)["audio_end_ms"] == 0


def test_a_response_names_the_request_it_answers() -> None:
    """Our `event_id` rides in the response's metadata and comes back in `response.created`."""
    create = realtime.response_create("Say hi", event_id="bridge_7")
    assert create["response"]["metadata"] == {"bridge_request": "bridge_7"}
    response: dict[str, Any] = {"id": "resp_1"}
    created = {"type": "response.created", "event_id": "ev", "response": response}
    assert realtime.parse_server_event(json.dumps(created)) == realtime.ResponseCreated("resp_1")
    response["metadata"] = create["response"]["metadata"]
    parsed = realtime.parse_server_event(json.dumps(created))
    assert parsed == realtime.ResponseCreated("resp_1", request="bridge_7")


def test_strict_validation_rejects_beta_shape() -> None:
    from pydantic import ValidationError

    with pytest.raises(ValidationError):
        validate_client_event(
            {"type": "session.update", "session": {"type": "realtime", "modalities": ["audio"]}}
        )


def test_audio_delta_ga_and_beta_names() -> None:
    audio = base64.b64encode(b"\x01\x00\x02\x00").decode()
    for name in ("response.output_audio.delta", "response.audio.delta"):
        event = realtime.parse_server_event(
            json.dumps({"type": name, "item_id": "i1", "response_id": "r1", "delta": audio})
        )
        assert event == realtime.AudioDelta(
            item_id="i1", response_id="r1", audio=b"\x01\x00\x02\x00"
        )


@pytest.mark.parametrize("delta", ["AQACAA", "AQ*ACAA==", "AQAC\nAA==", "AQACAA==é", 7])
def test_audio_delta_that_is_not_clean_base64_is_a_protocol_violation(delta: object) -> None:
    event = {"type": "response.output_audio.delta", "item_id": "i1", "delta": delta}
    with pytest.raises(ProtocolViolation, match=r"malformed response\.output_audio\.delta"):
        realtime.parse_server_event(json.dumps(event))


def test_response_done_reports_content_types() -> None:
    text = json.dumps(
        {
            "type": "response.done",
            "response": {
                "id": "r1",
                "status": "completed",
                "output": [
                    {
                        "id": "i1",
                        "type": "message",
                        "content": [{"type": "output_text", "text": "hello"}],
                    }
                ],
                "usage": {"total_tokens": 7, "output_token_details": {"audio_tokens": 3}},
            },
        }
    )
    done = realtime.parse_server_event(text)
    assert isinstance(done, realtime.ResponseDone)
    assert done.output[0].text == "hello"
    assert not done.output[0].has_audio
    assert done.usage["total_tokens"] == 7


def test_errors_and_unknown_events() -> None:
    error = realtime.parse_server_event(
        json.dumps(
            {
                "type": "error",
                "error": {
                    "type": "invalid_request_error",
                    "code": "session_expired",
                    "message": "m",
                },
            }
        )
    )
    assert isinstance(error, realtime.ServerError)
    assert error.fatal
    assert realtime.parse_server_event('{"type": "rate_limits.updated"}') == realtime.Other(
        "rate_limits.updated"
    )
    with pytest.raises(ProtocolViolation):
        realtime.parse_server_event("not json")
    with pytest.raises(ProtocolViolation):
        realtime.parse_server_event('{"type": "response.output_audio.delta"}')


def test_semantic_vad_and_transcription_language_are_ga() -> None:
    import dataclasses

    profile = dataclasses.replace(
        PROFILE,
        turn_detection=TurnDetection(type="semantic_vad", eagerness="low"),
        transcription_language="de",
    )
    event = realtime.session_update(profile)
    validate_client_event(event)
    audio_in = event["session"]["audio"]["input"]
    assert audio_in["turn_detection"] == {
        "type": "semantic_vad",
        "eagerness": "low",
        "create_response": True,
        "interrupt_response": False,  # the bridge decides barge-in itself
    }
    assert audio_in["transcription"] == {"model": "gpt-4o-mini-transcribe", "language": "de"}


def test_transcription_off_sends_no_transcription() -> None:
    import dataclasses

    event = realtime.session_update(dataclasses.replace(PROFILE, transcription_model=""))
    validate_client_event(event)
    assert "transcription" not in event["session"]["audio"]["input"]


# ---- tools -----------------------------------------------------------------------------------


def _tools() -> Any:
    from bridge.tools.config import HttpTool, McpServer, ProfileTools, Secret, Transfer

    return ProfileTools(
        transfer=Transfer({"front_desk": "+15550100100", "billing": "+15550100200"}),
        http=(
            HttpTool(
                "lookup_order",
                "Look up an order",
                Secret("https://api.test/orders", "https://api.test/orders"),
                parameters={"type": "object", "properties": {"order": {"type": "string"}}},
            ),
        ),
        mcp=(
            McpServer(
                "crm",
                Secret("https://mcp.test/mcp", "https://mcp.test/mcp"),
                headers={"Authorization": Secret("Bearer ${T}", "Bearer t0k")},
                allowed_tools=("find_customer",),
            ),
        ),
    )


@pytest.mark.parametrize("kind", ["end_call", "transfer_call", "http", "mcp"])
def test_each_tool_type_in_session_update_validates(kind: str) -> None:
    import dataclasses

    tools = _tools()
    only = {
        "end_call": dataclasses.replace(tools, transfer=None, http=(), mcp=()),
        "transfer_call": dataclasses.replace(tools, end_call=False, http=(), mcp=()),
        "http": dataclasses.replace(tools, end_call=False, transfer=None, mcp=()),
        "mcp": dataclasses.replace(tools, end_call=False, transfer=None, http=()),
    }[kind]
    event = realtime.session_update(dataclasses.replace(PROFILE, tools=only))
    validate_client_event(event)
    (tool,) = event["session"]["tools"]
    assert event["session"]["tool_choice"] == "auto"
    if kind == "end_call":
        assert tool["name"] == "end_call"
        assert tool["parameters"]["properties"]["reason"]["type"] == "string"
    elif kind == "transfer_call":
        assert tool["parameters"]["properties"]["destination"]["enum"] == ["billing", "front_desk"]
        assert tool["parameters"]["required"] == ["destination"]
    elif kind == "http":
        assert (tool["type"], tool["name"]) == ("function", "lookup_order")
    else:
        assert tool == {
            "type": "mcp",
            "server_label": "crm",
            "server_url": "https://mcp.test/mcp",
            "require_approval": "never",
            "headers": {"Authorization": "Bearer t0k"},  # expanded for the service
            "allowed_tools": ["find_customer"],
        }


def test_no_tools_means_no_tools_key() -> None:
    import dataclasses

    from bridge.tools.config import ProfileTools

    event = realtime.session_update(
        dataclasses.replace(PROFILE, tools=ProfileTools(end_call=False))
    )
    assert "tools" not in event["session"]
    assert "tool_choice" not in event["session"]


def test_tool_client_events_validate() -> None:
    output = realtime.function_call_output("call_1", '{"ok": true}', event_id="e1")
    holding = realtime.response_create("Hold on.", event_id="e2", tools=False)
    for event in (output, holding):
        validate_client_event(event)
    assert holding["response"]["tool_choice"] == "none"


def test_function_calls_and_mcp_events_parse() -> None:
    call_item = {
        "type": "function_call",
        "id": "item_1",
        "call_id": "call_1",
        "name": "lookup_order",
        "arguments": '{"order": "A1"}',
        "status": "completed",
    }
    done = json.dumps({"type": "response.output_item.done", "response_id": "r1", "item": call_item})
    assert realtime.parse_server_event(done) == realtime.FunctionCall(
        "item_1", "call_1", "lookup_order", '{"order": "A1"}', "r1"
    )
    response = {"id": "r1", "status": "completed", "output": [call_item]}
    parsed = realtime.parse_server_event(
        json.dumps({"type": "response.done", "response": response})
    )
    assert isinstance(parsed, realtime.ResponseDone)
    assert [call.call_id for call in parsed.function_calls] == ["call_1"]
    mcp_item = {
        "type": "mcp_call",
        "id": "m1",
        "name": "find_customer",
        "server_label": "crm",
        "arguments": "{}",
        "output": None,
        "error": {"type": "tool_execution_error", "message": "no such customer"},
    }
    failed = json.dumps(
        {"type": "response.output_item.done", "response_id": "r1", "item": mcp_item}
    )
    assert realtime.parse_server_event(failed) == realtime.McpCallDone(
        "m1", "find_customer", "crm", "{}", "", "no such customer"
    )
    listed = {
        "type": "conversation.item.done",
        "item": {
            "type": "mcp_list_tools",
            "id": "l1",
            "server_label": "crm",
            "tools": [{"name": "a"}],
        },
    }
    assert realtime.parse_server_event(json.dumps(listed)) == realtime.McpToolsListed(
        "l1", "crm", ("a",)
    )
    broken = json.dumps({"type": "response.output_item.done", "item": {"type": "function_call"}})
    with pytest.raises(ProtocolViolation):
        realtime.parse_server_event(broken)
