"""The number directory: choosing profiles, caller rules at the webhook, reloads under live calls,
SIGHUP, the file watcher, and `bridge numbers`."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import queue
import signal
import subprocess
import sys
import threading
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from bridge import numbers, numbers_cli
from bridge.app import create_app
from bridge.errors import ConfigError
from bridge.record import MemoryRecorder
from bridge.server import serving
from bridge.settings import Settings
from bridge.sim.realtime_server import RealtimeSimulator
from bridge.sim.signals import silence, tone
from bridge.sim.twilio_caller import TwilioCaller, fetch_twiml, parse_stream
from tests.conftest import RunningBridge, make_settings

EXAMPLE = Path(__file__).resolve().parent.parent / "config" / "numbers.example.toml"
ADMIN = "admin-secret"
SETTINGS = Settings(openai_api_key="sk-test")

V1 = """
[profiles.default]
voice = "cedar"
instructions = "You are profile one."
greeting = "Hello from one."

[profiles.sales]
numbers = ["+15550100002"]
voice = "sage"
"""
V2 = """
[profiles.default]
voice = "ash"
instructions = "You are profile two."
greeting = "Hello from two."

[profiles.sales]
numbers = ["+15550100002"]
voice = "verse"
"""
INVALID = V2 + "\n[profiles.sales.turn_detection]\nthreshold = 1.5\n"
RULES = """
[profiles.support]
numbers = ["+15550100000"]
callers = { deny = ["+1900*", "anonymous"] }

[profiles.staff]
numbers = ["+15550100002"]
callers = { allow = ["+15550100001"] }

[profiles.sales]
voice = "sage"
"""


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


@contextlib.asynccontextmanager
async def running(simulator: RealtimeSimulator, **overrides: Any) -> AsyncIterator[RunningBridge]:
    recorder = MemoryRecorder()
    settings = make_settings(simulator, **overrides)
    app = create_app(settings, recorder=recorder)
    async with serving(app) as base:
        yield RunningBridge(base, app, recorder, settings)


def test_the_shipped_example_is_valid() -> None:
    directory = numbers.load(EXAMPLE, SETTINGS)
    assert len(directory.numbers) == 2
    assert {"default", "support", "staff"} <= set(directory.profiles)


def test_profiles_are_chosen_by_the_called_number_in_any_format(tmp_path: Path) -> None:
    directory = numbers.load(write(tmp_path / "n.toml", V1), SETTINGS)
    for called in ("+15550100002", "+1 (555) 010-0002", "001-555-010-0002"):
        assert directory.for_number(called).name == "sales"
    assert directory.for_number("+15550100009").name == "default"
    assert directory.for_number("sip:desk@example.com").name == "default"
    assert directory.rows()[-1] == ("*", directory.default)


def test_routing_applies_caller_rules_to_inbound_calls_only(tmp_path: Path) -> None:
    directory = numbers.load(write(tmp_path / "n.toml", RULES), SETTINGS)

    def route(caller: str, called: str, direction: str = "inbound", requested: str = "") -> Any:
        routing = directory.route(
            caller=caller, called=called, direction=direction, requested=requested
        )
        return routing.profile.name, routing.admitted

    assert route("+15550100001", "+15550100000") == ("support", True)
    assert route("+19005550000", "+15550100000") == ("support", False)
    assert route("anonymous", "+15550100000") == ("support", False)
    assert route("+15550100001", "+15550100002") == ("staff", True)
    assert route("+15550100003", "+15550100002") == ("staff", False)
    assert route("+19005550000", "+15550100009") == ("default", True)
    # A call we placed: chosen by our own number (From), and the callee is not screened.
    assert route("+15550100000", "+19005550000", "outbound-api") == ("support", True)
    assert route("+15550100000", "+19005550000", "outbound-api", "sales") == ("sales", True)
    assert route("+15550100000", "+19005550000", "outbound-api", "nope") == ("default", False)


def test_no_file_means_one_builtin_profile(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    holder = numbers.Numbers(SETTINGS)
    assert holder.current.source is None
    assert holder.current.for_number("+15550100000") == numbers.builtin(SETTINGS).default
    # A configured file that does not exist yet: the built-in default until it appears, and
    # `bridge numbers check` says so.
    absent = tmp_path / "absent.toml"
    holder = numbers.Numbers(SETTINGS.model_copy(update={"numbers_file": str(absent)}))
    assert holder.current.source is None
    assert not holder.changed_on_disk()
    write(absent, V1)
    assert holder.changed_on_disk()
    assert holder.reload("test").default.voice == "cedar"
    absent.unlink()
    with pytest.raises(ConfigError, match=r"absent\.toml: file not found"):
        holder.reload("test")
    assert holder.current.default.voice == "cedar"  # the last good file stays


async def test_reload_under_a_live_call(
    tmp_path: Path, simulator: RealtimeSimulator, caplog: pytest.LogCaptureFixture
) -> None:
    path = write(tmp_path / "numbers.toml", V1)
    async with running(simulator, numbers_file=str(path), admin_token=ADMIN) as bridge:

        async def reload() -> httpx.Response:
            async with httpx.AsyncClient(timeout=10) as client:
                return await client.post(
                    bridge.base + "/api/numbers/reload",
                    headers={"Authorization": f"Bearer {ADMIN}"},
                )

        async with bridge.call(to="+15550100000") as first:
            live = await simulator.wait_for_session(0)
            update = await live.wait_for_received("session.update")
            assert update["session"]["instructions"] == "You are profile one."
            assert update["session"]["audio"]["output"]["voice"] == "cedar"
            greeting = await live.wait_for_received("response.create")
            assert "Hello from one." in greeting["response"]["instructions"]
            await first.wait_for_playback(0.3, timeout=10)

            write(path, V2)
            response = await reload()
            assert response.status_code == 200, response.text
            assert response.json()["profiles"] == ["default", "sales"]

            # The live call carries on, on its own profile: another turn plays, no new update.
            await first.say_and_wait(
                np.concatenate([tone(440, 0.6, 8000, 0.4), silence(0.8, 8000)])
            )
            await live.wait_for_sent("response.done", count=2, timeout=10)
            await first.wait_for_playback(0.3, timeout=10)
            await first.hangup()
        record = await bridge.finished(first.call_sid)
        assert (record.profile, record.voice) == ("default", "cedar")
        assert len(live.events_received("session.update")) == 1

        async with bridge.call(to="+15550100000") as second:
            update = await (await simulator.wait_for_session(1)).wait_for_received("session.update")
            assert update["session"]["instructions"] == "You are profile two."
            assert update["session"]["audio"]["output"]["voice"] == "ash"
            await second.hangup()

        write(path, INVALID)
        with caplog.at_level(logging.ERROR, logger="bridge.numbers"):
            response = await reload()
        assert response.status_code == 422
        (problem,) = response.json()["problems"]
        assert problem == (
            f'{path}: profile "sales": turn_detection.threshold: must be between 0 and 1, got 1.5'
        )
        assert "rejected, the previous configuration stays in force" in caplog.text

        async with bridge.call(to="+1 (555) 010-0002") as third:
            session = await simulator.wait_for_session(2)
            update = await session.wait_for_received("session.update")
            assert update["session"]["audio"]["output"]["voice"] == "verse"  # still V2
            create = await session.wait_for_received("response.create")
            assert "Hello from two." in create["response"]["instructions"]  # inherited greeting
            await third.hangup()


async def test_refused_callers_get_reject_and_are_logged(
    tmp_path: Path, simulator: RealtimeSimulator, caplog: pytest.LogCaptureFixture
) -> None:
    path = write(tmp_path / "numbers.toml", RULES)
    async with running(simulator, numbers_file=str(path)) as bridge:
        with caplog.at_level(logging.WARNING, logger="bridge.app"):
            status, twiml = await fetch_twiml(
                bridge.base, from_="+19005550123", to="+15550100000", call_sid="CA" + "9" * 32
            )
        assert status == 200
        assert "<Reject" in twiml
        assert "<Stream" not in twiml
        assert "refused call CA999" in caplog.text
        assert 'caller not allowed by profile "support"' in caplog.text
        assert "+19005550123" not in caplog.text  # numbers are masked in logs
        ((call_sid, state, params),) = bridge.recorder.statuses
        assert (call_sid, state, params["Profile"]) == ("CA" + "9" * 32, "rejected", "support")

        _, twiml = await fetch_twiml(
            bridge.base, from_="+15550100001", to="+15550100002", call_sid="CA" + "8" * 32
        )
        assert parse_stream(twiml)[1]["Profile"] == "staff"
        _, twiml = await fetch_twiml(
            bridge.base, from_="+15550100003", to="+15550100002", call_sid="CA" + "7" * 32
        )
        assert "<Reject" in twiml

        # Skipping the webhook does not get round the rules (no auth token: development).
        async with TwilioCaller(
            bridge.base.replace("http", "ws", 1) + "/twilio/media",
            custom_parameters={"From": "+19005550123", "To": "+15550100000"},
        ) as caller:
            await caller.wait_closed(timeout=5)
        assert caller.close_code == 1008
        assert simulator.sessions == []


async def test_outbound_call_webhook_uses_the_requested_profile(
    tmp_path: Path, simulator: RealtimeSimulator
) -> None:
    path = write(tmp_path / "numbers.toml", RULES)
    async with running(simulator, numbers_file=str(path)) as bridge:
        form = {
            "CallSid": "CA" + "6" * 32,
            "From": "+15550100000",  # our number
            "To": "+19005550123",  # the callee; support's deny list does not apply
            "Direction": "outbound-api",
        }
        async with httpx.AsyncClient(base_url=bridge.base, timeout=10) as client:
            chosen = await client.post("/twilio/voice?profile=sales", data=form)
            by_number = await client.post("/twilio/voice", data=form)
            unknown = await client.post("/twilio/voice?profile=nope", data=form)
        assert parse_stream(chosen.text)[1]["Profile"] == "sales"
        assert parse_stream(by_number.text)[1]["Profile"] == "support"
        assert "<Hangup" in unknown.text


async def test_the_watcher_reloads_changed_files_and_reports_a_bad_one_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    prompt = write(tmp_path / "prompt.md", "First prompt.")
    path = write(tmp_path / "numbers.toml", '[profiles.default]\ninstructions_file = "prompt.md"\n')
    holder = numbers.Numbers(SETTINGS.model_copy(update={"numbers_file": str(path)}))
    holder.watch_seconds = 0.02

    async def until(predicate: Any) -> None:
        for _ in range(500):  # the watcher signals nothing: poll, for at most 5 s
            if predicate():
                return
            await asyncio.sleep(0.01)
        raise AssertionError("the watcher did not get there in 5 s")

    async with asyncio.TaskGroup() as tg:
        watcher = tg.create_task(holder.watch())
        write(prompt, "Second, longer prompt.")
        await until(lambda: holder.current.default.instructions == "Second, longer prompt.")
        with caplog.at_level(logging.ERROR, logger="bridge.numbers"):
            write(path, '[profiles.default]\nvoice = "nobody"\n')
            await until(lambda: "rejected" in caplog.text)
            await asyncio.sleep(0.2)  # ten more polls
        assert caplog.text.count("rejected") == 1
        assert holder.current.default.instructions == "Second, longer prompt."
        write(path, '[profiles.default]\nvoice = "sage"\n')
        await until(lambda: holder.current.default.voice == "sage")
        watcher.cancel()


def test_numbers_list_and_check(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert numbers_cli.main(["list", "--numbers", str(EXAMPLE)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["NUMBER", "PROFILE", "VOICE", "GREETING", "CALLERS"]
    assert lines[1].split()[:3] == ["+15550100000", "support", "cedar"]
    assert "(waits for the caller)" in lines[2]
    assert lines[3].split()[:3] == ["*", "default", "marin"]

    assert numbers_cli.main(["check", str(EXAMPLE)]) == 0
    assert "ok, 3 profiles" in capsys.readouterr().out
    assert numbers_cli.main(["check", str(tmp_path / "typo.toml")]) == 2
    assert "typo.toml: file not found" in capsys.readouterr().err
    bad = write(tmp_path / "bad.toml", INVALID)
    assert numbers_cli.main(["check", str(bad)]) == 2
    assert 'profile "sales": turn_detection.threshold: must be between 0 and 1, got 1.5' in (
        capsys.readouterr().err
    )


async def test_numbers_reload_command(
    tmp_path: Path, simulator: RealtimeSimulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write(tmp_path / "numbers.toml", V1)
    async with running(simulator, numbers_file=str(path), admin_token=ADMIN) as bridge:
        monkeypatch.setenv("BRIDGE_ADMIN_TOKEN", ADMIN)
        write(path, V2)
        assert await asyncio.to_thread(numbers_cli.main, ["reload", "--url", bridge.base]) == 0
        assert bridge.state.numbers.current.default.voice == "ash"
        write(path, INVALID)
        assert await asyncio.to_thread(numbers_cli.main, ["reload", "--url", bridge.base]) == 2
        monkeypatch.setenv("BRIDGE_ADMIN_TOKEN", "wrong")
        assert await asyncio.to_thread(numbers_cli.main, ["reload", "--url", bridge.base]) == 1
        assert bridge.state.numbers.current.default.voice == "ash"


async def test_without_an_admin_token_only_direct_local_requests_may_reload(
    tmp_path: Path, simulator: RealtimeSimulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write(tmp_path / "numbers.toml", V1)
    monkeypatch.delenv("BRIDGE_ADMIN_TOKEN", raising=False)
    async with running(simulator, numbers_file=str(path)) as bridge:
        write(path, V2)
        async with httpx.AsyncClient(base_url=bridge.base, timeout=10) as client:
            relayed = await client.post(
                "/api/numbers/reload", headers={"X-Forwarded-For": "203.0.113.9"}
            )
        assert relayed.status_code == 403
        assert bridge.state.numbers.current.default.voice == "cedar"
        assert await asyncio.to_thread(numbers_cli.main, ["reload", "--url", bridge.base]) == 0
        assert bridge.state.numbers.current.default.voice == "ash"


def _serve_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "BRIDGE_"))}
    env["OPENAI_API_KEY"] = "sk-test"
    return env


def test_serve_refuses_a_bad_numbers_file(tmp_path: Path) -> None:
    bad = write(tmp_path / "bad.toml", INVALID)
    result = subprocess.run(
        [sys.executable, "-m", "bridge.cli", "serve", "--port", "0", "--numbers", str(bad)],
        env=_serve_env(),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert f'{bad}: profile "sales": turn_detection.threshold' in result.stderr


@contextlib.contextmanager
def _server_log(args: list[str]) -> Iterator[tuple[subprocess.Popen[str], queue.Queue[str]]]:
    process = subprocess.Popen(
        [sys.executable, "-m", "bridge.cli", "serve", *args],
        env=_serve_env(),
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        text=True,
    )
    lines: queue.Queue[str] = queue.Queue()
    assert process.stderr is not None
    stream = process.stderr

    def read() -> None:
        for line in stream:
            lines.put(line)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        yield process, lines
    finally:
        process.terminate()
        process.wait(timeout=15)
        reader.join(timeout=5)
        stream.close()


def _wait_for(lines: queue.Queue[str], text: str, timeout: float = 20.0) -> str:
    try:
        while True:
            line = lines.get(timeout=timeout)
            if text in line:
                return line
    except queue.Empty:
        raise AssertionError(f"no log line with {text!r}") from None


def test_sighup_reloads_a_running_server(tmp_path: Path) -> None:
    path = write(tmp_path / "numbers.toml", V1)
    args = ["--host", "127.0.0.1", "--port", "0", "--numbers", str(path)]
    with _server_log(args) as (process, lines):
        _wait_for(lines, "Application startup complete")
        write(path, V2)
        process.send_signal(signal.SIGHUP)
        _wait_for(lines, "numbers reloaded (SIGHUP)")
        write(path, INVALID)
        process.send_signal(signal.SIGHUP)
        line = _wait_for(lines, "numbers reload (SIGHUP) rejected")
        assert "turn_detection.threshold: must be between 0 and 1, got 1.5" in line
        assert process.poll() is None  # still serving, on V2
