"""The webhook outbox on a real SQLite file and a real PostgreSQL database: queued once with the
call's final row, claimed by one sender at a time, given up after 24 h; the retry schedule and
the signature as pure functions.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import random
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from bridge.record import CallRecord, EndReason
from bridge.store import CallLog
from bridge.webhooks import outbox, signing
from bridge.webhooks.sender import GIVE_UP_AFTER, HOURLY, RETRY_DELAYS, WebhookSender, retry_delay
from tests.test_store_support import BACKENDS, database, until
from tests.test_webhooks import (
    SECRET,
    Receiver,
    delivered_count,
    deliveries,
    finished_call,
    signature_ok,
)


@pytest.fixture(params=BACKENDS)
async def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    async with database(request.param, tmp_path) as url:
        yield url


async def written(call_log: CallLog) -> None:
    await until(lambda: call_log.writer.pending == 0)


async def test_the_final_write_queues_one_delivery_per_call(db_url: str) -> None:
    """Queued in the final row's transaction, once however often that row is written again;
    not for a call still running, nor for one without a webhook URL. The writer wakes the
    sender after the commit."""
    url = "http://127.0.0.1:9/hooks"
    async with CallLog(db_url, batch_delay=0.01) as call_log:
        wakes: list[float] = []
        call_log.writer.on_webhook = lambda: wakes.append(time.monotonic())
        recorder = call_log.recorder
        running = CallRecord(call_sid="CA" + "1" * 32, stream_sid="MZ" + "1" * 32)
        running.webhook_url = url
        recorder.call_started(running)
        await written(call_log)
        assert await deliveries(call_log, running.call_sid) == []
        call_sid = finished_call(call_log, url)
        await written(call_log)
        (queued,) = await deliveries(call_log, call_sid)
        assert len(wakes) == 1
        again = CallRecord(call_sid=call_sid, stream_sid="MZ" + call_sid[2:])
        again.webhook_url = url
        again.end_reason, again.ended_at = EndReason.CALLER_HANGUP, again.started_at + 3
        recorder.call_ended(again)  # the final row written a second time
        await written(call_log)
        quiet = CallRecord(call_sid="CA" + "2" * 32, stream_sid="MZ" + "2" * 32)
        quiet.end_reason, quiet.ended_at = EndReason.CALLER_HANGUP, quiet.started_at + 1
        recorder.call_started(quiet)
        recorder.call_ended(quiet)
        await written(call_log)
        assert await deliveries(call_log, call_sid) == [queued]
        assert await deliveries(call_log, quiet.call_sid) == []
    assert (queued.state, queued.attempts, queued.url, queued.body) == ("pending", 0, url, None)
    assert queued.next_attempt_at == queued.created_at


async def test_a_claim_is_held_by_one_sender_until_its_lease_ends(db_url: str) -> None:
    async with CallLog(db_url, batch_delay=0.01) as call_log:
        call_sid = finished_call(call_log, "http://127.0.0.1:9/hooks")
        await written(call_log)
        engine, now = call_log.engine, time.time()
        (mine,) = await outbox.claim_due(engine, "one", now, lease=60, limit=10)
        assert await outbox.claim_due(engine, "two", now + 1, lease=60, limit=10) == []
        (theirs,) = await outbox.claim_due(engine, "two", now + 61, lease=60, limit=10)
        assert mine.id == theirs.id
        assert theirs.claimed_by == "two"
        # The first sender's lease ran out: it may not record its attempt any more.
        assert not await outbox.mark_attempt_failed(
            engine, mine.id, "one", now + 62, status=500, error="HTTP 500", retry_at=now + 70
        )
        assert await outbox.release(engine, "two") == 1
        (row,) = await deliveries(call_log, call_sid)
    assert (row.claimed_by, row.claimed_until, row.attempts) == ("", None, 0)


async def test_two_senders_on_one_database_deliver_each_call_once(db_url: str) -> None:
    """Two senders (as two workers or replicas would run them) race for the same rows: every
    call reaches the receiver exactly once."""
    calls = 12
    async with Receiver() as receiver, CallLog(db_url, batch_delay=0.01) as call_log:
        sids = {finished_call(call_log, receiver.url, text=f"call {n}") for n in range(calls)}
        await written(call_log)
        senders = [
            WebhookSender(call_log.engine, name, secret=SECRET.encode(), poll_interval=0.05)
            for name in ("worker-1", "worker-2")
        ]
        async with asyncio.TaskGroup() as group:
            tasks = [group.create_task(sender.run()) for sender in senders]
            await receiver.wait_for(calls)
            await until(lambda: _all_delivered(call_log, sids))
            await asyncio.sleep(0.3)  # a duplicate would arrive now: both keep polling
            for task in tasks:
                task.cancel()
    ids = [received.delivery_id for received in receiver.received]
    assert len(ids) == len(set(ids)) == calls
    assert {received.json()["call"]["call_sid"] for received in receiver.received} == sids
    assert all(signature_ok(received) for received in receiver.received)


async def _all_delivered(call_log: CallLog, sids: set[str]) -> bool:
    rows = await outbox.list_deliveries(call_log.engine, limit=100)
    return {row.call_sid for row in rows if row.state == "delivered"} == sids


async def test_a_delivery_is_given_up_24_hours_after_it_was_queued(tmp_path: Path) -> None:
    """The sender's clock is moved on, not waited for: failing attempts are retried until the
    day is over, then the delivery is marked failed and counted."""
    url = f"sqlite+aiosqlite:///{tmp_path / 'calls.db'}"
    offset = 0.0
    failed = delivered_count("failed")
    async with Receiver(500, 500, 503) as receiver, CallLog(url, batch_delay=0.01) as call_log:
        sender = WebhookSender(
            call_log.engine, "s", secret=SECRET.encode(), clock=lambda: time.time() + offset
        )
        call_sid = finished_call(call_log, receiver.url)
        await written(call_log)
        assert await sender.deliver_due() == 1
        (row,) = await deliveries(call_log, call_sid)
        assert row.state == "pending"
        offset = GIVE_UP_AFTER - 60  # a minute before the end: retried at the deadline
        assert await sender.deliver_due() == 1
        (row,) = await deliveries(call_log, call_sid)
        assert row.state == "pending"
        assert row.next_attempt_at == pytest.approx(row.created_at + GIVE_UP_AFTER)
        offset = GIVE_UP_AFTER + 1
        assert await sender.deliver_due() == 1
        (row,) = await deliveries(call_log, call_sid)
        assert await sender.deliver_due() == 0  # nothing is due any more
    assert (row.state, row.attempts, row.last_status, row.last_error) == (
        "failed",
        3,
        503,
        "HTTP 503",
    )
    assert delivered_count("failed") == failed + 1
    assert len(receiver.received) == 3


def test_the_retry_schedule_backs_off_to_hourly_with_jitter() -> None:
    rng = random.Random(7)
    for attempt, base in enumerate([*RETRY_DELAYS, HOURLY, HOURLY], start=1):
        delays = [retry_delay(attempt, rng=rng) for _ in range(200)]
        assert 0.8 * base <= min(delays) <= max(delays) <= base
        assert max(delays) - min(delays) > 0.1 * base  # spread, so retries do not bunch
    assert RETRY_DELAYS[0] <= 5.0  # the first retry comes within 5 s


def test_signatures_match_a_plain_hmac_of_the_raw_body() -> None:
    body = '{"call":{"call_sid":"CA1","text":"héllo"}}'.encode()
    header = signing.sign(b"k3y", body)
    assert header == "sha256=" + hmac.new(b"k3y", body, hashlib.sha256).hexdigest()
    assert signing.verify(b"k3y", body, header)
    assert not signing.verify(b"k3y", body + b" ", header)
    assert not signing.verify(b"other", body, header)


async def test_a_sender_with_no_webhook_configured_leaves_the_database_alone(
    tmp_path: Path,
) -> None:
    """No URL anywhere: the sender neither polls nor sends (a poll costs the event loop); once
    one is configured (a reload), a wake-up or the idle poll starts it."""
    async with (
        database("sqlite", tmp_path) as url,
        Receiver() as receiver,
        CallLog(url, batch_delay=0.01) as call_log,
    ):
        finished_call(call_log, receiver.url)
        await written(call_log)
        sender = WebhookSender(call_log.engine, "one", secret=SECRET.encode(), poll_interval=0.05)
        configured = False
        sender.wanted = lambda: configured
        task = asyncio.create_task(sender.run())
        try:
            await asyncio.sleep(0.5)
            assert receiver.received == []
            configured = True
            sender.wake()
            await receiver.wait_for(1)
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
