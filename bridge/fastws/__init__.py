"""The bridge's WebSocket shortcuts, in one place, and the switch that turns them off.

Three shortcuts save a quarter of the bridge's CPU per call (see each module): a server protocol
that decodes plain caller frames itself and writes whole frames at once (server.py, built on
uvicorn's websockets-sansio protocol), a direct writer for the Realtime socket (upstream.py), and
the frame codec both use (frames.py). The server protocol reads private state of uvicorn and of
websockets' parser, so it is only used with the exact versions the tests run against
(`TESTED`, pinned in pyproject.toml). With any other version installed, or with
`BRIDGE_WS_SHORTCUTS=off`, the bridge runs the plain path: uvicorn's own protocol and the
libraries' own `send()`, with one warning line at start-up when the versions are the cause.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.metadata
import logging
import os
from collections.abc import Callable, Mapping
from typing import Any

from bridge.fastws.upstream import UpstreamWriter

__all__ = [
    "BACKLOG_EXTENSION",
    "HANDLER_EXTENSION",
    "SEND_EXTENSION",
    "TESTED",
    "Shortcuts",
    "TextHandler",
    "UpstreamWriter",
    "enabled",
    "server_protocol",
]

logger = logging.getLogger(__name__)

# The versions whose private state the shortcuts read (kept equal to pyproject.toml's pins).
TESTED = {"uvicorn": "0.55.0", "websockets": "17.4"}
SWITCH = "BRIDGE_WS_SHORTCUTS"  # "off" runs the plain path

BACKLOG_EXTENSION = "bridge.backlog"
SEND_EXTENSION = "bridge.send_text_now"
HANDLER_EXTENSION = "bridge.set_text_handler"

TextHandler = Callable[[str], bool]


def _installed(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "missing"


@functools.cache
def enabled() -> bool:
    """Whether the shortcuts are on: not switched off, and the tested versions installed."""
    if os.environ.get(SWITCH, "on").strip().lower() in ("off", "0", "false", "no"):
        logger.info("WebSocket shortcuts off (%s)", SWITCH)
        return False
    found = {package: _installed(package) for package in TESTED}
    if found != TESTED:
        logger.warning(
            "WebSocket shortcuts off: installed %s, tested with %s",
            ", ".join(f"{name} {version}" for name, version in found.items()),
            ", ".join(f"{name} {version}" for name, version in TESTED.items()),
        )
        return False
    return True


def server_protocol() -> type[Any] | str:
    """The `ws` setting for uvicorn: our protocol, or uvicorn's own websockets-sansio one."""
    if not enabled():
        return "websockets-sansio"
    from bridge.fastws.server import MediaStreamProtocol  # reads uvicorn's private module

    return MediaStreamProtocol


@dataclasses.dataclass(frozen=True, slots=True)
class Shortcuts:
    """What the server protocol lends one Media Stream through the ASGI scope (all None on the
    plain path)."""

    send_now: Callable[[tuple[str, ...]], bool] | None = None
    backlog: Callable[[], int] | None = None
    set_text_handler: Callable[[TextHandler | None], None] | None = None

    @classmethod
    def of(cls, scope: Mapping[str, Any]) -> Shortcuts:
        extensions = scope.get("extensions") or {}
        return cls(
            send_now=extensions.get(SEND_EXTENSION),
            backlog=extensions.get(BACKLOG_EXTENSION),
            set_text_handler=extensions.get(HANDLER_EXTENSION),
        )
