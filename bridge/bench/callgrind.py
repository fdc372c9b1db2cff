"""Counting the bridge's instructions over the steady phase with valgrind's callgrind.

CPU seconds on a shared virtual machine swing by tens of percent from run to run; the number
of instructions the bridge executes for the same calls does not (repeatable to about 0.3 %).
That makes it the measure for telling whether a change to the hot path helped. It counts
user-space instructions only (the kernel's share of the work, system calls, is not in it), and
under valgrind the bridge runs tens of times slower, so keep the load small (one or two calls)
and read the latency figures of such a run as meaningless.

The bridge starts under `valgrind --tool=callgrind --instr-atstart=no`; `counting` switches
instrumentation on for the steady phase and dumps the counts at its end (`callgrind_control`).
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import shutil
from collections.abc import AsyncIterator
from pathlib import Path

__all__ = ["available", "counting", "read_total", "wrap_command"]

_TOTAL = re.compile(r"^(?:totals|summary):\s+(\d+)", re.MULTILINE)


def available() -> bool:
    """valgrind and callgrind_control are on PATH (Debian: apt-get install valgrind)."""
    return shutil.which("valgrind") is not None and shutil.which("callgrind_control") is not None


def wrap_command(command: list[str], out_dir: Path) -> list[str]:
    """`command` run under callgrind, counting nothing until `counting` switches it on."""
    return [
        "valgrind",
        "--tool=callgrind",
        "--instr-atstart=no",
        f"--callgrind-out-file={out_dir}/callgrind.%p",
        *command,
    ]


async def _control(*args: str) -> None:
    process = await asyncio.create_subprocess_exec(
        "callgrind_control",
        *args,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    if await process.wait() != 0:
        raise RuntimeError(f"callgrind_control {' '.join(args)} failed")


@contextlib.asynccontextmanager
async def counting(pid: int) -> AsyncIterator[None]:
    """Count `pid`'s instructions while the body runs, then write them out (a dump)."""
    await _control("-i", "on", str(pid))
    try:
        yield
    finally:
        await _control("-d", str(pid))
        await _control("-i", "off", str(pid))


def read_total(out_dir: Path, pid: int) -> int | None:
    """Instructions in the dump `counting` wrote for `pid`, or None if there is none."""
    dumps = sorted(out_dir.glob(f"callgrind.{pid}.*"))
    for path in dumps:
        match = _TOTAL.search(path.read_text(errors="replace"))
        if match:
            return int(match.group(1))
    return None
