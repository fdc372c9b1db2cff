"""Twilio signatures end to end: voice webhook, status callbacks and the Media Stream upgrade,
each accepted only when signed with the auth token, over real sockets."""

from __future__ import annotations

import contextlib
import logging
import os
import xml.etree.ElementTree as ET
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

import httpx
import pytest
from twilio.request_validator import RequestValidator
from websockets.exceptions import InvalidStatus

from bridge.app import create_app
from bridge.errors import ConfigError
from bridge.record import EndReason, MemoryRecorder
from bridge.server import serving
from bridge.sim.realtime_server import RealtimeSimulator
from bridge.sim.twilio_caller import TwilioCaller, loopback_url, parse_stream
from bridge.store import CallLog
from tests.conftest import RunningBridge, make_settings, run_bridge
from tests.test_store_support import BACKENDS, database

TOKEN = "0123456789abcdef0123456789abcdef"
PUBLIC = "https://bridge.example.com"
CALLER, CALLED = "+15550100001", "+15550100000"


@contextlib.asynccontextmanager
async def running(simulator: RealtimeSimulator, **overrides: Any) -> AsyncIterator[RunningBridge]:
    recorder = MemoryRecorder()
    settings = make_settings(simulator, **overrides)
    app = create_app(settings, recorder=recorder)
    async with serving(app) as base:
        yield RunningBridge(base, app, recorder, settings)


@pytest.fixture
async def secure(simulator: RealtimeSimulator) -> AsyncIterator[RunningBridge]:
    async with running(simulator, twilio_auth_token=TOKEN, public_url=PUBLIC) as bridge:
        yield bridge


def sign(url: str, params: Mapping[str, str], token: str = TOKEN) -> str:
    return str(RequestValidator(token).compute_signature(url, dict(params)))


def new_sid() -> str:
    return "CA" + os.urandom(16).hex()


def voice_form(call_sid: str, **extra: str) -> dict[str, str]:
    return {
        "CallSid": call_sid,
        "AccountSid": "AC" + "0" * 32,
        "From": CALLER,
        "To": CALLED,
        "CallStatus": "ringing",
        "Direction": "inbound",
        "ApiVersion": "2010-04-01",
        **extra,
    }


async def post(
    bridge: RunningBridge, path: str, form: Mapping[str, str], headers: Mapping[str, str]
) -> httpx.Response:
    async with httpx.AsyncClient(timeout=10) as client:
        return await client.post(bridge.base + path, data=dict(form), headers=dict(headers))


async def answer(bridge: RunningBridge, call_sid: str) -> tuple[str, dict[str, str]]:
    """Post a correctly signed voice webhook; the stream URL and parameters of its TwiML."""
    form = voice_form(call_sid)
    signature = sign(PUBLIC + "/twilio/voice", form)
    response = await post(bridge, "/twilio/voice", form, {"X-Twilio-Signature": signature})
    assert response.status_code == 200, response.text
    return parse_stream(response.text)


async def test_voice_webhook_needs_a_valid_signature(secure: RunningBridge) -> None:
    url = PUBLIC + "/twilio/voice"
    form = voice_form(new_sid())
    cases = {
        "correct": (sign(url, form), 200),
        "wrong token": (sign(url, form, "f" * 32), 403),
        "missing": (None, 403),
        "http instead of https": (sign(url.replace("https", "http", 1), form), 403),
        "other fields": (sign(url, {**form, "To": "+15550100009"}), 403),
    }
    for case, (signature, status) in cases.items():
        headers = {"X-Twilio-Signature": signature} if signature else {}
        response = await post(secure, "/twilio/voice", form, headers)
        assert response.status_code == status, case
    assert secure.recorder.statuses == []


async def test_signed_twiml_names_the_status_callback_and_carries_a_token(
    secure: RunningBridge,
) -> None:
    call_sid = new_sid()
    form = voice_form(call_sid)
    response = await post(
        secure, "/twilio/voice", form, {"X-Twilio-Signature": sign(PUBLIC + "/twilio/voice", form)}
    )
    stream = ET.fromstring(response.text).find("./Connect/Stream")
    assert stream is not None
    assert stream.get("url") == "wss://bridge.example.com/twilio/media"
    assert stream.get("statusCallback") == PUBLIC + "/twilio/status"
    assert stream.get("statusCallbackMethod") == "POST"
    _, params = parse_stream(response.text)
    assert params["CallSid"] == call_sid
    assert params["Profile"] == "default"
    assert params["Token"]
    assert params["Expires"]


async def test_status_callbacks_need_a_signature_and_are_recorded(secure: RunningBridge) -> None:
    url = PUBLIC + "/twilio/status"
    call_sid = new_sid()
    callbacks = [
        voice_form(call_sid, CallStatus="in-progress"),
        {"CallSid": call_sid, "StreamSid": "MZ" + "1" * 32, "StreamEvent": "stream-started"},
        {"CallSid": call_sid, "StreamSid": "MZ" + "1" * 32, "StreamEvent": "stream-stopped"},
        voice_form(call_sid, CallStatus="completed", CallDuration="42"),
    ]
    for form in callbacks:
        refused = await post(secure, "/twilio/status", form, {"X-Twilio-Signature": sign(url, {})})
        assert refused.status_code == 403
        missing = await post(secure, "/twilio/status", form, {})
        assert missing.status_code == 403
        accepted = await post(
            secure, "/twilio/status", form, {"X-Twilio-Signature": sign(url, form)}
        )
        assert accepted.status_code == 204
    statuses = [(sid, status) for sid, status, _ in secure.recorder.statuses]
    assert statuses == [
        (call_sid, "in-progress"),
        (call_sid, "stream-started"),
        (call_sid, "stream-stopped"),
        (call_sid, "completed"),
    ]
    assert secure.recorder.statuses[-1][2]["CallDuration"] == "42"


async def test_a_fully_signed_call_reaches_the_model(
    secure: RunningBridge, simulator: RealtimeSimulator
) -> None:
    call_sid = new_sid()
    url, params = await answer(secure, call_sid)
    headers = {"X-Twilio-Signature": sign(url, {})}
    async with TwilioCaller(
        loopback_url(url, secure.base), custom_parameters=params, headers=headers, call_sid=call_sid
    ) as caller:
        session = await simulator.wait_for_session()
        await session.wait_for_received("session.update")
        await caller.hangup()
    record = await secure.finished(call_sid)
    assert record.end_reason is EndReason.CALLER_HANGUP
    assert record.profile == "default"


@pytest.mark.parametrize("case", ["missing", "wrong token", "https URL", "query string"])
async def test_media_upgrade_without_a_valid_signature_is_refused(
    secure: RunningBridge, simulator: RealtimeSimulator, case: str
) -> None:
    call_sid = new_sid()
    url, params = await answer(secure, call_sid)
    signature = {
        "missing": None,
        "wrong token": sign(url, {}, "f" * 32),
        "https URL": sign(url.replace("wss://", "https://"), {}),
        "query string": sign(url + "?CallSid=" + call_sid, {}),
    }[case]
    headers = {"X-Twilio-Signature": signature} if signature else {}
    caller = TwilioCaller(
        loopback_url(url, secure.base), custom_parameters=params, headers=headers, call_sid=call_sid
    )
    with pytest.raises(InvalidStatus) as refused:
        async with caller:
            pass
    assert refused.value.response.status_code == 403
    assert simulator.sessions == []


@pytest.mark.parametrize("case", ["no token", "other profile", "other call", "webhook skipped"])
async def test_forged_stream_parameters_are_refused_before_any_realtime_session(
    secure: RunningBridge, simulator: RealtimeSimulator, case: str
) -> None:
    call_sid = new_sid()
    url, params = await answer(secure, call_sid)
    if case == "no token":
        del params["Token"]
    elif case == "other profile":
        params["Profile"] = "staff"
    elif case == "webhook skipped":
        params = {"From": CALLER, "To": CALLED, "CallSid": call_sid}
    stream_call_sid = new_sid() if case == "other call" else call_sid
    headers = {"X-Twilio-Signature": sign(url, {})}  # the upgrade itself is properly signed
    async with TwilioCaller(
        loopback_url(url, secure.base),
        custom_parameters=params,
        headers=headers,
        call_sid=stream_call_sid,
    ) as caller:
        await caller.wait_closed(timeout=5)
    assert caller.close_code == 1008
    assert simulator.sessions == []


async def test_forwarded_headers_validate_behind_a_trusted_proxy(
    simulator: RealtimeSimulator,
) -> None:
    proxy = {"X-Forwarded-Proto": "https", "X-Forwarded-Host": "bridge.example.com"}
    async with running(simulator, twilio_auth_token=TOKEN, trust_forwarded=True) as bridge:
        call_sid = new_sid()
        form = voice_form(call_sid)
        signed = {**proxy, "X-Twilio-Signature": sign(PUBLIC + "/twilio/voice", form)}
        response = await post(bridge, "/twilio/voice", form, signed)
        assert response.status_code == 200
        url, params = parse_stream(response.text)
        assert url == "wss://bridge.example.com/twilio/media"
        headers = {**proxy, "X-Twilio-Signature": sign(url, {})}
        async with TwilioCaller(
            loopback_url(url, bridge.base),
            custom_parameters=params,
            headers=headers,
            call_sid=call_sid,
        ) as caller:
            await simulator.wait_for_session()
            await caller.hangup()
        # Without the proxy's headers the same signature is over a URL we were not called at.
        response = await post(
            bridge, "/twilio/voice", form, {"X-Twilio-Signature": signed["X-Twilio-Signature"]}
        )
        assert response.status_code == 403


async def test_no_token_warns_loudly_and_production_refuses_to_start(
    simulator: RealtimeSimulator, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="bridge.app"):
        create_app(make_settings(simulator))
    assert "TWILIO_AUTH_TOKEN is not set" in caplog.text
    with pytest.raises(ConfigError, match="TWILIO_AUTH_TOKEN: required when BRIDGE_ENV=production"):
        create_app(make_settings(simulator, environment="production"))
    create_app(make_settings(simulator, environment="production", twilio_auth_token=TOKEN))


def test_serve_in_production_without_a_token_exits_2() -> None:
    result = run_bridge("serve", "--port", "0", OPENAI_API_KEY="sk-test", BRIDGE_ENV="production")
    assert result.returncode == 2
    assert "TWILIO_AUTH_TOKEN: required when BRIDGE_ENV=production" in result.stderr


async def test_a_stream_token_opens_one_stream_only(
    secure: RunningBridge, simulator: RealtimeSimulator
) -> None:
    """The webhook's token, replayed by a second properly signed stream (while the first is
    live, or after it), is refused before any Realtime session is opened for it."""
    call_sid = new_sid()
    url, params = await answer(secure, call_sid)
    headers = {"X-Twilio-Signature": sign(url, {})}

    def stream() -> TwilioCaller:
        return TwilioCaller(
            loopback_url(url, secure.base),
            custom_parameters=params,
            headers=headers,
            call_sid=call_sid,
        )

    async with stream() as first:
        await simulator.wait_for_session()
        async with stream() as replay:
            await replay.wait_closed(timeout=5)
        assert replay.close_code == 1008
        await first.hangup()
    record = await secure.finished(call_sid)
    assert record.end_reason is EndReason.CALLER_HANGUP
    async with stream() as late_replay:
        await late_replay.wait_closed(timeout=5)
    assert late_replay.close_code == 1008
    assert len(simulator.sessions) == 1


@pytest.mark.parametrize("backend", BACKENDS)
async def test_a_stream_token_used_on_one_replica_is_refused_on_another(
    simulator: RealtimeSimulator, tmp_path: Path, backend: str
) -> None:
    """Each replica's in-process check passes a token it never saw; the call log's database,
    which every replica shares, refuses the second use (`Bridge.claim_stream`), over real
    streams: the replay is closed with 1008 before any Realtime session is opened for it."""
    async with database(backend, tmp_path) as url, contextlib.AsyncExitStack() as stack:
        replicas: list[RunningBridge] = []
        for n in range(2):
            call_log = await stack.enter_async_context(CallLog(url, instance=f"replica-{n}"))
            settings = make_settings(simulator, twilio_auth_token=TOKEN, public_url=PUBLIC)
            app = create_app(settings, recorder=call_log.recorder)
            app.state.bridge.signatures.ledger = call_log.stream_tokens  # as `bridge serve`
            base = await stack.enter_async_context(serving(app))
            replicas.append(RunningBridge(base, app, MemoryRecorder(), settings))
        first, second = replicas
        call_sid = new_sid()
        url, params = await answer(first, call_sid)
        headers = {"X-Twilio-Signature": sign(url, {})}

        def stream(replica: RunningBridge) -> TwilioCaller:
            return TwilioCaller(
                loopback_url(url, replica.base),
                custom_parameters=params,
                headers=headers,
                call_sid=call_sid,
            )

        async with stream(first) as original:
            await simulator.wait_for_session()
            async with stream(second) as replay:  # that process never saw the token
                await replay.wait_closed(timeout=5)
            assert replay.close_code == 1008
            await original.hangup()
        assert len(simulator.sessions) == 1
        # A fresh token from the other replica's webhook still opens its stream.
        other_sid = new_sid()
        other_url, other_params = await answer(second, other_sid)
        fresh = TwilioCaller(
            loopback_url(other_url, second.base),
            custom_parameters=other_params,
            headers={"X-Twilio-Signature": sign(other_url, {})},
            call_sid=other_sid,
        )
        async with fresh:
            await simulator.wait_for_session(index=1)  # its Realtime session opens
            await fresh.hangup()
