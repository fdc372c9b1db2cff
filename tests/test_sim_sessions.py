"""Per-session behaviour of the Realtime simulator, for reconnect tests: modes by session index,
drops at an age, session expiry, seeded soak drops, transcripts across sessions, and the record.

Over real WebSockets; every server event a test reads is validated against the GA types (openai).
Timing bounds are generous: a lower bound from the plan, an upper one seconds later.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
from openai.types.realtime import RealtimeServerEvent
from pydantic import TypeAdapter
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from bridge.sim import signals
from bridge.sim.realtime_config import SessionPlan, session_expired_message
from bridge.sim.realtime_record import ConversationItem
from bridge.sim.realtime_server import Mode, RealtimeSimulator, SimConfig
from bridge.sim.realtime_session import RealtimeSessionState
from tests.ga_types import discriminated

GA_SERVER: TypeAdapter[Any] = TypeAdapter(discriminated(RealtimeServerEvent))
AUTH = {"Authorization": "Bearer sk-test"}
REPLY = "Hello! I am doing great, thanks for asking. How can I help you today?"
SLACK = 2.0  # seconds a timed event may come late on a busy machine


async def recv(ws: ClientConnection) -> dict[str, Any]:
    event: dict[str, Any] = json.loads(await ws.recv())
    GA_SERVER.validate_python(event)
    return event


async def until(ws: ClientConnection, type_: str) -> dict[str, Any]:
    while True:
        event = await recv(ws)
        if event["type"] == type_:
            return event


async def read_until_closed(ws: ClientConnection) -> tuple[list[dict[str, Any]], ConnectionClosed]:
    """Every event up to the end of the connection, and how it ended."""
    events: list[dict[str, Any]] = []
    try:
        while True:
            events.append(await recv(ws))
    except ConnectionClosed as closed:
        return events, closed


@contextlib.asynccontextmanager
async def session(sim: RealtimeSimulator) -> AsyncIterator[ClientConnection]:
    """Connected and past `session.created`."""
    async with connect(sim.url, additional_headers=AUTH, open_timeout=5) as ws:
        assert (await recv(ws))["type"] == "session.created"
        yield ws


async def refused(sim: RealtimeSimulator, headers: dict[str, str] = AUTH) -> InvalidStatus:
    with pytest.raises(InvalidStatus) as info:
        async with connect(sim.url, additional_headers=headers, open_timeout=5):
            pass
    return info.value


def types(events: list[dict[str, Any]]) -> list[str]:
    return [event["type"] for event in events]


# ---- modes by session index ----------------------------------------------------------------


async def test_first_session_drops_mid_response_and_the_next_one_works() -> None:
    config = SimConfig(session_modes=(Mode.DROP_MID_RESPONSE, Mode.NORMAL), speedup=20.0)
    async with asyncio.timeout(20), RealtimeSimulator(config) as sim:
        async with session(sim) as ws:
            await ws.send(json.dumps({"type": "response.create"}))
            events, closed = await read_until_closed(ws)
        assert closed.rcvd is None  # no close frame: the TCP connection was dropped
        assert types(events).count("response.output_audio.delta") == config.drop_after_deltas
        assert "response.done" not in types(events)

        async with session(sim) as ws:
            await ws.send(json.dumps({"type": "response.create"}))
            done = await until(ws, "response.done")
        assert done["response"]["status"] == "completed"

        first, second = sim.sessions
        await asyncio.wait_for(first.closed.wait(), 5)
        assert (first.plan.index, first.plan.mode, first.close_code) == (
            0,
            Mode.DROP_MID_RESPONSE,
            1006,
        )
        assert (second.plan.index, second.plan.mode) == (1, Mode.NORMAL)
        assert sim.rejected == []


async def test_later_sessions_refuse_with_403_then_the_global_mode_applies() -> None:
    config = SimConfig(session_modes=(Mode.NORMAL, Mode.REJECT_CONNECT, Mode.REJECT_CONNECT))
    async with asyncio.timeout(20), RealtimeSimulator(config) as sim:
        async with session(sim):
            pass
        for _ in range(2):
            assert (await refused(sim)).response.status_code == 403
        async with session(sim):  # past the sequence: `mode` (NORMAL)
            pass
        assert [s.plan.index for s in sim.sessions] == [0, 3]
        assert len(sim.rejected) == 2
        assert sim.rejected[0]["authorization"] == "Bearer sk-test"
        assert sim.handshakes == 4


async def test_unavailable_refuses_the_handshake_with_503() -> None:
    config = SimConfig(mode=Mode.UNAVAILABLE)
    async with asyncio.timeout(10), RealtimeSimulator(config) as sim:
        status = await refused(sim)
        assert status.response.status_code == 503
        body = json.loads(status.response.body or b"{}")
        assert body["error"]["type"] == "server_error"
        assert body["error"]["message"] == "The server is overloaded or not ready yet."
        assert sim.sessions == []
        assert len(sim.rejected) == 1


async def test_a_refused_handshake_is_a_session_index_of_its_own() -> None:
    config = SimConfig(session_modes=(Mode.NORMAL, Mode.ALWAYS_TEXT))
    async with asyncio.timeout(10), RealtimeSimulator(config) as sim:
        assert (await refused(sim, headers={})).response.status_code == 401  # index 0
        async with session(sim) as ws:  # index 1
            await ws.send(json.dumps({"type": "response.create"}))
            done = await until(ws, "response.done")
        assert done["response"]["output"][0]["content"][0]["type"] == "output_text"
        assert sim.sessions[0].plan == SessionPlan(1, Mode.ALWAYS_TEXT)


# ---- drops at an age -------------------------------------------------------------------------


async def test_drop_after_aborts_at_its_age_whatever_the_session_is_doing() -> None:
    config = SimConfig(
        session_modes=(Mode.DROP_AFTER, Mode.DROP_AFTER), drop_after_seconds=0.5, speedup=1.0
    )
    async with asyncio.timeout(20), RealtimeSimulator(config) as sim:
        # Idle.
        start = time.monotonic()
        async with session(sim) as ws:
            _, closed = await read_until_closed(ws)
        idle_life = time.monotonic() - start
        assert closed.rcvd is None
        # Mid-response: real-time pacing would need seconds to finish the reply.
        start = time.monotonic()
        async with session(sim) as ws:
            await ws.send(json.dumps({"type": "response.create"}))
            events, closed = await read_until_closed(ws)
        busy_life = time.monotonic() - start
        assert closed.rcvd is None
        assert "response.output_audio.delta" in types(events)
        assert "response.done" not in types(events)

        for life in (idle_life, busy_life):
            assert 0.5 - 0.05 <= life < 0.5 + SLACK
        for record in sim.sessions:
            await asyncio.wait_for(record.closed.wait(), 5)
            assert record.close_code == 1006
            assert record.plan.drop_after == 0.5
            assert record.closed_at is not None
            assert record.closed_at - record.accepted_at >= 0.5


# ---- session expiry --------------------------------------------------------------------------


def test_session_expired_message_and_event_shape() -> None:
    assert session_expired_message(3600) == "Your session hit the maximum duration of 60 minutes."
    assert session_expired_message(1800) == "Your session hit the maximum duration of 30 minutes."
    state = RealtimeSessionState(SimConfig(), max_seconds=3600)
    assert abs(state.session["expires_at"] - (time.time() + 3600)) <= 2
    (event,) = state.expire()
    GA_SERVER.validate_python(event)
    assert event["error"] == {
        "type": "invalid_request_error",
        "code": "session_expired",
        "message": "Your session hit the maximum duration of 60 minutes.",
        "param": None,
        "event_id": None,
    }


async def test_session_expiry_sends_the_real_error_and_closes_1000() -> None:
    config = SimConfig(session_max_seconds=0.6, speedup=1.0)
    async with asyncio.timeout(20), RealtimeSimulator(config) as sim:
        start = time.time()
        async with connect(sim.url, additional_headers=AUTH, open_timeout=5) as ws:
            created = await recv(ws)
            await ws.send(json.dumps({"type": "response.create"}))
            events, closed = await read_until_closed(ws)
        life = time.time() - start
        assert abs(created["session"]["expires_at"] - (start + 0.6)) <= 1.5
        assert closed.rcvd is not None
        assert closed.rcvd.code == 1000
        assert 0.6 - 0.05 <= life < 0.6 + SLACK
        # A reply was streaming; the error is the last event and ends it without `response.done`.
        assert "response.output_audio.delta" in types(events)
        assert "response.done" not in types(events)
        error = events[-1]
        assert error["type"] == "error"
        assert isinstance(error["event_id"], str)
        assert error["error"] == {
            "type": "invalid_request_error",
            "code": "session_expired",
            "message": session_expired_message(0.6),
            "param": None,
            "event_id": None,
        }
        record = sim.sessions[0]
        await asyncio.wait_for(record.closed.wait(), 5)
        assert record.close_code == 1000
        assert record.events_sent("error") == [error]


async def test_events_after_expiry_get_no_answer() -> None:
    config = SimConfig(session_max_seconds=0.3)
    async with asyncio.timeout(20), RealtimeSimulator(config) as sim, session(sim) as ws:
        error = await until(ws, "error")
        assert error["error"]["code"] == "session_expired"
        with contextlib.suppress(ConnectionClosed):
            await ws.send(json.dumps({"type": "response.create"}))
        events, closed = await read_until_closed(ws)
        assert events == []
        assert closed.rcvd is not None
        assert closed.rcvd.code == 1000


# ---- seeded drops for soak tests -------------------------------------------------------------


def test_drop_every_seconds_plans_are_seeded_and_spread() -> None:
    def lives(seed: int) -> list[float]:
        config = SimConfig(drop_every_seconds=180.0, seed=seed)
        return [config.session_plan(i).drop_after or 0.0 for i in range(50)]

    assert lives(7) == lives(7)
    assert lives(7) != lives(8)
    assert all(180.0 * 0.8 <= life <= 180.0 * 1.2 for life in lives(7))
    assert max(lives(7)) - min(lives(7)) > 180.0 * 0.2
    # With DROP_AFTER too the earlier drop wins; expiry is planned on its own.
    config = SimConfig(
        mode=Mode.DROP_AFTER, drop_after_seconds=1.0, drop_every_seconds=180.0, seed=7
    )
    assert config.session_plan(3) == SessionPlan(3, Mode.DROP_AFTER, 1.0, None)
    config = SimConfig(drop_every_seconds=180.0, seed=7, session_max_seconds=60.0)
    assert config.session_plan(3).max_seconds == 60.0
    assert config.session_plan(3).drop_after == lives(7)[3]


async def test_drop_every_seconds_aborts_each_session_at_its_planned_age() -> None:
    config = SimConfig(drop_every_seconds=0.5, seed=11)
    expected = [config.session_plan(i).drop_after for i in range(3)]
    async with asyncio.timeout(20), RealtimeSimulator(config) as sim:

        async def one() -> ConnectionClosed:
            async with session(sim) as ws:
                return (await read_until_closed(ws))[1]

        async with asyncio.TaskGroup() as tg:
            ends = [tg.create_task(one()) for _ in range(3)]
        assert all(end.result().rcvd is None for end in ends)
        assert sorted(s.plan.drop_after or 0.0 for s in sim.sessions) == sorted(
            life or 0.0 for life in expected
        )
        for record in sim.sessions:
            await asyncio.wait_for(record.closed.wait(), 5)
            assert record.close_code == 1006
            life = record.plan.drop_after
            assert life is not None
            assert record.closed_at is not None
            assert life <= record.closed_at - record.accepted_at < life + SLACK


# ---- transcripts across sessions and the record ------------------------------------------------


async def _spoken_turn(ws: ClientConnection) -> str:
    """A manual commit of 0.3 s of tone; the caller transcript the server assigns it."""
    pcm = signals.to_pcm16(signals.tone(440.0, 0.3, 24000))
    await ws.send(
        json.dumps({"type": "input_audio_buffer.append", "audio": base64.b64encode(pcm).decode()})
    )
    await ws.send(json.dumps({"type": "input_audio_buffer.commit"}))
    done = await until(ws, "conversation.item.input_audio_transcription.completed")
    return str(done["transcript"])


MANUAL_TURNS_WITH_TRANSCRIPTION = {
    "type": "session.update",
    "session": {
        "type": "realtime",
        "audio": {
            "input": {"turn_detection": None, "transcription": {"model": "whisper-1"}},
        },
    },
}


@pytest.mark.parametrize(
    ("per_simulator", "heard"),
    [(True, ["one", "two", "three", "one"]), (False, ["one", "two", "one", "two"])],
)
async def test_caller_transcripts_across_sessions(per_simulator: bool, heard: list[str]) -> None:
    config = SimConfig(
        caller_transcripts=("one", "two", "three"), transcripts_per_simulator=per_simulator
    )
    texts: list[str] = []
    async with asyncio.timeout(20), RealtimeSimulator(config) as sim:
        for _ in range(2):
            async with session(sim) as ws:
                await ws.send(json.dumps(MANUAL_TURNS_WITH_TRANSCRIPTION))
                await until(ws, "session.updated")
                texts += [await _spoken_turn(ws), await _spoken_turn(ws)]
    assert texts == heard


async def test_record_keeps_instructions_and_the_final_conversation() -> None:
    config = SimConfig(caller_transcripts=("What time do you open?",), speedup=50.0)
    async with asyncio.timeout(20), RealtimeSimulator(config) as sim:
        async with session(sim) as ws:
            for instructions in ("Be brief.", "Be brief. Earlier the caller asked: hours."):
                update = {"type": "realtime", "instructions": instructions}
                await ws.send(json.dumps({"type": "session.update", "session": update}))
                await until(ws, "session.updated")
            await ws.send(json.dumps(MANUAL_TURNS_WITH_TRANSCRIPTION))
            await until(ws, "session.updated")
            await _spoken_turn(ws)
            await ws.send(json.dumps({"type": "response.create"}))
            await until(ws, "response.done")
        record = sim.sessions[0]
        await asyncio.wait_for(record.closed.wait(), 5)
    assert record.instructions_received == [
        "Be brief.",
        "Be brief. Earlier the caller asked: hours.",
    ]
    assert record.session["instructions"] == "Be brief. Earlier the caller asked: hours."
    items = record.conversation_items()
    assert [(item.type, item.role) for item in items] == [
        ("message", "user"),
        ("message", "assistant"),
    ]
    assert items[0].text == "What time do you open?"
    assert items[1] == ConversationItem(
        "message", "assistant", [{"type": "output_audio", "transcript": REPLY}]
    )
    assert not [
        item
        for item in items
        if item.role == "assistant" and any(p["type"] == "output_text" for p in item.content)
    ]
