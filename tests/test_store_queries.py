"""Reading the call log: every filter, cursor pagination, pruning; on both backends."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from bridge.record import CallRecord, EndReason, Turn
from bridge.store import CallLog, queries
from bridge.store.queries import CallFilter, list_calls
from tests.test_store_support import BACKENDS, database, flushed

NOW = time.time()
CALLS = [
    # sid suffix, from, to, profile, hours ago, end reason, what the caller said
    (
        "01",
        "+15550100001",
        "+15550200000",
        "sales",
        1,
        EndReason.CALLER_HANGUP,
        "price of the blue plan",
    ),
    ("02", "+15550100002", "+15550200000", "sales", 2, EndReason.UPSTREAM_ERROR, "cancel my order"),
    (
        "03",
        "+15550100001",
        "+15550300000",
        "support",
        3,
        EndReason.CALLER_HANGUP,
        "100% broken_thing",
    ),
    ("04", "+15550100003", "+15550300000", "support", 30, EndReason.MAX_DURATION, "hello"),
    ("05", "+15550100004", "+15550300000", "support", 24 * 40, EndReason.CALLER_HANGUP, "old call"),
]


def sid(suffix: str) -> str:
    return "CA" + suffix * 16


@pytest.fixture(params=BACKENDS)
async def call_log(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[CallLog]:
    async with database(request.param, tmp_path) as url, CallLog(url, batch_delay=0.01) as log:
        for suffix, caller, called, profile, hours, reason, said in CALLS:
            record = CallRecord(call_sid=sid(suffix), stream_sid="MZ" + suffix)
            record.from_number, record.to_number, record.profile = caller, called, profile
            record.started_at = NOW - hours * 3600
            log.recorder.call_started(record)
            turn = Turn("caller", f"item_{suffix}", 1.0, 2.0, text=said)
            record.turns.append(turn)
            log.recorder.turn_updated(record, turn)
            record.end_reason, record.ended_at = reason, record.started_at + 60
            log.recorder.call_ended(record)
        await flushed(log)
        yield log


async def sids(log: CallLog, query: CallFilter, **options: object) -> list[str]:
    page = await list_calls(log.engine, query, **options)  # type: ignore[arg-type]
    return [call["call_sid"][2:4] for call in page.calls]


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        (CallFilter(), ["01", "02", "03", "04", "05"]),
        (CallFilter(number="+15550300000"), ["03", "04", "05"]),
        (CallFilter(number="0200"), ["01", "02"]),
        (CallFilter(caller="+15550100001"), ["01", "03"]),
        (CallFilter(profile="support"), ["03", "04", "05"]),
        (CallFilter(since=NOW - 4 * 3600), ["01", "02", "03"]),
        (CallFilter(since=NOW - 48 * 3600, until=NOW - 2.5 * 3600), ["03", "04"]),
        (CallFilter(end_reason="caller_hangup"), ["01", "03", "05"]),
        (CallFilter(text="BLUE plan"), ["01"]),
        (CallFilter(text="100%"), ["03"]),  # LIKE wildcards in the search are literal
        (CallFilter(text="n_order"), []),
        (CallFilter(text="broken_"), ["03"]),
        (CallFilter(profile="support", caller="0001", text="broken"), ["03"]),
    ],
)
async def test_filters(call_log: CallLog, query: CallFilter, expected: list[str]) -> None:
    assert await sids(call_log, query) == expected


async def test_cursor_pages_walk_every_call_once_newest_first(call_log: CallLog) -> None:
    seen: list[str] = []
    cursor = None
    pages = 0
    while True:
        page = await list_calls(call_log.engine, CallFilter(), limit=2, cursor=cursor)
        seen += [call["call_sid"][2:4] for call in page.calls]
        pages += 1
        cursor = page.next_cursor
        if cursor is None:
            break
    assert seen == ["01", "02", "03", "04", "05"]
    assert pages == 3
    with pytest.raises(queries.BadQuery):
        await list_calls(call_log.engine, CallFilter(), cursor="not-a-cursor")


async def test_prune_deletes_old_calls_with_their_turns(call_log: CallLog) -> None:
    deleted = await queries.prune(call_log.engine, NOW - 30 * 86400)
    assert deleted == 1
    assert await sids(call_log, CallFilter()) == ["01", "02", "03", "04"]
    assert await queries.get_call(call_log.engine, sid("05")) is None
    old = await list_calls(call_log.engine, CallFilter(text="old call"))
    assert old.calls == []


def test_times_and_durations_parse() -> None:
    assert queries.parse_duration("30d") == 30 * 86400
    assert queries.parse_duration("90s") == 90
    assert queries.parse_time("1h", 10_000.0) == 6400.0
    assert queries.parse_time("1700000000", 0) == 1_700_000_000
    assert queries.parse_time("2026-11-02T10:00:00Z", 0) == 1793613600.0
    assert queries.parse_time("2026-11-02T10:00:00", 0) == 1793613600.0  # UTC if no zone
    with pytest.raises(queries.BadQuery):
        queries.parse_time("yesterday", 0)
    with pytest.raises(queries.BadQuery):
        queries.parse_duration("30 days")
