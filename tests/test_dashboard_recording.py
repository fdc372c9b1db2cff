"""The call page's recording player in a real headless browser (Debian's chromium, Playwright).

A recorded call's page has a player fed by `GET /api/calls/{sid}/recording` (with the login's
session cookie, in byte ranges); it plays, clicking a turn on the timeline or in the
conversation plays from the turn's start, and the timeline's playhead follows playback.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from playwright.async_api import Browser, Page, expect

from bridge.record import Turn
from bridge.recording.store import DirectoryStore, recording_key
from tests.test_dashboard import ARGS, ARTIFACTS, WAIT_MS, chromium
from tests.test_recording_api import api_server, call, log_calls, put_recording, sid
from tests.test_store_support import TOKEN, database

# Playback started from a script (not a click) is a test's doing, not a page's autoplay.
PLAYER_ARGS = [*ARGS, "--autoplay-policy=no-user-gesture-required", "--mute-audio"]
SECONDS = 8.0
CALLER_AT, ASSISTANT_AT = 0.6, 4.5


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    async with chromium(PLAYER_ARGS) as launched:
        yield launched


async def position(page: Page) -> float:
    seconds: float = await page.evaluate("document.getElementById('recording').currentTime")
    return seconds


async def playhead_x(page: Page) -> float:
    x: str = await page.get_attribute("svg.timeline line.playhead", "x1") or "nan"
    return float(x)


async def wait_for_position(page: Page, low: float, high: float) -> None:
    await page.wait_for_function(
        f"(() => {{ const t = document.getElementById('recording').currentTime; "
        f"return t > {low} && t < {high}; }})()",
        timeout=WAIT_MS,
    )


async def test_the_player_plays_and_seeks_on_click(tmp_path: Path, browser: Browser) -> None:
    store = DirectoryStore(tmp_path / "recordings")
    record = call(sid(0x51))
    record.recording = recording_key(record.call_sid, record.started_at)
    record.recording_bytes = len(await put_recording(store, record.recording, SECONDS))
    record.turns.append(Turn("caller", "item_caller", CALLER_AT, 2.0, text="Is it open?"))
    record.turns.append(Turn("assistant", "item_reply", ASSISTANT_AT, 6.5, text="Yes, until six."))
    plain = call(sid(0x52))  # not recorded: no player
    ARTIFACTS.mkdir(exist_ok=True)
    async with (
        database("sqlite", tmp_path) as url,
        api_server(url, store, tmp_path) as (base, call_log),
    ):
        await log_calls(call_log, record, plain)
        context = await browser.new_context(viewport={"width": 1280, "height": 900})
        page = await context.new_page()
        script_errors: list[str] = []
        page.on("pageerror", lambda error: script_errors.append(str(error)))
        statuses: list[int] = []
        page.on(
            "response",
            lambda response: (
                statuses.append(response.status) if response.url.endswith("/recording") else None
            ),
        )
        await page.goto(f"{base}/login?next=/calls/{plain.call_sid}")
        await page.fill("#token", TOKEN)
        await page.click("form[action='/login'] button")
        await expect(page.locator("h1")).to_contain_text("+15550100001")
        await expect(page.locator("audio")).to_have_count(0)
        assert await page.locator("svg.timeline line.playhead").count() == 0

        await page.goto(f"{base}/calls/{record.call_sid}")
        audio = page.locator("audio#recording")
        await expect(audio).to_be_visible()
        assert await audio.get_attribute("src") == f"/api/calls/{record.call_sid}/recording"
        await page.wait_for_function(
            "document.getElementById('recording').readyState >= 1", timeout=WAIT_MS
        )
        duration = await page.evaluate("document.getElementById('recording').duration")
        assert abs(duration - SECONDS) < 0.1
        assert await playhead_x(page) == pytest.approx(80.0)  # at 0:00, the timeline's left edge

        # It plays: the position moves, and so does the playhead with it.
        await page.evaluate("document.getElementById('recording').play()")
        await wait_for_position(page, 0.5, SECONDS)
        moved = await playhead_x(page)
        assert moved > 80.0
        await page.evaluate("document.getElementById('recording').pause()")

        # A click on the assistant's turn on the timeline plays from its start.
        await page.click("svg.timeline rect.turn.assistant")
        assert abs(await position(page) - ASSISTANT_AT) < 0.3
        await wait_for_position(page, ASSISTANT_AT + 0.2, SECONDS)  # and plays on
        assert await page.evaluate("!document.getElementById('recording').paused")
        assert await playhead_x(page) > moved
        await page.screenshot(path=ARTIFACTS / "dashboard-recording.png")

        # A click on the caller's turn in the conversation: back to its start.
        await page.click("ol.conversation li[data-item-id='item_caller'] .text")
        assert abs(await position(page) - CALLER_AT) < 0.3
        await wait_for_position(page, CALLER_AT + 0.2, ASSISTANT_AT)
        await page.click("ol.conversation li[data-item-id='item_reply'] button.play")
        assert abs(await position(page) - ASSISTANT_AT) < 0.3

        # A click on the timeline where nobody spoke: from that moment.
        box = await page.locator("svg.timeline").bounding_box()
        assert box is not None
        scale = float(await page.get_attribute("svg.timeline", "data-scale") or "nan")
        units = box["width"] / 900  # the picture's viewBox is 900 wide
        at = 3.0
        await page.mouse.click(box["x"] + (80 + at * scale) * units, box["y"] + 27 * units)
        assert abs(await position(page) - at) < 0.3

        # The browser fetched the audio in ranges, with the session cookie.
        assert statuses
        assert set(statuses) <= {200, 206}
        assert 206 in statuses
        await context.close()
        assert not script_errors, script_errors
