"""Graceful drain, for real: `bridge serve` in its own process, SIGTERM, live simulated calls."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import websockets
from websockets.exceptions import InvalidStatus

from bridge.sim.analysis import active_segments, dominant_frequency
from bridge.sim.realtime_server import RealtimeSimulator
from bridge.sim.signals import silence, tone
from bridge.sim.twilio_caller import TwilioCaller, fetch_twiml, loopback_url, parse_stream


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@contextlib.asynccontextmanager
async def bridge_process(
    simulator: RealtimeSimulator, tmp_path: Path, **env_extra: str
) -> AsyncIterator[tuple[asyncio.subprocess.Process, str]]:
    port = _free_port()
    env = {
        k: v for k, v in os.environ.items() if not k.startswith(("BRIDGE_", "OPENAI_", "TWILIO_"))
    }
    env |= {
        "OPENAI_API_KEY": "sim-key",
        "BRIDGE_REALTIME_URL": simulator.url,
        "BRIDGE_TTS_URL": f"{simulator.http_base}/v1/audio/speech",
        "BRIDGE_DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path / 'calls.db'}",
        "BRIDGE_NUMBERS": str(tmp_path / "no-numbers.toml"),
        "BRIDGE_LOG_LEVEL": "INFO",
        **env_extra,
    }
    log = (tmp_path / "bridge.log").open("wb")  # kept for post-mortems of a failed run
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bridge.cli",
        "serve",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        env=env,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=log,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        async with httpx.AsyncClient() as client, asyncio.timeout(30):
            while True:
                with contextlib.suppress(httpx.TransportError):
                    if (await client.get(f"{base}/healthz")).status_code == 200:
                        break
                await asyncio.sleep(0.1)
        yield process, base
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
        log.close()


async def dial(base: str, n: int) -> TwilioCaller:
    call_sid = f"CA{n:032d}"
    status, twiml = await fetch_twiml(
        base, from_="+15550100001", to="+15550100000", call_sid=call_sid
    )
    assert status == 200
    url, parameters = parse_stream(twiml)
    return TwilioCaller(loopback_url(url, base), custom_parameters=parameters, call_sid=call_sid)


def utterance() -> np.ndarray:
    return np.concatenate([tone(440, 0.6, 8000, 0.4), silence(0.8, 8000)])


async def test_sigterm_drains_live_calls_and_refuses_new_ones(
    simulator: RealtimeSimulator, tmp_path: Path
) -> None:
    simulator.config.reply_audio = lambda turn: tone(700, 0.8, 24000, 0.4)
    async with bridge_process(simulator, tmp_path, BRIDGE_DRAIN_SECONDS="60") as (process, base):
        callers = [await dial(base, n) for n in range(3)]
        async with contextlib.AsyncExitStack() as stack:
            for caller in callers:
                await stack.enter_async_context(caller)
            await asyncio.sleep(0.3)
            process.send_signal(signal.SIGTERM)
            async with httpx.AsyncClient() as client:
                for _ in range(100):  # readiness flips at once; allow 5 s on a loaded machine
                    if (await client.get(f"{base}/readyz")).status_code == 503:
                        break
                    await asyncio.sleep(0.05)
                else:
                    pytest.fail("/readyz never reported draining")
                refused = await client.post(f"{base}/twilio/voice", data={"CallSid": "CAnew"})
                assert refused.status_code == 503
            with pytest.raises(InvalidStatus):
                async with websockets.connect(base.replace("http", "ws") + "/twilio/media"):
                    pass
            # The calls that were up go on as if nothing happened.
            async with asyncio.TaskGroup() as tg:
                for caller in callers:
                    tg.create_task(caller.wait_for_playback(0.7, timeout=15))
                    caller.say(utterance())
            assert process.returncode is None
            for caller in callers:
                await caller.hangup()
        async with asyncio.timeout(15):
            assert await process.wait() == 0
    assert all(caller.close_code in (1000, None) for caller in callers)


async def test_drain_deadline_ends_remaining_calls_with_server_shutdown(
    simulator: RealtimeSimulator, tmp_path: Path
) -> None:
    async with bridge_process(
        simulator,
        tmp_path,
        BRIDGE_DRAIN_SECONDS="1",
        BRIDGE_GOODBYE="We are restarting, please call back. Goodbye!",
    ) as (process, base):
        callers = [await dial(base, n) for n in range(2)]
        async with contextlib.AsyncExitStack() as stack:
            for caller in callers:
                await stack.enter_async_context(caller)
            await asyncio.sleep(0.3)
            process.send_signal(signal.SIGTERM)
            for caller in callers:
                await caller.wait_closed(timeout=30)
        async with asyncio.timeout(15):
            assert await process.wait() == 0
    for caller in callers:
        assert caller.close_code == 1001
        assert caller.close_reason == "server_shutdown"
        heard = sum(end - start for start, end in active_segments(caller.heard(), 8000))
        assert heard >= 1.0, "the goodbye was not heard"
    # The goodbye was spoken before the stream closed.
    goodbyes = [
        s.events_received("response.create")
        for s in simulator.sessions
        if any(
            "Goodbye" in e["response"].get("instructions", "")
            for e in s.events_received("response.create")
        )
    ]
    assert len(goodbyes) == 2


async def test_goodbye_is_heard_when_the_deadline_hits_mid_reply(
    simulator: RealtimeSimulator, tmp_path: Path
) -> None:
    """The assistant is in the middle of a long reply when the drain deadline comes: the reply is
    cut (clear, truncate, cancel), and the goodbye that follows is heard whole before the close:
    the cancelled reply's `response.done` must not end the call before the goodbye exists."""
    reply_hz, goodbye_hz = 440.0, 1000.0
    simulator.config.speedup = 1.0  # the reply streams in real time: it is still running
    simulator.config.reply_audio = lambda turn: (
        tone(reply_hz, 8.0, 24000, 0.4) if turn == 0 else tone(goodbye_hz, 1.5, 24000, 0.4)
    )
    async with bridge_process(
        simulator, tmp_path, BRIDGE_DRAIN_SECONDS="1", BRIDGE_GOODBYE="Goodbye!"
    ) as (process, base):
        caller = await dial(base, 7)
        async with caller:
            caller.say(utterance())
            await caller.wait_for_playback(0.5, timeout=10)  # the reply is playing
            process.send_signal(signal.SIGTERM)
            await caller.wait_closed(timeout=30)
        async with asyncio.timeout(15):
            assert await process.wait() == 0
    assert caller.close_reason == "server_shutdown"
    heard = caller.heard()
    (start, end), *_ = active_segments(heard, 8000)  # the goodbye follows the cut at once
    windows = [
        dominant_frequency(heard[i : i + 800], 8000)
        for i in range(int(start * 8000), int(end * 8000) - 799, 800)
    ]  # 100 ms each
    names = {reply_hz: "reply", goodbye_hz: "goodbye"}
    pitches = [next((n for hz, n in names.items() if abs(f - hz) < 20), "other") for f in windows]
    switch = pitches.index("goodbye")
    assert set(pitches[:switch]) == {"reply"}
    assert set(pitches[switch + 1 :]) == {"goodbye"}, "the reply went on after the goodbye began"
    assert switch / 10 < 6.0, "the reply was not cut"
    assert (len(pitches) - switch) / 10 == pytest.approx(1.5, abs=0.2), "goodbye not heard whole"
    (session,) = simulator.sessions
    assert session.events_received("response.cancel")
    assert session.events_received("conversation.item.truncate")


async def test_second_signal_stops_at_once(simulator: RealtimeSimulator, tmp_path: Path) -> None:
    async with bridge_process(simulator, tmp_path, BRIDGE_DRAIN_SECONDS="300") as (process, base):
        async with httpx.AsyncClient() as client:
            ready = await client.get(f"{base}/readyz")
        assert ready.status_code == 200
        async with await dial(base, 7) as caller:
            await simulator.wait_for_session()
            process.send_signal(signal.SIGTERM)
            await asyncio.sleep(0.5)
            assert process.returncode is None  # draining: the call holds the process up
            process.send_signal(signal.SIGINT)
            async with asyncio.timeout(10):
                await process.wait()
            await caller.wait_closed(timeout=10)
