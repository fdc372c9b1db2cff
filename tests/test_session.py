"""The call session as tables: inputs with their times in, effects out, no sockets.

Each test drives a `CallSession` through a scenario (barge-in, recovery, conflict requeue, the
goodbye at the drain deadline, and their interleavings) and checks the exact effects, in order.
Audio runs in the PCMU pass-through mode unless a test says otherwise: 8 bytes per millisecond.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from typing import Any

import pytest

from bridge import realtime, twilio
from bridge.call.effects import (
    Effect,
    EndCall,
    Kind,
    Noted,
    Synthesize,
    ToCaller,
    ToModel,
    TurnChanged,
    Wake,
)
from bridge.call.responses import ANSWER_TIMEOUT
from bridge.call.session import (
    DIGIT_GAP,
    GOODBYE_TIMEOUT,
    MARK_MARGIN,
    MAX_PROTOCOL_ERRORS,
    TTS_CHUNK_BYTES,
    CallSession,
)
from bridge.profiles import Profile
from bridge.record import CallRecord, EndReason
from bridge.settings import AudioMode

START = twilio.Start(
    stream_sid="MZ" + "1" * 32,
    call_sid="CA" + "1" * 32,
    account_sid="AC" + "1" * 32,
    custom_parameters={"From": "+15550100001", "To": "+15550100002"},
    encoding="audio/x-mulaw",
    sample_rate=8000,
)
PROFILE = Profile(
    name="test",
    instructions="Be brief.",
    voice="marin",
    model="gpt-realtime",
    audio_mode=AudioMode.PCMU,
    max_call_seconds=600.0,
)
MS = 8  # bytes of mu-law per millisecond


def new_session(
    profile: Profile = PROFILE, caller_timeout: float = 3600.0
) -> tuple[CallSession, list[Effect]]:
    """A session whose model socket has just opened (the caller never times out unless
    `caller_timeout` says so: these tables send no media)."""
    session = CallSession(
        START, profile, CallRecord("", ""), now=0.0, caller_timeout=caller_timeout
    )
    return session, session.open(0.0)


def caller_events(effects: Sequence[Effect]) -> list[str]:
    """What Twilio gets, as event names in order (`media`, `mark`, `clear`)."""
    names: list[str] = []
    for effect in effects:
        if isinstance(effect, ToCaller):
            names.extend(json.loads(text)["event"] for text in effect.texts)
    return names


def model_events(effects: list[Effect]) -> list[dict[str, Any]]:
    out = []
    for effect in effects:
        if isinstance(effect, ToModel):
            event = effect.event
            out.append(json.loads(event) if isinstance(event, str) else event)
    return out


def model_types(effects: list[Effect]) -> list[str]:
    return [event["type"] for event in model_events(effects)]


def ends(effects: list[Effect]) -> list[EndCall]:
    return [effect for effect in effects if isinstance(effect, EndCall)]


def delta(item: str, response: str, ms: int) -> realtime.AudioDelta:
    return realtime.AudioDelta(item_id=item, response_id=response, audio=b"\x7f" * (ms * MS))


def done(
    response: str, *items: realtime.OutputItem, status: str = "completed"
) -> realtime.ResponseDone:
    return realtime.ResponseDone(
        response_id=response, status=status, reason=None, output=items, usage={}
    )


def error(code: str, event_id: str | None = None) -> realtime.ServerError:
    return realtime.ServerError(
        type="invalid_request_error", code=code, message=code, event_id=event_id
    )


def text_only(item: str, text: str = "Your order ships today.") -> realtime.OutputItem:
    return realtime.OutputItem(item, "message", ("output_text",), text)


def audio_item(item: str) -> realtime.OutputItem:
    return realtime.OutputItem(item, "message", ("output_audio",), "")


def speaking(session: CallSession, at: float = 0.0, ms: int = 1000) -> list[Effect]:
    """The model starts response r1 and sends `ms` of item i1's audio at `at`."""
    effects = session.model_event(realtime.ResponseCreated("r1"), at)
    return effects + session.model_event(delta("i1", "r1", ms), at)


# ---- opening ---------------------------------------------------------------------------------


def test_open_configures_the_session_and_arms_the_deadline() -> None:
    session, effects = new_session()
    assert model_types(effects) == ["session.update"]
    assert Wake(600.0) in effects
    assert session.record.call_sid == START.call_sid
    assert session.record.from_number == "+15550100001"


def test_greeting_asks_for_audio_saying_exactly_the_words() -> None:
    _, effects = new_session(dataclasses.replace(PROFILE, greeting="Hello!"))
    create = model_events(effects)[1]
    assert create["type"] == "response.create"
    assert create["response"]["output_modalities"] == ["audio"]
    assert '"Hello!"' in create["response"]["instructions"]


# ---- model -> caller -------------------------------------------------------------------------


def test_audio_goes_out_as_whole_frames_each_followed_by_its_mark() -> None:
    session, _ = new_session()
    effects = speaking(session, ms=105)  # 5 whole frames, 5 ms waits for the next delta
    writes = [effect for effect in effects if isinstance(effect, ToCaller)]
    assert len(writes) == 1
    assert caller_events(writes) == ["media", "mark"]
    media = json.loads(writes[0].texts[0])
    assert len(media["media"]["payload"]) == 4 * -(-800 // 3)  # 800 bytes, base64
    assert session.record.frames_out == 5
    tail = session.model_event(done("r1", audio_item("i1")), 0.2)
    assert caller_events(tail) == ["media", "mark"]  # the last 5 ms, padded to a frame
    assert session.record.frames_out == 6


def test_caller_audio_is_counted_once_converted() -> None:
    session, _ = new_session()
    event = json.loads(session.caller_audio(b"\xff" * 480, 3))
    assert event["type"] == "input_audio_buffer.append"
    assert session.record.frames_in == 3


# ---- barge-in --------------------------------------------------------------------------------


def test_barge_in_clears_first_then_truncates_at_what_was_heard_then_cancels() -> None:
    session, _ = new_session()
    speaking(session, at=0.0, ms=1000)
    effects = session.model_event(realtime.SpeechStarted("u1", 900), 0.4)
    assert caller_events(effects) == ["clear"]
    assert effects[0] == ToCaller(
        (json.dumps({"event": "clear", "streamSid": START.stream_sid}),), Kind.CLEAR
    )
    truncate, cancel = model_events(effects)
    assert truncate["type"] == "conversation.item.truncate"
    assert truncate["item_id"] == "i1"
    assert truncate["audio_end_ms"] == pytest.approx(400, abs=1)
    assert cancel["type"] == "response.cancel"
    assert session.record.barge_ins == 1
    assert any(isinstance(e, Noted) and e.event.kind == "barge_in" for e in effects)
    turn = session.record.turns[0]
    assert turn.interrupted
    assert turn.heard_ms == truncate["audio_end_ms"]
    # Late deltas of the interrupted reply never reach the caller.
    assert caller_events(session.model_event(delta("i1", "r1", 200), 0.45)) == []
    assert session.model_event(done("r1", status="cancelled"), 0.5) == []


def test_barge_in_after_the_reply_finished_but_still_plays_cuts_without_cancel() -> None:
    session, _ = new_session()
    speaking(session, ms=2000)
    session.model_event(done("r1", audio_item("i1")), 0.1)
    effects = session.model_event(realtime.SpeechStarted("u1", 900), 1.0)
    assert caller_events(effects) == ["clear"]
    assert model_types(effects) == ["conversation.item.truncate"]
    assert model_events(effects)[0]["audio_end_ms"] == pytest.approx(1000, abs=1)


def test_mark_echoes_move_the_heard_point() -> None:
    session, _ = new_session()
    first = speaking(session, ms=500)
    second = session.model_event(delta("i1", "r1", 500), 0.0)
    (write,) = [e for e in first if isinstance(e, ToCaller)]
    mark = json.loads(write.texts[1])["mark"]["name"]
    echo = session.caller_message(twilio.Mark(mark), 0.5)
    assert [type(e) for e in echo] == [TurnChanged]
    # 500 ms heard at the echo, then 100 ms more on the clock.
    effects = session.model_event(realtime.SpeechStarted("u1", 900), 0.6)
    assert model_events(effects)[0]["audio_end_ms"] == pytest.approx(600, abs=1)
    assert caller_events(second) == ["media", "mark"]


def test_caller_speaking_into_silence_is_a_turn_not_a_barge_in() -> None:
    session, _ = new_session()
    effects = session.model_event(realtime.SpeechStarted("u1", 0), 1.0)
    assert caller_events(effects) == []
    assert model_types(effects) == []
    assert session.record.barge_ins == 0
    assert session.record.turns[0].role == "caller"


# ---- the response queue ----------------------------------------------------------------------


def test_a_create_that_collides_with_a_vad_response_is_sent_again_after_it() -> None:
    session, effects = new_session(dataclasses.replace(PROFILE, greeting="Hi"))
    greeting = model_events(effects)[1]
    session.model_event(realtime.ResponseCreated("r_vad"), 0.1)  # the service's own response
    retry = session.model_event(
        error("conversation_already_has_active_response", greeting["event_id"]), 0.1
    )
    assert model_types(retry) == []
    assert not any(isinstance(e, Noted) for e in retry)  # expected, not an error to report
    after = session.model_event(done("r_vad", audio_item("i0")), 0.5)
    assert model_events(after) == [greeting]
    # Sent once: a second response.done does not send it again.
    session.model_event(realtime.ResponseCreated("r2"), 0.6)
    assert model_types(session.model_event(done("r2", audio_item("i2")), 0.7)) == []


def test_our_creates_wait_behind_a_running_response() -> None:
    session, _ = new_session()
    speaking(session)
    effects = session.shutdown("Goodbye", 0.1)  # asks for a response while r1 runs
    assert "response.create" not in model_types(effects)
    following = session.model_event(done("r1", status="cancelled"), 0.2)
    assert model_types(following) == ["response.create"]


# ---- the spoken-reply guarantee --------------------------------------------------------------


def test_text_only_reply_is_deleted_and_asked_again_then_spoken_by_tts() -> None:
    session, _ = new_session()
    session.model_event(realtime.ResponseCreated("r1"), 0.0)
    first = session.model_event(done("r1", text_only("t1")), 0.5)
    delete, create = model_events(first)
    assert delete == {
        "type": "conversation.item.delete",
        "item_id": "t1",
        "event_id": delete["event_id"],
    }
    assert create["response"]["output_modalities"] == ["audio"]
    assert "Your order ships today." in create["response"]["instructions"]
    assert session.record.text_only_recoveries == 1

    session.model_event(realtime.ResponseCreated("r2"), 0.6)
    second = session.model_event(done("r2", text_only("t2")), 1.0)
    speak = [e for e in second if isinstance(e, Synthesize)]
    assert speak == [Synthesize(1, "Your order ships today.", "marin")]
    assert model_types(second) == []
    assert session.record.text_only_recoveries == 2

    pcm = b"\x00\x10" * 36_000  # 1.5 s at 24 kHz
    played = session.speech_ready(1, pcm, "Your order ships today.", 1.2)
    assert caller_events(played) == ["media", "mark"] * 2  # one-second chunks, each marked
    sent = sum(
        len(json.loads(t)["media"]["payload"])
        for e in played
        if isinstance(e, ToCaller)
        for t in e.texts[:1]
    )
    assert sent == pytest.approx(4 * 12_000 / 3, rel=0.02)  # 1.5 s of 8 kHz mu-law, base64
    assert session.record.turns[-1].source == "tts"
    assert TTS_CHUNK_BYTES == 8000


def test_barge_in_over_fallback_speech_clears_it_and_cuts_nothing_upstream() -> None:
    session, _ = new_session()
    session.speech_ready(1, b"\x00\x10" * 24_000 * 2, "Hello.", 0.0)
    effects = session.model_event(realtime.SpeechStarted("u1", 0), 0.3)
    assert caller_events(effects) == ["clear"]
    assert model_types(effects) == []  # the model has no item to truncate
    assert session.record.turns[0].interrupted


def test_speech_that_keeps_failing_gives_up_instead_of_a_silent_line() -> None:
    session, _ = new_session()
    for n in range(10):
        session.model_event(realtime.ResponseCreated(f"r{n}"), n)
        effects = session.model_event(done(f"r{n}", text_only(f"t{n}")), n + 0.5)
        for speak in [e for e in effects if isinstance(e, Synthesize)]:
            session.speech_failed(speak.request, "speech endpoint down", n + 0.6)
        if ends(effects):
            break
    assert ends(effects) == [EndCall(EndReason.NO_AUDIO, "replies keep arriving without audio")]


# ---- the keypad ------------------------------------------------------------------------------


def keypad_text(effects: list[Effect]) -> list[str]:
    return [
        event["item"]["content"][0]["text"]
        for event in model_events(effects)
        if event["type"] == "conversation.item.create"
    ]


def test_digits_ended_by_pound_reach_the_model_as_one_message_at_once() -> None:
    session, _ = new_session()
    for n, key in enumerate("123"):
        pressed = session.caller_message(twilio.Dtmf(key), n * 0.3)
        assert model_types(pressed) == []
    effects = session.caller_message(twilio.Dtmf("#"), 1.0)
    (text,) = keypad_text(effects)
    assert text.endswith(": 123)")
    assert model_types(effects) == ["conversation.item.create", "response.create"]
    assert [e.event.detail["digit"] for e in effects if isinstance(e, Noted)] == ["#"]
    assert session.timer(3.0) == []  # the run was sent: its gap timer finds nothing


def test_digits_end_after_two_seconds_without_a_key() -> None:
    session, _ = new_session()
    session.caller_message(twilio.Dtmf("4"), 0.0)
    pressed = session.caller_message(twilio.Dtmf("2"), 0.5)
    assert Wake(0.5 + DIGIT_GAP) in pressed
    assert session.timer(0.5 + DIGIT_GAP - 0.01) == []
    effects = session.timer(0.5 + DIGIT_GAP)
    assert [t[-3:] for t in keypad_text(effects)] == ["42)"]
    assert model_types(effects)[-1] == "response.create"


def test_keypad_odds_and_ends() -> None:
    session, _ = new_session()
    assert keypad_text(session.caller_message(twilio.Dtmf("#"), 0.0)) == []  # nothing to send
    session.caller_message(twilio.Dtmf("x"), 0.1)
    assert session.record.protocol_errors == 1
    session.shutdown("Goodbye!", 0.2)
    session.caller_message(twilio.Dtmf("5"), 0.3)
    assert keypad_text(session.caller_message(twilio.Dtmf("#"), 0.4)) == []  # saying goodbye


# ---- the goodbye -----------------------------------------------------------------------------


def test_goodbye_at_the_drain_deadline_while_the_assistant_talks_is_heard_before_the_end() -> None:
    session, _ = new_session()
    speaking(session, at=0.0, ms=3000)
    stop = session.shutdown("We are restarting. Goodbye!", 1.0)
    assert caller_events(stop) == ["clear"]
    assert model_types(stop) == ["conversation.item.truncate", "response.cancel"]
    assert Wake(1.0 + GOODBYE_TIMEOUT) in stop
    assert session.record.barge_ins == 0  # not the caller's doing
    # The cancelled reply ends: that must not end the call; the goodbye is asked for now.
    cancelled = session.model_event(done("r1", status="cancelled"), 1.1)
    assert ends(cancelled) == []
    (create,) = model_events(cancelled)
    assert "We are restarting. Goodbye!" in create["response"]["instructions"]
    assert session.timer(1.2) == []
    session.model_event(realtime.ResponseCreated("r2"), 1.2)
    goodbye = session.model_event(delta("i2", "r2", 1500), 1.3)
    assert caller_events(goodbye) == ["media", "mark"]
    finished = session.model_event(done("r2", audio_item("i2")), 1.4)
    (wake,) = [e for e in finished if isinstance(e, Wake)]
    # The bound, should the last mark never come back: played out, plus a margin.
    assert wake.at == pytest.approx(1.3 + 1.5 + MARK_MARGIN, abs=0.01)
    assert ends(finished) == []
    assert session.timer(wake.at - 0.1) == []
    assert ends(session.timer(wake.at)) == [
        EndCall(EndReason.SERVER_SHUTDOWN, "the server is shutting down")
    ]


def test_the_goodbye_ends_the_call_when_its_last_mark_comes_back() -> None:
    session, _ = new_session()
    (create,) = model_events(session.shutdown("Goodbye!", 1.0))
    session.model_event(realtime.ResponseCreated("r2", request=create["event_id"]), 1.1)
    goodbye = session.model_event(delta("i2", "r2", 1500), 1.2)
    session.model_event(done("r2", audio_item("i2")), 1.3)
    (mark,) = [
        json.loads(text)
        for effect in goodbye
        if isinstance(effect, ToCaller)
        for text in effect.texts
        if '"mark"' in text
    ]
    assert ends(session.timer(2.0)) == []  # still playing
    heard = session.caller_message(twilio.Mark(mark["mark"]["name"]), 2.7)
    assert ends(heard) == [EndCall(EndReason.SERVER_SHUTDOWN, "the server is shutting down")]


def test_a_vad_reply_crossing_the_goodbye_request_is_told_apart_by_metadata() -> None:
    """The caller's VAD reply starts just as our goodbye is sent: the service names the request
    each response answers (in its metadata), so the VAD reply is cancelled and unheard, and the
    goodbye that collided with it is sent again after it."""
    session, effects = new_session(dataclasses.replace(PROFILE, greeting="Hi"))
    greeting = model_events(effects)[1]["event_id"]
    session.model_event(realtime.ResponseCreated("r0", request=greeting), 0.0)
    session.model_event(done("r0", audio_item("i0")), 0.5)
    (create,) = model_events(session.shutdown("Goodbye!", 1.0))
    vad = session.model_event(realtime.ResponseCreated("r_vad", request=None), 1.01)
    assert model_types(vad) == ["response.cancel"]
    assert caller_events(session.model_event(delta("i9", "r_vad", 500), 1.02)) == []
    conflict = error("conversation_already_has_active_response", create["event_id"])
    assert session.model_event(conflict, 1.02) == []
    again = session.model_event(done("r_vad", status="cancelled"), 1.1)
    assert model_events(again) == [create]
    session.model_event(realtime.ResponseCreated("r1", request=create["event_id"]), 1.2)
    assert caller_events(session.model_event(delta("i1", "r1", 500), 1.2)) == ["media", "mark"]


def test_the_caller_cannot_talk_over_the_goodbye_and_no_new_reply_starts() -> None:
    session, _ = new_session()
    session.shutdown("Goodbye!", 0.0)
    session.model_event(realtime.ResponseCreated("r1"), 0.1)
    session.model_event(delta("i1", "r1", 800), 0.1)
    interrupt = session.model_event(realtime.SpeechStarted("u1", 0), 0.3)
    assert caller_events(interrupt) == []
    assert model_types(interrupt) == []
    session.model_event(done("r1", audio_item("i1")), 0.4)
    vad = session.model_event(realtime.ResponseCreated("r_vad"), 0.5)
    assert model_types(vad) == ["response.cancel"]
    assert caller_events(session.model_event(delta("i9", "r_vad", 500), 0.5)) == []


def test_goodbye_request_without_an_answer_is_given_up_and_the_call_ends() -> None:
    session, _ = new_session()
    session.shutdown("Goodbye!", 0.0)
    assert session.timer(ANSWER_TIMEOUT - 1) == []
    gave_up = session.timer(ANSWER_TIMEOUT)
    assert [e.event.kind for e in gave_up if isinstance(e, Noted)] == [
        "response_request_unanswered"
    ]
    # Nothing is playing, so nothing is left to hear: the call ends at once.
    assert ends(gave_up)[0].reason is EndReason.SERVER_SHUTDOWN


def test_goodbye_that_never_finishes_ends_at_its_timeout() -> None:
    session, _ = new_session()
    session.shutdown("Goodbye!", 0.0)
    session.model_event(realtime.ResponseCreated("r1"), 0.1)
    session.model_event(delta("i1", "r1", 500), 0.2)  # ... and nothing more, ever
    assert ends(session.timer(GOODBYE_TIMEOUT - 1)) == []
    assert ends(session.timer(GOODBYE_TIMEOUT))[0].reason is EndReason.SERVER_SHUTDOWN


def test_an_unanswered_request_does_not_hold_the_queue_behind_it() -> None:
    session, _ = new_session()
    session.model_event(realtime.ResponseCreated("r1"), 0.0)
    reask = session.model_event(done("r1", text_only("t1")), 0.5)
    assert model_types(reask) == ["conversation.item.delete", "response.create"]
    assert Wake(0.5 + ANSWER_TIMEOUT) in reask
    stop = session.shutdown("Goodbye!", 1.0)  # waits behind the re-ask, which is never answered
    assert "response.create" not in model_types(stop)
    assert session.timer(0.5 + ANSWER_TIMEOUT - 0.1) == []
    moved_on = session.timer(0.5 + ANSWER_TIMEOUT)
    (goodbye,) = model_events(moved_on)
    assert '"Goodbye!"' in goodbye["response"]["instructions"]


def test_goodbye_that_comes_back_as_text_is_spoken_before_the_end() -> None:
    session, _ = new_session()
    session.shutdown("Goodbye!", 0.0)
    session.model_event(realtime.ResponseCreated("r1"), 0.1)
    reask = session.model_event(done("r1", text_only("t1", "Goodbye!")), 0.2)
    assert model_types(reask) == ["conversation.item.delete", "response.create"]
    session.model_event(realtime.ResponseCreated("r2"), 0.3)
    tts = session.model_event(done("r2", text_only("t2", "Goodbye!")), 0.4)
    assert [e for e in tts if isinstance(e, (Wake, EndCall))] == []  # speech is on its way
    played = session.speech_ready(1, b"\x00\x10" * 24_000, "Goodbye!", 0.5)
    (wake,) = [e for e in played if isinstance(e, Wake)]
    # 1 s of speech (and the filter tail), plus the margin for a last mark that never comes
    assert wake.at == pytest.approx(1.5 + MARK_MARGIN, abs=0.03)
    assert ends(session.timer(wake.at))[0].reason is EndReason.SERVER_SHUTDOWN


def test_shutdown_without_a_goodbye_ends_at_once() -> None:
    session, _ = new_session()
    assert ends(session.shutdown("", 0.0)) == [
        EndCall(EndReason.SERVER_SHUTDOWN, "the server is shutting down")
    ]


# ---- the end ---------------------------------------------------------------------------------


def test_stop_ends_the_call_and_nothing_is_done_after() -> None:
    session, _ = new_session()
    assert ends(session.caller_message(twilio.Stop(), 1.0)) == [EndCall(EndReason.CALLER_HANGUP)]
    assert session.model_event(delta("i1", "r1", 100), 1.1) == []
    assert session.timer(10_000.0) == []


def test_max_duration() -> None:
    session, _ = new_session()
    assert session.timer(599.0) == []
    assert ends(session.timer(600.0))[0].reason is EndReason.MAX_DURATION


def test_fatal_model_error_ends_the_call_with_the_fallback_and_a_cancel_race_is_harmless() -> None:
    session, _ = new_session()
    assert session.model_event(error("response_cancel_not_active"), 0.0) == []
    (end,) = ends(session.model_event(error("insufficient_quota"), 1.0))
    assert end.reason is EndReason.UPSTREAM_ERROR
    assert end.next_step == PROFILE.fallback.next_step()  # the caller hears the fallback


def test_bad_twilio_messages_are_counted_and_too_many_end_the_call() -> None:
    session, _ = new_session()
    noted = 0
    for n in range(MAX_PROTOCOL_ERRORS):
        effects = session.protocol_error("invalid JSON", n * 0.01)
        noted += sum(isinstance(e, Noted) for e in effects)
        assert ends(effects) == []
    assert noted == 5
    assert ends(session.protocol_error("invalid JSON", 3.0))[0].reason is EndReason.PROTOCOL_ERROR
    assert session.record.protocol_errors == MAX_PROTOCOL_ERRORS + 1


def test_a_second_start_is_a_protocol_error() -> None:
    session, _ = new_session()
    session.caller_message(START, 1.0)
    assert session.record.protocol_errors == 1
