"""The text-only recovery ladder."""

from __future__ import annotations

from bridge.call.speech_guarantee import Recovery, SpeechGuarantee
from bridge.realtime import OutputItem, ResponseDone


def done(*items: OutputItem, status: str = "completed") -> ResponseDone:
    return ResponseDone(response_id="r", status=status, reason=None, output=items, usage={})


TEXT = OutputItem("i1", "message", ("output_text",), "Hello there")
AUDIO = OutputItem("i2", "message", ("output_audio",), "Hello there")


def test_audio_reply_needs_nothing() -> None:
    guarantee = SpeechGuarantee()
    assert guarantee.response_done(done(AUDIO), audio_seen=True) is None
    assert guarantee.response_done(done(TEXT), audio_seen=True) is None


def test_text_only_reply_is_reasked_then_spoken() -> None:
    guarantee = SpeechGuarantee()
    action = guarantee.response_done(done(TEXT), audio_seen=False)
    assert action is not None
    assert (action.recovery, action.text, action.delete_items) == (
        Recovery.REASK,
        "Hello there",
        ("i1",),
    )
    guarantee.reask_sent()
    assert guarantee.awaiting_reask
    action = guarantee.response_done(done(TEXT), audio_seen=False)
    assert action is not None
    assert action.recovery is Recovery.TTS
    assert action.delete_items == ()


def test_repeated_fallbacks_go_straight_to_tts_and_finally_give_up() -> None:
    guarantee = SpeechGuarantee(direct_tts_after=2, give_up_after=2)
    for _ in range(2):
        first = guarantee.response_done(done(TEXT), audio_seen=False)
        assert first is not None
        assert first.recovery is Recovery.REASK
        guarantee.reask_sent()
        second = guarantee.response_done(done(TEXT), audio_seen=False)
        assert second is not None
        assert second.recovery is Recovery.TTS
    direct = guarantee.response_done(done(TEXT), audio_seen=False)
    assert direct is not None
    assert direct.recovery is Recovery.TTS
    guarantee.tts_failed()
    guarantee.tts_failed()
    last = guarantee.response_done(done(TEXT), audio_seen=False)
    assert last is not None
    assert last.recovery is Recovery.GIVE_UP


def test_cancelled_and_empty_responses_are_not_recovered() -> None:
    guarantee = SpeechGuarantee()
    assert guarantee.response_done(done(TEXT, status="cancelled"), audio_seen=False) is None
    tool_call = OutputItem("i3", "function_call", (), "")
    assert guarantee.response_done(done(tool_call), audio_seen=False) is None
