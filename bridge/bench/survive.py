"""`bridge bench survive`: how long a call is without a model session when one is lost, and
when the bridge moves it to the next session before the session cap. Real sockets on loopback
(the Realtime simulator, the bridge, Twilio callers), several calls at once:

- reconnect gap: the simulator drops each session (no close frame) every `--drop-every`
  seconds; from the loss to the new session taking the call, as each call's record notes it
  (`reconnected.waited_ms`);
- rollover gap: with a short `session_max_seconds`, from the old session closing to the new one
  receiving its `session.update` (the caller's audio meanwhile waits in the bridge).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import itertools
import json
import os
import statistics
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from bridge import logs
from bridge.app import create_app
from bridge.profiles import Profile
from bridge.record import MemoryRecorder
from bridge.server import serving
from bridge.settings import Settings
from bridge.sim.realtime_config import SimConfig
from bridge.sim.realtime_server import RealtimeSimulator
from bridge.sim.signals import silence, tone
from bridge.sim.twilio_caller import TwilioCaller, fetch_twiml, loopback_url, parse_stream

RATE_IN, RATE_MODEL = 8000, 24000


async def _call(base: str, seconds: float) -> str:
    call_sid = "CA" + os.urandom(16).hex()
    status, twiml = await fetch_twiml(
        base, from_="+15550100001", to="+15550100000", call_sid=call_sid
    )
    if status != 200:
        raise RuntimeError(f"voice webhook answered HTTP {status}")
    url, parameters = parse_stream(twiml)
    speech = np.concatenate([tone(300, 0.6, RATE_IN, 0.4), silence(2.4, RATE_IN)])
    loop = asyncio.get_running_loop()
    async with TwilioCaller(
        loopback_url(url, base), custom_parameters=parameters, call_sid=call_sid
    ) as caller:
        until = loop.time() + seconds
        while loop.time() < until:  # a turn every 3 s, so sessions drop mid-reply and idle
            caller.say(speech)
            await asyncio.sleep(3.0)
        await caller.hangup()
    return call_sid


async def _serve(
    config: SimConfig, session_max: float | None
) -> tuple[RealtimeSimulator, MemoryRecorder, contextlib.AsyncExitStack, str]:
    stack = contextlib.AsyncExitStack()
    sim = await stack.enter_async_context(RealtimeSimulator(config))
    settings = Settings(
        openai_api_key="sim-key", realtime_url=sim.url, tts_url=f"{sim.http_base}/v1/audio/speech"
    )
    profile = Profile.from_settings(settings)
    if session_max is not None:
        profile = dataclasses.replace(profile, session_max_seconds=session_max)
    recorder = MemoryRecorder()
    app = create_app(settings, recorder=recorder, profile_for=lambda start: profile)
    base = await stack.enter_async_context(serving(app))
    return sim, recorder, stack, base


async def reconnect_gaps(calls: int, seconds: float, drop_every: float) -> list[float]:
    """Calls at once, their sessions dropped every `drop_every` s: each reconnect's wait."""
    config = SimConfig(drop_every_seconds=drop_every, seed=1)
    _, recorder, stack, base = await _serve(config, None)
    async with stack:
        await asyncio.gather(*(_call(base, seconds) for _ in range(calls)))
        await asyncio.sleep(0.5)
    return [
        float(event.detail["waited_ms"])
        for record in recorder.finished
        for event in record.events
        if event.kind == "reconnected"
    ]


async def rollover_gaps(calls: int, seconds: float, session_max: float) -> list[float]:
    """Calls one after another with a short session cap: from each old session closing to its
    successor receiving `session.update` (the call's time without a model session)."""
    sim, _, stack, base = await _serve(SimConfig(), session_max)
    gaps: list[float] = []
    async with stack:
        for _ in range(calls):
            first = len(sim.sessions)
            await _call(base, seconds)
            await asyncio.sleep(0.3)
            sessions = sim.sessions[first:]
            for old, new in itertools.pairwise(sessions):
                updated = [at for at, e in new.received if e.get("type") == "session.update"]
                if old.closed_at is not None and updated:
                    gaps.append((updated[0] - old.closed_at) * 1000)
    return gaps


def _summary(name: str, values: list[float]) -> str:
    if not values:
        return f"{name:<44} no samples"
    ordered = sorted(values)
    p99 = ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))]
    return (
        f"{name:<44} n={len(ordered):<4} p50 {statistics.median(ordered):7.1f} ms  "
        f"p99 {p99:7.1f} ms  max {ordered[-1]:7.1f} ms"
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bridge bench survive", description=__doc__)
    parser.add_argument("--calls", type=int, default=13, help="calls at once (13)")
    parser.add_argument("--seconds", type=float, default=62.0, help="each call's length (62)")
    parser.add_argument(
        "--drop-every", type=float, default=15.0, help="a session is dropped after this (15)"
    )
    parser.add_argument(
        "--rollover-calls", type=int, default=3, help="25 s calls with a 10 s session cap (3)"
    )
    parser.add_argument("--rollover-seconds", type=float, default=25.0, help="their length (25)")
    parser.add_argument("--json", help="also write the raw figures to this file")
    args = parser.parse_args(argv)
    logs.configure("ERROR")
    gaps = asyncio.run(reconnect_gaps(args.calls, args.seconds, args.drop_every))
    rollovers = asyncio.run(rollover_gaps(args.rollover_calls, args.rollover_seconds, 10.0))
    print(_summary("reconnect gap (session lost -> new one)", gaps))
    print(_summary("rollover gap (old closed -> new updated)", rollovers))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({"reconnect_ms": gaps, "rollover_ms": rollovers}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
