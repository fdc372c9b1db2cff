"""The uvicorn configuration the bridge runs with (`bridge.server`), over real sockets."""

from __future__ import annotations

import asyncio
from urllib.parse import urlsplit

import pytest

from bridge.server import KEEP_ALIVE_SECONDS
from tests.conftest import RunningBridge

pytestmark = pytest.mark.timeout(30)

REQUEST = b"GET /healthz HTTP/1.1\r\nHost: bridge\r\n\r\n"


async def _response(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5.0)
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    length = next(
        int(v) for k, _, v in (h.partition(":") for h in lines[1:]) if k.lower() == "content-length"
    )
    return status, await asyncio.wait_for(reader.readexactly(length), 5.0)


async def test_an_idle_connection_outlives_the_clients_own_keep_alive(
    bridge: RunningBridge,
) -> None:
    """A client pool (httpx: 5 s) or a proxy (60 s) drops an idle connection before the bridge
    does, so a webhook never races the server's close of the connection it was sent on."""
    assert KEEP_ALIVE_SECONDS > 60
    url = urlsplit(bridge.base)
    reader, writer = await asyncio.open_connection(url.hostname, url.port)
    try:
        writer.write(REQUEST)
        assert (await _response(reader))[0] == 200
        await asyncio.sleep(6.0)  # past uvicorn's default of 5 s, and httpx's pool
        writer.write(REQUEST)
        status, body = await _response(reader)
        assert status == 200
        assert body
    finally:
        writer.close()
