"""`bridge bench --soak`: the verdict on synthetic timelines, what a long call may hold, and a
smoke run of a few seconds (a bridge process, three calls replaced as they end)."""

from __future__ import annotations

import dataclasses
import json
import math
import random
import statistics
from collections.abc import Callable
from pathlib import Path

import pytest

from bridge.bench import cli, report
from bridge.bench.churn import END_OF_SOAK, unlinked_end
from bridge.bench.soak import (
    MB,
    RSS_FLAT_MB_PER_CALL_HOUR,
    MinuteLatency,
    Sample,
    first_call_seconds,
    linear_fit,
    minute_of,
    minute_rows,
    saturated_minutes,
    verdict,
)
from bridge.call.bargein import KEEP_ITEMS, Playback
from bridge.record import KEEP_TURNS, CallEvent, CallRecord, EndReason, History, Turn
from bridge.store import CallLog
from bridge.store.live import KEEP_TURNS as LIVE_TURNS
from bridge.store.live import LiveFeed
from bridge.store.queries import get_call
from tests.test_store_support import flushed

pytestmark = pytest.mark.timeout(90)

CALLS = 200


def timeline(
    minutes: int = 10,
    *,
    rss_per_s: float = 0.0,
    start_mb: float = 130.0,
    fds_per_replaced: float = 0.0,
    every: float = 10.0,
    cores: Callable[[float], float] = lambda t: 0.6,
) -> list[Sample]:
    """Samples of a 200-call soak: RSS wanders by up to 0.5 MB and grows `rss_per_s` bytes a
    second; a call ends every 1.2 s (as calls of 2 to 4 minutes do), and `fds_per_replaced`
    descriptors leak with each; the bridge uses `cores(t)` of CPU at soak time t."""
    samples = []
    cpu_s = 0.0
    steps = int(minutes * 60 / every)
    for k in range(steps + 1):
        t = k * every
        wander = 0.5 * MB * math.sin(k * 1.7)  # deterministic noise
        ended = int(t / 1.2)
        fds = 620 + (k % 3) - 1 + int(fds_per_replaced * ended)
        if k:
            cpu_s += cores(t) * every
        samples.append(
            Sample(
                t=t,
                rss=int(start_mb * MB + rss_per_s * t + wander),
                fds=fds,
                tasks=1410 + (k % 5) - 2,
                live=CALLS - (k % 2),
                ended=ended,
                cpu_s=cpu_s,
            )
        )
    return samples


def latency(
    minutes: int = 10, p99: float = 3.0, last_p99: float | None = None
) -> dict[int, MinuteLatency]:
    per_minute = {m: MinuteLatency((1.0, p99), (1.2, p99 + 0.5)) for m in range(1, minutes + 1)}
    if last_p99 is not None:
        per_minute[minutes] = MinuteLatency((1.0, last_p99), (1.2, last_p99))
    return per_minute


# ---- arithmetic ----------------------------------------------------------------------------------


def test_a_line_is_fitted_exactly() -> None:
    fit = linear_fit([(0.0, 1.0), (1.0, 3.0), (2.0, 5.0), (3.0, 7.0)])
    assert fit is not None
    assert fit.slope == pytest.approx(2.0)
    assert fit.intercept == pytest.approx(1.0)
    assert fit.stderr == pytest.approx(0.0, abs=1e-9)
    assert linear_fit([(0.0, 1.0), (1.0, 2.0)]) is None  # too few points
    assert linear_fit([(1.0, 1.0), (1.0, 2.0), (1.0, 3.0)]) is None  # one x


def test_samples_fall_in_minutes_from_one() -> None:
    assert [minute_of(t) for t in (0.0, 10.0, 60.0, 60.5, 120.0, 125.0)] == [1, 1, 1, 2, 2, 3]


def test_a_flat_soak_is_flat() -> None:
    judged = verdict(timeline(), latency())
    assert judged["enough"]
    assert judged["window_minutes"] == [2, 10]
    assert abs(judged["rss"]["mb_per_call_hour"]) < RSS_FLAT_MB_PER_CALL_HOUR / 5
    assert judged["rss"]["flat"]
    assert judged["fds"]["flat"]
    assert judged["tasks"]["flat"]
    assert judged["latency"]["caller_to_model"]["flat"]
    assert judged["flat"] is True


def test_the_growth_the_issue_measured_is_not_flat() -> None:
    # 0.5 KB a second per call, at 200 calls: 1.8 MB per call-hour.
    judged = verdict(timeline(rss_per_s=0.5 * 1024 * CALLS), latency())
    assert judged["rss"]["mb_per_call_hour"] == pytest.approx(1.76, abs=0.05)
    assert judged["rss"]["kb_per_call_second"] == pytest.approx(0.5, abs=0.02)
    assert not judged["rss"]["flat"]
    assert judged["flat"] is False
    text = report.soak_table(_report(judged))
    assert "NOT FLAT" in text
    assert "GROWING" in text


def test_growth_a_twentieth_of_that_is_still_caught_in_ten_minutes() -> None:
    judged = verdict(timeline(rss_per_s=0.03 * 1024 * CALLS), latency())
    assert judged["rss"]["mb_per_call_hour"] > RSS_FLAT_MB_PER_CALL_HOUR
    assert judged["rss"]["stderr_mb_per_call_hour"] < RSS_FLAT_MB_PER_CALL_HOUR / 3
    assert not judged["rss"]["flat"]


def test_minute_one_is_left_out() -> None:
    samples = timeline()
    # Start-up: 40 MB arrive during minute 1, then nothing more.
    jumped = [
        dataclasses.replace(s, rss=s.rss + int(40 * MB * min(s.t, 60.0) / 60.0)) for s in samples
    ]
    assert verdict(jumped, latency())["rss"]["flat"]


def test_memory_that_settles_shows_no_slope_in_the_second_half() -> None:
    # 6 MB over minutes 1 to 4 (the first calls' state filling up), then a plateau.
    settling = [
        dataclasses.replace(s, rss=s.rss + int(6 * MB * min(s.t, 240.0) / 240.0))
        for s in timeline()
    ]
    rss = verdict(settling, latency())["rss"]
    assert rss["mb_per_call_hour"] > RSS_FLAT_MB_PER_CALL_HOUR  # judged on the whole window
    assert abs(rss["second_half_mb_per_call_hour"]) < RSS_FLAT_MB_PER_CALL_HOUR / 2
    leaking = verdict(timeline(rss_per_s=0.5 * 1024 * CALLS), latency())["rss"]
    assert leaking["second_half_mb_per_call_hour"] == pytest.approx(1.76, abs=0.2)


def test_the_warm_up_of_calls_still_filling_their_state_is_not_judged() -> None:
    # The same 6 MB settling over minutes 1 to 4, in a soak whose calls last up to 240 s: once
    # every place's first call has ended (minute 5 on), the calls are a steady population.
    settling = [
        dataclasses.replace(s, rss=s.rss + int(6 * MB * min(s.t, 240.0) / 240.0))
        for s in timeline()
    ]
    judged = verdict(settling, latency(), warmup_s=240.0)
    assert judged["window_minutes"] == [5, 10]
    assert judged["rss"]["flat"]
    assert "warm-up" in report.soak_table(_report(judged))
    # A leak is still a leak after the warm-up, and a twentieth of it is still caught.
    leaking = verdict(timeline(rss_per_s=0.5 * 1024 * CALLS), latency(), warmup_s=240.0)
    assert leaking["rss"]["mb_per_call_hour"] == pytest.approx(1.76, abs=0.05)
    assert not leaking["rss"]["flat"]
    slow = verdict(timeline(rss_per_s=0.03 * 1024 * CALLS), latency(), warmup_s=240.0)
    assert not slow["rss"]["flat"]


def test_a_warm_up_longer_than_the_soak_still_leaves_three_minutes_judged() -> None:
    assert verdict(timeline(), latency(), warmup_s=600.0)["window_minutes"] == [8, 10]
    assert verdict(timeline(minutes=5), latency(minutes=5), warmup_s=600.0)["window_minutes"] == [
        3,
        5,
    ]


def test_an_fd_leaked_per_call_is_caught() -> None:
    judged = verdict(timeline(fds_per_replaced=1.0), latency())
    assert not judged["fds"]["flat"]
    assert judged["tasks"]["flat"]
    # A leak of one per hundred calls over ten minutes (400 calls replaced) is caught as well.
    assert not verdict(timeline(fds_per_replaced=0.02), latency())["fds"]["flat"]


def test_latency_that_climbs_is_not_flat() -> None:
    assert not verdict(timeline(), latency(p99=3.0, last_p99=12.0))["latency"]["caller_to_model"][
        "flat"
    ]
    assert verdict(timeline(), latency(p99=3.0, last_p99=6.0))["latency"]["caller_to_model"]["flat"]


def test_a_short_soak_is_not_judged() -> None:
    judged = verdict(timeline(minutes=2), latency(minutes=2))
    assert not judged["enough"]
    assert judged["flat"] is None
    assert "too short" in report.soak_table(_report(judged, minutes=2))


def test_first_calls_last_what_is_left_of_a_call_met_in_progress() -> None:
    # Calls of 120..240 s met at a random moment: on average E[L^2] / 2E[L] = 93.3 s left, two
    # thirds of them under 120 s; so calls end at the steady rate (200 / 180 s) from the start.
    rng = random.Random(3)
    left = [first_call_seconds(rng, 120.0, 240.0) for _ in range(40_000)]
    assert min(left) >= 0.0
    assert max(left) <= 240.0
    assert statistics.fmean(left) == pytest.approx(93.33, abs=1.0)
    assert sum(x < 120.0 for x in left) / len(left) == pytest.approx(2 / 3, abs=0.01)
    ended_by_minute = [sum(60.0 * m < x <= 60.0 * (m + 1) for x in left) for m in range(2)]
    assert ended_by_minute[0] == pytest.approx(ended_by_minute[1], rel=0.05)
    assert first_call_seconds(rng, 60.0, 60.0) <= 60.0  # calls of one length


def test_minute_rows_average_samples_and_count_replaced_calls() -> None:
    rows = minute_rows(timeline(minutes=3), latency(minutes=3))
    assert [row["minute"] for row in rows] == [1, 2, 3]
    assert [row["samples"] for row in rows] == [7, 6, 6]  # the sample at 0 is minute 1's
    assert rows[1]["cpu_cores"] == pytest.approx(0.6)
    assert rows[1]["calls_ended"] == int(120 / 1.2) - int(60 / 1.2)
    assert rows[0]["rss_mb"] == pytest.approx(130.0, abs=0.5)
    assert rows[2]["caller_to_model_ms"] == {"p50": 1.0, "p99": 3.0}


def test_minutes_with_the_loop_flat_out_are_called_saturated() -> None:
    def busy(t: float) -> float:  # 0.95 of a core in minutes 3 to 5 and 8, else 0.6
        return 0.95 if minute_of(t) in (3, 4, 5, 8) else 0.6

    rows = minute_rows(timeline(cores=busy), latency())
    assert saturated_minutes(rows) == [3, 4, 5, 8]
    assert saturated_minutes(rows, loops=2) == []  # two loops can use two cores
    assert saturated_minutes(minute_rows(timeline(), latency())) == []


def test_the_table_says_when_the_soak_measured_the_machine_not_the_bridge() -> None:
    judged = verdict(timeline(), latency())
    calm = _report(judged)
    assert "SATURATED" not in report.soak_table(calm)

    def busy(t: float) -> float:  # flat out but for minute 6
        return 0.8 if minute_of(t) == 6 else 0.95

    flat_out = _report(judged, samples=timeline(cores=busy))
    flat_out["saturated_minutes"] = saturated_minutes(flat_out["minutes"])  # type: ignore[arg-type]
    text = report.soak_table(flat_out)
    assert "SATURATED in 9 of 10 minutes (1..5, 7..10)" in text
    assert "its event loop was busy" in text


def test_a_call_placed_as_the_soak_ends_is_not_a_call_that_never_reached_the_model() -> None:
    assert unlinked_end(END_OF_SOAK, lived_s=0.4).startswith("placed in the soak's last seconds")
    assert unlinked_end(END_OF_SOAK, lived_s=30.0) == "never reached the model"
    assert unlinked_end("hung up", lived_s=0.4) == "never reached the model"


def _report(
    judged: dict[str, object], minutes: int = 10, samples: list[Sample] | None = None
) -> dict[str, object]:
    samples = samples if samples is not None else timeline(minutes=minutes)
    return {
        "config": {
            "calls": CALLS,
            "minutes": minutes,
            "call_seconds": [120.0, 240.0],
            "drop_every_s": None,
            "tool_every": 4,
            "audio_mode": "transcode",
        },
        "machine": {"cores": 2, "loadavg_at_start": [0.1], "loadavg_at_end": [0.2]},
        "minutes": minute_rows(samples, latency(minutes=minutes)),
        "calls": {"placed": 1, "replaced": 0, "ends": {}, "not_placed": {}},
        "turns": {
            "replies": 0,
            "barge_ins": 0,
            "tool_requests": 0,
            "missed_replies": 0,
            "underruns": 0,
        },
        "model": {"sessions": 1, "drops": 0},
        "verdict": judged,
    }


# ---- what a long call holds ----------------------------------------------------------------------


def test_a_record_keeps_its_recent_history_and_counts_the_rest() -> None:
    record = CallRecord(call_sid="CA1", stream_sid="MZ1")
    turns = [Turn("caller", f"item_{n}", float(n)) for n in range(100)]
    for turn in turns:
        record.turns.append(turn)
    assert len(record.turns) == KEEP_TURNS
    assert record.turns.total == 100
    assert record.turns[-1] is turns[-1]
    assert record.turns.seq(turns[-1]) == 99
    assert record.turns.seq(turns[0]) is None  # let go: the recorder has it
    for n in range(50):
        record.events.append(
            CallEvent(float(n), "upstream_error" if n % 10 == 0 else "barge_in", {})
        )
    assert record.events.kinds["upstream_error"] == 5  # counted though most are let go
    assert History([1, 2, 3], keep=2) == [2, 3]


def test_playback_forgets_items_that_finished_playing() -> None:
    playback = Playback()
    now = 0.0
    for n in range(100):
        item = f"item_{n}"
        playback.received(item, 100.0)
        mark = playback.sent(item, 800, now)
        now += 0.1
        assert playback.echoed(mark, now) == item
    held = playback._sent.keys() | playback._heard.keys() | playback._model_ms.keys()
    assert len(held) <= KEEP_ITEMS
    # An item still playing is never forgotten, however many follow it.
    playback.received("long", 100.0)
    playback.sent("long", 800, now)
    for n in range(20):
        playback.received(f"next_{n}", 10.0)
    assert playback.heard_ms("long", now + 0.05) == 50


def test_the_live_feed_keeps_the_latest_turns_of_a_call() -> None:
    feed = LiveFeed("test")
    record = CallRecord(call_sid="CA2", stream_sid="MZ2")
    feed.call_started(record)
    for n in range(100):
        feed.turn_updated(record, Turn("caller", f"item_{n}", float(n), text=f"turn {n}"))
    (call,) = feed.snapshot()["calls"]
    assert [turn["item_id"] for turn in call["turns"]] == [
        f"item_{n}" for n in range(100 - LIVE_TURNS, 100)
    ]


async def test_every_turn_and_event_of_a_long_call_is_written_in_order(tmp_path: Path) -> None:
    """The record lets old turns go; the call log still gets each one, in its place."""
    sid = "CA" + "7" * 32
    async with CallLog(f"sqlite+aiosqlite:///{tmp_path}/calls.db", batch_delay=0.01) as call_log:
        recorder = call_log.recorder
        record = CallRecord(call_sid=sid, stream_sid="MZ" + "7" * 32, model="gpt-realtime")
        recorder.call_started(record)
        for n in range(3 * KEEP_TURNS):
            turn = Turn("caller" if n % 2 else "assistant", f"item_{n}", float(n))
            record.turns.append(turn)
            recorder.turn_updated(record, turn)
            turn.text = f"words {n}"  # the transcript arrives while the turn is still held
            recorder.turn_updated(record, turn)
            event = CallEvent(float(n), "upstream_error" if n % 8 == 0 else "barge_in", {"n": n})
            record.events.append(event)
            recorder.call_event(record, event)
            if n % 10 == 0:
                await flushed(call_log)  # some written early, the rest together
        record.end_reason, record.ended_at = EndReason.CALLER_HANGUP, record.started_at + 100
        recorder.call_ended(record)
        await flushed(call_log)
        detail = await get_call(call_log.engine, sid)
    assert detail is not None
    assert [turn["text"] for turn in detail.turns] == [f"words {n}" for n in range(3 * KEEP_TURNS)]
    assert sorted(event["detail"]["n"] for event in detail.events) == list(range(3 * KEEP_TURNS))
    assert detail.call["errors"] == 3 * KEEP_TURNS // 8


# ---- the command, end to end ---------------------------------------------------------------------


def test_soak_replaces_calls_samples_the_bridge_and_reports(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    report_path, chart_path = tmp_path / "soak.json", tmp_path / "soak.png"
    argv = ["--soak", "0.15", "--calls", "3", "--call-seconds", "4,5", "--sample-seconds", "1"]
    argv += ["--drop-every", "4", "--tool-every", "1", "--ramp", "1"]
    code = cli.main([*argv, "--json", str(report_path), "--chart", str(chart_path), "--quiet"])
    assert code == 0
    out = capsys.readouterr().out
    assert "RSS MB" in out
    assert "too short to judge" in out  # nine seconds: no verdict, only the curves
    soak = json.loads(report_path.read_text())
    assert soak["benchmark"] == "bridge soak"
    assert len(soak["samples"]) >= 9
    first = soak["samples"][0]
    assert first["rss"] > 0
    assert first["fds"] > 0
    assert first["tasks"] > 0  # the bridge reported its asyncio tasks
    assert soak["calls"]["replaced"] >= 3  # calls of 4-5 s in a 9 s soak were replaced
    assert soak["turns"]["replies"] > 0
    assert soak["turns"]["protocol_errors"] == 0
    (minute,) = soak["minutes"]
    assert minute["caller_to_model_ms"]["p99"] is not None
    assert chart_path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_soak_refuses_what_it_cannot_combine(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["--soak", "1", "--sweep", "10,20"])
    assert exit_info.value.code == 2
    assert "--soak runs on its own" in capsys.readouterr().err
