"""Who sent this: Twilio's request signatures, and our own token over the stream's parameters.

Twilio signs every webhook (`X-Twilio-Signature`) over the public URL it called plus the form
fields, and the Media Stream upgrade over the `wss://` URL written in `<Stream url>` with no
fields (PROTOCOL.md D.5). The `<Parameter>`s that arrive in the stream's `start` message are not
covered by either, so the voice webhook adds a token: an HMAC, keyed from the auth token, over
the call SID, the numbers, the profile and an expiry. Any replica with the same auth token can
check it, so nothing is kept between the webhook and the stream.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from collections.abc import Mapping
from typing import Any

from starlette.requests import HTTPConnection
from twilio.request_validator import RequestValidator

from bridge.errors import ProtocolViolation
from bridge.settings import Settings

SIGNATURE_HEADER = "x-twilio-signature"
TOKEN_TTL = 300.0  # seconds from the webhook's answer to the stream's start, with clock skew
# The signed parameters, in signing order; `Token` carries the HMAC itself.
SIGNED = ("CallSid", "From", "To", "Direction", "Profile", "Expires")
_KEY_LABEL = b"bridge: media stream parameters v1"


def public_base(settings: Settings, connection: HTTPConnection) -> str:
    """The base URL Twilio reached us at: `BRIDGE_PUBLIC_URL`, else trusted `X-Forwarded-*`
    headers (with `BRIDGE_TRUST_FORWARDED`), else https and the Host header."""
    if settings.public_url:
        return settings.public_url
    headers = connection.headers
    host = headers.get("host", connection.url.netloc)
    scheme, prefix = "https", ""  # Twilio only ever calls https:// and wss:// URLs
    if settings.trust_forwarded:
        proto = _first(headers.get("x-forwarded-proto"))
        scheme = {"wss": "https", "ws": "http"}.get(proto, proto) or scheme
        host = _first(headers.get("x-forwarded-host")) or host
        port = _first(headers.get("x-forwarded-port"))
        default = {"https": "443", "http": "80"}.get(scheme)
        if port and port != default and ":" not in host.rsplit("]", 1)[-1]:
            host = f"{host}:{port}"
        prefix = _first(headers.get("x-forwarded-prefix")).rstrip("/")
    return f"{scheme}://{host}{prefix}"


def request_url(settings: Settings, connection: HTTPConnection) -> str:
    """The full public URL of this request as Twilio signed it: base, path and raw query."""
    query = connection.scope.get("query_string", b"").decode("latin-1")
    url = public_base(settings, connection) + connection.url.path
    return f"{url}?{query}" if query else url


def _first(value: str | None) -> str:
    """First hop of a possibly comma-separated forwarded header."""
    return (value or "").split(",")[0].strip()


class TwilioSignatures:
    """Checks Twilio's signatures and signs/verifies our stream parameters (one auth token)."""

    def __init__(self, auth_token: str) -> None:
        self._validator = RequestValidator(auth_token)
        self._key = hmac.new(auth_token.encode("utf-8"), _KEY_LABEL, hashlib.sha256).digest()

    def webhook_valid(self, url: str, params: Any, signature: str) -> bool:
        """A voice webhook or status callback: `params` are the form fields ({} for GET)."""
        return bool(signature) and bool(self._validator.validate(url, params, signature))

    def stream_valid(self, stream_url: str, signature: str) -> bool:
        """The Media Stream upgrade: signed over the `wss://` URL with empty params."""
        return self.webhook_valid(stream_url, {}, signature)

    def sign_stream(self, parameters: Mapping[str, str], *, now: float) -> dict[str, str]:
        """`parameters` plus `Expires` and `Token`, for the TwiML `<Parameter>`s."""
        signed = dict(parameters)
        signed["Expires"] = str(int(now + TOKEN_TTL))
        signed["Token"] = self._mac(signed)
        return signed

    def verify_stream(self, parameters: Mapping[str, str], call_sid: str, *, now: float) -> None:
        """Raise ProtocolViolation unless the parameters carry our valid, current token for
        this very call."""
        token = parameters.get("Token", "")
        if not token:
            raise ProtocolViolation("stream parameters carry no token")
        if not hmac.compare_digest(
            token.encode("ascii", "replace"), self._mac(parameters).encode()
        ):
            raise ProtocolViolation("stream parameters token is invalid")
        try:
            expires = int(parameters.get("Expires", ""))
        except ValueError:
            raise ProtocolViolation("stream parameters expiry is malformed") from None
        if now > expires:
            raise ProtocolViolation(f"stream parameters token expired {now - expires:.0f}s ago")
        if parameters.get("CallSid") != call_sid:
            raise ProtocolViolation("stream callSid differs from the signed CallSid")

    def _mac(self, parameters: Mapping[str, str]) -> str:
        # JSON of a fixed list: unambiguous whatever characters the values hold.
        message = json.dumps([parameters.get(name, "") for name in SIGNED], separators=(",", ":"))
        digest = hmac.new(self._key, message.encode("utf-8"), hashlib.sha256).digest()
        return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")
