"""Table tests of how a call survives, without sockets: a lost model session (reconnect with
backoff, the budget, the fallback), the context a new session gets, the rollover before the
session cap, and a caller stream that goes silent."""

from __future__ import annotations

import dataclasses

import pytest

from bridge import realtime
from bridge.call.effects import Effect, Noted, Reconnect, Rollover, Wake
from bridge.call.session import BACKOFF_MAX, MAX_LOSSES, CallSession
from bridge.fallback import Fallback
from bridge.record import CallRecord, EndReason
from bridge.tools.http import ToolResult
from tests.test_session import (
    PROFILE,
    START,
    audio_item,
    delta,
    done,
    ends,
    model_events,
    model_types,
    new_session,
)
from tests.test_session_tools import WITH_TOOLS, call

SURVIVOR = dataclasses.replace(
    PROFILE,
    reconnect_seconds=5.0,
    session_max_seconds=600.0,
    fallback=Fallback("Sorry, one moment.", "+15550100100"),
)


def reconnects(effects: list[Effect]) -> list[Reconnect]:
    return [effect for effect in effects if isinstance(effect, Reconnect)]


def test_a_lost_session_is_reconnected_at_once_within_a_budget() -> None:
    session, _ = new_session(SURVIVOR)
    lost = session.upstream_lost("connection lost without a close frame", 10.0)
    assert reconnects(lost) == [Reconnect(0.0)]
    assert Wake(15.0) in lost  # the budget
    assert ends(lost) == []
    delays = []
    now = 10.0
    for _ in range(6):
        now += 0.05
        (again,) = reconnects(session.reconnect_failed("HTTP 503", now))
        delays.append(again.delay)
    assert all(0.0 < delay <= BACKOFF_MAX for delay in delays)
    assert delays[0] <= 0.1
    assert delays[-1] >= 0.5  # backing off
    (end,) = ends(session.timer(15.0))
    assert end.reason is EndReason.UPSTREAM_FAILED
    assert end.next_step == SURVIVOR.fallback.next_step()


def test_a_refusal_ends_the_call_with_the_fallback_at_once() -> None:
    session, _ = new_session(SURVIVOR)
    session.upstream_lost("lost", 1.0)
    (end,) = ends(session.reconnect_failed("HTTP 403", 1.1, refused=True))
    assert end.reason is EndReason.UPSTREAM_REJECTED
    assert end.next_step is not None
    assert end.next_step.number == "+15550100100"


def test_the_new_session_learns_the_call_and_finishes_a_cut_off_reply() -> None:
    session, _ = new_session(SURVIVOR)
    session.model_event(realtime.SpeechStarted("u1", 0), 0.1)
    session.model_event(realtime.InputTranscript("u1", "Where is my order?"), 0.5)
    session.model_event(realtime.ResponseCreated("r1"), 1.0)
    session.model_event(delta("i1", "r1", 2000), 1.0)
    session.model_event(realtime.TranscriptDelta("i1", "Your order left our warehouse"), 1.0)
    session.upstream_lost("lost", 1.2)  # mid-reply
    resumed = session.connected(1.5)
    update, create = model_events(resumed)
    instructions = update["session"]["instructions"]
    assert "Caller: Where is my order?" in instructions
    assert "You: Your order left our warehouse" in instructions
    assert create["type"] == "response.create"
    assert "Your order left our warehouse" in create["response"]["instructions"]
    assert [e.event.kind for e in resumed if isinstance(e, Noted)] == ["reconnected"]


def test_sessions_that_keep_dropping_are_given_up() -> None:
    session, _ = new_session(SURVIVOR)
    now = 1.0
    for _ in range(MAX_LOSSES):
        assert reconnects(session.upstream_lost("lost", now))
        session.connected(now + 0.1)
        now += 1.0
    (end,) = ends(session.upstream_lost("lost", now))
    assert end.reason is EndReason.UPSTREAM_FAILED


def test_a_renewable_error_opens_a_new_session() -> None:
    session, _ = new_session(SURVIVOR)
    expired = realtime.ServerError("invalid_request_error", "session_expired", "max", None)
    assert reconnects(session.model_event(expired, 3.0)) == [Reconnect(0.0)]


def test_a_tool_answer_after_the_loss_is_told_to_the_new_session() -> None:
    profile = dataclasses.replace(WITH_TOOLS, reconnect_seconds=5.0)
    session, _ = new_session(profile)
    session.model_event(call("lookup_order"), 0.0)
    session.upstream_lost("lost", 0.5)
    session.connected(0.6)
    answered = session.tool_done("c1", ToolResult(True, '{"status": "shipped"}'), 1.0)
    (message, _create) = model_events(answered)
    assert message["item"]["role"] == "system"
    assert "shipped" in message["item"]["content"][0]["text"]


def test_the_next_session_is_opened_at_a_quiet_moment_before_the_cap() -> None:
    profile = dataclasses.replace(SURVIVOR, session_max_seconds=100.0)
    session, _ = new_session(profile)
    opened = session.connected(0.0)
    assert Wake(80.0) in opened  # looks for a quiet moment from 80 % of the cap
    session.model_event(realtime.ResponseCreated("r1"), 79.0)
    session.model_event(delta("i1", "r1", 3000), 79.0)
    assert not [e for e in session.timer(80.0) if isinstance(e, Rollover)]  # a reply plays
    session.model_event(done("r1", audio_item("i1")), 80.5)
    rolled = session.timer(82.1)  # played out: quiet
    assert [e for e in rolled if isinstance(e, Rollover)] == [Rollover()]
    assert [e for e in session.timer(83.0) if isinstance(e, Rollover)] == []  # once
    update, *_ = model_events(session.connected(83.5))
    assert update["type"] == "session.update"


def test_past_the_margin_the_call_moves_even_while_a_reply_plays() -> None:
    profile = dataclasses.replace(SURVIVOR, session_max_seconds=100.0)
    session, _ = new_session(profile)
    session.connected(0.0)
    session.model_event(realtime.ResponseCreated("r1"), 90.0)
    session.model_event(delta("i1", "r1", 20_000), 90.0)
    session.model_event(done("r1", audio_item("i1")), 90.5)
    assert not [e for e in session.timer(94.0) if isinstance(e, Rollover)]
    assert [e for e in session.timer(95.0) if isinstance(e, Rollover)] == [Rollover()]


@pytest.mark.parametrize("frames", [True, False])
def test_a_caller_stream_that_goes_silent_ends_the_call(frames: bool) -> None:
    session = CallSession(START, PROFILE, CallRecord("", ""), now=0.0, caller_timeout=5.0)
    opened = session.open(0.0)
    assert Wake(5.0) in opened
    if frames:
        session.caller_audio(b"\xff" * 160, 1)
    effects = session.timer(5.0)
    if frames:  # audio came: the caller is alive, checked again later
        assert ends(effects) == []
        assert Wake(10.0) in effects
        effects = session.timer(10.0)
    (end,) = ends(effects)
    assert end.reason is EndReason.CALLER_TIMEOUT
    assert model_types(effects) == []
