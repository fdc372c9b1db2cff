"""Who may see the call log: the admin token, as a Bearer header or a signed session cookie.

The cookie never holds the token: it is an expiry signed with HMAC-SHA256 keyed by the token,
so changing BRIDGE_ADMIN_TOKEN logs every browser out. Without a token configured, the
dashboard and API answer only direct loopback requests (nothing relayed by a proxy, and a
loopback name in `Host`).
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import ipaddress
import time

from starlette.requests import HTTPConnection
from starlette.responses import Response

from bridge.settings import Settings

COOKIE = "bridge_session"
SESSION_SECONDS = 12 * 3600
PROXY_HEADERS = ("forwarded", "x-forwarded-for", "x-real-ip")


class Access(enum.Enum):
    GRANTED = "granted"
    LOGIN = "login"  # a token is configured and the request did not carry it
    LOOPBACK_ONLY = "loopback_only"  # no token configured and the request is not local


class Guard:
    """Decides each request; holds the token (a SecretStr, never logged)."""

    def __init__(self, settings: Settings) -> None:
        secret = settings.admin_token
        self._token = secret.get_secret_value().encode() if secret is not None else None
        self._secure_forwarded = settings.trust_forwarded

    @property
    def enabled(self) -> bool:
        return self._token is not None

    def check(self, connection: HTTPConnection) -> Access:
        if self._token is None:
            return Access.GRANTED if is_local(connection) else Access.LOOPBACK_ONLY
        header = connection.headers.get("authorization", "")
        scheme, _, credentials = header.partition(" ")
        if scheme.lower() == "bearer" and self.token_matches(credentials.strip()):
            return Access.GRANTED
        if self.session_valid(connection.cookies.get(COOKIE, "")):
            return Access.GRANTED
        return Access.LOGIN

    def token_matches(self, candidate: str) -> bool:
        if self._token is None:
            return False
        return hmac.compare_digest(candidate.encode(), self._token)

    def _sign(self, expires: int) -> str:
        assert self._token is not None
        return hmac.new(self._token, f"session:{expires}".encode(), hashlib.sha256).hexdigest()

    def session_valid(self, cookie: str) -> bool:
        if self._token is None or "." not in cookie:
            return False
        expires, _, signature = cookie.partition(".")
        if not expires.isdigit() or int(expires) < time.time():
            return False
        return hmac.compare_digest(signature, self._sign(int(expires)))

    def start_session(self, response: Response, connection: HTTPConnection) -> None:
        expires = int(time.time()) + SESSION_SECONDS
        response.set_cookie(
            COOKIE,
            f"{expires}.{self._sign(expires)}",
            max_age=SESSION_SECONDS,
            httponly=True,
            samesite="strict",
            secure=self._is_https(connection),
            path="/",
        )

    def end_session(self, response: Response) -> None:
        response.delete_cookie(COOKIE, path="/")

    def _is_https(self, connection: HTTPConnection) -> bool:
        if connection.url.scheme == "https":
            return True
        forwarded = connection.headers.get("x-forwarded-proto", "")
        return self._secure_forwarded and forwarded.lower() == "https"


def is_local(connection: HTTPConnection) -> bool:
    """A request straight from this machine: loopback peer, no proxy headers, and a loopback
    name in `Host`.

    A same-host reverse proxy that adds no X-Forwarded-* headers still passes on the public
    name it was reached by, and a DNS-rebound browser page sends its attacker's name: either
    way `Host` is not a loopback name, so the request is not local.
    """
    if any(name in connection.headers for name in PROXY_HEADERS):
        return False
    if not is_loopback_host(connection.headers.get("host", "")):
        return False
    host = connection.client.host if connection.client else ""
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address.is_loopback


def is_loopback_host(host: str) -> bool:
    """`Host` names this machine: localhost, 127.x.y.z or [::1], with or without a port."""
    name, port = host.strip().lower(), None
    if name.startswith("["):
        name, _, rest = name[1:].partition("]")
        if rest and not rest.startswith(":"):
            return False
        port = rest[1:] if rest else None
    elif name.count(":") == 1:
        name, port = name.split(":")
    if port is not None and not (port.isascii() and port.isdigit() and len(port) <= 5):
        return False
    if name in ("localhost", "localhost."):
        return True
    try:
        address = ipaddress.ip_address(name)
    except ValueError:
        return False
    return address.is_loopback  # a literal address: no DNS, so nothing to rebind


def safe_next(target: str | None) -> str:
    """Where to go after logging in: a path on this site, never another site."""
    if not target or not target.startswith("/") or target.startswith("//") or "\\" in target:
        return "/"
    return target
