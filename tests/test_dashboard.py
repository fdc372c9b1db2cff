"""The dashboard in a real headless browser (Debian's chromium driven by Playwright).

Against a running bridge with simulated calls: login is required, the live transcript appears
while a call runs, and the call page shows what the caller heard and what they never heard.
Screenshots are kept in artifacts/.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import pytest
from playwright.async_api import Browser, async_playwright, expect
from playwright.async_api import Error as PlaywrightError

from bridge.record import CallRecord, EndReason, ToolCall
from bridge.sim.realtime_server import RealtimeSimulator
from tests.test_store_support import (
    BACKENDS,
    TOKEN,
    call_with_barge_in,
    database,
    flushed,
    logged_bridge,
)

# Chromium on PATH (Debian's, or a Chrome), else None: Playwright's own browser, the one
# `playwright install chromium` downloads.
CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
CHROMIUM: list[str | None] = [*filter(None, map(shutil.which, CHROMIUM_NAMES)), None]
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ARTIFACTS = Path(__file__).parent.parent / "artifacts"
WAIT_MS = 15_000


@pytest.fixture(params=BACKENDS)
async def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    async with database(request.param, tmp_path) as url:
        yield url


@contextlib.asynccontextmanager
async def chromium(args: Sequence[str] = ARGS) -> AsyncIterator[Browser]:
    """A headless chromium (Debian's, else Playwright's); the test is skipped if none starts."""
    async with async_playwright() as playwright:
        failures = []
        for executable in CHROMIUM:
            try:
                launched = await playwright.chromium.launch(
                    executable_path=executable, args=list(args)
                )
                break
            except PlaywrightError as exc:
                failures.append(f"{executable or 'Playwright'}: {str(exc).splitlines()[0]}")
        else:
            pytest.skip(
                f"no chromium that starts ({'; '.join(failures)}); "
                "apt-get install chromium, or playwright install chromium"
            )
        try:
            yield launched
        finally:
            await launched.close()


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    async with chromium() as launched:
        yield launched


async def test_the_dashboard_needs_a_login(
    simulator: RealtimeSimulator, tmp_path: Path, browser: Browser
) -> None:
    async with database("sqlite", tmp_path) as url, logged_bridge(simulator, url) as logged:
        page = await browser.new_page()
        await page.goto(f"{logged.base}/calls/CA123")
        assert page.url == f"{logged.base}/login?next=%2Fcalls%2FCA123"
        await page.fill("#token", "not the token")
        await page.click("form[action='/login'] button")
        await expect(page.get_by_role("alert")).to_contain_text("not right")
        await page.fill("#token", TOKEN)
        await page.click("form[action='/login'] button")
        await expect(page.locator("p.error")).to_contain_text("no such call")  # landed on `next`
        await page.goto(f"{logged.base}/")
        await expect(page.locator("h1").first).to_contain_text("Live now")
        await page.click("text=Log out")
        await page.goto(f"{logged.base}/")
        assert page.url.startswith(f"{logged.base}/login")
        await page.close()


async def test_live_transcript_and_the_heard_unheard_split(
    simulator: RealtimeSimulator, db_url: str, browser: Browser
) -> None:
    backend = "postgresql" if db_url.startswith("postgresql") else "sqlite"
    ARTIFACTS.mkdir(exist_ok=True)
    async with logged_bridge(simulator, db_url) as logged:
        context = await browser.new_context(viewport={"width": 1280, "height": 900})
        page = await context.new_page()
        script_errors: list[str] = []
        page.on("pageerror", lambda error: script_errors.append(str(error)))
        await page.goto(f"{logged.base}/login")
        await page.fill("#token", TOKEN)
        await page.click("form[action='/login'] button")
        await expect(page.locator("#live .empty")).to_be_visible()

        async with asyncio.TaskGroup() as tg:
            call = tg.create_task(call_with_barge_in(logged, simulator))
            card = page.locator("#live .live-call")
            await expect(card.locator(".turn.caller .text").first).to_have_text(
                "When are you open?", timeout=WAIT_MS
            )
            await expect(card.locator(".turn.assistant .text").first).to_contain_text(
                "Our opening hours", timeout=WAIT_MS
            )
            assert not call.done(), "the call ended before its live transcript was seen"
            await page.screenshot(path=ARTIFACTS / f"dashboard-live-{backend}.png")
        call_sid, truncate = call.result()
        await expect(page.locator("#live .live-call")).to_have_count(0, timeout=WAIT_MS)
        # The history table catches up by itself: no reload.
        await expect(page.locator(f"tr[data-call-sid='{call_sid}']")).to_contain_text(
            "caller_hangup", timeout=WAIT_MS
        )

        stored = await logged.stored(call_sid)
        await page.goto(f"{logged.base}/")
        await expect(page.locator(f"tr[data-call-sid='{call_sid}']")).to_contain_text(
            "caller_hangup"
        )
        await page.click(f"tr[data-call-sid='{call_sid}'] a")
        assert page.url == f"{logged.base}/calls/{call_sid}"
        interrupted = page.locator(f".conversation li[data-item-id='{truncate['item_id']}']")
        heard = await interrupted.locator(".heard").text_content()
        unheard = await interrupted.locator(".unheard").text_content()
        (full,) = [t["text"] for t in stored.turns if t["item_id"] == truncate["item_id"]]
        assert heard
        assert unheard
        assert f"{heard.strip()} {unheard.strip()}" == full
        await expect(interrupted.locator(".split-note")).to_contain_text("estimated")
        await expect(interrupted.locator(".split-note")).to_contain_text(
            f"{truncate['audio_end_ms'] / 1000:.1f} s"
        )
        await expect(page.locator(".conversation .latency").first).to_contain_text("ms")
        await expect(page.locator("svg.timeline rect.turn.caller")).to_have_count(2)
        await expect(page.locator("svg.timeline rect.turn.unheard")).to_have_count(1)
        await expect(page.locator(".events tr.barge_in")).to_have_count(1)
        await expect(page.locator(".end-reason")).to_contain_text("caller_hangup")
        await page.screenshot(path=ARTIFACTS / f"dashboard-call-{backend}.png", full_page=True)
        await context.close()
    assert script_errors == []


async def test_a_live_call_page_shows_tool_calls_as_they_run(
    simulator: RealtimeSimulator, tmp_path: Path, browser: Browser
) -> None:
    """A `tool_call` live message adds the tool to the live transcript, then updates it when it
    ends; once the call ends, the page shows the stored tool call and its timeline bar."""
    sid = "CA" + "7" * 32
    async with database("sqlite", tmp_path) as url, logged_bridge(simulator, url) as logged:
        recorder = logged.call_log.recorder
        record = CallRecord(call_sid=sid, stream_sid="MZ" + "7" * 32, from_number="+15550100001")
        recorder.call_started(record)
        await flushed(logged.call_log)
        page = await browser.new_page()
        script_errors: list[str] = []
        page.on("pageerror", lambda error: script_errors.append(str(error)))
        await page.goto(f"{logged.base}/login")
        await page.fill("#token", TOKEN)
        await page.click("form[action='/login'] button")
        await page.goto(f"{logged.base}/calls/{sid}")
        card = page.locator("#live .live-call")
        await expect(card).to_have_count(1, timeout=WAIT_MS)

        tool = ToolCall("call_1", "lookup_order", "http", "{}", 1.0, holding_phrase=True)
        record.tool_calls.append(tool)
        recorder.tool_call_updated(record, tool)
        item = card.locator(".tool-call[data-call-id='call_1']")
        await expect(item).to_contain_text("lookup_order", timeout=WAIT_MS)
        await expect(item.locator(".outcome")).to_have_text("running…")
        await expect(item).to_contain_text("holding phrase")
        tool.ended_at, tool.outcome = 1.85, "ok"
        recorder.tool_call_updated(record, tool)
        await expect(item.locator(".outcome")).to_have_text("ok in 850 ms", timeout=WAIT_MS)

        record.end_reason, record.ended_at = EndReason.ASSISTANT_HANGUP, record.started_at + 3
        recorder.call_ended(record)
        await expect(page.locator(".end-reason")).to_contain_text(
            "assistant_hangup", timeout=WAIT_MS
        )
        stored = page.locator(".conversation li.tool-call[data-call-id='call_1']")
        await expect(stored).to_contain_text("850 ms")
        await expect(page.locator("svg.timeline g.tool.outcome-ok")).to_have_count(1)
        await page.close()
    assert script_errors == []
