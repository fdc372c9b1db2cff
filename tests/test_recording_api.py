"""Call recordings over HTTP and from the command line: `GET /api/calls/{sid}/recording` with
byte ranges, `bridge calls recording`, and `bridge calls prune` with per-profile retention.

Recordings are real WAVs (`WavFile`) in a directory and in a bucket of a real S3-compatible
server (moto's, started by tests/s3.py); rows are written through the call log, on SQLite and
PostgreSQL; the CLI runs as a separate process.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import sqlalchemy as sa
from starlette.applications import Starlette

from bridge.record import CallRecord, EndReason
from bridge.recording.store import (
    BucketStore,
    DirectoryStore,
    RecordingMissing,
    RecordingStore,
    recording_key,
)
from bridge.recording.wavfile import RATE, WavFile
from bridge.server import serving
from bridge.settings import Settings
from bridge.store import CallLog
from bridge.store.database import create_engine
from bridge.store.queries import get_call
from bridge.store.schema import calls, webhook_outbox
from bridge.web import admin_routes
from bridge.web.recording import Unsatisfiable, byte_range
from tests.conftest import run_bridge
from tests.s3 import s3_server
from tests.test_store_support import BACKENDS, TOKEN, database, flushed

AUTH = {"authorization": f"Bearer {TOKEN}"}
DAY = 86400.0
HEADER = 44  # bytes of a canonical WAV header


def tone_pcm(seconds: float = 3.0, freq: float = 1000.0) -> bytes:
    """Interleaved 16-bit stereo: a tone on the left (caller), silence on the right."""
    t = np.arange(int(seconds * RATE)) / RATE
    left = (0.4 * 32767 * np.sin(2 * np.pi * freq * t)).astype("<i2")
    frames = np.zeros((len(left), 2), dtype="<i2")
    frames[:, 0] = left
    return frames.tobytes()


async def put_recording(store: RecordingStore, key: str, seconds: float = 3.0) -> bytes:
    """A WAV written the way a call writes it, saved to the store; its bytes."""
    path = store.spool(key)
    wav = WavFile(path)
    wav.write(tone_pcm(seconds))
    wav.close()
    data = path.read_bytes()
    assert await store.save(key) == len(data)
    return data


@contextlib.asynccontextmanager
async def recording_store(kind: str, root: Path) -> AsyncIterator[RecordingStore]:
    """A directory, or a bucket on a moto server (the AWS variables point at it meanwhile)."""
    if kind == "directory":
        yield DirectoryStore(root / "recordings")
        return
    with pytest.MonkeyPatch.context() as patch:
        async with s3_server() as server:
            for name, value in server.env.items():
                patch.setenv(name, value)
            bucket = BucketStore(server.url, root / "recordings" / ".spool")
            try:
                yield bucket
            finally:
                await bucket.aclose()


@pytest.fixture(params=["directory", "bucket"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[RecordingStore]:
    async with recording_store(request.param, tmp_path) as opened:
        yield opened


@pytest.fixture(params=BACKENDS)
async def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    async with database(request.param, tmp_path) as url:
        yield url


@pytest.fixture
async def sqlite_url(tmp_path: Path) -> AsyncIterator[str]:
    async with database("sqlite", tmp_path) as url:
        yield url


def call(
    call_sid: str, *, profile: str = "default", age: float = 0.0, ended: bool = True
) -> CallRecord:
    record = CallRecord(call_sid=call_sid, stream_sid="MZ" + call_sid[2:], profile=profile)
    record.started_at -= age
    record.from_number, record.to_number = "+15550100001", "+15550100000"
    if ended:
        record.end_reason, record.ended_at = EndReason.CALLER_HANGUP, record.started_at + 3
    return record


async def log_calls(call_log: CallLog, *records: CallRecord) -> None:
    for record in records:
        call_log.recorder.call_started(record)
        for turn in record.turns:
            call_log.recorder.turn_updated(record, turn)
        if record.ended_at is not None:
            call_log.recorder.call_ended(record)
    await flushed(call_log)


def settings(tmp_path: Path, token: str | None = TOKEN) -> Settings:
    return Settings(
        openai_api_key="unused",
        admin_token=token,
        recordings_dir=str(tmp_path / "recordings"),
    )


@contextlib.asynccontextmanager
async def api_server(
    url: str, store: RecordingStore, tmp_path: Path, token: str | None = TOKEN
) -> AsyncIterator[tuple[str, CallLog]]:
    """The admin routes on a real uvicorn server, over the call log at `url`."""
    call_log = CallLog(url, batch_delay=0.05, heartbeat=0.5)
    app = Starlette(routes=admin_routes(settings(tmp_path, token), call_log, recordings=store))
    async with call_log, serving(app) as base:
        yield base, call_log


def sid(n: int) -> str:
    return f"CA{n:032x}"


# -- range parsing (no sockets) ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (None, None),
        ("bytes=0-99", (0, 100)),
        ("bytes=44-543", (44, 544)),
        ("bytes=900-", (900, 1000)),
        ("bytes=-100", (900, 1000)),
        ("bytes=-5000", (0, 1000)),  # a suffix longer than the file: all of it
        ("bytes=990-5000", (990, 1000)),  # the end is clipped to the file
        ("BYTES = 1-2", (1, 3)),
        ("bytes=0-1,5-9", None),  # several ranges: the whole file (RFC 9110 allows it)
        ("items=0-1", None),
        ("bytes=9-3", None),  # not a valid range: ignored
        ("bytes=-", None),
        ("bytes=abc", None),
    ],
)
def test_byte_range(header: str | None, expected: tuple[int, int] | None) -> None:
    assert byte_range(header, 1000) == expected


@pytest.mark.parametrize("header", ["bytes=1000-", "bytes=1000-2000", "bytes=-0"])
def test_byte_range_unsatisfiable(header: str) -> None:
    with pytest.raises(Unsatisfiable):
        byte_range(header, 1000)


# -- the API ----------------------------------------------------------------------------------


async def check_ranges(client: httpx.AsyncClient, path: str, data: bytes) -> None:
    size = len(data)
    whole = await client.get(path, headers=AUTH)
    assert whole.status_code == 200, whole.text
    assert whole.content == data
    assert whole.headers["content-type"] == "audio/wav"
    assert whole.headers["accept-ranges"] == "bytes"
    assert whole.headers["content-length"] == str(size)

    part = await client.get(path, headers=AUTH | {"range": "bytes=44-1043"})
    assert part.status_code == 206
    assert part.content == data[44:1044]
    assert part.headers["content-range"] == f"bytes 44-1043/{size}"
    assert part.headers["content-length"] == "1000"
    assert part.headers["content-type"] == "audio/wav"

    suffix = await client.get(path, headers=AUTH | {"range": "bytes=-500"})
    assert suffix.status_code == 206
    assert suffix.content == data[-500:]
    assert suffix.headers["content-range"] == f"bytes {size - 500}-{size - 1}/{size}"

    tail = await client.get(path, headers=AUTH | {"range": f"bytes={size - 1000}-"})
    assert tail.status_code == 206
    assert tail.content == data[size - 1000 :]
    assert tail.headers["content-range"] == f"bytes {size - 1000}-{size - 1}/{size}"

    first = await client.get(path, headers=AUTH | {"range": "bytes=0-0"})
    assert (first.status_code, first.content) == (206, data[:1])

    beyond = await client.get(path, headers=AUTH | {"range": f"bytes={size}-"})
    assert beyond.status_code == 416
    assert beyond.headers["content-range"] == f"bytes */{size}"


async def test_range_requests(store: RecordingStore, sqlite_url: str, tmp_path: Path) -> None:
    record = call(sid(1))
    record.recording = recording_key(record.call_sid, record.started_at)
    data = await put_recording(store, record.recording)
    record.recording_bytes = len(data)
    if isinstance(store, BucketStore):
        assert store.local_path(record.recording) is None  # uploaded: served from the bucket
    async with (
        api_server(sqlite_url, store, tmp_path) as (base, call_log),
        httpx.AsyncClient(base_url=base, timeout=10) as client,
    ):
        await log_calls(call_log, record)
        path = f"/api/calls/{record.call_sid}/recording"
        await check_ranges(client, path, data)
        head = await client.head(path, headers=AUTH)
        assert head.status_code == 200
        assert head.headers["content-length"] == str(len(data))
        assert head.content == b""
        detail = (await client.get(f"/api/calls/{record.call_sid}", headers=AUTH)).json()
        assert detail["recording"] == path


async def test_a_running_call_is_streamed_from_the_store(sqlite_url: str, tmp_path: Path) -> None:
    """A call not yet ended may still be writing its file: served with the size known when
    asked (never more than its Content-Length), ranges included."""
    store = DirectoryStore(tmp_path / "recordings")
    record = call(sid(2), ended=False)
    record.recording = recording_key(record.call_sid, record.started_at)
    data = await put_recording(store, record.recording, seconds=1.0)
    async with (
        api_server(sqlite_url, store, tmp_path) as (base, call_log),
        httpx.AsyncClient(base_url=base, timeout=10) as client,
    ):
        await log_calls(call_log, record)
        await check_ranges(client, f"/api/calls/{record.call_sid}/recording", data)


async def test_a_bucket_recording_still_in_the_spool_is_served(
    sqlite_url: str, tmp_path: Path
) -> None:
    """Not uploaded yet (the call just ended, or a crash left it): served from the spool."""
    async with recording_store("bucket", tmp_path) as store:
        record = call(sid(3))
        record.recording = recording_key(record.call_sid, record.started_at)
        wav = WavFile(store.spool(record.recording))
        wav.write(tone_pcm(1.0))
        wav.close()
        data = store.spool(record.recording).read_bytes()
        async with (
            api_server(sqlite_url, store, tmp_path) as (base, call_log),
            httpx.AsyncClient(base_url=base, timeout=10) as client,
        ):
            await log_calls(call_log, record)
            await check_ranges(client, f"/api/calls/{record.call_sid}/recording", data)


async def test_credentials_are_required(sqlite_url: str, tmp_path: Path) -> None:
    store = DirectoryStore(tmp_path / "recordings")
    record = call(sid(4))
    record.recording = recording_key(record.call_sid, record.started_at)
    await put_recording(store, record.recording, seconds=0.5)
    path = f"/api/calls/{record.call_sid}/recording"
    async with (
        api_server(sqlite_url, store, tmp_path) as (base, call_log),
        httpx.AsyncClient(base_url=base, timeout=10) as client,
    ):
        await log_calls(call_log, record)
        refused = await client.get(path)
        assert refused.status_code == 401
        assert refused.headers["www-authenticate"].startswith("Bearer")
        wrong = await client.get(path, headers={"authorization": "Bearer not-the-token"})
        assert wrong.status_code == 401
        assert (await client.get(path, headers=AUTH)).status_code == 200
    async with (
        api_server(sqlite_url, store, tmp_path, token=None) as (base, _),
        httpx.AsyncClient(base_url=base, timeout=10) as client,
    ):
        assert (await client.get(path)).status_code == 200  # loopback, no token configured
        relayed = await client.get(path, headers={"x-forwarded-for": "203.0.113.9"})
        assert relayed.status_code == 403


async def test_no_recording_is_404(store: RecordingStore, sqlite_url: str, tmp_path: Path) -> None:
    unrecorded = call(sid(5))
    lost = call(sid(6))
    lost.recording = recording_key(lost.call_sid, lost.started_at)  # the file never saved
    async with (
        api_server(sqlite_url, store, tmp_path) as (base, call_log),
        httpx.AsyncClient(base_url=base, timeout=10) as client,
    ):
        await log_calls(call_log, unrecorded, lost)
        for call_sid in (unrecorded.call_sid, lost.call_sid, "CAunknown"):
            answer = await client.get(f"/api/calls/{call_sid}/recording", headers=AUTH)
            assert answer.status_code == 404, call_sid
            assert answer.json()["error"] == "not_found"
        detail = (await client.get(f"/api/calls/{unrecorded.call_sid}", headers=AUTH)).json()
        assert detail["recording"] is None


async def test_an_unreachable_bucket_is_503(
    sqlite_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with socket.socket() as closed:  # a port nobody listens on
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    for name, value in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_REGION": "us-east-1",
        "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}",
        "AWS_MAX_ATTEMPTS": "1",
    }.items():
        monkeypatch.setenv(name, value)
    store = BucketStore("s3://recordings/calls", tmp_path / "spool")
    record = call(sid(9))
    record.recording = recording_key(record.call_sid, record.started_at)
    try:
        async with (
            api_server(sqlite_url, store, tmp_path) as (base, call_log),
            httpx.AsyncClient(base_url=base, timeout=30) as client,
        ):
            await log_calls(call_log, record)
            answer = await client.get(f"/api/calls/{record.call_sid}/recording", headers=AUTH)
            assert answer.status_code == 503
            assert answer.json()["error"] == "recordings_unavailable"
    finally:
        await store.aclose()


# -- the command line -------------------------------------------------------------------------


def cli_env(url: str, tmp_path: Path, **more: str) -> dict[str, str]:
    """What `bridge calls` needs (run_bridge adds os.environ: the AWS variables of a bucket)."""
    env = {
        "BRIDGE_DATABASE_URL": url,
        "BRIDGE_RECORDINGS_DIR": str(tmp_path / "recordings"),
        "BRIDGE_NUMBERS": str(tmp_path / "numbers.toml"),
    }
    return env | more


async def test_cli_writes_the_recording(
    store: RecordingStore, sqlite_url: str, tmp_path: Path
) -> None:
    record = call(sid(7))
    record.recording = recording_key(record.call_sid, record.started_at)
    data = await put_recording(store, record.recording)
    plain = call(sid(8))
    call_log = CallLog(sqlite_url, batch_delay=0.05)
    async with call_log:
        await log_calls(call_log, record, plain)
    (tmp_path / "numbers.toml").write_text("[profiles.default]\n")
    env = cli_env(sqlite_url, tmp_path)
    if isinstance(store, BucketStore):
        env["BRIDGE_RECORDINGS_URL"] = f"s3://{store.bucket}/{store.prefix}"

    target = tmp_path / "out.wav"
    done = await asyncio.to_thread(
        run_bridge, "calls", "recording", record.call_sid, "-o", str(target), **env
    )
    assert done.returncode == 0, done.stderr
    assert target.read_bytes() == data
    assert f"{len(data)} bytes" in done.stdout

    process = await asyncio.create_subprocess_exec(
        *(sys.executable, "-m", "bridge.cli", "calls", "recording", record.call_sid, "-o", "-"),
        env=os.environ | env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    async with asyncio.timeout(60):
        out, err = await process.communicate()
    assert process.returncode == 0, err
    assert out == data

    missing = tmp_path / "none.wav"
    for call_sid, message in ((plain.call_sid, "has no recording"), ("CAnope", "no call CAnope")):
        done = await asyncio.to_thread(
            run_bridge, "calls", "recording", call_sid, "-o", str(missing), **env
        )
        assert done.returncode == 1
        assert message in done.stderr
        assert not missing.exists()

    await store.delete(record.recording)
    done = await asyncio.to_thread(
        run_bridge, "calls", "recording", record.call_sid, "-o", str(missing), **env
    )
    assert done.returncode == 1
    assert "is not in" in done.stderr
    assert not missing.exists()


NUMBERS = """
[profiles.default]
recording_retention_days = 10

[profiles.short]
numbers = ["+15550100201"]
recording_retention_days = 1

[profiles.long]
numbers = ["+15550100202"]
recording_retention_days = 100
"""


async def exists(store: RecordingStore, key: str) -> bool:
    try:
        await store.size(key)
    except RecordingMissing:
        return False
    return True


async def test_prune_deletes_recordings_with_their_calls_and_past_retention(
    store: RecordingStore, db_url: str, tmp_path: Path
) -> None:
    old = call(sid(10), age=40 * DAY)  # --older-than 30d: call and recording go
    lost = call(sid(11), age=41 * DAY)  # its file is already gone: fine
    short = call(sid(12), profile="short", age=2 * DAY)  # 1 day: the recording goes
    fresh = call(sid(13), age=2 * DAY)  # default, 10 days: kept
    retired = call(sid(14), profile="retired", age=12 * DAY)  # not in the file: the default's
    long = call(sid(15), profile="long", age=12 * DAY)  # 100 days: kept
    plain = call(sid(16), age=35 * DAY)  # old, not recorded
    recorded = [old, short, fresh, retired, long]
    for record in [*recorded, lost]:
        record.recording = recording_key(record.call_sid, record.started_at)
    for record in recorded:
        record.recording_bytes = len(await put_recording(store, record.recording, seconds=0.2))
    call_log = CallLog(db_url, batch_delay=0.05)
    async with call_log:
        await log_calls(call_log, *recorded, lost, plain)
        for record in (old, fresh):  # a post-call webhook delivery each
            async with call_log.engine.begin() as connection:
                await connection.execute(
                    sa.insert(webhook_outbox).values(
                        delivery_id=f"d-{record.call_sid}",
                        call_sid=record.call_sid,
                        url="http://127.0.0.1:9/hook",
                        created_at=time.time(),
                        next_attempt_at=time.time(),
                    )
                )
    (tmp_path / "numbers.toml").write_text(NUMBERS)
    env = cli_env(db_url, tmp_path)
    if isinstance(store, BucketStore):
        env["BRIDGE_RECORDINGS_URL"] = f"s3://{store.bucket}/{store.prefix}"

    async def prune(*args: str) -> str:
        done = await asyncio.to_thread(run_bridge, "calls", "prune", *args, **env)
        assert done.returncode == 0, done.stderr
        return done.stdout

    out = await prune("--older-than", "30d", "--dry-run")
    assert "would delete 3 calls started before" in out
    assert "(2 with a recording)" in out
    assert "would delete 2 recordings past their profile's retention" in out
    assert "default 1 (kept 10 days)" in out
    assert "short 1 (kept 1 days)" in out
    for record in recorded:
        assert await exists(store, record.recording)

    out = await prune("--older-than", "30d")
    assert "deleted 3 calls started before" in out
    assert "deleted 2 recordings past their profile's retention" in out

    assert not await exists(store, old.recording)
    assert not await exists(store, short.recording)
    assert not await exists(store, retired.recording)
    assert await exists(store, fresh.recording)
    assert await exists(store, long.recording)
    engine = create_engine(db_url)
    try:
        for gone in (old, lost, plain):
            assert await get_call(engine, gone.call_sid) is None
        rows = {}
        async with engine.connect() as connection:
            for row in await connection.execute(sa.select(calls)):
                rows[row.call_sid] = row
            outbox = (await connection.execute(sa.select(webhook_outbox.c.call_sid))).all()
        assert set(rows) == {short.call_sid, fresh.call_sid, retired.call_sid, long.call_sid}
        for expired in (short, retired):  # the call stays, without its recording
            assert (rows[expired.call_sid].recording, rows[expired.call_sid].recording_bytes) == (
                None,
                None,
            )
        for kept in (fresh, long):
            assert rows[kept.call_sid].recording == kept.recording
            assert rows[kept.call_sid].recording_bytes == kept.recording_bytes
        assert [row.call_sid for row in outbox] == [fresh.call_sid]
    finally:
        await engine.dispose()

    out = await prune()  # retention only; nothing left to do
    assert "deleted 0 recordings past their profile's retention" in out
