"""The direct write path to the Realtime socket and uvicorn's lighter read pausing, over real
sockets: a real websockets server checks framing and masking of everything we write."""

from __future__ import annotations

import asyncio
import logging
import tomllib
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import websockets
from starlette.applications import Starlette
from starlette.routing import WebSocketRoute
from starlette.websockets import WebSocket
from websockets.asyncio.client import ClientConnection, connect
from websockets.asyncio.server import ServerConnection, serve

from bridge import fastws, server
from bridge.fastws.frames import simple_text_frames, text_frame
from bridge.fastws.server import (
    BACKLOG_EXTENSION,
    HANDLER_EXTENSION,
    READ_HIGH_WATER,
    SEND_EXTENSION,
    MediaStreamProtocol,
)
from bridge.fastws.upstream import DIRECT_WRITE_LIMIT, MaskSource, UpstreamWriter

# The server protocol's own tests: served only when the shortcuts are on (see bridge.fastws).
requires_shortcuts = pytest.mark.skipif(
    not fastws.enabled(), reason="WebSocket shortcuts off: the server runs uvicorn's protocol"
)


@pytest.fixture
async def echo_url() -> AsyncIterator[str]:
    """A websockets server that answers every text message with it, in order."""

    async def echo(ws: ServerConnection) -> None:
        async for message in ws:
            await ws.send(message)

    async with serve(echo, "127.0.0.1", 0, compression=None, max_size=None) as srv:
        port = next(iter(srv.sockets)).getsockname()[1]
        yield f"ws://127.0.0.1:{port}"


async def test_direct_frames_arrive_intact_between_library_sends_and_pings(echo_url: str) -> None:
    sizes = [0, 1, 125, 126, 127, 1280, 65535, 65536, 200_000]  # every header length form
    async with connect(echo_url, compression=None, max_size=None) as conn:
        writer = UpstreamWriter(conn)
        sent: list[str] = []
        for i, size in enumerate(sizes * 3):
            text = (f"{i}:" + "é" * size)[: max(size, 1)]
            if i % 3 == 1:
                await conn.send(text)  # the library's own path, interleaved
            else:
                if not writer.try_send(text):  # a large frame may fill the buffer
                    await conn.send(text)
            sent.append(text)
            if i % 4 == 0:
                await conn.ping()  # control frames in between
        received = [await asyncio.wait_for(conn.recv(), 10) for _ in sent]
    assert received == sent


async def test_direct_write_refused_once_the_connection_is_closed(echo_url: str) -> None:
    async with connect(echo_url, compression=None) as conn:
        writer = UpstreamWriter(conn)
        assert writer.try_send("open")
        assert await asyncio.wait_for(conn.recv(), 5) == "open"
    assert not writer.try_send("closed")


async def test_direct_write_steps_aside_when_the_peer_stops_reading() -> None:
    release = asyncio.Event()

    async def stalled(ws: ServerConnection) -> None:
        await release.wait()  # the server reads nothing: TCP buffers fill, then ours

    async with serve(
        stalled, "127.0.0.1", 0, compression=None, max_size=None, close_timeout=0.2
    ) as srv:
        port = next(iter(srv.sockets)).getsockname()[1]
        conn: ClientConnection
        async with connect(f"ws://127.0.0.1:{port}", compression=None, close_timeout=0.2) as conn:
            writer = UpstreamWriter(conn)
            chunk = "x" * 60_000
            for _ in range(2000):  # up to 120 MB: far beyond any socket buffer
                if not writer.try_send(chunk):
                    break
                await asyncio.sleep(0)
            else:
                pytest.fail("the write buffer never filled")
            assert conn.transport.get_write_buffer_size() >= DIRECT_WRITE_LIMIT
            release.set()


def test_masks_come_from_fresh_randomness_in_blocks() -> None:
    source = MaskSource()
    masks = [source.take() for _ in range(3 * MaskSource.BLOCK // 4)]  # three blocks
    assert all(len(m) == 4 for m in masks)
    # 3072 random 32-bit masks: a repeat has probability ~0.1%, a constant source repeats at once.
    assert len(set(masks)) == len(masks)


@pytest.mark.parametrize("size", [0, 125, 126, 65535, 65536])
def test_text_frame_is_what_a_server_parser_reads(size: int) -> None:
    from websockets.frames import Frame, Opcode
    from websockets.protocol import Protocol, Side, State

    payload = bytes(range(256)) * (size // 256) + bytes(size % 256)
    mask = b"\x9a\x02\xf3\x44"
    frame = text_frame(payload, mask)
    assert frame[0] == 0x81  # FIN + text
    assert frame[1] & 0x80  # masked, as every client frame must be
    parser = Protocol(Side.SERVER, state=State.OPEN, max_size=None)
    parser.receive_data(frame)
    (event,) = parser.events_received()
    assert isinstance(event, Frame)
    assert event.opcode is Opcode.TEXT
    assert event.fin
    assert event.data == payload


# ---- uvicorn: read pausing at a high-water mark -------------------------------------------


@requires_shortcuts
async def test_media_protocol_is_what_the_bridge_serves_with() -> None:
    config = server.uvicorn_config(Starlette(), "127.0.0.1", 0)
    assert config.ws is MediaStreamProtocol
    assert config.ws_per_message_deflate is False


@requires_shortcuts
async def test_a_slow_app_loses_nothing_and_keeps_order() -> None:
    """The app reads nothing for a while, then everything: every message, in order."""
    count = READ_HIGH_WATER * 20
    reading = asyncio.Event()
    got: list[str] = []
    backlog_seen: list[int] = []

    async def endpoint(ws: WebSocket) -> None:
        await ws.accept()
        backlog = ws.scope["extensions"][BACKLOG_EXTENSION]
        await reading.wait()
        backlog_seen.append(backlog())
        for _ in range(count):
            got.append(await ws.receive_text())
        backlog_seen.append(backlog())
        await ws.send_text(str(len(got)))
        await ws.close()

    app = Starlette(routes=[WebSocketRoute("/ws", endpoint)])
    async with server.serving(app) as base_url:
        url = base_url.replace("http", "ws", 1) + "/ws"
        async with websockets.connect(url, compression=None) as conn:
            for i in range(count):
                await conn.send(f"{i:04d}" + "." * 4000)
            await asyncio.sleep(0.2)
            reading.set()
            assert await asyncio.wait_for(conn.recv(), 10) == str(count)
    assert got == [f"{i:04d}" + "." * 4000 for i in range(count)]
    # Reading paused at the high-water mark; the backlog shows what waited, then nothing.
    assert READ_HIGH_WATER <= backlog_seen[0] < count
    assert backlog_seen[1] == 0


# ---- uvicorn: frames to Twilio written directly --------------------------------------------


@requires_shortcuts
async def test_direct_sends_arrive_whole_and_in_order_with_library_sends() -> None:
    results: list[bool] = []
    closed = asyncio.Event()

    async def endpoint(ws: WebSocket) -> None:
        await ws.accept()
        send_now = ws.scope["extensions"][SEND_EXTENSION]
        results.append(send_now(("a", "é" * 200, "c" * 70_000)))  # 7-bit, 16-bit, 64-bit lengths
        await ws.send_text("library")
        results.append(send_now(("d",)))
        await ws.receive_text()  # the client's "bye"
        await ws.close()
        results.append(send_now(("after close",)))
        closed.set()

    app = Starlette(routes=[WebSocketRoute("/ws", endpoint)])
    async with server.serving(app) as base_url:
        url = base_url.replace("http", "ws", 1) + "/ws"
        async with websockets.connect(url, compression=None, max_size=None) as conn:
            got = [await asyncio.wait_for(conn.recv(), 5) for _ in range(5)]
            await conn.send("bye")
            await asyncio.wait_for(closed.wait(), 5)
    assert got == ["a", "é" * 200, "c" * 70_000, "library", "d"]
    assert results == [True, True, False]


@requires_shortcuts
async def test_direct_send_steps_aside_when_twilio_stops_reading() -> None:
    """A peer that stops reading: direct writes give way to the ASGI send (which waits), and
    everything written arrives once the peer reads again."""
    sent: list[str] = []
    gave_way = asyncio.Event()

    async def endpoint(ws: WebSocket) -> None:
        await ws.accept()
        send_now = ws.scope["extensions"][SEND_EXTENSION]
        for i in range(10_000):
            text = f"{i:05d}" + "x" * 8000
            if not send_now((text,)):
                gave_way.set()
                await ws.send_text(text)  # waits for the peer, as the ASGI send does
            sent.append(text)
            if gave_way.is_set():
                break
        await ws.send_text("end")
        await ws.receive()

    app = Starlette(routes=[WebSocketRoute("/ws", endpoint)])
    async with server.serving(app) as base_url:
        url = base_url.replace("http", "ws", 1) + "/ws"
        async with websockets.connect(url, compression=None, max_size=None) as conn:
            conn.transport.pause_reading()
            await asyncio.wait_for(gave_way.wait(), 10)
            conn.transport.resume_reading()
            got = []
            while (message := await asyncio.wait_for(conn.recv(), 10)) != "end":
                got.append(message)
    assert got == sent


# ---- uvicorn: a handler that takes messages before they are queued -------------------------


@requires_shortcuts
async def test_the_handler_takes_lone_messages_only_when_nothing_waits() -> None:
    """Messages that start with "h" are the handler's; order with queued messages is kept."""
    handled: list[str] = []
    received: list[str] = []
    read = asyncio.Event()

    def handler(text: str) -> bool:
        if text.startswith("h"):
            handled.append(text)
            return True
        return False

    async def endpoint(ws: WebSocket) -> None:
        await ws.accept()
        set_handler = ws.scope["extensions"][HANDLER_EXTENSION]
        set_handler(handler)
        while True:
            await read.wait()
            read.clear()
            while ws.scope["extensions"][BACKLOG_EXTENSION]():
                received.append(await ws.receive_text())
            await ws.send_text("drained")
            if received[-1] == "q:end":
                set_handler(None)
                received.append(await ws.receive_text())  # no handler now: queued
                await ws.send_text("done")
                return

    app = Starlette(routes=[WebSocketRoute("/ws", endpoint)])
    async with server.serving(app) as base_url:
        url = base_url.replace("http", "ws", 1) + "/ws"
        async with websockets.connect(url, compression=None) as conn:

            async def send(text: str) -> None:
                await conn.send(text)
                await asyncio.sleep(0.05)  # one message per read

            await send("h:1")  # alone, nothing queued: handled
            await send("q:2")  # the handler declines: queued
            await send("h:3")  # q:2 still waits: queued behind it, order kept
            conn.protocol.send_text(b"h:4")
            conn.protocol.send_text(b"h:5")
            conn.send_data()  # two in one read: a burst, queued
            await asyncio.sleep(0.05)
            read.set()
            assert await asyncio.wait_for(conn.recv(), 5) == "drained"
            await send("h:6")  # drained again: handled
            await send("q:end")
            read.set()
            assert await asyncio.wait_for(conn.recv(), 5) == "drained"
            await send("h:7")
            assert await asyncio.wait_for(conn.recv(), 5) == "done"
    assert handled == ["h:1", "h:6"]
    assert received == ["q:2", "h:3", "h:4", "h:5", "q:end", "h:7"]


# ---- uvicorn: plain text frames decoded without the library's parser -----------------------


def test_simple_text_frames_takes_only_the_plain_case() -> None:
    mask = b"\x11\x22\x33\x44"
    one, two = text_frame(b"hello", mask), text_frame("é".encode() * 100, mask)
    assert simple_text_frames(one + two, None) == ["hello", "é" * 100]
    assert simple_text_frames(b"", None) == []
    assert simple_text_frames(one + two[:-1], None) is None  # a partial frame
    assert simple_text_frames(one, 4) is None  # over max_size
    assert simple_text_frames(text_frame(b"\xff\xfe", mask), None) is None  # not UTF-8
    unmasked = bytes([0x81, 5]) + b"hello"
    assert simple_text_frames(unmasked + b"\x00", None) is None
    fragment = bytes([0x01]) + one[1:]  # FIN clear
    assert simple_text_frames(fragment, None) is None
    ping = bytes([0x89, 0x80]) + mask
    assert simple_text_frames(one + ping, None) is None
    large = text_frame(b"x" * 70_000, mask)  # 64-bit length form: left to the library
    assert simple_text_frames(large, None) is None


async def _echo_server_app() -> Starlette:
    async def endpoint(ws: WebSocket) -> None:
        await ws.accept()
        while True:
            message = await ws.receive()
            if message["type"] == "websocket.disconnect":
                return
            await ws.send_text(f"{len(message['text'])}:{message['text'][:20]}")

    return Starlette(routes=[WebSocketRoute("/ws", endpoint)])


async def test_everything_the_fast_path_leaves_to_the_library_still_works() -> None:
    async with server.serving(await _echo_server_app()) as base_url:
        url = base_url.replace("http", "ws", 1) + "/ws"
        async with websockets.connect(url, compression=None, max_size=None) as conn:
            await conn.send("plain")
            assert await conn.recv() == "5:plain"
            await conn.send(["frag", "mented"])  # a fragmented message
            assert await conn.recv() == "10:fragmented"
            await asyncio.wait_for(await conn.ping(), 5)  # a ping between messages
            await conn.send("y" * 70_000)  # 64-bit length
            assert await conn.recv() == "70000:" + "y" * 20
            conn.transport.write(text_frame(b"a", b"abcd") + text_frame(b"b", b"efgh")[:-1])
            await asyncio.sleep(0.05)  # the rest of the second frame arrives in a later read
            conn.transport.write(text_frame(b"b", b"efgh")[-1:])
            assert [await conn.recv(), await conn.recv()] == ["1:a", "1:b"]


@pytest.mark.parametrize(
    ("frame", "code"),
    [
        (text_frame(b"\xff\xfe", b"abcd"), 1007),  # not UTF-8
        (text_frame(b"z" * (256 * 1024 + 1), b"abcd"), 1009),  # over the bridge's ws_max_size
        (bytes([0x81, 5]) + b"hello", 1002),  # unmasked from a client
    ],
)
async def test_bad_frames_still_get_the_librarys_close_codes(frame: bytes, code: int) -> None:
    async with server.serving(await _echo_server_app()) as base_url:
        url = base_url.replace("http", "ws", 1) + "/ws"
        async with websockets.connect(url, compression=None) as conn:
            conn.transport.write(frame)
            with pytest.raises(websockets.ConnectionClosed):
                await asyncio.wait_for(conn.recv(), 5)
            assert conn.close_code == code


@pytest.fixture
def fresh_switch() -> Iterator[None]:
    fastws.enabled.cache_clear()
    yield
    fastws.enabled.cache_clear()


def test_shortcuts_turn_off_with_one_warning_for_untested_versions(
    fresh_switch: None, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.delenv(fastws.SWITCH, raising=False)
    monkeypatch.setattr(
        fastws, "_installed", lambda package: "0.51.0" if package == "uvicorn" else "17.4"
    )
    with caplog.at_level(logging.WARNING, logger="bridge.fastws"):
        assert not fastws.enabled()
        assert not fastws.enabled()  # decided once
        assert fastws.server_protocol() == "websockets-sansio"
    (warning,) = caplog.records
    assert "uvicorn 0.51.0" in warning.getMessage()
    assert "tested with uvicorn 0.55.0" in warning.getMessage()


def test_shortcuts_follow_the_switch_and_the_pins(
    fresh_switch: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(fastws.SWITCH, "off")
    assert not fastws.enabled()
    fastws.enabled.cache_clear()
    monkeypatch.setenv(fastws.SWITCH, "on")
    assert fastws.enabled() == (
        {name: fastws._installed(name) for name in fastws.TESTED} == fastws.TESTED
    )


def test_the_pins_are_the_tested_versions() -> None:
    """pyproject.toml pins exactly what `bridge.fastws.TESTED` names."""
    pyproject = tomllib.loads((Path(__file__).parent.parent / "pyproject.toml").read_text())
    pins = dict(
        dependency.split("==", 1)
        for dependency in pyproject["project"]["dependencies"]
        if dependency.split("==")[0] in fastws.TESTED
    )
    assert pins == fastws.TESTED
