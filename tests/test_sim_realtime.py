"""The Realtime simulator against a real WebSocket client: GA wire shape, VAD, responses, quirks.

Every event a test receives is validated against the official GA server event types (openai).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import re
import time
import typing
from collections.abc import AsyncIterator
from typing import Annotated, Any, Union

import httpx
import numpy as np
import pytest
from openai.types.realtime import RealtimeServerEvent
from pydantic import Field, TypeAdapter
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from bridge.sim import signals
from bridge.sim.realtime_config import ClientError, apply_session_update, default_session
from bridge.sim.realtime_server import Mode, RealtimeSimulator, SimConfig, SimSession
from bridge.sim.realtime_session import RealtimeSessionState
from bridge.sim.vad import EnergyVad

AUTH = {"Authorization": "Bearer sk-test"}
REPLY = "Hello! I am doing great, thanks for asking. How can I help you today?"
RATE = 24000
PCM_FRAME = 960  # 20 ms of PCM16 at 24 kHz
ULAW_FRAME = 160  # 20 ms of mu-law at 8 kHz
PCMU = {"type": "audio/pcmu"}


def discriminated(alias: Any) -> Any:
    """The SDK's union as a real pydantic discriminated union (its own tag is ignored)."""
    if typing.get_origin(alias) is Annotated:
        alias = typing.get_args(alias)[0]
    return Annotated[Union[typing.get_args(alias)], Field(discriminator="type")]  # noqa: UP007


GA_SERVER: TypeAdapter[Any] = TypeAdapter(discriminated(RealtimeServerEvent))


class Client:
    """A real WebSocket client that validates every server event it reads."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.events: list[tuple[float, dict[str, Any]]] = []

    async def send(self, event: dict[str, Any]) -> None:
        await self.ws.send(json.dumps(event))

    async def recv(self) -> dict[str, Any]:
        event: dict[str, Any] = json.loads(await self.ws.recv())
        GA_SERVER.validate_python(event)
        self.events.append((time.monotonic(), event))
        return event

    async def until(self, type_: str) -> dict[str, Any]:
        """Read events up to and including the next one of `type_`."""
        while True:
            event = await self.recv()
            if event["type"] == type_:
                return event

    def of_type(self, type_: str) -> list[dict[str, Any]]:
        return [event for _, event in self.events if event["type"] == type_]

    async def append(self, audio: bytes, frame: int) -> None:
        for i in range(0, len(audio), frame):
            chunk = base64.b64encode(audio[i : i + frame]).decode()
            await self.send({"type": "input_audio_buffer.append", "audio": chunk})


@contextlib.asynccontextmanager
async def client(
    sim: RealtimeSimulator, *, path: str = "/v1/realtime?model=gpt-realtime", **headers: str
) -> AsyncIterator[Client]:
    """Connected and past `session.created`."""
    url = sim.url.replace("/v1/realtime", path)
    async with connect(url, additional_headers=headers or AUTH, open_timeout=5) as ws:
        c = Client(ws)
        created = await c.recv()
        assert created["type"] == "session.created"
        yield c


def turn_audio(speech: np.ndarray, rate: int) -> np.ndarray:
    """1 s silence, the speech, 1 s silence."""
    return np.concatenate([signals.silence(1.0, rate), speech, signals.silence(1.0, rate)])


def dominant_hz(x: np.ndarray, rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    return float(np.argmax(spectrum) * rate / len(x))


def audio_of(events: list[dict[str, Any]]) -> bytes:
    return b"".join(base64.b64decode(e["delta"]) for e in events)


async def test_handshake_requires_an_api_key() -> None:
    async with asyncio.timeout(10), RealtimeSimulator() as sim:
        with pytest.raises(InvalidStatus) as refused:
            async with connect(sim.url, open_timeout=5):
                pass
        assert refused.value.response.status_code == 401
        with pytest.raises(InvalidStatus):
            async with connect(sim.url, additional_headers={"Authorization": "Bearer "}):
                pass
        assert len(sim.rejected) == 2
        assert sim.sessions == []
        # Azure style: api-key header on /openai/v1/realtime.
        async with client(sim, path="/openai/v1/realtime?model=my-deployment", **{"api-key": "k"}):
            session = await sim.wait_for_session(0)
        assert session.path == "/openai/v1/realtime"
        assert session.headers["api-key"] == "k"
        assert session.query == {"model": "my-deployment"}
        assert session.session["model"] == "my-deployment"


async def test_reject_connect_mode_refuses_with_403() -> None:
    async with asyncio.timeout(10), RealtimeSimulator(SimConfig(mode=Mode.REJECT_CONNECT)) as sim:
        with pytest.raises(InvalidStatus) as refused:
            async with connect(sim.url, additional_headers=AUTH, open_timeout=5):
                pass
        assert refused.value.response.status_code == 403
        assert sim.sessions == []


async def test_error_on_connect_sends_invalid_api_key_and_closes_1008() -> None:
    async with asyncio.timeout(10), RealtimeSimulator(SimConfig(mode=Mode.ERROR_ON_CONNECT)) as sim:
        async with connect(sim.url, additional_headers=AUTH) as ws:
            event = json.loads(await ws.recv())
            GA_SERVER.validate_python(event)
            assert event["type"] == "error"
            assert event["error"]["code"] == "invalid_api_key"
            with pytest.raises(ConnectionClosed):
                await ws.recv()
            assert ws.close_code == 1008
        session = await sim.wait_for_session(0)
        await asyncio.wait_for(session.closed.wait(), 5)
        assert session.close_code == 1008


async def test_beta_header_is_refused_with_close_4000() -> None:
    async with asyncio.timeout(10), RealtimeSimulator() as sim:
        headers = {**AUTH, "OpenAI-Beta": "realtime=v1"}
        async with connect(sim.url, additional_headers=headers) as ws:
            event = json.loads(await ws.recv())
            GA_SERVER.validate_python(event)
            assert event["error"]["code"] == "beta_api_shape_disabled"
            assert event["error"]["message"] == (
                "The Realtime Beta API is no longer supported. Please use /v1/realtime for the "
                "GA API."
            )
            with pytest.raises(ConnectionClosed):
                await ws.recv()
            assert ws.close_code == 4000
        session = await sim.wait_for_session(0)
        assert session.headers["openai-beta"] == "realtime=v1"


async def test_session_created_and_update_round_trip() -> None:
    async with asyncio.timeout(10), RealtimeSimulator() as sim, client(sim) as c:
        created = c.events[0][1]["session"]
        assert created["type"] == "realtime"
        assert created["model"] == "gpt-realtime"
        assert created["output_modalities"] == ["audio"]
        assert created["audio"]["input"]["format"] == {"type": "audio/pcm", "rate": 24000}
        assert created["audio"]["output"]["voice"] == "marin"
        assert created["audio"]["input"]["turn_detection"]["type"] == "server_vad"
        await c.send(
            {
                "type": "session.update",
                "event_id": "evt_1",
                "session": {
                    "type": "realtime",
                    "instructions": "Be brief.",
                    "audio": {
                        "input": {
                            "format": PCMU,
                            "turn_detection": {"silence_duration_ms": 300},
                            "transcription": {"model": "gpt-4o-mini-transcribe"},
                        },
                        "output": {"format": PCMU, "voice": "cedar"},
                    },
                },
            }
        )
        updated = (await c.until("session.updated"))["session"]
        assert updated["instructions"] == "Be brief."
        assert updated["audio"]["input"]["format"] == PCMU  # replaced, no stale rate
        assert updated["audio"]["output"] == {"format": PCMU, "voice": "cedar", "speed": 1.0}
        vad = updated["audio"]["input"]["turn_detection"]
        assert vad["silence_duration_ms"] == 300
        assert vad["prefix_padding_ms"] == 300  # merged, not replaced
        session = await sim.wait_for_session(0)
        assert session.session == updated
        assert (await session.wait_for_received("session.update"))["event_id"] == "evt_1"


@pytest.mark.parametrize(
    ("session", "code", "param"),
    [
        ({"type": "realtime", "modalities": ["audio"]}, "unknown_parameter", "session.modalities"),
        (
            {"type": "realtime", "input_audio_format": "g711_ulaw"},
            "unknown_parameter",
            "session.input_audio_format",
        ),
        ({"type": "realtime", "voice": "alloy"}, "unknown_parameter", "session.voice"),
        ({"instructions": "hi"}, "missing_required_parameter", "session.type"),
        (
            {"type": "realtime", "output_modalities": ["text", "audio"]},
            "invalid_value",
            "session.output_modalities",
        ),
        (
            {"type": "realtime", "audio": {"input": {"format": {"type": "g711_ulaw"}}}},
            "invalid_value",
            "session.audio.input.format.type",
        ),
    ],
)
async def test_session_update_rejects_beta_and_invalid_shapes(
    session: dict[str, Any], code: str, param: str
) -> None:
    async with asyncio.timeout(10), RealtimeSimulator() as sim, client(sim) as c:
        before = (await sim.wait_for_session(0)).session
        await c.send({"type": "session.update", "event_id": "evt_bad", "session": session})
        error = (await c.until("error"))["error"]
        assert (error["type"], error["code"], error["param"]) == (
            "invalid_request_error",
            code,
            param,
        )
        assert error["event_id"] == "evt_bad"
        assert (await sim.wait_for_session(0)).session == before
        # The session carries on.
        await c.send({"type": "session.update", "session": {"type": "realtime"}})
        await c.until("session.updated")


async def test_bad_client_events_get_errors_and_the_session_carries_on() -> None:
    async with asyncio.timeout(10), RealtimeSimulator() as sim, client(sim) as c:
        await c.ws.send("{not json")
        assert (await c.until("error"))["error"]["code"] == "invalid_json"
        await c.send({"type": "response.audio.delta", "event_id": "evt_x"})
        error = (await c.until("error"))["error"]
        assert (error["code"], error["param"], error["event_id"]) == (
            "invalid_value",
            "type",
            "evt_x",
        )
        await c.send({"type": "conversation.item.truncate", "item_id": "x", "content_index": 0})
        error = (await c.until("error"))["error"]
        assert (error["code"], error["param"]) == ("missing_required_parameter", "audio_end_ms")
        await c.send({"type": "input_audio_buffer.commit", "event_id": "evt_c"})
        error = (await c.until("error"))["error"]
        assert (error["code"], error["event_id"]) == ("input_audio_buffer_commit_empty", "evt_c")
        await c.send({"type": "input_audio_buffer.clear"})
        await c.until("input_audio_buffer.cleared")
        session = await sim.wait_for_session(0)
        assert session.received[0][1] == {"_raw": "{not json"}
        assert len(session.events_sent("error")) == 4


async def test_vad_turn_with_transcription_and_a_paced_audio_response() -> None:
    config = SimConfig(speedup=5.0, caller_transcripts=("Hi Tyler!",))
    async with asyncio.timeout(30), RealtimeSimulator(config) as sim, client(sim) as c:
        await c.send(
            {
                "type": "session.update",
                "session": {
                    "type": "realtime",
                    "audio": {"input": {"transcription": {"model": "whisper-1"}}},
                },
            }
        )
        await c.until("session.updated")
        caller = turn_audio(signals.tone(440.0, 1.0, RATE), RATE)
        await c.append(signals.to_pcm16(caller), PCM_FRAME)
        started = await c.until("input_audio_buffer.speech_started")
        assert abs(started["audio_start_ms"] - 700) <= 40  # onset 1000 - prefix 300
        stopped = await c.until("input_audio_buffer.speech_stopped")
        assert abs(stopped["audio_end_ms"] - 2000) <= 40
        assert stopped["item_id"] == started["item_id"]
        committed = await c.until("input_audio_buffer.committed")
        assert committed["item_id"] == started["item_id"]
        added = await c.until("conversation.item.added")
        assert added["item"]["role"] == "user"
        assert added["item"]["content"] == [{"type": "input_audio", "transcript": None}]
        done = await c.until("conversation.item.input_audio_transcription.completed")
        assert done["transcript"] == "Hi Tyler!"
        created = await c.until("response.created")
        assert created["response"]["status"] == "in_progress"
        finished = await c.until("response.done")
        response = finished["response"]
        assert response["status"] == "completed"
        assert response["output"][0]["content"] == [{"type": "output_audio", "transcript": REPLY}]
        assert response["usage"]["output_token_details"]["audio_tokens"] > 0

        deltas = [(t, e) for t, e in c.events if e["type"] == "response.output_audio.delta"]
        audio = audio_of([e for _, e in deltas])
        assert audio == signals.to_pcm16(signals.speech(REPLY, RATE))
        seconds = len(audio) / 2 / RATE
        elapsed = deltas[-1][0] - deltas[0][0]
        assert elapsed < seconds / 2  # faster than real time ...
        assert elapsed > (len(deltas) - 1) * 0.1 / 5.0 * 0.8  # ... at about the configured pace
        assert all(len(base64.b64decode(e["delta"])) <= 4800 for _, e in deltas)  # 100 ms each
        transcript = "".join(
            e["delta"] for e in c.of_type("response.output_audio_transcript.delta")
        )
        assert transcript == REPLY
        assert c.of_type("rate_limits.updated")

        session = await sim.wait_for_session(0)
        assert len(session.input_audio) == len(caller) * 2
        assert sum(
            e["audio_bytes"] for e in session.events_sent("response.output_audio.delta")
        ) == (len(audio))


async def test_pcmu_in_and_out() -> None:
    config = SimConfig(reply_audio=lambda turn: signals.tone(1000.0, 1.0, RATE), speedup=50.0)
    async with asyncio.timeout(20), RealtimeSimulator(config) as sim, client(sim) as c:
        await c.send(
            {
                "type": "session.update",
                "session": {
                    "type": "realtime",
                    "audio": {"input": {"format": PCMU}, "output": {"format": PCMU}},
                },
            }
        )
        await c.until("session.updated")
        caller = signals.to_ulaw(turn_audio(signals.tone(440.0, 1.0, 8000), 8000))
        await c.append(caller, ULAW_FRAME)
        assert (
            abs((await c.until("input_audio_buffer.speech_started"))["audio_start_ms"] - 700) <= 40
        )
        assert (
            abs((await c.until("input_audio_buffer.speech_stopped"))["audio_end_ms"] - 2000) <= 40
        )
        done = await c.until("response.done")
        assert done["response"]["audio"]["output"]["format"] == PCMU
        audio = audio_of(c.of_type("response.output_audio.delta"))
        assert len(audio) == 8000  # 1 s of 8 kHz mu-law
        assert abs(dominant_hz(signals.from_ulaw(audio), 8000) - 1000.0) < 10.0
        session = await sim.wait_for_session(0)
        assert bytes(session.input_ulaw) == caller
        assert len(session.input_audio) == len(caller) * 6  # PCM16 at 24 kHz
        pcm24 = signals.from_pcm16(bytes(session.input_audio))
        assert abs(dominant_hz(pcm24[RATE + 2400 : 2 * RATE - 2400], RATE) - 440.0) < 5.0


async def test_response_cancel_semantics() -> None:
    config = SimConfig(speedup=2.0)
    async with asyncio.timeout(20), RealtimeSimulator(config) as sim, client(sim) as c:
        await c.send({"type": "response.cancel", "event_id": "evt_cancel"})
        error = (await c.until("error"))["error"]
        assert error["code"] == "response_cancel_not_active"
        assert error["message"] == "Cancellation failed: no active response found"
        assert error["event_id"] == "evt_cancel"

        await c.send(
            {
                "type": "response.create",
                "response": {
                    "output_modalities": ["audio"],
                    "instructions": 'You are "Tyler". Say exactly: "Sure, one moment."',
                },
            }
        )
        created = await c.until("response.created")
        await c.until("response.output_audio.delta")
        await c.send({"type": "response.create", "event_id": "evt_2"})
        error = (await c.until("error"))["error"]
        assert error["code"] == "conversation_already_has_active_response"
        await c.send({"type": "response.cancel"})
        done = (await c.until("response.done"))["response"]
        assert done["id"] == created["response"]["id"]
        assert done["status"] == "cancelled"
        assert done["status_details"] == {"type": "cancelled", "reason": "client_cancelled"}
        assert done["output"][0]["status"] == "incomplete"
        transcript = done["output"][0]["content"][0]["transcript"]
        assert "Sure, one moment.".startswith(transcript)
        # Nothing more for that response, and cancelling again is an error.
        await c.send({"type": "response.cancel"})
        assert (await c.until("error"))["error"]["code"] == "response_cancel_not_active"
        assert c.events[-1][1]["type"] == "error"
        session = await sim.wait_for_session(0)
        last_delta = max(i for i, (_, e) in enumerate(session.sent) if "delta" in e)
        first_done = next(
            i for i, (_, e) in enumerate(session.sent) if e["type"] == "response.done"
        )
        assert last_delta < first_done


@pytest.mark.parametrize("late", [0, 2])
async def test_late_deltas_after_cancel(late: int) -> None:
    config = SimConfig(speedup=2.0, late_deltas_after_cancel=late)
    async with asyncio.timeout(20), RealtimeSimulator(config) as sim, client(sim) as c:
        await c.send({"type": "response.create"})
        item_id = (await c.until("response.output_audio.delta"))["item_id"]
        await c.send({"type": "response.cancel"})
        await c.until("response.done")
        session = await sim.wait_for_session(0)
        cancelled_at = session.events_received("response.cancel")[0]
        index = next(i for i, (_, e) in enumerate(session.received) if e is cancelled_at)
        t_cancel = session.received[index][0]
        after = [
            e
            for t, e in session.sent
            if t >= t_cancel and e["type"] == "response.output_audio.delta"
        ]
        assert len(after) == late
        assert all(e["item_id"] == item_id for e in after)
        # Late deltas count as generated audio of the item.
        audio_ms = sum(e["audio_bytes"] for e in session.events_sent("response.output_audio.delta"))
        assert session.items[item_id].audio_ms == audio_ms // 48


async def test_speech_interrupts_the_response_when_interrupt_response_is_on() -> None:
    config = SimConfig(speedup=1.0)
    async with asyncio.timeout(20), RealtimeSimulator(config) as sim, client(sim) as c:
        await c.send({"type": "response.create"})
        await c.until("response.output_audio.delta")
        await c.append(signals.to_pcm16(signals.tone(300.0, 0.2, RATE)), PCM_FRAME)
        await c.until("input_audio_buffer.speech_started")
        done = (await c.until("response.done"))["response"]
        assert done["status"] == "cancelled"
        assert done["status_details"]["reason"] == "turn_detected"
        assert (await sim.wait_for_session(0)).state.response is None


async def test_truncate_ok_too_long_and_negative() -> None:
    config = SimConfig(reply_audio=lambda turn: signals.tone(1000.0, 1.0, RATE), speedup=50.0)
    async with asyncio.timeout(20), RealtimeSimulator(config) as sim, client(sim) as c:
        await c.send({"type": "response.create"})
        done = (await c.until("response.done"))["response"]
        item_id = done["output"][0]["id"]

        def truncate(ms: int, item: str = item_id) -> dict[str, Any]:
            return {
                "type": "conversation.item.truncate",
                "event_id": f"evt_{ms}",
                "item_id": item,
                "content_index": 0,
                "audio_end_ms": ms,
            }

        await c.send(truncate(1500))
        error = (await c.until("error"))["error"]
        assert error["message"] == "Audio content of 1000ms is already shorter than 1500ms"
        assert error["code"] is None
        assert error["event_id"] == "evt_1500"
        await c.send(truncate(-5))
        error = (await c.until("error"))["error"]
        assert (error["code"], error["param"]) == ("integer_below_min_value", "audio_end_ms")
        await c.send(truncate(100, "item_unknown"))
        assert (await c.until("error"))["error"]["param"] == "item_id"
        await c.send(truncate(400))
        truncated = await c.until("conversation.item.truncated")
        assert (truncated["item_id"], truncated["content_index"], truncated["audio_end_ms"]) == (
            item_id,
            0,
            400,
        )
        await c.send(truncate(600))
        error = (await c.until("error"))["error"]
        assert error["message"] == "Audio content of 400ms is already shorter than 600ms"
        session = await sim.wait_for_session(0)
        assert [(t["item_id"], t["audio_end_ms"]) for t in session.truncations] == [(item_id, 400)]
        assert session.items[item_id].content[0]["transcript"] == ""  # heard audio only
        # A user item cannot be truncated.
        await c.send(
            {
                "type": "conversation.item.create",
                "item": {
                    "type": "message",
                    "role": "user",
                    "content": [{"type": "input_text", "text": "hi"}],
                },
            }
        )
        user_item = (await c.until("conversation.item.done"))["item"]["id"]
        await c.send(truncate(0, user_item))
        assert (await c.until("error"))["error"]["param"] == "item_id"


async def test_always_text_mode_never_sends_audio() -> None:
    async with (
        asyncio.timeout(10),
        RealtimeSimulator(SimConfig(mode=Mode.ALWAYS_TEXT)) as sim,
        client(sim) as c,
    ):
        for _ in range(2):
            await c.send({"type": "response.create", "response": {"output_modalities": ["audio"]}})
            done = (await c.until("response.done"))["response"]
            assert done["output"][0]["content"] == [{"type": "output_text", "text": REPLY}]
        assert not c.of_type("response.output_audio.delta")
        assert "".join(e["delta"] for e in c.of_type("response.output_text.delta")) == REPLY * 2
        assert {e["part"]["type"] for e in c.of_type("response.content_part.added")} == {"text"}
        assert (await sim.wait_for_session(0)).state.audio_produced is False


async def test_output_modalities_text_on_response_overrides_session() -> None:
    async with asyncio.timeout(10), RealtimeSimulator() as sim, client(sim) as c:
        await c.send({"type": "response.create", "response": {"output_modalities": ["text"]}})
        done = (await c.until("response.done"))["response"]
        assert done["output_modalities"] == ["text"]
        assert done["output"][0]["content"][0]["type"] == "output_text"
        await c.send({"type": "response.create"})
        done = (await c.until("response.done"))["response"]
        assert done["output"][0]["content"][0]["type"] == "output_audio"
        assert len(sim.sessions) == 1


async def test_sticky_text_until_text_items_are_deleted() -> None:
    config = SimConfig(mode=Mode.STICKY_TEXT, speedup=50.0)
    async with asyncio.timeout(20), RealtimeSimulator(config) as sim, client(sim) as c:

        async def respond() -> dict[str, Any]:
            await c.send({"type": "response.create", "response": {"output_modalities": ["audio"]}})
            response: dict[str, Any] = (await c.until("response.done"))["response"]
            return response

        first = await respond()
        assert first["output"][0]["content"][0]["type"] == "output_text"
        second = await respond()
        assert second["output"][0]["content"][0]["type"] == "output_text"
        for response in (first, second):
            await c.send(
                {"type": "conversation.item.delete", "item_id": response["output"][0]["id"]}
            )
            await c.until("conversation.item.deleted")
        third = await respond()
        assert third["output"][0]["content"][0]["type"] == "output_audio"
        assert c.of_type("response.output_audio.delta")
        # A text assistant item injected by the client makes it sticky again.
        await c.send(
            {
                "type": "conversation.item.create",
                "item": {
                    "type": "message",
                    "role": "assistant",
                    "content": [{"type": "output_text", "text": "Earlier answer."}],
                },
            }
        )
        await c.until("conversation.item.done")
        fourth = await respond()
        assert fourth["output"][0]["content"][0]["type"] == "output_text"
        await c.send({"type": "conversation.item.delete", "item_id": "item_missing"})
        assert (await c.until("error"))["error"]["param"] == "item_id"
        assert len(sim.sessions) == 1


async def test_drop_mid_response_aborts_the_connection() -> None:
    config = SimConfig(mode=Mode.DROP_MID_RESPONSE, speedup=20.0)
    async with asyncio.timeout(10), RealtimeSimulator(config) as sim, client(sim) as c:
        await c.send({"type": "response.create"})

        async def read_until_closed() -> None:
            while True:
                await c.recv()

        with pytest.raises(ConnectionClosed) as closed:
            await read_until_closed()
        assert closed.value.rcvd is None  # no close frame: the TCP connection was dropped
        assert len(c.of_type("response.output_audio.delta")) == config.drop_after_deltas
        assert not c.of_type("response.done")
        session = await sim.wait_for_session(0)
        await asyncio.wait_for(session.closed.wait(), 5)
        assert session.close_code == 1006


async def test_client_close_mid_response_ends_the_session_cleanly() -> None:
    config = SimConfig(speedup=1.0)
    async with asyncio.timeout(10):
        async with RealtimeSimulator(config) as sim:
            async with client(sim) as c:
                await c.send({"type": "response.create"})
                await c.until("response.output_audio.delta")
            session = await sim.wait_for_session(0)
            await asyncio.wait_for(session.closed.wait(), 5)
            assert session.close_code == 1000
            assert session.state.response is not None  # the pacer stopped with it
        leftover = asyncio.all_tasks() - {asyncio.current_task()}
        assert not leftover


async def test_conversation_item_create_retrieve_and_function_output() -> None:
    async with asyncio.timeout(10), RealtimeSimulator() as sim, client(sim) as c:
        await c.send(
            {
                "type": "conversation.item.create",
                "item": {
                    "id": "item_user_1",
                    "type": "message",
                    "role": "user",
                    "content": [{"type": "input_text", "text": "What time is it?"}],
                },
            }
        )
        added = await c.until("conversation.item.added")
        assert added["item"]["id"] == "item_user_1"
        assert (await c.until("conversation.item.done"))["previous_item_id"] is None
        await c.send(
            {
                "type": "conversation.item.create",
                "item": {"type": "function_call_output", "call_id": "call_1", "output": "{}"},
            }
        )
        done = await c.until("conversation.item.done")
        assert done["previous_item_id"] == "item_user_1"
        await c.send({"type": "conversation.item.retrieve", "item_id": "item_user_1"})
        retrieved = await c.until("conversation.item.retrieved")
        assert retrieved["item"]["content"] == [{"type": "input_text", "text": "What time is it?"}]
        await c.send(
            {
                "type": "conversation.item.create",
                "item": {
                    "type": "message",
                    "role": "assistant",
                    "content": [{"type": "text", "text": "beta shape"}],
                },
            }
        )
        assert (await c.until("error"))["error"]["param"] == "item.content[0].type"
        assert list((await sim.wait_for_session(0)).items) == ["item_user_1", done["item"]["id"]]


async def test_speech_endpoint_returns_pcm() -> None:
    text = "Thanks for calling, goodbye."
    async with (
        asyncio.timeout(30),
        RealtimeSimulator() as sim,
        httpx.AsyncClient(base_url=sim.http_base, timeout=20) as http,
    ):
        body = {
            "model": "gpt-4o-mini-tts",
            "input": text,
            "voice": "marin",
            "response_format": "pcm",
        }
        reply = await http.post("/v1/audio/speech", json=body, headers=AUTH)
        assert reply.status_code == 200
        assert reply.content == signals.to_pcm16(signals.speech(text, RATE))
        seconds = len(reply.content) / 2 / RATE
        assert 0.5 < seconds < 10.0
        assert sim.speech_requests == [body]
        assert (await http.post("/v1/audio/speech", json=body)).status_code == 401
        bad = await http.post(
            "/v1/audio/speech",
            content=b"{oops",
            headers={**AUTH, "Content-Type": "application/json"},
        )
        assert bad.status_code == 400
        missing = await http.post("/v1/audio/speech", json={"model": "m"}, headers=AUTH)
        assert missing.status_code == 400


async def test_hundred_concurrent_sessions() -> None:
    config = SimConfig(reply_audio=lambda turn: signals.tone(500.0, 0.5, RATE), speedup=10.0)

    async def one(sim: RealtimeSimulator) -> int:
        async with client(sim) as c:
            await c.send({"type": "response.create"})
            await c.until("response.done")
            return len(audio_of(c.of_type("response.output_audio.delta")))

    async with asyncio.timeout(60), RealtimeSimulator(config) as sim:
        async with asyncio.TaskGroup() as tg:
            tasks = [tg.create_task(one(sim)) for _ in range(100)]
        assert [t.result() for t in tasks] == [RATE] * 100  # 0.5 s of PCM16
        assert len(sim.sessions) == 100


async def test_without_input_recording_and_with_first_delta_latency() -> None:
    config = SimConfig(record_input=False, first_response_latency_ms=300, speedup=50.0)
    async with asyncio.timeout(20), RealtimeSimulator(config) as sim, client(sim) as c:
        await c.send(
            {
                "type": "session.update",
                "session": {"type": "realtime", "audio": {"input": {"format": PCMU}}},
            }
        )
        await c.append(
            signals.to_ulaw(turn_audio(signals.tone(440.0, 0.5, 8000), 8000)), ULAW_FRAME
        )
        await c.until("response.created")
        created_at = c.events[-1][0]
        await c.until("response.output_audio.delta")
        assert c.events[-1][0] - created_at >= 0.25
        await c.until("response.done")
        session = await sim.wait_for_session(0)
        assert not session.input_audio
        assert not session.input_ulaw
        append = session.events_received("input_audio_buffer.append")[0]
        assert (append["audio"], append["audio_bytes"]) == ("", ULAW_FRAME)


async def test_wait_for_sent_raises_when_the_session_is_gone() -> None:
    async with asyncio.timeout(10), RealtimeSimulator() as sim:
        async with client(sim):
            session: SimSession = await sim.wait_for_session(0)
        await asyncio.wait_for(session.closed.wait(), 5)
        with pytest.raises(Exception, match="session closed"):
            await session.wait_for_sent("response.done")
        with pytest.raises(TimeoutError):
            await sim.wait_for_session(1, timeout=0.05)


def ga_event_types() -> set[str]:
    """Every `type` literal in the SDK's GA server event union."""
    union = typing.get_args(discriminated(RealtimeServerEvent))[0]
    types: set[str] = set()
    for model in typing.get_args(union):
        types.update(typing.get_args(model.model_fields["type"].annotation))
    return types


async def test_every_event_sent_validates_against_the_ga_types() -> None:
    config = SimConfig(reply_audio=lambda turn: signals.tone(700.0, 0.6, RATE), speedup=20.0)
    async with asyncio.timeout(30), RealtimeSimulator(config) as sim, client(sim) as c:
        await c.send(
            {
                "type": "session.update",
                "session": {
                    "type": "realtime",
                    "audio": {"input": {"transcription": {"model": "whisper-1"}}},
                },
            }
        )
        await c.append(signals.to_pcm16(turn_audio(signals.tone(440.0, 0.5, RATE), RATE)), 4800)
        item_id = (await c.until("response.done"))["response"]["output"][0]["id"]
        await c.send({"type": "response.create", "response": {"output_modalities": ["text"]}})
        await c.until("response.done")
        await c.send({"type": "response.create"})
        await c.until("response.output_audio.delta")
        await c.send({"type": "response.cancel"})
        await c.until("response.done")
        await c.send(
            {
                "type": "conversation.item.truncate",
                "item_id": item_id,
                "content_index": 0,
                "audio_end_ms": 300,
            }
        )
        await c.until("conversation.item.truncated")
        await c.send({"type": "conversation.item.retrieve", "item_id": item_id})
        await c.until("conversation.item.retrieved")
        await c.send({"type": "conversation.item.delete", "item_id": item_id})
        await c.until("conversation.item.deleted")
        await c.send({"type": "input_audio_buffer.clear"})
        await c.until("input_audio_buffer.cleared")
        await c.send({"type": "nonsense"})
        await c.until("error")
        session = await sim.wait_for_session(0)
    sent_types = set()
    for _, event in session.sent:
        GA_SERVER.validate_python(event)
        sent_types.add(event["type"])
    assert sent_types <= ga_event_types()
    assert sent_types >= {
        "session.created",
        "session.updated",
        "input_audio_buffer.speech_started",
        "input_audio_buffer.speech_stopped",
        "input_audio_buffer.committed",
        "input_audio_buffer.cleared",
        "conversation.item.added",
        "conversation.item.done",
        "conversation.item.input_audio_transcription.delta",
        "conversation.item.input_audio_transcription.completed",
        "conversation.item.truncated",
        "conversation.item.retrieved",
        "conversation.item.deleted",
        "response.created",
        "rate_limits.updated",
        "response.output_item.added",
        "response.content_part.added",
        "response.output_audio.delta",
        "response.output_audio_transcript.delta",
        "response.output_audio.done",
        "response.output_audio_transcript.done",
        "response.output_text.delta",
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.done",
        "error",
    }


# ---- Sans-I/O pieces, no sockets -------------------------------------------------------------


def test_energy_vad_timeline() -> None:
    vad = EnergyVad(-40.0)
    audio = signals.to_pcm16(turn_audio(signals.tone(440.0, 0.5, RATE), RATE))
    # Odd chunk sizes: windows straddle appends.
    transitions = []
    for i in range(0, len(audio), 1234):
        transitions += vad.feed(audio[i : i + 1234], RATE, 500)
    assert [(t.started, t.ms) for t in transitions] == [(True, 1000), (False, 1500)]
    assert vad.timeline_ms == 2500


def test_session_update_merge_is_atomic() -> None:
    session = default_session("gpt-realtime")
    with pytest.raises(ClientError, match="Cannot update"):
        apply_session_update(
            session,
            {"type": "realtime", "instructions": "x", "audio": {"output": {"voice": "ash"}}},
            audio_produced=True,
        )
    assert session["instructions"] == ""
    new = apply_session_update(
        session,
        {"type": "realtime", "audio": {"input": {"turn_detection": None}}},
        audio_produced=False,
    )
    assert new["audio"]["input"]["turn_detection"] is None
    assert session["audio"]["input"]["turn_detection"] is not None


def test_state_machine_manual_commit_without_vad() -> None:
    state = RealtimeSessionState(SimConfig())
    state.handle(
        {
            "type": "session.update",
            "session": {"type": "realtime", "audio": {"input": {"turn_detection": None}}},
        }
    )
    pcm = signals.to_pcm16(signals.tone(440.0, 0.5, RATE))
    events = state.handle(
        {"type": "input_audio_buffer.append", "audio": base64.b64encode(pcm).decode()}
    )
    assert events == []  # no VAD: nothing happens on its own
    events = state.handle({"type": "input_audio_buffer.commit"})
    assert [e["type"] for e in events] == [
        "input_audio_buffer.committed",
        "conversation.item.added",
        "conversation.item.done",
    ]
    for event in events:
        GA_SERVER.validate_python(event)


def _conversation(state: RealtimeSessionState, *, serialised: bool) -> list[dict[str, Any]]:
    """A spoken turn through `handle` (or the lean `append_audio`), then the whole reply paced
    by `advance` (or `advance_serialised`), as the events a client would parse."""
    out = list(state.handle({"type": "session.update", "session": {"type": "realtime"}}))
    speech = signals.to_pcm16(signals.tone(440.0, 0.4, RATE))
    silence = bytes(RATE // 50 * 2)
    frames = [speech[i : i + len(silence)] for i in range(0, len(speech), len(silence))]
    for pcm in frames + [silence] * 40:
        if serialised:
            out += state.append_audio(pcm)
        else:
            audio = base64.b64encode(pcm).decode()
            out += state.handle({"type": "input_audio_buffer.append", "audio": audio})
    while state.response is not None:
        if serialised:
            out += [json.loads(text) for text in state.advance_serialised()]
        else:
            out += state.advance()
    return out


def test_lean_append_and_serialised_deltas_are_the_same_protocol() -> None:
    config = SimConfig(reply_audio=lambda turn: signals.tone(1000.0, 0.5, RATE), reply_turns=1)
    full = _conversation(RealtimeSessionState(config), serialised=False)
    lean = _conversation(RealtimeSessionState(config), serialised=True)
    assert "response.output_audio.delta" in {e["type"] for e in full}
    assert [e["type"] for e in lean] == [e["type"] for e in full]
    ids = re.compile(r'"(sess|item|resp|event)_[0-9a-f]+"')  # random per session
    for a, b in zip(full, lean, strict=True):
        assert json.loads(ids.sub(r'"\1"', json.dumps(a))) == json.loads(
            ids.sub(r'"\1"', json.dumps(b))
        )
        GA_SERVER.validate_python(b)
