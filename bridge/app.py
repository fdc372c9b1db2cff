"""The ASGI application: Twilio's voice webhook, the Media Stream socket, and health."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Callable, Sequence
from urllib.parse import parse_qsl

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import BaseRoute, Route, WebSocketRoute
from starlette.websockets import WebSocket

from bridge import twilio
from bridge.call import Call, CallServices
from bridge.logs import mask_number
from bridge.profiles import Profile
from bridge.record import MemoryRecorder, Recorder
from bridge.settings import Settings
from bridge.tts import SpeechClient

logger = logging.getLogger(__name__)

TWIML = "application/xml"


async def form_params(request: Request) -> dict[str, str]:
    """Twilio posts `application/x-www-form-urlencoded`; GET webhooks carry the query instead."""
    if request.method == "GET":
        return dict(request.query_params)
    body = (await request.body()).decode("utf-8", errors="replace")
    return dict(parse_qsl(body, keep_blank_values=True))


class Bridge:
    """Process-wide state the routes share: settings, profiles, recorder, live calls."""

    def __init__(
        self,
        settings: Settings,
        *,
        recorder: Recorder | None = None,
        profile_for: Callable[[twilio.Start], Profile] | None = None,
    ) -> None:
        self.settings = settings
        self.recorder: Recorder = recorder if recorder is not None else MemoryRecorder()
        default = Profile.from_settings(settings)
        self.profile_for = profile_for if profile_for is not None else (lambda start: default)
        self.live_calls: set[Call] = set()
        self.speech: SpeechClient | None = None

    @contextlib.asynccontextmanager
    async def lifespan(self, app: Starlette) -> AsyncIterator[None]:
        self.speech = SpeechClient(self.settings)
        try:
            yield
        finally:
            await self.speech.aclose()

    def public_base(self, request: Request) -> str:
        """The base URL Twilio reaches us at: configured, else the request's own host."""
        if self.settings.public_url:
            return self.settings.public_url
        return f"https://{request.headers.get('host', request.url.netloc)}"

    async def voice(self, request: Request) -> Response:
        """Twilio's voice webhook: answer with TwiML that connects the call to our stream."""
        params = await form_params(request)
        call_sid = params.get("CallSid", "")
        logger.info(
            "incoming call %s from %s to %s",
            call_sid,
            mask_number(params.get("From", "")),
            mask_number(params.get("To", "")),
        )
        stream = twilio.stream_url(self.public_base(request))
        parameters = {
            "From": params.get("From", ""),
            "To": params.get("To", ""),
            "CallSid": call_sid,
            "Direction": params.get("Direction", "inbound"),
        }
        return Response(twilio.connect_twiml(stream, parameters), media_type=TWIML)

    async def media(self, websocket: WebSocket) -> None:
        """One Media Stream = one call, bridged until either side ends it."""
        await websocket.accept()
        assert self.speech is not None
        services = CallServices(self.settings, self.profile_for, self.recorder, self.speech)
        call = Call(websocket, services)
        self.live_calls.add(call)
        try:
            await call.run()
        finally:
            self.live_calls.discard(call)

    async def healthz(self, request: Request) -> Response:
        return PlainTextResponse("ok")


def create_app(
    settings: Settings,
    *,
    recorder: Recorder | None = None,
    profile_for: Callable[[twilio.Start], Profile] | None = None,
    routes: Sequence[BaseRoute] = (),
) -> Starlette:
    """Build the application; `app.state.bridge` exposes the shared state (tests, CLI).

    `routes` are mounted beside the Twilio routes (the call log's API and dashboard).
    """
    bridge = Bridge(settings, recorder=recorder, profile_for=profile_for)
    app = Starlette(
        routes=[
            Route("/twilio/voice", bridge.voice, methods=["POST"]),
            WebSocketRoute(twilio.MEDIA_PATH, bridge.media),
            Route("/healthz", bridge.healthz, methods=["GET"]),
            *routes,
        ],
        lifespan=bridge.lifespan,
    )
    app.state.bridge = bridge
    return app
