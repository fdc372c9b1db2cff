"""Table tests of the call session's tools and actions, without sockets: end_call, transfers,
HTTP tools and the holding phrase, keypad actions, MCP calls."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import pytest

from bridge import realtime, twilio
from bridge.after_stream import HANGUP, NextStep
from bridge.call.actions import HOLD_AFTER, HOLD_GAP
from bridge.call.effects import Effect, EndCall, Noted, RunTool, ToCaller, ToolCallChanged, Wake
from bridge.call.session import CallSession
from bridge.record import EndReason
from bridge.tools.config import HttpTool, KeyAction, ProfileTools, Secret, Transfer
from bridge.tools.http import ToolResult
from tests.test_session import (
    PROFILE,
    audio_item,
    caller_events,
    delta,
    done,
    ends,
    model_events,
    model_types,
    new_session,
)

LOOKUP = HttpTool(
    name="lookup_order",
    description="Look up an order",
    url=Secret("http://orders.test/o", "http://orders.test/o"),
)
TRANSFER = Transfer(destinations={"front_desk": "+15550100100"}, say="Connecting you.")
TOOLS = ProfileTools(
    transfer=TRANSFER,
    keypad={"0": KeyAction("transfer", "front_desk"), "9": KeyAction("end_call")},
    http=(LOOKUP,),
)
WITH_TOOLS = dataclasses.replace(PROFILE, tools=TOOLS)


def call(
    name: str, arguments: str = "{}", call_id: str = "c1", response: str = "r1"
) -> realtime.FunctionCall:
    return realtime.FunctionCall("fc_" + call_id, call_id, name, arguments, response)


def outputs(effects: list[Effect]) -> list[dict[str, Any]]:
    return [
        json.loads(event["item"]["output"])
        for event in model_events(effects)
        if event["type"] == "conversation.item.create"
    ]


def mark_names(effects: list[Effect]) -> list[str]:
    return [
        json.loads(text)["mark"]["name"]
        for effect in effects
        if isinstance(effect, ToCaller)
        for text in effect.texts
        if '"mark"' in text
    ]


def goodbye_then(session: CallSession, tool_call: realtime.FunctionCall) -> list[Effect]:
    """Response r1 says 1 s of goodbye, then calls `tool_call`; returns the effects."""
    effects = session.model_event(realtime.ResponseCreated("r1"), 0.0)
    effects += session.model_event(delta("i1", "r1", 1000), 0.1)
    effects += session.model_event(tool_call, 0.2)
    effects += session.model_event(done("r1", audio_item("i1")), 0.3)
    return effects


def test_end_call_plays_the_goodbye_to_its_last_mark_then_hangs_up() -> None:
    session, _ = new_session(WITH_TOOLS)
    effects = goodbye_then(session, call("end_call", '{"reason": "done"}'))
    assert outputs(effects) == [{"ok": True}]
    assert "response.create" not in model_types(effects)  # the call is ending
    assert ends(effects) == []
    (mark,) = mark_names(effects)
    # The caller talks over the goodbye: it is not cut.
    talk = session.model_event(realtime.SpeechStarted("u1", 500), 0.5)
    assert caller_events(talk) == []
    end = session.caller_message(twilio.Mark(mark), 1.2)
    assert ends(end) == [EndCall(EndReason.ASSISTANT_HANGUP, "end_call: done", HANGUP)]
    (tool,) = session.record.tool_calls
    assert (tool.name, tool.kind, tool.outcome) == ("end_call", "end_call", "ok")


def test_end_call_interrupted_by_the_caller_does_not_hang_up() -> None:
    session, _ = new_session(WITH_TOOLS)
    session.model_event(realtime.ResponseCreated("r1"), 0.0)
    session.model_event(delta("i1", "r1", 2000), 0.1)
    session.model_event(call("end_call"), 0.2)
    session.model_event(realtime.SpeechStarted("u1", 300), 0.4)  # "wait, one more thing"
    effects = session.model_event(done("r1", audio_item("i1"), status="cancelled"), 0.45)
    assert ends(effects) == []
    (output,) = outputs(effects)
    assert "interrupted" in output["error"]
    assert session.record.tool_calls[0].outcome == "error"


def test_transfer_dials_the_destination_after_the_last_words() -> None:
    session, _ = new_session(WITH_TOOLS)
    effects = goodbye_then(session, call("transfer_call", '{"destination": "front_desk"}'))
    assert outputs(effects) == [{"ok": True, "destination": "front_desk"}]
    (mark,) = mark_names(effects)
    end = session.caller_message(twilio.Mark(mark), 1.2)
    step = NextStep("dial", "+15550100100", "Connecting you.", 30, "")
    assert ends(end) == [EndCall(EndReason.TRANSFERRED, "transfer_call to front_desk", step)]
    assert session.record.transfer_to == "front_desk"
    assert session.record.transfer_number == "+15550100100"


def test_transfer_to_an_unknown_destination_is_an_error_and_the_call_goes_on() -> None:
    session, _ = new_session(WITH_TOOLS)
    effects = goodbye_then(session, call("transfer_call", '{"destination": "ceo"}'))
    (output,) = outputs(effects)
    assert "unknown destination 'ceo'" in output["error"]
    assert "front_desk" in output["error"]
    assert model_types(effects)[-1] == "response.create"  # the model tells the caller
    assert ends(effects) == []


@pytest.mark.parametrize(
    ("name", "arguments", "error"),
    [
        ("order_pizza", "{}", "there is no tool named 'order_pizza'"),
        ("lookup_order", "{not json", "the arguments are not a JSON object"),
        ("transfer_call", "[1]", "the arguments are not a JSON object"),
    ],
)
def test_unknown_tools_and_bad_arguments_get_an_error_output(
    name: str, arguments: str, error: str
) -> None:
    session, _ = new_session(WITH_TOOLS)
    effects = session.model_event(call(name, arguments), 0.0)
    assert outputs(effects) == [{"error": error}]
    assert model_types(effects)[-1] == "response.create"


def test_an_http_tool_runs_once_and_its_output_brings_a_reply() -> None:
    session, _ = new_session(WITH_TOOLS)
    session.model_event(realtime.ResponseCreated("r1"), 0.0)
    effects = session.model_event(call("lookup_order", '{"order": "42"}'), 0.1)
    (run,) = [effect for effect in effects if isinstance(effect, RunTool)]
    assert (run.call_id, run.tool, run.arguments) == ("c1", LOOKUP, {"order": "42"})
    assert Wake(0.1 + HOLD_AFTER) in effects
    # response.done lists the same call again: it does not run twice.
    repeat = realtime.ResponseDone("r1", "completed", None, (), {}, (call("lookup_order"),))
    assert [e for e in session.model_event(repeat, 0.2) if isinstance(e, RunTool)] == []
    answered = session.tool_done("c1", ToolResult(True, '{"status": "shipped"}'), 0.6)
    create, reply = model_events(answered)
    assert create["item"] == {
        "type": "function_call_output",
        "call_id": "c1",
        "output": '{"status": "shipped"}',
    }
    assert reply["type"] == "response.create"
    (tool,) = session.record.tool_calls
    assert (tool.outcome, tool.result, tool.duration_ms) == ("ok", '{"status": "shipped"}', 500.0)
    assert not tool.holding_phrase


def test_a_slow_tool_gets_a_holding_phrase_at_1_5_s_and_one_reply_after() -> None:
    session, _ = new_session(WITH_TOOLS)
    session.model_event(realtime.ResponseCreated("r1"), 0.0)
    session.model_event(call("lookup_order", '{"order": "42"}'), 0.1)
    session.model_event(done("r1"), 0.2)
    assert model_types(session.timer(1.0)) == []
    hold = session.timer(0.1 + HOLD_AFTER)
    (create,) = model_events(hold)
    assert create["response"]["tool_choice"] == "none"
    assert "One moment" in create["response"]["instructions"]
    assert [e.tool_call.holding_phrase for e in hold if isinstance(e, ToolCallChanged)] == [True]
    assert model_types(session.timer(3.0)) == []  # one phrase per wait
    # The holding phrase is still running when the tool answers: the reply waits behind it.
    session.model_event(realtime.ResponseCreated("r2", request=create["event_id"]), 1.7)
    answered = session.tool_done("c1", ToolResult(True, "ok"), 2.0)
    assert model_types(answered) == ["conversation.item.create"]
    after = session.model_event(done("r2", audio_item("i2")), 2.5)
    assert model_types(after) == ["response.create"]


def test_the_holding_phrase_waits_for_audio_the_caller_is_still_hearing() -> None:
    session, _ = new_session(WITH_TOOLS)
    session.model_event(realtime.ResponseCreated("r1"), 0.0)
    session.model_event(delta("i1", "r1", 3000), 0.0)  # "Let me look that up for you..."
    session.model_event(call("lookup_order"), 0.1)
    session.model_event(done("r1", audio_item("i1")), 0.2)
    waiting = session.timer(0.1 + HOLD_AFTER)
    assert model_types(waiting) == []
    (wake,) = [effect for effect in waiting if isinstance(effect, Wake)]
    assert wake.at == pytest.approx(3.0 + HOLD_GAP, abs=0.05)  # played out, then a short gap
    assert model_types(session.timer(wake.at)) == ["response.create"]


def test_a_tool_that_fails_gives_the_model_its_error_and_the_call_goes_on() -> None:
    session, _ = new_session(WITH_TOOLS)
    session.model_event(call("lookup_order"), 0.0)
    failed = ToolResult(False, '{"error": "HTTP 500 Internal Server Error"}', "HTTP 500", 500)
    answered = session.tool_done("c1", failed, 0.3)
    assert model_types(answered) == ["conversation.item.create", "response.create"]
    (tool,) = session.record.tool_calls
    assert (tool.outcome, tool.error) == ("error", "HTTP 500")


def test_tools_still_running_when_the_call_ends_are_cancelled() -> None:
    session, _ = new_session(WITH_TOOLS)
    session.model_event(call("lookup_order"), 0.0)
    (changed,) = session.finish(1.0)
    assert isinstance(changed, ToolCallChanged)
    assert changed.tool_call.outcome == "cancelled"


def test_keypad_transfer_acts_at_once_and_stops_the_assistant() -> None:
    session, _ = new_session(WITH_TOOLS)
    session.model_event(realtime.ResponseCreated("r1"), 0.0)
    session.model_event(delta("i1", "r1", 2000), 0.0)
    effects = session.caller_message(twilio.Dtmf("0"), 0.5)
    assert caller_events(effects) == ["clear"]
    step = NextStep("dial", "+15550100100", "Connecting you.", 30, "")
    assert ends(effects) == [
        EndCall(EndReason.TRANSFERRED, "keypad 0: transfer to front_desk", step)
    ]
    (tool,) = session.record.tool_calls
    assert (tool.kind, tool.name, json.loads(tool.arguments)) == (
        "keypad",
        "transfer_call",
        {"key": "0", "destination": "front_desk"},
    )
    assert session.record.barge_ins == 0


def test_keypad_end_call_and_other_keys_still_make_digit_runs() -> None:
    session, _ = new_session(WITH_TOOLS)
    session.caller_message(twilio.Dtmf("4"), 0.0)
    effects = session.caller_message(twilio.Dtmf("9"), 0.5)
    assert ends(effects) == [EndCall(EndReason.ASSISTANT_HANGUP, "keypad 9: end_call", HANGUP)]
    assert "conversation.item.create" not in model_types(effects)  # the run is dropped


def test_mcp_calls_the_service_ran_are_recorded() -> None:
    session, _ = new_session(WITH_TOOLS)
    session.model_event(realtime.McpCallStarted("m1", "find_customer", "crm"), 1.0)
    done_call = realtime.McpCallDone("m1", "find_customer", "crm", '{"phone": "1"}', "Ann", "")
    (changed,) = session.model_event(done_call, 1.8)
    assert isinstance(changed, ToolCallChanged)
    tool = changed.tool_call
    assert (tool.kind, tool.name, tool.outcome, tool.result) == (
        "mcp",
        "find_customer",
        "ok",
        "Ann",
    )
    assert tool.duration_ms == pytest.approx(800)
    listed = session.model_event(realtime.McpToolsListed("l1", "crm", ("find_customer",)), 2.0)
    assert [e.event.kind for e in listed if isinstance(e, Noted)] == ["mcp_tools_listed"]
