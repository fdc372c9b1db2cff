"""Who sent this: Twilio's request signatures, and our own token over the stream's parameters.

Twilio signs every webhook (`X-Twilio-Signature`) over the public URL it called plus the form
fields, and the Media Stream upgrade over the `wss://` URL written in `<Stream url>` with no
fields (PROTOCOL.md D.5). The `<Parameter>`s that arrive in the stream's `start` message are not
covered by either, so the voice webhook adds a token: an HMAC, keyed from the auth token, over
the call SID, the numbers, the profile and an expiry. Any replica with the same auth token can
check it, so nothing is kept between the webhook and the stream.

A token opens one stream only. Each process remembers the tokens it admitted until they expire
(`UsedTokens`, the cheap first check); a `TokenLedger` shared by every worker and replica (the
call log's database) refuses one that another process admitted.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import heapq
import hmac
import json
import logging
from collections.abc import Mapping
from typing import Any, Protocol

from starlette.requests import HTTPConnection
from twilio.request_validator import RequestValidator

from bridge.errors import BridgeError, ProtocolViolation
from bridge.settings import Settings

logger = logging.getLogger(__name__)

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


@dataclasses.dataclass(frozen=True, slots=True)
class StreamToken:
    """A verified stream token as the single-use records know it: a digest, never the token."""

    key: str  # SHA-256 of the token, hex
    expires: float  # epoch seconds; no record of it is needed after this
    call_sid: str


class LedgerUnavailable(BridgeError):
    """The shared ledger of used stream tokens could not answer (in time)."""


class TokenLedger(Protocol):
    """Where every worker and replica records the stream tokens used (the call log's database).

    `claim` returns False if the token was claimed before, by anyone; True if this claim is the
    first. It raises LedgerUnavailable if it cannot answer within a second or so.
    """

    async def claim(self, token: StreamToken, *, now: float) -> bool: ...


class UsedTokens:
    """The tokens this process admitted, each until it expires: bounded by the calls of the
    last TOKEN_TTL seconds, since only tokens with a valid MAC and expiry get in."""

    def __init__(self) -> None:
        self._expiry: dict[str, float] = {}
        self._heap: list[tuple[float, str]] = []

    def __len__(self) -> int:
        return len(self._expiry)

    def claim(self, token: StreamToken, *, now: float) -> bool:
        """True the first time `token` is claimed (and remember it); False after that."""
        while self._heap and self._heap[0][0] < now:
            _, key = heapq.heappop(self._heap)
            del self._expiry[key]
        if token.key in self._expiry:
            return False
        self._expiry[token.key] = token.expires
        heapq.heappush(self._heap, (token.expires, token.key))
        return True


class TwilioSignatures:
    """Checks Twilio's signatures and signs/verifies our stream parameters (one auth token).

    Stream tokens are single-use: `admit_stream` (synchronous, this process) and then
    `claim_shared` (awaited, every process sharing `ledger`) each refuse a token used before.
    """

    def __init__(self, auth_token: str, *, ledger: TokenLedger | None = None) -> None:
        self._validator = RequestValidator(auth_token)
        self._key = hmac.new(auth_token.encode("utf-8"), _KEY_LABEL, hashlib.sha256).digest()
        self.used = UsedTokens()
        self.ledger = ledger  # set once the call log is open (`bridge serve`)

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

    def admit_stream(
        self, parameters: Mapping[str, str], call_sid: str, *, now: float
    ) -> StreamToken:
        """`verify_stream`, then refuse (ProtocolViolation) a token this process has admitted
        before: a second stream cannot reuse the first one's token within its 5 minutes."""
        self.verify_stream(parameters, call_sid, now=now)
        token = stream_token(parameters)
        if not self.used.claim(token, now=now):
            raise ProtocolViolation("stream parameters token already used")
        return token

    async def claim_shared(self, parameters: Mapping[str, str], *, now: float) -> None:
        """After `admit_stream`: refuse (ProtocolViolation) a token another worker or replica
        admitted, as the shared ledger records. Without a ledger, or while it cannot answer,
        the in-process check stands alone (a database outage must not stop calls)."""
        if self.ledger is None:
            return
        token = stream_token(parameters)
        try:
            first = await self.ledger.claim(token, now=now)
        except LedgerUnavailable as exc:
            logger.warning("stream token not checked against other replicas: %s", exc)
            return
        if not first:
            raise ProtocolViolation("stream parameters token already used (by another replica)")

    def _mac(self, parameters: Mapping[str, str]) -> str:
        # JSON of a fixed list: unambiguous whatever characters the values hold.
        message = json.dumps([parameters.get(name, "") for name in SIGNED], separators=(",", ":"))
        digest = hmac.new(self._key, message.encode("utf-8"), hashlib.sha256).digest()
        return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


def stream_token(parameters: Mapping[str, str]) -> StreamToken:
    """The single-use record of verified stream parameters."""
    digest = hashlib.sha256(parameters.get("Token", "").encode("utf-8")).hexdigest()
    expires = float(parameters.get("Expires", "0"))
    return StreamToken(key=digest, expires=expires, call_sid=parameters.get("CallSid", ""))
