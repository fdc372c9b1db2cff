"""`bridge calls ...` and `bridge db ...` as an operator runs them: real processes, databases."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from bridge.record import CallRecord, EndReason
from bridge.sim.realtime_server import RealtimeSimulator
from bridge.store.queries import get_call
from tests.test_store_support import (
    BACKENDS,
    TOKEN,
    call_with_barge_in,
    database,
    flushed,
    logged_bridge,
    until,
)

ROOT = Path(__file__).parent.parent


async def bridge_cli(*args: str, env: dict[str, str], timeout: float = 60) -> tuple[int, str]:
    """Run `bridge ARGS` in a new process; (exit code, stdout + stderr)."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bridge.cli",
        *args,
        cwd=ROOT,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    try:
        async with asyncio.timeout(timeout):
            output, _ = await process.communicate()
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert process.returncode is not None
    return process.returncode, output.decode()


def environment(url: str, token: str | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BRIDGE_")}
    env["BRIDGE_DATABASE_URL"] = url
    if token:
        env["BRIDGE_ADMIN_TOKEN"] = token
    return env


@pytest.fixture(params=BACKENDS)
async def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    async with database(request.param, tmp_path) as url:
        yield url


async def test_list_show_export_and_prune(
    simulator: RealtimeSimulator, db_url: str, tmp_path: Path
) -> None:
    async with logged_bridge(simulator, db_url) as logged:
        call_sid, truncate = await call_with_barge_in(logged, simulator)
        await logged.stored(call_sid)
        old = CallRecord(call_sid="CA" + "0" * 32, stream_sid="MZ" + "0" * 32)
        old.started_at -= 40 * 86400
        old.end_reason, old.ended_at = EndReason.CALLER_HANGUP, old.started_at + 10
        logged.call_log.recorder.call_started(old)
        logged.call_log.recorder.call_ended(old)
        await flushed(logged.call_log)
        stored = await get_call(logged.call_log.engine, call_sid)
    assert stored is not None
    env = environment(db_url)

    code, out = await bridge_cli("calls", "list", "--json", env=env)
    assert code == 0, out
    listed = [json.loads(line) for line in out.splitlines()]
    assert [call["call_sid"] for call in listed] == [call_sid, old.call_sid]

    code, out = await bridge_cli(
        "calls", "list", "--number", "+15550100000", "--since", "1h", env=env
    )
    assert code == 0, out
    assert call_sid in out
    assert old.call_sid not in out
    assert "caller_hangup" in out

    code, out = await bridge_cli("calls", "show", call_sid, env=env)
    assert code == 0, out
    assert "When are you open?" in out
    assert "interrupted: heard" in out
    assert "never heard" in out
    assert "barge_in" in out
    assert "answered in" in out

    target = tmp_path / "call.json"
    code, out = await bridge_cli(
        "calls", "export", call_sid, "--format", "json", "-o", str(target), env=env
    )
    assert code == 0, out
    exported = json.loads(target.read_text())
    assert exported == json.loads(json.dumps(stored.to_json()))
    (cut,) = [turn for turn in exported["turns"] if turn["item_id"] == truncate["item_id"]]
    assert cut["heard_ms"] == truncate["audio_end_ms"]

    code, text = await bridge_cli("calls", "export", call_sid, "--format", "txt", env=env)
    assert code == 0, text
    assert "Wait, one more thing." in text

    code, out = await bridge_cli("calls", "show", "CAnope", env=env)
    assert code == 1
    assert "no call CAnope" in out

    code, out = await bridge_cli("calls", "prune", "--older-than", "30d", env=env)
    assert code == 0, out
    assert "deleted 1 calls" in out
    code, out = await bridge_cli("calls", "list", "--json", env=env)
    assert [json.loads(line)["call_sid"] for line in out.splitlines()] == [call_sid]


async def test_tail_follows_a_live_call(simulator: RealtimeSimulator, tmp_path: Path) -> None:
    async with database("sqlite", tmp_path) as url, logged_bridge(simulator, url) as logged:
        env = environment(url, TOKEN)
        refused_code, refused = await bridge_cli(
            "calls", "tail", "--url", logged.base, env=environment(url, "wrong-token")
        )
        assert refused_code == 1
        assert "refused (401)" in refused
        async with asyncio.TaskGroup() as tg:
            tail = tg.create_task(
                bridge_cli("calls", "tail", "--url", logged.base, "--count", "1", env=env)
            )
            await until(lambda: logged.call_log.feed.subscribers > 0, 30)
            call_sid, _ = await call_with_barge_in(logged, simulator)
        code, out = tail.result()
    assert code == 0, out
    lines = [line for line in out.splitlines() if call_sid[:12] in line]
    assert "started: +15550100001 -> +15550100000" in lines[0]
    assert any("caller: When are you open?" in line for line in lines)
    assert any("assistant: Our opening hours" in line and "interrupted" in line for line in lines)
    assert any("! barge_in" in line for line in lines)
    assert "ended: caller_hangup" in lines[-1]


async def test_db_upgrade_and_current(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'fresh.db'}"
    env = environment(url)
    code, out = await bridge_cli("db", "current", env=env)
    assert code == 1
    assert "needs `bridge db upgrade`" in out
    code, out = await bridge_cli("db", "upgrade", env=env)
    assert code == 0, out
    assert "empty -> 0004" in out
    code, out = await bridge_cli("db", "current", env=env)
    assert code == 0, out
    assert "up to date" in out
    code, out = await bridge_cli("db", "current", env=environment("mysql://nope/x"))
    assert code == 2
    assert "BRIDGE_DATABASE_URL" in out
