"""Placing a call the way Twilio does: the voice webhook POST, reading `<Connect><Stream>`, and,
when the stream ends, the `<Connect action>` request and the TwiML it returns."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Mapping
from urllib.parse import urljoin, urlsplit, urlunsplit

import httpx
from twilio.request_validator import RequestValidator

__all__ = [
    "fetch_action",
    "fetch_twiml",
    "loopback_url",
    "parse_connect_action",
    "parse_next_step",
    "parse_stream",
]

DEFAULT_ACCOUNT_SID = "AC" + "0" * 32


async def fetch_twiml(
    http_base: str,
    *,
    from_: str,
    to: str,
    call_sid: str,
    headers: Mapping[str, str] | None = None,
    extra: Mapping[str, str] | None = None,
    account_sid: str = DEFAULT_ACCOUNT_SID,
    timeout: float = 10.0,
) -> tuple[int, str]:
    """POST the inbound-call voice webhook to `{http_base}/twilio/voice`; returns (status, body)."""
    form = {
        "CallSid": call_sid,
        "AccountSid": account_sid,
        "From": from_,
        "To": to,
        "CallStatus": "ringing",
        "Direction": "inbound",
        "ApiVersion": "2010-04-01",
        **(extra or {}),
    }
    async with httpx.AsyncClient(timeout=timeout) as client:
        response = await client.post(
            http_base.rstrip("/") + "/twilio/voice", data=form, headers=dict(headers or {})
        )
    return response.status_code, response.text


async def fetch_action(
    action_url: str,
    http_base: str,
    *,
    call_sid: str,
    from_: str,
    to: str,
    direction: str = "inbound",
    call_status: str = "in-progress",
    auth_token: str | None = None,
    account_sid: str = DEFAULT_ACCOUNT_SID,
    timeout: float = 10.0,
) -> tuple[int, str]:
    """POST the `<Connect action>` request Twilio makes when the stream ends, to the server
    behind `http_base` (path and query of `action_url` kept); returns (status, body). With
    `auth_token`, `X-Twilio-Signature` is computed over the public `action_url` and the form."""
    form = {
        "AccountSid": account_sid,
        "CallSid": call_sid,
        "From": from_,
        "To": to,
        "CallStatus": call_status,
        "Direction": direction,
        "ApiVersion": "2010-04-01",
    }
    headers: dict[str, str] = {}
    if auth_token is not None:
        signature = RequestValidator(auth_token).compute_signature(action_url, form)
        headers["X-Twilio-Signature"] = str(signature)
    base = urlsplit(http_base)
    target = urlsplit(action_url)
    url = urlunsplit((base.scheme, base.netloc, target.path or "/", target.query, ""))
    async with httpx.AsyncClient(timeout=timeout) as client:
        response = await client.post(url, data=form, headers=headers)
    return response.status_code, response.text


def _response_root(twiml: str) -> ET.Element:
    try:
        root = ET.fromstring(twiml)
    except ET.ParseError as exc:
        raise ValueError(f"TwiML is not well-formed XML: {exc}") from exc
    if root.tag != "Response":
        raise ValueError(f"TwiML root is <{root.tag}>, not <Response>")
    return root


def parse_connect_action(twiml: str) -> str | None:
    """The `action` attribute of `<Connect>`: where Twilio asks what next once the stream
    ends (None if absent); ValueError on malformed TwiML."""
    connect = _response_root(twiml).find("./Connect")
    return None if connect is None else connect.get("action")


def parse_next_step(twiml: str) -> list[dict[str, str]]:
    """The verbs of a `<Response>` in order, each `{"verb": tag, **attributes}` plus its
    `text` (for `<Dial>`: the `number` dialled, and `timeout`/`callerId` always) when it has
    one; ValueError if malformed."""
    steps: list[dict[str, str]] = []
    for element in _response_root(twiml):
        step = {"verb": element.tag, **element.attrib}
        text = (element.text or "").strip()
        if element.tag == "Dial":
            number = element.find("./Number")
            if number is not None:
                text = (number.text or "").strip()
            if text:
                step["number"] = text
            # What Twilio does when these are absent: ring 30 s, show the caller's own number.
            step.setdefault("timeout", "30")
            step.setdefault("callerId", "")
        elif text:
            step["text"] = text
        steps.append(step)
    return steps


def parse_stream(twiml: str) -> tuple[str, dict[str, str]]:
    """Return the `<Connect><Stream url>` and its `<Parameter>` pairs; ValueError if absent."""
    root = _response_root(twiml)
    stream = root.find("./Connect/Stream")
    if stream is None:
        raise ValueError("TwiML has no <Connect><Stream>")
    url = stream.get("url")
    if not url:
        raise ValueError("<Stream> has no url")
    parameters: dict[str, str] = {}
    for parameter in stream.findall("./Parameter"):
        name = parameter.get("name")
        if name is None:
            raise ValueError("<Parameter> has no name")
        parameters[name] = parameter.get("value", "")
    return url, parameters


def loopback_url(stream_url: str, http_base: str) -> str:
    """Point a public `wss://host/path` stream URL at the local server behind `http_base`.

    `http://127.0.0.1:8000` gives `ws://127.0.0.1:8000/path`; a relative URL resolves against
    the voice webhook URL, as Twilio resolves it.
    """
    base = urlsplit(http_base)
    target = urlsplit(urljoin(http_base.rstrip("/") + "/twilio/voice", stream_url))
    scheme = {"http": "ws", "https": "wss"}.get(base.scheme, base.scheme)
    return urlunsplit((scheme, base.netloc, target.path, target.query, ""))
