"""End to end over real sockets: simulated Twilio caller -> bridge server -> Realtime simulator."""

from __future__ import annotations

import asyncio
import base64
import json
from typing import Any

import numpy as np
import pytest
import websockets

from bridge import fastws
from bridge.audio import FRAME_BYTES, CallerToModel
from bridge.call.sockets import MAX_FRAMES_PER_APPEND
from bridge.record import EndReason
from bridge.settings import AudioMode
from bridge.sim.analysis import active_segments, dominant_frequency, snr_db
from bridge.sim.realtime_server import Mode, RealtimeSimulator, SimSession
from bridge.sim.signals import fade, from_pcm16, silence, to_ulaw, tone
from tests.conftest import RunningBridge, running_bridge
from tests.ga_types import GA_CLIENT_STRICT

RATE_IN = 8000
RATE_MODEL = 24000


def assert_ga_events(session: SimSession) -> None:
    """Everything the bridge sent upstream is a valid GA client event."""
    assert session.received, "the bridge sent nothing upstream"
    for _, event in session.received:
        GA_CLIENT_STRICT.validate_python(event)
    assert "openai-beta" not in session.headers


def errors_sent(session: SimSession) -> list[dict[str, Any]]:
    return [event["error"] for event in session.events_sent("error")]


def span(x: np.ndarray, rate: int, level: float = 0.2) -> tuple[float, float]:
    """Sample-precise (start, end) in seconds of where |x| exceeds `level`."""
    loud = np.flatnonzero(np.abs(x) > level)
    assert loud.size, "no audio above the level"
    return loud[0] / rate, (loud[-1] + 1) / rate


def utterance(seconds: float = 0.6, freq: float = 440.0) -> np.ndarray:
    """Something the simulator's VAD hears as speech, followed by enough silence to end the turn."""
    return np.concatenate([tone(freq, seconds, RATE_IN, 0.4), silence(0.8, RATE_IN)])


async def test_caller_audio_reaches_the_model_as_clean_24k_pcm(
    bridge: RunningBridge, simulator: RealtimeSimulator
) -> None:
    simulator.config.replies = ("Okay.",)
    async with bridge.call() as caller:
        session = await simulator.wait_for_session()
        await caller.say_and_wait(
            np.concatenate([tone(440, 1.0, RATE_IN, 0.5), silence(0.3, RATE_IN)])
        )
        await caller.hangup()
    await asyncio.wait_for(session.closed.wait(), 2)
    received = from_pcm16(bytes(session.input_audio))
    assert len(active_segments(received, RATE_MODEL, threshold_db=-30)) == 1
    start, end = span(received, RATE_MODEL)
    assert abs((end - start) - 1.0) <= 0.02  # within one frame
    tone_part = received[int(start * RATE_MODEL) + 240 : int(end * RATE_MODEL) - 240]
    assert abs(dominant_frequency(tone_part, RATE_MODEL) - 440) < 2
    reference = tone(440, len(tone_part) / RATE_MODEL + 0.1, RATE_MODEL, 0.5)
    snr = snr_db(tone_part, reference[: len(tone_part)], max_lag=RATE_MODEL // 440 + 2)
    assert snr >= 30, f"SNR {snr:.1f} dB"
    assert_ga_events(session)


async def test_reply_reaches_the_caller_with_duration_and_pitch(
    bridge: RunningBridge, simulator: RealtimeSimulator
) -> None:
    simulator.config.reply_audio = lambda turn: tone(1000, 1.0, RATE_MODEL, 0.5)
    async with bridge.call() as caller:
        caller.say(utterance())
        await caller.wait_for_playback(0.9, timeout=10)
        await caller.wait_until_quiet(0.3, timeout=10)
        await caller.hangup()
    heard = caller.heard()
    assert len(active_segments(heard, RATE_IN, threshold_db=-30)) == 1
    start, end = span(heard, RATE_IN)
    assert abs((end - start) - 1.0) <= 0.02
    assert (
        abs(dominant_frequency(heard[int(start * RATE_IN) : int(end * RATE_IN)], RATE_IN) - 1000)
        < 3
    )
    assert caller.underruns == 0
    assert not caller.protocol_errors
    record = await bridge.finished(caller.call_sid)
    (reply,) = [turn for turn in record.turns if turn.role == "assistant"]
    assert reply.latency_ms is not None
    assert 0 < reply.latency_ms < 2000
    assert reply.audio_ms == pytest.approx(1000, abs=1)


async def test_reply_above_telephone_band_is_attenuated_not_folded(
    bridge: RunningBridge, simulator: RealtimeSimulator
) -> None:
    # Faded in and out: a hard-switched tone has real energy below 4 kHz (its on/off clicks).
    reply = fade(tone(5000, 1.0, RATE_MODEL, 0.5), RATE_MODEL, 0.01)
    simulator.config.reply_audio = lambda turn: reply
    async with bridge.call() as caller:
        session = await simulator.wait_for_session()
        await caller.say_and_wait(utterance())
        await session.wait_for_sent("response.done", timeout=10)
        await asyncio.sleep(1.5)  # the reply's airtime
        await caller.hangup()
    heard = caller.heard()
    reply_energy = float(np.sum(reply.astype(np.float64) ** 2))
    heard_energy = float(np.sum(heard.astype(np.float64) ** 2)) + 1e-12
    attenuation = 10 * np.log10(reply_energy / heard_energy)
    assert attenuation >= 60, f"5 kHz only {attenuation:.1f} dB down (folded to 3 kHz?)"


@pytest.mark.parametrize("speedup", [5.0, 1.0], ids=["response-done", "response-active"])
async def test_barge_in(
    bridge: RunningBridge, simulator: RealtimeSimulator, speedup: float
) -> None:
    simulator.config.speedup = speedup
    simulator.config.late_deltas_after_cancel = 3
    simulator.config.reply_audio = lambda turn: tone(
        600 if turn == 0 else 800, 3.0, RATE_MODEL, 0.4
    )
    async with bridge.call() as caller:
        session = await simulator.wait_for_session()
        await caller.say_and_wait(utterance())
        await caller.wait_for_playback(1.0, timeout=10)
        caller.say(utterance(0.5, freq=300))
        await session.wait_for_sent("input_audio_buffer.speech_started", count=2, timeout=5)
        truncate = await session.wait_for_received("conversation.item.truncate", timeout=5)
        await caller.wait_for_playback(1.0, timeout=10)  # the next turn plays
        await caller.hangup()
    record = await bridge.finished(caller.call_sid)

    started_at = [t for t, e in session.sent if e["type"] == "input_audio_buffer.speech_started"][1]
    assert caller.clears, "no clear reached the caller"
    clear_latency = caller.clears[0] - started_at
    assert 0 <= clear_latency <= 0.020, f"clear took {clear_latency * 1000:.1f} ms"

    item_id = truncate["item_id"]
    played_bytes = sum(n for name, n in caller.played_per_mark.items() if name.startswith(item_id))
    played_ms = played_bytes / 8
    assert abs(truncate["audio_end_ms"] - played_ms) <= 40, (truncate["audio_end_ms"], played_ms)

    late = [
        e["mark"]["name"]
        for e in caller.received_after(caller.clears[0])
        if e.get("event") == "mark" and e["mark"]["name"].startswith(item_id)
    ]
    assert not late, "audio of the interrupted item reached the caller after the clear"

    cancels = session.events_received("response.cancel")
    assert len(cancels) == (1 if speedup == 1.0 else 0)
    codes = {error.get("code") for error in errors_sent(session)}
    messages = " ".join(str(error.get("message")) for error in errors_sent(session))
    assert "response_cancel_not_active" not in codes
    assert "already shorter" not in messages
    assert record.barge_ins == 1
    interrupted = [turn for turn in record.turns if turn.interrupted]
    assert [turn.item_id for turn in interrupted] == [item_id]
    assert interrupted[0].heard_ms == truncate["audio_end_ms"]
    assert_ga_events(session)


async def test_sticky_text_is_recovered_by_asking_again(
    bridge: RunningBridge, simulator: RealtimeSimulator
) -> None:
    simulator.config.mode = Mode.STICKY_TEXT
    simulator.config.replies = ("Sure, we open at nine tomorrow.", "Anything else?")
    async with bridge.call() as caller:
        session = await simulator.wait_for_session()
        await caller.say_and_wait(utterance())
        await caller.wait_for_playback(1.0, timeout=15)
        await caller.wait_until_quiet(0.5, timeout=15)
        await caller.hangup()
    record = await bridge.finished(caller.call_sid)
    assert record.text_only_recoveries == 1
    assert [e.detail["recovery"] for e in record.events if e.kind == "text_only_recovery"] == [
        "reask"
    ]
    deleted = session.events_received("conversation.item.delete")
    assert len(deleted) == 1
    reask = session.events_received("response.create")[-1]
    assert reask["response"]["output_modalities"] == ["audio"]
    assert "Sure, we open at nine tomorrow." in reask["response"]["instructions"]
    assert not simulator.speech_requests
    assert sum(e - s for s, e in active_segments(caller.heard(), RATE_IN)) >= 1.0
    assert_ga_events(session)


async def test_never_audio_falls_back_to_speech_endpoint(
    bridge: RunningBridge, simulator: RealtimeSimulator
) -> None:
    simulator.config.mode = Mode.ALWAYS_TEXT
    simulator.config.replies = ("We open at nine.",)
    async with bridge.call() as caller:
        session = await simulator.wait_for_session()
        await caller.say_and_wait(utterance())
        await caller.wait_for_playback(0.5, timeout=15)
        await caller.wait_until_quiet(0.5, timeout=15)
        await caller.hangup()
    record = await bridge.finished(caller.call_sid)
    recoveries = [e.detail["recovery"] for e in record.events if e.kind == "text_only_recovery"]
    assert recoveries == ["reask", "tts"]
    assert len(simulator.speech_requests) == 1
    assert "We open at nine." in simulator.speech_requests[0]["input"]
    assert sum(e - s for s, e in active_segments(caller.heard(), RATE_IN)) >= 0.5
    assert [turn.source for turn in record.turns if turn.role == "assistant"] == ["tts"]
    assert_ga_events(session)


async def test_stop_closes_the_realtime_session_within_a_second(
    bridge: RunningBridge, simulator: RealtimeSimulator
) -> None:
    async with bridge.call() as caller:
        session = await simulator.wait_for_session()
        await asyncio.sleep(0.2)
        loop = asyncio.get_running_loop()
        hung_up = loop.time()
        await caller.hangup()
    await asyncio.wait_for(session.closed.wait(), 1.0)
    assert loop.time() - hung_up < 1.0
    record = await bridge.finished(caller.call_sid)
    assert record.end_reason is EndReason.CALLER_HANGUP
    assert record.frames_in > 0


async def _raw_start(ws: websockets.ClientConnection, call_sid: str) -> None:
    await ws.send(json.dumps({"event": "connected", "protocol": "Call", "version": "1.0.0"}))
    start = {
        "streamSid": "MZ" + call_sid[2:],
        "accountSid": "AC1",
        "callSid": call_sid,
        "tracks": ["inbound"],
        "customParameters": {"From": "+15550100009", "To": "+15550100000"},
        "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1},
    }
    await ws.send(json.dumps({"event": "start", "sequenceNumber": "1", "start": start}))


def _media(payload: bytes) -> str:
    encoded = base64.b64encode(payload).decode()
    return json.dumps({"event": "media", "media": {"payload": encoded, "timestamp": "0"}})


@pytest.mark.skipif(not fastws.enabled(), reason="the backlog is seen through the shortcuts")
async def test_caller_frames_that_pile_up_go_upstream_in_fewer_appends(
    bridge: RunningBridge, simulator: RealtimeSimulator
) -> None:
    """40 frames land in one read, as they do for a bridge that has fallen behind: the audio
    reaches the model whole, in order and clean, in appends of up to MAX_FRAMES_PER_APPEND."""
    url = bridge.base.replace("http", "ws") + "/twilio/media"
    x = tone(440, 0.8, RATE_IN, 0.5)
    ulaw = to_ulaw(x)
    async with websockets.connect(url) as ws:
        await _raw_start(ws, "CA" + "4" * 32)
        session = await simulator.wait_for_session()
        await session.wait_for_received("session.update")
        await asyncio.sleep(0.2)  # the call is now reading caller frames
        appends_before = len(session.events_received("input_audio_buffer.append"))
        for i in range(0, len(ulaw), FRAME_BYTES):  # queued without yielding: one burst
            ws.protocol.send_text(_media(ulaw[i : i + FRAME_BYTES]).encode())
        ws.send_data()
        for _ in range(10):  # then real-time frames of silence, one at a time
            await ws.send(_media(b"\xff" * FRAME_BYTES))
            await asyncio.sleep(0.02)
        await ws.send(json.dumps({"event": "stop", "stop": {"callSid": "CA" + "4" * 32}}))
        await asyncio.wait_for(session.closed.wait(), 2)
    record = await bridge.finished("CA" + "4" * 32)
    appends = session.events_received("input_audio_buffer.append")[appends_before:]
    sizes = [len(base64.b64decode(a["audio"])) // 6 // FRAME_BYTES for a in appends]
    assert sum(sizes) == 50, sizes
    assert max(sizes) == MAX_FRAMES_PER_APPEND, sizes
    assert len(sizes) <= 8 + 10, sizes  # the 40 that piled up went in a few appends, not 40
    assert sizes[-8:] == [1] * 8, sizes  # caught up: one append per frame, nothing held back
    assert record.frames_in >= 50
    received = from_pcm16(bytes(session.input_audio))
    start, end = span(received, RATE_MODEL)
    assert abs((end - start) - 0.8) <= 0.02
    tone_part = received[int(start * RATE_MODEL) + 240 : int(end * RATE_MODEL) - 240]
    assert abs(dominant_frequency(tone_part, RATE_MODEL) - 440) < 2
    reference = tone(440, len(tone_part) / RATE_MODEL + 0.1, RATE_MODEL, 0.5)
    assert snr_db(tone_part, reference[: len(tone_part)], max_lag=RATE_MODEL // 440 + 2) >= 30


async def test_socket_dropped_without_stop_closes_upstream(
    bridge: RunningBridge, simulator: RealtimeSimulator
) -> None:
    url = bridge.base.replace("http", "ws") + "/twilio/media"
    async with websockets.connect(url) as ws:
        await _raw_start(ws, "CA" + "1" * 32)
        session = await simulator.wait_for_session()
        for _ in range(5):
            await ws.send(_media(b"\xff" * 160))
    await asyncio.wait_for(session.closed.wait(), 1.0)
    record = await bridge.finished("CA" + "1" * 32)
    assert record.end_reason is EndReason.CALLER_DISCONNECTED


async def test_sessions_that_keep_dropping_end_the_call_with_the_fallback(
    bridge: RunningBridge, simulator: RealtimeSimulator
) -> None:
    simulator.config.mode = Mode.DROP_MID_RESPONSE  # every session drops in its first reply
    async with bridge.call() as caller:
        caller.say(utterance())
        await caller.wait_closed(timeout=20)
    record = await bridge.finished(caller.call_sid)
    assert record.end_reason is EndReason.UPSTREAM_FAILED
    assert caller.close_code == 1011
    assert caller.close_reason == "upstream_failed"
    lost = [event for event in record.events if event.kind == "upstream_lost"]
    assert len(lost) == 5  # reconnected four times, then gave up
    assert len(simulator.sessions) == 5


@pytest.mark.parametrize(
    ("mode", "reason"),
    [
        (Mode.REJECT_CONNECT, EndReason.UPSTREAM_REJECTED),
        (Mode.ERROR_ON_CONNECT, EndReason.UPSTREAM_ERROR),
    ],
)
async def test_upstream_refusal_ends_the_call_with_a_reason(
    bridge: RunningBridge, simulator: RealtimeSimulator, mode: Mode, reason: EndReason
) -> None:
    simulator.config.mode = mode
    async with bridge.call() as caller:
        await caller.wait_closed(timeout=10)
    record = await bridge.finished(caller.call_sid)
    assert record.end_reason is reason
    assert caller.close_code == 1011


async def test_malformed_input_spares_the_other_call(
    bridge: RunningBridge, simulator: RealtimeSimulator
) -> None:
    simulator.config.reply_audio = lambda turn: tone(1000, 1.0, RATE_MODEL, 0.5)
    url = bridge.base.replace("http", "ws") + "/twilio/media"
    bad_sid = "CA" + "2" * 32
    async with bridge.call() as good, websockets.connect(url) as bad:
        await bad.send(_media(b"\xff" * 160))  # media before start
        await _raw_start(bad, bad_sid)
        for junk in (
            "{not json",
            '{"event": "bogus"}',
            '{"event": "media", "media": {"payload": "@@@"}}',
            _media(b"\x00" * 20000),
            json.dumps({"event": "mark"}),
        ):
            await bad.send(junk)
        await bad.send(b"\x00\x01binary")
        good.say(utterance())
        await good.wait_for_playback(0.9, timeout=10)
        await bad.send(_media(b"\xff" * 160))  # the bad caller's call is still up
        await bad.send(json.dumps({"event": "stop", "stop": {}}))
        await good.hangup()
    good_record = await bridge.finished(good.call_sid)
    bad_record = await bridge.finished(bad_sid)
    assert good_record.end_reason is EndReason.CALLER_HANGUP
    assert bad_record.end_reason is EndReason.CALLER_HANGUP
    assert bad_record.protocol_errors == 7
    assert bad_record.frames_in == 1


async def test_a_bug_on_the_fast_path_ends_that_call_with_its_reason_only(
    bridge: RunningBridge, simulator: RealtimeSimulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Conversion blows up for one call's frames, in the protocol's read callback: the frame
    goes to the call's task instead, which ends that call as an internal error with the cause
    recorded; the other call, on the same server, carries on."""
    url = bridge.base.replace("http", "ws") + "/twilio/media"
    bad_sid = "CA" + "9" * 32
    original = CallerToModel.convert
    failures: list[bytes] = []

    def convert(self: CallerToModel, ulaw: bytes) -> bytes:
        if ulaw == b"\x13" * FRAME_BYTES:
            failures.append(ulaw)
            raise RuntimeError("injected conversion bug")
        return original(self, ulaw)

    monkeypatch.setattr(CallerToModel, "convert", convert)
    async with bridge.call() as good, websockets.connect(url) as bad:
        await _raw_start(bad, bad_sid)
        session = await simulator.wait_for_session()
        await session.wait_for_received("session.update")
        await asyncio.sleep(0.2)  # the call is now reading caller frames
        await bad.send(_media(b"\x13" * FRAME_BYTES))
        with pytest.raises(websockets.ConnectionClosed):
            await asyncio.wait_for(bad.recv(), 5)
        good.say(utterance())
        await good.wait_for_playback(0.9, timeout=10)
        await good.hangup()
    bad_record = await bridge.finished(bad_sid)
    assert bad_record.end_reason is EndReason.INTERNAL_ERROR
    assert "injected conversion bug" in bad_record.end_detail
    # With the shortcuts: first in the read callback, then again in the call's task.
    assert len(failures) == (2 if fastws.enabled() else 1)
    assert bad_record.frames_in == 0  # a frame that failed is not counted, however often tried
    assert (await bridge.finished(good.call_sid)).end_reason is EndReason.CALLER_HANGUP


async def test_fifty_sequential_calls_leave_nothing_behind(
    bridge: RunningBridge, simulator: RealtimeSimulator
) -> None:
    url = bridge.base.replace("http", "ws") + "/twilio/media"
    baseline = len(asyncio.all_tasks())
    for n in range(50):
        sid = f"CA{n:032d}"
        async with websockets.connect(url) as ws:
            await _raw_start(ws, sid)
            for _ in range(3):
                await ws.send(_media(b"\xff" * 160))
            await ws.send(json.dumps({"event": "stop", "stop": {}}))
            await ws.wait_closed()
        await bridge.finished(sid)
    async with asyncio.timeout(5):
        for session in simulator.sessions:
            await session.closed.wait()
    await asyncio.sleep(0.1)
    # A call that hangs up before its Realtime session is open never opens one (no cost).
    assert len(simulator.sessions) <= 50
    assert all(session.closed.is_set() for session in simulator.sessions)
    assert not bridge.state.live_calls
    assert len(asyncio.all_tasks()) <= baseline
    assert all(r.end_reason is EndReason.CALLER_HANGUP for r in bridge.recorder.finished)


async def test_pcmu_passthrough_forwards_audio_untouched(simulator: RealtimeSimulator) -> None:
    simulator.config.reply_audio = lambda turn: tone(1000, 1.0, RATE_MODEL, 0.5)
    async with running_bridge(simulator, audio_mode=AudioMode.PCMU) as running:
        async with running.call() as caller:
            session = await simulator.wait_for_session()
            caller.say(utterance())
            await caller.wait_for_playback(0.9, timeout=10)
            await caller.wait_until_quiet(0.3, timeout=10)
            await caller.hangup()
        await asyncio.wait_for(session.closed.wait(), 2)
    audio_format = session.events_received("session.update")[0]["session"]["audio"]
    assert audio_format["input"]["format"] == {"type": "audio/pcmu"}
    assert audio_format["output"]["format"] == {"type": "audio/pcmu"}
    sent = caller.sent_audio()
    mic = to_ulaw(sent[: len(session.input_ulaw)])
    assert bytes(session.input_ulaw) == mic  # byte for byte: no transcoding on the way in
    heard = caller.heard()
    start, end = span(heard, RATE_IN)
    assert abs((end - start) - 1.0) <= 0.02
    assert (
        abs(dominant_frequency(heard[int(start * RATE_IN) : int(end * RATE_IN)], RATE_IN) - 1000)
        < 3
    )
    assert_ga_events(session)


async def test_greeting_is_spoken_before_the_caller_says_anything(
    simulator: RealtimeSimulator,
) -> None:
    greeting = "Thanks for calling Example Co."
    async with running_bridge(simulator, greeting=greeting) as running, running.call() as caller:
        session = await simulator.wait_for_session()
        await caller.wait_for_playback(1.0, timeout=10)
        await caller.hangup()
    create = session.events_received("response.create")[0]
    assert create["response"]["output_modalities"] == ["audio"]
    assert '"Thanks for calling Example Co."' in create["response"]["instructions"]
    assert session.received[0][1]["type"] == "session.update"
    assert caller.frames_sent < 150  # heard within a few seconds, the caller silent throughout
    assert_ga_events(session)


async def test_keypad_digits_reach_the_model_and_get_a_spoken_reply(
    bridge: RunningBridge, simulator: RealtimeSimulator
) -> None:
    """A run of keys ended by `#` reaches the model as one user message within 200 ms, a run
    ended by 2 s without a key a little after that, and each gets a reply the caller hears."""
    async with bridge.call() as caller:
        session = await simulator.wait_for_session()
        await session.wait_for_received("session.update")
        loop = asyncio.get_running_loop()
        await caller.press("123#")
        pressed = loop.time()
        item = await session.wait_for_received("conversation.item.create", timeout=2)
        assert loop.time() - pressed < 0.2
        assert item["item"]["content"][0]["text"].endswith(": 123)")
        await session.wait_for_received("response.create", timeout=2)
        await caller.wait_for_playback(0.5, timeout=10)
        await caller.press("42")
        pressed = loop.time()
        item = await session.wait_for_received("conversation.item.create", 2, timeout=5)
        assert 2.0 <= loop.time() - pressed < 2.3
        assert item["item"]["content"][0]["text"].endswith(": 42)")
        await caller.hangup()
    record = await bridge.finished(caller.call_sid)
    assert [e.detail["digit"] for e in record.events if e.kind == "dtmf"] == list("123#42")
