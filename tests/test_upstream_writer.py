"""The direct write path to the Realtime socket and uvicorn's lighter read pausing, over real
sockets: a real websockets server checks framing and masking of everything we write."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
import websockets
from starlette.applications import Starlette
from starlette.routing import WebSocketRoute
from starlette.websockets import WebSocket
from websockets.asyncio.client import ClientConnection, connect
from websockets.asyncio.server import ServerConnection, serve

from bridge import server
from bridge.upstream_writer import DIRECT_WRITE_LIMIT, MaskSource, UpstreamWriter, text_frame
from bridge.ws_protocol import BACKLOG_EXTENSION, READ_HIGH_WATER, MediaStreamProtocol


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


async def test_media_protocol_is_what_the_bridge_serves_with() -> None:
    config = server.uvicorn_config(Starlette(), "127.0.0.1", 0)
    assert config.ws is MediaStreamProtocol
    assert config.ws_per_message_deflate is False


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
