"""Sharing the live feed between replicas through PostgreSQL LISTEN/NOTIFY.

Each instance NOTIFYs its own live messages on one channel and LISTENs for everyone else's,
so any replica's dashboard shows the calls of all of them. Turn and tool call updates are
coalesced (the latest state of each wins) and sent in batches; a heartbeat lists each
instance's live calls, so calls of a replica that died, or whose start a listener missed, are
reconciled within seconds. Messages are perishable: what could not be sent during an outage
is dropped, and the next heartbeat puts the picture right.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
from typing import Any

import asyncpg
from sqlalchemy.engine import URL

from bridge.store.database import describe
from bridge.store.live import LiveFeed, Message

logger = logging.getLogger(__name__)

CHANNEL = "bridge_live"
MAX_PAYLOAD = 7900  # PostgreSQL refuses NOTIFY payloads of 8000 bytes and more
MAX_OUTBOX = 5000
FLUSH_INTERVAL = 0.1
CONNECT_TIMEOUT = 5.0
SEND_TIMEOUT = 5.0


class PostgresRelay:
    """Connects `feed` to the other replicas; `run()` is its task, reconnecting as needed."""

    def __init__(
        self, url: URL, feed: LiveFeed, *, channel: str = CHANNEL, heartbeat: float = 5.0
    ) -> None:
        self.dsn = url.set(drivername="postgresql").render_as_string(hide_password=False)
        self.feed = feed
        self.channel = channel
        self.heartbeat = heartbeat
        self.connected = asyncio.Event()
        self._outbox: dict[object, Message] = {}
        self._ids = itertools.count()
        self._wake = asyncio.Event()
        self._seen: dict[str, float] = {}  # other instance -> loop time of its last heartbeat
        self._closing = False
        feed.relay = self.offer

    def offer(self, message: Message) -> None:
        """Queue one of our messages for the other replicas (sync, never blocks)."""
        if not self.connected.is_set():
            return  # perishable: the heartbeat after reconnecting carries the live calls
        key: object = next(self._ids)
        if message["kind"] == "turn":
            key = ("turn", message["call_sid"], message["turn"]["item_id"])
        elif message["kind"] == "tool_call":
            key = ("tool_call", message["call_sid"], message["tool_call"]["call_id"])
        self._outbox[key] = message
        if len(self._outbox) > MAX_OUTBOX:
            self._outbox.pop(next(iter(self._outbox)))
        self._wake.set()

    def close(self) -> None:
        self._closing = True
        self._wake.set()

    async def run(self) -> None:
        delay = 0.5
        warned = False
        while not self._closing:
            try:
                async with asyncio.timeout(CONNECT_TIMEOUT):
                    connection = await asyncpg.connect(self.dsn, timeout=CONNECT_TIMEOUT)
            except (OSError, TimeoutError, asyncpg.PostgresError) as exc:
                if not warned:
                    logger.warning("live feed relay cannot reach PostgreSQL: %s", describe(exc))
                    warned = True
                await self._pause(delay)
                delay = min(delay * 2, 10.0)
                continue
            warned, delay = False, 0.5
            try:
                await self._session(connection)
            except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                logger.warning("live feed relay lost PostgreSQL: %s", describe(exc))
            except Exception:  # the relay's boundary: a bug here must not stop the call log
                logger.exception("live feed relay failed; reconnecting")
            finally:
                self.connected.clear()
                self._outbox.clear()
                with contextlib.suppress(Exception):
                    async with asyncio.timeout(2.0):
                        await connection.close()
                connection.terminate()

    async def _pause(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                while not self._closing:
                    self._wake.clear()
                    await self._wake.wait()

    async def _session(self, connection: asyncpg.Connection) -> None:
        lost = asyncio.Event()
        connection.add_termination_listener(lambda _: lost.set())
        await connection.add_listener(self.channel, self._received)
        self.connected.set()
        loop = asyncio.get_running_loop()
        next_beat = 0.0
        while not self._closing and not lost.is_set():
            if loop.time() >= next_beat:
                next_beat = loop.time() + self.heartbeat
                self._expire(loop.time())
                self._outbox[("heartbeat",)] = self._heartbeat()
            if self._outbox:
                await self._send(connection)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(min(FLUSH_INTERVAL * 10, self.heartbeat)):
                    self._wake.clear()
                    await self._wake.wait()
            await asyncio.sleep(FLUSH_INTERVAL)  # gather a batch
        if lost.is_set():
            raise ConnectionError("connection to PostgreSQL closed")

    async def _send(self, connection: asyncpg.Connection) -> None:
        batch, self._outbox = list(self._outbox.values()), {}
        payloads = [p for p in (self._encode(m) for m in batch) if p is not None]
        async with asyncio.timeout(SEND_TIMEOUT):
            await connection.execute(
                "SELECT pg_notify($1, payload) FROM unnest($2::text[]) AS payload",
                self.channel,
                payloads,
            )

    def _encode(self, message: Message) -> str | None:
        """JSON within NOTIFY's size limit: long turn texts keep their newest words, long tool
        arguments and results their beginning."""
        message = message | {"origin": self.feed.instance}
        payload = json.dumps(message, separators=(",", ":"))
        if message["kind"] == "turn":
            text = message["turn"].get("text") or ""
            while len(payload.encode()) > MAX_PAYLOAD and text:
                text = text[len(text) // 4 :]
                turn = message["turn"] | {"text": "…" + text}
                payload = json.dumps(message | {"turn": turn}, separators=(",", ":"))
        if message["kind"] == "tool_call":
            tool_call = dict(message["tool_call"])
            keep = 2000
            while len(payload.encode()) > MAX_PAYLOAD and keep >= 16:
                for key in ("arguments", "result", "error"):
                    text = tool_call.get(key)
                    if text and len(text) > keep:
                        tool_call[key] = text[:keep] + "…"
                payload = json.dumps(message | {"tool_call": tool_call}, separators=(",", ":"))
                keep //= 2
        if len(payload.encode()) > MAX_PAYLOAD:
            logger.debug("live message too large for NOTIFY: %s", message["kind"])
            return None
        return payload

    def _heartbeat(self) -> Message:
        """Our live calls; trimmed to fit, in which case listeners do not reconcile removals."""
        calls = [entry["call"] for entry in self.feed.calls.values()]
        mine = [c for c in calls if c.get("instance") == self.feed.instance]
        message: Message = {"kind": "heartbeat", "calls": mine, "complete": True}
        while len(json.dumps(message).encode()) > MAX_PAYLOAD - 100:
            message["calls"] = message["calls"][: len(message["calls"]) // 2]
            message["complete"] = False
        return message

    def _received(self, connection: Any, pid: int, channel: str, payload: str) -> None:
        try:
            message = json.loads(payload)
        except ValueError:
            return
        if not isinstance(message, dict):
            return
        origin = message.get("origin")
        if not isinstance(origin, str) or origin == self.feed.instance:
            return
        if message.get("kind") == "heartbeat":
            self._reconcile(origin, message)
            return
        # An origin that dies before its first heartbeat still expires: count from now.
        self._seen.setdefault(origin, asyncio.get_running_loop().time())
        self.feed.publish(message, remote=True)

    def _reconcile(self, origin: str, beat: Message) -> None:
        self._seen[origin] = asyncio.get_running_loop().time()
        listed = {c.get("call_sid"): c for c in beat.get("calls", []) if isinstance(c, dict)}
        for call_sid, info in listed.items():
            if call_sid not in self.feed.calls:
                self.feed.publish({"kind": "call_started", "call": info}, remote=True)
        if beat.get("complete"):
            for call_sid in self.feed.instance_calls(origin):
                if call_sid not in listed:
                    self._gone(call_sid)

    def _expire(self, now: float) -> None:
        """Forget the calls of replicas that stopped sending heartbeats."""
        for origin, seen in list(self._seen.items()):
            if now - seen > 3 * self.heartbeat:
                del self._seen[origin]
                for call_sid in self.feed.instance_calls(origin):
                    self._gone(call_sid)

    def _gone(self, call_sid: str) -> None:
        message = {"kind": "call_ended", "call_sid": call_sid, "end_reason": None}
        self.feed.publish(message, remote=True)
