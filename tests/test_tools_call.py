"""The assistant acts on a call, end to end over real sockets: HTTP tools (answered, failing,
slow with a holding phrase), end_call, transfers answered by another worker, the keypad, MCP.

The simulated caller dials the real bridge, the Realtime simulator makes the function calls, a
real HTTP service on loopback answers the tools, and `<Connect action>` is asked as Twilio asks.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from twilio.request_validator import RequestValidator

from bridge import metrics
from bridge.app import create_app
from bridge.record import EndReason, MemoryRecorder
from bridge.server import serving
from bridge.sim.analysis import active_segments, dominant_frequency
from bridge.sim.realtime_config import SimToolCall
from bridge.sim.realtime_server import RealtimeSimulator, SimSession
from bridge.sim.signals import silence, tone
from bridge.sim.tool_server import ToolService
from bridge.sim.twilio_caller import (
    TwilioCaller,
    fetch_action,
    fetch_twiml,
    loopback_url,
    parse_connect_action,
    parse_next_step,
    parse_stream,
)
from bridge.store import CallLog
from tests.conftest import RunningBridge, make_settings
from tests.ga_types import GA_CLIENT_STRICT

RATE_IN, RATE_MODEL = 8000, 24000
ORDERS_TOKEN = "orders-token-9f8e7d"
CRM_TOKEN = "crm-token-1a2b3c"
CALLER, CALLED = "+15550100001", "+15550100000"


def numbers_toml(orders_url: str, timeout: float = 5.0) -> str:
    return f"""
[profiles.default]
instructions = "You are the order desk."
greeting = ""

[profiles.default.transfer]
destinations = {{ front_desk = "+15550100100", billing = "+15550100200" }}
say = "Connecting you now."
timeout_seconds = 25

[profiles.default.keypad]
"0" = "transfer:billing"
"9" = "end_call"

[[profiles.default.tools]]
name = "lookup_order"
description = "Look up an order by its number"
url = "{orders_url}"
method = "POST"
parameters.type = "object"
parameters.properties.order.type = "string"
parameters.required = ["order"]
headers = {{ Authorization = "Bearer ${{ORDERS_TOKEN}}" }}
timeout_seconds = {timeout}

[[profiles.default.mcp]]
server_label = "crm"
server_url = "https://mcp.example.com/mcp"
headers = {{ Authorization = "Bearer ${{CRM_TOKEN}}" }}
allowed_tools = ["find_customer"]
"""


@contextlib.asynccontextmanager
async def tool_bridge(
    simulator: RealtimeSimulator,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    orders_url: str,
    *,
    timeout: float = 5.0,
    **overrides: Any,
) -> AsyncIterator[RunningBridge]:
    monkeypatch.setenv("ORDERS_TOKEN", ORDERS_TOKEN)
    monkeypatch.setenv("CRM_TOKEN", CRM_TOKEN)
    path = tmp_path / "numbers.toml"
    path.write_text(numbers_toml(orders_url, timeout))
    recorder = MemoryRecorder()
    settings = make_settings(simulator, numbers_file=str(path), **overrides)
    app = create_app(settings, recorder=recorder)
    async with serving(app) as base:
        yield RunningBridge(base, app, recorder, settings)


def utterance(seconds: float = 0.6) -> np.ndarray:
    return np.concatenate([tone(300, seconds, RATE_IN, 0.4), silence(0.8, RATE_IN)])


def tones(*freqs: float, seconds: float = 1.0) -> Callable[[int], np.ndarray]:
    """Reply audio per response of the session: the n-th response is a tone of freqs[n]."""
    return lambda turn: tone(freqs[min(turn, len(freqs) - 1)], seconds, RATE_MODEL, 0.5)


def heard_tones(heard: np.ndarray) -> list[tuple[float, float, float]]:
    """(start s, length s, dominant Hz) of each tone the caller heard, in order: stretches of
    sound, split where the dominant frequency of 100 ms windows changes."""
    out: list[tuple[float, float, float]] = []
    window = RATE_IN // 10
    for start, end in active_segments(heard, RATE_IN, threshold_db=-30):
        first, last = int(start * RATE_IN), int(end * RATE_IN)
        bounds = list(range(first, last - window // 2, window))
        freqs = [
            round(dominant_frequency(heard[at : min(at + window, last)], RATE_IN), -1)
            for at in bounds
        ]
        run_start = 0
        for index in range(1, len(freqs) + 1):
            if index == len(freqs) or abs(freqs[index] - freqs[run_start]) > 20:
                at = bounds[run_start]
                until = bounds[index] if index < len(freqs) else last
                part = heard[at:until]
                out.append(
                    (at / RATE_IN, (until - at) / RATE_IN, dominant_frequency(part, RATE_IN))
                )
                run_start = index
    return out


def assert_ga_events(session: SimSession) -> None:
    for _, event in session.received:
        GA_CLIENT_STRICT.validate_python(event)


def sent_of(session: SimSession, kind: str) -> list[dict[str, Any]]:
    return [event for _, event in session.received if event.get("type") == kind]


def sample(series: str, **labels: str) -> float:
    return metrics.REGISTRY.get_sample_value(series, labels) or 0.0


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# ---- HTTP tools --------------------------------------------------------------------------------


async def test_a_tool_call_runs_over_http_and_its_answer_is_spoken(
    simulator: RealtimeSimulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = simulator.config
    config.replies = ("Let me look that up.",)
    config.tool_calls = {0: [SimToolCall("lookup_order", {"order": "A42"})]}
    config.tool_reply = lambda name, output: f"Order {json.loads(output)['order']} has shipped."
    config.reply_audio = tones(440, 1000, seconds=0.8)
    labels = {"name": "lookup_order", "kind": "http", "outcome": "ok"}
    calls_before = sample("bridge_tool_calls_total", **labels)
    timed_before = sample("bridge_tool_seconds_count", kind="http")
    async with (
        ToolService() as service,
        tool_bridge(simulator, tmp_path, monkeypatch, service.url("/orders")) as bridge,
        bridge.dial() as (caller, _),
    ):
        session = await simulator.wait_for_session()
        await caller.say_and_wait(utterance())
        await session.wait_for_sent("response.done", count=2, timeout=10)
        await caller.wait_until_quiet(0.5, timeout=10)
        await caller.hangup()
    # The tool's request, with the secret header expanded.
    (request,) = service.requests
    assert request.body == {"order": "A42"}
    assert request.headers["authorization"] == f"Bearer {ORDERS_TOKEN}"
    # The model got the body as the output, then a reply was asked for, and the caller heard it.
    (output,) = [e for e in sent_of(session, "conversation.item.create")]
    assert output["item"]["type"] == "function_call_output"
    assert json.loads(output["item"]["output"])["status"] == "shipped"
    assert [round(hz, -1) for _, _, hz in heard_tones(caller.heard())] == [440, 1000]
    assert_ga_events(session)
    # The session offered every tool, each valid against the SDK's GA types.
    (update,) = sent_of(session, "session.update")
    offered = {tool.get("name") or tool["server_label"] for tool in update["session"]["tools"]}
    assert offered == {"end_call", "transfer_call", "lookup_order", "crm"}
    record = await bridge.finished(caller.call_sid)
    (tool,) = record.tool_calls
    assert (tool.name, tool.kind, tool.outcome, tool.holding_phrase) == (
        "lookup_order",
        "http",
        "ok",
        False,
    )
    assert json.loads(tool.arguments) == {"order": "A42"}
    assert ORDERS_TOKEN not in repr(record)
    assert sample("bridge_tool_calls_total", **labels) == calls_before + 1
    assert sample("bridge_tool_seconds_count", kind="http") == timed_before + 1


@pytest.mark.parametrize("failure", ["status 500", "timeout", "refused"])
async def test_a_failing_tool_gives_an_error_output_and_the_call_goes_on(
    simulator: RealtimeSimulator,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    failure: str,
) -> None:
    config = simulator.config
    config.replies = ("",)  # the function call only
    config.tool_calls = {0: [SimToolCall("lookup_order", {"order": "A42"})]}
    config.tool_reply = lambda name, output: "Sorry, I cannot reach the order system."
    config.reply_audio = tones(1000, seconds=0.6)
    async with ToolService() as service:
        url = service.url("/orders")
        if failure == "status 500":
            service.statuses["/orders"] = 500
        elif failure == "timeout":
            service.delays["/orders"] = 3.0
        else:
            url = f"http://127.0.0.1:{closed_port()}/orders"
        async with (
            tool_bridge(simulator, tmp_path, monkeypatch, url, timeout=0.5) as bridge,
            bridge.dial() as (caller, _),
        ):
            session = await simulator.wait_for_session()
            await caller.say_and_wait(utterance())
            await session.wait_for_sent("response.done", count=2, timeout=10)
            await caller.wait_until_quiet(0.5, timeout=10)
            await caller.hangup()
    (output,) = sent_of(session, "conversation.item.create")
    error = json.loads(output["item"]["output"])["error"]
    expected = {
        "status 500": "HTTP 500 Internal Server Error",
        "timeout": "timed out after 0.5 s",
        "refused": "could not reach the service (ConnectError)",
    }[failure]
    assert error == expected
    # The next reply was asked for and spoken: the call carried on.
    assert [round(hz, -1) for _, _, hz in heard_tones(caller.heard())] == [1000]
    record = await bridge.finished(caller.call_sid)
    assert record.end_reason is EndReason.CALLER_HANGUP
    (tool,) = record.tool_calls
    assert (tool.outcome, tool.error) == (
        "error",
        expected.split(" (")[0] if failure != "refused" else expected,
    )


async def test_a_slow_tool_gets_a_holding_phrase_heard_within_2_s(
    simulator: RealtimeSimulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = simulator.config
    config.replies = ("",)  # only the function call: the caller would hear nothing
    config.tool_calls = {0: [SimToolCall("lookup_order", {"order": "A42"})]}
    config.tool_reply = lambda name, output: "Your order has shipped."
    # Response 0 is the call (no audio); 1 the holding phrase; 2 the answer.
    config.reply_audio = lambda turn: tone(700 if turn == 1 else 1000, 0.7, RATE_MODEL, 0.5)
    async with ToolService() as service:
        service.delays["/orders"] = 3.5
        async with (
            tool_bridge(simulator, tmp_path, monkeypatch, service.url("/orders")) as bridge,
            bridge.dial() as (caller, _),
        ):
            session = await simulator.wait_for_session()
            await caller.say_and_wait(utterance())
            await session.wait_for_sent("response.done", count=3, timeout=15)
            await caller.wait_until_quiet(0.8, timeout=10)
            await caller.hangup()
    heard = heard_tones(caller.heard())
    assert [round(hz, -1) for _, _, hz in heard] == [700, 1000]
    (request,) = service.requests
    holding_at = caller.started_at + heard[0][0]
    # Due 1.5 s after the tool started; the service sees the request a little after that start.
    assert 1.0 < holding_at - request.at < 2.0  # the silence while the tool ran
    holding = [e for e in sent_of(session, "response.create") if "tool_choice" in e["response"]]
    (create,) = holding
    assert create["response"]["tool_choice"] == "none"
    assert_ga_events(session)
    record = await bridge.finished(caller.call_sid)
    (tool,) = record.tool_calls
    assert tool.holding_phrase
    assert tool.duration_ms is not None
    assert tool.duration_ms >= 3400
    assert [e.kind for e in record.events if e.kind == "holding_phrase"] == ["holding_phrase"]


# ---- end_call and transfer ---------------------------------------------------------------------


async def test_end_call_hangs_up_after_the_goodbye_is_heard_in_full(
    simulator: RealtimeSimulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = simulator.config
    config.replies = ("Thanks for calling. Goodbye!",)
    config.tool_calls = {0: [SimToolCall("end_call", {"reason": "the caller is done"})]}
    config.reply_audio = tones(1000, seconds=1.5)
    async with (
        ToolService() as service,
        tool_bridge(simulator, tmp_path, monkeypatch, service.url("/orders")) as bridge,
        bridge.dial() as (caller, action),
    ):
        await caller.say_and_wait(utterance())
        await caller.wait_closed(timeout=10)  # the bridge hangs up
        status, twiml = await fetch_action(
            action, bridge.base, call_sid=caller.call_sid, from_=CALLER, to=CALLED
        )
    assert caller.closed_by == "bridge"
    assert caller.close_code == 1000
    (goodbye,) = heard_tones(caller.heard())
    assert goodbye[1] == pytest.approx(1.5, abs=0.05)  # every millisecond of it
    assert goodbye[2] == pytest.approx(1000, abs=5)
    assert status == 200
    assert parse_next_step(twiml) == [{"verb": "Hangup"}]
    record = await bridge.finished(caller.call_sid)
    assert record.end_reason is EndReason.ASSISTANT_HANGUP
    assert record.end_detail == "end_call: the caller is done"
    (tool,) = record.tool_calls
    assert (tool.name, tool.outcome) == ("end_call", "ok")


async def test_transfer_is_dialled_by_whichever_worker_twilio_asks(
    simulator: RealtimeSimulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two workers share one call-log database: the call runs on one, Twilio's `<Connect
    action>` request reaches the other, which answers with the transfer's `<Dial>`. The action
    is signed like every Twilio request."""
    token = "0123456789abcdef0123456789abcdef"
    public = "https://bridge.example.com"
    config = simulator.config
    config.replies = ("I will put you through to the front desk.",)
    config.tool_calls = {0: [SimToolCall("transfer_call", {"destination": "front_desk"})]}
    config.reply_audio = tones(800, seconds=1.0)
    database = f"sqlite+aiosqlite:///{tmp_path / 'calls.db'}"
    transfers = sample("bridge_transfers_total", via="tool")
    async with (
        ToolService() as service,
        CallLog(database) as log_a,
        CallLog(database) as log_b,
        tool_bridge(
            simulator,
            tmp_path,
            monkeypatch,
            service.url("/orders"),
            twilio_auth_token=token,
            public_url=public,
        ) as worker_a,
    ):
        worker_a.state.next_steps = log_a.next_steps
        settings_b = make_settings(simulator, twilio_auth_token=token, public_url=public)
        app_b = create_app(settings_b, recorder=MemoryRecorder())
        app_b.state.bridge.next_steps = log_b.next_steps
        async with serving(app_b) as base_b:
            call_sid, caller = await signed_call(worker_a, token, public)
            async with caller:
                await caller.say_and_wait(utterance())
                await caller.wait_closed(timeout=10)
            action = public + "/twilio/stream-ended"
            unsigned = await fetch_action(
                action, base_b, call_sid=call_sid, from_=CALLER, to=CALLED
            )
            wrong = await fetch_action(
                action, base_b, call_sid=call_sid, from_=CALLER, to=CALLED, auth_token="f" * 32
            )
            status, twiml = await fetch_action(
                action, base_b, call_sid=call_sid, from_=CALLER, to=CALLED, auth_token=token
            )
    assert unsigned[0] == 403
    assert wrong[0] == 403
    assert status == 200
    assert parse_next_step(twiml) == [
        {"verb": "Say", "text": "Connecting you now."},
        {"verb": "Dial", "number": "+15550100100", "timeout": "25", "callerId": ""},
        {"verb": "Hangup"},
    ]
    (reply,) = heard_tones(caller.heard())
    assert reply[1] == pytest.approx(1.0, abs=0.05)  # the last sentence, whole
    record = await worker_a.finished(call_sid)
    assert record.end_reason is EndReason.TRANSFERRED
    assert (record.transfer_to, record.transfer_number) == ("front_desk", "+15550100100")
    assert sample("bridge_transfers_total", via="tool") == transfers + 1


async def signed_call(bridge: RunningBridge, token: str, public: str) -> tuple[str, TwilioCaller]:
    call_sid = "CA" + os.urandom(16).hex()
    form = {
        "CallSid": call_sid,
        "AccountSid": "AC" + "0" * 32,
        "From": CALLER,
        "To": CALLED,
        "CallStatus": "ringing",
        "Direction": "inbound",
        "ApiVersion": "2010-04-01",
    }
    validator = RequestValidator(token)
    signature = validator.compute_signature(public + "/twilio/voice", form)
    status, twiml = await fetch_twiml(
        bridge.base,
        from_=CALLER,
        to=CALLED,
        call_sid=call_sid,
        headers={"X-Twilio-Signature": signature},
    )
    assert status == 200, twiml
    assert parse_connect_action(twiml) == public + "/twilio/stream-ended"
    url, parameters = parse_stream(twiml)
    stream_signature = validator.compute_signature(url, {})
    caller = TwilioCaller(
        loopback_url(url, bridge.base),
        custom_parameters=parameters,
        call_sid=call_sid,
        headers={"X-Twilio-Signature": stream_signature},
    )
    return call_sid, caller


async def test_a_call_the_caller_hung_up_is_answered_with_a_hangup(
    simulator: RealtimeSimulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with (
        ToolService() as service,
        tool_bridge(simulator, tmp_path, monkeypatch, service.url("/orders")) as bridge,
    ):
        async with bridge.dial() as (caller, action):
            await caller.hangup()
        status, twiml = await fetch_action(
            action, bridge.base, call_sid=caller.call_sid, from_=CALLER, to=CALLED
        )
    assert status == 200
    assert parse_next_step(twiml) == [{"verb": "Hangup"}]


# ---- keypad ------------------------------------------------------------------------------------


async def test_a_keypad_transfer_acts_at_once(
    simulator: RealtimeSimulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = simulator.config
    config.replies = ("Here is a long answer that goes on and on.",)
    config.reply_audio = tones(600, seconds=4.0)
    async with (
        ToolService() as service,
        tool_bridge(simulator, tmp_path, monkeypatch, service.url("/orders")) as bridge,
        bridge.dial() as (caller, action),
    ):
        await caller.say_and_wait(utterance())
        await caller.wait_for_playback(0.5, timeout=10)
        loop = asyncio.get_running_loop()
        pressed = loop.time()
        await caller.press("0")
        await caller.wait_closed(timeout=5)
        closed = loop.time()
        status, twiml = await fetch_action(
            action, bridge.base, call_sid=caller.call_sid, from_=CALLER, to=CALLED
        )
    assert status == 200
    assert closed - pressed < 0.5  # no model round trip
    assert caller.clears  # the long answer was stopped
    assert [step["verb"] for step in parse_next_step(twiml)] == ["Say", "Dial", "Hangup"]
    assert parse_next_step(twiml)[1]["number"] == "+15550100200"
    record = await bridge.finished(caller.call_sid)
    assert record.end_reason is EndReason.TRANSFERRED
    assert record.transfer_to == "billing"
    (tool,) = record.tool_calls
    assert (tool.kind, tool.name, json.loads(tool.arguments)) == (
        "keypad",
        "transfer_call",
        {"key": "0", "destination": "billing"},
    )


# ---- MCP ---------------------------------------------------------------------------------------


async def test_mcp_servers_are_offered_and_their_calls_recorded(
    simulator: RealtimeSimulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = simulator.config
    config.mcp_tools = {"crm": ["find_customer", "delete_customer"]}
    config.tool_calls = {
        0: [SimToolCall("find_customer", {"phone": CALLER}, server_label="crm", output="Ann Lee")]
    }
    config.tool_reply = lambda name, output: f"Hello {output}."
    config.reply_audio = tones(900, seconds=0.6)
    async with (
        ToolService() as service,
        tool_bridge(simulator, tmp_path, monkeypatch, service.url("/orders")) as bridge,
        bridge.dial() as (caller, _),
    ):
        session = await simulator.wait_for_session()
        await caller.say_and_wait(utterance())
        await session.wait_for_sent("response.done", timeout=10)
        await caller.wait_until_quiet(0.5, timeout=10)
        await caller.hangup()
    (update,) = sent_of(session, "session.update")
    (mcp,) = [tool for tool in update["session"]["tools"] if tool["type"] == "mcp"]
    assert mcp["headers"] == {"Authorization": f"Bearer {CRM_TOKEN}"}  # expanded on the wire
    assert mcp["allowed_tools"] == ["find_customer"]
    assert_ga_events(session)
    record = await bridge.finished(caller.call_sid)
    (tool,) = record.tool_calls
    assert (tool.kind, tool.name, tool.outcome, tool.result) == (
        "mcp",
        "find_customer",
        "ok",
        "Ann Lee",
    )
    (listed,) = [e for e in record.events if e.kind == "mcp_tools_listed"]
    assert listed.detail == {"server_label": "crm", "tools": ["find_customer"]}
    assert CRM_TOKEN not in repr(record.events)


async def test_one_call_runs_at_most_4_tools_at_once(
    simulator: RealtimeSimulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = simulator.config
    config.replies = ("",)
    config.tool_calls = {
        0: [SimToolCall("lookup_order", {"order": f"A{n}"}) for n in range(6)],
    }
    config.tool_reply = lambda name, output: "All six orders have shipped."
    config.reply_audio = tones(1000, seconds=0.5)
    async with ToolService() as service:
        service.delays["/orders"] = 0.6
        async with (
            tool_bridge(simulator, tmp_path, monkeypatch, service.url("/orders")) as bridge,
            bridge.dial() as (caller, _),
        ):
            session = await simulator.wait_for_session()
            await caller.say_and_wait(utterance())
            await session.wait_for_sent("response.done", count=2, timeout=10)
            await caller.hangup()
    arrivals = sorted(request.at for request in service.requests)
    assert len(arrivals) == 6
    assert arrivals[3] - arrivals[0] < 0.3  # four at once...
    assert arrivals[4] - arrivals[0] > 0.5  # ...the rest once one has answered
    # One reply for all six outputs, asked for once the last one is in.
    outputs = sent_of(session, "conversation.item.create")
    assert len(outputs) == 6
    creates = sent_of(session, "response.create")
    assert len(creates) == 1
    record = await bridge.finished(caller.call_sid)
    assert [tool.outcome for tool in record.tool_calls] == ["ok"] * 6


async def test_a_transfer_to_an_unknown_destination_is_refused_and_the_call_goes_on(
    simulator: RealtimeSimulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = simulator.config
    config.replies = ("",)
    config.tool_calls = {0: [SimToolCall("transfer_call", {"destination": "ceo"})]}
    config.tool_reply = lambda name, output: "I can connect you to the front desk or billing."
    config.reply_audio = tones(1000, seconds=0.6)
    async with (
        ToolService() as service,
        tool_bridge(simulator, tmp_path, monkeypatch, service.url("/orders")) as bridge,
        bridge.dial() as (caller, _),
    ):
        session = await simulator.wait_for_session()
        await caller.say_and_wait(utterance())
        await session.wait_for_sent("response.done", count=2, timeout=10)
        await caller.wait_until_quiet(0.5, timeout=10)
        await caller.hangup()
    (output,) = sent_of(session, "conversation.item.create")
    error = json.loads(output["item"]["output"])["error"]
    assert error == "unknown destination 'ceo'; use one of: billing, front_desk"
    assert [round(hz, -1) for _, _, hz in heard_tones(caller.heard())] == [1000]
    record = await bridge.finished(caller.call_sid)
    assert record.end_reason is EndReason.CALLER_HANGUP
    assert record.transfer_to == ""
    assert [tool.outcome for tool in record.tool_calls] == ["error"]


async def test_a_keypad_end_call_hangs_up_at_once(
    simulator: RealtimeSimulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with (
        ToolService() as service,
        tool_bridge(simulator, tmp_path, monkeypatch, service.url("/orders")) as bridge,
        bridge.dial() as (caller, action),
    ):
        await asyncio.sleep(0.3)
        await caller.press("9")
        await caller.wait_closed(timeout=5)
        status, twiml = await fetch_action(
            action, bridge.base, call_sid=caller.call_sid, from_=CALLER, to=CALLED
        )
    assert caller.closed_by == "bridge"
    assert status == 200
    assert parse_next_step(twiml) == [{"verb": "Hangup"}]
    record = await bridge.finished(caller.call_sid)
    assert (record.end_reason, record.end_detail) == (
        EndReason.ASSISTANT_HANGUP,
        "keypad 9: end_call",
    )
    assert [e.detail["digit"] for e in record.events if e.kind == "dtmf"] == ["9"]
