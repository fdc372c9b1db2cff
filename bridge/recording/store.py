"""Where recordings live: a directory, or an S3-compatible bucket.

Either way a call's WAV is written to a local file while the call runs (`spool`), so a crash
loses at most its last second. A `DirectoryStore` writes it in place. A `BucketStore` writes it
under a local spool directory and uploads it when the call ends (S3 objects cannot be appended
to); a file left there by a crash is uploaded the next time the process starts (`recover`),
and until it is uploaded it is served from the spool. With several replicas use a bucket: a
directory is only seen by the replica that wrote it (unless it is shared storage).

A recording is named by its key, `YYYY/MM/DD/<CallSid>.wav` (the call's start date, UTC),
which the call log keeps in `calls.recording`.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import logging
import os
import re
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit

logger = logging.getLogger(__name__)

CHUNK = 64 * 1024  # bytes per read when streaming a recording out
PART = 8 * 1024 * 1024  # multipart upload part size (S3's minimum is 5 MiB)
_KEY = re.compile(r"^[0-9]{4}/[0-9]{2}/[0-9]{2}/[A-Za-z0-9_-]{1,64}\.wav$")


class RecordingMissing(Exception):
    """No recording under this key (never made, or deleted)."""


def recording_key(call_sid: str, started_at: float) -> str:
    day = datetime.datetime.fromtimestamp(started_at, datetime.UTC).strftime("%Y/%m/%d")
    safe = re.sub(r"[^A-Za-z0-9_-]", "_", call_sid)[:64] or "call"
    return f"{day}/{safe}.wav"


def _checked(key: str) -> str:
    """Keys come from the call log; never let one walk out of the store."""
    if not _KEY.match(key):
        raise RecordingMissing(f"not a recording key: {key!r}")
    return key


class RecordingStore(Protocol):
    """Everything the bridge does with recordings."""

    def spool(self, key: str) -> Path:
        """The local file the call's WAV is written to while it runs."""

    async def save(self, key: str) -> int:
        """The call is over and its file closed: make it available; its size in bytes."""

    async def size(self, key: str) -> int:
        """Bytes in the recording; RecordingMissing if there is none."""

    def local_path(self, key: str) -> Path | None:
        """The file itself, when it is on this machine (served with range support)."""

    def read(self, key: str, start: int, end: int) -> AsyncIterator[bytes]:
        """Bytes `start` to `end` (exclusive) of the recording."""

    async def delete(self, key: str) -> None:
        """Remove it (pruning); no error if it is already gone."""

    async def recover(self) -> int:
        """Make recordings a crash left behind available; how many there were."""

    async def aclose(self) -> None: ...


class DirectoryStore:
    """Recordings as files under `root` (BRIDGE_RECORDINGS_DIR)."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def __repr__(self) -> str:
        return f"DirectoryStore({str(self.root)!r})"

    def spool(self, key: str) -> Path:
        return self.root / _checked(key)

    async def save(self, key: str) -> int:
        return await self.size(key)

    async def size(self, key: str) -> int:
        try:
            return os.stat(self.root / _checked(key)).st_size
        except FileNotFoundError:
            raise RecordingMissing(key) from None

    def local_path(self, key: str) -> Path | None:
        path = self.root / _checked(key)
        return path if path.is_file() else None

    async def read(self, key: str, start: int, end: int) -> AsyncIterator[bytes]:
        path = self.local_path(key)
        if path is None:
            raise RecordingMissing(key)
        async for chunk in _read_file(path, start, end):
            yield chunk

    async def delete(self, key: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            (self.root / _checked(key)).unlink()

    async def recover(self) -> int:
        return 0  # written in place: whatever a crash left is already where it belongs

    async def aclose(self) -> None:
        pass


class BucketStore:
    """Recordings in an S3-compatible bucket (BRIDGE_RECORDINGS_URL=s3://bucket/prefix).

    Credentials, region and endpoint come from the usual AWS variables (AWS_ACCESS_KEY_ID,
    AWS_SECRET_ACCESS_KEY, AWS_REGION, AWS_ENDPOINT_URL for a non-AWS service), through
    aiobotocore. The spool is a directory on local disk (BRIDGE_RECORDINGS_DIR/.spool).
    """

    def __init__(self, url: str, spool_root: Path, client: Any = None) -> None:
        parts = urlsplit(url)
        self.bucket = parts.netloc
        self.prefix = parts.path.strip("/")
        self.spool_root = spool_root
        self._client = client
        self._exit: contextlib.AsyncExitStack | None = None

    def __repr__(self) -> str:
        return f"BucketStore(s3://{self.bucket}/{self.prefix})"

    async def _s3(self) -> Any:
        if self._client is None:
            from aiobotocore.session import get_session  # only when a bucket is configured

            self._exit = contextlib.AsyncExitStack()
            self._client = await self._exit.enter_async_context(get_session().create_client("s3"))
        return self._client

    def _object(self, key: str) -> str:
        key = _checked(key)
        return f"{self.prefix}/{key}" if self.prefix else key

    def spool(self, key: str) -> Path:
        return self.spool_root / _checked(key)

    async def save(self, key: str) -> int:
        path = self.spool(key)
        size = os.stat(path).st_size
        await self._upload(path, self._object(key), size)
        path.unlink()
        return size

    async def _upload(self, path: Path, name: str, size: int) -> None:
        s3 = await self._s3()
        if size <= PART:
            body = await asyncio.to_thread(path.read_bytes)
            await s3.put_object(Bucket=self.bucket, Key=name, Body=body, ContentType="audio/wav")
            return
        upload = await s3.create_multipart_upload(
            Bucket=self.bucket, Key=name, ContentType="audio/wav"
        )
        upload_id = upload["UploadId"]
        try:
            parts = []
            file = await asyncio.to_thread(path.open, "rb")
            with file:
                number = 1
                while chunk := await asyncio.to_thread(file.read, PART):
                    answer = await s3.upload_part(
                        Bucket=self.bucket,
                        Key=name,
                        UploadId=upload_id,
                        PartNumber=number,
                        Body=chunk,
                    )
                    parts.append({"ETag": answer["ETag"], "PartNumber": number})
                    number += 1
            await s3.complete_multipart_upload(
                Bucket=self.bucket, Key=name, UploadId=upload_id, MultipartUpload={"Parts": parts}
            )
        except BaseException:
            with contextlib.suppress(Exception):
                await s3.abort_multipart_upload(Bucket=self.bucket, Key=name, UploadId=upload_id)
            raise

    async def size(self, key: str) -> int:
        local = self.local_path(key)
        if local is not None:  # not uploaded yet (the call just ended, or a crash left it)
            return os.stat(local).st_size
        s3 = await self._s3()
        try:
            head = await s3.head_object(Bucket=self.bucket, Key=self._object(key))
        except Exception as exc:
            if _not_found(exc):
                raise RecordingMissing(key) from None
            raise
        return int(head["ContentLength"])

    def local_path(self, key: str) -> Path | None:
        path = self.spool(key)
        return path if path.is_file() else None

    async def read(self, key: str, start: int, end: int) -> AsyncIterator[bytes]:
        local = self.local_path(key)
        if local is not None:
            async for chunk in _read_file(local, start, end):
                yield chunk
            return
        if end <= start:
            return
        s3 = await self._s3()
        try:
            answer = await s3.get_object(
                Bucket=self.bucket, Key=self._object(key), Range=f"bytes={start}-{end - 1}"
            )
        except Exception as exc:
            if _not_found(exc):
                raise RecordingMissing(key) from None
            raise
        async with answer["Body"] as body:
            async for chunk in body.iter_chunks(CHUNK):
                yield chunk

    async def delete(self, key: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.spool(key).unlink()
        s3 = await self._s3()
        await s3.delete_object(Bucket=self.bucket, Key=self._object(key))

    async def recover(self) -> int:
        """Upload what a crash left in the spool (files not written for a minute: a file a live
        call of another worker is still writing is left alone)."""
        if not self.spool_root.is_dir():
            return 0
        recovered = 0
        for path in sorted(self.spool_root.glob("*/*/*/*.wav")):
            key = path.relative_to(self.spool_root).as_posix()
            try:
                stat = path.stat()
                if stat.st_mtime > time.time() - 60:
                    continue
                await self._upload(path, self._object(key), stat.st_size)
                path.unlink()
                recovered += 1
            except Exception as exc:
                logger.error("could not upload the recording %s left by a crash: %r", key, exc)
        return recovered

    async def aclose(self) -> None:
        if self._exit is not None:
            await self._exit.aclose()
            self._exit = None
            self._client = None


def _not_found(exc: Exception) -> bool:
    response = getattr(exc, "response", None)
    if not isinstance(response, dict):
        return False
    code = str(response.get("Error", {}).get("Code", ""))
    return code in ("404", "NoSuchKey", "NotFound")


async def _read_file(path: Path, start: int, end: int) -> AsyncIterator[bytes]:
    file = await asyncio.to_thread(path.open, "rb")
    with file:
        file.seek(start)
        left = end - start
        while left > 0:
            chunk = await asyncio.to_thread(file.read, min(CHUNK, left))
            if not chunk:
                return
            left -= len(chunk)
            yield chunk


def store_from_settings(directory: str, url: str | None) -> RecordingStore:
    """BRIDGE_RECORDINGS_URL when set (a bucket), else BRIDGE_RECORDINGS_DIR."""
    root = Path(directory)
    if url:
        return BucketStore(url, root / ".spool")
    return DirectoryStore(root)
