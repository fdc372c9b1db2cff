"""The Twilio caller's Sans-I/O core: what it sends for each tick, mark and clear, as tables."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest

from bridge.sim.caller_core import (
    FRAME_S,
    MAX_BURST,
    SILENCE_B64,
    CallerCore,
    Microphone,
    frames_to_drop,
)
from bridge.sim.playback import FRAME_BYTES, SILENCE


def _core(**kwargs: Any) -> CallerCore:
    return CallerCore("MZ1", "CA1", lambda tick: SILENCE_B64, **kwargs)


def _parsed(texts: list[str]) -> list[dict[str, Any]]:
    return [json.loads(text) for text in texts]


def test_opening_then_media_frames_numbered_in_order() -> None:
    core = _core()
    connected, start = _parsed(core.opening({"k": "v"}))
    assert connected["event"] == "connected"
    assert start["sequenceNumber"] == "1"
    assert start["start"]["customParameters"] == {"k": "v"}
    frames = [_parsed(core.tick(k * FRAME_S))[0] for k in range(3)]
    assert [f["sequenceNumber"] for f in frames] == ["2", "3", "4"]
    assert [f["media"]["chunk"] for f in frames] == ["1", "2", "3"]
    assert [f["media"]["timestamp"] for f in frames] == ["0", "20", "40"]
    assert base64.b64decode(frames[0]["media"]["payload"]) == SILENCE
    assert _parsed([core.stop()])[0]["sequenceNumber"] == "5"


def test_mark_echoed_after_its_audio_played_media_first() -> None:
    core = _core(observe=True)
    core.media(b"\x00" * FRAME_BYTES, 0.0)
    assert core.mark("m1", 0.0) == []  # audio ahead of it
    first = _parsed(core.tick(0.0))
    assert [m["event"] for m in first] == ["media"]  # plays the frame; the mark is reached
    second = _parsed(core.tick(FRAME_S))
    assert [m["event"] for m in second] == ["media", "mark"]
    assert int(second[1]["sequenceNumber"]) == int(second[0]["sequenceNumber"]) + 1
    assert core.played_per_mark == {"m1": FRAME_BYTES}
    assert core.frames_played == 1
    # Nothing buffered: a mark is echoed at once.
    assert [m["mark"]["name"] for m in _parsed(core.mark("m2", 0.1))] == ["m2"]


def test_clear_echoes_pending_marks_and_counts_media_after_it() -> None:
    core = _core(observe=True)
    core.media(b"\x00" * 3 * FRAME_BYTES, 0.0)
    core.mark("m", 0.0)
    echoes = _parsed(core.clear(0.01))
    assert [e["mark"]["name"] for e in echoes] == ["m"]
    assert core.marks_echoed == [(0.01, "m", True)]
    assert core.clears == [0.01]
    core.media(b"\x00" * 10, 0.02)
    core.mark("next", 0.02)
    core.media(b"\x00" * 5, 0.03)
    assert core.media_after_clear == [10]
    assert core.playback.dropped_total == 3 * FRAME_BYTES


def test_lean_core_keeps_no_lists() -> None:
    core = _core()
    core.media_size(FRAME_BYTES, 1, 0.0)
    core.mark("m", 0.0)
    core.tick(0.0)
    assert [m["event"] for m in _parsed(core.tick(FRAME_S))] == ["media", "mark"]
    core.clear(0.1)
    assert [core.clears, core.marks_echoed, bytes(core.heard), bytes(core.sent)] == [
        [],
        [],
        b"",
        b"",
    ]
    assert core.playback.played == {1: FRAME_BYTES}


def test_recorded_audio_and_a_dropped_frame() -> None:
    mic = Microphone()
    core = CallerCore("MZ1", "CA1", mic.frame, record=True)
    mic.say(b"\x10" * (FRAME_BYTES + 40))
    core.media(b"\x20" * 100, 0.0)
    assert [m["event"] for m in _parsed(core.tick(0.0))] == ["media"]
    assert core.tick(FRAME_S, send=False) == []
    assert (core.frames_sent, core.frames_dropped, mic.sent, mic.speaking) == (1, 1, 200, False)
    assert bytes(core.heard) == b"\x20" * 100 + SILENCE[100:] + SILENCE
    assert bytes(core.sent) == b"\x10" * FRAME_BYTES + SILENCE


@pytest.mark.parametrize(
    ("late_ticks", "dropped"), [(0, 0), (MAX_BURST, 0), (MAX_BURST + 1, 1), (MAX_BURST + 7, 7)]
)
def test_frames_dropped_only_past_the_burst(late_ticks: int, dropped: int) -> None:
    now = 100.0 + (late_ticks + 0.5) * FRAME_S
    assert frames_to_drop(100.0, now, 0) == dropped


def test_microphone_pads_with_cycled_comfort_noise() -> None:
    noise = bytes(range(256)) * 2
    mic = Microphone(noise)
    mic.say(b"\x01" * 10)
    first = base64.b64decode(mic.frame(0))
    assert first == b"\x01" * 10 + noise[10:FRAME_BYTES]
    assert base64.b64decode(mic.frame(1)) == noise[FRAME_BYTES : 2 * FRAME_BYTES]
