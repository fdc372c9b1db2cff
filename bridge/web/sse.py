"""Server-Sent Events of the live feed, as a Starlette response.

A stream starts with a `snapshot` of every live call, then relays feed messages. It ends by
itself after `lifetime` seconds (the browser's EventSource reconnects and gets a fresh
snapshot), because uvicorn waits for open responses before it shuts down; it also ends when
the feed closes, when the client falls behind, or when the client goes away.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from bridge.store.live import LiveFeed, Message, Subscription

KEEPALIVE = 15.0
RETRY_MS = 2000


def encode(message: Message) -> bytes:
    """One SSE frame: `event:` is the message kind, `data:` the JSON."""
    data = json.dumps(message, separators=(",", ":"))
    return f"event: {message['kind']}\ndata: {data}\n\n".encode()


class _Disconnected(Exception):
    pass


class EventStream(Response):
    media_type = "text/event-stream"

    def __init__(self, feed: LiveFeed, *, lifetime: float) -> None:
        super().__init__(
            headers={"cache-control": "no-cache", "x-accel-buffering": "no"},
            media_type=self.media_type,
        )
        # A stream has no length: drop the content-length Response set for the empty body.
        self.raw_headers = [(k, v) for k, v in self.raw_headers if k != b"content-length"]
        self.feed = feed
        self.lifetime = lifetime

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        subscription = self.feed.subscribe()  # before the snapshot: nothing falls in between
        try:
            async with asyncio.TaskGroup() as group:
                watcher = group.create_task(_watch(receive))
                await self._pump(send, subscription)
                watcher.cancel()
        except* (_Disconnected, OSError):
            pass  # the client went away: nothing left to send to
        finally:
            self.feed.unsubscribe(subscription)

    async def _pump(self, send: Send, subscription: Subscription) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": self.raw_headers})
        await _body(send, f"retry: {RETRY_MS}\n\n".encode() + encode(self.feed.snapshot()))
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.lifetime
        while (left := deadline - loop.time()) > 0:
            try:
                async with asyncio.timeout(min(KEEPALIVE, left)):
                    message = await subscription.get()
            except TimeoutError:
                await _body(send, b": keepalive\n\n")
                continue
            if message is None:
                break
            await _body(send, encode(message))
        await send({"type": "http.response.body", "body": b"", "more_body": False})


async def _body(send: Send, chunk: bytes) -> None:
    await send({"type": "http.response.body", "body": chunk, "more_body": True})


async def _watch(receive: Receive) -> None:
    while True:
        message: dict[str, Any] = dict(await receive())
        if message["type"] == "http.disconnect":
            raise _Disconnected
