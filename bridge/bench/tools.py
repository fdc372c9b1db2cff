"""`bridge bench tools`: what the bridge adds around the assistant's tools, measured on real
sockets (the Realtime simulator, the bridge, an HTTP tool service and a Twilio caller on
loopback), one call at a time:

- dispatch: the model's `response.function_call_arguments.done` sent -> the tool's request
  arriving at the tool service (parsing, the session's decision, the task, httpx);
- return: the tool's answer sent -> its `function_call_output` arriving at the model;
- holding phrase: a tool that takes 3 s -> the first holding-phrase audio the caller hears
  (the target: within 2 s);
- goodbye: of the 1.5 s the model said before `end_call`, how much the caller heard before the
  line closed (the target: all of it; the resampler's filter tail adds a few ms).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import statistics
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from bridge import logs
from bridge.app import create_app
from bridge.record import MemoryRecorder
from bridge.server import serving
from bridge.settings import Settings
from bridge.sim.analysis import active_segments
from bridge.sim.realtime_config import SimConfig, SimToolCall
from bridge.sim.realtime_server import RealtimeSimulator
from bridge.sim.signals import silence, tone
from bridge.sim.tool_server import ToolService
from bridge.sim.twilio_caller import TwilioCaller, fetch_twiml, loopback_url, parse_stream

RATE_IN, RATE_MODEL = 8000, 24000
SLOW_TOOL_SECONDS = 3.0
GOODBYE_SECONDS = 1.5
NUMBERS = """
[profiles.default]
instructions = "You are the order desk."
greeting = ""

[[profiles.default.tools]]
name = "lookup_order"
description = "Look up an order"
url = "{url}"
parameters = {{ type = "object", properties = {{ order = {{ type = "string" }} }} }}
"""


def _utterance() -> Any:
    return np.concatenate([tone(300, 0.6, RATE_IN, 0.4), silence(0.8, RATE_IN)])


async def _call(base: str) -> TwilioCaller:
    call_sid = "CA" + os.urandom(16).hex()
    status, twiml = await fetch_twiml(
        base, from_="+15550100001", to="+15550100000", call_sid=call_sid
    )
    if status != 200:
        raise RuntimeError(f"voice webhook answered HTTP {status}")
    url, parameters = parse_stream(twiml)
    return TwilioCaller(loopback_url(url, base), custom_parameters=parameters, call_sid=call_sid)


def _sent_at(session: Any, kind: str) -> list[float]:
    return [at for at, event in session.sent if event.get("type") == kind]


def _received_at(session: Any, kind: str) -> list[float]:
    return [at for at, event in session.received if event.get("type") == kind]


async def _fast_tool(base: str, sim: RealtimeSimulator, tools: ToolService) -> tuple[float, float]:
    sim.config.replies = ("Let me look.",)
    sim.config.tool_calls = {0: [SimToolCall("lookup_order", {"order": "A1"})]}
    sim.config.reply_audio = lambda turn: tone(1000, 0.3, RATE_MODEL, 0.5)
    tools.delays.clear()
    count, index = len(tools.requests), len(sim.sessions)
    async with await _call(base) as caller:
        session = await sim.wait_for_session(index)
        await caller.say_and_wait(_utterance())
        await session.wait_for_received("conversation.item.create", timeout=10)
        await caller.hangup()
    (called,) = _sent_at(session, "response.function_call_arguments.done")
    (output,) = _received_at(session, "conversation.item.create")
    arrived = tools.requests[count].at
    answered = tools.answered[count]
    return (arrived - called) * 1000, (output - answered) * 1000


async def _slow_tool(base: str, sim: RealtimeSimulator, tools: ToolService) -> float:
    sim.config.replies = ("",)
    sim.config.tool_calls = {0: [SimToolCall("lookup_order", {"order": "A1"})]}
    sim.config.reply_audio = lambda turn: tone(700, 0.5, RATE_MODEL, 0.5)
    tools.delays["/orders"] = SLOW_TOOL_SECONDS
    count, index = len(tools.requests), len(sim.sessions)
    async with await _call(base) as caller:
        session = await sim.wait_for_session(index)
        await caller.say_and_wait(_utterance())
        await session.wait_for_sent("response.done", count=2, timeout=10)
        await caller.wait_for_playback(0.1, timeout=10)
        await caller.hangup()
    arrived = tools.requests[count].at
    heard = caller.heard()
    (start, _), *_ = active_segments(heard, RATE_IN, threshold_db=-30)
    return caller.started_at + start - arrived


async def _goodbye(base: str, sim: RealtimeSimulator) -> float:
    sim.config.replies = ("Goodbye!",)
    sim.config.tool_calls = {0: [SimToolCall("end_call", {})]}
    sim.config.reply_audio = lambda turn: tone(1000, GOODBYE_SECONDS, RATE_MODEL, 0.5)
    async with await _call(base) as caller:
        await caller.say_and_wait(_utterance())
        await caller.wait_closed(timeout=15)
    segments = active_segments(caller.heard(), RATE_IN, threshold_db=-30)
    return sum(end - start for start, end in segments)


async def run(calls: int) -> dict[str, list[float]]:
    results: dict[str, list[float]] = {"dispatch": [], "return": [], "holding": [], "goodbye": []}
    config = SimConfig(caller_transcripts=("Where is my order?",))
    async with RealtimeSimulator(config) as sim, ToolService() as tools:
        with tempfile.TemporaryDirectory() as folder:
            numbers = Path(folder) / "numbers.toml"
            numbers.write_text(NUMBERS.format(url=tools.url("/orders")), encoding="utf-8")
            settings = Settings(
                openai_api_key="sim-key",
                realtime_url=sim.url,
                tts_url=f"{sim.http_base}/v1/audio/speech",
                numbers_file=str(numbers),
            )
            app = create_app(settings, recorder=MemoryRecorder())
            async with serving(app) as base:
                for _ in range(calls):
                    dispatch, returned = await _fast_tool(base, sim, tools)
                    results["dispatch"].append(dispatch)
                    results["return"].append(returned)
                    results["holding"].append(await _slow_tool(base, sim, tools))
                    results["goodbye"].append(await _goodbye(base, sim))
    return results


def _row(name: str, values: list[float], unit: str, scale: float = 1.0) -> str:
    ordered = sorted(value * scale for value in values)
    p95 = ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]
    return f"{name:<54} {statistics.median(ordered):9.2f} {p95:9.2f} {ordered[-1]:9.2f}  {unit}"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bridge bench tools", description=__doc__)
    parser.add_argument("--calls", type=int, default=10, help="rounds of the four calls (10)")
    parser.add_argument("--json", help="also write the raw figures to this file")
    args = parser.parse_args(argv)
    logs.configure("ERROR")
    results = asyncio.run(run(args.calls))
    print(f"{'measure':<54} {'median':>9} {'p95':>9} {'max':>9}")
    print(_row("tool dispatch: model's call -> request at the tool", results["dispatch"], "ms"))
    print(_row("tool return: answer -> function_call_output at model", results["return"], "ms"))
    print(
        _row(
            f"holding phrase heard after a {SLOW_TOOL_SECONDS:g} s tool starts",
            results["holding"],
            "s",
        )
    )
    print(_row(f"goodbye heard of {GOODBYE_SECONDS:g} s before end_call", results["goodbye"], "s"))
    if args.json:
        with contextlib.suppress(OSError):
            Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(results, indent=1), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
