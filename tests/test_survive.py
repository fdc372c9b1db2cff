"""Calls that survive, end to end over real sockets: a lost Realtime session is replaced within a
second with the conversation so far and no caller audio lost; a budget that runs out ends the
stream with the profile's fallback; a service that cannot be reached is answered with the
fallback at the webhook; a Media Stream that goes silent is ended and its session closed."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from bridge import metrics
from bridge.app import create_app
from bridge.profiles import Profile
from bridge.record import EndReason, MemoryRecorder
from bridge.server import serving
from bridge.sim.analysis import active_segments, dominant_frequency
from bridge.sim.realtime_server import Mode, RealtimeSimulator
from bridge.sim.signals import from_pcm16, silence, tone
from bridge.sim.twilio_caller import (
    fetch_action,
    fetch_twiml,
    parse_next_step,
)
from tests.conftest import RunningBridge, make_settings
from tests.ga_types import GA_CLIENT_STRICT

RATE_IN, RATE_MODEL = 8000, 24000
CALLER, CALLED = "+15550100001", "+15550100000"
NUMBERS = """
[profiles.default]
instructions = "You are the order desk."
greeting = ""
reconnect_seconds = {budget}

[profiles.default.fallback]
say = "Sorry, our assistant is unavailable. Let me connect you to a person."
dial = "+15550100100"
"""


@contextlib.asynccontextmanager
async def survivor(
    simulator: RealtimeSimulator, tmp_path: Path, budget: float = 5.0, **overrides: Any
) -> AsyncIterator[RunningBridge]:
    path = tmp_path / "numbers.toml"
    path.write_text(NUMBERS.format(budget=budget))
    recorder = MemoryRecorder()
    settings = make_settings(simulator, numbers_file=str(path), **overrides)
    app = create_app(settings, recorder=recorder)
    async with serving(app) as base:
        yield RunningBridge(base, app, recorder, settings)


def utterance(freq: float = 300.0, seconds: float = 0.6) -> np.ndarray:
    return np.concatenate([tone(freq, seconds, RATE_IN, 0.4), silence(0.8, RATE_IN)])


def reconnects(outcome: str) -> float:
    return metrics.REGISTRY.get_sample_value("bridge_reconnects_total", {"outcome": outcome}) or 0


async def test_a_lost_session_is_replaced_within_1_s_and_knows_the_conversation(
    simulator: RealtimeSimulator, tmp_path: Path
) -> None:
    config = simulator.config
    config.session_modes = (Mode.DROP_AFTER, Mode.NORMAL)
    config.drop_after_seconds = 3.0
    config.transcripts_per_simulator = True
    config.caller_transcripts = ("My order number is 42.", "Has it shipped yet?")
    config.replies = ("Thanks, I found order 42.", "Yes, it shipped on Monday.")
    config.reply_audio = lambda turn: tone(1000, 0.5, RATE_MODEL, 0.5)
    before = reconnects("reconnected")
    async with survivor(simulator, tmp_path) as bridge, bridge.dial() as (caller, _):
        first = await simulator.wait_for_session(0)
        await caller.say_and_wait(utterance())
        await first.wait_for_sent("response.done", timeout=10)
        await first.closed.wait()  # dropped at 3 s, without a close frame
        # The caller keeps talking through the gap: nothing they say may be lost.
        caller.say(utterance(500, 0.8))
        second = await simulator.wait_for_session(1, timeout=5)
        await second.wait_for_sent("response.done", timeout=10)
        await caller.wait_until_quiet(0.5, timeout=10)
        await caller.hangup()
    record = await bridge.finished(caller.call_sid)
    assert record.end_reason is EndReason.CALLER_HANGUP
    (lost,) = [e for e in record.events if e.kind == "upstream_lost"]
    (back,) = [e for e in record.events if e.kind == "reconnected"]
    assert back.detail["waited_ms"] < 1000
    assert back.at - lost.at < 1.0
    assert reconnects("reconnected") == before + 1
    # The new session learnt the call from its instructions, and holds no assistant text.
    (instructions,) = second.instructions_received
    assert "Caller: My order number is 42." in instructions
    assert "You: Thanks, I found order 42." in instructions
    for item in second.conversation_items():
        assert not (
            item.role == "assistant"
            and item.type == "message"
            and not any(part.get("type") == "output_audio" for part in item.content)
        ), item
    for _, event in second.received:
        GA_CLIENT_STRICT.validate_python(event)
    # Every frame the caller sent reached one session or the other.
    received_ms = sum(len(s.input_audio) / 48 for s in (first, second))
    sent_ms = caller.frames_sent * 20
    assert received_ms == pytest.approx(sent_ms, abs=200)
    # The second utterance (500 Hz) was heard by the new session, and it answered aloud.
    new_audio = from_pcm16(bytes(second.input_audio))
    segments = active_segments(new_audio, RATE_MODEL, threshold_db=-30)
    assert segments
    start, end = segments[0]
    part = new_audio[int(start * RATE_MODEL) : int(end * RATE_MODEL)]
    assert dominant_frequency(part, RATE_MODEL) == pytest.approx(500, abs=5)
    heard = active_segments(caller.heard(), RATE_IN, threshold_db=-30)
    assert len(heard) == 2  # a reply before the loss and one after


async def test_when_no_session_comes_back_the_fallback_dials_a_person(
    simulator: RealtimeSimulator, tmp_path: Path
) -> None:
    config = simulator.config
    config.session_modes = (Mode.DROP_AFTER,)
    config.drop_after_seconds = 1.0
    config.mode = Mode.UNAVAILABLE  # every later session: HTTP 503
    before = reconnects("failed")
    async with (
        survivor(simulator, tmp_path, budget=1.5) as bridge,
        bridge.dial() as (caller, action),
    ):
        loop = asyncio.get_running_loop()
        first = await simulator.wait_for_session(0)
        await first.closed.wait()
        lost_at = loop.time()
        await caller.wait_closed(timeout=10)
        closed_at = loop.time()
        status, twiml = await fetch_action(
            action, bridge.base, call_sid=caller.call_sid, from_=CALLER, to=CALLED
        )
    assert 1.4 < closed_at - lost_at < 3.0  # the budget, then the stream ends
    assert status == 200
    assert parse_next_step(twiml) == [
        {
            "verb": "Say",
            "text": "Sorry, our assistant is unavailable. Let me connect you to a person.",
        },
        {"verb": "Dial", "number": "+15550100100", "timeout": "30", "callerId": ""},
        {"verb": "Hangup"},
    ]
    record = await bridge.finished(caller.call_sid)
    assert record.end_reason is EndReason.UPSTREAM_FAILED
    assert caller.close_reason == "upstream_failed"
    assert len(simulator.rejected) >= 2  # retried, backing off, within the budget
    assert reconnects("failed") == before + 1


async def test_a_service_that_refuses_us_gets_the_fallback_at_the_webhook(
    simulator: RealtimeSimulator, tmp_path: Path
) -> None:
    simulator.config.mode = Mode.REJECT_CONNECT  # the key is refused: HTTP 403
    async with survivor(simulator, tmp_path) as bridge:
        async with bridge.dial() as (caller, action):
            await caller.wait_closed(timeout=10)
        status, twiml = await fetch_action(
            action, bridge.base, call_sid=caller.call_sid, from_=CALLER, to=CALLED
        )
        assert status == 200
        assert [step["verb"] for step in parse_next_step(twiml)] == ["Say", "Dial", "Hangup"]
        record = await bridge.finished(caller.call_sid)
        assert record.end_reason is EndReason.UPSTREAM_REJECTED
        # The next caller is not connected to a stream nobody speaks on: the webhook itself
        # answers with the fallback.
        status, twiml = await fetch_twiml(
            bridge.base, from_=CALLER, to=CALLED, call_sid="CA" + "5" * 32
        )
    assert status == 200
    assert "<Connect" not in twiml
    assert [step["verb"] for step in parse_next_step(twiml)] == ["Say", "Dial", "Hangup"]


async def test_an_expired_session_is_renewed_and_the_call_goes_on(
    simulator: RealtimeSimulator, tmp_path: Path
) -> None:
    config = simulator.config
    config.session_max_seconds = 2.0
    config.reply_audio = lambda turn: tone(1000, 0.4, RATE_MODEL, 0.5)
    async with survivor(simulator, tmp_path) as bridge, bridge.dial() as (caller, _):
        first = await simulator.wait_for_session(0)
        await first.closed.wait()
        second = await simulator.wait_for_session(1, timeout=5)
        await caller.say_and_wait(utterance())
        await second.wait_for_sent("response.done", timeout=10)
        await caller.hangup()
    record = await bridge.finished(caller.call_sid)
    assert record.end_reason is EndReason.CALLER_HANGUP
    (lost,) = [e for e in record.events if e.kind == "upstream_lost"]
    assert "session_expired" in lost.detail["detail"]
    assert [e.kind for e in record.events if e.kind == "reconnected"] == ["reconnected"]


async def test_a_caller_stream_that_goes_silent_is_ended_and_its_session_closed(
    simulator: RealtimeSimulator, tmp_path: Path
) -> None:
    async with (
        survivor(simulator, tmp_path, caller_timeout_seconds=1.0) as bridge,
        bridge.dial() as (caller, _),
    ):
        session = await simulator.wait_for_session(0)
        await asyncio.sleep(0.3)
        caller.go_silent()  # the network died; no close frame will come
        loop = asyncio.get_running_loop()
        silent_at = loop.time()
        await asyncio.wait_for(session.closed.wait(), 5)
        closed_at = loop.time()
        await caller.wait_closed(timeout=5)
    assert 0.9 < closed_at - silent_at < 2.5
    record = await bridge.finished(caller.call_sid)
    assert record.end_reason is EndReason.CALLER_TIMEOUT


async def test_a_session_near_its_cap_is_replaced_without_losing_a_reply(
    simulator: RealtimeSimulator, tmp_path: Path
) -> None:
    """The profile's `session_max_seconds` (6 s here) comes before the service's own (8 s): the
    bridge moves the call to a next session by itself, while a long reply still plays, and
    the caller hears all of it; the next turn is answered by the new session."""
    config = simulator.config
    config.session_max_seconds = 8.0  # the service would end the session at 8 s
    replies = iter([tone(1000, 5.0, RATE_MODEL, 0.5), tone(600, 0.5, RATE_MODEL, 0.5)])
    config.reply_audio = lambda turn: next(replies)  # in order over both sessions
    settings = make_settings(simulator)
    profile = dataclasses.replace(
        Profile.from_settings(settings), greeting="", session_max_seconds=6.0
    )
    recorder = MemoryRecorder()
    app = create_app(settings, recorder=recorder, profile_for=lambda start: profile)
    async with serving(app) as base:
        bridge = RunningBridge(base, app, recorder, settings)
        async with bridge.dial() as (caller, _):
            first = await simulator.wait_for_session(0)
            await caller.say_and_wait(utterance())
            second = await simulator.wait_for_session(1, timeout=10)
            await first.closed.wait()
            await caller.wait_until_quiet(0.5, timeout=15)
            await caller.say_and_wait(utterance(500))
            await second.wait_for_sent("response.done", timeout=10)
            await caller.wait_until_quiet(0.4, timeout=10)
            await caller.hangup()
    assert first.events_sent("error") == []  # never reached the service's own cap
    assert first.close_code == 1000  # closed by the bridge
    heard = caller.heard()
    segments = active_segments(heard, RATE_IN, threshold_db=-30)
    assert len(segments) == 2
    (start, end), (start2, end2) = segments
    assert end - start == pytest.approx(5.0, abs=0.05)  # the long reply, whole
    part = heard[int(start2 * RATE_IN) : int(end2 * RATE_IN)]
    assert dominant_frequency(part, RATE_IN) == pytest.approx(600, abs=5)  # the new session
    record = await bridge.finished(caller.call_sid)
    (rollover,) = [e for e in record.events if e.kind == "session_rollover"]
    assert 4.5 < rollover.detail["age_s"] < 6.0
    (instructions,) = second.instructions_received
    assert "Caller:" in instructions
    received_ms = sum(len(s.input_audio) / 48 for s in (first, second))
    assert received_ms == pytest.approx(caller.frames_sent * 20, abs=200)
