"""OpenAI Realtime (GA) simulator on loopback: WebSocket `/v1/realtime` and `POST /v1/audio/speech`.

Binds the Sans-I/O `RealtimeSessionState` to Starlette + uvicorn. Per connection: the receive
loop (the ASGI task itself), while a response streams one pacing task, and, if the session's plan
ends it at some age (a drop or expiry), one lifetime task.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import time
from collections.abc import MutableMapping
from types import TracebackType
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect, WebSocketDisconnected

from bridge.server import EmbeddedServer
from bridge.sim import signals
from bridge.sim.realtime_config import ClientError, Mode, SessionPlan, SimConfig
from bridge.sim.realtime_record import SessionClosed, SimSession
from bridge.sim.realtime_response import Event, ResponseStream
from bridge.sim.realtime_session import RealtimeSessionState

__all__ = [
    "Mode",
    "RealtimeSimulator",
    "SessionClosed",
    "SessionPlan",
    "SimConfig",
    "SimSession",
]

logger = logging.getLogger(__name__)

BETA_DISABLED_MESSAGE = (
    "The Realtime Beta API is no longer supported. Please use /v1/realtime for the GA API."
)
INVALID_KEY_MESSAGE = (
    "Incorrect API key provided. You can find your API key at "
    "https://platform.openai.com/account/api-keys."
)
UNAVAILABLE_MESSAGE = "The server is overloaded or not ready yet."


class _Connection:
    """Drives one accepted WebSocket: receive loop, pacing task, ordered sends."""

    def __init__(self, ws: WebSocket, record: SimSession, simulator: RealtimeSimulator) -> None:
        self.ws = ws
        self.record = record
        self.state = record.state
        self.simulator = simulator
        # Held across "mutate state + send its events" so the wire order is the state's order.
        self._lock = asyncio.Lock()
        self._pacer: asyncio.Task[None] | None = None
        self._paced: ResponseStream | None = None
        self._aborted = False
        self._ended = False  # the lifetime ran out: nothing more is answered

    async def run(self) -> None:
        code: int | None = None
        try:
            async with asyncio.TaskGroup() as tg:
                plan = self.record.plan
                lifetime = (
                    tg.create_task(self._lifetime(plan), name=f"lifetime-{plan.index}")
                    if plan.drop_after is not None or plan.max_seconds is not None
                    else None
                )
                try:
                    async with self._lock:
                        await self._send(self.state.connected())
                    code = await self._receive_loop(tg)
                finally:
                    self._stop_pacer()
                    if lifetime is not None:
                        lifetime.cancel()
        except* (WebSocketDisconnect, WebSocketDisconnected):
            code = code or 1006
        finally:
            # uvicorn reports a lost connection as 1005; one we dropped ourselves is 1006.
            self.record._mark_closed(1006 if self._aborted else code)
            logger.debug(
                "realtime session %s closed (code %s)",
                self.state.session["id"],
                self.record.close_code,
            )

    async def _receive_loop(self, tg: asyncio.TaskGroup) -> int | None:
        while True:
            message = await self.ws.receive()
            if message["type"] == "websocket.disconnect":
                return int(message.get("code", 1005))
            async with self._lock:
                if self._ended:
                    continue  # expired: the close handshake is under way
                await self._send(self._dispatch(message))
                self._schedule(tg)
            if self.state.abort_requested:
                await self._abort()

    def _dispatch(self, message: MutableMapping[str, Any]) -> list[Event]:
        text = message.get("text")
        if text is None:
            self.record._log_received({"_binary": len(message.get("bytes") or b"")})
            return [self.state.error(ClientError("Binary frames are not supported."))]
        try:
            event = json.loads(text)
        except ValueError as exc:
            self.record._log_received({"_raw": text[:1000]})
            return self.state.invalid_json(str(exc))
        if not isinstance(event, dict):
            self.record._log_received({"_raw": event})
        elif self.state.input.record or event.get("type") != "input_audio_buffer.append":
            self.record._log_received(event)
        else:  # benchmarks: keep the record small
            audio = event.get("audio")
            size = _b64_size(audio) if isinstance(audio, str) else 0
            self.record._log_received({**event, "audio": "", "audio_bytes": size})
        return self.state.handle(event)

    def _schedule(self, tg: asyncio.TaskGroup) -> None:
        """Keep exactly one pacer on the active response (none when idle)."""
        stream = self.state.response
        if stream is self._paced:
            return
        self._stop_pacer()
        if stream is not None:
            self._paced = stream
            self._pacer = tg.create_task(self._pace(stream), name=f"pace-{stream.id}")

    def _stop_pacer(self) -> None:
        if self._pacer is not None and not self._pacer.done():
            self._pacer.cancel()
        self._pacer = None
        self._paced = None

    async def _pace(self, stream: ResponseStream) -> None:
        config = self.simulator.config
        if stream.modality == "audio" and stream.audio is None:
            # Synthesis may take a while (espeak): keep it off the loop all sessions share.
            audio = await asyncio.to_thread(stream.render)
            if stream.audio is None:
                stream.audio = audio
        loop = asyncio.get_running_loop()
        start = loop.time() + config.first_response_latency_ms / 1000.0
        step = 0
        try:
            while True:
                # An MCP call in progress: its answer, and every later step, comes this much later.
                start += stream.take_hold_ms() / 1000.0
                interval = config.chunk_ms / 1000.0 / config.speedup if config.speedup > 0 else 0.0
                delay = start + step * interval - loop.time()
                # Sleep even when late: a send never yields, so this keeps other sessions fed.
                await asyncio.sleep(max(0.0, delay))
                async with self._lock:
                    if self.state.response is not stream:
                        return
                    await self._send(self.state.advance())
                    if self.state.abort_requested:
                        await self._abort()
                        return
                    if self.state.response is not stream:
                        self._paced = None
                        return
                step += 1
        except (WebSocketDisconnect, WebSocketDisconnected):
            return  # the receive loop sees the disconnect and ends the session

    async def _lifetime(self, plan: SessionPlan) -> None:
        """At the planned age, whatever the session is doing: abort the connection (a drop), or
        send `session_expired` and close 1000 (expiry), whichever comes first."""
        expire = plan.max_seconds is not None and (
            plan.drop_after is None or plan.max_seconds < plan.drop_after
        )
        age = plan.max_seconds if expire else plan.drop_after
        assert age is not None
        await asyncio.sleep(max(0.0, self.record.accepted_at + age - time.monotonic()))
        async with self._lock:
            self._ended = True
            self._stop_pacer()
            try:
                if expire:
                    await self._send(self.state.expire())
                    await self.ws.close(1000)
                else:
                    await self._abort()
            except (WebSocketDisconnect, WebSocketDisconnected):
                return  # the client left first; the receive loop ends the session

    async def _send(self, events: list[Event]) -> None:
        for event in events:
            await self.ws.send_text(json.dumps(event))
            if event["type"] == "response.output_audio.delta":
                event = {**event, "audio_bytes": _b64_size(event["delta"])}
            self.record._log_sent(event)

    async def _abort(self) -> None:
        """Drop the TCP connection without a close frame (DROP_MID_RESPONSE, DROP_AFTER), once."""
        if self._aborted:
            return
        self._aborted = True
        if not self.simulator._abort_transport(self.ws):
            await self.ws.close(1011)  # not under uvicorn's sans-I/O protocol: next best thing


class RealtimeSimulator:
    """A simulated OpenAI Realtime GA service on 127.0.0.1; an async context manager."""

    def __init__(self, config: SimConfig | None = None) -> None:
        self.config = config or SimConfig()
        self.sessions: list[SimSession] = []
        self.speech_requests: list[dict[str, Any]] = []
        self.rejected: list[dict[str, str]] = []  # handshake headers of refused connections
        self.handshakes = 0  # connection attempts so far, refused ones too: the next session index
        self._transcripts = itertools.count()  # the caller transcript cycle shared by sessions
        self.url = ""
        self.http_base = ""
        self._server: uvicorn.Server | None = None
        self._task: asyncio.Task[None] | None = None
        self._sessions_changed = asyncio.Condition()

    async def __aenter__(self) -> RealtimeSimulator:
        routes = [
            WebSocketRoute("/v1/realtime", self._realtime),
            WebSocketRoute("/openai/v1/realtime", self._realtime),
            Route("/v1/audio/speech", self._speech, methods=["POST"]),
            Route("/openai/v1/audio/speech", self._speech, methods=["POST"]),
        ]
        config = uvicorn.Config(
            Starlette(routes=routes),
            host="127.0.0.1",
            port=0,
            ws="websockets-sansio",
            # Compressing base64 audio costs the most CPU per session and saves little.
            ws_per_message_deflate=False,
            lifespan="off",
            log_level="warning",
            log_config=None,
        )
        self._server = server = EmbeddedServer(config)
        self._task = task = asyncio.create_task(server.serve(), name="realtime-simulator")
        try:
            async with asyncio.timeout(10):
                while not server.started:
                    if task.done():
                        task.result()
                        raise RuntimeError("realtime simulator exited during start-up")
                    await asyncio.sleep(0.01)
        except BaseException:
            await self._stop()
            raise
        host, port = server.servers[0].sockets[0].getsockname()[:2]
        self.http_base = f"http://{host}:{port}"
        self.url = f"ws://{host}:{port}/v1/realtime"
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self._stop()

    async def _stop(self) -> None:
        server, task = self._server, self._task
        if server is None or task is None:
            return
        self._task = None
        server.should_exit = True
        try:
            async with asyncio.timeout(10):
                await task
        except TimeoutError:
            server.force_exit = True
            async with asyncio.timeout(5):
                await task

    async def wait_for_session(self, index: int = 0, timeout: float = 5.0) -> SimSession:
        """The `index`-th accepted session, waiting for it to connect."""
        async with asyncio.timeout(timeout), self._sessions_changed:
            await self._sessions_changed.wait_for(lambda: len(self.sessions) > index)
            return self.sessions[index]

    # ---- WebSocket -----------------------------------------------------------------------

    async def _realtime(self, ws: WebSocket) -> None:
        headers = {name.lower(): value for name, value in ws.headers.items()}
        query = dict(ws.query_params)
        config = self.config
        plan = config.session_plan(self.handshakes)
        self.handshakes += 1
        refusal: Response | None = None
        if plan.mode is Mode.REJECT_CONNECT:
            refusal = _api_error(403, "Forbidden.", "forbidden")
        elif plan.mode is Mode.UNAVAILABLE:
            refusal = _api_error(503, UNAVAILABLE_MESSAGE, None, error_type="server_error")
        elif not _authorized(headers):
            refusal = _api_error(401, "You didn't provide an API key.", "missing_api_key")
        if refusal is not None:
            self.rejected.append(headers)
            await ws.send_denial_response(refusal)
            return
        await ws.accept()
        model = query.get("model") or query.get("deployment") or "gpt-realtime"
        state = RealtimeSessionState(
            config,
            model=model,
            mode=plan.mode,
            max_seconds=plan.max_seconds,
            transcripts=self._transcripts if config.transcripts_per_simulator else None,
        )
        record = SimSession(ws.url.path, headers, query, state, plan)
        logger.debug("realtime session %s accepted on %s", record.session["id"], record.path)
        async with self._sessions_changed:
            self.sessions.append(record)
            self._sessions_changed.notify_all()
        if plan.mode is Mode.ERROR_ON_CONNECT:
            await self._refuse(ws, record, INVALID_KEY_MESSAGE, "invalid_api_key", 1008)
        elif headers.get("openai-beta", "").replace(" ", "").lower() == "realtime=v1":
            await self._refuse(ws, record, BETA_DISABLED_MESSAGE, "beta_api_shape_disabled", 4000)
        else:
            await _Connection(ws, record, self).run()

    async def _refuse(
        self, ws: WebSocket, record: SimSession, message: str, code: str, close_code: int
    ) -> None:
        """Accepted, then an `error` event and a close: how the service turns sessions away."""
        event = record.state.error(ClientError(message, code=code))
        try:
            await ws.send_text(json.dumps(event))
            record._log_sent(event)
            await ws.close(close_code, code)
        except (WebSocketDisconnect, WebSocketDisconnected):
            pass  # the client left first; there is nobody to tell
        finally:
            record._mark_closed(close_code)

    def _abort_transport(self, ws: WebSocket) -> bool:
        client = tuple(ws.scope.get("client") or ())
        server = self._server
        # uvicorn keeps its protocol objects here; each knows its peer address and transport.
        for connection in list(server.server_state.connections if server else ()):
            if tuple(getattr(connection, "client", None) or ()) == client:
                connection.transport.abort()
                return True
        return False

    # ---- HTTP ----------------------------------------------------------------------------

    async def _speech(self, request: Request) -> Response:
        headers = {name.lower(): value for name, value in request.headers.items()}
        if not _authorized(headers):
            return _api_error(401, "You didn't provide an API key.", "missing_api_key")
        try:
            body = await request.json()
        except ValueError:
            return _api_error(400, "We could not parse the JSON body of your request.", None)
        if not isinstance(body, dict):
            return _api_error(400, "The request body must be a JSON object.", None)
        self.speech_requests.append(body)
        text = body.get("input")
        if not isinstance(text, str) or not text.strip():
            return _api_error(
                400, "Missing required parameter: 'input'.", "missing_required_parameter"
            )
        if body.get("response_format", "pcm") != "pcm":
            return _api_error(
                400, "The simulator only produces response_format 'pcm'.", "invalid_value"
            )
        audio = await asyncio.to_thread(signals.speech, text, 24000)
        return Response(signals.to_pcm16(audio), media_type="audio/pcm")


def _authorized(headers: dict[str, str]) -> bool:
    scheme, _, token = headers.get("authorization", "").partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return True
    return bool(headers.get("api-key", "").strip())


def _api_error(
    status: int, message: str, code: str | None, *, error_type: str = "invalid_request_error"
) -> JSONResponse:
    return JSONResponse(
        {
            "error": {
                "message": message,
                "type": error_type,
                "code": code,
                "param": None,
            }
        },
        status_code=status,
    )


def _b64_size(text: str) -> int:
    """Decoded length of padded base64, without decoding it."""
    return len(text) * 3 // 4 - text.endswith("=") - text.endswith("==")
