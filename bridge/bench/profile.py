"""Sampling the bridge with py-spy during the steady phase, and the top entries of the profile.

py-spy is optional (`pip install py-spy`); the profile is written in the collapsed-stack format
("frame;frame;frame count" per line), which speedscope and flamegraph tools read directly.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import re
import shutil
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

__all__ = ["find_py_spy", "recording", "top_entries"]

RATE = 100  # samples per second
_LINE = re.compile(r"^(.*) (\d+)$")
_FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>[^()]*?)(?::\d+)?\)$")


def find_py_spy() -> str | None:
    beside = Path(sys.executable).with_name("py-spy")
    return str(beside) if beside.exists() else shutil.which("py-spy")


@contextlib.asynccontextmanager
async def recording(pid: int, seconds: float, output: Path) -> AsyncIterator[None]:
    """Sample `pid` (and its workers, if any) for `seconds` into `output` while the body runs
    (py-spy must exist)."""
    py_spy = find_py_spy()
    if py_spy is None:
        raise FileNotFoundError("py-spy is not installed (pip install py-spy)")
    output.parent.mkdir(parents=True, exist_ok=True)
    process = await asyncio.create_subprocess_exec(
        py_spy,
        "record",
        "--pid",
        str(pid),
        "--duration",
        str(max(1, round(seconds))),
        "--rate",
        str(RATE),
        "--subprocesses",
        # Blocking sampling (the default) pauses the bridge ~0.1 ms per sample, so a profiled
        # level's latencies are a little worse; --nonblocking truncates ~40% of the coroutine
        # stacks, which makes the inclusive shares useless.
        "--format",
        "raw",
        "--output",
        str(output),
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    try:
        yield
    finally:
        try:
            async with asyncio.timeout(seconds + 15.0):
                await process.wait()
        except TimeoutError:
            process.kill()
            await process.wait()


def _short(frame: str) -> str:
    match = _FRAME.match(frame)
    if match is None:
        return frame
    path = match["file"]
    for marker in ("site-packages/", "/lib/python3"):
        if marker in path:
            path = path.split(marker, 1)[1]
            break
    else:
        path = path.rsplit("/bridge/", 1)[-1] if "/bridge/" in path else path
    return f"{match['func']} ({path})"


def top_entries(collapsed: str, limit: int = 15) -> dict[str, Any]:
    """Self and inclusive shares (percent of samples) of the busiest functions."""
    own: collections.Counter[str] = collections.Counter()
    inclusive: collections.Counter[str] = collections.Counter()
    total = 0
    for line in collapsed.splitlines():
        match = _LINE.match(line.strip())
        if match is None:
            continue
        count = int(match[2])
        # `--subprocesses` roots each stack in a `process PID:"command"` frame: the same code
        # in every worker, so shares are summed over processes without it.
        frames = [_short(f) for f in match[1].split(";") if f and not f.startswith("process ")]
        if not frames:
            continue
        total += count
        own[frames[-1]] += count
        for frame in set(frames):
            inclusive[frame] += count
    if total == 0:
        return {"samples": 0, "self": [], "inclusive": []}

    def share(counter: collections.Counter[str]) -> list[list[Any]]:
        return [[name, round(100.0 * n / total, 1)] for name, n in counter.most_common(limit)]

    return {"samples": total, "self": share(own), "inclusive": share(inclusive)}
