"""A call's two sockets as its shell sees them: parsed messages in, one ordered writer out, and
every way a socket can fail turned into the call's end reason.

`CallerSocket` wraps the accepted Media Stream (Starlette WebSocket, with the `bridge.fastws`
shortcuts when the server protocol lends them); `ModelSocket` wraps the Realtime client
connection (with the direct writer when the shortcuts are on).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from collections.abc import AsyncGenerator

from starlette.websockets import WebSocket, WebSocketDisconnect, WebSocketState
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed

from bridge import fastws, metrics, realtime, twilio
from bridge.call.effects import CallEnded
from bridge.call.session import count_protocol_error
from bridge.call.writers import OrderedWriter, SendOne
from bridge.errors import ProtocolViolation
from bridge.record import CallRecord, EndReason

logger = logging.getLogger(__name__)

START_TIMEOUT = 10.0  # Twilio sends `start` right after connecting
MAX_FRAMES_PER_APPEND = 10  # when behind, up to 200 ms of caller audio in one append

# Twilio closes the call's <Connect> when we close the socket; the code tells our logs why.
CLOSE_CODES = {
    EndReason.CALLER_HANGUP: 1000,
    EndReason.MAX_DURATION: 1000,
    EndReason.SERVER_SHUTDOWN: 1001,
    EndReason.ASSISTANT_HANGUP: 1000,
    EndReason.TRANSFERRED: 1000,
    EndReason.CALLER_TIMEOUT: 1001,
    EndReason.PROTOCOL_ERROR: 1008,
}


@dataclasses.dataclass(frozen=True, slots=True)
class BadMessage:
    """A message that could not be parsed: the session counts it, the call carries on."""

    detail: str


class CallerSocket:
    """The Media Stream socket: Twilio messages in, the caller's ordered writer out."""

    def __init__(self, websocket: WebSocket) -> None:
        self._ws = websocket
        self.shortcuts = fastws.Shortcuts.of(websocket.scope)
        # The writer's send closes over the WebSocket, not over this object: a bound method
        # would make socket and writer a cycle, kept until a full collection after the call.
        self.writer = OrderedWriter(
            "caller",
            _caller_sender(websocket),
            write_now=self.shortcuts.send_now,
            stalled=lambda: CallEnded(EndReason.CALLER_DISCONNECTED, "Twilio stopped reading"),
        )

    async def wait_for_start(self, record: CallRecord) -> twilio.Start:
        """Twilio's `start` (after `connected`); anything else before it is only counted on
        `record`, since there is no session yet to keep it."""
        try:
            async with asyncio.timeout(START_TIMEOUT):
                while True:
                    message = await self.receive()
                    if isinstance(message, twilio.Start):
                        return message
                    if isinstance(message, BadMessage):
                        count_protocol_error(record, message.detail)
                    elif not isinstance(message, twilio.Connected):
                        count_protocol_error(record, f"{type(message).__name__} before start")
        except TimeoutError:
            raise CallEnded(EndReason.START_TIMEOUT, "no start message") from None

    async def receive(self) -> twilio.TwilioMessage | BadMessage:
        """The next message; a disconnect or a `start` we cannot serve ends the call.

        Reads raw ASGI messages: `iter_text()` would swallow the disconnect, and a call whose
        caller hung up would then keep its paid Realtime session open.
        """
        frame = await self._ws.receive()
        if frame["type"] == "websocket.disconnect":
            raise CallEnded(EndReason.CALLER_DISCONNECTED, f"close code {frame.get('code')}")
        text = frame.get("text")
        if text is None:
            return BadMessage("binary frame")
        try:
            return twilio.parse_message(text)
        except twilio.BadStart as exc:
            raise CallEnded(EndReason.PROTOCOL_ERROR, exc.detail) from None
        except ProtocolViolation as exc:
            return BadMessage(exc.detail)

    async def gather_backlog(
        self, payload: bytes
    ) -> tuple[bytes, int, twilio.TwilioMessage | BadMessage | None]:
        """Media frames already queued behind `payload` (the server protocol's backlog), joined,
        and how many; then the first other message, if that is what ended the run."""
        backlog = self.shortcuts.backlog
        parts = [payload]
        while backlog is not None and backlog() and len(parts) < MAX_FRAMES_PER_APPEND:
            message = await self.receive()  # queued: returns without waiting
            if not isinstance(message, twilio.Media):
                return b"".join(parts), len(parts), message
            parts.append(message.payload)
        return b"".join(parts), len(parts), None

    async def close(self, reason: EndReason) -> None:
        ws = self._ws
        if WebSocketState.DISCONNECTED in (ws.application_state, ws.client_state):
            return
        with contextlib.suppress(Exception):
            await ws.close(code=CLOSE_CODES.get(reason, 1011), reason=f"{reason}"[:120])


class ModelSocket:
    """The Realtime socket: server events in, the model's ordered writer out."""

    def __init__(self, connection: ClientConnection) -> None:
        self._connection = connection
        self.direct = fastws.UpstreamWriter(connection) if fastws.enabled() else None
        self.writer = OrderedWriter(
            "model",
            _model_sender(connection),  # not a bound method: see CallerSocket
            write_now=self.direct.write_now if self.direct is not None else None,
            stalled=_model_stalled,
        )

    def can_write_now(self) -> bool:
        """A write now would go straight to the socket, behind nothing."""
        direct = self.direct
        return direct is not None and not self.writer.backlog and direct.writable()

    async def events(self) -> AsyncGenerator[realtime.ServerEvent | BadMessage]:
        """Server events until the socket closes, which ends the call with the reason."""
        connection = self._connection
        try:
            async for frame in connection:
                try:
                    yield realtime.parse_server_event(frame)
                except ProtocolViolation as exc:
                    yield BadMessage(exc.detail)
        except ConnectionClosed as exc:
            raise upstream_ended(exc) from None
        raise CallEnded(EndReason.UPSTREAM_CLOSED, f"code {connection.close_code}")


def _caller_sender(websocket: WebSocket) -> SendOne:
    async def send(text: str) -> None:
        try:
            await websocket.send_text(text)
        except (WebSocketDisconnect, OSError, RuntimeError) as exc:
            raise CallEnded(EndReason.CALLER_DISCONNECTED, f"send failed: {exc!r}") from None

    return send


def _model_sender(connection: ClientConnection) -> SendOne:
    async def send(text: str) -> None:
        try:
            await connection.send(text)
        except ConnectionClosed as exc:
            raise upstream_ended(exc) from None

    return send


def _model_stalled() -> CallEnded:
    metrics.realtime_error("timeout")
    return CallEnded(EndReason.UPSTREAM_ERROR, "Realtime stopped reading")


def upstream_ended(exc: ConnectionClosed) -> CallEnded:
    """Normal closes and lost connections are UPSTREAM_CLOSED; refusals by code are errors."""
    received = exc.rcvd
    if received is None:
        return CallEnded(EndReason.UPSTREAM_CLOSED, "connection lost without a close frame")
    detail = f"code {received.code} {received.reason}".strip()
    # 1008 policy violation, 1011 server error, 4000-4999 application errors (4000: beta shape).
    if received.code in (1008, 1011) or 4000 <= received.code <= 4999:
        metrics.realtime_error("closed")
        return CallEnded(EndReason.UPSTREAM_ERROR, detail)
    return CallEnded(EndReason.UPSTREAM_CLOSED, detail)
