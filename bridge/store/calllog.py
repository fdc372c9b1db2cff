"""The call log as one object: database, background writer, live feed, PostgreSQL relay, and
the state workers share through the database (used stream tokens, next steps).

`CallLog.recorder` is what the bridge hands its calls; `async with call_log:` prepares the
schema, runs the writer (and the relay) and, on the way out, flushes what is pending. Hold it
around the whole server run, so records of calls that end during the drain are still written.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
from collections.abc import Mapping
from types import TracebackType
from typing import Any

from bridge.record import CallEvent, CallRecord, ToolCall, Turn
from bridge.settings import Settings
from bridge.store.database import create_engine, is_sqlite, parse_url, prepare
from bridge.store.live import LiveFeed
from bridge.store.next_steps import StoredNextSteps
from bridge.store.pricing import PriceTable
from bridge.store.relay import PostgresRelay
from bridge.store.tokens import StreamTokenLedger
from bridge.store.writer import Writer


class StoreRecorder:
    """The `bridge.record.Recorder` of the call log: marks changes, tells the live feed."""

    def __init__(self, writer: Writer, feed: LiveFeed) -> None:
        self.writer = writer
        self.feed = feed

    def call_started(self, record: CallRecord) -> None:
        self.writer.call_changed(record)
        self.feed.call_started(record)

    def call_event(self, record: CallRecord, event: CallEvent) -> None:
        self.writer.call_changed(record)  # counters (barge_ins, errors) move with events
        self.writer.event_added(record, event)
        self.feed.call_event(record, event)

    def turn_updated(self, record: CallRecord, turn: Turn) -> None:
        self.writer.turn_changed(record, turn)
        self.feed.turn_updated(record, turn)

    def tool_call_updated(self, record: CallRecord, tool_call: ToolCall) -> None:
        self.writer.call_changed(record)  # the count, and the transfer a tool may have set
        self.writer.tool_call_changed(record, tool_call)
        self.feed.tool_call_updated(record, tool_call)

    def call_ended(self, record: CallRecord) -> None:
        self.writer.call_changed(record, final=True)
        self.feed.call_ended(record)

    def call_status(self, call_sid: str, status: str, params: Mapping[str, str]) -> None:
        self.writer.status(call_sid, status, params)


class CallLog:
    """Owns the engine and the tasks; construct anywhere, run with `async with`."""

    def __init__(
        self,
        database_url: str,
        *,
        prices: PriceTable | None = None,
        instance: str | None = None,
        retry_window: float = 300.0,
        flush_timeout: float = 10.0,
        batch_delay: float = 0.2,
        heartbeat: float = 5.0,
    ) -> None:
        self.url = parse_url(database_url)
        self.engine = create_engine(database_url)
        self.instance = instance or f"{socket.gethostname()}-{os.getpid()}-{os.urandom(2).hex()}"
        self.prices = prices if prices is not None else PriceTable({})
        self.flush_timeout = flush_timeout
        self.feed = LiveFeed(self.instance)
        self.writer = Writer(
            self.engine,
            self.prices,
            self.instance,
            retry_window=retry_window,
            batch_delay=batch_delay,
        )
        self.recorder = StoreRecorder(self.writer, self.feed)
        # Used Media Stream tokens, shared by every process on this database (single use).
        self.stream_tokens = StreamTokenLedger(self.engine, self.instance)
        # What Twilio does after each call's stream, for whichever worker it asks.
        self.next_steps = StoredNextSteps(self.engine, self.instance)
        self.relay: PostgresRelay | None = None
        if not is_sqlite(self.engine):
            self.relay = PostgresRelay(self.url, self.feed, heartbeat=heartbeat)
        self._stack: contextlib.AsyncExitStack | None = None
        self._writer_task: asyncio.Task[None] | None = None

    @classmethod
    def from_settings(cls, settings: Settings, **options: Any) -> CallLog:
        """From BRIDGE_DATABASE_URL and config/prices.toml; ConfigError if either is bad."""
        return cls(settings.database_url, prices=PriceTable.load(), **options)

    async def readiness(self) -> str | None:
        """For /readyz: a problem only when the backlog nears its bound.

        A database outage alone does not make the bridge unready: calls go on and records
        wait; taking every replica out of rotation because the shared database is down would
        turn a logging outage into a phone outage.
        """
        pending, limit = self.writer.pending, self.writer.max_pending
        if pending >= 0.9 * limit:
            return f"call log backlog {pending}/{limit} (database unavailable?)"
        return None

    async def __aenter__(self) -> CallLog:
        """Prepare the schema (ConfigError if PostgreSQL's is behind) and start the tasks."""
        try:
            await prepare(self.engine)
        except BaseException:
            await self.engine.dispose()
            raise
        stack = contextlib.AsyncExitStack()
        group = await stack.enter_async_context(asyncio.TaskGroup())
        self._writer_task = group.create_task(self.writer.run(), name="call-log-writer")
        if self.relay is not None:
            group.create_task(self.relay.run(), name="call-log-relay")
        self._stack = stack
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """End live streams, flush pending records (bounded), stop the tasks (idempotent)."""
        stack, self._stack = self._stack, None
        if stack is None:
            return
        self.feed.close()
        if self.relay is not None:
            self.relay.close()
        self.writer.close()
        task = self._writer_task
        if task is not None:
            done, _ = await asyncio.wait({task}, timeout=self.flush_timeout)
            if not done:
                self.writer.abandon()
                task.cancel()
        try:
            await stack.aclose()
        finally:
            await self.engine.dispose()
