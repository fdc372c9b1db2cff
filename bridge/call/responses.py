"""The model's responses as a call sees them: at most one runs, ours wait their turn.

Sans-I/O. The Realtime service refuses a `response.create` while a response runs
(`conversation_already_has_active_response`), so the bridge queues its own requests behind the
running one, and puts back a request that collided with a response the service started on its
own (server VAD). Responses a barge-in cancelled are remembered, so their late deltas are dropped.
"""

from __future__ import annotations

import collections
from typing import Any

RECENT_CREATES = 16  # requests remembered for matching an error to the create that caused it
# A request neither started nor refused by then is given up, so the queue behind it moves on.
ANSWER_TIMEOUT = 10.0


class Responses:
    """Which response runs, which of ours wait, and which were dropped."""

    __slots__ = ("_echoes", "_in_flight", "_queued", "_recent", "active", "dropped", "response_id")

    def __init__(self) -> None:
        self.active = False
        self.response_id: str | None = None
        self.dropped: set[str] = set()
        self._queued: collections.deque[dict[str, Any]] = collections.deque()
        self._recent: dict[str, dict[str, Any]] = {}
        # Creates sent whose `response.created` has not arrived yet, oldest first: when each
        # is given up.
        self._in_flight: dict[str, float] = {}
        self._echoes = False  # the service echoes our request ids in response metadata

    @property
    def idle(self) -> bool:
        """Nothing runs, nothing of ours is on its way or waiting."""
        return not self.active and not self._queued and not self._in_flight

    def request(self, create: dict[str, Any], now: float) -> dict[str, Any] | None:
        """A `response.create` we want sent: returned if it may go now, else queued."""
        self._recent[create["event_id"]] = create
        if len(self._recent) > RECENT_CREATES:
            self._recent.pop(next(iter(self._recent)))
        self._queued.append(create)
        return self._next(now)

    def created(self, response_id: str, request: str | None) -> bool:
        """`response.created`: True if it answers one of our requests (else the service's own,
        e.g. server VAD's). `request` is the create's `event_id` the service echoed in the
        response's metadata. Until the service has echoed one, a response without it is taken
        to answer the oldest request in flight; after that, a response without it is not ours."""
        self.active = True
        self.response_id = response_id
        if request is not None:
            self._echoes = True
            if request in self._in_flight:
                del self._in_flight[request]
                return True
            return False
        if self._in_flight and not self._echoes:
            del self._in_flight[next(iter(self._in_flight))]
            return True
        return False

    def done(self, response_id: str, now: float) -> dict[str, Any] | None:
        """`response.done`: the next queued request to send now, if any."""
        self.active = False
        self.response_id = None
        self.dropped.discard(response_id)
        return self._next(now)

    def refused(self, event_id: str | None, now: float, *, conflict: bool) -> dict[str, Any] | None:
        """An error answered one of our requests. A conflict is queued again behind the running
        response; the next queued request is returned if it may go now."""
        create = self._recent.pop(event_id or "", None)
        if create is None:
            return None
        self._in_flight.pop(create["event_id"], None)
        if conflict:
            self._queued.appendleft(create)
        return self._next(now)

    def expire(self, now: float) -> tuple[list[str], dict[str, Any] | None]:
        """Requests unanswered for `ANSWER_TIMEOUT` are given up: their ids, and the next
        queued request to send now, if any."""
        expired = [event_id for event_id, until in self._in_flight.items() if until <= now]
        for event_id in expired:
            del self._in_flight[event_id]
        return expired, self._next(now) if expired else None

    def is_ours(self, event_id: str | None) -> bool:
        return (event_id or "") in self._recent

    def drop_running(self) -> bool:
        """A barge-in stops the running response: its late deltas are dropped from now on.
        True if there is a response to cancel."""
        if not self.active or self.response_id is None:
            return False
        self.dropped.add(self.response_id)
        return True

    def _next(self, now: float) -> dict[str, Any] | None:
        if self.active or self._in_flight or not self._queued:
            return None
        create = self._queued.popleft()
        self._in_flight[create["event_id"]] = now + ANSWER_TIMEOUT
        return create
