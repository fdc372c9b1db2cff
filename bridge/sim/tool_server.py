"""A tool endpoint on loopback for tests and the demo: the HTTP service an `[[tools]]` entry
points at. It answers like a small business API, can be made slow or failing per path, and
keeps every request it got (method, path, query, headers, JSON body) for assertions.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
from typing import Any

from starlette.applications import Starlette
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from bridge.server import serving

__all__ = ["ToolRequest", "ToolService"]


@dataclasses.dataclass(frozen=True, slots=True)
class ToolRequest:
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: Any
    at: float  # loop time it arrived
    peer_port: int  # the client's port: the same port means a reused connection


class ToolService:
    """`async with ToolService() as tools:` serves `tools.url("/orders")` and friends.

    - `/orders` (GET or POST, argument `order`): the order's status as JSON.
    - `/hours` (GET or POST): the opening hours as JSON.
    - any other path: 404.
    `delays[path]` makes a path answer after that many seconds; `statuses[path]` makes it
    answer that HTTP status (with a JSON error body).
    """

    def __init__(self) -> None:
        self.requests: list[ToolRequest] = []
        self.answered: list[float] = []  # loop time each answer left, in order
        self.delays: dict[str, float] = {}
        self.statuses: dict[str, int] = {}
        self.base = ""
        self._stack: contextlib.AsyncExitStack | None = None

    def url(self, path: str) -> str:
        return self.base + path

    async def __aenter__(self) -> ToolService:
        app = Starlette(routes=[Route("/{path:path}", self._serve, methods=["GET", "POST"])])
        stack = contextlib.AsyncExitStack()
        self.base = await stack.enter_async_context(serving(app))
        self._stack = stack
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        stack, self._stack = self._stack, None
        if stack is not None:
            await stack.aclose()

    async def _serve(self, request: Request) -> Response:
        path = "/" + request.path_params["path"]
        body: Any = None
        try:
            raw = await request.body()
        except ClientDisconnect:  # the bridge let go mid-request: the call it was for ended
            return Response(status_code=499)
        if raw:
            try:
                body = json.loads(raw)
            except ValueError:
                body = raw.decode("utf-8", "replace")
        self.requests.append(
            ToolRequest(
                request.method,
                path,
                dict(request.query_params),
                {key.lower(): value for key, value in request.headers.items()},
                body,
                asyncio.get_running_loop().time(),
                request.client.port if request.client is not None else 0,
            )
        )
        delay = self.delays.get(path, 0.0)
        if delay:
            await asyncio.sleep(delay)
        response = self._answer(
            path, body if isinstance(body, dict) else dict(request.query_params)
        )
        self.answered.append(asyncio.get_running_loop().time())
        return response

    def _answer(self, path: str, arguments: dict[str, Any]) -> Response:
        status = self.statuses.get(path)
        if status is not None:
            return JSONResponse({"detail": f"simulated failure {status}"}, status_code=status)
        if path == "/orders":
            order = str(arguments.get("order", ""))
            return JSONResponse({"order": order, "status": "shipped", "arrives": "Thursday"})
        if path == "/hours":
            return JSONResponse({"open": "9 am", "close": "6 pm", "closed_on": "Sunday"})
        return JSONResponse({"detail": "not found"}, status_code=404)
