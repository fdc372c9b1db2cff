"""Signatures without sockets: the public URL Twilio signed, its signatures, our stream token."""

from __future__ import annotations

from typing import Any

import pytest
from starlette.requests import HTTPConnection
from twilio.request_validator import RequestValidator

from bridge import twilio
from bridge.errors import ProtocolViolation
from bridge.settings import Settings
from bridge.signatures import TOKEN_TTL, TwilioSignatures, public_base, request_url

TOKEN = "0123456789abcdef0123456789abcdef"
CALL_SID = "CA" + "a" * 32


def connection(path: str, headers: dict[str, str], query: bytes = b"") -> HTTPConnection:
    scope: dict[str, Any] = {
        "type": "http",
        "method": "POST",
        "scheme": "http",
        "path": path,
        "query_string": query,
        "headers": [(k.lower().encode(), v.encode()) for k, v in headers.items()],
        "server": ("127.0.0.1", 8080),
    }
    return HTTPConnection(scope)


def settings(**values: Any) -> Settings:
    return Settings(openai_api_key="k", **values)


def test_public_url_wins_and_keeps_its_path_prefix() -> None:
    conn = connection("/twilio/voice", {"host": "10.0.0.5:8080"}, b"profile=sales")
    configured = settings(public_url="https://example.com/phone/")
    assert request_url(configured, conn) == "https://example.com/phone/twilio/voice?profile=sales"
    assert (
        twilio.stream_url(public_base(configured, conn)) == "wss://example.com/phone/twilio/media"
    )


def test_forwarded_headers_count_only_when_trusted() -> None:
    headers = {
        "host": "10.0.0.5:8080",
        "x-forwarded-proto": "https, http",
        "x-forwarded-host": "bridge.example.com",
        "x-forwarded-prefix": "/calls",
    }
    conn = connection("/twilio/status", headers)
    assert request_url(settings(), conn) == "https://10.0.0.5:8080/twilio/status"
    trusted = settings(trust_forwarded=True)
    assert request_url(trusted, conn) == "https://bridge.example.com/calls/twilio/status"
    odd_port = connection(
        "/x", {"host": "h", "x-forwarded-proto": "wss", "x-forwarded-port": "8443"}
    )
    assert public_base(trusted, odd_port) == "https://h:8443"


def test_webhook_signature_covers_url_and_every_field() -> None:
    signatures = TwilioSignatures(TOKEN)
    url = "https://bridge.example.com/twilio/voice?profile=sales"
    form = {"CallSid": CALL_SID, "From": "+15550100001", "To": "+15550100000"}
    good = RequestValidator(TOKEN).compute_signature(url, form)
    assert signatures.webhook_valid(url, form, good)
    assert not signatures.webhook_valid(url, {**form, "To": "+15550100009"}, good)
    assert not signatures.webhook_valid(url.replace("sales", "staff"), form, good)
    assert not signatures.webhook_valid(url, form, "")
    other = RequestValidator("f" * 32).compute_signature(url, form)
    assert not signatures.webhook_valid(url, form, other)


def test_stream_signature_is_over_the_wss_url_with_no_fields() -> None:
    signatures = TwilioSignatures(TOKEN)
    wss = "wss://bridge.example.com/twilio/media"
    assert signatures.stream_valid(wss, RequestValidator(TOKEN).compute_signature(wss, {}))
    https = RequestValidator(TOKEN).compute_signature(wss.replace("wss", "https", 1), {})
    assert not signatures.stream_valid(wss, https)


def stream_params(signatures: TwilioSignatures, now: float = 1000.0) -> dict[str, str]:
    return signatures.sign_stream(
        {
            "From": "+15550100001",
            "To": "+15550100000",
            "CallSid": CALL_SID,
            "Direction": "inbound",
            "Profile": "support",
        },
        now=now,
    )


def test_stream_token_verifies_for_its_call_until_it_expires() -> None:
    signatures = TwilioSignatures(TOKEN)
    params = stream_params(signatures)
    assert params["Expires"] == str(int(1000 + TOKEN_TTL))
    signatures.verify_stream(params, CALL_SID, now=1000.0 + TOKEN_TTL)
    # Another replica with the same auth token accepts it too: nothing is kept between the two.
    TwilioSignatures(TOKEN).verify_stream(params, CALL_SID, now=1001.0)


@pytest.mark.parametrize(
    ("change", "call_sid", "now", "message"),
    [
        ({"Token": ""}, CALL_SID, 1000.0, "carry no token"),
        ({"Profile": "staff"}, CALL_SID, 1000.0, "token is invalid"),
        ({"To": "+15550100002"}, CALL_SID, 1000.0, "token is invalid"),
        ({"Expires": "99999999999"}, CALL_SID, 1000.0, "token is invalid"),
        ({}, CALL_SID, 1000.0 + TOKEN_TTL + 1, "token expired"),
        ({}, "CA" + "b" * 32, 1000.0, "callSid differs"),
    ],
)
def test_forged_expired_or_borrowed_stream_parameters_are_refused(
    change: dict[str, str], call_sid: str, now: float, message: str
) -> None:
    signatures = TwilioSignatures(TOKEN)
    params = {**stream_params(signatures), **change}
    with pytest.raises(ProtocolViolation, match=message):
        signatures.verify_stream(params, call_sid, now=now)


def test_a_token_from_another_auth_token_is_refused() -> None:
    params = stream_params(TwilioSignatures("f" * 32))
    with pytest.raises(ProtocolViolation, match="token is invalid"):
        TwilioSignatures(TOKEN).verify_stream(params, CALL_SID, now=1000.0)
