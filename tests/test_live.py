"""The live feed over Server-Sent Events, and shared between replicas through PostgreSQL."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx

from bridge.record import CallRecord, Turn
from bridge.sim.realtime_server import RealtimeSimulator
from bridge.store import CallLog
from bridge.store.tail import events
from tests.test_store_support import (
    TOKEN,
    call_with_barge_in,
    database,
    logged_bridge,
    until,
    utterance,
)

AUTH = {"authorization": f"Bearer {TOKEN}"}
Messages = list[tuple[str, dict[str, Any]]]


@contextlib.asynccontextmanager
async def listening(base: str, until_kind: str | None = "call_ended") -> AsyncIterator[Messages]:
    """Collect /api/live messages in the background (from the snapshot on) while inside."""
    received: Messages = []
    connected = asyncio.Event()

    async def listen(client: httpx.AsyncClient) -> None:
        async with client.stream("GET", "/api/live", headers=AUTH) as response:
            assert response.status_code == 200
            assert response.headers["content-type"].startswith("text/event-stream")
            async for kind, data in events(response.aiter_lines()):
                received.append((kind, data))
                connected.set()
                if kind == until_kind:
                    return

    async with httpx.AsyncClient(base_url=base, timeout=20) as client, asyncio.TaskGroup() as tg:
        task = tg.create_task(listen(client))
        await asyncio.wait_for(connected.wait(), 5)
        yield received
        await asyncio.wait_for(task, 20)


async def test_live_feed_follows_a_call_with_transcript_deltas_and_barge_in(
    simulator: RealtimeSimulator, tmp_path: Path
) -> None:
    async with (
        database("sqlite", tmp_path) as url,
        logged_bridge(simulator, url) as logged,
        listening(logged.base) as received,
    ):
        call_sid, truncate = await call_with_barge_in(logged, simulator)
    kinds = [kind for kind, _ in received]
    assert kinds[0] == "snapshot"
    assert kinds[1] == "call_started"
    assert kinds[-1] == "call_ended"
    assert received[1][1]["call"]["call_sid"] == call_sid
    assert received[1][1]["call"]["from_number"] == "+15550100001"
    item = truncate["item_id"]
    texts = [
        data["turn"]["text"]
        for kind, data in received
        if kind == "turn" and data["turn"]["item_id"] == item
    ]
    assert len(set(texts)) > 3, "the reply's transcript did not arrive as it grew"
    assert all(b.startswith(a) for a, b in itertools.pairwise(texts))
    last = [
        data["turn"]
        for kind, data in received
        if kind == "turn" and data["turn"]["item_id"] == item
    ][-1]
    assert last["interrupted"]
    assert last["heard_ms"] == truncate["audio_end_ms"]
    barge_ins = [
        data for kind, data in received if kind == "event" and data["event"]["kind"] == "barge_in"
    ]
    assert len(barge_ins) == 1
    assert received[-1][1]["end_reason"] == "caller_hangup"
    callers = {
        data["turn"]["text"]
        for kind, data in received
        if kind == "turn" and data["turn"]["role"] == "caller"
    }
    assert "When are you open?" in callers


async def test_a_late_subscriber_starts_from_a_snapshot_of_live_calls(
    simulator: RealtimeSimulator, tmp_path: Path
) -> None:
    simulator.config.replies = ("Hello there, how can I help?",)
    async with (
        database("sqlite", tmp_path) as url,
        logged_bridge(simulator, url) as logged,
        logged.bridge.call() as caller,
    ):
        await caller.say_and_wait(utterance())
        await caller.wait_for_playback(0.5, timeout=10)
        async with listening(logged.base, until_kind="snapshot") as received:
            pass
        await caller.hangup()
    ((_, snapshot),) = received
    (live,) = snapshot["calls"]
    assert live["call"]["call_sid"] == caller.call_sid
    assert [turn["role"] for turn in live["turns"]] == ["caller", "assistant"]
    assert live["turns"][1]["text"].startswith("Hello there")


async def test_streams_end_by_themselves_so_shutdown_never_waits_on_a_dashboard(
    simulator: RealtimeSimulator, tmp_path: Path
) -> None:
    async with (
        database("sqlite", tmp_path) as url,
        logged_bridge(simulator, url, stream_seconds=0.5) as logged,
        httpx.AsyncClient(base_url=logged.base, timeout=10) as client,
    ):
        async with asyncio.timeout(5):
            async with client.stream("GET", "/api/live", headers=AUTH) as response:
                body = [line async for line in response.aiter_lines()]
        assert "retry: 2000" in body
        assert "event: snapshot" in body
        assert logged.call_log.feed.subscribers == 0


async def test_replicas_share_the_live_feed_through_postgres(
    simulator: RealtimeSimulator, tmp_path: Path
) -> None:
    simulator.config.replies = ("Replica reply.",)
    async with (
        database("postgresql", tmp_path) as url,
        logged_bridge(simulator, url) as one,
        logged_bridge(simulator, url) as other,
    ):
        for replica in (one, other):
            assert replica.call_log.relay is not None
            await asyncio.wait_for(replica.call_log.relay.connected.wait(), 10)
        async with listening(other.base) as seen_elsewhere, one.bridge.call() as caller:
            await caller.say_and_wait(utterance())
            await caller.wait_for_playback(0.5, timeout=10)
            await caller.wait_until_quiet(0.3, timeout=10)
            await until(lambda: caller.call_sid in other.call_log.feed.calls, 5)
            await caller.hangup()
    kinds = [kind for kind, _ in seen_elsewhere]
    assert kinds[0] == "snapshot"
    assert "call_started" in kinds
    assert kinds[-1] == "call_ended"
    started = next(data for kind, data in seen_elsewhere if kind == "call_started")
    assert started["call"]["call_sid"] == caller.call_sid
    assert started["call"]["instance"] == one.call_log.instance
    said = [data["turn"]["text"] for kind, data in seen_elsewhere if kind == "turn"]
    assert "Replica reply." in said


async def test_calls_of_a_replica_that_died_leave_the_feed(tmp_path: Path) -> None:
    async with database("postgresql", tmp_path) as url:
        watcher = CallLog(url, heartbeat=0.2)
        async with watcher:
            doomed = CallLog(url, heartbeat=0.2)
            async with doomed:
                assert doomed.relay is not None
                assert watcher.relay is not None
                await asyncio.wait_for(doomed.relay.connected.wait(), 10)
                await asyncio.wait_for(watcher.relay.connected.wait(), 10)
                record = CallRecord(call_sid="CA" + "9" * 32, stream_sid="MZ" + "9" * 32)
                doomed.recorder.call_started(record)
                turn = Turn("caller", "item_1", 0.1, text="anyone there?")
                record.turns.append(turn)
                doomed.recorder.turn_updated(record, turn)
                await until(lambda: record.call_sid in watcher.feed.calls, 5)
                snapshot = watcher.feed.snapshot()["calls"]
                assert [t["text"] for t in snapshot[0]["turns"]] == ["anyone there?"]
                # the replica goes away without ending its call (crash, network split)
            await until(lambda: record.call_sid not in watcher.feed.calls, 5)


async def test_a_listener_that_missed_the_start_learns_the_call_from_the_heartbeat(
    tmp_path: Path,
) -> None:
    async with database("postgresql", tmp_path) as url:
        serving = CallLog(url, heartbeat=0.2)
        async with serving:
            record = CallRecord(call_sid="CA" + "8" * 32, stream_sid="MZ" + "8" * 32)
            record.from_number = "+15550100008"
            serving.recorder.call_started(record)  # before anyone listens
            late = CallLog(url, heartbeat=0.2)
            async with late:
                await until(lambda: record.call_sid in late.feed.calls, 5)
                info = late.feed.calls[record.call_sid]["call"]
                assert info["from_number"] == "+15550100008"
                serving.recorder.call_ended(record)
                await until(lambda: record.call_sid not in late.feed.calls, 5)
