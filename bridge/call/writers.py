"""One writer per socket: everything a call sends on a socket goes out in the order it was
written, whichever task wrote it.

A batch is written at once, in one write, when nothing is queued or in flight ahead of it and
the socket takes it without waiting (the `bridge.fastws` shortcuts). Otherwise it is queued, and
the writer's task sends the queue in order through the library's flow-controlled send, so a
later batch can never overtake an earlier one. On the caller's socket a `clear` drops the
audio still queued ahead of it: Twilio would discard it anyway, and the clear goes out sooner.
A peer that does not take a message within `SEND_TIMEOUT` is gone: the call ends.
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Awaitable, Callable

from bridge.call.effects import CallEnded, Kind

SEND_TIMEOUT = 5.0  # a peer that cannot take a message for this long is gone
BACKLOG_LIMIT = 8  # batches queued before the caller-audio pump waits for the model's socket

WriteNow = Callable[[tuple[str, ...]], bool]
SendOne = Callable[[str], Awaitable[None]]


class OrderedWriter:
    """The single writer of one socket (see the module docstring)."""

    def __init__(
        self,
        name: str,
        send: SendOne,
        *,
        write_now: WriteNow | None = None,
        stalled: Callable[[], CallEnded],
    ) -> None:
        self.name = name
        self._send = send
        self._write_now = write_now
        self._stalled = stalled
        self._queue: collections.deque[tuple[tuple[str, ...], Kind]] = collections.deque()
        self._in_flight = False
        self._wake = asyncio.Event()
        self._drained = asyncio.Event()
        self._drained.set()

    @property
    def backlog(self) -> int:
        """Batches queued or being sent: 0 means a write now goes straight to the socket."""
        return len(self._queue) + self._in_flight

    def write(self, texts: tuple[str, ...], kind: Kind = Kind.CONTROL) -> None:
        """Send `texts` after everything written before; never waits."""
        if not self._queue and not self._in_flight:
            if self._write_now is not None and self._write_now(texts):
                return
        elif kind is Kind.CLEAR:
            kept = [batch for batch in self._queue if batch[1] is not Kind.AUDIO]
            self._queue.clear()
            self._queue.extend(kept)
        self._queue.append((texts, kind))
        self._drained.clear()
        self._wake.set()

    async def drained(self) -> None:
        """Wait until nothing is queued (the writer's task ends the call if the peer stalls)."""
        await self._drained.wait()

    async def run(self) -> None:
        """The writer's task: sends queued batches in order until cancelled."""
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._queue:
                texts, _ = self._queue.popleft()
                self._in_flight = True
                try:
                    await self._send_batch(texts)
                finally:
                    self._in_flight = False
            self._drained.set()

    async def flush(self) -> None:
        """Send what is queued once the writer's task has ended (a stalled peer: dropped)."""
        try:
            while self._queue:
                await self._send_batch(self._queue.popleft()[0])
        except CallEnded:
            self._queue.clear()
        self._drained.set()

    async def _send_batch(self, texts: tuple[str, ...]) -> None:
        try:
            async with asyncio.timeout(SEND_TIMEOUT):
                for text in texts:
                    await self._send(text)
        except TimeoutError:
            raise self._stalled() from None
