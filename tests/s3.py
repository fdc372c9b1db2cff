"""A real S3-compatible server for tests: moto's standalone server, started as a subprocess.

Use the `s3` fixture (import it into the test module, or into conftest.py)::

    from tests.s3 import S3Server, s3  # noqa: F401 (the fixture)

    async def test_upload(s3: S3Server) -> None:
        store = BucketStore(s3.url, tmp_path / "spool")   # s3.url == "s3://recordings/calls"
        ...

The fixture starts `python -m moto.server` on a free loopback port, waits until it answers,
creates the bucket, and sets AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY (dummies), AWS_REGION /
AWS_DEFAULT_REGION (us-east-1) and AWS_ENDPOINT_URL for the test, so aiobotocore clients made
inside it (BucketStore's own) talk to the server. `s3.env` holds the same variables for a
subprocess (`run_bridge(..., **s3.env)`). The server is stopped after the test. Outside pytest,
`async with s3_server() as server:` does the same without touching the environment.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator

import httpx
import pytest

REGION = "us-east-1"
ACCESS_KEY = "testing"
SECRET_KEY = "testing"  # moto accepts any credentials
START_SECONDS = 30.0


@dataclasses.dataclass(frozen=True)
class S3Server:
    """A running moto server holding one empty bucket."""

    endpoint: str  # http://127.0.0.1:PORT
    bucket: str
    prefix: str

    @property
    def url(self) -> str:
        """BRIDGE_RECORDINGS_URL for the bucket: s3://bucket/prefix."""
        return f"s3://{self.bucket}/{self.prefix}" if self.prefix else f"s3://{self.bucket}"

    @property
    def env(self) -> dict[str, str]:
        """The AWS variables that point a client at this server."""
        return {
            "AWS_ACCESS_KEY_ID": ACCESS_KEY,
            "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
            "AWS_REGION": REGION,
            "AWS_DEFAULT_REGION": REGION,
            "AWS_ENDPOINT_URL": self.endpoint,
        }


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


async def _answers(endpoint: str, process: asyncio.subprocess.Process) -> bool:
    """Wait until the server answers HTTP; False if it exited first (the port was taken)."""
    deadline = time.monotonic() + START_SECONDS
    async with httpx.AsyncClient(timeout=2.0) as client:
        while time.monotonic() < deadline:
            if process.returncode is not None:
                return False
            try:
                await client.get(f"{endpoint}/moto-api/")
                return True
            except httpx.TransportError:
                await asyncio.sleep(0.1)
    raise TimeoutError(f"moto server at {endpoint} did not answer in {START_SECONDS} s")


async def _stop(process: asyncio.subprocess.Process) -> None:
    if process.returncode is None:
        process.terminate()
        try:
            async with asyncio.timeout(10):
                await process.wait()
        except TimeoutError:
            process.kill()
            async with asyncio.timeout(10):
                await process.wait()


async def _create_bucket(server: S3Server) -> None:
    from aiobotocore.session import get_session

    session = get_session()
    async with session.create_client(
        "s3",
        region_name=REGION,
        endpoint_url=server.endpoint,
        aws_access_key_id=ACCESS_KEY,
        aws_secret_access_key=SECRET_KEY,
    ) as client:
        await client.create_bucket(Bucket=server.bucket)


@contextlib.asynccontextmanager
async def s3_server(bucket: str = "recordings", prefix: str = "calls") -> AsyncIterator[S3Server]:
    """moto's server on a free loopback port with `bucket` created; stopped on exit."""
    with tempfile.TemporaryFile() as log:
        for _attempt in range(3):  # another process may grab the free port before moto binds it
            port = _free_port()
            process = await asyncio.create_subprocess_exec(
                *(sys.executable, "-m", "moto.server", "--host", "127.0.0.1", "--port", str(port)),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
            )
            try:
                endpoint = f"http://127.0.0.1:{port}"
                if await _answers(endpoint, process):
                    server = S3Server(endpoint, bucket, prefix)
                    await _create_bucket(server)
                    yield server
                    return
            finally:
                await _stop(process)
        log.seek(0)
        output = log.read().decode(errors="replace")[-2000:]
        raise RuntimeError(f"moto server did not start (is moto[server] installed?):\n{output}")


@pytest.fixture
async def s3(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[S3Server]:
    """A real S3-compatible server with an empty bucket; the AWS variables point at it."""
    async with s3_server() as server:
        for name, value in server.env.items():
            monkeypatch.setenv(name, value)
        yield server
