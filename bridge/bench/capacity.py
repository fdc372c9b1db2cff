"""The capacity benchmark: for each level, a fresh bridge process (or the one at `--url`), the lean
generator against it, and one result; then the knee of the sweep.

Processes: this one runs the generator (callers and the model side, one event loop); the bridge
runs as `python -m bridge.bench.target`, so its CPU and memory are read from /proc apart from ours.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import platform
import signal
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx

from bridge.bench import callgrind, proc, profile
from bridge.bench.calibration import reference_us
from bridge.bench.caller import Script
from bridge.bench.load import Plan, run_level
from bridge.bench.measure import find_knee
from bridge.bench.model import ModelServer
from bridge.bench.progress import Progress

__all__ = ["BenchError", "Options", "Target", "run", "started_target"]

START_TIMEOUT = 30.0
START_TIMEOUT_CALLGRIND = 300.0  # imports alone take a while under valgrind
STOP_TIMEOUT = 10.0
KNEE_LIMIT_MS = 20.0


class BenchError(Exception):
    """The benchmark could not run (the bridge did not start, or died)."""


@dataclasses.dataclass(frozen=True, slots=True)
class Options:
    levels: tuple[int, ...]
    seconds: float
    ramp: float | None = None
    url: str | None = None
    pid: int | None = None
    audio_mode: str = "transcode"
    barge_in: float = 0.3
    sim_host: str = "127.0.0.1"
    sim_port: int = 0
    chunk_ms: int = 100
    speedup: float = 5.0
    loop: str | None = None
    http: str | None = None
    ws: str | None = None
    quiet: bool = False
    profile: str | None = None  # collapsed-stack file per level (py-spy)
    preload: tuple[str, ...] = ()  # absolute paths: files the started bridge runs first
    bare: bool = False  # started bridge: create_app + in-memory recorder, not `bridge serve`
    instructions: bool = False  # started bridge under callgrind: instructions over the steady phase
    workers: int = 1  # started bridge: processes (`bridge serve --workers N`)
    database_url: str | None = None  # started bridge: call log (default: throw-away SQLite)
    numbers: str | None = None  # started bridge: per-number profiles (TOML)
    stats_dir: str | None = None  # started bridge: writes its asyncio task count here
    record: bool = False  # started bridge: record every call (BRIDGE_RECORD)


def default_ramp(calls: int) -> float:
    """A few seconds: about 40 new calls a second, at least 2 s and at most 10 s."""
    return max(2.0, min(10.0, calls / 40.0))


@dataclasses.dataclass(frozen=True, slots=True)
class Target:
    base: str
    pid: int


@contextlib.asynccontextmanager
async def started_target(options: Options, realtime_url: str, log: Path) -> AsyncIterator[Target]:
    """The bridge as `bridge serve` runs it, in a process of its own (stderr to `log`), with
    `realtime_url` as its upstream; stopped (SIGTERM, then SIGKILL) on the way out."""
    command = [
        sys.executable,
        "-m",
        "bridge.bench.target",
        "--realtime-url",
        realtime_url,
        "--audio-mode",
        options.audio_mode,
    ]
    for name in ("loop", "http", "ws"):
        value = getattr(options, name)
        if value:
            command += [f"--{name}", value]
    for path in options.preload:
        command += ["--preload", path]
    if options.bare:
        command.append("--bare")
    if options.workers > 1:
        command += ["--workers", str(options.workers)]
    if options.database_url:
        command += ["--database-url", options.database_url]
    if options.numbers:
        command += ["--numbers", options.numbers]
    if options.stats_dir:
        command += ["--stats-dir", options.stats_dir]
    if options.record:
        command.append("--record")
    if options.instructions:
        command = callgrind.wrap_command(command, log.parent)
    start_timeout = START_TIMEOUT_CALLGRIND if options.instructions else START_TIMEOUT
    with log.open("wb") as stderr:
        process = await asyncio.create_subprocess_exec(
            *command, stdout=asyncio.subprocess.PIPE, stderr=stderr
        )
    try:
        assert process.stdout is not None
        try:
            async with asyncio.timeout(start_timeout):
                base = (await process.stdout.readline()).decode().strip()
                if not base.startswith("http://"):
                    raise BenchError(f"the bridge did not start:\n{_tail(log)}")
                await _healthy(base, process)
        except TimeoutError:
            raise BenchError(
                f"the bridge did not start in {start_timeout:.0f}s:\n{_tail(log)}"
            ) from None
        yield Target(base, process.pid)
        if process.returncode is not None:
            raise BenchError(f"the bridge exited with {process.returncode}:\n{_tail(log)}")
    finally:
        await _stop(process)


async def _healthy(base: str, process: asyncio.subprocess.Process) -> None:
    async with httpx.AsyncClient(timeout=2.0) as client:
        while True:
            if process.returncode is not None:
                raise BenchError(f"the bridge exited with {process.returncode}")
            with contextlib.suppress(httpx.HTTPError):
                if (await client.get(f"{base}/healthz")).status_code == 200:
                    return
            await asyncio.sleep(0.1)


async def _stop(process: asyncio.subprocess.Process) -> None:
    if process.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(signal.SIGTERM)
        try:
            async with asyncio.timeout(STOP_TIMEOUT):
                await process.wait()
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            await process.wait()
    # Read the stdout pipe to its end, so its transport is closed before the loop is: a loaded
    # machine delivers the EOF late, and uvloop refuses to close a loop with the pipe open.
    if process.stdout is not None:
        with contextlib.suppress(TimeoutError, OSError):
            async with asyncio.timeout(STOP_TIMEOUT):
                await process.stdout.read()


def _add_instructions(result: dict[str, Any], total: int | None) -> None:
    bridge = result["bridge"]
    bridge["instructions"] = total
    seconds = bridge.get("call_seconds")
    bridge["instructions_per_call_second"] = round(total / seconds) if total and seconds else None


def _database_kind(url: str | None) -> str:
    return "sqlite (throw-away)" if url is None else url.split(":", 1)[0]


def _tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def _profile_path(options: Options, calls: int) -> Path | None:
    if not options.profile:
        return None
    path = Path(options.profile)
    if len(options.levels) > 1:
        path = path.with_name(f"{path.stem}-{calls}{path.suffix}")
    return path


async def run(options: Options, progress: Progress | None = None) -> dict[str, Any]:
    """Run every level; returns the report (see `report.py` for how it is shown)."""
    progress = progress or Progress(enabled=not options.quiet)
    if options.profile and profile.find_py_spy() is None:
        raise BenchError("--profile needs py-spy (pip install py-spy)")
    model = ModelServer(chunk_ms=options.chunk_ms, speedup=options.speedup)
    await model.start(options.sim_host, options.sim_port)
    script = Script(barge_in_share=options.barge_in)
    levels: list[dict[str, Any]] = []
    pid = options.pid
    if options.url:
        port = urlsplit(options.url).port or 80
        pid = pid or proc.find_listener(port)
        progress.note(
            f"bridge under test: {options.url} "
            f"(pid {pid or 'unknown: CPU and memory not measured'})"
            f"\n  it must be configured with BRIDGE_REALTIME_URL={model.url} "
            f"BRIDGE_AUDIO_MODE={options.audio_mode} (any OPENAI_API_KEY)"
        )
    try:
        with tempfile.TemporaryDirectory(prefix="bridge-bench-") as logs:
            for calls in options.levels:
                plan = Plan(
                    calls=calls,
                    steady_s=options.seconds,
                    ramp_s=options.ramp if options.ramp is not None else default_ramp(calls),
                    script=script,
                )
                progress.note(
                    f"level {calls} calls: ramp {plan.ramp_s:g}s, steady {plan.steady_s:g}s"
                )
                profile_to = _profile_path(options, calls)
                reference_before = reference_us()
                if options.url:
                    result = await run_level(
                        options.url, model, plan, pid=pid, progress=progress, profile_to=profile_to
                    )
                else:
                    log = Path(logs) / f"target-{calls}.log"
                    async with started_target(options, model.url, log) as target:
                        await asyncio.sleep(1.0)  # settle imports and first allocations
                        result = await run_level(
                            target.base,
                            model,
                            plan,
                            pid=target.pid,
                            progress=progress,
                            profile_to=profile_to,
                            count_instructions=options.instructions,
                        )
                    if options.instructions:
                        _add_instructions(result, callgrind.read_total(Path(logs), target.pid))
                result["level"] = calls
                result["machine"]["reference_us"] = [reference_before, reference_us()]
                if result["profile"] is not None:
                    progress.note(f"profile: {result['profile']['file']}")
                levels.append(result)
    finally:
        await model.close()
    knee = find_knee(levels, KNEE_LIMIT_MS)
    return {
        "benchmark": "bridge capacity",
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {
            "cores": os.cpu_count(),
            "python": platform.python_version(),
            "loadavg_at_end": [round(v, 2) for v in os.getloadavg()],
        },
        "config": {
            "audio_mode": options.audio_mode,
            "url": options.url,
            "barge_in_share": options.barge_in,
            "reply_chunk_ms": options.chunk_ms,
            "reply_speedup": options.speedup,
            "generator_loop": type(asyncio.get_running_loop()).__module__.split(".")[0],
            "target": "create_app (bare)" if options.bare else "bridge serve (with call log)",
            "workers": options.workers,
            "call_log": "memory (bare)" if options.bare else _database_kind(options.database_url),
            "loop": options.loop or "asyncio (as bridge serve)",
            "http": options.http or "uvicorn default",
            "ws": options.ws or "bridge default (MediaStreamProtocol, websockets sans-I/O)",
            "preload": list(options.preload),
            "instructions": options.instructions,
            "record": options.record,
        },
        "levels": levels,
        "knee": {
            "limit_ms": KNEE_LIMIT_MS,
            "calls": None if knee is None else knee["calls"]["held"],
            "rule": "most calls held with no failures, p99 added latency <= limit each way, "
            "zero underruns",
        },
    }
