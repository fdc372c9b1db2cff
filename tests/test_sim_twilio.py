"""The Twilio caller simulator against a small in-test bridge on a loopback WebSocket."""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
import socket
import time
from collections.abc import AsyncIterator, Callable
from typing import Any
from urllib.parse import parse_qsl

import numpy as np
import numpy.typing as npt
import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from twilio.twiml.voice_response import Connect, VoiceResponse
from websockets.asyncio.server import ServerConnection, serve

from bridge.sim.playback import PlaybackBuffer
from bridge.sim.signals import to_ulaw, tone
from bridge.sim.twilio_caller import (
    MAX_BURST,
    TwilioCaller,
    fetch_twiml,
    loopback_url,
    parse_stream,
)

Message = dict[str, Any]


class FakeBridge:
    """Plays the bridge: records every message the caller sends, lets the test send back."""

    def __init__(self) -> None:
        self.url = ""
        self.messages: list[tuple[float, Message]] = []
        self.ws: ServerConnection | None = None
        self.request_headers: dict[str, str] = {}
        self.close_code: int | None = None
        self._connected = asyncio.Event()
        self._changed = asyncio.Event()

    async def handler(self, ws: ServerConnection) -> None:
        assert ws.request is not None
        self.request_headers = dict(ws.request.headers)
        self.ws = ws
        self._connected.set()
        loop = asyncio.get_running_loop()
        async for raw in ws:
            assert isinstance(raw, str)
            self.messages.append((loop.time(), json.loads(raw)))
            self._changed.set()
        self.close_code = ws.close_code
        self._changed.set()

    def events(self, name: str) -> list[tuple[float, Message]]:
        return [(t, m) for t, m in self.messages if m["event"] == name]

    async def wait_for(self, predicate: Callable[[], bool], timeout: float = 3.0) -> None:
        async with asyncio.timeout(timeout):
            while not predicate():
                self._changed.clear()
                await self._changed.wait()

    async def send(self, message: Message | str | bytes) -> float:
        """Send to the caller; returns the loop time just before sending."""
        async with asyncio.timeout(2):
            await self._connected.wait()
        assert self.ws is not None
        now = asyncio.get_running_loop().time()
        await self.ws.send(message if isinstance(message, str | bytes) else json.dumps(message))
        return now

    async def send_media(self, sid: str, data: bytes) -> float:
        payload = base64.b64encode(data).decode()
        return await self.send({"event": "media", "streamSid": sid, "media": {"payload": payload}})

    async def send_mark(self, sid: str, name: str) -> float:
        return await self.send({"event": "mark", "streamSid": sid, "mark": {"name": name}})


@pytest.fixture
async def bridge() -> AsyncIterator[FakeBridge]:
    fake = FakeBridge()
    async with serve(fake.handler, "127.0.0.1", 0, compression=None) as server:
        port = next(iter(server.sockets)).getsockname()[1]
        fake.url = f"ws://127.0.0.1:{port}/twilio/media"
        yield fake


def ulaw_tone(freq: float, seconds: float) -> bytes:
    return to_ulaw(tone(freq, seconds, 8000))


def dominant_hz(x: npt.NDArray[np.float32], rate: int = 8000) -> float:
    spectrum = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    return float(np.fft.rfftfreq(len(x), 1 / rate)[int(np.argmax(spectrum))])


def loud_span(x: npt.NDArray[np.float32], threshold: float = 0.05) -> tuple[int, int]:
    """First and one-past-last sample index above threshold."""
    idx = np.flatnonzero(np.abs(x) > threshold)
    assert idx.size, "no audio above threshold"
    return int(idx[0]), int(idx[-1]) + 1


# -- wire shapes and pacing -------------------------------------------------------------------


async def test_connected_and_start_shapes(bridge: FakeBridge) -> None:
    async with asyncio.timeout(5):
        caller = TwilioCaller(
            bridge.url, custom_parameters={"tenant": "42"}, headers={"X-Twilio-Signature": "sig"}
        )
        async with caller:
            await bridge.wait_for(lambda: len(bridge.events("media")) >= 2)
        connected, start = bridge.messages[0][1], bridge.messages[1][1]
        assert connected == {"event": "connected", "protocol": "Call", "version": "1.0.0"}
        assert start["event"] == "start"
        assert start["sequenceNumber"] == "1"
        assert start["streamSid"] == caller.stream_sid
        assert caller.stream_sid.startswith("MZ")
        assert caller.call_sid.startswith("CA")
        assert start["start"] == {
            "streamSid": caller.stream_sid,
            "accountSid": "AC" + "0" * 32,
            "callSid": caller.call_sid,
            "tracks": ["inbound"],
            "customParameters": {"tenant": "42"},
            "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1},
        }
        assert bridge.request_headers["x-twilio-signature"] == "sig"
        first = bridge.events("media")[0][1]
        assert first["sequenceNumber"] == "2"
        assert first["streamSid"] == caller.stream_sid
        assert first["media"]["track"] == "inbound"
        assert first["media"]["chunk"] == "1"
        assert first["media"]["timestamp"] == "0"
        assert base64.b64decode(first["media"]["payload"]) == b"\xff" * 160


async def test_media_pacing_is_20ms_without_drift(bridge: FakeBridge) -> None:
    async with asyncio.timeout(6), TwilioCaller(bridge.url, record=False) as caller:
        await asyncio.sleep(1.0)
        media = bridge.events("media")
        assert caller.frames_sent == pytest.approx(50, abs=3)
        assert len(media) == pytest.approx(50, abs=3)
        seqs = [int(m["sequenceNumber"]) for _, m in bridge.messages[1:]]
        assert seqs == list(range(1, len(seqs) + 1))
        for i, (_, m) in enumerate(media):
            assert m["media"]["chunk"] == str(i + 1)
            assert m["media"]["timestamp"] == str(i * 20)
            assert all(isinstance(m[k], str) for k in ("sequenceNumber", "streamSid"))
        # Arrival follows the absolute schedule: lateness does not accumulate.
        t0 = caller.started_at
        lateness = [t - t0 - int(m["media"]["timestamp"]) / 1000 for t, m in media]
        assert max(lateness) < 0.06
        assert min(lateness) >= 0.0  # never sent ahead of its schedule


async def test_say_sends_queued_speech_then_silence(bridge: FakeBridge) -> None:
    async with asyncio.timeout(5), TwilioCaller(bridge.url) as caller:
        speech = tone(440, 0.3, 8000)
        begin = asyncio.get_running_loop().time()
        await caller.say_and_wait(speech)
        assert not caller.speaking
        assert asyncio.get_running_loop().time() - begin == pytest.approx(0.3, abs=0.06)
        after = caller.frames_sent + 1  # the next frame is silence again
        await bridge.wait_for(lambda: len(bridge.events("media")) >= after)
        payloads = b"".join(
            base64.b64decode(m["media"]["payload"]) for _, m in bridge.events("media")
        )
        assert to_ulaw(speech) in payloads
        sent = caller.sent_audio()
        start, end = loud_span(sent)
        assert (end - start) == pytest.approx(2400, abs=4)
        assert dominant_hz(sent[start:end]) == pytest.approx(440, abs=5)
        assert payloads.endswith(b"\xff" * 160)


async def test_comfort_noise_is_low_but_not_silent(bridge: FakeBridge) -> None:
    async with asyncio.timeout(5), TwilioCaller(bridge.url, comfort_noise=0.003) as caller:
        await bridge.wait_for(lambda: len(bridge.events("media")) >= 10)
        sent = caller.sent_audio()
        assert 0 < float(np.sqrt(np.mean(sent**2))) < 0.01


# -- playback, marks, clear ---------------------------------------------------------------------


async def test_mark_echo_after_playback_and_tone_heard_on_time(bridge: FakeBridge) -> None:
    async with asyncio.timeout(6), TwilioCaller(bridge.url) as caller:
        await bridge.wait_for(lambda: len(bridge.events("media")) >= 3)
        sent_at = await bridge.send_media(caller.stream_sid, ulaw_tone(1000, 1.0))
        await bridge.send_mark(caller.stream_sid, "m1")
        await caller.wait_for_playback(0.5)
        assert caller.buffered > 0
        await bridge.wait_for(lambda: bool(bridge.events("mark")), timeout=3)
        echo_at, echo = bridge.events("mark")[0]
        assert echo["mark"] == {"name": "m1"}
        assert echo["streamSid"] == caller.stream_sid
        assert isinstance(echo["sequenceNumber"], str)
        assert echo_at - sent_at == pytest.approx(1.0, abs=0.06)
        assert caller.played_per_mark == {"m1": 8000}
        assert [(name, cleared) for _, name, cleared in caller.marks_echoed] == [("m1", False)]
        heard = caller.heard()
        start, end = loud_span(heard)
        assert caller.started_at + start / 8000 == pytest.approx(sent_at, abs=0.04)
        assert end - start == pytest.approx(8000, abs=2)
        assert dominant_hz(heard[start:end]) == pytest.approx(1000, abs=3)
        received = caller.received_after(sent_at)
        assert received[0]["media"]["payload_bytes"] == 8000
        assert caller.frames_played == 50
        assert caller.underruns == 0
        await caller.wait_until_quiet(0.2)


async def test_mark_with_nothing_buffered_echoes_at_once(bridge: FakeBridge) -> None:
    async with asyncio.timeout(5), TwilioCaller(bridge.url) as caller:
        sent_at = await bridge.send_mark(caller.stream_sid, "empty")
        await bridge.wait_for(lambda: bool(bridge.events("mark")))
        assert bridge.events("mark")[0][0] - sent_at < 0.03
        assert caller.played_per_mark == {"empty": 0}


async def test_clear_drops_audio_and_echoes_pending_marks(bridge: FakeBridge) -> None:
    async with asyncio.timeout(8), TwilioCaller(bridge.url) as caller:
        sid = caller.stream_sid
        await bridge.send_media(sid, ulaw_tone(1000, 2.0))
        await bridge.send_mark(sid, "a")
        await bridge.send_media(sid, ulaw_tone(1000, 1.0))
        await bridge.send_mark(sid, "b")
        await caller.wait_for_playback(0.5)
        cleared_at = await bridge.send({"event": "clear", "streamSid": sid})
        await bridge.wait_for(lambda: len(bridge.events("mark")) == 2)
        marks = bridge.events("mark")
        assert [m["mark"]["name"] for _, m in marks] == ["a", "b"]
        assert all(t - cleared_at < 0.05 for t, _ in marks)
        assert [(n, c) for _, n, c in caller.marks_echoed] == [("a", True), ("b", True)]
        assert caller.played_per_mark["a"] == pytest.approx(4000, abs=480)
        assert caller.played_per_mark["b"] == 0
        assert caller.buffered == 0
        assert len(caller.clears) == 1
        # Only what played before the clear is heard; then a new reply starts.
        await bridge.send_media(sid, ulaw_tone(500, 0.1))
        await bridge.send_mark(sid, "c")
        await bridge.wait_for(lambda: len(bridge.events("mark")) == 3)
        assert caller.media_after_clear == [800]
        assert caller.played_per_mark["c"] == 800
        # Heard: whole frames of "a" up to the clear, then silence, then the 100 ms of "c".
        frames = caller.heard()
        frames = frames[: len(frames) // 160 * 160].reshape(-1, 160)
        loud = np.flatnonzero(np.sqrt(np.mean(frames**2, axis=1)) > 0.1)
        played_a = caller.played_per_mark["a"] // 160
        assert len(loud) == played_a + 5
        assert np.all(np.diff(loud[:played_a]) == 1)
        assert caller.started_at + loud[played_a - 1] * 0.02 < cleared_at
        assert np.all(np.diff(loud[played_a:]) == 1)
        assert dominant_hz(frames[loud[played_a:]].ravel()) == pytest.approx(500, abs=5)


async def test_underrun_counted_only_inside_a_reply(bridge: FakeBridge) -> None:
    async with asyncio.timeout(8), TwilioCaller(bridge.url, record=False) as caller:
        sid = caller.stream_sid
        await bridge.send_media(sid, ulaw_tone(1000, 0.2))
        await asyncio.sleep(0.35)  # the buffer runs dry about 150 ms before the next chunk
        await bridge.send_media(sid, ulaw_tone(1000, 0.2))
        await caller.wait_until_quiet(1.2)  # a pause longer than 1 s ends the reply
        await bridge.send_media(sid, ulaw_tone(1000, 0.2))
        await caller.wait_until_quiet(0.1)
        assert caller.underruns == 1
        assert caller.gaps_ms == [pytest.approx(150, abs=45)]


# -- protocol errors and the end of the call -------------------------------------------------------


async def test_protocol_errors_recorded_and_ignored(bridge: FakeBridge) -> None:
    async with asyncio.timeout(5), TwilioCaller(bridge.url) as caller:
        sid = caller.stream_sid
        bad: list[Message | str | bytes] = [
            b"\x00\x01",
            "{not json",
            {"event": "dance", "streamSid": sid},
            {"event": "media", "streamSid": "MZwrong", "media": {"payload": "//8="}},
            {"event": "mark", "mark": {"name": "x"}},
            {"event": "media", "streamSid": sid, "media": {"payload": "***"}},
            {"event": "clear", "streamSid": sid, "extra": 1},
            {"event": "mark", "streamSid": sid, "mark": {}},
            "[1, 2]",
        ]
        for message in bad:
            await bridge.send(message)
        await bridge.send_mark(sid, "ok")
        await bridge.wait_for(lambda: bool(bridge.events("mark")))
        assert len(caller.protocol_errors) == len(bad)
        assert caller.protocol_errors[0].startswith("31950")
        assert all(e.startswith("31951") for e in caller.protocol_errors[1:])
        assert caller.clears == []
        assert caller.buffered == 0
        assert caller.close_code is None
        frames = caller.frames_sent
        await bridge.wait_for(lambda: caller.frames_sent > frames + 2)


async def test_hangup_sends_stop_and_closes(bridge: FakeBridge) -> None:
    async with asyncio.timeout(5):
        async with TwilioCaller(bridge.url, account_sid="AC" + "1" * 32) as caller:
            await bridge.wait_for(lambda: len(bridge.events("media")) >= 3)
            await caller.hangup()
            await caller.hangup()  # idempotent
            frames = caller.frames_sent
            await asyncio.sleep(0.06)
            assert caller.frames_sent == frames
        await bridge.wait_for(lambda: bridge.close_code is not None)
        last = bridge.messages[-1][1]
        assert last == {
            "event": "stop",
            "sequenceNumber": str(len(bridge.messages) - 1),
            "streamSid": caller.stream_sid,
            "stop": {"accountSid": "AC" + "1" * 32, "callSid": caller.call_sid},
        }
        assert bridge.close_code == 1000
        assert caller.close_code == 1000
        assert caller.closed_by == "caller"


async def test_server_close_recorded_and_exit_is_clean(bridge: FakeBridge) -> None:
    async with asyncio.timeout(5):
        async with TwilioCaller(bridge.url) as caller:
            await bridge.wait_for(lambda: len(bridge.events("media")) >= 2)
            assert bridge.ws is not None
            await bridge.ws.close(1011, "bye")
            await caller.wait_closed()
            assert caller.close_code == 1011
            assert caller.close_reason == "bye"
            assert caller.closed_by == "bridge"
            with pytest.raises(ConnectionError):
                await caller.wait_for_playback(0.1)
            await caller.wait_until_quiet(5.0)  # returns at once: nothing more will play
        assert not any(m["event"] == "stop" for _, m in bridge.messages)


async def test_no_tasks_leak_after_exit(bridge: FakeBridge) -> None:
    async with asyncio.timeout(5):
        before = asyncio.all_tasks()
        async with TwilioCaller(bridge.url) as caller:
            await bridge.wait_for(lambda: len(bridge.events("media")) >= 2)
            names = {t.get_name() for t in asyncio.all_tasks() - before}
            assert {f"twilio-caller-{caller.call_sid}", f"twilio-pacer-{caller.call_sid}"} <= names
        leaked = [t for t in asyncio.all_tasks() - before if t.get_name().startswith("twilio-")]
        assert leaked == []


async def test_stalled_loop_catches_up_with_a_bounded_burst(bridge: FakeBridge) -> None:
    async with asyncio.timeout(5), TwilioCaller(bridge.url, record=True) as caller:
        await bridge.wait_for(lambda: len(bridge.events("media")) >= 2)
        time.sleep(0.5)  # noqa: ASYNC251 -- deliberately stall the event loop
        stalled = caller.frames_sent
        await asyncio.sleep(0.1)
        assert caller.frames_dropped == pytest.approx(25 - MAX_BURST, abs=3)
        assert caller.frames_sent - stalled <= MAX_BURST + 8
        timestamps = [int(m["media"]["timestamp"]) for _, m in bridge.events("media")]
        steps = {b - a for a, b in itertools.pairwise(timestamps)}
        assert max(steps) == pytest.approx((caller.frames_dropped + 1) * 20, abs=20)
        # The recordings stay on the call timeline: one frame per tick, sent or not.
        assert len(caller.heard()) == len(caller.sent_audio())


# -- Sans-I/O playback arithmetic ------------------------------------------------------------


def test_playback_buffer_marks_clear_and_underruns() -> None:
    buf = PlaybackBuffer()
    buf.feed(b"\x00" * 300, 0.0)
    assert buf.mark("a") == []
    buf.feed(b"\x00" * 100, 0.0)
    assert buf.mark("b") == []
    assert buf.play(0.00) == (b"\x00" * 160, [])
    data, echoes = buf.play(0.02)  # marks do not split frames: "a" is passed mid-frame
    assert (len(data), echoes) == (160, [])
    data, echoes = buf.play(0.04)  # echoed once the audio ahead of it has finished
    assert len(data) == 80
    assert [(e.name, e.cleared, e.played) for e in echoes] == [("a", False, 300)]
    data, echoes = buf.play(0.06)
    assert data == b""
    assert [(e.name, e.played) for e in echoes] == [("b", 100)]
    buf.feed(b"\x00" * 10, 0.09)  # dry at 0.05, one empty tick, back within 1 s
    assert buf.underruns == 1
    assert buf.gaps_ms == [pytest.approx(40.0)]
    buf.feed(b"\x00" * 400, 0.09)
    buf.mark("c")
    buf.feed(b"\x00" * 400, 0.09)
    buf.mark("d")
    buf.play(0.10)
    [c, d] = buf.clear()
    assert (c.name, c.cleared, c.played) == ("c", True, 160)
    assert (d.name, d.cleared, d.played) == ("d", True, 0)
    assert buf.buffered == 0
    assert buf.dropped_total == 650
    [e] = buf.mark("e")
    assert (e.name, e.cleared, e.played) == ("e", False, 0)
    buf.feed(b"\x00" * 10, 0.5)  # after a clear, no underrun is counted
    assert buf.underruns == 1


# -- placing the call ---------------------------------------------------------------------------


def test_parse_stream_reads_url_and_parameters() -> None:
    response = VoiceResponse()
    connect = Connect()
    stream = connect.stream(url="wss://bridge.example.com/twilio/media")
    stream.parameter(name="tenant", value="42")
    stream.parameter(name="lang", value="fr")
    response.append(connect)
    assert parse_stream(str(response)) == (
        "wss://bridge.example.com/twilio/media",
        {"tenant": "42", "lang": "fr"},
    )
    rejected = VoiceResponse()
    rejected.reject()
    with pytest.raises(ValueError, match="Connect"):
        parse_stream(str(rejected))
    with pytest.raises(ValueError, match="XML"):
        parse_stream("<Response><Connect>")


def test_loopback_url() -> None:
    base = "http://127.0.0.1:8123"
    assert loopback_url("wss://bridge.example.com/twilio/media", base) == (
        "ws://127.0.0.1:8123/twilio/media"
    )
    assert loopback_url("/twilio/media", base + "/") == "ws://127.0.0.1:8123/twilio/media"
    assert loopback_url("wss://x.example/m", "https://h:1") == "wss://h:1/m"


async def test_fetch_twiml_posts_the_voice_webhook() -> None:
    seen: list[dict[str, str]] = []

    async def voice(request: Request) -> Response:
        assert request.headers["content-type"] == "application/x-www-form-urlencoded"
        seen.append(dict(parse_qsl((await request.body()).decode(), strict_parsing=True)))
        seen.append({"x-test": request.headers.get("x-test", "")})
        twiml = VoiceResponse()
        connect = Connect()
        connect.stream(url="wss://public.example/twilio/media").parameter(name="p", value="1")
        twiml.append(connect)
        return Response(str(twiml), media_type="application/xml")

    app = Starlette(routes=[Route("/twilio/voice", voice, methods=["POST"])])
    config = uvicorn.Config(app, host="127.0.0.1", port=0, lifespan="off", log_level="warning")
    server = uvicorn.Server(config)
    # Bound and listening before uvicorn starts: the request waits in the backlog, no polling.
    sock = socket.create_server(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    base = f"http://127.0.0.1:{port}"
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        async with asyncio.timeout(10):
            status, body = await fetch_twiml(
                base,
                from_="+15550001111",
                to="+15550002222",
                call_sid="CA123",
                headers={"X-Test": "yes"},
                extra={"CallerName": "Ada"},
            )
    finally:
        server.should_exit = True
        async with asyncio.timeout(5):
            await task
        sock.close()
    assert status == 200
    assert seen[0] == {
        "CallSid": "CA123",
        "AccountSid": "AC" + "0" * 32,
        "From": "+15550001111",
        "To": "+15550002222",
        "CallStatus": "ringing",
        "Direction": "inbound",
        "ApiVersion": "2010-04-01",
        "CallerName": "Ada",
    }
    assert seen[1] == {"x-test": "yes"}
    url, params = parse_stream(body)
    assert params == {"p": "1"}
    assert loopback_url(url, base) == f"ws://127.0.0.1:{port}/twilio/media"
