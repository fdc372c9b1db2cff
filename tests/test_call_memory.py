"""An ended call is freed when it ends, by reference counting alone: nothing of it waits for the
garbage collector (on a busy process a full collection comes minutes apart, and each ended call
would hold its sockets, session and audio state until then). Checked with the collector off,
for the ways a call ends: the caller hangs up, the model connection is lost and replaced first,
the assistant hangs up; and, for a call that ran an HTTP tool, that nothing the call used (the
bridge's objects, the server's WebSocket protocol, the tool's HTTP response) is left in a
reference cycle."""

from __future__ import annotations

import asyncio
import gc
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from bridge.call.session import CallSession
from bridge.call.shell import Call
from bridge.record import EndReason
from bridge.sim.realtime_config import SimToolCall
from bridge.sim.realtime_server import Mode, RealtimeSimulator
from bridge.sim.signals import silence, tone
from bridge.sim.tool_server import ToolService
from tests.conftest import RunningBridge, running_bridge
from tests.test_tools_call import tool_bridge

RATE_IN = 8000


def utterance() -> np.ndarray:
    return np.concatenate([tone(300, 0.6, RATE_IN, 0.4), silence(0.8, RATE_IN)])


def alive(kind: type) -> int:
    return sum(1 for obj in gc.get_objects() if type(obj) is kind)


def of_a_call(obj: object, tool_base: str) -> bool:
    """Whether `obj` is something of a call that must not wait for the collector: the bridge's
    own objects (its simulators aside), the server's protocol, an HTTP tool's response (the
    simulated caller's own requests to the webhook are not the bridge's)."""
    if isinstance(obj, httpx.Response):
        return str(obj.request.url).startswith(tool_base)
    module = type(obj).__module__
    if module.startswith(("bridge.sim", "bridge.bench")):
        return False
    return module.startswith(("bridge.", "uvicorn.protocols."))


def cyclic_garbage(tool_base: str = "http://tools.invalid") -> list[str]:
    """The kinds of a call's objects (see `of_a_call`) that only the collector would free now."""
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        gc.collect()
        kinds = {type(obj) for obj in gc.garbage if of_a_call(obj, tool_base)}
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
    return sorted(f"{kind.__module__}.{kind.__qualname__}" for kind in kinds)


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


async def test_a_call_that_ran_a_tool_leaves_no_cycles(
    simulator: RealtimeSimulator,
    collector_off: None,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    config = simulator.config
    config.replies = ("Let me look that up.",)
    config.tool_calls = {0: [SimToolCall("lookup_order", {"order": "A42"})]}
    config.tool_reply = lambda name, output: "It has shipped."
    async with (
        ToolService() as service,
        tool_bridge(simulator, tmp_path, monkeypatch, service.url("/orders")) as bridge,
    ):
        cyclic_garbage()  # start-up's own cycles, which are not a call's
        for index in range(2):
            async with bridge.call() as caller:
                session = await simulator.wait_for_session(index)
                await caller.say_and_wait(utterance())
                await session.wait_for_sent("response.done", count=2, timeout=10)
                await caller.wait_until_quiet(0.3, timeout=10)
                await caller.hangup()
            record = await bridge.finished(caller.call_sid)
            await asyncio.sleep(0.2)
            assert [tool.outcome for tool in record.tool_calls] == ["ok"]
        assert cyclic_garbage(service.url("/")) == []
        assert alive(Call) == 0
