"""What the Realtime simulator saw on one connection, with awaitable waits for tests.

`SimSession` is the record tests read; the live state is its `RealtimeSessionState`.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any, NamedTuple

from bridge.sim.realtime_config import SessionPlan
from bridge.sim.realtime_response import Item
from bridge.sim.realtime_session import RealtimeSessionState

__all__ = ["ConversationItem", "SessionClosed", "SimSession"]


class SessionClosed(Exception):
    """The session ended before the awaited event happened."""


class _EventLog:
    """Timestamped events in order, with waiters woken by type and count (no polling)."""

    def __init__(self) -> None:
        self.entries: list[tuple[float, dict[str, Any]]] = []
        self._counts: dict[str, int] = {}
        self._waiters: list[tuple[str, int, asyncio.Future[dict[str, Any]]]] = []
        self._closed = False

    def append(self, event: dict[str, Any]) -> None:
        self.entries.append((time.monotonic(), event))
        kind = str(event.get("type"))
        count = self._counts[kind] = self._counts.get(kind, 0) + 1
        for waiter in self._waiters:
            if waiter[0] == kind and waiter[1] == count and not waiter[2].done():
                waiter[2].set_result(event)

    def of_type(self, kind: str) -> list[dict[str, Any]]:
        return [event for _, event in self.entries if event.get("type") == kind]

    async def wait_for(self, kind: str, count: int, timeout: float) -> dict[str, Any]:
        matching = self.of_type(kind)
        if len(matching) >= count:
            return matching[count - 1]
        if self._closed:
            raise SessionClosed(f"session closed after {len(matching)} of {count} {kind!r}")
        waiter = (kind, count, asyncio.get_running_loop().create_future())
        self._waiters.append(waiter)
        try:
            async with asyncio.timeout(timeout):
                event: dict[str, Any] = await waiter[2]
                return event
        finally:
            self._waiters.remove(waiter)

    def close(self) -> None:
        self._closed = True
        for kind, count, future in self._waiters:
            if not future.done():
                future.set_exception(SessionClosed(f"session closed before {count} {kind!r}"))


class ConversationItem(NamedTuple):
    """One item of a session's conversation: `type`, `role` (None for tool items), `content`."""

    type: str
    role: str | None
    content: list[dict[str, Any]]

    @property
    def text(self) -> str:
        """The item's words: its content parts' `text` and `transcript`, joined by spaces."""
        words = (part.get("text") or part.get("transcript") or "" for part in self.content)
        return " ".join(word for word in words if word)


class SimSession:
    """What one accepted connection did: handshake, events both ways, audio, conversation."""

    def __init__(
        self,
        path: str,
        headers: dict[str, str],
        query: dict[str, str],
        state: RealtimeSessionState,
        plan: SessionPlan | None = None,
    ) -> None:
        self.path = path
        self.headers = headers  # lower-case names
        self.query = query
        self.state = state
        self.plan = plan or SessionPlan(0, state.mode, max_seconds=state.max_seconds)
        self.accepted_at = time.monotonic()
        self.closed = asyncio.Event()
        self.close_code: int | None = None
        self.closed_at: float | None = None  # time.monotonic() when the connection ended
        self._received = _EventLog()
        self._sent = _EventLog()

    @property
    def received(self) -> list[tuple[float, dict[str, Any]]]:
        """`(time.monotonic(), event)` for every client event, in order (bad JSON: `_raw`)."""
        return self._received.entries

    @property
    def sent(self) -> list[tuple[float, dict[str, Any]]]:
        """Every server event sent; audio deltas also carry `audio_bytes` (decoded length)."""
        return self._sent.entries

    @property
    def session(self) -> dict[str, Any]:
        """The current effective session configuration."""
        return self.state.session

    @property
    def input_audio(self) -> bytearray:
        """All appended input audio as PCM16LE 24 kHz (G.711 input decoded and upsampled ×3)."""
        return self.state.input.pcm24

    @property
    def input_ulaw(self) -> bytearray:
        """The raw appended bytes of an `audio/pcmu` session, as received."""
        return self.state.input.ulaw

    @property
    def truncations(self) -> list[dict[str, Any]]:
        """Accepted truncations: item_id, content_index, audio_end_ms, audio_ms_before, time."""
        return self.state.truncations

    @property
    def items(self) -> dict[str, Item]:
        """The conversation as the server holds it, in order."""
        return self.state.items

    @property
    def instructions_received(self) -> list[str]:
        """The `session.instructions` of every `session.update` that carried them, in order."""
        out: list[str] = []
        for event in self._received.of_type("session.update"):
            update = event.get("session")
            if isinstance(update, dict) and isinstance(update.get("instructions"), str):
                out.append(update["instructions"])
        return out

    def conversation_items(self) -> list[ConversationItem]:
        """The conversation as the server holds it now (after the session: at its end)."""
        return [
            ConversationItem(item.type, item.role, [dict(part) for part in item.content])
            for item in self.state.items.values()
        ]

    def events_received(self, type_: str) -> list[dict[str, Any]]:
        """Client events of `type_`, in order."""
        return self._received.of_type(type_)

    def events_sent(self, type_: str) -> list[dict[str, Any]]:
        """Server events of `type_`, in order."""
        return self._sent.of_type(type_)

    async def wait_for_sent(
        self, type_: str, count: int = 1, timeout: float = 5.0
    ) -> dict[str, Any]:
        """The `count`-th server event of `type_` (`TimeoutError`; `SessionClosed` if it ended)."""
        return await self._sent.wait_for(type_, count, timeout)

    async def wait_for_received(
        self, type_: str, count: int = 1, timeout: float = 5.0
    ) -> dict[str, Any]:
        """The `count`-th client event of `type_` (`TimeoutError`; `SessionClosed` if it ended)."""
        return await self._received.wait_for(type_, count, timeout)

    # Called by the binding (realtime_server) only.

    def _log_received(self, event: dict[str, Any]) -> None:
        self._received.append(event)

    def _log_sent(self, event: dict[str, Any]) -> None:
        self._sent.append(event)

    def _mark_closed(self, code: int | None) -> None:
        if self.close_code is None:
            self.close_code = code
        if self.closed_at is None:
            self.closed_at = time.monotonic()
        self._received.close()
        self._sent.close()
        self.closed.set()
