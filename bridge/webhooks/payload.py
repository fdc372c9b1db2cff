"""The post-call webhook's body: the call as `GET /api/calls/{call_sid}` shows it.

Built from the call log's database, so the profile's privacy switches (keep_transcripts,
redact) already apply: the rows were written that way (`bridge/store/rows.py`).
"""

from __future__ import annotations

import json
from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine

from bridge.store.queries import get_call


async def build_body(engine: AsyncEngine, call_sid: str) -> bytes | None:
    """The JSON bytes to POST for the call; None when the call log no longer has it."""
    detail = await get_call(engine, call_sid)
    if detail is None:
        return None
    body = detail.to_json()
    body["call"]["live"] = False  # the API's field; a call is sent once it has ended
    return encode(body)


def encode(value: Any) -> bytes:
    """JSON as the API writes it (Starlette's JSONResponse): compact, UTF-8."""
    return json.dumps(value, ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode()
