"""Pure parts of the call log: the heard/unheard split, cost estimates, rows, the live feed."""

from __future__ import annotations

from pathlib import Path

import pytest

from bridge.errors import ConfigError
from bridge.record import CallEvent, CallRecord, Turn
from bridge.store.heard import split_heard
from bridge.store.live import LiveFeed
from bridge.store.pricing import PriceTable
from bridge.store.rows import status_rows
from bridge.web.timeline import timeline_svg
from tests.test_store_support import PRICES

TEXT = "Our opening hours are nine until six on weekdays"


@pytest.mark.parametrize(
    ("heard_ms", "audio_ms", "heard", "unheard"),
    [
        (None, 3000.0, TEXT, ""),  # not interrupted: all of it
        (3000, 3000.0, TEXT, ""),
        (0, 3000.0, "", TEXT),
        (1500, 3000.0, "Our opening hours are nine", "until six on weekdays"),
        (400, 3000.0, "Our", "opening hours are nine until six on weekdays"),
        (9000, 3000.0, TEXT, ""),  # clamped
    ],
)
def test_split_heard_at_a_word_boundary(
    heard_ms: int | None, audio_ms: float, heard: str, unheard: str
) -> None:
    split = split_heard(TEXT, heard_ms, audio_ms)
    assert (split.heard, split.unheard) == (heard, unheard)
    assert split.estimated is (heard_ms is not None)


def test_split_heard_never_cuts_a_word() -> None:
    for heard_ms in range(0, 3001, 37):
        split = split_heard(TEXT, heard_ms, 3000.0)
        words = (split.heard.split(), split.unheard.split())
        assert words[0] + words[1] == TEXT.split()


def test_cost_from_usage_with_cached_tokens_split_by_share() -> None:
    table = PRICES  # the shipped gpt-realtime prices, as the store tests use them
    usage = {
        "input_tokens": 1000,
        "input_token_details.text_tokens": 600,
        "input_token_details.audio_tokens": 400,
        "input_token_details.cached_tokens": 500,
        "output_tokens": 300,
        "output_token_details.text_tokens": 100,
        "output_token_details.audio_tokens": 200,
    }
    # cached 500 = 300 text + 200 audio (by the 60/40 input share)
    expected = (300 * 4 + 300 * 0.4 + 200 * 32 + 200 * 0.4 + 100 * 16 + 200 * 64) / 1e6
    assert table.cost("gpt-realtime", usage) == pytest.approx(expected)
    assert table.cost("gpt-realtime-2025-08-28", usage) == pytest.approx(expected)
    assert table.cost("gpt-realtime-1.5", usage) is None  # a different model: no guess
    assert table.cost("gpt-realtime", {}) == 0.0


def test_the_shipped_price_table_loads(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    shipped = Path(__file__).parent.parent / "config" / "prices.toml"
    table = PriceTable.load(shipped)
    assert {"gpt-realtime", "gpt-realtime-mini"} <= set(table.models)
    broken = tmp_path / "prices.toml"
    broken.write_text('[models."x"]\ntext_input = "free"\n')
    with pytest.raises(ConfigError) as info:
        PriceTable.load(broken)
    assert any("models.x.text_input" in problem for problem in info.value.problems)
    monkeypatch.chdir(tmp_path)  # no config/prices.toml here: no estimates, no failure
    assert PriceTable.load().models == {}
    with pytest.raises(ConfigError):
        PriceTable.load(tmp_path / "missing.toml")  # a file named explicitly must exist


def test_status_callback_rows() -> None:
    params = {"CallStatus": "completed", "CallDuration": "61", "Timestamp": "bad date"}
    call, event = status_rows("CA1", "completed", params, 100.0)
    assert call["twilio_status"] == "completed"
    assert call["twilio_duration_s"] == 61
    assert call["started_at"] == 100.0  # unreadable Timestamp: when we received it
    assert event["kind"] == "twilio_status"
    stream_call, stream_event = status_rows(
        "CA1", "stream-error", {"StreamEvent": "stream-error", "StreamError": "31920"}, 100.0
    )
    assert stream_call["twilio_status"] is None  # a stream event is not the call's status
    assert stream_event["kind"] == "stream_error"


def test_live_feed_snapshot_and_a_slow_subscriber_is_cut_off() -> None:
    feed = LiveFeed("here", subscriber_limit=3)
    slow = feed.subscribe()
    record = CallRecord(call_sid="CA1", stream_sid="MZ1", from_number="+1555")
    feed.call_started(record)
    turn = Turn("caller", "item_1", 0.2, text="hello")
    feed.turn_updated(record, turn)
    turn.text = "hello there"
    feed.turn_updated(record, turn)
    feed.call_event(record, CallEvent(1.0, "barge_in", {"cleared": True}))
    snapshot = feed.snapshot()
    (live,) = snapshot["calls"]
    assert live["call"]["from_number"] == "+1555"
    assert [t["text"] for t in live["turns"]] == ["hello there"]
    assert [e["kind"] for e in live["events"]] == ["barge_in"]
    assert slow.lagged  # four messages for a buffer of three
    feed.call_ended(record)
    assert feed.snapshot()["calls"] == []


def test_timeline_draws_both_lanes_the_unheard_ghost_and_the_barge_in() -> None:
    turns = [
        {"role": "caller", "started_at": 0.5, "ended_at": 1.5, "text": "hi", "interrupted": False},
        {
            "role": "assistant",
            "started_at": 2.0,
            "ended_at": 3.0,
            "text": "a <long> reply",
            "interrupted": True,
            "heard_ms": 1000,
            "audio_ms": 3000.0,
        },
    ]
    events = [{"kind": "barge_in", "at": 3.0}]
    svg = str(timeline_svg(6.0, turns, events))
    assert svg.count('class="turn caller"') == 1
    assert svg.count('class="turn assistant interrupted"') == 1
    assert "not heard: 2.0 s" in svg
    assert 'class="mark barge-in"' in svg
    assert "&lt;long&gt;" in svg  # text is escaped


async def test_readiness_fails_only_when_the_backlog_nears_its_bound(tmp_path: Path) -> None:
    from bridge.store import CallLog

    call_log = CallLog(f"sqlite+aiosqlite:///{tmp_path / 'bridge.db'}")  # not started: no writes
    call_log.writer.max_pending = 10
    try:
        for n in range(8):
            call_log.recorder.call_started(CallRecord(call_sid=f"CA{n}", stream_sid="MZ"))
        assert await call_log.readiness() is None
        call_log.recorder.call_started(CallRecord(call_sid="CA9", stream_sid="MZ"))
        problem = await call_log.readiness()
        assert problem is not None
        assert "9/10" in problem
    finally:
        await call_log.engine.dispose()
