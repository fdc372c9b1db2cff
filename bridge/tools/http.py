"""Running the model's HTTP tools: one request per call, answered as the function's output.

One `httpx.AsyncClient` per process keeps connections to tool endpoints alive across calls; each
call bounds how many of its tools run at once. Failures never raise: a non-2xx status, a timeout
or an unreachable endpoint becomes an output with an `error` field, so the model can tell the
caller and the call carries on.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from typing import Any

import httpx

from bridge.tools.config import HttpTool

logger = logging.getLogger(__name__)

MAX_OUTPUT_CHARS = 16_000  # what the model gets of a body; a phone answer needs far less
MAX_ERROR_BODY_CHARS = 500
USER_AGENT = "bridge-tools/1"


@dataclasses.dataclass(frozen=True, slots=True)
class ToolResult:
    """What a tool call gave: the output for the model, and how it went."""

    ok: bool
    output: str  # handed to the model as the function_call_output
    error: str = ""  # short description when not ok
    status: int | None = None  # the HTTP status, when there was an answer
    seconds: float = 0.0


class ToolRunner:
    """Runs HTTP tools over one shared client (connection reuse across calls)."""

    def __init__(self, *, max_connections: int = 200) -> None:
        limits = httpx.Limits(max_connections=max_connections, max_keepalive_connections=50)
        self._client = httpx.AsyncClient(
            limits=limits, follow_redirects=False, headers={"User-Agent": USER_AGENT}
        )

    async def run(self, tool: HttpTool, arguments: dict[str, Any]) -> ToolResult:
        started = time.perf_counter()
        result = await self._request(tool, arguments)
        return dataclasses.replace(result, seconds=time.perf_counter() - started)

    async def _request(self, tool: HttpTool, arguments: dict[str, Any]) -> ToolResult:
        headers = {name: value.value for name, value in tool.headers.items()}
        request: dict[str, Any] = {"headers": headers, "timeout": tool.timeout_seconds}
        if tool.method == "GET":
            request["params"] = {key: _query_value(value) for key, value in arguments.items()}
        else:
            request["json"] = arguments
        try:
            response = await self._client.request(tool.method, tool.url.value, **request)
        except httpx.TimeoutException:
            error = f"timed out after {tool.timeout_seconds:g} s"
            return ToolResult(False, _error_output(error), error)
        except httpx.HTTPError as exc:
            error = f"could not reach the service ({type(exc).__name__})"
            return ToolResult(False, _error_output(error), error)
        body = response.text
        _unbind(response)
        if not response.is_success:
            error = f"HTTP {response.status_code} {response.reason_phrase}".strip()
            output = _error_output(error, body[:MAX_ERROR_BODY_CHARS])
            return ToolResult(False, output, error, response.status_code)
        if len(body) > MAX_OUTPUT_CHARS:
            body = body[:MAX_OUTPUT_CHARS] + " [truncated]"
        return ToolResult(True, body, status=response.status_code)

    async def aclose(self) -> None:
        await self._client.aclose()


def _unbind(response: httpx.Response) -> None:
    """httpx binds a response and its stream to each other, a cycle that keeps the response,
    its request and the pool's bookkeeping until a full collection; the body is read by now."""
    response.stream = httpx.ByteStream(b"")


def _query_value(value: Any) -> str:
    if isinstance(value, str):
        return value
    return json.dumps(value)


def _error_output(error: str, body: str = "") -> str:
    output = {"error": error}
    if body:
        output["body"] = body
    return json.dumps(output)
