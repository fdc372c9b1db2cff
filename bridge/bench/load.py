"""One load level: place N calls over the ramp, hold them through the steady phase, hang up, and
summarise what was measured (samples from the steady phase only).

Calls are placed as Twilio places them: the voice webhook first, then the Media Stream its TwiML
names. The bridge process (if its pid is known), this generator and the machine are sampled every
half second for CPU and memory.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx

from bridge.bench import callgrind, proc, profile
from bridge.bench.caller import Caller, Script, Ticker
from bridge.bench.measure import cpu_per_call_minute, quantiles, summary
from bridge.bench.model import ModelServer
from bridge.bench.probe import CallProbe, Metrics
from bridge.bench.progress import Progress
from bridge.bench.signature import MAX_CALLS, utterance_frames
from bridge.sim.twiml_client import loopback_url, parse_stream

__all__ = ["Dialer", "Plan", "run_level"]

SAMPLE_S = 0.5
CONNECT_TIMEOUT = 15.0
HANGUP_TIMEOUT = 5.0
# The generator is the bottleneck past these: its own CPU, or its lateness on the 20 ms grid.
GENERATOR_CORES_LIMIT = 0.8
GENERATOR_LAG_LIMIT_MS = 5.0
MB = 1024 * 1024


@dataclasses.dataclass(frozen=True, slots=True)
class Plan:
    calls: int
    steady_s: float
    ramp_s: float
    settle_s: float = 2.0  # after the ramp: the last calls get through their preamble
    script: Script = dataclasses.field(default_factory=Script)


@dataclasses.dataclass(slots=True)
class Dialer:
    """Places calls as Twilio places them: the voice webhook first, then the Media Stream its
    TwiML names. Why a call could not be placed is counted in `failures`."""

    base: str
    model: ModelServer
    ticker: Ticker
    script: Script
    utterance: list[str]
    failures: collections.Counter[str] = dataclasses.field(default_factory=collections.Counter)

    async def place(
        self, client: httpx.AsyncClient, call_id: int, started: Callable[[Caller], None]
    ) -> Caller | None:
        """One call whose preamble speaks `call_id`; `started` is handed its caller before the
        stream is opened. The caller once its stream is open, else None."""
        call_sid = "CA" + os.urandom(16).hex()
        form = {
            "CallSid": call_sid,
            "AccountSid": "AC" + "0" * 32,
            "From": f"+1555{call_id:07d}",
            "To": "+15550100000",
            "CallStatus": "ringing",
            "Direction": "inbound",
            "ApiVersion": "2010-04-01",
        }
        try:
            async with asyncio.timeout(CONNECT_TIMEOUT):
                response = await client.post(f"{self.base}/twilio/voice", data=form)
                if response.status_code != 200:
                    self.failures[f"voice webhook HTTP {response.status_code}"] += 1
                    return None
                stream_url, parameters = parse_stream(response.text)
                target = urlsplit(loopback_url(stream_url, self.base))
                probe = CallProbe(call_id, self.ticker.metrics, lead_ms=0.0)
                self.model.probes[call_id] = probe
                caller = Caller(
                    probe,
                    self.ticker,
                    host=target.netloc,
                    target=target.path or "/",
                    custom_parameters=parameters,
                    call_sid=call_sid,
                    stream_sid="MZ" + os.urandom(16).hex(),
                    script=self.script,
                    utterance=self.utterance,
                )
                started(caller)
                loop = asyncio.get_running_loop()
                host = target.hostname or "127.0.0.1"
                await loop.create_connection(lambda: caller, host, target.port or 80)
                await caller.opened
                return caller
        except TimeoutError:
            self.failures["connect timeout"] += 1
        except (OSError, httpx.HTTPError, ValueError) as exc:
            self.failures[f"connect failed: {type(exc).__name__}"] += 1
        return None


@dataclasses.dataclass(slots=True)
class _Window:
    """Samples over the steady phase."""

    bridge_cpu: list[float] = dataclasses.field(default_factory=list)
    bridge_system: list[float] = dataclasses.field(default_factory=list)
    bridge_rss: list[int] = dataclasses.field(default_factory=list)
    live: list[int] = dataclasses.field(default_factory=list)
    call_seconds: float = 0.0
    t0: float = 0.0
    t1: float = 0.0
    gen0: float = 0.0
    gen1: float = 0.0
    sys0: proc.SystemSample | None = None
    sys1: proc.SystemSample | None = None


class _Level:
    def __init__(
        self,
        base: str,
        model: ModelServer,
        plan: Plan,
        pid: int | None,
        progress: Progress,
        profile_to: Path | None,
        count_instructions: bool = False,
    ) -> None:
        self.base = base.rstrip("/")
        self.profile_to = profile_to if pid else None
        self.count_instructions = count_instructions and pid is not None
        self.model = model
        self.plan = plan
        self.pid = pid
        self.progress = progress
        self.metrics = Metrics()
        self.ticker = Ticker(self.metrics)
        self.callers: list[Caller] = []
        self.dialer = Dialer(self.base, model, self.ticker, plan.script, utterance_frames())
        self.failures = self.dialer.failures
        self.held: list[Caller] = []  # calls alive and bridged at the end of the steady phase
        self.baseline_rss = 0
        self.peak_rss = 0

    def live(self) -> int:
        return sum(1 for c in self.callers if c.failure is None and c.probe.linked)

    async def run(self) -> dict[str, Any]:
        plan, model = self.plan, self.model
        model.metrics = self.metrics
        model.probes = {}
        model.unlinked = []
        self.baseline_rss = self._bridge_rss()
        self.ticker.start()
        window = _Window()
        try:
            async with httpx.AsyncClient(timeout=CONNECT_TIMEOUT) as client:
                await self._ramp(client)
            await self._wait(plan.settle_s, "settling", plan.settle_s)
            await self._steady(window)
        finally:
            await self._hang_up()
            self.ticker.stop()
        return self._result(window)

    async def _ramp(self, client: httpx.AsyncClient) -> None:
        loop = asyncio.get_running_loop()
        plan = self.plan
        t0 = loop.time()
        gap = plan.ramp_s / plan.calls
        async with asyncio.TaskGroup() as tg:
            tasks = []
            for i in range(plan.calls):
                delay = t0 + i * gap - loop.time()
                if delay > 0:
                    await asyncio.sleep(delay)
                tasks.append(tg.create_task(self._place(client, i)))
                self._show("ramp", loop.time() - t0, plan.ramp_s)
            while not all(task.done() for task in tasks):
                await asyncio.sleep(SAMPLE_S / 5)
                self._show("ramp", loop.time() - t0, plan.ramp_s)

    async def _place(self, client: httpx.AsyncClient, i: int) -> None:
        await self.dialer.place(client, i, self.callers.append)

    async def _wait(self, seconds: float, label: str, total: float) -> None:
        loop = asyncio.get_running_loop()
        end = loop.time() + seconds
        while (left := end - loop.time()) > 0:
            await asyncio.sleep(min(SAMPLE_S, left))
            self._show(label, total - max(0.0, end - loop.time()), total)

    async def _steady(self, window: _Window) -> None:
        loop = asyncio.get_running_loop()
        steady = self.plan.steady_s
        window.sys0 = proc.sample_system()
        window.gen0 = time.process_time()
        window.t0 = t = loop.time()
        self._sample_bridge(window)
        self.metrics.recording = True
        async with contextlib.AsyncExitStack() as stack:
            if self.profile_to is not None and self.pid:
                await stack.enter_async_context(
                    profile.recording(self.pid, steady, self.profile_to)
                )
            if self.count_instructions and self.pid:
                await stack.enter_async_context(callgrind.counting(self.pid))
            await self._hold(window, t)
        self.progress.end()

    async def _hold(self, window: _Window, t: float) -> None:
        loop = asyncio.get_running_loop()
        steady = self.plan.steady_s
        try:
            while (now := loop.time()) < window.t0 + steady:
                await asyncio.sleep(min(SAMPLE_S, window.t0 + steady - now))
                live = self.live()
                now = loop.time()
                window.call_seconds += live * (now - t)
                window.live.append(live)
                t = now
                self._sample_bridge(window)
                self._show("steady", now - window.t0, steady)
        finally:
            self.metrics.recording = False
            window.t1 = loop.time()
            window.gen1 = time.process_time()
            window.sys1 = proc.sample_system()
            self._sample_bridge(window)

    async def _hang_up(self) -> None:
        self.held = [c for c in self.callers if c.failure is None and c.probe.linked]
        for caller in self.callers:
            caller.hangup()
        pending = [c.closed for c in self.callers if not c.closed.done()]
        if pending:
            await asyncio.wait(pending, timeout=HANGUP_TIMEOUT)
        for caller in self.callers:
            if not caller.closed.done():
                caller.abort()
        closing = [c.closed for c in self.callers if not c.closed.done()]
        if closing:  # aborted transports report connection_lost on the next loop turn
            await asyncio.wait(closing, timeout=1.0)

    def _bridge_rss(self) -> int:
        sample = proc.sample_tree(self.pid) if self.pid else None
        return sample.rss if sample else 0

    def _sample_bridge(self, window: _Window) -> None:
        sample = proc.sample_tree(self.pid) if self.pid else None
        if sample is not None:
            window.bridge_cpu.append(sample.cpu_s)
            window.bridge_system.append(sample.system_s)
            window.bridge_rss.append(sample.rss)
            self.peak_rss = max(self.peak_rss, sample.rss, sample.hwm)

    def _show(self, label: str, done: float, total: float) -> None:
        detail = f"calls {self.live()}/{self.plan.calls} live"
        failed = sum(1 for c in self.callers if c.failure is not None) + sum(self.failures.values())
        if failed:
            detail += f", {failed} failed"
        self.progress.update(label, done, total, detail)

    # ---- the result --------------------------------------------------------------------------

    def _result(self, window: _Window) -> dict[str, Any]:
        metrics, plan = self.metrics, self.plan
        held = self.held
        failures = collections.Counter(self.failures)
        for caller in self.callers:
            if caller.failure is not None:
                failures[caller.failure] += 1
            elif not caller.probe.linked:
                failures["never reached the model (preamble not decoded)"] += 1
        wall = max(1e-9, window.t1 - window.t0)
        mean_live = sum(window.live) / len(window.live) if window.live else 0.0
        gen_cores = (window.gen1 - window.gen0) / wall
        bridge = self._bridge_result(window, wall, mean_live)
        tick_lag = summary(metrics.tick_lag.values)
        delta_lag = summary(metrics.delta_lag.values)
        other = None
        if window.sys0 and window.sys1:
            busy = (window.sys1.busy_s - window.sys0.busy_s) / wall
            other = round(max(0.0, busy - gen_cores - (bridge["cpu_cores"] or 0.0)), 3)
        reasons = []
        if gen_cores >= GENERATOR_CORES_LIMIT:
            reasons.append(f"generator used {gen_cores:.2f} of a core")
        for name, lag in (("20 ms ticks", tick_lag), ("reply deltas", delta_lag)):
            if lag["p99"] is not None and lag["p99"] > GENERATOR_LAG_LIMIT_MS:
                reasons.append(f"generator {name} p99 {lag['p99']:.1f} ms late")
        truncation = summary(metrics.truncation_error.values)
        truncation["abs_p99"] = summary([abs(v) for v in metrics.truncation_error.values])["p99"]
        return {
            "calls": {
                "target": plan.calls,
                "held": len(held),
                "failed": plan.calls - len(held),
                "failures": dict(failures),
            },
            "phases_s": {"ramp": plan.ramp_s, "settle": plan.settle_s, "steady": round(wall, 2)},
            "latency_ms": {
                "caller_to_model": summary(metrics.caller_to_model.values),
                "model_to_caller": summary(metrics.model_to_caller.values),
                "clear": summary(metrics.clear.values),
            },
            "truncation_error_ms": truncation,
            "underruns": {"count": metrics.underruns, "gap_ms": summary(metrics.gaps.values)},
            "turns": {
                "replies": metrics.replies,
                "missed_replies": metrics.missed_replies,
                "barge_ins": metrics.barge_ins,
                "clears": metrics.clears,
                "truncations": metrics.truncations,
                "rejected_events": metrics.rejected_events,
                "protocol_errors": metrics.protocol_errors,
            },
            "bridge": bridge,
            "generator": {
                "cpu_cores": round(gen_cores, 3),
                "cpu_percent_of_core_per_call": (
                    round(100.0 * gen_cores / mean_live, 3) if mean_live else None
                ),
                "tick_lag_ms": tick_lag,
                "delta_lag_ms": delta_lag,
                "bottleneck": bool(reasons),
                "why": reasons,
            },
            "machine": {"cores": os.cpu_count(), "other_load_cores": other},
            "profile": self._profile(),
            "cdf_ms": {
                "caller_to_model": quantiles(metrics.caller_to_model.values),
                "model_to_caller": quantiles(metrics.model_to_caller.values),
            },
        }

    def _profile(self) -> dict[str, Any] | None:
        if self.profile_to is None:
            return None
        try:
            collapsed = self.profile_to.read_text()
        except OSError:
            return {"file": str(self.profile_to), "samples": 0, "self": [], "inclusive": []}
        return {"file": str(self.profile_to), **profile.top_entries(collapsed)}

    def _bridge_result(self, window: _Window, wall: float, mean_live: float) -> dict[str, Any]:
        result: dict[str, Any] = {
            "pid": self.pid,
            "cpu_s": None,
            "cpu_system_share": None,
            "cpu_cores": None,
            "cpu_s_per_call_minute": None,
            "rss_baseline_mb": None,
            "rss_peak_mb": None,
            "rss_per_call_mb": None,
            "call_seconds": round(window.call_seconds, 2),
        }
        if len(window.bridge_cpu) < 2:
            return result
        cpu = window.bridge_cpu[-1] - window.bridge_cpu[0]
        system = window.bridge_system[-1] - window.bridge_system[0]
        per_minute = cpu_per_call_minute(cpu, window.call_seconds)
        rss_steady = max(window.bridge_rss)
        result.update(
            cpu_s=round(cpu, 3),
            cpu_system_share=round(system / cpu, 3) if cpu > 0 else None,
            cpu_cores=round(cpu / wall, 3),
            cpu_s_per_call_minute=None if per_minute is None else round(per_minute, 4),
            rss_baseline_mb=round(self.baseline_rss / MB, 2),
            rss_peak_mb=round(self.peak_rss / MB, 2),
            rss_per_call_mb=(
                round((rss_steady - self.baseline_rss) / MB / mean_live, 3) if mean_live else None
            ),
        )
        return result


async def run_level(
    base: str,
    model: ModelServer,
    plan: Plan,
    *,
    pid: int | None,
    progress: Progress,
    profile_to: Path | None = None,
    count_instructions: bool = False,
) -> dict[str, Any]:
    """Run one level against the bridge at `base` (http://host:port) whose upstream is `model`;
    with `profile_to`, sample the bridge with py-spy through the steady phase; with
    `count_instructions`, switch callgrind's counting on for it (the bridge runs under it)."""
    if not 0 < plan.calls <= MAX_CALLS:
        raise ValueError(f"calls must be 1..{MAX_CALLS}")
    level = _Level(base, model, plan, pid, progress, profile_to, count_instructions)
    return await level.run()
