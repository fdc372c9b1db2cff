"""`bridge twilio attach | call` against a fake Twilio REST API on loopback, answering as Twilio's
does (paths, Basic auth, form fields, JSON resources and errors); then the outbound call's webhook
and stream run against a real bridge."""

from __future__ import annotations

import asyncio
import base64
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from twilio.request_validator import RequestValidator

from bridge import twilio_cli
from bridge.app import create_app
from bridge.errors import ConfigError
from bridge.record import MemoryRecorder
from bridge.server import serving
from bridge.settings import Settings
from bridge.sim.realtime_server import RealtimeSimulator
from bridge.sim.twilio_caller import TwilioCaller, loopback_url, parse_stream
from tests.conftest import make_settings

ACCOUNT = "AC" + "1" * 32
TOKEN = "0123456789abcdef0123456789abcdef"
API_KEY, API_SECRET = "SK" + "2" * 32, "api-secret"
NUMBER, NUMBER_SID = "+15550100000", "PN" + "3" * 32
PUBLIC = "https://bridge.example.com"
DATE = "Thu, 30 Jul 2015 20:00:00 +0000"


class FakeTwilioApi:
    """The slice of api.twilio.com/2010-04-01 the bridge uses, kept in memory."""

    def __init__(self) -> None:
        self.numbers: dict[str, dict[str, Any]] = {
            NUMBER_SID: {
                "sid": NUMBER_SID,
                "account_sid": ACCOUNT,
                "phone_number": NUMBER,
                "friendly_name": "(555) 010-0000",
                "voice_url": "https://old.example.com/voice",
                "voice_method": "GET",
                "voice_application_sid": "AP" + "4" * 32,
                "status_callback": "",
                "status_callback_method": "POST",
                "trunk_sid": None,
                "date_created": DATE,
                "date_updated": DATE,
            }
        }
        self.calls: list[list[tuple[str, str]]] = []
        self.updates: list[list[tuple[str, str]]] = []
        self.credentials: set[tuple[str, str]] = {(ACCOUNT, TOKEN), (API_KEY, API_SECRET)}
        prefix = f"/2010-04-01/Accounts/{ACCOUNT}"
        self.app = Starlette(
            routes=[
                Route(prefix + "/IncomingPhoneNumbers.json", self.list_numbers),
                Route(prefix + "/IncomingPhoneNumbers/{sid}.json", self.update, methods=["POST"]),
                Route(prefix + "/Calls.json", self.create_call, methods=["POST"]),
            ]
        )

    def _authorized(self, request: Request) -> bool:
        kind, _, encoded = request.headers.get("authorization", "").partition(" ")
        user, _, password = base64.b64decode(encoded).decode().partition(":")
        return kind == "Basic" and (user, password) in self.credentials

    @staticmethod
    def _error(status: int, code: int, message: str) -> JSONResponse:
        more_info = f"https://www.twilio.com/docs/errors/{code}"
        body = {"code": code, "message": message, "more_info": more_info, "status": status}
        return JSONResponse(body, status)

    async def list_numbers(self, request: Request) -> Response:
        if not self._authorized(request):
            return self._error(401, 20003, "Authenticate")
        wanted = request.query_params.get("PhoneNumber", "")
        found = [n for n in self.numbers.values() if wanted in n["phone_number"]]
        uri = request.url.path
        return JSONResponse(
            {
                "incoming_phone_numbers": found,
                "page": 0,
                "page_size": 50,
                "start": 0,
                "end": max(0, len(found) - 1),
                "uri": uri,
                "first_page_uri": uri,
                "next_page_uri": None,
                "previous_page_uri": None,
            }
        )

    async def update(self, request: Request) -> Response:
        if not self._authorized(request):
            return self._error(401, 20003, "Authenticate")
        resource = self.numbers.get(request.path_params["sid"])
        if resource is None:
            return self._error(404, 20404, "The requested resource was not found")
        form = parse_qsl((await request.body()).decode(), keep_blank_values=True)
        self.updates.append(form)
        names = {
            "VoiceUrl": "voice_url",
            "VoiceMethod": "voice_method",
            "StatusCallback": "status_callback",
            "StatusCallbackMethod": "status_callback_method",
            "VoiceApplicationSid": "voice_application_sid",
        }
        for key, value in form:
            resource[names[key]] = value or None
        return JSONResponse(resource)

    async def create_call(self, request: Request) -> Response:
        if not self._authorized(request):
            return self._error(401, 20003, "Authenticate")
        form = parse_qsl((await request.body()).decode(), keep_blank_values=True)
        fields = dict(form)
        if fields.get("From") not in {n["phone_number"] for n in self.numbers.values()}:
            return self._error(
                400,
                21210,
                f"The source phone number provided, {fields.get('From')}, is not yet verified "
                "for your account.",
            )
        self.calls.append(form)
        sid = "CA" + os.urandom(16).hex()
        body = {"sid": sid, "account_sid": ACCOUNT, "status": "queued", "to": fields["To"]}
        return JSONResponse({**body, "from": fields["From"], "date_created": DATE}, 201)


@pytest.fixture
async def fake_api() -> AsyncIterator[tuple[FakeTwilioApi, str]]:
    api = FakeTwilioApi()
    async with serving(api.app) as base:
        yield api, base


@pytest.fixture(autouse=True)
def environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith(("TWILIO_", "BRIDGE_")):
            monkeypatch.delenv(name)
    monkeypatch.setenv("TWILIO_ACCOUNT_SID", ACCOUNT)
    monkeypatch.setenv("TWILIO_AUTH_TOKEN", TOKEN)


async def run_cli(*argv: str) -> int:
    """The command runs its blocking REST client in a thread, as it would in a shell."""
    return await asyncio.to_thread(twilio_cli.main, list(argv))


async def test_attach_points_the_number_at_the_bridge(
    fake_api: tuple[FakeTwilioApi, str], capsys: pytest.CaptureFixture[str]
) -> None:
    api, base = fake_api
    args = ("attach", "+1 (555) 010-0000", "--url", PUBLIC + "/", "--api-base", base)
    assert await run_cli(*args, "--dry-run") == 0
    assert "would change (dry run)" in capsys.readouterr().out
    assert api.updates == []

    assert await run_cli(*args) == 0
    out = capsys.readouterr().out
    assert f"{NUMBER} ({NUMBER_SID}) changed:" in out
    assert f"voice_url: https://old.example.com/voice -> {PUBLIC}/twilio/voice" in out
    assert f"voice_application_sid: AP{'4' * 32} -> (cleared)" in out
    assert dict(api.updates[0]) == {
        "VoiceUrl": PUBLIC + "/twilio/voice",
        "VoiceMethod": "POST",
        "StatusCallback": PUBLIC + "/twilio/status",
        "VoiceApplicationSid": "",
    }  # status_callback_method was POST already: not sent

    assert await run_cli(*args) == 0
    assert "already points at this bridge; no change" in capsys.readouterr().out
    assert len(api.updates) == 1


async def test_attach_with_an_api_key_and_its_failures(
    fake_api: tuple[FakeTwilioApi, str],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    api, base = fake_api
    monkeypatch.delenv("TWILIO_AUTH_TOKEN")
    monkeypatch.setenv("TWILIO_API_KEY", API_KEY)
    monkeypatch.setenv("TWILIO_API_SECRET", API_SECRET)
    assert await run_cli("attach", NUMBER, "--url", PUBLIC, "--api-base", base) == 0
    assert len(api.updates) == 1

    assert await run_cli("attach", "+15550100009", "--url", PUBLIC, "--api-base", base) == 1
    assert f"+15550100009 is not a phone number of account {ACCOUNT}" in capsys.readouterr().err
    monkeypatch.setenv("TWILIO_API_SECRET", "wrong")
    assert await run_cli("attach", NUMBER, "--url", PUBLIC, "--api-base", base) == 1
    assert "Twilio error 20003: " in capsys.readouterr().err
    assert await run_cli("attach", NUMBER, "--url", "http://insecure", "--api-base", base) == 2
    assert "must be the bridge's public https:// base URL" in capsys.readouterr().err
    monkeypatch.delenv("TWILIO_API_SECRET")
    assert await run_cli("attach", NUMBER, "--url", PUBLIC, "--api-base", base) == 2
    assert "TWILIO_API_SECRET: is required with TWILIO_API_KEY" in capsys.readouterr().err


async def test_attach_refuses_a_number_on_a_sip_trunk(
    fake_api: tuple[FakeTwilioApi, str], capsys: pytest.CaptureFixture[str]
) -> None:
    api, base = fake_api
    api.numbers[NUMBER_SID]["trunk_sid"] = "TK" + "5" * 32
    assert await run_cli("attach", NUMBER, "--url", PUBLIC, "--api-base", base) == 1
    assert "is on SIP trunk TK" in capsys.readouterr().err
    assert api.updates == []


async def test_unreachable_api_is_a_clear_error(capsys: pytest.CaptureFixture[str]) -> None:
    async with serving(Starlette()) as base:
        pass  # the port is closed again: nothing listens there now
    assert await run_cli("attach", NUMBER, "--url", PUBLIC, "--api-base", base) == 1
    assert "cannot reach the Twilio API" in capsys.readouterr().err


PROFILES = """
[profiles.sales]
voice = "sage"
instructions = "You sell things."
greeting = "Hi, this is sales calling back."
"""


async def test_outbound_call_connects_the_callee_to_the_chosen_profile(
    fake_api: tuple[FakeTwilioApi, str],
    simulator: RealtimeSimulator,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
) -> None:
    api, api_base = fake_api
    numbers_file = tmp_path / "numbers.toml"
    numbers_file.write_text(PROFILES, encoding="utf-8")
    common = ("--url", PUBLIC, "--api-base", api_base, "--numbers", str(numbers_file))

    assert (
        await run_cli("call", "+15550100777", "--from", NUMBER, "--profile", "salez", *common) == 2
    )
    assert "--profile: no profile 'salez'" in capsys.readouterr().err
    assert await run_cli("call", "+15550100777", "--from", "+15550100999", *common) == 1
    assert "Twilio error 21210" in capsys.readouterr().err

    assert (
        await run_cli("call", "+1 555 010 0777", "--from", NUMBER, "--profile", "sales", *common)
        == 0
    )
    assert "(profile: sales): CA" in capsys.readouterr().out
    (placed,) = api.calls
    fields = dict(placed)
    assert (fields["To"], fields["From"], fields["Method"]) == ("+15550100777", NUMBER, "POST")
    assert fields["Url"] == PUBLIC + "/twilio/voice?profile=sales"
    assert fields["StatusCallback"] == PUBLIC + "/twilio/status"
    events = [value for key, value in placed if key == "StatusCallbackEvent"]
    assert events == ["initiated", "ringing", "answered", "completed"]

    # Twilio, once the callee answers: the signed webhook, then the signed stream.
    settings = make_settings(
        simulator, twilio_auth_token=TOKEN, public_url=PUBLIC, numbers_file=str(numbers_file)
    )
    app = create_app(settings, recorder=MemoryRecorder())
    async with serving(app) as bridge_base:
        call_sid = "CA" + os.urandom(16).hex()
        form = {
            "CallSid": call_sid,
            "AccountSid": ACCOUNT,
            "From": NUMBER,
            "To": "+15550100777",
            "CallStatus": "in-progress",
            "Direction": "outbound-api",
        }
        validator = RequestValidator(TOKEN)
        url = urlsplit(fields["Url"])
        headers = {"X-Twilio-Signature": validator.compute_signature(fields["Url"], form)}
        async with httpx.AsyncClient(timeout=10) as client:
            response = await client.post(
                f"{bridge_base}{url.path}?{url.query}", data=form, headers=headers
            )
        assert response.status_code == 200, response.text
        stream_url, parameters = parse_stream(response.text)
        assert parameters["Profile"] == "sales"
        headers = {"X-Twilio-Signature": validator.compute_signature(stream_url, {})}
        async with TwilioCaller(
            loopback_url(stream_url, bridge_base),
            custom_parameters=parameters,
            headers=headers,
            call_sid=call_sid,
        ) as callee:
            session = await simulator.wait_for_session()
            update = await session.wait_for_received("session.update")
            assert update["session"]["audio"]["output"]["voice"] == "sage"
            assert update["session"]["instructions"] == "You sell things."
            create = await session.wait_for_received("response.create")
            assert "Hi, this is sales calling back." in create["response"]["instructions"]
            await callee.hangup()


def test_missing_credentials_name_the_variables(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("TWILIO_ACCOUNT_SID")
    monkeypatch.delenv("TWILIO_AUTH_TOKEN")
    assert twilio_cli.main(["attach", NUMBER, "--url", PUBLIC]) == 2
    err = capsys.readouterr().err
    assert "TWILIO_ACCOUNT_SID: is required" in err
    assert "TWILIO_AUTH_TOKEN: is required (or TWILIO_API_KEY and TWILIO_API_SECRET)" in err
    assert twilio_cli.main(["call", "+15550100777", "--from", NUMBER]) == 2
    assert "--url: is required (or set BRIDGE_PUBLIC_URL)" in capsys.readouterr().err


def test_malformed_twilio_settings_are_named_at_start_up() -> None:
    with pytest.raises(ConfigError) as caught:
        Settings.from_environ(
            {
                "OPENAI_API_KEY": "sk-test",
                "TWILIO_ACCOUNT_SID": "AC123",
                "TWILIO_API_KEY": "key",
                "TWILIO_AUTH_TOKEN": "   ",
                "BRIDGE_PUBLIC_URL": "https://bridge.example.com/?x=1",
            }
        )
    text = "\n".join(caught.value.problems)
    assert "TWILIO_ACCOUNT_SID: Value error, must be an account SID" in text
    assert "TWILIO_API_KEY: Value error, must be an API key SID" in text
    assert "TWILIO_AUTH_TOKEN: Value error, must not be blank" in text
    assert "BRIDGE_PUBLIC_URL: Value error, must not have a query string" in text
    assert "   " not in text
