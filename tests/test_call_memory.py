"""An ended call is freed when it ends, by reference counting alone: nothing of it waits for the
garbage collector (on a busy process a full collection comes minutes apart, and each ended call
would hold its sockets, session and audio state until then). Checked with the collector off,
for the ways a call ends: the caller hangs up, the model connection is lost and replaced first,
the assistant hangs up."""

from __future__ import annotations

import asyncio
import gc
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from bridge.call.session import CallSession
from bridge.call.shell import Call
from bridge.record import EndReason
from bridge.sim.realtime_config import SimToolCall
from bridge.sim.realtime_server import Mode, RealtimeSimulator
from bridge.sim.signals import silence, tone
from tests.conftest import RunningBridge, running_bridge

RATE_IN = 8000


def utterance() -> np.ndarray:
    return np.concatenate([tone(300, 0.6, RATE_IN, 0.4), silence(0.8, RATE_IN)])


def alive(kind: type) -> int:
    return sum(1 for obj in gc.get_objects() if type(obj) is kind)


@pytest.fixture
def collector_off() -> Iterator[None]:
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


async def settled(bridge: RunningBridge, call_sid: str) -> None:
    await bridge.finished(call_sid)
    await asyncio.sleep(0.2)  # the handler returns after the record is final


async def test_a_hung_up_call_is_freed_without_the_collector(
    simulator: RealtimeSimulator, collector_off: None
) -> None:
    simulator.config.replies = ("Okay.",)
    async with running_bridge(simulator) as bridge:
        for _ in range(2):
            async with bridge.call() as caller:
                await caller.say_and_wait(utterance())
                await caller.wait_until_quiet(0.3, timeout=10)
                await caller.hangup()
            await settled(bridge, caller.call_sid)
        assert alive(Call) == 0
        assert alive(CallSession) == 0


async def test_a_call_that_lost_its_model_session_is_freed_without_the_collector(
    simulator: RealtimeSimulator, collector_off: None
) -> None:
    config = simulator.config
    config.session_modes = (Mode.DROP_AFTER, Mode.NORMAL)
    config.drop_after_seconds = 1.0
    config.replies = ("Okay.",)
    async with running_bridge(simulator) as bridge, bridge.call() as caller:
        first = await simulator.wait_for_session(0)
        await first.closed.wait()
        await simulator.wait_for_session(1, timeout=5)
        await caller.say_and_wait(utterance())
        await caller.hangup()
        record = await bridge.finished(caller.call_sid)
        await asyncio.sleep(0.2)
        assert [e.kind for e in record.events].count("reconnected") == 1
        assert alive(Call) == 0
        assert alive(CallSession) == 0


async def test_a_call_the_assistant_ended_is_freed_without_the_collector(
    simulator: RealtimeSimulator, collector_off: None, tmp_path: Path
) -> None:
    simulator.config.replies = ("Goodbye.",)
    simulator.config.tool_calls = {0: [SimToolCall("end_call", {"reason": "done"})]}
    async with running_bridge(simulator) as bridge, bridge.call() as caller:
        await caller.say_and_wait(utterance())
        record = await bridge.finished(caller.call_sid, timeout=10)
        await asyncio.sleep(0.2)
        assert record.end_reason is EndReason.ASSISTANT_HANGUP
        assert alive(Call) == 0
        assert alive(CallSession) == 0
