"""The call log's JSON API and live feed; every route needs the admin token.

GET /api/calls              filters: number, caller, profile, since, until, end_reason, q;
                            limit, cursor (from the previous page's `next_cursor`)
GET /api/calls/{call_sid}   the call with its turns, tool calls and events
GET /api/calls/{call_sid}/recording
                            the call's WAV (audio/wav), with byte ranges; 404 when none
GET /api/live               Server-Sent Events: snapshot, call_started, turn, tool_call, event,
                            call_ended
"""

from __future__ import annotations

import logging
import time

import sqlalchemy as sa
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from bridge.recording.store import RecordingMissing, RecordingStore
from bridge.store import queries
from bridge.store.calllog import CallLog
from bridge.store.database import describe
from bridge.store.recordings import recording_of
from bridge.web.auth import Access, Guard
from bridge.web.recording import recording_response
from bridge.web.sse import EventStream

logger = logging.getLogger(__name__)
UNAVAILABLE = (sa.exc.SQLAlchemyError, OSError, TimeoutError)


def unavailable(exc: BaseException) -> Response:
    logger.warning("call log query failed: %s", describe(exc))
    return JSONResponse(
        {"error": "database_unavailable", "detail": "the call log database is not answering"},
        status_code=503,
    )


def call_filter(params: dict[str, str], now: float) -> queries.CallFilter:
    """Query parameters -> filter; BadQuery for times that cannot be read."""

    def text(name: str) -> str | None:
        value = params.get(name, "").strip()
        return value or None

    since, until = text("since"), text("until")
    return queries.CallFilter(
        number=text("number"),
        caller=text("caller"),
        profile=text("profile"),
        since=queries.parse_time(since, now) if since else None,
        until=queries.parse_time(until, now) if until else None,
        end_reason=text("end_reason"),
        text=text("q"),
    )


class Api:
    def __init__(
        self,
        call_log: CallLog,
        guard: Guard,
        *,
        recordings: RecordingStore,
        stream_seconds: float = 30.0,
    ) -> None:
        self.call_log = call_log
        self.guard = guard
        self.stream_seconds = stream_seconds
        self.recordings = recordings

    def routes(self) -> list[BaseRoute]:
        return [
            Route("/api/calls", self.calls, methods=["GET"]),
            Route("/api/calls/{call_sid}", self.call, methods=["GET"]),
            Route("/api/calls/{call_sid}/recording", self.recording, methods=["GET"]),
            Route("/api/live", self.live, methods=["GET"]),
        ]

    def _refuse(self, request: Request) -> Response | None:
        access = self.guard.check(request)
        if access is Access.GRANTED:
            return None
        if access is Access.LOGIN:
            return JSONResponse(
                {"error": "unauthorized", "detail": "send Authorization: Bearer <admin token>"},
                status_code=401,
                headers={"www-authenticate": 'Bearer realm="bridge"'},
            )
        return JSONResponse(
            {
                "error": "forbidden",
                "detail": "BRIDGE_ADMIN_TOKEN is not set: the API answers loopback only",
            },
            status_code=403,
        )

    async def calls(self, request: Request) -> Response:
        if (refusal := self._refuse(request)) is not None:
            return refusal
        params = dict(request.query_params)
        try:
            query = call_filter(params, time.time())
            limit = int(params.get("limit", "50"))
            page = await queries.list_calls(
                self.call_log.engine, query, limit=limit, cursor=params.get("cursor") or None
            )
        except (queries.BadQuery, ValueError) as exc:
            return JSONResponse({"error": "bad_request", "detail": str(exc)}, status_code=400)
        except UNAVAILABLE as exc:
            return unavailable(exc)
        live = self.call_log.feed.calls
        for call in page.calls:
            call["live"] = call["call_sid"] in live
        return JSONResponse({"calls": page.calls, "next_cursor": page.next_cursor})

    async def call(self, request: Request) -> Response:
        if (refusal := self._refuse(request)) is not None:
            return refusal
        call_sid = request.path_params["call_sid"]
        try:
            detail = await queries.get_call(self.call_log.engine, call_sid)
        except UNAVAILABLE as exc:
            return unavailable(exc)
        if detail is None:
            return JSONResponse({"error": "not_found", "call_sid": call_sid}, status_code=404)
        body = detail.to_json()
        body["call"]["live"] = call_sid in self.call_log.feed.calls
        return JSONResponse(body)

    async def recording(self, request: Request) -> Response:
        if (refusal := self._refuse(request)) is not None:
            return refusal
        call_sid = request.path_params["call_sid"]
        try:
            recorded = await recording_of(self.call_log.engine, call_sid)
        except UNAVAILABLE as exc:
            return unavailable(exc)
        if recorded is None:
            return JSONResponse({"error": "not_found", "call_sid": call_sid}, status_code=404)
        try:
            if recorded.key is None:
                raise RecordingMissing(call_sid)
            return await recording_response(
                request, self.recordings, recorded.key, call_sid=call_sid, ended=recorded.ended
            )
        except RecordingMissing:
            return JSONResponse(
                {"error": "not_found", "call_sid": call_sid, "detail": "no recording"},
                status_code=404,
            )
        except Exception as exc:  # the bucket not answering, or refusing us
            logger.warning("recording store failed for %s: %r", call_sid, exc)
            return JSONResponse(
                {"error": "recordings_unavailable", "detail": "the recording store failed"},
                status_code=503,
            )

    async def live(self, request: Request) -> Response:
        if (refusal := self._refuse(request)) is not None:
            return refusal
        return EventStream(self.call_log.feed, lifetime=self.stream_seconds)
