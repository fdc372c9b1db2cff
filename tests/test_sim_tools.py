"""Tool calls in the simulators: function and MCP calls, MCP tool listings, `function_call_output`
(Realtime), and the `<Connect action>` request with the TwiML it returns (Twilio).

Every server event is validated against the official GA server event types (openai).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Sequence
from typing import Any
from urllib.parse import parse_qsl

import pytest
from openai.types.realtime import RealtimeServerEvent
from pydantic import TypeAdapter
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from twilio.request_validator import RequestValidator
from twilio.twiml.voice_response import Connect, Dial, VoiceResponse
from websockets.asyncio.client import connect

from bridge.server import serving
from bridge.sim.realtime_config import SimConfig, SimToolCall
from bridge.sim.realtime_server import RealtimeSimulator
from bridge.sim.realtime_session import RealtimeSessionState
from bridge.sim.twilio_caller import (
    fetch_action,
    parse_connect_action,
    parse_next_step,
)
from tests.ga_types import discriminated

GA_SERVER: TypeAdapter[Any] = TypeAdapter(discriminated(RealtimeServerEvent))
Event = dict[str, Any]

LOOKUP = {"type": "function", "name": "lookup", "description": "Look up", "parameters": {}}
DOCS = {"type": "mcp", "server_label": "docs", "server_url": "https://mcp.example.com/sse"}
TOKEN = "0123456789abcdef0123456789abcdef"


def validated(events: Sequence[Event]) -> list[Event]:
    for event in events:
        GA_SERVER.validate_python(event)
    return list(events)


def types(events: Sequence[Event]) -> list[str]:
    return [event["type"] for event in events]


def state_with(
    config: SimConfig, *tools: dict[str, Any], text: bool = False
) -> RealtimeSessionState:
    state = RealtimeSessionState(config)
    session: dict[str, Any] = {"type": "realtime", "tools": list(tools)}
    if text:
        session["output_modalities"] = ["text"]
    events = validated(state.handle({"type": "session.update", "session": session}))
    assert events[0]["type"] == "session.updated"
    return state


def respond(state: RealtimeSessionState, **response: Any) -> list[Event]:
    """`response.create`, then the response paced to its end."""
    event: Event = {"type": "response.create"}
    if response:
        event["response"] = response
    out = state.handle(event)
    while state.response is not None:
        out += state.advance()
    return validated(out)


def function_output(state: RealtimeSessionState, call_id: str, output: str) -> list[Event]:
    item = {"type": "function_call_output", "call_id": call_id, "output": output}
    return validated(state.handle({"type": "conversation.item.create", "item": item}))


def tool_events(events: Sequence[Event]) -> list[str]:
    """The event types that concern tools (not the message's parts and deltas)."""
    wanted = ("function_call", "mcp", "response.output_item", "response.done")
    return [t for t in types(events) if any(w in t for w in wanted)]


# ---- function calls ------------------------------------------------------------------------


def test_function_call_follows_the_spoken_message_in_ga_shapes() -> None:
    call = SimToolCall("lookup", {"city": "Paris"}, call_id="call_fixed")
    config = SimConfig(replies=("One moment.",), tool_calls={0: [call]})
    state = state_with(config, LOOKUP)
    events = respond(state)
    kinds = types(events)
    # The message's audio is done before the call starts.
    assert kinds.index("response.output_audio.done") < kinds.index("response.output_item.done")
    start = kinds.index("response.function_call_arguments.delta") - 2
    assert kinds[start:] == [
        "response.output_item.added",
        "conversation.item.added",
        "response.function_call_arguments.delta",
        "response.function_call_arguments.delta",
        "response.function_call_arguments.done",
        "response.output_item.done",
        "conversation.item.done",
        "response.done",
    ]
    added = events[start]["item"]
    assert added["type"] == "function_call"
    assert (added["status"], added["arguments"], added["call_id"]) == (
        "in_progress",
        "",
        "call_fixed",
    )
    deltas = [e["delta"] for e in events if e["type"] == "response.function_call_arguments.delta"]
    done = next(e for e in events if e["type"] == "response.function_call_arguments.done")
    assert "".join(deltas) == done["arguments"] == '{"city":"Paris"}'
    assert (done["name"], done["call_id"], done["output_index"]) == ("lookup", "call_fixed", 1)
    item_done = events[start + 5]["item"]
    assert (item_done["status"], item_done["arguments"]) == ("completed", '{"city":"Paris"}')
    output = events[-1]["response"]["output"]
    assert [(o["type"], o["status"]) for o in output] == [
        ("message", "completed"),
        ("function_call", "completed"),
    ]
    assert [i.type for i in state.items.values()] == ["message", "function_call"]


def test_arguments_as_a_string_are_sent_verbatim_and_call_ids_are_generated() -> None:
    calls = [SimToolCall("lookup", '{"broken": '), SimToolCall("lookup", {})]
    state = state_with(SimConfig(tool_calls={0: calls}), LOOKUP, text=True)
    done = [e for e in respond(state) if e["type"] == "response.function_call_arguments.done"]
    assert [e["arguments"] for e in done] == ['{"broken": ', "{}"]
    assert [e["output_index"] for e in done] == [1, 2]
    ids = [e["call_id"] for e in done]
    assert all(i.startswith("call_") for i in ids)
    assert len(set(ids)) == 2


def test_empty_reply_text_gives_only_the_function_calls() -> None:
    config = SimConfig(replies=("",), tool_calls={0: [SimToolCall("lookup", {"q": 1})]})
    state = state_with(config, LOOKUP)
    events = respond(state)
    assert tool_events(events) == [
        "response.output_item.added",
        "response.function_call_arguments.delta",
        "response.function_call_arguments.delta",
        "response.function_call_arguments.done",
        "response.output_item.done",
        "response.done",
    ]
    assert not any("content_part" in t or "output_audio" in t for t in types(events))
    assert [o["type"] for o in events[-1]["response"]["output"]] == ["function_call"]
    assert events[-1]["response"]["status"] == "completed"
    assert [i.type for i in state.items.values()] == ["function_call"]


def test_function_call_output_is_accepted_and_an_unknown_call_id_refused() -> None:
    config = SimConfig(
        replies=("Checking.", "Anything else?"),
        tool_calls={0: [SimToolCall("lookup", {"q": "x"}, call_id="call_a")]},
        tool_reply=lambda name, output: f"{name} returned {output}",
    )
    state = state_with(config, LOOKUP, text=True)
    # Before the model called anything, no output is accepted.
    refused = function_output(state, "call_a", "{}")
    assert refused[0]["type"] == "error"
    assert refused[0]["error"]["code"] == "invalid_value"
    assert "call_a" in refused[0]["error"]["message"]
    respond(state)
    refused = function_output(state, "call_unknown", "{}")
    assert types(refused) == ["error"]
    assert refused[0]["error"]["message"] == (
        "No tool call found for function call output with call_id call_unknown."
    )
    accepted = function_output(state, "call_a", '{"temp": 21}')
    assert types(accepted) == ["conversation.item.added", "conversation.item.done"]
    assert accepted[1]["item"]["call_id"] == "call_a"
    reply = respond(state)
    text = next(e for e in reply if e["type"] == "response.output_text.done")["text"]
    assert text == 'lookup returned {"temp": 21}'
    # No tool calls right after an output, and the replies cycle was not consumed.
    assert "response.function_call_arguments.done" not in types(reply)
    following = respond(state)
    assert next(e for e in following if e["type"] == "response.output_text.done")["text"] == (
        "Anything else?"
    )


def test_without_tool_reply_the_answer_to_an_output_comes_from_the_replies() -> None:
    config = SimConfig(replies=("First.", "Second."), tool_calls={0: [SimToolCall("lookup")]})
    state = state_with(config, LOOKUP, text=True)
    call_id = next(
        e for e in respond(state) if e["type"] == "response.function_call_arguments.done"
    )["call_id"]
    function_output(state, call_id, "ok")
    reply = respond(state)
    assert next(e for e in reply if e["type"] == "response.output_text.done")["text"] == "Second."


def test_answer_index_skips_instructed_responses_and_answers_to_outputs() -> None:
    config = SimConfig(
        tool_calls={0: [SimToolCall("lookup", call_id="call_0")], 1: [SimToolCall("lookup")]},
    )
    state = state_with(config, LOOKUP, text=True)

    def calls(events: list[Event]) -> int:
        return types(events).count("response.function_call_arguments.done")

    # A "say exactly" response comes first: it answers nobody and makes no call.
    said = respond(state, instructions='Say exactly: "Welcome to the shop."')
    assert calls(said) == 0
    assert next(e for e in said if e["type"] == "response.output_text.done")["text"] == (
        "Welcome to the shop."
    )
    assert calls(respond(state)) == 1  # answer 0
    function_output(state, "call_0", "done")
    assert calls(respond(state)) == 0  # the answer to the output
    assert calls(respond(state, instructions="Be brief.")) == 0  # instructed
    assert calls(respond(state)) == 1  # answer 1
    assert calls(respond(state)) == 0  # answer 2: nothing scripted


def test_a_cancelled_response_makes_no_function_call() -> None:
    config = SimConfig(
        replies=("This reply is cut short.",), tool_calls={0: [SimToolCall("lookup")]}
    )
    state = state_with(config, LOOKUP)
    events = state.handle({"type": "response.create"})
    events += state.advance()
    events += state.handle({"type": "response.cancel"})
    validated(events)
    assert state.response is None
    assert not any("function_call" in t for t in types(events))
    done = events[-1]["response"]
    assert done["status"] == "cancelled"
    assert [o["type"] for o in done["output"]] == ["message"]
    assert [i.type for i in state.items.values()] == ["message"]


def test_a_session_without_tools_accepts_any_output() -> None:
    # Kept from before tool calls existed: the check starts once the session uses tools.
    state = RealtimeSessionState(SimConfig())
    assert types(function_output(state, "call_1", "{}")) == [
        "conversation.item.added",
        "conversation.item.done",
    ]


def test_a_client_created_function_call_can_be_answered() -> None:
    state = state_with(SimConfig(), LOOKUP)
    item = {"type": "function_call", "call_id": "call_x", "name": "lookup", "arguments": "{}"}
    created = validated(state.handle({"type": "conversation.item.create", "item": item}))
    assert created[1]["item"]["type"] == "function_call"
    assert types(function_output(state, "call_x", "ok")) == [
        "conversation.item.added",
        "conversation.item.done",
    ]
    missing = state.handle(
        {
            "type": "conversation.item.create",
            "item": {"type": "function_call_output", "call_id": "call_x"},
        }
    )
    assert missing[0]["error"]["param"] == "item.output"


# ---- tools in session.update and response.create -----------------------------------------------


def test_session_update_echoes_tools_and_tool_choice() -> None:
    state = RealtimeSessionState(SimConfig(mcp_tools={"docs": ["search"]}))
    update = {
        "type": "realtime",
        "tools": [LOOKUP],
        "tool_choice": {"type": "function", "name": "lookup"},
    }
    updated = validated(state.handle({"type": "session.update", "session": update}))[0]
    assert updated["session"]["tools"] == [LOOKUP]
    assert updated["session"]["tool_choice"] == {"type": "function", "name": "lookup"}
    # A new choice replaces the old one whole.
    update = {"type": "realtime", "tool_choice": {"type": "mcp", "server_label": "docs"}}
    updated = validated(state.handle({"type": "session.update", "session": update}))[0]
    assert updated["session"]["tool_choice"] == {"type": "mcp", "server_label": "docs"}
    assert updated["session"]["tools"] == [LOOKUP]


@pytest.mark.parametrize(
    ("tools", "param", "code"),
    [
        (
            [{"type": "function", "parameters": {}}],
            "session.tools[0].name",
            "missing_required_parameter",
        ),
        ([LOOKUP, {"type": "web_search"}], "session.tools[1].type", "invalid_value"),
        ([{"name": "lookup"}], "session.tools[0].type", "missing_required_parameter"),
        ([{"type": "function", "name": "has space"}], "session.tools[0].name", "invalid_value"),
        ([{**LOOKUP, "strict": True}], "session.tools[0].strict", "unknown_parameter"),
        (
            [{"type": "mcp", "server_url": "https://x"}],
            "session.tools[0].server_label",
            "missing_required_parameter",
        ),
        (
            [{"type": "mcp", "server_label": "docs"}],
            "session.tools[0].server_url",
            "missing_required_parameter",
        ),
        (
            [{**DOCS, "require_approval": "sometimes"}],
            "session.tools[0].require_approval",
            "invalid_value",
        ),
        ([LOOKUP, LOOKUP], "session.tools[1]", "invalid_value"),
        ("lookup", "session.tools", "invalid_value"),
    ],
)
def test_session_update_refuses_bad_tools(tools: Any, param: str, code: str) -> None:
    state = RealtimeSessionState(SimConfig())
    events = validated(
        state.handle({"type": "session.update", "session": {"type": "realtime", "tools": tools}})
    )
    assert types(events) == ["error"]
    assert (events[0]["error"]["param"], events[0]["error"]["code"]) == (param, code)
    assert state.session["tools"] == []


def test_tool_choice_and_response_tools_are_validated() -> None:
    state = RealtimeSessionState(SimConfig(), model="gpt-realtime")
    bad = state.handle(
        {"type": "session.update", "session": {"type": "realtime", "tool_choice": "always"}}
    )
    assert bad[0]["error"]["param"] == "session.tool_choice"
    bad = state.handle({"type": "response.create", "response": {"tools": [{"type": "function"}]}})
    assert bad[0]["error"]["param"] == "response.tools[0].name"
    bad = state.handle(
        {"type": "response.create", "response": {"tool_choice": {"type": "file_search"}}}
    )
    assert bad[0]["error"]["param"] == "response.tool_choice.type"
    assert state.response is None
    ok = respond(state, tools=[LOOKUP], tool_choice="required")
    assert ok[-1]["response"]["status"] == "completed"


# ---- MCP --------------------------------------------------------------------------------------


def test_mcp_listing_completed_failed_and_filtered() -> None:
    config = SimConfig(mcp_tools={"docs": ["search", "fetch", "delete"], "crm": ["find"]})
    state = RealtimeSessionState(config)
    tools = [
        LOOKUP,
        {**DOCS, "allowed_tools": ["search", "fetch"], "headers": {"Authorization": "Bearer t"}},
        {
            "type": "mcp",
            "server_label": "crm",
            "server_url": "https://crm",
            "allowed_tools": {"tool_names": ["find"]},
        },
        {
            "type": "mcp",
            "server_label": "gone",
            "server_url": "https://gone",
            "require_approval": "never",
        },
    ]
    events = validated(
        state.handle({"type": "session.update", "session": {"type": "realtime", "tools": tools}})
    )
    assert types(events) == ["session.updated"] + [
        "mcp_list_tools.in_progress",
        "conversation.item.added",
        "mcp_list_tools.completed",
        "conversation.item.done",
    ] * 2 + [
        "mcp_list_tools.in_progress",
        "conversation.item.added",
        "mcp_list_tools.failed",
        "conversation.item.done",
    ]
    assert events[0]["session"]["tools"] == tools
    added, done = events[2]["item"], events[4]["item"]
    assert (added["type"], added["server_label"], added["tools"]) == ("mcp_list_tools", "docs", [])
    assert events[1]["item_id"] == events[3]["item_id"] == added["id"] == done["id"]
    assert done["tools"] == [
        {
            "name": name,
            "description": done["tools"][i]["description"],
            "input_schema": {"type": "object", "properties": {}},
            "annotations": None,
        }
        for i, name in enumerate(["search", "fetch"])
    ]
    assert [t["name"] for t in events[8]["item"]["tools"]] == ["find"]
    assert events[12]["item"]["tools"] == []
    assert [i.extra["server_label"] for i in state.items.values()] == ["docs", "crm", "gone"]
    # The same servers again: nothing new to list. A changed filter lists that server again.
    again = state.handle(
        {"type": "session.update", "session": {"type": "realtime", "tools": tools}}
    )
    assert types(again) == ["session.updated"]
    tools[1] = {**DOCS, "allowed_tools": ["delete"]}
    again = validated(
        state.handle({"type": "session.update", "session": {"type": "realtime", "tools": tools}})
    )
    assert types(again)[1:] == [
        "mcp_list_tools.in_progress",
        "conversation.item.added",
        "mcp_list_tools.completed",
        "conversation.item.done",
    ]
    assert [t["name"] for t in again[-1]["item"]["tools"]] == ["delete"]


def test_mcp_calls_complete_and_fail_before_the_message() -> None:
    calls = [
        SimToolCall("search", {"q": "refund"}, server_label="docs", output="Refunds take 5 days."),
        SimToolCall("fetch", {"id": 7}, server_label="docs", error="Server timed out"),
    ]
    config = SimConfig(
        mcp_tools={"docs": ["search", "fetch"]},
        tool_calls={0: calls},
        mcp_call_ms=250,
        tool_reply=lambda name, output: f"After {name}: {output}",
    )
    state = state_with(config, DOCS, text=True)
    events = state.handle({"type": "response.create"})
    assert state.response is not None
    assert state.response.take_hold_ms() == 250  # the pacer waits for the server's answer
    assert state.response.take_hold_ms() == 0
    assert types(events) == [
        "response.created",
        "rate_limits.updated",
        "response.output_item.added",
        "conversation.item.added",
        "response.mcp_call_arguments.delta",
        "response.mcp_call_arguments.delta",
        "response.mcp_call_arguments.done",
        "response.mcp_call.in_progress",
    ]
    assert events[2]["item"]["type"] == "mcp_call"
    assert events[2]["item"]["status"] == "in_progress"
    first = state.advance()  # the first answer, and the second call starts
    assert state.response.take_hold_ms() == 250
    second = state.advance()  # the second answer, and the message opens
    rest: list[Event] = []
    while state.response is not None:
        rest += state.advance()
    events = validated(events + first + second + rest)
    assert tool_events(events) == [
        "response.output_item.added",
        "response.mcp_call_arguments.delta",
        "response.mcp_call_arguments.delta",
        "response.mcp_call_arguments.done",
        "response.mcp_call.in_progress",
        "response.mcp_call.completed",
        "response.output_item.done",
        "response.output_item.added",
        "response.mcp_call_arguments.delta",
        "response.mcp_call_arguments.delta",
        "response.mcp_call_arguments.done",
        "response.mcp_call.in_progress",
        "response.mcp_call.failed",
        "response.output_item.done",
        "response.output_item.added",  # the message
        "response.output_item.done",
        "response.done",
    ]
    items_done = [e for e in events if e["type"] == "response.output_item.done"]
    assert items_done[0]["item"]["output"] == "Refunds take 5 days."
    assert items_done[0]["item"]["arguments"] == '{"q":"refund"}'
    assert items_done[1]["item"]["error"] == {
        "type": "tool_execution_error",
        "message": "Server timed out",
    }
    assert [e["output_index"] for e in items_done] == [0, 1, 2]
    text = next(e for e in events if e["type"] == "response.output_text.done")["text"]
    assert text == "After fetch: Server timed out"
    output = events[-1]["response"]["output"]
    assert [o["type"] for o in output] == ["mcp_call", "mcp_call", "message"]
    kinds = [i.type for i in state.items.values()]
    assert kinds == ["mcp_list_tools", "mcp_call", "mcp_call", "message"]


def test_mcp_call_cancelled_while_the_server_answers() -> None:
    call = SimToolCall("search", {}, server_label="docs", output="late")
    config = SimConfig(mcp_tools={"docs": ["search"]}, tool_calls={0: [call]}, mcp_call_ms=1000)
    state = state_with(config, DOCS)
    events = state.handle({"type": "response.create"})
    events += state.handle({"type": "response.cancel"})
    validated(events)
    assert "response.mcp_call.completed" not in types(events)
    done = events[-1]["response"]
    assert done["status"] == "cancelled"
    assert [(o["type"], o["output"]) for o in done["output"]] == [("mcp_call", None)]


def test_serialised_steps_carry_mcp_calls_too() -> None:
    call = SimToolCall("search", {"q": 1}, server_label="docs", output="ok")
    config = SimConfig(
        replies=("Found it.",),
        mcp_tools={"docs": ["search"]},
        tool_calls={0: [call, SimToolCall("lookup")]},
    )
    state = state_with(config, DOCS, LOOKUP)
    events = state.handle({"type": "response.create"})
    while state.response is not None:
        events += [json.loads(text) for text in state.advance_serialised()]
    validated(events)
    deltas = [e for e in events if e["type"] == "response.output_audio.delta"]
    assert deltas
    assert all(e["output_index"] == 1 for e in deltas)
    assert [o["type"] for o in events[-1]["response"]["output"]] == [
        "mcp_call",
        "message",
        "function_call",
    ]


# ---- over the WebSocket -----------------------------------------------------------------------


async def test_tool_calls_over_the_websocket() -> None:
    config = SimConfig(
        replies=("Let me look that up.", "Goodbye."),
        speedup=50.0,
        mcp_tools={"docs": ["search"]},
        mcp_call_ms=200,
        tool_calls={
            0: [
                SimToolCall("search", {"q": "hours"}, server_label="docs", output="9 to 5"),
                SimToolCall("lookup", {"city": "Oslo"}),
            ]
        },
        tool_reply=lambda name, output: f"{name} says {output}.",
    )
    received: list[tuple[float, Event]] = []

    async def until(ws: Any, kind: str) -> Event:
        while True:
            event: Event = json.loads(await ws.recv())
            GA_SERVER.validate_python(event)
            received.append((time.monotonic(), event))
            if event["type"] == kind:
                return event

    async with (
        asyncio.timeout(20),
        RealtimeSimulator(config) as sim,
        connect(sim.url, additional_headers={"Authorization": "Bearer sk-test"}) as ws,
    ):
        await until(ws, "session.created")
        session_update = {"type": "realtime", "tools": [LOOKUP, DOCS], "tool_choice": "auto"}
        await ws.send(json.dumps({"type": "session.update", "session": session_update}))
        await until(ws, "mcp_list_tools.completed")
        await ws.send(json.dumps({"type": "response.create"}))
        done = await until(ws, "response.function_call_arguments.done")
        assert (done["name"], done["arguments"]) == ("lookup", '{"city":"Oslo"}')
        first = await until(ws, "response.done")
        assert [o["type"] for o in first["response"]["output"]] == [
            "mcp_call",
            "message",
            "function_call",
        ]
        # The MCP server's answer came after the pause, without holding up the loop.
        at = {event["type"]: t for t, event in received}
        assert at["response.mcp_call.completed"] - at["response.mcp_call.in_progress"] >= 0.19
        transcript = next(
            e for _, e in received if e["type"] == "response.output_audio_transcript.done"
        )
        assert transcript["transcript"] == "search says 9 to 5."
        output = {"type": "function_call_output", "call_id": "call_nope", "output": "{}"}
        await ws.send(json.dumps({"type": "conversation.item.create", "item": output}))
        error = await until(ws, "error")
        assert "call_nope" in error["error"]["message"]
        output["call_id"] = done["call_id"]
        await ws.send(json.dumps({"type": "conversation.item.create", "item": output}))
        await until(ws, "conversation.item.done")
        await ws.send(json.dumps({"type": "response.create"}))
        second = await until(ws, "response.done")
        assert [o["type"] for o in second["response"]["output"]] == ["message"]
        assert second["response"]["output"][0]["content"][0]["transcript"] == "lookup says {}."
        session = await sim.wait_for_session(0)
        recorded = await session.wait_for_sent("response.function_call_arguments.done")
        assert recorded["call_id"] == done["call_id"]
        assert session.events_sent("mcp_list_tools.completed")
        assert session.events_received("conversation.item.create")[-1]["item"] == output
    for _, event in session.sent:
        GA_SERVER.validate_python(event)


# ---- Twilio: the <Connect action> request -----------------------------------------------------


async def test_fetch_action_posts_the_signed_form_to_the_loopback_server() -> None:
    seen: list[tuple[str, dict[str, str], str]] = []
    public = "https://bridge.example.com/twilio/after?profile=sales"
    next_step = VoiceResponse()
    next_step.say("Please hold.")
    next_step.hangup()

    async def after(request: Request) -> Response:
        form = dict(parse_qsl((await request.body()).decode()))
        signature = request.headers.get("x-twilio-signature", "")
        seen.append((str(request.url), form, signature))
        valid = RequestValidator(TOKEN).validate(public, form, signature)
        return Response(str(next_step) if valid else "", status_code=200 if valid else 403)

    app = Starlette(routes=[Route("/twilio/after", after, methods=["POST"])])
    async with asyncio.timeout(10), serving(app) as base:
        status, body = await fetch_action(
            public,
            base,
            call_sid="CA" + "1" * 32,
            from_="+15550100001",
            to="+15550100000",
            auth_token=TOKEN,
        )
        assert status == 200, body
        assert parse_next_step(body) == [
            {"verb": "Say", "text": "Please hold."},
            {"verb": "Hangup"},
        ]
        url, form, signature = seen[0]
        assert url == base + "/twilio/after?profile=sales"
        assert form == {
            "AccountSid": "AC" + "0" * 32,
            "CallSid": "CA" + "1" * 32,
            "From": "+15550100001",
            "To": "+15550100000",
            "CallStatus": "in-progress",
            "Direction": "inbound",
            "ApiVersion": "2010-04-01",
        }
        assert signature
        # Signed with another token, or not at all: refused.
        status, _ = await fetch_action(
            public, base, call_sid="CA1", from_="+1", to="+2", auth_token="f" * 32
        )
        assert status == 403
        status, _ = await fetch_action(
            public, base, call_sid="CA1", from_="+1", to="+2", call_status="completed"
        )
        assert status == 403
        assert seen[-1][2] == ""
        assert seen[-1][1]["CallStatus"] == "completed"


def test_parse_connect_action_and_next_step() -> None:
    response = VoiceResponse()
    connect_verb = Connect(action="https://bridge.example.com/twilio/after")
    connect_verb.stream(url="wss://bridge.example.com/twilio/media")
    response.append(connect_verb)
    assert parse_connect_action(str(response)) == "https://bridge.example.com/twilio/after"
    plain = VoiceResponse()
    plain.append(Connect())
    assert parse_connect_action(str(plain)) is None
    assert parse_connect_action("<Response><Say>Hi</Say></Response>") is None

    transfer = VoiceResponse()
    transfer.say("Transferring you now.")
    transfer.dial("+15550100099")
    dial = Dial(timeout=20, caller_id="+15550100000")
    dial.number("+15550100098")
    transfer.append(dial)
    transfer.pause(length=1)
    transfer.hangup()
    assert parse_next_step(str(transfer)) == [
        {"verb": "Say", "text": "Transferring you now."},
        {"verb": "Dial", "number": "+15550100099", "timeout": "30", "callerId": ""},
        {"verb": "Dial", "number": "+15550100098", "timeout": "20", "callerId": "+15550100000"},
        {"verb": "Pause", "length": "1"},
        {"verb": "Hangup"},
    ]
    assert parse_next_step("<Response/>") == []
    with pytest.raises(ValueError, match="well-formed"):
        parse_next_step("<Response><Say>")
    with pytest.raises(ValueError, match="not <Response>"):
        parse_next_step("<Say>Hi</Say>")
    with pytest.raises(ValueError, match="well-formed"):
        parse_connect_action("not xml")
