"""Placing a call the way Twilio does: the voice webhook POST, and reading `<Connect><Stream>`."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Mapping
from urllib.parse import urljoin, urlsplit, urlunsplit

import httpx

__all__ = ["fetch_twiml", "loopback_url", "parse_stream"]


async def fetch_twiml(
    http_base: str,
    *,
    from_: str,
    to: str,
    call_sid: str,
    headers: Mapping[str, str] | None = None,
    extra: Mapping[str, str] | None = None,
    account_sid: str = "AC" + "0" * 32,
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


def parse_stream(twiml: str) -> tuple[str, dict[str, str]]:
    """Return the `<Connect><Stream url>` and its `<Parameter>` pairs; ValueError if absent."""
    try:
        root = ET.fromstring(twiml)
    except ET.ParseError as exc:
        raise ValueError(f"TwiML is not well-formed XML: {exc}") from exc
    if root.tag != "Response":
        raise ValueError(f"TwiML root is <{root.tag}>, not <Response>")
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
