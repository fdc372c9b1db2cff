"""Call log test harness: both database backends, a real database outage, a bridge with a log.

The helpers here are shared by the test_store*, test_api*, test_live*, test_dashboard* and
test_calls* modules; the tests at the bottom check the harness itself (an outage must really
stop writes, or the outage tests would prove nothing).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import asyncpg
import numpy as np
import pytest
import sqlalchemy as sa
from sqlalchemy.engine import make_url

from bridge.app import create_app
from bridge.record import FanOutRecorder, MemoryRecorder
from bridge.server import serving
from bridge.sim.realtime_server import RealtimeSimulator
from bridge.sim.signals import silence, tone
from bridge.store import CallLog, PriceTable
from bridge.store.database import create_engine, upgrade_url
from bridge.store.queries import CallDetail, get_call
from bridge.web import admin_routes
from tests.conftest import RunningBridge, make_settings

BACKENDS = ["sqlite", "postgresql"]
PG_ADMIN = os.environ.get("BRIDGE_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test")
TOKEN = "test-admin-token-0123456789"
RATE_IN = 8000
RATE_MODEL = 24000
PRICES = PriceTable.parse(
    {
        "models": {
            "gpt-realtime": {
                "text_input": 4.0,
                "cached_text_input": 0.4,
                "audio_input": 32.0,
                "cached_audio_input": 0.4,
                "text_output": 16.0,
                "audio_output": 64.0,
            }
        }
    }
)


async def _admin() -> Any:
    try:
        return await asyncpg.connect(PG_ADMIN, timeout=3)
    except (OSError, TimeoutError, asyncpg.PostgresError) as exc:
        pytest.skip(f"PostgreSQL not answering at {PG_ADMIN}: {exc!r}")


@contextlib.asynccontextmanager
async def database(backend: str, tmp_path: Path) -> AsyncIterator[str]:
    """A fresh, migrated database: a SQLite file, or a PostgreSQL database of our own."""
    if backend == "sqlite":
        url = f"sqlite+aiosqlite:///{tmp_path / 'bridge.db'}"
        await upgrade_url(url)
        yield url
        return
    admin = await _admin()
    name = f"bridge_test_{os.urandom(6).hex()}"
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
        url = str(make_url(PG_ADMIN).set(drivername="postgresql+asyncpg", database=name))
        await upgrade_url(url)
        yield url
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


@contextlib.asynccontextmanager
async def outage(url: str) -> AsyncIterator[None]:
    """The database stops taking writes until the block exits.

    SQLite: another process-level connection holds the write lock. PostgreSQL: the database
    refuses new connections and every open one (pool, relay) is terminated.
    """
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        assert parsed.database is not None
        lock = sqlite3.connect(parsed.database, timeout=10, check_same_thread=False)
        await asyncio.to_thread(lock.execute, "BEGIN EXCLUSIVE")
        try:
            yield
        finally:
            await asyncio.to_thread(lock.commit)
            lock.close()
        return
    admin = await _admin()
    name = parsed.database
    try:
        await admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false')
        await admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1", name
        )
        yield
    finally:
        await admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')
        await admin.close()


# Hands every recorder call to several recorders (the in-memory one is the reference).
Tee = FanOutRecorder


@dataclasses.dataclass
class LoggedBridge:
    """A running bridge whose recorder is the call log (teed with a MemoryRecorder)."""

    bridge: RunningBridge
    call_log: CallLog

    @property
    def base(self) -> str:
        return self.bridge.base

    async def stored(self, call_sid: str, timeout: float = 10.0) -> CallDetail:
        """The call as the database holds it once finalised and nothing is pending."""
        await self.bridge.finished(call_sid, timeout)
        async with asyncio.timeout(timeout):
            while True:
                if not self.call_log.writer.is_pending(call_sid):
                    detail = await get_call(self.call_log.engine, call_sid)
                    if detail is not None and detail.call["ended_at"] is not None:
                        return detail
                await asyncio.sleep(0.05)


@contextlib.asynccontextmanager
async def logged_bridge(
    simulator: RealtimeSimulator,
    url: str,
    *,
    token: str | None = TOKEN,
    stream_seconds: float = 10.0,
    **log_options: Any,
) -> AsyncIterator[LoggedBridge]:
    options: dict[str, Any] = {"batch_delay": 0.05, "heartbeat": 0.5, "prices": PRICES}
    options.update(log_options)
    call_log = CallLog(url, **options)
    memory = MemoryRecorder()
    settings = make_settings(simulator, admin_token=token)
    app = create_app(
        settings,
        recorder=Tee(memory, call_log.recorder),
        routes=admin_routes(settings, call_log, stream_seconds=stream_seconds),
    )
    bridge = app.state.bridge
    if bridge.signatures is not None:  # as `bridge serve` does
        bridge.signatures.ledger = call_log.stream_tokens
    async with call_log, serving(app) as base:
        yield LoggedBridge(RunningBridge(base, app, memory, settings), call_log)


def utterance(seconds: float = 0.6, freq: float = 440.0) -> np.ndarray:
    """Heard as speech by the simulator's VAD, followed by enough silence to end the turn."""
    return np.concatenate([tone(freq, seconds, RATE_IN, 0.4), silence(0.8, RATE_IN)])


async def call_with_barge_in(
    logged: LoggedBridge, simulator: RealtimeSimulator
) -> tuple[str, dict[str, Any]]:
    """One call: the caller speaks, talks over the 3 s reply after ~1 s, hears the next reply.

    Returns the call SID and the `conversation.item.truncate` the bridge sent.
    """
    simulator.config.speedup = 5.0  # like the real model: the transcript runs ahead of playback
    simulator.config.replies = (
        "Our opening hours are nine in the morning until six in the evening every weekday "
        "and ten until four on Saturdays and we are closed on Sundays and public holidays.",
        "Sure, go ahead.",
    )
    simulator.config.caller_transcripts = ("When are you open?", "Wait, one more thing.")
    simulator.config.reply_audio = lambda turn: tone(600, 3.0 if turn == 0 else 1.0, RATE_MODEL)
    async with logged.bridge.call() as caller:
        session = await simulator.wait_for_session()
        await caller.say_and_wait(utterance())
        await caller.wait_for_playback(1.0, timeout=10)
        caller.say(utterance(0.5, freq=300))
        truncate = await session.wait_for_received("conversation.item.truncate", timeout=5)
        await caller.wait_for_playback(0.8, timeout=10)
        await caller.wait_until_quiet(0.3, timeout=10)
        await caller.hangup()
    return caller.call_sid, truncate


async def until(
    condition: Callable[[], bool | Awaitable[bool]], timeout: float = 10.0, interval: float = 0.02
) -> None:
    """Wait for `condition` (sync or async) to hold; TimeoutError after `timeout` seconds."""
    async with asyncio.timeout(timeout):
        while True:
            outcome = condition()
            if outcome if isinstance(outcome, bool) else await outcome:
                return
            await asyncio.sleep(interval)


async def flushed(call_log: CallLog, timeout: float = 10.0) -> None:
    """Everything recorded so far is in the database."""
    await until(lambda: call_log.writer.pending == 0, timeout)


@pytest.fixture(params=BACKENDS)
async def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    async with database(request.param, tmp_path) as url:
        yield url


async def _can_write(url: str) -> bool:
    engine = create_engine(url)
    try:
        async with asyncio.timeout(8):
            async with engine.begin() as connection:
                await connection.execute(sa.text("CREATE TABLE IF NOT EXISTS probe (x INTEGER)"))
                await connection.execute(sa.text("INSERT INTO probe VALUES (1)"))
        return True
    except (sa.exc.SQLAlchemyError, OSError, TimeoutError):
        return False
    finally:
        await engine.dispose()


async def test_outage_really_stops_writes_and_ends_cleanly(db_url: str) -> None:
    assert await _can_write(db_url)
    async with outage(db_url):
        assert not await _can_write(db_url)
    assert await _can_write(db_url)
