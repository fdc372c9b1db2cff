"""Shared fixtures: the Realtime simulator, the real bridge server on a loopback port, callers."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from typing import Any

import pytest
from starlette.applications import Starlette

from bridge.app import Bridge, create_app
from bridge.record import CallRecord, MemoryRecorder
from bridge.server import serving
from bridge.settings import Settings
from bridge.sim.realtime_server import RealtimeSimulator
from bridge.sim.twilio_caller import (
    TwilioCaller,
    fetch_twiml,
    loopback_url,
    parse_connect_action,
    parse_stream,
)


@dataclasses.dataclass
class RunningBridge:
    """The bridge under test: its base URL, app state and call records."""

    base: str
    app: Starlette
    recorder: MemoryRecorder
    settings: Settings

    @property
    def state(self) -> Bridge:
        bridge: Bridge = self.app.state.bridge
        return bridge

    @contextlib.asynccontextmanager
    async def call(
        self,
        *,
        from_: str = "+15550100001",
        to: str = "+15550100000",
        **caller_options: Any,
    ) -> AsyncIterator[TwilioCaller]:
        """Dial in the way Twilio does: webhook first, then the stream its TwiML names."""
        async with self.dial(from_=from_, to=to, **caller_options) as (caller, _):
            yield caller

    @contextlib.asynccontextmanager
    async def dial(
        self,
        *,
        from_: str = "+15550100001",
        to: str = "+15550100000",
        **caller_options: Any,
    ) -> AsyncIterator[tuple[TwilioCaller, str]]:
        """As `call`, also yielding the `<Connect action>` URL Twilio asks once the stream ends."""
        call_sid = "CA" + os.urandom(16).hex()
        status, twiml = await fetch_twiml(self.base, from_=from_, to=to, call_sid=call_sid)
        assert status == 200, twiml
        action = parse_connect_action(twiml)
        assert action is not None
        url, parameters = parse_stream(twiml)
        async with TwilioCaller(
            loopback_url(url, self.base),
            custom_parameters=parameters,
            call_sid=call_sid,
            **caller_options,
        ) as caller:
            yield caller, action

    async def finished(self, call_sid: str, timeout: float = 5.0) -> CallRecord:
        """The call's record once the bridge has finalised it."""
        import asyncio

        async with asyncio.timeout(timeout):
            while True:
                record = self.recorder.find(call_sid)
                if record is not None and record.end_reason is not None:
                    return record
                await asyncio.sleep(0.01)


def make_settings(simulator: RealtimeSimulator, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "openai_api_key": "sim-key",
        "realtime_url": simulator.url,
        "tts_url": f"{simulator.http_base}/v1/audio/speech",
    }
    values.update(overrides)
    return Settings(**values)


@contextlib.asynccontextmanager
async def running_bridge(
    simulator: RealtimeSimulator, **overrides: Any
) -> AsyncIterator[RunningBridge]:
    """A bridge server with settings changed from the defaults (the `bridge` fixture's twin)."""
    recorder = MemoryRecorder()
    settings = make_settings(simulator, **overrides)
    app = create_app(settings, recorder=recorder)
    async with serving(app) as base:
        yield RunningBridge(base, app, recorder, settings)


@pytest.fixture
async def simulator() -> AsyncIterator[RealtimeSimulator]:
    async with RealtimeSimulator() as sim:
        yield sim


@pytest.fixture
async def bridge(simulator: RealtimeSimulator) -> AsyncIterator[RunningBridge]:
    async with running_bridge(simulator) as running:
        yield running


def run_bridge(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """`python -m bridge.cli ARGS` with only the given bridge/OpenAI/Twilio variables set."""
    clean = {
        k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "BRIDGE_", "TWILIO_"))
    }
    return subprocess.run(
        [sys.executable, "-m", "bridge.cli", *args],
        env=clean | env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
