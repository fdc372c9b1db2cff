"""The call log end to end, on SQLite and on PostgreSQL: simulated calls in, rows out."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from bridge.record import CallRecord, EndReason
from bridge.sim.analysis import active_segments
from bridge.sim.realtime_server import RealtimeSimulator
from bridge.store import CallLog
from bridge.store.queries import CallDetail, get_call
from tests.test_store_support import (
    BACKENDS,
    PRICES,
    RATE_IN,
    call_with_barge_in,
    database,
    flushed,
    logged_bridge,
    outage,
    until,
    utterance,
)


@pytest.fixture(params=BACKENDS)
async def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    async with database(request.param, tmp_path) as url:
        yield url


def assert_matches(detail: CallDetail, record: CallRecord) -> None:
    """The stored call says what the in-memory record says, field by field."""
    call = detail.call
    assert call["call_sid"] == record.call_sid
    assert call["stream_sid"] == record.stream_sid
    assert (call["from_number"], call["to_number"]) == (record.from_number, record.to_number)
    assert (call["profile"], call["model"], call["voice"]) == (
        record.profile,
        record.model,
        record.voice,
    )
    assert call["direction"] == record.direction
    assert call["started_at"] == pytest.approx(record.started_at, abs=1e-6)
    assert call["answered_at"] == pytest.approx(record.started_at, abs=1e-6)
    assert call["ended_at"] == pytest.approx(record.ended_at, abs=1e-6)
    assert call["duration_s"] == pytest.approx(record.duration, abs=0.002)
    assert call["end_reason"] == str(record.end_reason)
    assert (call["frames_in"], call["frames_out"]) == (record.frames_in, record.frames_out)
    assert call["barge_ins"] == record.barge_ins
    assert call["text_only_recoveries"] == record.text_only_recoveries
    assert call["usage"] == record.usage
    assert call["cost_usd"] == pytest.approx(PRICES.cost(record.model, record.usage))
    stored = [
        (t["role"], t["item_id"], t["source"], t["text"], t["interrupted"], t["heard_ms"])
        for t in detail.turns
    ]
    expected = [
        (t.role, t.item_id, t.source, t.text, t.interrupted, t.heard_ms) for t in record.turns
    ]
    assert stored == expected
    for row, turn in zip(detail.turns, record.turns, strict=True):
        assert row["started_at"] == pytest.approx(turn.started_at)
        assert row["ended_at"] == pytest.approx(turn.ended_at)
        assert row["latency_ms"] == turn.latency_ms
        assert row["audio_ms"] == pytest.approx(turn.audio_ms, abs=0.05)
    assert [(e["kind"], e["at"]) for e in detail.events] == [
        (e.kind, pytest.approx(e.at)) for e in record.events
    ]


async def test_barge_in_call_is_stored_with_turns_heard_ms_latency_and_events(
    simulator: RealtimeSimulator, db_url: str
) -> None:
    async with logged_bridge(simulator, db_url) as logged:
        call_sid, truncate = await call_with_barge_in(logged, simulator)
        detail = await logged.stored(call_sid)
    record = logged.bridge.recorder.find(call_sid)
    assert record is not None
    assert_matches(detail, record)

    call = detail.call
    assert call["end_reason"] == "caller_hangup"
    assert call["barge_ins"] == 1
    assert call["usage"]["output_token_details.audio_tokens"] > 0
    assert call["cost_usd"] > 0

    roles = [turn["role"] for turn in detail.turns]
    assert roles == ["caller", "assistant", "caller", "assistant"]
    caller_texts = [turn["text"] for turn in detail.turns if turn["role"] == "caller"]
    assert caller_texts == ["When are you open?", "Wait, one more thing."]
    first, second = (turn for turn in detail.turns if turn["role"] == "assistant")
    assert first["interrupted"]
    assert not second["interrupted"]
    assert first["item_id"] == truncate["item_id"]
    assert first["heard_ms"] == truncate["audio_end_ms"]
    assert 0 < first["heard_ms"] < first["audio_ms"]
    # the split of the full transcript by the share heard, at a word boundary
    assert first["heard_text"]
    assert first["unheard_text"]
    assert f"{first['heard_text']} {first['unheard_text']}" == first["text"]
    share = len(first["heard_text"]) / len(first["text"])
    word = max(len(w) for w in first["text"].split()) / len(first["text"])
    assert abs(share - first["heard_ms"] / first["audio_ms"]) <= word
    assert first["heard_estimated"] is True
    # response latency: caller stopped speaking -> first reply audio played
    for reply in (first, second):
        assert reply["latency_ms"] is not None
        assert reply["latency_ms"] > 0
    barge_ins = [event for event in detail.events if event["kind"] == "barge_in"]
    assert len(barge_ins) == 1
    assert barge_ins[0]["detail"]["truncations"][0]["item_id"] == truncate["item_id"]


async def test_the_call_row_exists_while_the_call_runs(
    simulator: RealtimeSimulator, db_url: str
) -> None:
    async with logged_bridge(simulator, db_url) as logged:
        async with logged.bridge.call() as caller:
            await simulator.wait_for_session()
            loop = asyncio.get_running_loop()
            started = loop.time()

            async def row_exists() -> bool:
                return await get_call(logged.call_log.engine, caller.call_sid) is not None

            await until(row_exists, 5)
            appeared_after = loop.time() - started
            live = await get_call(logged.call_log.engine, caller.call_sid)
            assert live is not None
            assert live.call["ended_at"] is None
            assert live.call["end_reason"] is None
            assert live.call["from_number"] == "+15550100001"
            await caller.hangup()
        detail = await logged.stored(caller.call_sid)
    assert detail.call["end_reason"] == "caller_hangup"
    print(f"call row written {appeared_after * 1000:.0f} ms after the session opened")


async def test_database_outage_mid_call_breaks_nothing_and_loses_nothing(
    simulator: RealtimeSimulator, db_url: str
) -> None:
    simulator.config.replies = ("We are open from nine until six.",)
    simulator.config.caller_transcripts = ("When are you open?",)
    async with logged_bridge(simulator, db_url, retry_window=120.0) as logged:
        writer = logged.call_log.writer
        async with logged.bridge.call() as caller:
            await simulator.wait_for_session()
            await until(lambda: writer.stats.batches > 0 and not writer.is_pending(caller.call_sid))
            async with outage(db_url):
                await caller.say_and_wait(utterance())
                await caller.wait_for_playback(1.0, timeout=15)
                await caller.wait_until_quiet(0.3, timeout=15)
                await caller.hangup()
                record = await logged.bridge.finished(caller.call_sid)
                await until(lambda: writer.stats.failures > 0, 15)
                assert writer.is_pending(caller.call_sid)
            detail = await logged.stored(caller.call_sid, timeout=30)
    assert record.end_reason is EndReason.CALLER_HANGUP
    heard = sum(end - start for start, end in active_segments(caller.heard(), RATE_IN))
    assert heard >= 1.0, "the caller did not hear the reply during the outage"
    assert writer.stats.dropped == 0
    assert_matches(detail, record)
    assert [turn["text"] for turn in detail.turns] == [
        "When are you open?",
        "We are open from nine until six.",
    ]


async def test_records_past_the_retry_window_are_logged_at_error_with_the_call_sid(
    db_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    call_log = CallLog(db_url, batch_delay=0.01, retry_window=0.3)
    record = CallRecord(call_sid="CA" + "d" * 32, stream_sid="MZ" + "d" * 32)
    record.from_number = "+15550109999"
    async with call_log:
        recorder = call_log.recorder
        async with outage(db_url):
            recorder.call_started(record)
            record.end_reason, record.ended_at = EndReason.CALLER_HANGUP, record.started_at + 5
            recorder.call_ended(record)
            await until(lambda: call_log.writer.stats.dropped > 0, 30)
        assert await get_call(call_log.engine, record.call_sid) is None
    lost = [
        r for r in caplog.records if r.levelno == logging.ERROR and record.call_sid in r.message
    ]
    assert lost, "no ERROR line names the lost call"
    assert "+15550109999" not in lost[0].message  # numbers are masked in logs
    assert "caller_hangup" in lost[0].message


async def test_shutdown_flushes_what_is_queued(db_url: str) -> None:
    call_log = CallLog(db_url, batch_delay=60.0)  # nothing is written before shutdown
    record = CallRecord(call_sid="CA" + "f" * 32, stream_sid="MZ" + "f" * 32)
    async with call_log:
        call_log.recorder.call_started(record)
        record.end_reason, record.ended_at = EndReason.SERVER_SHUTDOWN, record.started_at + 1
        call_log.recorder.call_ended(record)
        await asyncio.sleep(0.1)
        assert call_log.writer.is_pending(record.call_sid)
    reader = CallLog(db_url)
    try:
        detail = await get_call(reader.engine, record.call_sid)
    finally:
        await reader.engine.dispose()
    assert detail is not None
    assert detail.call["end_reason"] == "server_shutdown"


def _record(call_sid: str, **fields: object) -> CallRecord:
    record = CallRecord(call_sid=call_sid, stream_sid="MZ" + call_sid[2:], model="gpt-realtime")
    for name, value in fields.items():
        setattr(record, name, value)
    return record


async def test_twilio_status_callbacks_keep_the_final_status(db_url: str) -> None:
    sid = "CA" + "5" * 32
    async with CallLog(db_url, batch_delay=0.01) as call_log:
        recorder = call_log.recorder
        # Twilio's ringing callback can reach us (or another replica) before the stream starts.
        recorder.call_status(
            sid,
            "ringing",
            {
                "CallStatus": "ringing",
                "From": "+15550100001",
                "Timestamp": "Mon, 2 Nov 2026 10:00:00 +0000",
            },
        )
        await flushed(call_log)
        record = _record(sid, from_number="+15550100001", to_number="+15550100000")
        recorder.call_started(record)
        record.end_reason, record.ended_at = EndReason.CALLER_HANGUP, record.started_at + 30
        recorder.call_ended(record)
        recorder.call_status(sid, "completed", {"CallStatus": "completed", "CallDuration": "42"})
        recorder.call_status(
            sid, "stream-error", {"StreamEvent": "stream-error", "StreamError": "x"}
        )
        await flushed(call_log)
        recorder.call_status(
            sid, "in-progress", {"CallStatus": "in-progress"}
        )  # late, out of order
        refused = "CA" + "7" * 32  # refused at the voice webhook by number routing
        recorder.call_status(
            refused,
            "rejected",
            {"From": "+15550100666", "To": "+15550100000", "Profile": "sales", "Reason": "blocked"},
        )
        await flushed(call_log)
        detail = await get_call(call_log.engine, sid)
        rejected = await get_call(call_log.engine, refused)
    assert detail is not None
    call = detail.call
    assert call["twilio_status"] == "completed"
    assert call["twilio_duration_s"] == 42
    assert call["started_at"] == pytest.approx(1793613600.0)  # the ringing time, not the stream's
    assert call["answered_at"] == pytest.approx(record.started_at)
    assert call["end_reason"] == "caller_hangup"
    kinds = [(e["kind"], e["detail"]["status"]) for e in detail.events]
    assert ("twilio_status", "completed") in kinds
    assert ("stream_error", "stream-error") in kinds
    assert rejected is not None
    assert (rejected.call["end_reason"], rejected.call["end_detail"]) == ("rejected", "blocked")
    assert (rejected.call["from_number"], rejected.call["profile"]) == ("+15550100666", "sales")


async def test_profiles_that_keep_no_transcripts_store_no_words(db_url: str) -> None:
    from bridge.record import CallEvent, Turn

    sid = "CA" + "6" * 32
    async with CallLog(db_url, batch_delay=0.01) as call_log:
        subscription = call_log.feed.subscribe()
        record = _record(sid, keep_transcripts=False)
        call_log.recorder.call_started(record)
        turn = Turn("assistant", "item_1", 0.5, text="the secret words")
        record.turns.append(turn)
        call_log.recorder.turn_updated(record, turn)
        event = CallEvent(1.0, "text_only_recovery", {"recovery": "reask", "text": "secret"})
        record.events.append(event)
        call_log.recorder.call_event(record, event)
        record.end_reason, record.ended_at = EndReason.CALLER_HANGUP, record.started_at + 2
        call_log.recorder.call_ended(record)
        await flushed(call_log)
        detail = await get_call(call_log.engine, sid)
        messages: list[dict[str, object]] = []
        while (message := await subscription.get()) is not None and len(messages) < 4:
            messages.append(message)
            if message["kind"] == "call_ended":
                break
    assert detail is not None
    assert [t["text"] for t in detail.turns] == [None]
    assert detail.turns[0]["audio_ms"] == 0
    assert detail.events[0]["detail"] == {"recovery": "reask", "text": None}
    assert "secret" not in repr(messages)
    assert [m["kind"] for m in messages] == ["call_started", "turn", "event", "call_ended"]


async def test_schema_is_prepared_at_start_sqlite_upgraded_postgres_checked(
    tmp_path: Path,
) -> None:
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext

    from bridge.errors import ConfigError
    from bridge.store.database import (
        create_engine,
        current_revision,
        head_revision,
        prepare,
        upgrade,
    )
    from bridge.store.schema import metadata

    fresh = f"sqlite+aiosqlite:///{tmp_path / 'new' / 'bridge.db'}"
    engine = create_engine(fresh)
    try:
        await prepare(engine)  # creates the directory and the schema
        assert await current_revision(engine) == head_revision()
        async with engine.connect() as connection:
            diff = await connection.run_sync(
                lambda sync: compare_metadata(MigrationContext.configure(sync), metadata)
            )
        assert diff == []
    finally:
        await engine.dispose()

    async with database("postgresql", tmp_path) as url:
        engine = create_engine(url)
        try:
            async with engine.begin() as connection:  # back to an empty database
                for table in (
                    "webhook_outbox",
                    "next_steps",
                    "tool_calls",
                    "stream_tokens",
                    "events",
                    "turns",
                    "calls",
                    "alembic_version",
                ):
                    await connection.exec_driver_sql(f"DROP TABLE {table}")
            replicas = [create_engine(url) for _ in range(3)]  # migrating at the same moment
            try:
                async with asyncio.TaskGroup() as tg:
                    for replica in replicas:
                        tg.create_task(upgrade(replica))
            finally:
                for replica in replicas:
                    await replica.dispose()
            assert await current_revision(engine) == head_revision()
            async with engine.connect() as connection:
                diff = await connection.run_sync(
                    lambda sync: compare_metadata(MigrationContext.configure(sync), metadata)
                )
            assert diff == []
            async with engine.begin() as connection:
                await connection.exec_driver_sql("UPDATE alembic_version SET version_num = 'old'")
            with pytest.raises(ConfigError, match="bridge db upgrade"):
                await prepare(engine)
        finally:
            await engine.dispose()


@pytest.mark.parametrize("backend", BACKENDS)
async def test_a_stream_token_is_claimed_once_across_replicas(backend: str, tmp_path: Path) -> None:
    """Call logs on one database (replicas) claiming one token at the same moment: exactly one
    claim takes; expired rows go once their token can no longer verify anyway."""
    from bridge.signatures import TOKEN_TTL, StreamToken
    from bridge.store.schema import stream_tokens

    async with database(backend, tmp_path) as url:
        replicas = [CallLog(url, instance=f"replica-{n}") for n in range(3)]
        async with contextlib.AsyncExitStack() as stack:
            for replica in replicas:
                await stack.enter_async_context(replica)
            now = time.time()
            token = StreamToken(key="a" * 64, expires=now + TOKEN_TTL, call_sid="CA1")
            async with asyncio.TaskGroup() as tg:
                claims = [
                    tg.create_task(replica.stream_tokens.claim(token, now=now))
                    for replica in replicas
                    for _ in range(3)
                ]
            assert sorted(claim.result() for claim in claims) == [False] * 8 + [True]
            other = StreamToken(key="b" * 64, expires=now + TOKEN_TTL, call_sid="CA2")
            assert await replicas[0].stream_tokens.claim(other, now=now)
            async with replicas[0].engine.connect() as connection:
                rows = (await connection.execute(sa.select(stream_tokens))).all()
            assert {row.token_key for row in rows} == {"a" * 64, "b" * 64}
            assert {row.call_sid for row in rows} == {"CA1", "CA2"}

            later = now + 3 * TOKEN_TTL  # both long expired: the next claim prunes them
            fresh = StreamToken(key="c" * 64, expires=later + TOKEN_TTL, call_sid="CA3")
            assert await replicas[1].stream_tokens.claim(fresh, now=later)
            async with replicas[1].engine.connect() as connection:
                keys = (await connection.execute(sa.select(stream_tokens.c.token_key))).all()
            assert [key for (key,) in keys] == ["c" * 64]


@pytest.mark.parametrize("backend", BACKENDS)
async def test_migration_0002_adds_stream_tokens_to_a_call_log_at_0001(
    backend: str, tmp_path: Path
) -> None:
    from bridge.store.database import create_engine, current_revision, upgrade
    from bridge.store.schema import stream_tokens

    async with database(backend, tmp_path) as url:
        engine = create_engine(url)
        try:
            async with engine.begin() as connection:  # back to 0001, with a call in it
                await connection.exec_driver_sql("DROP TABLE stream_tokens")
                await connection.exec_driver_sql("UPDATE alembic_version SET version_num='0001'")
                await connection.exec_driver_sql(
                    "INSERT INTO calls (call_sid, started_at, updated_at) VALUES ('CA1', 1, 1)"
                )
            await upgrade(engine, "0002")
            assert await current_revision(engine) == "0002"
            async with engine.connect() as connection:
                assert (await connection.execute(sa.select(stream_tokens))).all() == []
                calls = await connection.exec_driver_sql("SELECT call_sid FROM calls")
                assert calls.all() == [("CA1",)]
        finally:
            await engine.dispose()
