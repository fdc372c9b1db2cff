"""Tool calls, transfers and keypresses in the call log, and next steps shared between workers.

On a real SQLite file and a real PostgreSQL database: migration 0003, the writer, the API's
JSON, the dashboard page, `bridge calls show`, the live feed and StoredNextSteps.
"""

from __future__ import annotations

import asyncio
import io
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from bridge.after_stream import KEEP_SECONDS, NextStep
from bridge.record import CallEvent, CallRecord, EndReason, ToolCall, Turn
from bridge.sim.realtime_server import RealtimeSimulator
from bridge.store import CallLog
from bridge.store.live import LiveFeed
from bridge.store.next_steps import NextStepsUnavailable, StoredNextSteps
from bridge.store.relay import MAX_PAYLOAD
from bridge.store.tail import Printer
from bridge.web.timeline import timeline_svg
from tests.test_calls_cli import bridge_cli, environment
from tests.test_store_support import (
    BACKENDS,
    TOKEN,
    database,
    flushed,
    logged_bridge,
    outage,
    until,
)

AUTH = {"authorization": f"Bearer {TOKEN}"}
SECRET = "my card number is 4111"


@pytest.fixture(params=BACKENDS)
async def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    async with database(request.param, tmp_path) as url:
        yield url


def tool_record(call_sid: str, *, keep_transcripts: bool = True) -> CallRecord:
    record = CallRecord(call_sid=call_sid, stream_sid="MZ" + call_sid[2:], model="gpt-realtime")
    record.from_number, record.to_number = "+15550100001", "+15550100000"
    record.keep_transcripts = keep_transcripts
    return record


def play_call(call_log: CallLog, record: CallRecord) -> list[ToolCall]:
    """A call through the recorder: a question, an HTTP tool with a holding phrase, a keypress,
    a failing tool, then a transfer. Each tool call is reported when it starts and ends."""
    recorder = call_log.recorder
    recorder.call_started(record)
    question = Turn("caller", "item_1", 0.5, 1.5, text=f"Where is my order? {SECRET}")
    record.turns.append(question)
    recorder.turn_updated(record, question)
    lookup = ToolCall(
        "call_lookup",
        "lookup_order",
        "http",
        json.dumps({"order": "A-17", "note": SECRET}),
        started_at=2.0,
        holding_phrase=True,
    )
    record.tool_calls.append(lookup)
    recorder.tool_call_updated(record, lookup)
    lookup.ended_at, lookup.outcome = 2.85, "ok"
    lookup.result = json.dumps({"status": "shipped", "echo": SECRET})
    recorder.tool_call_updated(record, lookup)
    answer = Turn("assistant", "item_2", 3.0, 4.0, text="It has shipped.", audio_ms=1000.0)
    record.turns.append(answer)
    recorder.turn_updated(record, answer)
    key = CallEvent(4.5, "dtmf", {"digit": "5"})
    record.events.append(key)
    recorder.call_event(record, key)
    broken = ToolCall("key_5", "crm_note", "keypad", "{}", started_at=4.5)
    record.tool_calls.append(broken)
    recorder.tool_call_updated(record, broken)
    broken.ended_at, broken.outcome, broken.error = 4.6, "error", "HTTP 502 from crm"
    recorder.tool_call_updated(record, broken)
    transfer = ToolCall(
        "call_transfer", "transfer_call", "transfer_call", '{"to": "sales"}', started_at=5.0
    )
    record.tool_calls.append(transfer)
    recorder.tool_call_updated(record, transfer)
    record.transfer_to, record.transfer_number = "Sales desk", "+15550100777"
    transfer.ended_at, transfer.outcome, transfer.result = 5.01, "ok", "transferring"
    recorder.tool_call_updated(record, transfer)
    record.end_reason, record.ended_at = EndReason.TRANSFERRED, record.started_at + 6
    recorder.call_ended(record)
    return [lookup, broken, transfer]


def expected_json(record: CallRecord, tool_calls: list[ToolCall]) -> list[dict[str, Any]]:
    keep = record.keep_transcripts
    return [
        {
            "call_id": t.call_id,
            "name": t.name,
            "kind": t.kind,
            "arguments": t.arguments if keep else None,
            "started_at": t.started_at,
            "ended_at": t.ended_at,
            "duration_ms": t.duration_ms,
            "outcome": t.outcome,
            "result": t.result if keep else None,
            "error": t.error,
            "holding_phrase": t.holding_phrase,
        }
        for t in tool_calls
    ]


async def test_migration_0003_adds_tool_calls_transfers_and_next_steps(db_url: str) -> None:
    """From 0002 (with a call in it) to head: the new tables and columns, exactly schema.py's."""
    from alembic import command
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext

    from bridge.store.database import alembic_config, create_engine, current_revision, upgrade
    from bridge.store.schema import metadata, next_steps, tool_calls

    def downgrade(connection: sa.Connection) -> None:
        config = alembic_config()
        config.attributes["connection"] = connection
        command.downgrade(config, "0002")

    engine = create_engine(db_url)
    try:
        async with engine.begin() as connection:
            await connection.run_sync(downgrade)
        assert await current_revision(engine) == "0002"
        async with engine.begin() as connection:
            names = await connection.run_sync(lambda sync: sa.inspect(sync).get_table_names())
            assert "tool_calls" not in names
            assert "next_steps" not in names
            await connection.exec_driver_sql(
                "INSERT INTO calls (call_sid, started_at, updated_at) VALUES ('CA1', 1, 1)"
            )
        await upgrade(engine)
        assert await current_revision(engine) == "0004"  # head
        async with engine.connect() as connection:
            diff = await connection.run_sync(
                lambda sync: compare_metadata(MigrationContext.configure(sync), metadata)
            )
            assert diff == []
            old = await connection.exec_driver_sql(
                "SELECT tool_calls, transfer_to, transfer_number FROM calls"
            )
            assert [tuple(row) for row in old] == [(0, "", "")]
            assert (await connection.execute(sa.select(tool_calls))).all() == []
            assert (await connection.execute(sa.select(next_steps))).all() == []
    finally:
        await engine.dispose()


@pytest.mark.parametrize("keep_transcripts", [True, False])
async def test_tool_calls_and_a_transfer_reach_the_api_the_page_and_the_terminal(
    simulator: RealtimeSimulator, db_url: str, keep_transcripts: bool
) -> None:
    sid = "CA" + ("a" if keep_transcripts else "b") * 32
    record = tool_record(sid, keep_transcripts=keep_transcripts)
    async with (
        logged_bridge(simulator, db_url) as logged,
        httpx.AsyncClient(base_url=logged.base, timeout=5, headers=AUTH) as client,
    ):
        subscription = logged.call_log.feed.subscribe()
        tool_calls = play_call(logged.call_log, record)
        await flushed(logged.call_log)
        detail = await client.get(f"/api/calls/{sid}")
        listed = await client.get("/api/calls")
        page = await client.get(f"/calls/{sid}")
        messages: list[dict[str, Any]] = []
        while (message := await subscription.get()) is not None:
            messages.append(message)
            if message["kind"] == "call_ended":
                break

    assert detail.status_code == 200
    body = detail.json()
    assert body["tool_calls"] == expected_json(record, tool_calls)
    call = body["call"]
    assert (call["transfer_to"], call["transfer_number"]) == ("Sales desk", "+15550100777")
    assert (call["tool_calls"], call["end_reason"]) == (3, "transferred")
    assert [e["kind"] for e in body["events"]] == ["dtmf"]
    (row,) = listed.json()["calls"]
    assert (row["tool_calls"], row["transfer_to"]) == (3, "Sales desk")

    # Live: a `tool_call` message when each one started and when it ended, latest state last.
    live = [m for m in messages if m["kind"] == "tool_call"]
    assert [(m["tool_call"]["call_id"], m["tool_call"]["outcome"]) for m in live] == [
        ("call_lookup", "running"),
        ("call_lookup", "ok"),
        ("key_5", "running"),
        ("key_5", "error"),
        ("call_transfer", "running"),
        ("call_transfer", "ok"),
    ]
    assert all(m["call_sid"] == sid for m in live)
    assert [live[1]["tool_call"], live[3]["tool_call"], live[5]["tool_call"]] == expected_json(
        record, tool_calls
    )

    assert page.status_code == 200
    html = page.text
    assert 'data-call-id="call_lookup"' in html
    assert "lookup_order" in html
    assert "holding phrase" in html
    assert "HTTP 502 from crm" in html
    assert "Sales desk (+15550100777)" in html
    assert '<g class="tool outcome-ok">' in html  # the timeline's bar
    assert '<g class="tool outcome-error">' in html
    assert '<g class="key">' in html
    assert "<kbd" in html
    # the conversation in time order: caller, tool, assistant, key, tool, tool
    order = [
        html.index(marker)
        for marker in (
            'data-item-id="item_1"',
            'data-call-id="call_lookup"',
            'data-item-id="item_2"',
            "<kbd",
            'data-call-id="key_5"',
            'data-call-id="call_transfer"',
        )
    ]
    assert order == sorted(order)

    code, shown = await bridge_cli("calls", "show", sid, env=environment(db_url))
    assert code == 0, shown
    assert "transferred to Sales desk (+15550100777)" in shown
    assert "lookup_order (http)" in shown
    assert "-> ok in 850 ms  [holding phrase]" in shown
    assert "crm_note (keypad) {}" in shown or "crm_note (keypad) (arguments" in shown
    assert "error: HTTP 502 from crm" in shown
    assert "key       5" in shown
    assert "tool calls 3" in shown

    if keep_transcripts:
        assert '{"order": "A-17"' in body["tool_calls"][0]["arguments"]
        assert "shipped" in html
        assert "result: " in shown
    else:
        for text in (detail.text, html, shown, repr(messages)):
            assert SECRET not in text
            assert "A-17" not in text
        assert "(arguments and result not kept)" in html
        assert "(arguments not kept)" in shown


async def test_tool_call_rows_are_idempotent_and_pruned_with_their_call(db_url: str) -> None:
    from bridge.store import queries
    from bridge.store.schema import tool_calls

    async with CallLog(db_url, batch_delay=0.01) as call_log:
        record = tool_record("CA" + "c" * 32)
        record.started_at -= 40 * 86400
        play_call(call_log, record)
        await flushed(call_log)
        # marked again with nothing new: the same rows, not new ones
        for tool_call in record.tool_calls:
            call_log.recorder.tool_call_updated(record, tool_call)
        await flushed(call_log)
        async with call_log.engine.connect() as connection:
            rows = (
                await connection.execute(
                    sa.select(tool_calls.c.call_id, tool_calls.c.seq).order_by(tool_calls.c.seq)
                )
            ).all()
        assert rows == [("call_lookup", 0), ("key_5", 1), ("call_transfer", 2)]
        assert await queries.prune(call_log.engine, time.time() - 30 * 86400) == 1
        async with call_log.engine.connect() as connection:
            assert (await connection.execute(sa.select(tool_calls))).all() == []


async def test_next_steps_are_shared_between_workers(db_url: str) -> None:
    """Two call logs on one database (two workers): the step one saves, the other loads."""
    from bridge.store.schema import next_steps

    sid = "CA" + "d" * 32
    dial = NextStep(action="dial", number="+15550100777", say="Connecting you.", caller_id="+1555")
    async with CallLog(db_url, instance="worker-1") as one, CallLog(db_url, instance="w-2") as two:
        assert isinstance(one.next_steps, StoredNextSteps)
        assert await two.next_steps.load(sid) is None
        await one.next_steps.save(sid, dial)  # committed on return: no flush, no writer
        assert await two.next_steps.load(sid) == dial
        hangup = NextStep(say="Goodbye.")
        await two.next_steps.save(sid, hangup)  # the latest save wins
        assert await one.next_steps.load(sid) == hangup
        assert await one.next_steps.load("CA" + "0" * 32) is None

        # Pruning: a step saved more than KEEP_SECONDS ago goes at the next save.
        now = time.time()
        stale = "CA" + "e" * 32
        pruner = StoredNextSteps(one.engine, "worker-3")
        await pruner.save(stale, dial, now=now - 2 * KEEP_SECONDS)
        assert await two.next_steps.load(stale) == dial
        await pruner.save("CA" + "f" * 32, dial, now=now)
        assert await two.next_steps.load(stale) is None
        async with one.engine.connect() as connection:
            rows = (
                await connection.execute(
                    sa.select(next_steps.c.call_sid, next_steps.c.instance).order_by(
                        next_steps.c.call_sid
                    )
                )
            ).all()
        assert rows == [(sid, "w-2"), ("CA" + "f" * 32, "worker-3")]


async def test_saving_a_next_step_fails_fast_when_the_database_does_not_take_it(
    db_url: str,
) -> None:
    from bridge.store import next_steps

    async with CallLog(db_url) as call_log:
        async with outage(db_url):
            loop = asyncio.get_running_loop()
            started = loop.time()
            with pytest.raises(NextStepsUnavailable) as raised:
                await call_log.next_steps.save("CA" + "1" * 32, NextStep())
            took = loop.time() - started
        assert raised.value.call_sid == "CA" + "1" * 32
        assert took < next_steps.SAVE_TIMEOUT + 1.0
        await call_log.next_steps.save("CA" + "1" * 32, NextStep())  # back: it takes again
        assert await call_log.next_steps.load("CA" + "1" * 32) == NextStep()


async def test_tool_calls_cross_replicas_through_postgres(tmp_path: Path) -> None:
    """A tool call on one replica shows in another's feed; a huge result is cut to fit NOTIFY."""
    async with (
        database("postgresql", tmp_path) as url,
        CallLog(url, heartbeat=0.2) as one,
        CallLog(url, heartbeat=0.2) as other,
    ):
        assert one.relay is not None
        assert other.relay is not None
        await asyncio.wait_for(one.relay.connected.wait(), 10)
        await asyncio.wait_for(other.relay.connected.wait(), 10)
        record = tool_record("CA" + "2" * 32)
        one.recorder.call_started(record)
        tool_call = ToolCall("call_big", "search", "mcp", "{}", started_at=1.0)
        record.tool_calls.append(tool_call)
        one.recorder.tool_call_updated(record, tool_call)
        tool_call.ended_at, tool_call.outcome, tool_call.result = 1.5, "ok", "x" * 20_000
        one.recorder.tool_call_updated(record, tool_call)

        def arrived() -> bool:
            entry = other.feed.calls.get(record.call_sid)
            return entry is not None and "call_big" in entry["tool_calls"]

        await until(arrived, 5)

        def finished() -> bool:
            seen = other.feed.calls[record.call_sid]["tool_calls"]["call_big"]
            return bool(seen["outcome"] == "ok")

        await until(finished, 5)
        seen = other.feed.snapshot()["calls"][0]["tool_calls"][0]
        assert seen["name"] == "search"
        assert seen["result"].startswith("xxx")
        assert seen["result"].endswith("…")
        assert len(seen["result"]) < MAX_PAYLOAD
        one.recorder.call_ended(record)
        await until(lambda: record.call_sid not in other.feed.calls, 5)


def test_live_snapshot_and_tail_show_tool_calls() -> None:
    feed = LiveFeed("here")
    record = tool_record("CA" + "3" * 32)
    feed.call_started(record)
    tool_call = ToolCall("call_1", "end_call", "end_call", "{}", started_at=1.0)
    feed.tool_call_updated(record, tool_call)
    tool_call.ended_at, tool_call.outcome = 1.2, "ok"
    feed.tool_call_updated(record, tool_call)
    (live,) = feed.snapshot()["calls"]
    assert [(t["call_id"], t["outcome"]) for t in live["tool_calls"]] == [("call_1", "ok")]

    out = io.StringIO()
    printer = Printer(out, tty=False)
    printer.handle("snapshot", feed.snapshot())
    printer.handle("snapshot", feed.snapshot())  # a reconnect repeats nothing
    lines = out.getvalue().splitlines()
    assert len(lines) == 2
    assert lines[1].endswith("* end_call (end_call) ok in 200 ms")


def test_timeline_draws_a_bar_per_tool_call_and_a_key_per_press() -> None:
    tool_calls = [
        {
            "call_id": "call_1",
            "name": "lookup_order",
            "kind": "http",
            "arguments": "{}",
            "started_at": 2.0,
            "ended_at": 6.0,
            "duration_ms": 4000.0,
            "outcome": "ok",
            "result": "",
            "error": "",
            "holding_phrase": True,
        }
    ]
    events = [{"at": 3.0, "kind": "dtmf", "detail": {"digit": "<"}, "ts": 0.0, "seq": 0}]
    svg = str(timeline_svg(10.0, [], events, tool_calls))
    assert 'aria-label="who spoke when, tool calls and keypresses"' in svg
    assert "lookup_order (http) ok, 0:02–0:06, 4000 ms, holding phrase" in svg
    assert ">lookup_order</text>" in svg  # the name fits inside its bar
    assert "key &lt; pressed at 0:03" in svg  # escaped
    plain = str(timeline_svg(10.0, [], []))
    assert "tools" not in plain
    assert 'viewBox="0 0 900 108"' in plain  # calls without tools look as before
