"""The background writer: call records reach the database off the audio path.

Recorder callbacks only mark what changed (the call, a turn, a tool call, new events, a Twilio
status) in a bounded table of pending work keyed by call SID. One task writes the changes in
batches, snapshotting each record as it writes it, so a transcript that grows by a hundred
deltas costs one row update, not a hundred. The pending table holds each changed turn, tool
call and event (with its place in the call) until it is written: the live record keeps only
its most recent ones (`bridge.record.History`). Writes are idempotent upserts: a failed batch stays
pending and is retried with backoff; a finished call that still cannot be written after
`retry_window` seconds is logged at ERROR with its SID and dropped. `close()` flushes what is
pending, bounded by `flush_timeout`. A finished call with a webhook URL gets its post-call
webhook queued (bridge/webhooks/outbox.py) in the transaction that writes its final row.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from bridge.logs import mask_number
from bridge.record import CallEvent, CallRecord, ToolCall, Turn
from bridge.store import rows
from bridge.store.database import describe
from bridge.store.pricing import PriceTable
from bridge.store.statements import Statements
from bridge.webhooks import outbox

logger = logging.getLogger(__name__)

RETRY_MIN = 0.25
RETRY_MAX = 5.0


class CannotConnect(Exception):
    """No connection to the database could be had (down, refusing, unreachable)."""


@dataclasses.dataclass(slots=True)
class _Pending:
    """What is not yet in the database for one call."""

    call_sid: str
    record: CallRecord | None = None
    call: bool = False  # the call row
    # item_id / call_id -> (seq, the object): its row is written from the object as it is then
    turns: dict[str, tuple[int, Turn]] = dataclasses.field(default_factory=dict)
    tool_calls: dict[str, tuple[int, ToolCall]] = dataclasses.field(default_factory=dict)
    events: list[tuple[int, CallEvent]] = dataclasses.field(default_factory=list)  # (seq, event)
    statuses: list[tuple[dict[str, Any], dict[str, Any]]] = dataclasses.field(default_factory=list)
    final: bool = False  # call_ended seen: the record will not change again
    failing_since: float | None = None

    @property
    def dirty(self) -> bool:
        return (
            self.call
            or bool(self.turns)
            or bool(self.tool_calls)
            or bool(self.events)
            or bool(self.statuses)
        )

    @property
    def finished(self) -> bool:
        return self.final or self.record is None


@dataclasses.dataclass(slots=True)
class _Snapshot:
    """One call's share of a write, taken synchronously so it is consistent."""

    entry: _Pending
    calls: list[dict[str, Any]]
    turns: list[dict[str, Any]]
    tool_calls: list[dict[str, Any]]
    events: list[dict[str, Any]]
    statuses: list[tuple[dict[str, Any], dict[str, Any]]]
    taken_call: bool
    taken_turns: dict[str, tuple[int, Turn]]
    taken_tool_calls: dict[str, tuple[int, ToolCall]]
    taken_events: list[tuple[int, CallEvent]]
    webhooks: list[dict[str, Any]] = dataclasses.field(default_factory=list)  # outbox rows


@dataclasses.dataclass(slots=True)
class WriterStats:
    batches: int = 0
    failures: int = 0
    dropped: int = 0  # records given up on (logged at ERROR)


class Writer:
    """Owns the pending table and the task that drains it into the database."""

    def __init__(
        self,
        engine: AsyncEngine,
        prices: PriceTable,
        instance: str,
        *,
        max_pending: int = 10_000,
        batch_delay: float = 0.2,
        batch_calls: int = 100,
        retry_window: float = 300.0,
        write_timeout: float = 15.0,
    ) -> None:
        self.engine = engine
        self.prices = prices
        self.instance = instance
        self.max_pending = max_pending
        self.batch_delay = batch_delay
        self.batch_calls = batch_calls
        self.retry_window = retry_window
        self.write_timeout = write_timeout
        self.stats = WriterStats()
        self._pending: dict[str, _Pending] = {}
        self._writing: set[str] = set()  # call SIDs of the batch in flight
        self._statements = Statements(engine.dialect.name)
        self._wake = asyncio.Event()
        self._closed = asyncio.Event()
        self._closing = False
        self._outage = False
        # Called after a commit that queued post-call webhooks (the sender's wake-up).
        self.on_webhook: Callable[[], None] = _nothing

    # ---- marking (sync, on the event loop; never blocks) ---------------------------------------

    def call_changed(self, record: CallRecord, *, final: bool = False) -> None:
        entry = self._entry(record.call_sid, record)
        if entry is not None:
            entry.call = True
            entry.final = entry.final or final

    def turn_changed(self, record: CallRecord, turn: Turn) -> None:
        """A turn began or changed: held here (with its place in the call) until written."""
        entry = self._entry(record.call_sid, record)
        if entry is not None and turn.item_id not in entry.turns:
            seq = record.turns.seq(turn)
            if seq is None:
                logger.warning("turn %s changed after the record let it go", turn.item_id)
            else:
                entry.turns[turn.item_id] = (seq, turn)

    def tool_call_changed(self, record: CallRecord, tool_call: ToolCall) -> None:
        entry = self._entry(record.call_sid, record)
        if entry is not None and tool_call.call_id not in entry.tool_calls:
            seq = record.tool_calls.seq(tool_call)
            if seq is None:
                logger.warning("tool call %s changed after the record let it go", tool_call.call_id)
            else:
                entry.tool_calls[tool_call.call_id] = (seq, tool_call)

    def event_added(self, record: CallRecord, event: CallEvent) -> None:
        """An event was appended to the record: held here until written."""
        entry = self._entry(record.call_sid, record)
        if entry is not None:
            seq = record.events.seq(event)
            if seq is None:
                logger.warning("event %s reported after the record let it go", event.kind)
            else:
                entry.events.append((seq, event))

    def status(self, call_sid: str, status: str, params: Mapping[str, str]) -> None:
        entry = self._entry(call_sid, None)
        if entry is not None:
            entry.statuses.append(rows.status_rows(call_sid, status, params, time.time()))

    def _entry(self, call_sid: str, record: CallRecord | None) -> _Pending | None:
        if not call_sid:
            return None
        entry = self._pending.get(call_sid)
        if entry is None:
            if len(self._pending) >= self.max_pending and not self._evict():
                logger.error("call log full: not recording call %s", call_sid)
                return None
            entry = self._pending[call_sid] = _Pending(call_sid)
        if record is not None:
            entry.record = record
        self._wake.set()
        return entry

    def _evict(self) -> bool:
        """Make room by dropping the oldest finished record (the database is long gone)."""
        for entry in self._pending.values():
            if entry.finished:
                self._drop(entry, "the pending table is full")
                return True
        return False

    def is_pending(self, call_sid: str) -> bool:
        """Whether the call has changes that are not in the database yet."""
        entry = self._pending.get(call_sid)
        return call_sid in self._writing or (entry is not None and entry.dirty)

    @property
    def pending(self) -> int:
        """Calls with changes not yet in the database (including the batch being written)."""
        dirty = {entry.call_sid for entry in self._pending.values() if entry.dirty}
        return len(dirty | self._writing)

    # ---- the task ------------------------------------------------------------------------------

    async def run(self) -> None:
        """Write until closed and drained; failed rounds back off up to RETRY_MAX."""
        delay = RETRY_MIN
        while True:
            if not any(entry.dirty for entry in self._pending.values()):
                if self._closing:
                    return
                self._wake.clear()
                await self._wake.wait()
            await self._pause(self.batch_delay)  # let changes gather into one batch
            if await self._write_round():
                delay = RETRY_MIN
                continue
            self._expire()
            await asyncio.sleep(delay)
            delay = min(delay * 2, RETRY_MAX)

    async def _pause(self, seconds: float) -> None:
        """Sleep, cut short by close(): shutdown writes at once."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await self._closed.wait()

    def close(self) -> None:
        """Stop waiting for new work; `run` returns once everything pending is written."""
        self._closing = True
        self._closed.set()
        self._wake.set()

    def abandon(self) -> None:
        """Shutdown ran out of time: log every record that never reached the database."""
        for entry in list(self._pending.values()):
            if entry.dirty or entry.call_sid in self._writing:
                self._drop(entry, "shutdown came before the database did")
        self._pending.clear()

    async def _write_round(self) -> bool:
        batch = [entry for entry in self._pending.values() if entry.dirty][: self.batch_calls]
        if not batch:
            return True
        try:
            await self._commit(batch)
        except Exception as exc:  # the writer's log-and-contain boundary: calls must go on
            if len(batch) == 1 or _unavailable(exc):
                self._failed(batch, exc)
                return False
            # Not an outage: one bad record must not hold the others back.
            ok = True
            for entry in batch:
                try:
                    await self._commit([entry])
                except Exception as single:
                    self._failed([entry], single)
                    ok = False
            return ok
        return True

    async def _commit(self, batch: list[_Pending]) -> None:
        snaps = [self._snapshot(entry) for entry in batch]
        self._writing = {entry.call_sid for entry in batch}
        try:
            async with asyncio.timeout(self.write_timeout):
                try:
                    connection = await self.engine.connect()
                except Exception as exc:  # drivers differ in what they raise on connect
                    raise CannotConnect(describe(exc)) from exc
                try:
                    async with connection.begin():
                        await self._execute(connection, snaps)
                finally:
                    await connection.close()
        except BaseException:
            for snap in snaps:
                _restore(snap)
            raise
        finally:
            self._writing = set()
        self.stats.batches += 1
        if self._outage:
            self._outage = False
            logger.warning("call log database is back; writing pending records")
        if any(snap.webhooks for snap in snaps):
            self.on_webhook()
        for snap in snaps:
            entry = snap.entry
            entry.failing_since = None
            if entry.finished and not entry.dirty:
                self._pending.pop(entry.call_sid, None)

    async def _execute(self, connection: Any, snaps: list[_Snapshot]) -> None:
        statements = self._statements
        calls = [row for snap in snaps for row in snap.calls]
        statuses = [status for snap in snaps for status in snap.statuses]
        turns = [row for snap in snaps for row in snap.turns]
        tool_calls = [row for snap in snaps for row in snap.tool_calls]
        events = [row for snap in snaps for row in snap.events]
        if calls:
            await connection.execute(statements.upsert_call, calls)
        webhooks = [row for snap in snaps for row in snap.webhooks]
        if webhooks:  # once per call: a call that has a delivery gets no second one
            await outbox.enqueue_first(connection, webhooks)
        if statuses:
            await connection.execute(statements.upsert_status, [call for call, _ in statuses])
            await connection.execute(statements.insert_event, [event for _, event in statuses])
        if turns:
            await connection.execute(statements.upsert_turn, turns)
        if tool_calls:
            await connection.execute(statements.upsert_tool_call, tool_calls)
        if events:
            await connection.execute(statements.insert_record_event, events)

    def _snapshot(self, entry: _Pending) -> _Snapshot:
        record = entry.record
        snap = _Snapshot(
            entry, [], [], [], [], entry.statuses, entry.call, entry.turns, entry.tool_calls, []
        )
        entry.statuses = []
        if record is not None:
            if entry.call:
                snap.calls.append(rows.call_row(record, self.prices, self.instance))
                if entry.final and record.end_reason is not None and record.webhook_url:
                    snap.webhooks.append(
                        outbox.enqueue_row(record.call_sid, record.webhook_url, time.time())
                    )
            snap.turns = [
                rows.turn_row(record, seq, turn)
                for seq, turn in sorted(entry.turns.values(), key=_seq)
            ]
            snap.tool_calls = [
                rows.tool_call_row(record, seq, tool_call)
                for seq, tool_call in sorted(entry.tool_calls.values(), key=_seq)
            ]
            snap.events = [rows.event_row(record, seq, event) for seq, event in entry.events]
            snap.taken_events, entry.events = entry.events, []
        entry.turns, entry.tool_calls = {}, {}
        entry.call = False
        return snap

    def _failed(self, batch: list[_Pending], exc: BaseException) -> None:
        self.stats.failures += 1
        now = asyncio.get_running_loop().time()
        for entry in batch:
            if entry.failing_since is None:
                entry.failing_since = now
        if not self._outage:
            self._outage = True
            if _unavailable(exc):
                logger.warning(
                    "call log database unavailable (%s); %d calls pending, retrying",
                    describe(exc),
                    self.pending,
                )
            else:
                logger.error("call log write failed; retrying", exc_info=exc)

    def _expire(self) -> None:
        now = asyncio.get_running_loop().time()
        for entry in list(self._pending.values()):
            since = entry.failing_since
            if entry.finished and since is not None and now - since > self.retry_window:
                self._drop(entry, f"writes failed for {now - since:.0f}s")

    def _drop(self, entry: _Pending, why: str) -> None:
        call_sid = entry.call_sid
        self._pending.pop(call_sid, None)
        self.stats.dropped += 1
        record = entry.record
        if record is None:
            summary = f"{len(entry.statuses)} Twilio status callbacks"
        else:
            summary = (
                f"from {mask_number(record.from_number)} to {mask_number(record.to_number)}, "
                f"end_reason={record.end_reason}, {record.duration:.1f}s, "
                f"{record.turns.total} turns, {record.tool_calls.total} tool calls, "
                f"{record.events.total} events"
            )
        logger.error("call log: record of call %s lost (%s): %s", call_sid, why, summary)


def _restore(snap: _Snapshot) -> None:
    entry = snap.entry
    entry.call = entry.call or snap.taken_call
    entry.turns = snap.taken_turns | entry.turns
    entry.tool_calls = snap.taken_tool_calls | entry.tool_calls
    entry.events = snap.taken_events + entry.events
    entry.statuses = snap.statuses + entry.statuses


def _nothing() -> None:
    pass


def _seq(pending: tuple[int, object]) -> int:
    return pending[0]


def _unavailable(exc: BaseException) -> bool:
    """Connectivity trouble (retry the batch as a whole), as opposed to a bad row."""
    if isinstance(exc, CannotConnect | sa.exc.OperationalError | sa.exc.InterfaceError):
        return True
    if isinstance(exc, sa.exc.DBAPIError) and exc.connection_invalidated:
        return True
    return isinstance(exc, OSError | TimeoutError | sa.exc.TimeoutError)
