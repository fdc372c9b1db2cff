"""A call's recording over HTTP, with byte ranges so a browser's player can seek.

A finished recording that is a file on this machine is a `FileResponse` (Starlette answers
Range, If-Range, 206 and 416 itself). Anything else (an object in a bucket, or the growing file
of a call still running) is streamed from the store: `byte_range` reads a single
`bytes=a-b`, `bytes=a-` or `bytes=-n` range, and only the size known when the request came is
sent, so a file that grows meanwhile never sends more than its Content-Length.
"""

from __future__ import annotations

import os
import re

from starlette.requests import Request
from starlette.responses import FileResponse, Response, StreamingResponse

from bridge.recording.store import RecordingStore

MEDIA_TYPE = "audio/wav"
_RANGE = re.compile(r"^\s*bytes\s*=\s*(\d*)\s*-\s*(\d*)\s*$", re.IGNORECASE)


class Unsatisfiable(Exception):
    """The range starts at or past the end (416)."""


def byte_range(header: str | None, size: int) -> tuple[int, int] | None:
    """`Range` -> (start, end exclusive), or None to send the whole file.

    RFC 9110 lets a server ignore a Range it does not support: several ranges, other units or
    bad syntax get the whole file. Raises Unsatisfiable when no byte of a valid range exists.
    """
    if header is None:
        return None
    match = _RANGE.match(header)
    if match is None:
        return None
    first, last = match[1], match[2]
    if first:
        start = int(first)
        end = int(last) + 1 if last else size
        if last and end <= start:
            return None  # "bytes=9-3" is not a valid range: ignored
        if start >= size:
            raise Unsatisfiable
        return start, min(end, size)
    if not last:
        return None  # "bytes=-"
    suffix = int(last)
    if suffix == 0 or size == 0:
        raise Unsatisfiable
    return max(0, size - suffix), size


def _headers(call_sid: str) -> dict[str, str]:
    return {
        "accept-ranges": "bytes",
        "cache-control": "private, no-store",  # a recording of a person: never in a shared cache
        "content-disposition": f'inline; filename="{call_sid}.wav"',
    }


async def recording_response(
    request: Request, store: RecordingStore, key: str, *, call_sid: str, ended: bool
) -> Response:
    """The recording under `key` (RecordingMissing when the store has none)."""
    path = store.local_path(key)
    if path is not None and ended:
        try:
            stat = os.stat(path)
        except FileNotFoundError:
            pass  # uploaded from the spool a moment ago: read it from the bucket
        else:
            return FileResponse(
                path, media_type=MEDIA_TYPE, stat_result=stat, headers=_headers(call_sid)
            )
    size = await store.size(key)
    headers = _headers(call_sid)
    try:
        # If-Range: no validators to compare with here, so a conditional range gets it all.
        wanted = (
            None
            if "if-range" in request.headers
            else byte_range(request.headers.get("range"), size)
        )
    except Unsatisfiable:
        headers["content-range"] = f"bytes */{size}"
        return Response(status_code=416, headers=headers)
    start, end = wanted if wanted is not None else (0, size)
    headers["content-length"] = str(end - start)
    status = 200
    if wanted is not None:
        status = 206
        headers["content-range"] = f"bytes {start}-{end - 1}/{size}"
    if request.method == "HEAD" or start == end:
        return Response(status_code=status, headers=headers, media_type=MEDIA_TYPE)
    return StreamingResponse(
        store.read(key, start, end), status_code=status, headers=headers, media_type=MEDIA_TYPE
    )
