"""`bridge serve --workers N`, for real: a supervisor and its worker processes on one port, a real
PostgreSQL call log, simulated calls over real sockets, and real signals."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import re
import signal
import socket
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import httpx
import numpy as np
import pytest
from sqlalchemy.engine import make_url

from bridge.sim.analysis import dominant_frequency
from bridge.sim.realtime_server import RealtimeSimulator
from bridge.sim.signals import silence, tone
from bridge.sim.twilio_caller import TwilioCaller
from bridge.store.tail import events
from bridge.workers import slot_sockets
from tests.test_drain import _free_port, dial
from tests.test_store_support import PG_ADMIN, _admin, database, until

REPLY_HZ = 700.0


class Server:
    """A `bridge serve --workers N` process: its base URL, metrics URL and log."""

    def __init__(
        self, process: asyncio.subprocess.Process, port: int, metrics_port: int, log: Path
    ) -> None:
        self.process = process
        self.base = f"http://127.0.0.1:{port}"
        self.metrics = f"http://127.0.0.1:{metrics_port}/metrics"
        self.log = log

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def serving(self) -> dict[int, int]:
        """Worker index -> pid of its latest `serving` line."""
        return {
            int(i): int(p)
            for i, p in re.findall(r"worker (\d+): serving \(pid (\d+)\)", self.text())
        }

    async def wait_for_log(self, pattern: str, count: int = 1, timeout: float = 20.0) -> None:
        await until(lambda: len(re.findall(pattern, self.text())) >= count, timeout, 0.05)

    async def live_snapshot(self) -> dict[str, str]:
        """Call SID -> instance of every call in the live feed of whichever worker answers."""
        async with (
            httpx.AsyncClient(base_url=self.base, timeout=10) as client,
            client.stream("GET", "/api/live") as response,
        ):
            async for kind, data in events(response.aiter_lines()):
                assert kind == "snapshot"
                return {c["call"]["call_sid"]: c["call"]["instance"] for c in data["calls"]}
        raise AssertionError("no snapshot")

    async def live_calls(self) -> float:
        async with httpx.AsyncClient() as client:
            body = (await client.get(self.metrics)).text
        match = re.search(r"^bridge_live_calls (\S+)$", body, re.MULTILINE)
        assert match is not None, body
        return float(match.group(1))


def _env(
    simulator: RealtimeSimulator, database_url: str, tmp_path: Path, **extra: str
) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("BRIDGE_", "OPENAI_", "TWILIO_", "PROMETHEUS_"))
    }
    return env | {
        "OPENAI_API_KEY": "sim-key",
        "BRIDGE_REALTIME_URL": simulator.url,
        "BRIDGE_TTS_URL": f"{simulator.http_base}/v1/audio/speech",
        "BRIDGE_DATABASE_URL": database_url,
        "BRIDGE_NUMBERS": str(tmp_path / "no-numbers.toml"),
        "BRIDGE_LOG_LEVEL": "INFO",
        **extra,
    }


@contextlib.asynccontextmanager
async def workers(
    simulator: RealtimeSimulator,
    database_url: str,
    tmp_path: Path,
    count: int = 2,
    *,
    early_signal: signal.Signals | None = None,
    **extra: str,
) -> AsyncIterator[Server]:
    """The server, once every worker serves; `early_signal` goes to the supervisor as soon as
    it has started its workers, while they are still starting up."""
    port, metrics_port = _free_port(), _free_port()
    env = _env(simulator, database_url, tmp_path, BRIDGE_METRICS_PORT=str(metrics_port), **extra)
    log = tmp_path / "bridge.log"
    with log.open("wb") as stderr:
        process = await asyncio.create_subprocess_exec(
            *(sys.executable, "-m", "bridge.cli", "serve", "--workers", str(count)),
            *("--host", "127.0.0.1", "--port", str(port)),
            env=env,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=stderr,
            start_new_session=True,  # its own process group, as a shell gives a foreground job
        )
    server = Server(process, port, metrics_port, log)
    try:
        if early_signal is not None:
            await server.wait_for_log(rf"worker {count - 1}: started", timeout=30)
            process.send_signal(early_signal)
        await server.wait_for_log(r"worker \d+: serving", count, timeout=60)
        yield server
    finally:
        pids = list(server.serving().values())
        if process.returncode is None:
            process.kill()
            await process.wait()
        for pid in pids:  # a killed supervisor's workers would drain for minutes: end them
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def utterance() -> np.ndarray:
    return np.concatenate([tone(440, 0.6, 8000, 0.4), silence(0.8, 8000)])


async def talk(caller: TwilioCaller) -> None:
    """One turn; the reply must arrive whole and at the simulator's pitch."""
    before = len(caller.heard())
    caller.say(utterance())
    await caller.wait_for_playback(0.7, timeout=20)
    reply = caller.heard()[before:]
    assert abs(dominant_frequency(reply, 8000) - REPLY_HZ) < 10


async def stored_calls(database_url: str) -> list[asyncpg.Record]:
    url = make_url(database_url).set(drivername="postgresql")
    connection = await asyncpg.connect(url.render_as_string(hide_password=False))
    try:
        return list(await connection.fetch("SELECT call_sid, instance, end_reason FROM calls"))
    finally:
        await connection.close()


async def _snapshot_holds(server: Server, sids: set[str]) -> bool:
    return set(await server.live_snapshot()) == sids


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.fixture
async def pg(tmp_path: Path) -> AsyncIterator[str]:
    async with database("postgresql", tmp_path) as url:
        yield url


@pytest.fixture(autouse=True)
def reply_tone(simulator: RealtimeSimulator) -> None:
    simulator.config.reply_audio = lambda turn: tone(REPLY_HZ, 0.8, 24000, 0.4)


async def test_workers_serve_calls_sum_metrics_and_drain_on_ctrl_c(
    simulator: RealtimeSimulator, pg: str, tmp_path: Path
) -> None:
    async with workers(simulator, pg, tmp_path, BRIDGE_DRAIN_SECONDS="60") as server:
        pids = server.serving()
        assert sorted(pids) == [0, 1]
        assert len(set(pids.values())) == 2
        callers: list[TwilioCaller] = []
        instances: set[str] = set()
        async with contextlib.AsyncExitStack() as stack:
            # The kernel spreads connections over the workers by address hash: 8 calls land on
            # both but for 1 time in 128, so dial on (up to 24) until both have some.
            while len(callers) < 8 or (len(instances) < 2 and len(callers) < 24):
                batch = [await dial(server.base, len(callers) + n) for n in range(4)]
                for caller in batch:
                    await stack.enter_async_context(caller)
                async with asyncio.TaskGroup() as tg:
                    for caller in batch:
                        tg.create_task(talk(caller))
                callers += batch
                sids = {c.call_sid for c in callers}
                # Whichever worker answers, its live feed holds every worker's calls.
                await until(functools.partial(_snapshot_holds, server, sids), timeout=10)
                instances = set((await server.live_snapshot()).values())
            assert len(instances) == 2
            assert await server.live_calls() == len(callers)  # summed over both workers
            # Ctrl-C in a terminal signals the whole foreground group: the supervisor alone
            # (workers run in their own group), which forwards it once: a drain, not a stop.
            os.killpg(server.process.pid, signal.SIGINT)
            await server.wait_for_log(r"draining: \d+ live call", count=2)
            async with httpx.AsyncClient() as client:
                assert (await client.get(f"{server.base}/readyz")).status_code == 503
            async with asyncio.TaskGroup() as tg:  # the calls that were up carry on
                for caller in callers:
                    tg.create_task(talk(caller))
            assert server.process.returncode is None
            for caller in callers:
                await caller.hangup()
        async with asyncio.timeout(20):
            assert await server.process.wait() == 0
        assert not any(alive(pid) for pid in pids.values())
    records = await stored_calls(pg)
    assert sorted(r["call_sid"] for r in records) == sorted(c.call_sid for c in callers)
    assert {r["end_reason"] for r in records} == {"caller_hangup"}
    assert {r["instance"] for r in records} == instances


async def test_while_one_worker_drains_a_call_new_calls_get_503_at_once(
    simulator: RealtimeSimulator, pg: str, tmp_path: Path
) -> None:
    """The idle worker stops at once; its share of new connections must not sit in a queue
    nobody reads (Twilio would wait out its timeout before trying the fallback URL)."""
    async with workers(simulator, pg, tmp_path, BRIDGE_DRAIN_SECONDS="60") as server:
        async with await dial(server.base, 1) as caller:
            await talk(caller)
            server.process.send_signal(signal.SIGTERM)
            await server.wait_for_log(r"worker \d \(pid \d+\): stopped")
            async with httpx.AsyncClient(timeout=5) as client:
                for n in range(16):  # spread by address hash: both slots would get some
                    refused = await client.post(
                        f"{server.base}/twilio/voice", data={"CallSid": f"CAnew{n}"}
                    )
                    assert refused.status_code == 503
            await talk(caller)  # the draining worker's call carries on
            await caller.hangup()
        async with asyncio.timeout(20):
            assert await server.process.wait() == 0


async def test_a_dead_worker_is_replaced_and_calls_go_on(
    simulator: RealtimeSimulator, pg: str, tmp_path: Path
) -> None:
    async with workers(simulator, pg, tmp_path) as server:
        victim = server.serving()[0]
        os.kill(victim, signal.SIGKILL)
        await server.wait_for_log(
            r"worker 0 \(pid \d+\): killed by SIGKILL; starting a replacement"
        )
        await server.wait_for_log(r"worker 0: serving", count=2)
        replacement = server.serving()[0]
        assert replacement != victim
        assert alive(replacement)
        assert await server.live_calls() == 0  # the dead worker's gauge is gone with it
        for n in range(4):
            async with await dial(server.base, n) as caller:
                await talk(caller)
                await caller.hangup()
        server.process.send_signal(signal.SIGTERM)
        async with asyncio.timeout(20):
            assert await server.process.wait() == 0
    assert len(await stored_calls(pg)) == 4


async def test_workers_that_keep_dying_stop_the_supervisor(
    simulator: RealtimeSimulator, pg: str, tmp_path: Path
) -> None:
    """Five replacements within a minute are the limit: the sixth death ends the server (for
    its own supervisor, such as systemd or Docker, to restart or alert), not a restart loop."""
    async with workers(simulator, pg, tmp_path) as server:
        for death in range(1, 7):
            await server.wait_for_log(r"worker 0: serving", count=death, timeout=60)
            os.kill(server.serving()[0], signal.SIGKILL)
        async with asyncio.timeout(30):
            assert await server.process.wait() == 1
        text = server.text()
        assert text.count("killed by SIGKILL; starting a replacement") == 5
        assert "5 replacements in 60s already, stopping" in text


async def test_sighup_reloads_numbers_in_every_worker(
    simulator: RealtimeSimulator, pg: str, tmp_path: Path
) -> None:
    async with workers(simulator, pg, tmp_path) as server:
        server.process.send_signal(signal.SIGHUP)
        await server.wait_for_log(r"worker 0 bridge\.numbers \[-\] numbers reloaded \(SIGHUP\)")
        await server.wait_for_log(r"worker 1 bridge\.numbers \[-\] numbers reloaded \(SIGHUP\)")
        assert server.process.returncode is None


async def test_sighup_while_workers_start_does_not_end_them(
    simulator: RealtimeSimulator, pg: str, tmp_path: Path
) -> None:
    async with workers(simulator, pg, tmp_path, early_signal=signal.SIGHUP) as server:
        async with await dial(server.base, 1) as caller:
            await talk(caller)
            await caller.hangup()
        text = server.text()
        assert "SIGHUP: workers reload the numbers file" in text
        assert "killed by" not in text
        assert "before it was serving" not in text
        assert server.process.returncode is None


async def test_workers_exit_when_the_supervisor_is_killed(
    simulator: RealtimeSimulator, pg: str, tmp_path: Path
) -> None:
    async with workers(simulator, pg, tmp_path) as server:
        pids = list(server.serving().values())
        server.process.kill()
        await server.process.wait()
        await until(lambda: not any(alive(pid) for pid in pids), timeout=20)
        assert "drained: every call ended on its own" in server.text()


def test_each_worker_slot_listens_on_the_port_and_gets_a_share_of_connections() -> None:
    slots = slot_sockets("127.0.0.1", 0, 3)
    clients: list[socket.socket] = []
    try:
        port = slots[0].getsockname()[1]
        assert [sock.getsockname()[1] for sock in slots] == [port] * 3
        assert len({sock.fileno() for sock in slots}) == 3
        clients = [socket.create_connection(("127.0.0.1", port)) for _ in range(60)]
        accepted = []
        for sock in slots:
            sock.setblocking(False)
            count = 0
            with contextlib.suppress(BlockingIOError):
                while True:
                    sock.accept()[0].close()
                    count += 1
            accepted.append(count)
        assert sum(accepted) == 60
        assert min(accepted) > 0  # each slot 1 in 3 by hash: none left empty but for ~1e-10
    finally:
        for sock in [*clients, *slots]:
            sock.close()


async def test_workers_refuse_a_sqlite_call_log(
    simulator: RealtimeSimulator, tmp_path: Path
) -> None:
    env = _env(simulator, f"sqlite+aiosqlite:///{tmp_path / 'calls.db'}", tmp_path)
    process = await asyncio.create_subprocess_exec(
        *(sys.executable, "-m", "bridge.cli", "serve", "--workers", "2", "--port", "0"),
        env=env,
        stderr=asyncio.subprocess.PIPE,
    )
    _, stderr = await asyncio.wait_for(process.communicate(), timeout=30)
    assert process.returncode == 2
    assert "--workers 2: the call log is SQLite" in stderr.decode()


async def test_a_worker_that_cannot_start_stops_the_supervisor(
    simulator: RealtimeSimulator, tmp_path: Path
) -> None:
    """A schema the workers refuse (PostgreSQL not migrated) ends the server with the worker's
    status, rather than a supervisor restarting workers forever."""
    admin = await _admin()
    name = f"bridge_test_{os.urandom(6).hex()}"
    await admin.execute(f'CREATE DATABASE "{name}"')
    try:
        url = str(make_url(PG_ADMIN).set(drivername="postgresql+asyncpg", database=name))
        env = _env(simulator, url, tmp_path, BRIDGE_WORKERS="2")
        process = await asyncio.create_subprocess_exec(
            *(sys.executable, "-m", "bridge.cli", "serve", "--host", "127.0.0.1"),
            *("--port", str(_free_port())),
            env=env,
            stderr=asyncio.subprocess.PIPE,
        )
        _, stderr = await asyncio.wait_for(process.communicate(), timeout=60)
        text = stderr.decode()
        assert process.returncode == 2, text
        assert "bridge db upgrade" in text
        assert "before it was serving; stopping" in text
        assert "starting a replacement" not in text
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


def listening_on(port: int) -> set[str]:
    """The IPv4 addresses a socket listens on at `port`, as the kernel reports them."""
    found = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        local, state = line.split()[1], line.split()[3]
        address, _, hex_port = local.partition(":")
        if state == "0A" and int(hex_port, 16) == port:  # 0A: LISTEN
            found.add(socket.inet_ntoa(int(address, 16).to_bytes(4, "little")))
    return found


@pytest.mark.skipif(not Path("/proc/net/tcp").exists(), reason="needs Linux's /proc/net/tcp")
@pytest.mark.parametrize(
    ("count", "metrics_host", "bound"),
    [(1, None, "127.0.0.1"), (2, None, "127.0.0.1"), (2, "0.0.0.0", "0.0.0.0")],
)
async def test_the_metrics_port_binds_loopback_unless_told_otherwise(
    simulator: RealtimeSimulator,
    tmp_path: Path,
    count: int,
    metrics_host: str | None,
    bound: str,
) -> None:
    """`bridge serve --host 0.0.0.0` serves calls on every address but its token-free metrics
    port on 127.0.0.1 only, unless BRIDGE_METRICS_HOST says otherwise (as deploy/ does)."""
    port, metrics_port = _free_port(), _free_port()
    extra = {"BRIDGE_METRICS_PORT": str(metrics_port)}
    if metrics_host is not None:
        extra["BRIDGE_METRICS_HOST"] = metrics_host
    async with contextlib.AsyncExitStack() as stack:
        if count > 1:
            url = await stack.enter_async_context(database("postgresql", tmp_path))
        else:
            url = f"sqlite+aiosqlite:///{tmp_path / 'calls.db'}"
        log = tmp_path / "bridge.log"
        with log.open("wb") as stderr:
            process = await asyncio.create_subprocess_exec(
                *(sys.executable, "-m", "bridge.cli", "serve", "--workers", str(count)),
                *("--host", "0.0.0.0", "--port", str(port)),
                env=_env(simulator, url, tmp_path, **extra),
                stdout=asyncio.subprocess.DEVNULL,
                stderr=stderr,
                start_new_session=True,
            )
        try:
            async with httpx.AsyncClient(timeout=5) as client:

                async def scraped() -> bool:
                    try:
                        response = await client.get(f"http://127.0.0.1:{metrics_port}/metrics")
                    except httpx.TransportError:
                        return False
                    return response.status_code == 200 and "bridge_live_calls" in response.text

                await until(scraped, 60, 0.1)
                ready = await client.get(f"http://127.0.0.1:{port}/readyz")
                assert ready.status_code == 200, log.read_text(errors="replace")
            assert listening_on(metrics_port) == {bound}
            assert listening_on(port) == {"0.0.0.0"}
        finally:
            process.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(process.wait(), timeout=30)
            finally:
                if process.returncode is None:
                    process.kill()
                    await process.wait()
        assert process.returncode == 0, log.read_text(errors="replace")
