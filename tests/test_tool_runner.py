"""HTTP tools over real loopback sockets: what the model gets for each way a request can go."""

from __future__ import annotations

import json
import socket

from bridge.sim.tool_server import ToolService
from bridge.tools.config import HttpTool, Secret
from bridge.tools.http import ToolRunner


def tool(url: str, method: str = "POST", timeout: float = 5.0, **headers: str) -> HttpTool:
    return HttpTool(
        name="lookup_order",
        description="Look up an order",
        url=Secret(url, url),
        method=method,  # type: ignore[arg-type]
        headers={name: Secret(f"${{{name.upper()}}}", value) for name, value in headers.items()},
        timeout_seconds=timeout,
    )


async def test_post_sends_the_arguments_as_json_with_the_expanded_headers() -> None:
    runner = ToolRunner()
    try:
        async with ToolService() as service:
            secret_tool = tool(service.url("/orders"), Authorization="Bearer s3cret")
            result = await runner.run(secret_tool, {"order": "A42"})
    finally:
        await runner.aclose()
    assert result.ok
    assert result.status == 200
    assert json.loads(result.output) == {"order": "A42", "status": "shipped", "arrives": "Thursday"}
    (request,) = service.requests
    assert (request.method, request.body) == ("POST", {"order": "A42"})
    assert request.headers["authorization"] == "Bearer s3cret"
    assert "s3cret" not in repr(secret_tool)  # the value never shows in a repr


async def test_get_sends_the_arguments_as_the_query_string() -> None:
    runner = ToolRunner()
    try:
        async with ToolService() as service:
            result = await runner.run(
                tool(service.url("/orders"), "GET"), {"order": "A42", "items": [1, 2]}
            )
    finally:
        await runner.aclose()
    assert result.ok
    (request,) = service.requests
    assert request.query == {"order": "A42", "items": "[1, 2]"}


async def test_an_error_status_becomes_an_error_output_with_the_body() -> None:
    runner = ToolRunner()
    try:
        async with ToolService() as service:
            service.statuses["/orders"] = 500
            result = await runner.run(tool(service.url("/orders")), {})
    finally:
        await runner.aclose()
    assert not result.ok
    assert result.status == 500
    output = json.loads(result.output)
    assert output["error"] == "HTTP 500 Internal Server Error"
    assert "simulated failure" in output["body"]


async def test_a_timeout_becomes_an_error_output() -> None:
    runner = ToolRunner()
    try:
        async with ToolService() as service:
            service.delays["/orders"] = 2.0
            result = await runner.run(tool(service.url("/orders"), timeout=0.3), {})
    finally:
        await runner.aclose()
    assert not result.ok
    assert json.loads(result.output) == {"error": "timed out after 0.3 s"}
    assert 0.25 < result.seconds < 1.5


async def test_a_refused_connection_becomes_an_error_output() -> None:
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    runner = ToolRunner()
    try:
        result = await runner.run(tool(f"http://127.0.0.1:{port}/orders"), {})
    finally:
        await runner.aclose()
    assert not result.ok
    assert json.loads(result.output) == {"error": "could not reach the service (ConnectError)"}


async def test_connections_are_reused_across_calls() -> None:
    runner = ToolRunner()
    try:
        async with ToolService() as service:
            for _ in range(5):
                assert (await runner.run(tool(service.url("/hours")), {})).ok
            ports = {request.peer_port for request in service.requests}
    finally:
        await runner.aclose()
    assert len(service.requests) == 5
    assert len(ports) == 1  # one kept-alive connection served all five
