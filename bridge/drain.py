"""Graceful drain: stop taking calls, let live ones finish, end the rest politely at a deadline.

uvicorn closes every WebSocket with 1012 the moment it shuts down, which would cut every call on
each deploy; so the first SIGTERM starts this drain instead, and uvicorn is told to exit only
once it is done (see `bridge.server.BridgeServer`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

from bridge import metrics

if TYPE_CHECKING:
    from bridge.call.shell import Call

logger = logging.getLogger(__name__)

# After the deadline, calls get this long to say goodbye and close before we stop waiting.
GOODBYE_GRACE = 20.0


class CallRegistry:
    """The live calls of this process, and whether it still takes new ones."""

    def __init__(self) -> None:
        self._calls: set[Call] = set()
        self._empty = asyncio.Event()
        self._empty.set()
        self.draining = False

    def add(self, call: Call) -> None:
        self._calls.add(call)
        self._empty.clear()

    def discard(self, call: Call) -> None:
        self._calls.discard(call)
        if not self._calls:
            self._empty.set()

    def __len__(self) -> int:
        return len(self._calls)

    def __iter__(self) -> Iterator[Call]:
        return iter(list(self._calls))

    def __bool__(self) -> bool:
        return bool(self._calls)

    async def wait_empty(self) -> None:
        await self._empty.wait()


async def drain(calls: CallRegistry, seconds: float, goodbye_for: Callable[[Call], str]) -> None:
    """Refuse new calls, wait up to `seconds` for live ones, then end the rest with a goodbye."""
    calls.draining = True
    metrics.set_draining(True)
    logger.warning("draining: %d live call(s), deadline %.0fs", len(calls), seconds)
    try:
        async with asyncio.timeout(seconds):
            await calls.wait_empty()
        logger.info("drained: every call ended on its own")
        return
    except TimeoutError:
        pass
    logger.warning("drain deadline reached: ending %d call(s)", len(calls))
    for call in calls:
        call.shutdown(goodbye_for(call))
    try:
        async with asyncio.timeout(GOODBYE_GRACE):
            await calls.wait_empty()
    except TimeoutError:
        logger.error("%d call(s) did not end after their goodbye", len(calls))
