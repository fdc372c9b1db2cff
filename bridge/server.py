"""Running an ASGI app under uvicorn inside an asyncio program (tests, demo, benchmark)."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from types import FrameType

import uvicorn
from starlette.types import ASGIApp

from bridge import fastws

# Idle keep-alive connections stay open longer than the clients and proxies in front keep theirs
# (AWS ALB and nginx: 60 s; httpx: 5 s), so the client side always closes first. With uvicorn's
# default of 5 s, a webhook sent on a pooled connection at the moment the server closes it fails
# (`httpx.ReadError`: once in about 1,000 calls placed by the soak), and Twilio tells that caller
# "an application error has occurred".
KEEP_ALIVE_SECONDS = 75


def uvicorn_config(
    app: ASGIApp, host: str, port: int, *, log_level: str = "warning"
) -> uvicorn.Config:
    """The one uvicorn configuration the bridge runs with, in production and in tests."""
    return uvicorn.Config(
        app,
        host=host,
        port=port,
        ws=fastws.server_protocol(),
        ws_per_message_deflate=False,  # audio does not compress; deflate would cost CPU per frame
        ws_max_size=256 * 1024,
        ws_ping_interval=20.0,
        ws_ping_timeout=20.0,
        timeout_keep_alive=KEEP_ALIVE_SECONDS,
        lifespan="on",
        log_level=log_level,
        log_config=None,
        proxy_headers=False,
        server_header=False,
    )


class BridgeServer(uvicorn.Server):
    """uvicorn, except that the first SIGTERM/SIGINT drains calls before the server exits.

    `on_drain` runs the drain (a coroutine function); a second signal exits at once.
    `on_started`, if given, is called once the server is accepting connections.
    """

    def __init__(
        self,
        config: uvicorn.Config,
        on_drain: Callable[[], Awaitable[None]],
        on_started: Callable[[], None] | None = None,
    ) -> None:
        super().__init__(config)
        self._on_drain = on_drain
        self._on_started = on_started
        self._drain_task: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    async def serve(self, sockets: list[socket.socket] | None = None) -> None:
        self._loop = asyncio.get_running_loop()
        await super().serve(sockets)

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if self.started and self._on_started is not None:
            self._on_started()

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if self._drain_task is not None or self._loop is None:
            self.should_exit = self.force_exit = True  # second signal: stop now
            return
        self._loop.call_soon_threadsafe(self._start_drain)

    def _start_drain(self) -> None:
        if self._drain_task is None:
            self._drain_task = asyncio.ensure_future(self._drain_then_exit())

    async def _drain_then_exit(self) -> None:
        try:
            await self._on_drain()
        finally:
            self.should_exit = True


class EmbeddedServer(uvicorn.Server):
    """A uvicorn server that leaves signal handling to its host program."""

    def capture_signals(self) -> contextlib.AbstractContextManager[None]:  # type: ignore[override]
        return contextlib.nullcontext()


@contextlib.asynccontextmanager
async def serving(app: ASGIApp, host: str = "127.0.0.1", port: int = 0) -> AsyncIterator[str]:
    """Serve `app` on a loopback port; yields its base URL ("http://127.0.0.1:PORT")."""
    server = EmbeddedServer(uvicorn_config(app, host, port))
    task = asyncio.create_task(server.serve(), name="uvicorn")
    try:
        while not server.started:
            if task.done():
                task.result()  # re-raise start-up failure
                raise RuntimeError("server exited during start-up")
            await asyncio.sleep(0.01)
        sockname = server.servers[0].sockets[0].getsockname()
        yield f"http://{sockname[0]}:{sockname[1]}"
    finally:
        server.should_exit = True
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait_for(task, timeout=10)
