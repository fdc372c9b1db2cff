"""Playback tracking and the barge-in plan, without sockets."""

from __future__ import annotations

import pytest

from bridge.call.bargein import Playback, Truncation


def test_heard_follows_mark_echoes_and_elapsed_time() -> None:
    playback = Playback()
    playback.received("a", 1000.0)
    first = playback.sent("a", 1600, now=0.0)  # 200 ms
    playback.sent("a", 1600, now=0.01)
    assert playback.playing
    assert playback.heard_ms("a", now=0.1) == 100  # interpolated on the wall clock
    assert playback.echoed(first, now=0.2) == "a"
    assert playback.heard_ms("a", now=0.2) == 200
    assert playback.heard_ms("a", now=0.3) == 300
    assert playback.heard_ms("a", now=5.0) == 400  # never beyond what was sent


def test_heard_is_clamped_to_model_audio_and_lead() -> None:
    playback = Playback(lead_ms=4.0)
    playback.received("a", 150.0)
    playback.sent("a", 1600, now=0.0)
    assert playback.heard_ms("a", now=10.0) == 150
    assert playback.heard_ms("a", now=0.0) == 0  # lead subtracted, never negative


def test_stale_mark_echoes_are_ignored() -> None:
    playback = Playback()
    playback.received("a", 1000.0)
    mark = playback.sent("a", 800, now=0.0)
    plan = playback.interrupt(0.05, response_active=False, current_item="a")
    assert plan.clear
    assert plan.truncations == (Truncation("a", 50),)
    assert not playback.playing
    assert playback.echoed(mark, now=0.06) is None  # the echo Twilio sends for the clear


def test_nothing_playing_means_no_clear_but_cancel_if_active() -> None:
    playback = Playback()
    plan = playback.interrupt(1.0, response_active=True, current_item=None)
    assert (plan.clear, plan.truncations, plan.cancel) == (False, (), True)


def test_active_response_item_is_cut_even_when_drained() -> None:
    playback = Playback()
    playback.received("a", 500.0)
    mark = playback.sent("a", 800, now=0.0)
    playback.echoed(mark, now=0.1)
    plan = playback.interrupt(0.5, response_active=True, current_item="a")
    assert not plan.clear
    assert plan.truncations == (Truncation("a", 100),)
    assert plan.cancel


def test_queued_items_behind_the_playing_one_are_cut_at_zero() -> None:
    playback = Playback()
    playback.received("a", 1000.0)
    playback.received("b", 1000.0)
    playback.sent("a", 800, now=0.0)
    playback.sent("b", 800, now=0.0)
    plan = playback.interrupt(0.04, response_active=False, current_item="b")
    assert plan.truncations == (Truncation("a", 40), Truncation("b", 0))


def test_underrun_restarts_the_clock_at_send_time() -> None:
    playback = Playback()
    playback.received("a", 1000.0)
    mark = playback.sent("a", 800, now=0.0)
    playback.echoed(mark, now=0.1)  # buffer drained at 0.1
    playback.sent("a", 800, now=0.5)  # next chunk only arrives at 0.5
    assert playback.heard_ms("a", now=0.55) == 150


def test_remaining_playback_time() -> None:
    playback = Playback()
    assert playback.remaining_seconds(0.0) == 0.0
    playback.received("a", 1000.0)
    playback.received("b", 1000.0)
    playback.sent("a", 800, now=0.0)  # 100 ms
    playback.sent("b", 1600, now=0.0)  # 200 ms, queued behind a
    assert playback.remaining_seconds(0.04) == pytest.approx(0.26)
