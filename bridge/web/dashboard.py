"""The dashboard: server-rendered pages (Jinja2) with a little plain JavaScript for live calls.

/                    live calls (running transcripts over /api/live), then history with filters
/calls/{call_sid}    one call: timeline picture, conversation with tool calls and keys, the
                     heard/unheard split, events
/login, /logout      the admin token in a form, exchanged for a signed session cookie
"""

from __future__ import annotations

import asyncio
import datetime
import time
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode

from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates

from bridge.store import queries
from bridge.store.calllog import CallLog
from bridge.web.api import UNAVAILABLE, call_filter
from bridge.web.auth import Access, Guard, safe_next
from bridge.web.timeline import timeline_svg

HERE = Path(__file__).parent
MAX_FORM_BYTES = 8192
FAILED_LOGIN_DELAY = 0.5  # slows down guessing; the token itself should be long
END_REASONS = (
    "caller_hangup",
    "caller_disconnected",
    "upstream_closed",
    "upstream_error",
    "upstream_rejected",
    "upstream_unavailable",
    "protocol_error",
    "start_timeout",
    "no_audio",
    "max_duration",
    "server_shutdown",
    "assistant_hangup",
    "transferred",
    "internal_error",
    "rejected",
)


def clock(epoch: float | None) -> str:
    if epoch is None:
        return "–"
    moment = datetime.datetime.fromtimestamp(epoch, datetime.UTC)
    return moment.strftime("%Y-%m-%d %H:%M:%S UTC")


def call_time(seconds: float | None) -> str:
    """Seconds since the call started -> m:ss.s"""
    if seconds is None:
        return "–"
    minutes, secs = divmod(max(0.0, seconds), 60)
    return f"{int(minutes)}:{secs:04.1f}"


def duration(seconds: float | None) -> str:
    if seconds is None:
        return "–"
    minutes, secs = divmod(round(seconds), 60)
    return f"{minutes}m {secs:02d}s" if minutes else f"{secs}s"


def usd(value: float | None) -> str:
    return "–" if value is None else f"${value:.4f}"


def templates() -> Jinja2Templates:
    environment = Jinja2Templates(directory=HERE / "templates")
    environment.env.filters.update(clock=clock, call_time=call_time, duration=duration, usd=usd)
    return environment


async def capped_body(request: Request, limit: int) -> bytes | None:
    """The request body, or None once it grows past `limit` bytes (read no further).

    Counted as it arrives, whatever Content-Length or chunked framing claims, so a client cannot
    make the server buffer an unbounded body before it is authenticated.
    """
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            return None
    return bytes(body)


class Dashboard:
    def __init__(self, call_log: CallLog, guard: Guard) -> None:
        self.call_log = call_log
        self.guard = guard
        self.templates = templates()

    def routes(self) -> list[BaseRoute]:
        return [
            Route("/", self.index, methods=["GET"]),
            Route("/calls/{call_sid}", self.call, methods=["GET"]),
            Route("/login", self.login_form, methods=["GET"]),
            Route("/login", self.login, methods=["POST"]),
            Route("/logout", self.logout, methods=["POST"]),
            Mount("/static", StaticFiles(directory=HERE / "static"), name="static"),
        ]

    def _render(
        self, request: Request, name: str, context: dict[str, Any], status: int = 200
    ) -> HTMLResponse:
        signed_in = self.guard.enabled and self.guard.check(request) is Access.GRANTED
        context = {"login_enabled": self.guard.enabled, "signed_in": signed_in} | context
        response = self.templates.TemplateResponse(request, name, context, status_code=status)
        response.headers["cache-control"] = "no-store"
        return response

    def _refuse(self, request: Request) -> Response | None:
        access = self.guard.check(request)
        if access is Access.GRANTED:
            return None
        if access is Access.LOGIN:
            target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
            return RedirectResponse(f"/login?{urlencode({'next': target})}", status_code=303)
        return self._render(request, "loopback_only.html", {}, status=403)

    async def index(self, request: Request) -> Response:
        if (refusal := self._refuse(request)) is not None:
            return refusal
        params = dict(request.query_params)
        error = None
        page = queries.Page([], None)
        try:
            query = call_filter(params, time.time())
            page = await queries.list_calls(
                self.call_log.engine, query, limit=50, cursor=params.get("cursor") or None
            )
        except queries.BadQuery as exc:
            error = str(exc)
        except UNAVAILABLE:
            error = "The call log database is not answering; live calls are still shown."
        older = None
        if page.next_cursor:
            older = "/?" + urlencode({**params, "cursor": page.next_cursor})
        context = {
            "calls": page.calls,
            "older": older,
            "filters": params,
            "error": error,
            "end_reasons": END_REASONS,
            "live": self.call_log.feed.snapshot()["calls"],
            "live_sids": set(self.call_log.feed.calls),
        }
        return self._render(request, "calls.html", context)

    async def call(self, request: Request) -> Response:
        if (refusal := self._refuse(request)) is not None:
            return refusal
        call_sid = request.path_params["call_sid"]
        try:
            detail = await queries.get_call(self.call_log.engine, call_sid)
        except UNAVAILABLE:
            return self._render(request, "error.html", {"message": "database unavailable"}, 503)
        if detail is None:
            return self._render(request, "error.html", {"message": "no such call"}, 404)
        call = detail.call
        context = {
            "call": call,
            "turns": detail.turns,
            "conversation": detail.conversation(),
            "tool_calls": detail.tool_calls,
            "events": detail.events,
            "live": call_sid in self.call_log.feed.calls,
            "timeline": timeline_svg(
                call["duration_s"], detail.turns, detail.events, detail.tool_calls
            ),
        }
        return self._render(request, "call.html", context)

    async def login_form(self, request: Request) -> Response:
        context = {"next": safe_next(request.query_params.get("next")), "failed": False}
        return self._render(request, "login.html", context)

    async def login(self, request: Request) -> Response:
        body = await capped_body(request, MAX_FORM_BYTES)
        if body is None:
            return HTMLResponse("form too large", status_code=413)
        form = dict(parse_qsl(body.decode("utf-8", errors="replace"), keep_blank_values=True))
        target = safe_next(form.get("next"))
        if not self.guard.token_matches(form.get("token", "")):
            await asyncio.sleep(FAILED_LOGIN_DELAY)
            return self._render(request, "login.html", {"next": target, "failed": True}, 401)
        response = RedirectResponse(target, status_code=303)
        self.guard.start_session(response, request)
        return response

    async def logout(self, request: Request) -> Response:
        response = RedirectResponse("/login", status_code=303)
        self.guard.end_session(response)
        return response
