"""The call log API over real HTTP: the admin token, sessions, filters, pagination, detail."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from starlette.requests import Request

from bridge.record import CallRecord, EndReason, Turn
from bridge.sim.realtime_server import RealtimeSimulator
from bridge.web.auth import COOKIE, is_local, safe_next
from bridge.web.dashboard import MAX_FORM_BYTES
from tests.test_store_support import (
    BACKENDS,
    TOKEN,
    call_with_barge_in,
    database,
    flushed,
    logged_bridge,
)

AUTH = {"authorization": f"Bearer {TOKEN}"}
PROTECTED = ["/api/calls", "/api/calls/CA00000000000000000000000000000000", "/api/live"]


@pytest.fixture(params=BACKENDS)
async def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    async with database(request.param, tmp_path) as url:
        yield url


@pytest.fixture
async def sqlite_url(tmp_path: Path) -> AsyncIterator[str]:
    async with database("sqlite", tmp_path) as url:
        yield url


async def status_of(client: httpx.AsyncClient, path: str, headers: dict[str, str]) -> int:
    async with client.stream("GET", path, headers=headers) as response:
        return response.status_code  # /api/live would stream on: read the status only


async def test_api_refuses_requests_without_the_token(
    simulator: RealtimeSimulator, sqlite_url: str
) -> None:
    async with (
        logged_bridge(simulator, sqlite_url) as logged,
        httpx.AsyncClient(base_url=logged.base, timeout=5) as client,
    ):
        for path in PROTECTED:
            response = await client.get(path)
            assert response.status_code == 401, path
            assert response.headers["www-authenticate"].startswith("Bearer")
            assert TOKEN not in response.text
            for wrong in ("Bearer nope", f"Bearer {TOKEN}x", f"Basic {TOKEN}", TOKEN):
                assert await status_of(client, path, {"authorization": wrong}) == 401, wrong
            expected = 404 if path.startswith("/api/calls/") else 200
            assert await status_of(client, path, AUTH) == expected, path
        page = await client.get("/", follow_redirects=False)
        assert page.status_code == 303
        assert page.headers["location"] == "/login?next=%2F"


async def test_login_gives_a_signed_session_the_api_and_pages_accept(
    simulator: RealtimeSimulator, sqlite_url: str
) -> None:
    async with (
        logged_bridge(simulator, sqlite_url) as logged,
        httpx.AsyncClient(base_url=logged.base, timeout=5) as client,
    ):
        refused = await client.post("/login", data={"token": "wrong", "next": "/"})
        assert refused.status_code == 401
        assert COOKIE not in refused.cookies
        login = await client.post("/login", data={"token": TOKEN, "next": "//evil.example/"})
        assert login.status_code == 303
        assert login.headers["location"] == "/"  # never off-site
        cookie = login.cookies[COOKIE]
        assert TOKEN not in cookie
        assert "httponly" in login.headers["set-cookie"].lower()
        assert (await client.get("/api/calls")).status_code == 200
        assert (await client.get("/")).status_code == 200
        expires, _, signature = cookie.partition(".")
        forged = f"{int(expires) + 3600}.{signature}"
        client.cookies.clear()
        client.cookies.set(COOKIE, forged)
        assert (await client.get("/api/calls")).status_code == 401
        logout = await client.post("/logout")
        assert logout.status_code == 303
        assert "max-age=0" in logout.headers["set-cookie"].lower()


async def test_login_stops_reading_a_chunked_body_past_its_limit(
    simulator: RealtimeSimulator, sqlite_url: str
) -> None:
    """No Content-Length, chunked, larger than MAX_FORM_BYTES: 413, and the server answers
    without waiting for the rest, however long the client would go on sending."""
    async with (
        logged_bridge(simulator, sqlite_url) as logged,
        httpx.AsyncClient(base_url=logged.base, timeout=5) as client,
    ):

        async def chunks() -> AsyncIterator[bytes]:
            yield f"token={TOKEN}&next=/&pad=".encode()
            for _ in range(4 * MAX_FORM_BYTES // 1024):
                yield b"x" * 1024

        login = await client.post("/login", content=chunks())
        assert login.request.headers["transfer-encoding"] == "chunked"
        assert "content-length" not in login.request.headers
        assert login.status_code == 413
        assert COOKIE not in login.cookies

        # A raw client that sends headers and then chunks forever, never the final chunk.
        host, port = logged.base.removeprefix("http://").split(":")
        reader, writer = await asyncio.open_connection(host, int(port))
        try:
            writer.write(
                f"POST /login HTTP/1.1\r\nHost: {host}:{port}\r\n"
                "Content-Type: application/x-www-form-urlencoded\r\n"
                "Transfer-Encoding: chunked\r\n\r\n".encode()
            )
            chunk = b"400\r\n" + b"x" * 1024 + b"\r\n"
            for _ in range(MAX_FORM_BYTES // 1024 + 2):
                writer.write(chunk)
            await writer.drain()
            async with asyncio.timeout(5):
                status = await reader.readline()
            assert status.startswith(b"HTTP/1.1 413"), status
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

        small = await client.post("/login", data={"token": TOKEN, "next": "/"})
        assert small.status_code == 303  # an ordinary form still logs in


async def test_without_a_token_only_direct_loopback_requests_are_served(
    simulator: RealtimeSimulator, sqlite_url: str
) -> None:
    async with (
        logged_bridge(simulator, sqlite_url, token=None) as logged,
        httpx.AsyncClient(base_url=logged.base, timeout=5) as client,
    ):
        assert (await client.get("/api/calls")).status_code == 200
        assert (await client.get("/")).status_code == 200
        proxied = {"x-forwarded-for": "203.0.113.9"}
        assert (await client.get("/api/calls", headers=proxied)).status_code == 403
        page = await client.get("/", headers=proxied)
        assert page.status_code == 403
        assert "BRIDGE_ADMIN_TOKEN" in page.text


async def test_without_a_token_a_public_host_name_is_refused_even_from_loopback(
    simulator: RealtimeSimulator, sqlite_url: str
) -> None:
    """A same-host proxy adding no X-Forwarded-* headers, or a DNS-rebound page, still sends a
    name that is not this machine's: refused as if it came from elsewhere."""
    async with (
        logged_bridge(simulator, sqlite_url, token=None) as logged,
        httpx.AsyncClient(base_url=logged.base, timeout=5) as client,
    ):
        port = logged.base.rsplit(":", 1)[1]
        for host in ("localhost", f"localhost:{port}", f"127.0.0.1:{port}", "127.8.9.10", "[::1]"):
            assert (await client.get("/api/calls", headers={"host": host})).status_code == 200
        for host in ("bridge.example.com", f"bridge.example.com:{port}", "127.0.0.1.nip.io"):
            api = await client.get("/api/calls", headers={"host": host})
            assert api.status_code == 403, host
            assert (
                api.json()["detail"]
                == "BRIDGE_ADMIN_TOKEN is not set: the API answers loopback only"
            )
            page = await client.get("/", headers={"host": host})
            assert page.status_code == 403, host
            assert "BRIDGE_ADMIN_TOKEN" in page.text
            live = await status_of(client, "/api/live", {"host": host})
            assert live == 403, host
            reload = await client.post("/api/numbers/reload", headers={"host": host})
            assert reload.status_code == 403, host
            metrics = await client.get("/metrics", headers={"host": host})
            assert metrics.status_code == 403, host
        assert (await client.get("/metrics")).status_code == 200


@pytest.mark.parametrize(
    ("client", "local"),
    [
        (("127.0.0.1", 5000), True),
        (("::1", 5000), True),
        (("::ffff:127.0.0.1", 5000), True),
        (("10.0.0.5", 5000), False),
        (("192.0.2.1", 5000), False),
        (None, False),
    ],
)
def test_is_local(client: tuple[str, int] | None, local: bool) -> None:
    scope: dict[str, object] = {
        "type": "http",
        "headers": [(b"host", b"127.0.0.1:8080")],
        "client": client,
        "method": "GET",
        "path": "/",
    }
    assert is_local(Request(scope)) is local


@pytest.mark.parametrize(
    ("host", "local"),
    [
        ("localhost", True),
        ("LocalHost:8080", True),
        ("127.0.0.1", True),
        ("127.0.0.1:8080", True),
        ("127.200.3.4:1", True),
        ("[::1]", True),
        ("[::1]:8080", True),
        ("", False),
        ("bridge.example.com", False),
        ("bridge.example.com:8080", False),
        ("localhost.evil.example", False),
        ("127.0.0.1.nip.io", False),
        ("10.0.0.5:8080", False),
        ("0.0.0.0:8080", False),
        ("[::2]", False),
        ("[::1]x", False),
        ("[::1]:", False),
        ("localhost:", False),
        ("localhost:http", False),
        ("127.1", False),
    ],
)
def test_is_local_needs_a_loopback_host_header(host: str, local: bool) -> None:
    scope: dict[str, object] = {
        "type": "http",
        "headers": [(b"host", host.encode())] if host else [],
        "client": ("127.0.0.1", 5000),
        "method": "GET",
        "path": "/",
    }
    assert is_local(Request(scope)) is local


def test_safe_next() -> None:
    assert safe_next("/calls/CA1?x=1") == "/calls/CA1?x=1"
    for target in (None, "", "https://evil.example/", "//evil.example", "/\\evil", "calls"):
        assert safe_next(target) == "/"


async def test_calls_api_filters_pages_and_shows_one_call(
    simulator: RealtimeSimulator, db_url: str
) -> None:
    async with (
        logged_bridge(simulator, db_url) as logged,
        httpx.AsyncClient(base_url=logged.base, headers=AUTH, timeout=5) as client,
    ):
        call_sid, truncate = await call_with_barge_in(logged, simulator)
        await logged.stored(call_sid)
        recorder = logged.call_log.recorder
        for n in range(5):
            record = CallRecord(call_sid=f"CA{n:032d}", stream_sid=f"MZ{n:032d}")
            record.from_number, record.to_number = f"+1555020000{n}", "+15550999999"
            record.started_at -= 3600 + n
            recorder.call_started(record)
            turn = Turn("caller", f"item_{n}", 0.5, 1.0, text=f"number {n} speaking")
            record.turns.append(turn)
            recorder.turn_updated(record, turn)
            record.end_reason, record.ended_at = EndReason.CALLER_HANGUP, record.started_at + 9
            recorder.call_ended(record)
        await flushed(logged.call_log)

        found: list[str] = []
        url = "/api/calls?number=%2B15550999999&limit=2"
        while url:
            page = (await client.get(url)).json()
            found += [call["call_sid"] for call in page["calls"]]
            cursor = page["next_cursor"]
            url = f"/api/calls?number=%2B15550999999&limit=2&cursor={cursor}" if cursor else ""
        assert found == [f"CA{n:032d}" for n in range(5)]

        recent = (await client.get("/api/calls", params={"since": "30m"})).json()["calls"]
        assert [call["call_sid"] for call in recent] == [call_sid]
        said = (await client.get("/api/calls", params={"q": "NUMBER 3"})).json()["calls"]
        assert [call["call_sid"] for call in said] == [f"CA{3:032d}"]
        by_caller = await client.get("/api/calls", params={"caller": "+15550100001"})
        assert [call["call_sid"] for call in by_caller.json()["calls"]] == [call_sid]
        bad = await client.get("/api/calls", params={"since": "last tuesday"})
        assert bad.status_code == 400

        detail = (await client.get(f"/api/calls/{call_sid}")).json()
        assert detail["call"]["end_reason"] == "caller_hangup"
        assert detail["call"]["live"] is False
        interrupted = [turn for turn in detail["turns"] if turn["interrupted"]]
        assert [turn["item_id"] for turn in interrupted] == [truncate["item_id"]]
        assert interrupted[0]["heard_ms"] == truncate["audio_end_ms"]
        assert interrupted[0]["heard_text"]
        assert interrupted[0]["unheard_text"]
        assert "barge_in" in [event["kind"] for event in detail["events"]]
        missing = await client.get("/api/calls/CAnothere")
        assert missing.status_code == 404
