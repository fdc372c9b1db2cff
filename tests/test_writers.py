"""One writer per socket: order kept under backpressure, over real sockets.

A peer that stops reading fills the socket's buffers, so direct writes give way to the queue; the
writer must still put every byte on the wire in the order it was written: a media frame, then its
mark; a `clear` after the audio written before it (or that audio dropped, never sent after the
clear); nothing of a cleared reply after the clear. The same writer serves the Realtime socket.
"""

from __future__ import annotations

import asyncio
import json

import pytest
import websockets
from starlette.applications import Starlette
from starlette.routing import WebSocketRoute
from starlette.websockets import WebSocket
from websockets.asyncio.server import ServerConnection, serve

from bridge import fastws, server
from bridge.call import writers
from bridge.call.effects import CallEnded, Kind
from bridge.call.writers import OrderedWriter
from bridge.record import EndReason

PADDING = "x" * 6000  # big messages fill the socket buffers fast
# Enough to fill loopback's socket buffers (several MB with autotuning) on both ends.
A_MESSAGES = 2000


def _stalled() -> CallEnded:
    return CallEnded(EndReason.CALLER_DISCONNECTED, "stalled")


def media(reply: str, n: int) -> str:
    return json.dumps({"event": "media", "reply": reply, "n": n, "payload": PADDING})


def mark(reply: str, n: int) -> str:
    return json.dumps({"event": "mark", "reply": reply, "n": n})


@pytest.mark.parametrize("direct", [True, False], ids=["shortcuts", "plain"])
async def test_caller_writer_keeps_order_when_twilio_stops_reading(direct: bool) -> None:
    if direct and not fastws.enabled():
        pytest.skip("the shortcuts are off")
    most_queued = 0
    written = asyncio.Event()

    async def endpoint(ws: WebSocket) -> None:
        nonlocal most_queued
        await ws.accept()
        send_now = fastws.Shortcuts.of(ws.scope).send_now if direct else None
        writer = OrderedWriter("caller", ws.send_text, write_now=send_now, stalled=_stalled)

        def write(texts: tuple[str, ...], kind: Kind) -> None:
            nonlocal most_queued
            writer.write(texts, kind)
            most_queued = max(most_queued, writer.backlog)

        async with asyncio.TaskGroup() as tg:
            task = tg.create_task(writer.run())
            for n in range(A_MESSAGES):
                write((media("A", n), mark("A", n)), Kind.AUDIO)
            write(("clear",), Kind.CLEAR)
            for n in range(50):
                write((media("B", n), mark("B", n)), Kind.AUDIO)
            write(("end",), Kind.CONTROL)
            written.set()
            await writer.drained()
            task.cancel()
        await ws.receive()

    app = Starlette(routes=[WebSocketRoute("/ws", endpoint)])
    async with server.serving(app) as base_url:
        url = base_url.replace("http", "ws", 1) + "/ws"
        async with websockets.connect(url, compression=None, max_size=None) as conn:
            conn.transport.pause_reading()  # Twilio stops reading
            await asyncio.wait_for(written.wait(), 10)
            await asyncio.sleep(0.1)
            conn.transport.resume_reading()
            got: list[str] = []
            while not got or got[-1] != "end":
                got.append(str(await asyncio.wait_for(conn.recv(), 10)))
            await conn.close()

    assert most_queued > 0, "the peer never pushed back: the test proves nothing"
    clear = got.index("clear")
    assert got.count("clear") == 1
    messages = [json.loads(text) for text in got if text not in ("clear", "end")]
    # A media frame is always followed at once by its own mark.
    for first, second in zip(messages[::2], messages[1::2], strict=True):
        assert first["event"] == "media"
        assert second["event"] == "mark"
        assert (first["reply"], first["n"]) == (second["reply"], second["n"])
    before = [json.loads(text) for text in got[:clear]]
    after = [json.loads(text) for text in got[clear + 1 : -1]]
    assert all(m["reply"] == "A" for m in before), "audio written after the clear overtook it"
    assert all(m["reply"] == "B" for m in after), "audio of the cleared reply after the clear"
    assert [m["n"] for m in before][::2] == list(range(len(before) // 2))  # in order, no gaps
    assert [m["n"] for m in after][::2] == list(range(50))  # the next reply, whole


@pytest.mark.parametrize("direct", [True, False], ids=["shortcuts", "plain"])
async def test_model_writer_keeps_order_when_the_model_stops_reading(direct: bool) -> None:
    received: list[str] = []
    done = asyncio.Event()
    count = 3000

    async def handler(connection: ServerConnection) -> None:
        await asyncio.sleep(0.5)  # not reading: the client's buffers fill up
        async for message in connection:
            received.append(str(message))
            if len(received) == count:
                done.set()

    most_queued = 0
    async with serve(handler, "127.0.0.1", 0, compression=None, max_size=None) as ws_server:
        port = ws_server.sockets[0].getsockname()[1]
        async with websockets.connect(f"ws://127.0.0.1:{port}", compression=None) as upstream:
            write_now = fastws.UpstreamWriter(upstream).write_now if direct else None
            writer = OrderedWriter("model", upstream.send, write_now=write_now, stalled=_stalled)
            async with asyncio.TaskGroup() as tg:
                task = tg.create_task(writer.run())
                for n in range(count):
                    writer.write((json.dumps({"n": n, "audio": PADDING}),))
                    most_queued = max(most_queued, writer.backlog)
                    if n % 50 == 0:
                        await asyncio.sleep(0)  # other tasks run between writes, as in a call
                await asyncio.wait_for(done.wait(), 10)
                task.cancel()
    assert most_queued > 0, "the peer never pushed back: the test proves nothing"
    assert [json.loads(text)["n"] for text in received] == list(range(count))


async def test_a_peer_that_never_reads_ends_the_call(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(writers, "SEND_TIMEOUT", 0.2)

    async def never(text: str) -> None:
        await asyncio.Event().wait()

    writer = OrderedWriter("caller", never, stalled=_stalled)
    writer.write(("hello",))
    with pytest.raises(CallEnded) as ended:
        async with asyncio.timeout(10):
            await writer.run()
    assert ended.value.reason is EndReason.CALLER_DISCONNECTED
