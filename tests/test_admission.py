"""Admission control: BRIDGE_MAX_CALLS at the voice webhook and /readyz over real sockets, the
reservations that count a call before its stream, and the event-loop lag monitor."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import time
from pathlib import Path
from typing import cast

import httpx
import numpy as np
import pytest

from bridge import metrics
from bridge.admission import Admission, LoopLag
from bridge.call.shell import Call
from bridge.sim.analysis import active_segments, dominant_frequency
from bridge.sim.realtime_server import RealtimeSimulator
from bridge.sim.signals import silence, tone
from bridge.sim.twilio_caller import fetch_twiml, parse_stream
from tests.conftest import RunningBridge, running_bridge

RATE_IN = 8000
RATE_MODEL = 24000
BUSY_FILE = """
[profiles.default]
[profiles.default.busy]
say = "All our lines are busy."
"""


def new_sid() -> str:
    return "CA" + os.urandom(16).hex()


def refused() -> float:
    value = metrics.REGISTRY.get_sample_value("bridge_calls_refused_total", {"reason": "busy"})
    assert value is not None
    return value


async def readyz(bridge: RunningBridge) -> httpx.Response:
    async with httpx.AsyncClient(base_url=bridge.base, timeout=10) as client:
        return await client.get("/readyz")


async def until_ready(bridge: RunningBridge, timeout: float = 10.0) -> None:
    for _ in range(int(timeout / 0.05)):
        if (await readyz(bridge)).status_code == 200:
            return
        await asyncio.sleep(0.05)
    pytest.fail(f"/readyz still not 200 after {timeout} s")


@dataclasses.dataclass(eq=False)
class FakeRecord:
    call_sid: str


@dataclasses.dataclass(eq=False)
class FakeCall:
    """Enough of a live call for the registry: its record's CallSid."""

    record: FakeRecord


def fake_call(call_sid: str) -> Call:
    return cast(Call, FakeCall(FakeRecord(call_sid)))


# ---- reservations, without sockets ---------------------------------------------------------


def test_no_limit_admits_everything_and_reserves_nothing() -> None:
    admission = Admission(None)
    assert all(admission.admit(new_sid()) for _ in range(1000))
    assert admission.occupied() == 0
    assert not admission.full()


def test_a_call_counts_from_its_webhook_to_its_end() -> None:
    now = [0.0]
    admission = Admission(2, clock=lambda: now[0])
    assert admission.admit("CA1")
    assert admission.admit("CA2")
    assert admission.full()
    assert not admission.admit("CA3")
    assert admission.admit("CA2")  # Twilio retrying a webhook it already got an answer to
    # CA1's stream is accepted, then starts: it counts once, as a live call.
    one = fake_call("")
    admission.add(one)
    assert admission.occupied() == 3  # between accept and `start`: erring full
    one.record.call_sid = "CA1"
    assert admission.occupied() == 2
    # CA1 ends: its place is free at once.
    admission.discard(one)
    assert admission.occupied() == 1
    assert admission.admit("CA3")
    # A call that ends before anything looked (a stream refused at once) frees its place too.
    three = fake_call("CA3")
    admission.add(three)
    admission.discard(three)
    assert admission.occupied() == 1


def test_a_reservation_no_stream_claims_lapses() -> None:
    now = [100.0]
    admission = Admission(1, hold_seconds=15, clock=lambda: now[0])
    assert admission.admit("CA1")
    now[0] += 14.9
    assert not admission.admit("CA2")
    now[0] += 0.2
    assert not admission.full()
    assert admission.admit("CA2")


async def test_the_readiness_check_names_the_occupancy() -> None:
    admission = Admission(2)
    assert await admission.check() is None
    admission.admit("CA1")
    admission.add(fake_call("CA2"))
    assert await admission.check() == "full: 2/2 calls"


# ---- the event-loop lag monitor --------------------------------------------------------------


async def test_lag_keeps_the_worst_of_its_window_and_checks_the_limit() -> None:
    lag = LoopLag(20.0, window=5.0)
    assert lag.recent() == 0.0
    assert await lag.check() is None
    lag.observe(0.030, now=10.0)
    lag.observe(0.001, now=12.0)
    assert lag.recent() == pytest.approx(0.030)
    assert await lag.check() == "event loop lag 30 ms over 20 ms"
    lag.observe(0.002, now=15.5)  # 10.0 has left the window
    assert lag.recent() == pytest.approx(0.002)
    assert await lag.check() is None
    assert await LoopLag(None).check() is None  # no limit: exported only


async def test_the_monitor_sees_a_blocked_loop() -> None:
    (family,) = metrics.EVENT_LOOP_LAG.collect()
    before = {s.name: s.value for s in family.samples}["bridge_event_loop_lag_seconds_count"]
    lag = LoopLag(50.0, interval=0.01, window=10.0)
    async with asyncio.TaskGroup() as tg:
        task = tg.create_task(lag.run())
        await asyncio.sleep(0.05)
        assert lag.recent() < 0.2  # an idle loop: generous, the machine is shared
        time.sleep(0.15)  # what a loop holding too many calls does to every timer  # noqa: ASYNC251
        await asyncio.sleep(0.05)
        task.cancel()
    assert lag.recent() >= 0.1
    problem = await lag.check()
    assert problem is not None
    assert problem.startswith("event loop lag ")
    (family,) = metrics.EVENT_LOOP_LAG.collect()
    after = {s.name: s.value for s in family.samples}["bridge_event_loop_lag_seconds_count"]
    assert after >= before + 3


async def test_readyz_fails_while_the_loop_lags(simulator: RealtimeSimulator) -> None:
    async with running_bridge(simulator, event_loop_lag_limit_ms=50) as bridge:
        bridge.state.loop_lag.window = 0.5
        assert (await readyz(bridge)).status_code == 200
        await asyncio.sleep(0.3)  # the monitor's first measurements
        time.sleep(0.3)  # noqa: ASYNC251 (blocking the loop on purpose)
        await asyncio.sleep(0.3)  # the monitor wakes and records it
        response = await readyz(bridge)
        assert response.status_code == 503
        assert "event loop lag" in response.text
        await until_ready(bridge)


# ---- end to end --------------------------------------------------------------------------------


async def test_at_the_limit_webhooks_get_busy_and_the_live_call_is_untouched(
    tmp_path: Path, simulator: RealtimeSimulator
) -> None:
    numbers_file = tmp_path / "numbers.toml"
    numbers_file.write_text(BUSY_FILE, encoding="utf-8")
    simulator.config.reply_audio = lambda turn: tone(1000, 1.0, RATE_MODEL, 0.5)
    async with running_bridge(simulator, max_calls=1, numbers_file=str(numbers_file)) as bridge:
        assert (await readyz(bridge)).status_code == 200
        refusals = refused()
        async with bridge.call() as caller:
            session = await simulator.wait_for_session()
            caller.say(np.concatenate([tone(440, 0.6, RATE_IN, 0.4), silence(0.8, RATE_IN)]))
            # While the first call talks both ways, a second caller is turned away.
            busy_sid = new_sid()
            status, twiml = await fetch_twiml(
                bridge.base, from_="+15550100009", to="+15550100000", call_sid=busy_sid
            )
            assert status == 200
            assert "<Say>All our lines are busy.</Say><Hangup />" in twiml
            assert "<Connect" not in twiml
            assert "<Stream" not in twiml
            assert refused() == refusals + 1
            statuses = [s for s in bridge.recorder.statuses if s[0] == busy_sid]
            ((_, state, params),) = statuses
            assert (state, params["Reason"], params["Profile"]) == ("rejected", "busy", "default")
            response = await readyz(bridge)
            assert response.status_code == 503
            assert "full: 1/1 calls" in response.text
            # The live call hears its whole reply.
            await caller.wait_for_playback(0.9, timeout=10)
            await caller.wait_until_quiet(0.3, timeout=10)
            await caller.hangup()
        heard = caller.heard()
        (segment,) = active_segments(heard, RATE_IN, threshold_db=-30)
        start, end = segment
        assert abs((end - start) - 1.0) <= 0.05
        assert (
            abs(
                dominant_frequency(heard[int(start * RATE_IN) : int(end * RATE_IN)], RATE_IN) - 1000
            )
            < 3
        )
        assert caller.underruns == 0
        assert len(session.input_audio) > 0  # the caller's words reached the model
        record = await bridge.finished(caller.call_sid)
        assert record.end_reason is not None
        # Once it has ended, the process is ready again and takes the next call.
        await until_ready(bridge, timeout=5)
        async with bridge.call() as second:
            await simulator.wait_for_session(1)
            await second.hangup()
        assert (await bridge.finished(second.call_sid)).end_reason is not None


async def test_a_burst_of_webhooks_cannot_overshoot(simulator: RealtimeSimulator) -> None:
    async with running_bridge(simulator, max_calls=3) as bridge:
        answers = await asyncio.gather(
            *(
                fetch_twiml(bridge.base, from_="+15550100009", to="+15550100000", call_sid=sid)
                for sid in [new_sid() for _ in range(10)]
            )
        )
        assert all(status == 200 for status, _ in answers)
        connected = [twiml for _, twiml in answers if "<Connect" in twiml]
        assert len(connected) == 3
        busy = [twiml for _, twiml in answers if '<Reject reason="busy"' in twiml]
        assert len(busy) == 7


async def test_a_reservation_no_stream_claims_expires(simulator: RealtimeSimulator) -> None:
    async with running_bridge(simulator, max_calls=1) as bridge:
        bridge.state.live_calls.hold_seconds = 0.5
        status, twiml = await fetch_twiml(
            bridge.base, from_="+15550100009", to="+15550100000", call_sid=new_sid()
        )
        assert status == 200
        parse_stream(twiml)  # admitted; Twilio never opens the stream
        assert (await readyz(bridge)).status_code == 503
        _, twiml = await fetch_twiml(
            bridge.base, from_="+15550100009", to="+15550100000", call_sid=new_sid()
        )
        assert '<Reject reason="busy"' in twiml
        await asyncio.sleep(0.6)
        assert (await readyz(bridge)).status_code == 200
        async with bridge.call() as caller:
            await caller.hangup()
