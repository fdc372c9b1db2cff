"""The post-call webhook end to end: real bridge, real call-log database (SQLite file and
PostgreSQL), a real HTTP receiver on a loopback port that keeps the raw bytes it was sent.

Signatures are checked here with plain hmac/hashlib, not with bridge.webhooks.signing.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import hmac
import json
import logging
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from bridge import metrics
from bridge.app import create_app
from bridge.errors import ConfigError
from bridge.record import CallRecord, EndReason, MemoryRecorder, Turn
from bridge.server import serving
from bridge.settings import Settings
from bridge.sim.realtime_server import RealtimeSimulator
from bridge.sim.signals import silence, tone
from bridge.store import CallLog
from bridge.store.queries import CallDetail
from bridge.web import admin_routes
from bridge.webhooks import outbox
from bridge.webhooks.sender import WebhookSender
from tests.conftest import RunningBridge, make_settings
from tests.test_calls_cli import bridge_cli, environment
from tests.test_store_support import BACKENDS, TOKEN, LoggedBridge, Tee, database, until

SECRET = "whsec-test-0123456789abcdef"
AUTH = {"authorization": f"Bearer {TOKEN}"}
HANG = -1  # a scripted answer: hold the request open, never answer
RATE_IN = 8000


@pytest.fixture(params=BACKENDS)
async def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    async with database(request.param, tmp_path) as url:
        yield url


# ---- the receiver ------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Received:
    body: bytes  # exactly the bytes that arrived
    headers: dict[str, str]  # lower-case names
    at: float  # loop time of arrival

    @property
    def delivery_id(self) -> str:
        return self.headers["x-bridge-delivery"]

    def json(self) -> dict[str, Any]:
        value: dict[str, Any] = json.loads(self.body)
        return value


class Receiver:
    """A webhook receiver on loopback: answers each request with the next scripted status
    (200 once the script is used up), or holds it open (`HANG`) until the receiver closes."""

    def __init__(self, *script: int) -> None:
        self.script = list(script)
        self.received: list[Received] = []
        self.base = ""
        self._release = asyncio.Event()
        self._stack = contextlib.AsyncExitStack()

    @property
    def url(self) -> str:
        return self.base + "/hooks/calls"

    async def handle(self, request: Request) -> Response:
        body = await request.body()
        loop = asyncio.get_running_loop()
        self.received.append(Received(body, dict(request.headers), loop.time()))
        answer = self.script.pop(0) if self.script else 200
        if answer == HANG:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(30):
                    await self._release.wait()
            answer = 200
        return Response(status_code=answer)

    async def __aenter__(self) -> Receiver:
        app = Starlette(routes=[Route("/hooks/calls", self.handle, methods=["POST"])])
        self.base = await self._stack.enter_async_context(serving(app))
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._release.set()
        await self._stack.aclose()

    async def wait_for(self, count: int, timeout: float = 10.0) -> list[Received]:
        await until(lambda: len(self.received) >= count, timeout)
        return self.received


def signature_ok(received: Received, secret: str = SECRET) -> bool:
    """The receiver's check, written independently of bridge.webhooks.signing."""
    expected = "sha256=" + hmac.new(secret.encode(), received.body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected, received.headers.get("x-bridge-signature", ""))


# ---- the bridge ------------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def webhook_bridge(
    simulator: RealtimeSimulator,
    url: str,
    *,
    receiver: Receiver | None = None,
    numbers_file: Path | None = None,
    instance: str | None = None,
    **sender_options: Any,
) -> AsyncIterator[LoggedBridge]:
    """A bridge wired as `bridge serve` wires it: call log, admin API, webhook sender."""
    call_log = CallLog(url, batch_delay=0.02, heartbeat=0.5, instance=instance)
    memory = MemoryRecorder()
    overrides: dict[str, Any] = {"admin_token": TOKEN, "call_webhook_secret": SECRET}
    if receiver is not None:
        overrides["call_webhook_url"] = receiver.url
    if numbers_file is not None:
        overrides["numbers_file"] = str(numbers_file)
    settings = make_settings(simulator, **overrides)
    app = create_app(
        settings,
        recorder=Tee(memory, call_log.recorder),
        routes=admin_routes(settings, call_log, stream_seconds=10),
    )
    app.state.bridge.webhooks = WebhookSender.for_call_log(call_log, settings, **sender_options)
    async with call_log, serving(app) as base:
        yield LoggedBridge(RunningBridge(base, app, memory, settings), call_log)


def finished_call(call_log: CallLog, webhook_url: str, *, text: str = "Where is my order?") -> str:
    """A short call through the call log's recorder, as a live call reports it; its SID."""
    call_sid = "CA" + hashlib.sha256(f"{time.time_ns()}{text}".encode()).hexdigest()[:32]
    record = CallRecord(call_sid=call_sid, stream_sid="MZ" + call_sid[2:], model="gpt-realtime")
    record.from_number, record.to_number = "+15550100001", "+15550100000"
    record.webhook_url = webhook_url
    recorder = call_log.recorder
    recorder.call_started(record)
    turn = Turn("caller", "item_1", 0.5, 1.5, text=text)
    record.turns.append(turn)
    recorder.turn_updated(record, turn)
    record.end_reason, record.ended_at = EndReason.CALLER_HANGUP, record.started_at + 2.0
    recorder.call_ended(record)
    return call_sid


async def deliveries(call_log: CallLog, call_sid: str) -> list[outbox.Delivery]:
    return await outbox.list_deliveries(call_log.engine, call_sid=call_sid)


async def settled(call_log: CallLog, call_sid: str, state: str, timeout: float = 10.0) -> None:
    async def reached() -> bool:
        return [d.state for d in await deliveries(call_log, call_sid)][:1] == [state]

    await until(reached, timeout)


def sample(series: str, **labels: str) -> float:
    return metrics.REGISTRY.get_sample_value(series, labels) or 0.0


def delivered_count(outcome: str) -> float:
    return sample("bridge_webhook_deliveries_total", outcome=outcome)


def utterance(seconds: float = 0.6) -> np.ndarray:
    return np.concatenate([tone(440, seconds, RATE_IN, 0.4), silence(0.8, RATE_IN)])


# ---- tests -------------------------------------------------------------------------------------

CARD, EMAIL, PHONE = "4111 1111 1111 1111", "jane.doe@example.com", "+44 7700 900123"


async def test_a_call_is_posted_signed_and_redacted_as_the_api_shows_it(
    simulator: RealtimeSimulator, db_url: str, tmp_path: Path
) -> None:
    """A real call through the simulators, on a profile that redacts phone, card and email:
    one POST, signed over its raw bytes, with the API's JSON of the call and none of the three."""
    simulator.config.caller_transcripts = (
        f"My card is {CARD}, my email is {EMAIL}, call me back on {PHONE}.",
    )
    simulator.config.replies = (f"Thanks, I will write to {EMAIL} today.",)
    delivered = delivered_count("delivered")
    async with Receiver() as receiver:
        numbers = tmp_path / "numbers.toml"
        numbers.write_text(
            f"""
[profiles.default]
greeting = ""
redact = ["phone", "card", "email"]
call_webhook_url = "{receiver.url}"
"""
        )
        async with webhook_bridge(simulator, db_url, numbers_file=numbers) as logged:
            async with logged.bridge.call() as caller:
                await simulator.wait_for_session()
                await caller.say_and_wait(utterance())
                await caller.wait_for_playback(0.5, timeout=15)
                await caller.wait_until_quiet(0.3, timeout=15)
                await caller.hangup()
            (received,) = await receiver.wait_for(1, timeout=15)
            await settled(logged.call_log, caller.call_sid, "delivered")
            async with httpx.AsyncClient(base_url=logged.base, headers=AUTH) as client:
                api = (await client.get(f"/api/calls/{caller.call_sid}")).json()
            (row,) = await deliveries(logged.call_log, caller.call_sid)
    assert signature_ok(received)
    assert not signature_ok(received, secret=SECRET + "x")
    assert received.headers["content-type"] == "application/json"
    assert received.headers["user-agent"] == "bridge-webhook/1"
    assert received.delivery_id == row.delivery_id
    assert len(received.delivery_id) == 32
    int(received.delivery_id, 16)
    body = received.json()
    assert set(body) == set(api) == {"call", "turns", "tool_calls", "events", "recording"}
    assert body["call"]["call_sid"] == caller.call_sid
    assert body["call"]["end_reason"] == "caller_hangup"
    assert body["turns"] == api["turns"]
    assert body["recording"] is None
    assert api["recording"] is None  # the API's field: no WAV for this call
    texts = [turn["text"] for turn in body["turns"]]
    assert texts == [
        "My card is [card], my email is [email], call me back on [phone].",
        "Thanks, I will write to [email] today.",
    ]
    raw = received.body.decode()
    for secret_text in (CARD, EMAIL, PHONE, "4111 1111", "jane.doe", "7700 900123"):
        assert secret_text not in raw
    assert (row.state, row.attempts, row.last_status) == ("delivered", 1, 200)
    assert row.body is not None
    assert row.body.encode() == received.body
    assert delivered_count("delivered") == delivered + 1


async def test_a_failing_receiver_is_retried_within_5_s_with_the_same_bytes(
    simulator: RealtimeSimulator, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """500 first, then 200: the retry (default schedule) comes within 5 s, with the same
    delivery id and the same bytes; the outbox and the metrics say what happened."""
    caplog.set_level(logging.DEBUG)
    url = f"sqlite+aiosqlite:///{tmp_path / 'calls.db'}"
    retried, delivered = delivered_count("retried"), delivered_count("delivered")
    async with (
        Receiver(500) as receiver,
        webhook_bridge(simulator, url, receiver=receiver) as logged,
    ):
        call_sid = finished_call(logged.call_log, receiver.url)
        await receiver.wait_for(1)
        await until(lambda: sample("bridge_webhook_backlog") == 1)  # refreshed after the attempt
        first, second = await receiver.wait_for(2, timeout=10)
        await settled(logged.call_log, call_sid, "delivered")
        (row,) = await deliveries(logged.call_log, call_sid)
        await until(lambda: sample("bridge_webhook_backlog") == 0)
    assert second.at - first.at <= 5.0
    assert second.delivery_id == first.delivery_id == row.delivery_id
    assert second.body == first.body
    assert signature_ok(first)
    assert signature_ok(second)
    assert first.json()["call"]["call_sid"] == call_sid
    assert (row.attempts, row.last_status, row.last_error) == (2, 200, "")
    assert delivered_count("retried") == retried + 1
    assert delivered_count("delivered") == delivered + 1
    assert sample("bridge_webhook_delivery_seconds_count") >= 2
    assert SECRET not in caplog.text
    assert "HTTP 500" in caplog.text


async def test_no_answer_within_the_timeout_is_a_failed_attempt(
    simulator: RealtimeSimulator, tmp_path: Path
) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'calls.db'}"
    async with Receiver(HANG) as receiver, CallLog(url, batch_delay=0.01) as call_log:
        sender = WebhookSender(
            call_log.engine, "sender-1", secret=SECRET.encode(), timeout=0.5, delays=(0.2,)
        )
        call_sid = finished_call(call_log, receiver.url)
        await until(lambda: not call_log.writer.is_pending(call_sid))
        started = time.monotonic()
        assert await sender.deliver_due() == 1
        took = time.monotonic() - started
        (row,) = await deliveries(call_log, call_sid)
        assert (row.state, row.attempts, row.last_status) == ("pending", 1, None)
        assert row.last_error == "no answer within 0.5 s"
        assert row.last_attempt_at is not None
        assert row.next_attempt_at - row.last_attempt_at <= 0.2 + 1e-6
        await until(lambda: time.time() >= row.next_attempt_at)
        assert await sender.deliver_due() == 1
        (row,) = await deliveries(call_log, call_sid)
    assert 0.5 <= took < 2.0
    assert (row.state, row.attempts, row.last_status) == ("delivered", 2, 200)
    first, second = receiver.received
    assert first.body == second.body
    assert first.delivery_id == second.delivery_id


async def test_a_restart_between_attempts_still_delivers(
    simulator: RealtimeSimulator, db_url: str
) -> None:
    """The first attempt fails; the bridge stops; a new one on the same database makes the
    delivery: the same id, the same bytes."""
    async with Receiver(500) as receiver:
        async with webhook_bridge(
            simulator, db_url, receiver=receiver, delays=(2.0,), instance="first"
        ) as first_run:
            call_sid = finished_call(first_run.call_log, receiver.url)
            (failed,) = await receiver.wait_for(1)
            await until(lambda: _attempts(first_run.call_log, call_sid, 1))
        assert len(receiver.received) == 1  # stopped before the retry was due
        async with webhook_bridge(
            simulator, db_url, receiver=receiver, delays=(2.0,), instance="second"
        ) as second_run:
            _, made = await receiver.wait_for(2)
            await settled(second_run.call_log, call_sid, "delivered")
            (row,) = await deliveries(second_run.call_log, call_sid)
    assert made.delivery_id == failed.delivery_id == row.delivery_id
    assert made.body == failed.body
    assert signature_ok(made)
    assert (row.attempts, row.last_status) == (2, 200)
    assert len(receiver.received) == 2


async def test_a_restart_during_an_attempt_gives_the_claim_back(
    simulator: RealtimeSimulator, tmp_path: Path
) -> None:
    """The bridge stops while the receiver still holds the request: the claim is released on
    the way out, so the next bridge sends at once instead of waiting for the lease to end."""
    url = f"sqlite+aiosqlite:///{tmp_path / 'calls.db'}"
    async with Receiver(HANG) as receiver:
        async with webhook_bridge(simulator, url, receiver=receiver) as first_run:
            call_sid = finished_call(first_run.call_log, receiver.url)
            (held,) = await receiver.wait_for(1)
            (row,) = await deliveries(first_run.call_log, call_sid)
            assert row.claimed_by == first_run.call_log.instance
        async with webhook_bridge(simulator, url, receiver=receiver) as second_run:
            _, made = await receiver.wait_for(2, timeout=5)  # the lease is 60 s
            await settled(second_run.call_log, call_sid, "delivered")
    assert made.delivery_id == held.delivery_id
    assert made.body == held.body


async def _attempts(call_log: CallLog, call_sid: str, count: int) -> bool:
    rows = await deliveries(call_log, call_sid)
    return bool(rows) and rows[0].attempts >= count


async def test_cli_lists_and_redelivers(simulator: RealtimeSimulator, db_url: str) -> None:
    """`bridge webhooks list` shows the delivery; `redeliver SID` queues a new one (a new id)
    that the running bridge sends; an unknown call is an error."""
    async with (
        Receiver() as receiver,
        webhook_bridge(simulator, db_url, receiver=receiver, poll_interval=0.2) as logged,
    ):
        call_sid = finished_call(logged.call_log, receiver.url)
        (first,) = await receiver.wait_for(1)
        await settled(logged.call_log, call_sid, "delivered")
        env = environment(db_url)
        code, listing = await bridge_cli("webhooks", "list", env=env)
        assert code == 0, listing
        code, pending = await bridge_cli("webhooks", "list", "--state", "pending", env=env)
        assert code == 0, pending
        code, again = await bridge_cli("webhooks", "redeliver", call_sid, env=env)
        assert code == 0, again
        new_id = again.strip()
        _, second = await receiver.wait_for(2)
        await until(lambda: _all_delivered(logged.call_log, call_sid, 2))
        code, as_json = await bridge_cli("webhooks", "list", "--json", env=env)
        assert code == 0, as_json
        code, unknown = await bridge_cli("webhooks", "redeliver", "CA" + "f" * 32, env=env)
    header, line = listing.strip().splitlines()
    assert header.split()[:3] == ["delivery", "id", "call"]
    assert line.split()[:5] == [first.delivery_id, call_sid, "delivered", "1", "200"]
    assert pending.strip().splitlines()[1:] == []
    assert len(new_id) == 32
    assert new_id != first.delivery_id
    assert second.delivery_id == new_id
    assert second.json()["call"]["call_sid"] == call_sid
    assert signature_ok(second)
    rows = [json.loads(line) for line in as_json.strip().splitlines()]
    assert [(r["delivery_id"], r["state"]) for r in rows] == [
        (new_id, "delivered"),
        (first.delivery_id, "delivered"),
    ]
    assert code == 1
    assert "no call" in unknown


async def _all_delivered(call_log: CallLog, call_sid: str, count: int) -> bool:
    rows = await deliveries(call_log, call_sid)
    return len(rows) == count and all(row.state == "delivered" for row in rows)


def test_production_refuses_a_webhook_url_without_the_secret() -> None:
    base: dict[str, Any] = {
        "openai_api_key": "sk-test",
        "environment": "production",
        "twilio_auth_token": "0" * 32,
        "call_webhook_url": "https://hooks.example.com/calls",
    }
    with pytest.raises(ConfigError) as refused:
        create_app(Settings(**base))
    assert "BRIDGE_CALL_WEBHOOK_SECRET" in str(refused.value)
    create_app(Settings(**base, call_webhook_secret=SECRET))  # with it: starts
    create_app(Settings(**(base | {"call_webhook_url": None})))  # no webhook: no secret needed


def test_development_warns_and_sends_unsigned(caplog: pytest.LogCaptureFixture) -> None:
    from bridge.webhooks import signing

    signing._warned = False
    caplog.set_level(logging.WARNING)
    settings = Settings(openai_api_key="sk-test", call_webhook_url="https://h.example.com/c")
    create_app(settings)
    create_app(settings)
    warnings = [r for r in caplog.records if "BRIDGE_CALL_WEBHOOK_SECRET" in r.getMessage()]
    assert len(warnings) == 1  # once per process


async def test_unsigned_in_development_and_never_unsigned_in_production(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'calls.db'}"
    async with Receiver() as receiver, CallLog(url, batch_delay=0.01) as call_log:
        call_sid = finished_call(call_log, receiver.url)
        await until(lambda: not call_log.writer.is_pending(call_sid))
        production = WebhookSender(call_log.engine, "p", secret=None, require_signature=True)
        assert await production.deliver_due() == 1
        (row,) = await deliveries(call_log, call_sid)
        assert (row.state, row.last_status) == ("pending", None)
        assert "BRIDGE_CALL_WEBHOOK_SECRET" in row.last_error
        assert receiver.received == []
        development = WebhookSender(
            call_log.engine, "d", secret=None, clock=lambda: time.time() + 6
        )
        assert await development.deliver_due() == 1
        (received,) = receiver.received
    assert "x-bridge-signature" not in received.headers
    assert received.delivery_id == row.delivery_id


def test_the_api_json_names_the_recording_when_there_is_one() -> None:
    recorded = CallDetail({"call_sid": "CA1", "recording": "2026/12/CA1.wav"}, [], [])
    unrecorded = CallDetail({"call_sid": "CA2", "recording": None}, [], [])
    assert recorded.to_json()["recording"] == "/api/calls/CA1/recording"
    assert unrecorded.to_json()["recording"] is None
