"""Barge-in: what the caller has actually heard, and what to do when they talk over the assistant.

Sans-I/O. `Playback` follows every chunk of assistant audio sent to Twilio with a `mark`; Twilio
echoes a mark when its playback reaches it, so echoes measure what was *played*, not merely sent.
Between echoes the played amount is interpolated on the wall clock and clamped to what was sent.
On `speech_started` the call asks `interrupt()` for a plan: clear Twilio's buffer, truncate each
unheard item at the heard millisecond, cancel the response if one is running, drop late deltas.
Only the last few items are remembered (and any still playing), so a long call holds no more
than a short one.
"""

from __future__ import annotations

import collections
import dataclasses

BYTES_PER_MS = 8  # mu-law at 8 kHz: one byte per sample
# Items remembered: far more than are ever in play (the one being produced, those still playing).
KEEP_ITEMS = 8


@dataclasses.dataclass(slots=True)
class _Chunk:
    mark: str
    item_id: str
    through: int  # bytes of this item sent up to and including this chunk
    sent_at: float


@dataclasses.dataclass(frozen=True, slots=True)
class Truncation:
    item_id: str
    audio_end_ms: int


@dataclasses.dataclass(frozen=True, slots=True)
class Interruption:
    """What the call must do now, in this order: clear, truncate each item, maybe cancel."""

    clear: bool
    truncations: tuple[Truncation, ...]
    cancel: bool


class Playback:
    """Tracks assistant audio from the moment it is sent until Twilio has played it."""

    def __init__(self, *, lead_ms: float = 0.0) -> None:
        # lead_ms: how far the caller-side stream runs ahead of the model's item clock (the
        # resampler's delay), subtracted when converting heard bytes to item milliseconds.
        self._lead_ms = lead_ms
        self._pending: collections.deque[_Chunk] = collections.deque()
        self._sent: dict[str, int] = {}
        self._heard: dict[str, int] = {}
        self._model_ms: dict[str, float] = {}
        self._items: dict[str, None] = {}  # items remembered, oldest first
        self._last_echo_at = 0.0
        self._seq = 0

    @property
    def playing(self) -> bool:
        """True while Twilio still holds audio we sent (some mark not yet echoed)."""
        return bool(self._pending)

    @property
    def pending_marks(self) -> int:
        return len(self._pending)

    def received(self, item_id: str, model_ms: float) -> None:
        """Record audio the model produced for an item: the ceiling for any truncation."""
        if item_id not in self._items:
            self._remember(item_id)
        self._model_ms[item_id] = self._model_ms.get(item_id, 0.0) + model_ms

    def sent(self, item_id: str, nbytes: int, now: float) -> str:
        """Record a chunk sent to Twilio; returns the name of the mark to send after it."""
        if item_id not in self._items:
            self._remember(item_id)
        self._seq += 1
        through = self._sent.get(item_id, 0) + nbytes
        self._sent[item_id] = through
        name = f"{item_id}:{self._seq}"
        self._pending.append(_Chunk(name, item_id, through, now))
        return name

    def _remember(self, item_id: str) -> None:
        """A new item; past `KEEP_ITEMS`, the oldest ones no longer playing are forgotten."""
        items = self._items
        items[item_id] = None
        if len(items) <= KEEP_ITEMS:
            return
        playing = {chunk.item_id for chunk in self._pending}
        for old in list(items):
            if len(items) <= KEEP_ITEMS:
                break
            if old != item_id and old not in playing:
                del items[old]
                self._sent.pop(old, None)
                self._heard.pop(old, None)
                self._model_ms.pop(old, None)

    def echoed(self, name: str, now: float) -> str | None:
        """A mark came back: returns its item, or None for marks we no longer wait for
        (the echoes Twilio sends for a clear)."""
        if not any(chunk.mark == name for chunk in self._pending):
            return None
        while self._pending:
            chunk = self._pending.popleft()
            self._heard[chunk.item_id] = chunk.through
            if chunk.mark == name:
                break
        self._last_echo_at = now
        return chunk.item_id

    def remaining_seconds(self, now: float) -> float:
        """How long Twilio will still be playing what we sent (0 when idle)."""
        last_through: dict[str, int] = {}
        for chunk in self._pending:
            last_through[chunk.item_id] = chunk.through
        left = sum(through - self.heard_bytes(item, now) for item, through in last_through.items())
        return max(0, left) / (BYTES_PER_MS * 1000)

    def heard_bytes(self, item_id: str, now: float) -> int:
        """Bytes of `item_id` the caller has heard by `now`: echoed, plus elapsed play time."""
        heard = self._heard.get(item_id, 0)
        if self._pending and self._pending[0].item_id == item_id:
            head = self._pending[0]
            started = max(self._last_echo_at, head.sent_at)
            elapsed = max(0.0, now - started) * 1000.0 * BYTES_PER_MS
            heard = min(head.through, heard + round(elapsed))
        return heard

    def heard_ms(self, item_id: str, now: float) -> int:
        """Milliseconds of the item's own audio heard, clamped to what the model produced."""
        ms = self.heard_bytes(item_id, now) / BYTES_PER_MS - self._lead_ms
        ceiling = self._model_ms.get(item_id, 0.0)
        return int(max(0.0, min(ms, ceiling)))

    def interrupt(
        self, now: float, *, response_active: bool, current_item: str | None
    ) -> Interruption:
        """Plan a barge-in and forget the pending playback (Twilio is about to drop it)."""
        items: list[str] = []
        for chunk in self._pending:
            if chunk.item_id not in items:
                items.append(chunk.item_id)
        # A response still generating may hold audio the caller never got; cut that too.
        if response_active and current_item in self._model_ms and current_item not in items:
            items.append(current_item)
        truncations = tuple(Truncation(item, self.heard_ms(item, now)) for item in items)
        clear = self.playing
        for item in items:
            self._heard[item] = self.heard_bytes(item, now)
        self._pending.clear()
        return Interruption(clear=clear, truncations=truncations, cancel=response_active)
