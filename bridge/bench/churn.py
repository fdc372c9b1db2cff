"""`bridge bench --soak MINUTES`: N calls held for MINUTES, each replaced by a new one when it
ends, the bridge process sampled every 10 s (RSS, open file descriptors, asyncio tasks).

A call that lived through the whole soak would hide whatever a call leaves behind when it ends,
so each call lasts a few minutes (drawn per call) and is then hung up, and a new call takes its
place (the first call in each place lasts what is left of a call met in progress, so calls end
at the steady rate from the start); a call the bridge ends itself is replaced at once. With
`--drop-every`, the model side cuts each connection after about that long: if the bridge
carries the call over to a new session, that session hears no call-id preamble and cannot be
tied to the call, so the call is hung up `AFTER_LOSS_S` later (the bridge's reconnect runs in
between) and replaced.
Added latency each way is summarised per minute from the same probes as the capacity benchmark.
The arithmetic (minutes, fits, verdict) is `soak.py`; the report is shown by `report.py`.
"""

from __future__ import annotations

import array
import asyncio
import collections
import contextlib
import dataclasses
import os
import platform
import random
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx

from bridge.bench import proc
from bridge.bench.caller import Caller, Script, Ticker
from bridge.bench.capacity import Options, default_ramp, started_target
from bridge.bench.load import CONNECT_TIMEOUT, HANGUP_TIMEOUT, Dialer
from bridge.bench.measure import summary
from bridge.bench.model import TOOL_NAME, ModelServer
from bridge.bench.probe import Metrics
from bridge.bench.progress import Progress
from bridge.bench.signature import MAX_CALLS, utterance_frames
from bridge.bench.soak import (
    MinuteLatency,
    Sample,
    first_call_seconds,
    minute_of,
    minute_rows,
    saturated_minutes,
    verdict,
)
from bridge.sim.tool_server import ToolService

__all__ = ["SoakOptions", "run"]

RETRY_PLACE_S = 1.0  # a call that could not be placed is tried again this much later
AFTER_LOSS_S = 5.0  # a call whose model session was cut is hung up this much later
WATCH_S = 1.0  # how often a call is checked for a cut model session
# The preamble ends 0.86 s into the stream (signature.py); with the webhook, the connections and
# a busy loop, a call younger than this may not have been tied to its model session yet.
PREAMBLE_S = 3.0
END_OF_SOAK = "hung up at the end of the soak"
# The tool the model calls (bridge.bench.model.TOOL_NAME), served by the generator.
NUMBERS = """
[profiles.default]
greeting = ""

[[profiles.default.tools]]
name = "{name}"
description = "Look up an order"
url = "{url}"
parameters = {{ type = "object", properties = {{ order = {{ type = "string" }} }} }}
"""


@dataclasses.dataclass(frozen=True, slots=True)
class SoakOptions:
    minutes: float
    calls: int = 200
    call_seconds: tuple[float, float] = (120.0, 240.0)  # each call's length, drawn uniformly
    sample_seconds: float = 10.0
    drop_every: float | None = None  # model side: abort each connection after about this long
    tool_every: int = 4  # model side: every Nth answer also calls a tool (0: never)


def unlinked_end(why: str, lived_s: float) -> str:
    """How a call the model side never tied to it ended: a failure, unless the soak's end hung it
    up before its preamble could have been heard (placed in the last seconds)."""
    if why == END_OF_SOAK and lived_s < PREAMBLE_S:
        return "placed in the soak's last seconds (ended before reaching the model)"
    return "never reached the model"


class _Soak:
    def __init__(
        self,
        base: str,
        model: ModelServer,
        soak: SoakOptions,
        script: Script,
        ramp_s: float,
        *,
        pid: int | None,
        stats_dir: Path | None,
        tools: ToolService | None,
        progress: Progress,
    ) -> None:
        self.model = model
        self.soak = soak
        self.ramp_s = ramp_s
        self.pid = pid
        self.stats_dir = stats_dir
        self.tools = tools
        self.progress = progress
        self.metrics = Metrics()
        self.ticker = Ticker(self.metrics)
        self.dialer = Dialer(base, model, self.ticker, script, utterance_frames())
        self._rng = random.Random(7)
        # Call ids a new call may speak; a released id goes to the back, so it is reused last.
        self._free = collections.deque(range(MAX_CALLS))
        self.callers: set[Caller] = set()
        self.placed = 0
        self.ended = 0
        self.ends: collections.Counter[str] = collections.Counter()
        self.tool_requests = 0
        self.samples: list[Sample] = []
        self.latency: dict[int, MinuteLatency] = {}
        self._values: dict[int, tuple[array.array[float], array.array[float]]] = {}
        self.t0 = 0.0
        self.end_at = 0.0

    def live(self) -> int:
        return sum(1 for c in self.callers if c.failure is None and c.probe.linked)

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        model = self.model
        model.metrics = self.metrics
        model.probes = {}
        model.unlinked = []
        started = loop.time()
        self.t0 = started + self.ramp_s + 2.0  # the last calls through their preamble
        self.end_at = self.t0 + self.soak.minutes * 60.0
        gap = self.ramp_s / self.soak.calls
        self.ticker.start()
        try:
            async with (
                httpx.AsyncClient(timeout=CONNECT_TIMEOUT) as client,
                asyncio.TaskGroup() as tg,
            ):
                for slot in range(self.soak.calls):
                    tg.create_task(self._slot(client, started + slot * gap))
                tg.create_task(self._sample_all())
        finally:
            self.ticker.stop()
            for caller in list(self.callers):
                caller.abort()

    # ---- calls ---------------------------------------------------------------------------------

    async def _slot(self, client: httpx.AsyncClient, first_at: float) -> None:
        """One of the N places: a call, then another when it ends, until the soak is over."""
        loop = asyncio.get_running_loop()
        await asyncio.sleep(max(0.0, first_at - loop.time()))
        first = True
        while loop.time() < self.end_at:
            call_id = self._free.popleft()
            self.placed += 1
            made: list[Caller] = []
            caller = await self.dialer.place(client, call_id, made.append)
            if caller is None:  # counted in the dialer's failures
                for failed in made:
                    await self._close(failed, None)
                self._free.append(call_id)
                await asyncio.sleep(RETRY_PLACE_S)
                continue
            self.callers.add(caller)
            shortest, longest = self.soak.call_seconds
            if first:  # the rest of a call met in progress (soak.py)
                length = first_call_seconds(self._rng, shortest, longest)
                first = False
            else:
                length = self._rng.uniform(shortest, longest)
            # Past the end by a little: the last sample sees every call still up.
            opened_at = loop.time()
            deadline = min(opened_at + length, self.end_at + 0.5)
            why = await self._hold(caller, deadline)
            if not caller.probe.linked:
                why = unlinked_end(why, loop.time() - opened_at)
            if loop.time() <= self.end_at:
                self.ended += 1  # replaced: counted while the soak runs
            self.ends[why] += 1
            await self._close(caller, call_id)

    async def _hold(self, caller: Caller, deadline: float) -> str:
        """Until the call ends, its length is up, or its model session was cut; then hang up.
        Why it ended."""
        loop = asyncio.get_running_loop()
        lost = False
        while not caller.closed.done() and (left := deadline - loop.time()) > 0:
            await asyncio.wait({caller.closed}, timeout=min(WATCH_S, left))
            if caller.probe.lost_at is not None and not lost:
                lost = True
                deadline = min(deadline, loop.time() + AFTER_LOSS_S)
        if caller.closed.done():
            return caller.failure or "closed"
        caller.hangup()
        await asyncio.wait({caller.closed}, timeout=HANGUP_TIMEOUT)
        if lost:
            return "hung up after its model session was cut"
        return END_OF_SOAK if loop.time() > self.end_at else "hung up"

    async def _close(self, caller: Caller, call_id: int | None) -> None:
        """The call is over: its socket gone for good, its id free again (last in line)."""
        if not caller.closed.done():
            caller.abort()
            await asyncio.wait({caller.closed}, timeout=1.0)
        self.callers.discard(caller)
        if call_id is not None:
            self._free.append(call_id)

    # ---- samples -------------------------------------------------------------------------------

    async def _sample_all(self) -> None:
        loop = asyncio.get_running_loop()
        step = self.soak.sample_seconds
        await asyncio.sleep(max(0.0, self.t0 - loop.time()))
        self.metrics.recording = True
        try:
            # Each sample is filed at the time it was due (the loop wakes a little later).
            k = 0
            while (at := self.t0 + k * step) <= self.end_at + 1e-6:
                await asyncio.sleep(max(0.0, at - loop.time()))
                self._take(k * step)
                k += 1
            if not self.samples or self.samples[-1].t < self.end_at - self.t0 - 1e-3:
                await asyncio.sleep(max(0.0, self.end_at - loop.time()))
                self._take(self.end_at - self.t0)
        finally:
            self.metrics.recording = False
            self._close_minutes(None)
            self.progress.end()

    def _take(self, t: float) -> None:
        pid = self.pid
        process = proc.sample_tree(pid) if pid else None
        sample = Sample(
            t=round(t, 3),
            rss=process.rss if process else 0,
            fds=proc.open_fds_tree(pid) if pid else None,
            tasks=self._tasks(),
            live=self.live(),
            ended=self.ended,
            cpu_s=process.cpu_s if process else None,
        )
        self.samples.append(sample)
        if self.tools is not None:
            self.tool_requests += len(self.tools.requests)
            self.tools.requests.clear()
        minute = minute_of(t)
        c2m, m2c = self._values.setdefault(minute, (array.array("d"), array.array("d")))
        for into, samples in (
            (c2m, self.metrics.caller_to_model),
            (m2c, self.metrics.model_to_caller),
        ):
            into.extend(samples.values)
            del samples.values[:]
        self._close_minutes(minute)
        self._show(sample)

    def _close_minutes(self, current: int | None) -> None:
        """Summarise the latency of every minute before `current` (all of them for None)."""
        for minute in sorted(self._values):
            if current is not None and minute >= current:
                break
            c2m, m2c = self._values.pop(minute)
            a, b = summary(c2m), summary(m2c)
            self.latency[minute] = MinuteLatency((a["p50"], a["p99"]), (b["p50"], b["p99"]))
            self._note_minute(minute)

    def _tasks(self) -> int | None:
        """The bridge's asyncio tasks, summed over its processes (None: not reported)."""
        if self.stats_dir is None or not self.pid:
            return None
        total, seen = 0, False
        for pid in (self.pid, *proc.descendants(self.pid)):
            with contextlib.suppress(OSError, ValueError):
                total += int((self.stats_dir / f"tasks-{pid}").read_text())
                seen = True
        return total if seen else None

    def _show(self, sample: Sample) -> None:
        total = self.soak.minutes * 60.0
        detail = f"{sample.live}/{self.soak.calls} live, {self.ended} replaced"
        if sample.rss:
            detail += f", RSS {sample.rss / 1024 / 1024:.0f} MB"
        self.progress.update("soak", sample.t, total, detail)

    def _note_minute(self, minute: int) -> None:
        rows = minute_rows([s for s in self.samples if minute_of(s.t) == minute], self.latency)
        row = next((r for r in rows if r["minute"] == minute), None)
        if row is None or not self.progress.enabled:
            return
        c2m, m2c = row["caller_to_model_ms"]["p99"], row["model_to_caller_ms"]["p99"]
        self.progress.note(
            f"minute {minute}: RSS {row['rss_mb']} MB, fds {row['fds']}, tasks {row['tasks']}, "
            f"p99 in/out {c2m} / {m2c} ms, {row['live']} live"
        )


async def _write_numbers(directory: Path, tools: ToolService) -> str:
    path = directory / "numbers.toml"
    path.write_text(NUMBERS.format(name=TOOL_NAME, url=tools.url("/orders")))
    return str(path)


@contextlib.asynccontextmanager
async def _maybe_tools(soak: SoakOptions) -> AsyncIterator[ToolService | None]:
    if soak.tool_every <= 0:
        yield None
        return
    async with ToolService() as tools:
        yield tools


async def run(
    options: Options, soak: SoakOptions, progress: Progress | None = None
) -> dict[str, Any]:
    """Run the soak against a started bridge (or the one at `options.url`); the report."""
    progress = progress or Progress(enabled=not options.quiet)
    if not 0 < soak.calls <= MAX_CALLS // 2:
        raise ValueError(f"--calls for a soak must be 1..{MAX_CALLS // 2}")
    model = ModelServer(
        chunk_ms=options.chunk_ms,
        speedup=options.speedup,
        tool_every=soak.tool_every,
        drop_every=soak.drop_every,
    )
    await model.start(options.sim_host, options.sim_port)
    script = Script(barge_in_share=options.barge_in)
    ramp = options.ramp if options.ramp is not None else default_ramp(soak.calls)
    load_before = [round(v, 2) for v in os.getloadavg()]
    try:
        with tempfile.TemporaryDirectory(prefix="bridge-soak-") as scratch:
            directory = Path(scratch)
            async with _maybe_tools(soak) as tools:
                if options.url:
                    port = urlsplit(options.url).port or 80
                    pid = options.pid or proc.find_listener(port)
                    progress.note(
                        f"bridge under test: {options.url} (pid {pid or 'unknown'}); it must use "
                        f"BRIDGE_REALTIME_URL={model.url}; its asyncio tasks are not counted"
                    )
                    runner = _Soak(
                        options.url,
                        model,
                        soak,
                        script,
                        ramp,
                        pid=pid,
                        stats_dir=None,
                        tools=tools,
                        progress=progress,
                    )
                    await runner.run()
                else:
                    numbers = await _write_numbers(directory, tools) if tools else None
                    started = dataclasses.replace(
                        options, numbers=numbers, stats_dir=str(directory)
                    )
                    log = directory / "target.log"
                    async with started_target(started, model.url, log) as target:
                        await asyncio.sleep(1.0)  # settle imports and first allocations
                        runner = _Soak(
                            target.base,
                            model,
                            soak,
                            script,
                            ramp,
                            pid=target.pid,
                            stats_dir=directory,
                            tools=tools,
                            progress=progress,
                        )
                        await runner.run()
    finally:
        await model.close()
    return _report(options, soak, runner, model, ramp, load_before)


def _report(
    options: Options,
    soak: SoakOptions,
    runner: _Soak,
    model: ModelServer,
    ramp: float,
    load_before: list[float],
) -> dict[str, Any]:
    metrics = runner.metrics
    failures = dict(runner.dialer.failures)
    minutes = minute_rows(runner.samples, runner.latency)
    return {
        "benchmark": "bridge soak",
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {
            "cores": os.cpu_count(),
            "python": platform.python_version(),
            "loadavg_at_start": load_before,
            "loadavg_at_end": [round(v, 2) for v in os.getloadavg()],
        },
        "config": {
            "calls": soak.calls,
            "minutes": soak.minutes,
            "call_seconds": list(soak.call_seconds),
            "sample_seconds": soak.sample_seconds,
            "drop_every_s": soak.drop_every,
            "tool_every": soak.tool_every,
            "barge_in_share": options.barge_in,
            "ramp_s": ramp,
            "audio_mode": options.audio_mode,
            "url": options.url,
            "target": "create_app (bare)" if options.bare else "bridge serve (with call log)",
            "workers": options.workers,
            "preload": list(options.preload),
        },
        "calls": {
            "placed": runner.placed,
            "replaced": runner.ended,
            "ends": dict(runner.ends),
            "not_placed": failures,
        },
        "model": {
            "sessions": model.sessions,
            "drops": model.drops,
            "unlinked": dict(collections.Counter(model.unlinked)),
        },
        "turns": {
            "replies": metrics.replies,
            "barge_ins": metrics.barge_ins,
            "missed_replies": metrics.missed_replies,
            "tool_requests": runner.tool_requests,
            "underruns": metrics.underruns,
            "protocol_errors": metrics.protocol_errors,
            "rejected_events": metrics.rejected_events,
        },
        "samples": [dataclasses.asdict(sample) for sample in runner.samples],
        "minutes": minutes,
        # Minutes the bridge's loops ran flat out: the machine's limit, not the bridge's trend.
        "saturated_minutes": saturated_minutes(minutes, options.workers),
        # Judged once every place's first call has ended: a steady population (soak.py).
        "verdict": verdict(runner.samples, runner.latency, warmup_s=max(soak.call_seconds)),
    }
