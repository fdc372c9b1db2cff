"""Twilio's REST API for the command line: point a number at the bridge, place an outbound call.

Uses the `twilio` package's client (synchronous, over `requests`). `api_base` sends its requests
to another host: an API proxy, or the fake Twilio API the tests serve on loopback.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from typing import Any, TypeVar
from urllib.parse import quote, urlsplit

from twilio.base.exceptions import TwilioException, TwilioRestException
from twilio.http.http_client import TwilioHttpClient
from twilio.rest import Client

from bridge.errors import BridgeError, ConfigError
from bridge.profiles import normalise_number
from bridge.settings import Settings

VOICE_PATH = "/twilio/voice"
STATUS_PATH = "/twilio/status"
TIMEOUT = 15.0
CALL_EVENTS = ["initiated", "ringing", "answered", "completed"]
_T = TypeVar("_T")


class RestError(BridgeError):
    """Twilio refused a request or could not be reached; `code` is Twilio's error code."""

    def __init__(self, message: str, *, status: int | None = None, code: int | None = None):
        super().__init__(message)
        self.status = status
        self.code = code


@dataclasses.dataclass(frozen=True, slots=True)
class Change:
    field: str
    old: str
    new: str


@dataclasses.dataclass(frozen=True, slots=True)
class Attached:
    sid: str
    phone_number: str
    changes: tuple[Change, ...]
    applied: bool  # False for a dry run


@dataclasses.dataclass(frozen=True, slots=True)
class Placed:
    sid: str
    status: str
    url: str  # the voice webhook Twilio will fetch when the callee answers


def bridge_base(url: str) -> str:
    """The bridge's public base URL; https only, since Twilio streams only over wss on 443."""
    parts = urlsplit(url)
    if parts.scheme != "https" or not parts.netloc or parts.query or parts.fragment:
        raise ConfigError([f"--url: must be the bridge's public https:// base URL, got {url!r}"])
    return url.rstrip("/")


class TwilioRest:
    """The few REST calls the bridge needs, with errors turned into RestError."""

    def __init__(
        self, settings: Settings, *, api_base: str | None = None, timeout: float = TIMEOUT
    ) -> None:
        username, password = _credentials(settings)
        assert settings.twilio_account_sid is not None  # checked by _credentials
        self.account_sid = settings.twilio_account_sid
        self.client = Client(
            username,
            password,
            account_sid=self.account_sid,
            http_client=TwilioHttpClient(timeout=timeout),
        )
        if api_base:
            self.client.api.base_url = api_base.rstrip("/")
            self.client.edge = self.client.region = None  # would rewrite the host

    def attach(self, number: str, bridge_url: str, *, dry_run: bool = False) -> Attached:
        """Point `number`'s voice webhook and status callback at the bridge."""
        e164 = _number(number, "number")
        base = bridge_base(bridge_url)
        account = self.client.api.v2010.account
        found = _call(lambda: account.incoming_phone_numbers.list(phone_number=e164, limit=20))
        matches = [item for item in found if item.phone_number == e164]
        if not matches:
            raise RestError(f"{e164} is not a phone number of account {self.account_sid}")
        incoming = matches[0]
        if incoming.trunk_sid:
            raise RestError(
                f"{e164} is on SIP trunk {incoming.trunk_sid}, which ignores voice URLs; "
                "remove it from the trunk first"
            )
        wanted = {
            "voice_url": base + VOICE_PATH,
            "voice_method": "POST",
            "status_callback": base + STATUS_PATH,
            "status_callback_method": "POST",
        }
        if incoming.voice_application_sid:
            wanted["voice_application_sid"] = ""  # a TwiML App would override the voice URL
        changes = tuple(
            Change(field, getattr(incoming, field) or "", new)
            for field, new in wanted.items()
            if (getattr(incoming, field) or "") != new
        )
        if changes and not dry_run:
            update: dict[str, Any] = {change.field: change.new for change in changes}
            _call(lambda: incoming.update(**update))
        return Attached(str(incoming.sid), e164, changes, applied=bool(changes) and not dry_run)

    def call(self, to: str, from_: str, bridge_url: str, *, profile: str = "") -> Placed:
        """Ring `to` from our number `from_`; when answered, the bridge connects the assistant."""
        callee, caller = _number(to, "to"), _number(from_, "--from")
        base = bridge_base(bridge_url)
        url = base + VOICE_PATH + (f"?profile={quote(profile, safe='')}" if profile else "")
        account = self.client.api.v2010.account
        placed = _call(
            lambda: account.calls.create(
                to=callee,
                from_=caller,
                url=url,
                method="POST",
                status_callback=base + STATUS_PATH,
                status_callback_method="POST",
                status_callback_event=CALL_EVENTS,
            )
        )
        return Placed(str(placed.sid), str(placed.status), url)


def _credentials(settings: Settings) -> tuple[str, str]:
    """An API key pair if configured (revocable, preferred), else the account SID and token."""
    sid, key = settings.twilio_account_sid, settings.twilio_api_key
    secret, token = settings.twilio_api_secret, settings.twilio_auth_token
    problems = [] if sid else ["TWILIO_ACCOUNT_SID: is required for Twilio commands"]
    if key and secret is None:
        problems.append("TWILIO_API_SECRET: is required with TWILIO_API_KEY")
    if not key and token is None:
        problems.append("TWILIO_AUTH_TOKEN: is required (or TWILIO_API_KEY and TWILIO_API_SECRET)")
    if problems or sid is None:
        raise ConfigError(problems)
    if key and secret is not None:
        return key, secret.get_secret_value()
    assert token is not None
    return sid, token.get_secret_value()


def _number(text: str, what: str) -> str:
    try:
        return normalise_number(text)
    except ValueError as exc:
        raise ConfigError([f"{what}: {exc}"]) from None


def _call(request: Callable[[], _T]) -> _T:
    """Run one REST request; Twilio's and the network's errors become RestError."""
    try:
        return request()
    except TwilioRestException as exc:
        raise _rest_error(exc.status, exc.code, exc.msg) from exc
    except TwilioException as exc:
        # A failed list page raises the bare exception with the HTTP response as its 2nd arg.
        response = exc.args[1] if len(exc.args) > 1 else None
        status = getattr(response, "status_code", None)
        try:
            body = json.loads(getattr(response, "text", ""))
        except ValueError:
            body = {}
        if not isinstance(body, dict):
            body = {}
        raise _rest_error(status, body.get("code"), body.get("message") or str(exc)) from exc
    except OSError as exc:  # requests' errors are OSErrors: refused, timed out, TLS
        raise RestError(f"cannot reach the Twilio API: {exc}") from exc


def _rest_error(status: int | None, code: int | None, message: str) -> RestError:
    return RestError(f"Twilio error {code}: {message} (HTTP {status})", status=status, code=code)
