"""The call's timers: the session asks to be woken (`Wake`), one task wakes it."""

from __future__ import annotations

import asyncio
import contextlib
import heapq
from collections.abc import Callable


class Timers:
    """Loop times to wake the session at; `run` calls `due(now)` when the earliest has come."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._times: list[float] = []
        self._changed = asyncio.Event()

    def wake_at(self, at: float) -> None:
        heapq.heappush(self._times, at)
        self._changed.set()

    async def run(self, due: Callable[[float], None]) -> None:
        """Until cancelled: wait for the earliest time (or a new one), then report it."""
        times = self._times
        while True:
            self._changed.clear()
            now = self._loop.time()
            if times and times[0] <= now:
                while times and times[0] <= now:
                    heapq.heappop(times)
                due(now)
                continue
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(times[0] - now if times else None):
                    await self._changed.wait()
