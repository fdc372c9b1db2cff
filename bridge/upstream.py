"""Opening the Realtime socket: URL, auth headers, bounded timeouts, fatal vs retryable."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import InvalidHandshake, InvalidStatus, WebSocketException

from bridge.errors import UpstreamRejected, UpstreamUnavailable
from bridge.metrics import REALTIME_CONNECT
from bridge.settings import Settings

logger = logging.getLogger(__name__)

# Audio deltas are ~1-5 kB; a whole second of 24 kHz PCM in one frame is 64 kB of base64.
MAX_FRAME_BYTES = 4 * 1024 * 1024


def realtime_url(settings: Settings, model: str) -> str:
    """The Realtime URL with `model` in the query (Azure: the deployment name)."""
    parts = urlsplit(settings.realtime_url)
    query = dict(parse_qsl(parts.query))
    if "deployment" not in query:
        query["model"] = model
    return urlunsplit((parts.scheme, parts.netloc, parts.path, urlencode(query), ""))


def auth_headers(settings: Settings) -> dict[str, str]:
    """GA interface only: no `OpenAI-Beta` header, ever."""
    key = settings.openai_api_key.get_secret_value()
    if settings.is_azure:
        return {"api-key": key}
    return {"Authorization": f"Bearer {key}"}


@contextlib.asynccontextmanager
async def open_session(settings: Settings, model: str) -> AsyncIterator[ClientConnection]:
    """Connect, yield the socket, and always close it (bounded) when the call is done."""
    url = realtime_url(settings, model)
    started = time.perf_counter()
    try:
        connection = await connect(
            url,
            additional_headers=auth_headers(settings),
            open_timeout=settings.connect_timeout,
            close_timeout=1.0,
            ping_interval=20.0,
            ping_timeout=20.0,
            max_size=MAX_FRAME_BYTES,
            compression=None,
        )
    except InvalidStatus as exc:
        status = exc.response.status_code
        if status in (400, 401, 403, 404):
            raise UpstreamRejected(f"Realtime refused the session: HTTP {status}") from exc
        raise UpstreamUnavailable(f"Realtime handshake failed: HTTP {status}") from exc
    except (InvalidHandshake, WebSocketException) as exc:
        raise UpstreamUnavailable(f"Realtime handshake failed: {exc}") from exc
    except (OSError, TimeoutError) as exc:
        raise UpstreamUnavailable(f"Realtime unreachable: {exc!r}") from exc
    REALTIME_CONNECT.observe(time.perf_counter() - started)
    try:
        yield connection
    finally:
        # close() is bounded by close_timeout; shield it so a cancelled call still says goodbye.
        with contextlib.suppress(Exception):
            await asyncio.shield(connection.close())


class UpstreamHealth:
    """Whether the Realtime service can be reached, as this process's calls last found it.

    A refused or failed connection marks it down; any session that opens marks it up. While it
    is down (for at most `HOLD_DOWN` seconds after the last failure, so a later call tries
    again) the voice webhook answers the profile's fallback instead of connecting a caller to
    a stream no assistant will speak on.
    """

    HOLD_DOWN = 30.0

    def __init__(self) -> None:
        self._failed_at: float | None = None
        self.last_problem = ""

    def opened(self) -> None:
        self._failed_at = None
        self.last_problem = ""

    def failed(self, problem: str, now: float) -> None:
        self._failed_at = now
        self.last_problem = problem

    def down(self, now: float) -> bool:
        failed = self._failed_at
        return failed is not None and now - failed < self.HOLD_DOWN
