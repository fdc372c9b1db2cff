"""Whether this process takes another call: BRIDGE_MAX_CALLS, and how late its event loop runs.

A call counts from the moment the voice webhook admits it, not from its stream: between the
two, a place is reserved under its CallSid, so a burst of webhooks cannot overshoot the limit.
The reservation ends when the call's stream starts here (the live call then counts), when the
call ends, or after RESERVATION_SECONDS if no stream claims it (the stream went to another
worker or replica, or Twilio gave up). Live calls are never touched.
"""

from __future__ import annotations

import asyncio
import collections
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from bridge import metrics
from bridge.drain import CallRegistry

if TYPE_CHECKING:
    from bridge.call.shell import Call

RESERVATION_SECONDS = 15.0  # Twilio opens the stream within a second or two of our answer
LAG_INTERVAL = 0.25  # how often the loop's lateness is measured
LAG_WINDOW = 5.0  # /readyz judges the worst lateness over this long


class Admission(CallRegistry):
    """The live calls, plus places reserved for calls admitted but not yet streaming."""

    def __init__(
        self,
        max_calls: int | None,
        *,
        hold_seconds: float = RESERVATION_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__()
        self.max_calls = max_calls
        self.hold_seconds = hold_seconds
        self._clock = clock
        self._reserved: dict[str, float] = {}  # CallSid -> when the reservation lapses

    def occupied(self) -> int:
        """Live calls and unexpired reservations (a stream between accept and `start` counts
        twice for those milliseconds: erring full, never over)."""
        self._settle()
        return len(self) + len(self._reserved)

    def full(self) -> bool:
        return self.max_calls is not None and self.occupied() >= self.max_calls

    def admit(self, call_sid: str) -> bool:
        """Reserve a place for a call the webhook is about to connect; False at the limit."""
        if self.max_calls is None:
            return True
        if call_sid not in self._reserved and self.full():
            return False
        self._reserved[call_sid] = self._clock() + self.hold_seconds  # a retry renews it
        return True

    def discard(self, call: Call) -> None:
        super().discard(call)
        self._reserved.pop(call.record.call_sid, None)

    async def check(self) -> str | None:
        """A readiness check: a load balancer sends calls elsewhere while this one is full."""
        if self.full():
            return f"full: {self.occupied()}/{self.max_calls} calls"
        return None

    def _settle(self) -> None:
        if not self._reserved:
            return
        now = self._clock()
        started = {call.record.call_sid for call in self}
        for call_sid, lapses in list(self._reserved.items()):
            if lapses <= now or call_sid in started:
                del self._reserved[call_sid]


class LoopLag:
    """How late the event loop wakes a timer, measured from a task of the app's lifespan.

    Every call's audio runs on this one loop, so its lateness is what every caller's frames
    wait on top of their own work: the earliest sign that the process holds too many calls.
    """

    def __init__(
        self,
        limit_ms: float | None,
        *,
        interval: float = LAG_INTERVAL,
        window: float = LAG_WINDOW,
    ) -> None:
        self.limit_ms = limit_ms
        self.interval = interval
        self.window = window
        self._recent: collections.deque[tuple[float, float]] = collections.deque()

    async def run(self) -> None:
        """Measure until cancelled."""
        loop = asyncio.get_running_loop()
        while True:
            before = loop.time()
            await asyncio.sleep(self.interval)
            now = loop.time()
            self.observe(max(0.0, now - before - self.interval), now)

    def observe(self, lag: float, now: float) -> None:
        metrics.EVENT_LOOP_LAG.observe(lag)
        self._recent.append((now, lag))
        while self._recent and self._recent[0][0] < now - self.window:
            self._recent.popleft()

    def recent(self) -> float:
        """The worst lateness (seconds) over the last `window` of measurements."""
        return max((lag for _, lag in self._recent), default=0.0)

    async def check(self) -> str | None:
        """A readiness check, with BRIDGE_EVENT_LOOP_LAG_LIMIT_MS set."""
        lag_ms = self.recent() * 1000
        if self.limit_ms is not None and lag_ms > self.limit_ms:
            return f"event loop lag {lag_ms:.0f} ms over {self.limit_ms:g} ms"
        return None
