"""Redaction: phone numbers, card numbers (Luhn-checked) and e-mail addresses replaced in what the
call log keeps, with real-looking text; where a record becomes rows (stored and live) the
profile's choice applies to turns, tool calls and events; end to end, a call whose caller reads
out a card, a phone number and an address is stored and served by the API without them."""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from bridge.app import create_app
from bridge.numbers import Numbers
from bridge.record import CallEvent, CallRecord, MemoryRecorder, ToolCall, Turn
from bridge.redact import REDACT_KINDS, luhn_valid, redact
from bridge.server import serving
from bridge.sim.realtime_server import RealtimeSimulator
from bridge.store import CallLog
from bridge.store.rows import event_detail, tool_call_fields, turn_fields
from bridge.web import admin_routes
from tests.conftest import RunningBridge, make_settings
from tests.test_store_support import BACKENDS, TOKEN, LoggedBridge, database, utterance

ALL = REDACT_KINDS

CASES = [
    # (text, kinds, expected)
    (
        "Sure, my card number is 4111 1111 1111 1111 and it expires 09/28.",
        ALL,
        "Sure, my card number is [card] and it expires 09/28.",
    ),
    (
        "It's a Mastercard, 5555-5555-5555-4444.",
        ("card",),
        "It's a Mastercard, [card].",
    ),
    ("Amex 378282246310005, thanks.", ALL, "Amex [card], thanks."),
    # Order and tracking numbers of a card's length fail the Luhn check: they stay.
    ("My order number is 4111 1111 1111 1112.", ALL, "My order number is 4111 1111 1111 1112."),
    ("Tracking 9400110200881234567890 please.", ALL, "Tracking 9400110200881234567890 please."),
    (
        "You can call me back on (555) 010-0199 or +44 20 7946 0958 tomorrow.",
        ALL,
        "You can call me back on [phone] or [phone] tomorrow.",
    ),
    ("My mobile is 07700 900123.", ("phone",), "My mobile is [phone]."),
    ("Try 555.010.0100 after five.", ("phone",), "Try [phone] after five."),
    # Short numbers are not phone numbers: amounts, times, order numbers, dates.
    (
        "Order 48213 came to $129.99 on 2026-12-06 at 10:30, table for 4.",
        ALL,
        "Order 48213 came to $129.99 on 2026-12-06 at 10:30, table for 4.",
    ),
    (
        "Email me at jane.doe+orders@example.co.uk when it ships.",
        ALL,
        "Email me at [email] when it ships.",
    ),
    ("It's jane dot doe at gmail dot com.", ("email",), "It's jane dot [email]."),
    ("Check example.com for the menu.", ALL, "Check example.com for the menu."),
    # Only the chosen kinds go.
    (
        "Card 4111111111111111, phone 5550100199, mail a@b.io",
        ("email",),
        "Card 4111111111111111, phone 5550100199, mail [email]",
    ),
    ("Card 4111111111111111, phone 5550100199", (), "Card 4111111111111111, phone 5550100199"),
]


@pytest.mark.parametrize(("text", "kinds", "expected"), CASES)
def test_redact(text: str, kinds: tuple[str, ...], expected: str) -> None:
    assert redact(text, kinds) == expected


def test_luhn() -> None:
    for valid in ("4111111111111111", "5555555555554444", "378282246310005", "6011111111111117"):
        assert luhn_valid(valid)
    for invalid in ("4111111111111112", "1234567812345678"):
        assert not luhn_valid(invalid)


def test_a_growing_transcript_never_shows_half_a_number() -> None:
    assert redact("My card is 4111 1111", ALL, partial=True) == "My card is [...]"
    assert redact("write to jane@exam", ALL, partial=True) == "write to [...]"
    assert redact("Table for 4", ALL, partial=True) == "Table for 4"  # too short to matter
    assert redact("My card is 4111 1111", ("email",), partial=True) == "My card is 4111 1111"
    # Once it is whole, the kind is known.
    assert redact("My card is 4111 1111 1111 1111", ALL, partial=True) == "My card is [card]"


def _record(kinds: frozenset[str]) -> CallRecord:
    return CallRecord(call_sid="CA1", stream_sid="MZ1", redact=kinds)


def test_rows_apply_the_profile_to_turns_tool_calls_and_events() -> None:
    record = _record(frozenset(ALL))
    turn = Turn("caller", "item1", 0.0, text="Reach me on 555 010 0199 or 4111 1111")
    assert turn_fields(record, turn)["text"] == "Reach me on [phone] or [...]"  # still growing
    turn.ended_at = 2.0
    turn.text += " 1111 1111"
    assert turn_fields(record, turn)["text"] == "Reach me on [phone] or [card]"
    call = ToolCall(
        "call_1",
        "lookup_customer",
        "http",
        json.dumps({"email": "jane@example.com", "order": "48213"}),
        1.0,
        result=json.dumps({"phone": "+1 555 010 0199", "name": "Jane"}),
        error="no card 4111111111111111 on file",
    )
    fields = tool_call_fields(record, call)
    assert json.loads(fields["arguments"]) == {"email": "[email]", "order": "48213"}
    assert json.loads(fields["result"]) == {"phone": "[phone]", "name": "Jane"}
    assert fields["error"] == "no card [card] on file"
    event = CallEvent(1.0, "barge_in", {"transcript": "it's 555 010 0199", "cleared": True})
    assert event_detail(event.detail, keep_text=True, kinds=record.redact) == {
        "transcript": "it's [phone]",
        "cleared": True,
    }
    # Without redaction nothing changes.
    plain = _record(frozenset())
    assert turn_fields(plain, turn)["text"] == turn.text


def test_the_profile_field_is_checked(tmp_path: Path) -> None:
    from bridge.errors import ConfigError
    from bridge.settings import Settings

    path = tmp_path / "numbers.toml"
    path.write_text('[profiles.default]\nredact = ["card", "email"]\n')
    settings = Settings(openai_api_key="k", numbers_file=str(path))
    assert Numbers(settings).current.named("default").redact == {"card", "email"}  # type: ignore[union-attr]
    path.write_text('[profiles.default]\nredact = ["cards"]\n')
    with pytest.raises(ConfigError) as raised:
        Numbers(settings)
    assert 'redact: unknown "cards"' in str(raised.value)


@pytest.fixture(params=BACKENDS)
async def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    async with database(request.param, tmp_path) as url:
        yield url


@contextlib.asynccontextmanager
async def redacting_bridge(
    simulator: RealtimeSimulator, url: str, tmp_path: Path
) -> AsyncIterator[LoggedBridge]:
    numbers = tmp_path / "numbers.toml"
    numbers.write_text('[profiles.default]\ngreeting = ""\nredact = ["phone", "card", "email"]\n')
    call_log = CallLog(url, batch_delay=0.05, heartbeat=0.5)
    memory = MemoryRecorder()
    settings = make_settings(simulator, admin_token=TOKEN, numbers_file=str(numbers))
    from bridge.record import FanOutRecorder

    app = create_app(
        settings,
        recorder=FanOutRecorder(memory, call_log.recorder),
        routes=admin_routes(settings, call_log),
    )
    async with call_log, serving(app) as base:
        yield LoggedBridge(RunningBridge(base, app, memory, settings), call_log)


async def test_a_call_is_stored_and_served_without_what_the_profile_redacts(
    simulator: RealtimeSimulator, db_url: str, tmp_path: Path
) -> None:
    simulator.config.caller_transcripts = (
        "My card is 4111 1111 1111 1111 and my email is jane.doe@example.com.",
        "Call me on (555) 010-0199, about order 48213.",
    )
    simulator.config.replies = (
        "Thanks, I have the card ending 1111 and jane.doe@example.com.",
        "I'll call (555) 010-0199 about order 48213.",
    )
    async with redacting_bridge(simulator, db_url, tmp_path) as logged:
        async with logged.bridge.call() as caller:
            for _ in range(2):
                await caller.say_and_wait(utterance())
                await caller.wait_for_playback(0.3, timeout=10)
                await caller.wait_until_quiet(0.3, timeout=10)
            await caller.hangup()
        detail = await logged.stored(caller.call_sid)
        texts = [turn["text"] for turn in detail.turns]
        assert texts == [
            "My card is [card] and my email is [email].",
            "Thanks, I have the card ending 1111 and [email].",
            "Call me on [phone], about order 48213.",
            "I'll call [phone] about order 48213.",
        ]
        async with httpx.AsyncClient(base_url=logged.base) as client:
            answer = await client.get(
                f"/api/calls/{caller.call_sid}", headers={"authorization": f"Bearer {TOKEN}"}
            )
        assert answer.status_code == 200
        body = answer.text
        for secret in ("4111", "jane.doe", "010-0199"):
            assert secret not in body
        for placeholder in ("[card]", "[email]", "[phone]"):
            assert placeholder in body
