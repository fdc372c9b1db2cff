"""The ASGI application: Twilio's voice webhook, status callbacks and Media Stream socket, the
numbers reload endpoint, and health.

With `TWILIO_AUTH_TOKEN` set, every Twilio entry point checks the request signature before doing
anything, and the stream's profile comes only from parameters the webhook signed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import TYPE_CHECKING
from urllib.parse import parse_qsl

from starlette.applications import Starlette
from starlette.datastructures import ImmutableMultiDict
from starlette.requests import HTTPConnection, Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import BaseRoute, Route, WebSocketRoute
from starlette.websockets import WebSocket
from twilio.twiml.voice_response import VoiceResponse

from bridge import metrics, numbers, signatures, twilio
from bridge.admission import Admission, LoopLag
from bridge.after_stream import ACTION_PATH, HANGUP, MemoryNextSteps, NextSteps
from bridge.call.shell import Call, CallServices
from bridge.drain import drain
from bridge.errors import ConfigError, ProtocolViolation
from bridge.logs import mask_number
from bridge.profiles import Profile
from bridge.record import MemoryRecorder, Recorder
from bridge.recording.store import RecordingStore, store_from_settings
from bridge.settings import Settings
from bridge.tools.http import ToolRunner
from bridge.tts import SpeechClient
from bridge.upstream import UpstreamHealth
from bridge.web.auth import Access, Guard
from bridge.webhooks.signing import check_secret

if TYPE_CHECKING:
    from bridge.webhooks.sender import WebhookSender

logger = logging.getLogger(__name__)

TWIML = "application/xml"
STATUS_PATH = "/twilio/status"
RELOAD_PATH = "/api/numbers/reload"
MAX_FORM_BYTES = 64 * 1024  # Twilio's webhooks are a few hundred bytes; refuse floods early


class FormTooLarge(Exception):
    """A webhook body over MAX_FORM_BYTES."""


async def form_params(request: Request) -> ImmutableMultiDict[str, str]:
    """Twilio posts `application/x-www-form-urlencoded`; GET webhooks carry the query instead."""
    if request.method == "GET":
        return ImmutableMultiDict(request.query_params.multi_items())
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_FORM_BYTES:
            raise FormTooLarge
    text = body.decode("utf-8", errors="replace")
    return ImmutableMultiDict(parse_qsl(text, keep_blank_values=True))


def refusal_twiml(direction: str) -> str:
    """`<Reject>` an incoming call (no answer, no charge); hang up one we placed."""
    if direction.startswith("outbound"):
        response = VoiceResponse()
        response.hangup()
        return str(response)
    return twilio.reject_twiml()


RECOVER_RECORDINGS_EVERY = 300.0  # seconds between uploads of what the spool holds


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
        token = settings.twilio_auth_token
        if token is None and settings.environment == "production":
            raise ConfigError(
                [
                    "TWILIO_AUTH_TOKEN: required when BRIDGE_ENV=production "
                    "(without it anyone who finds this server can open calls)"
                ]
            )
        self.signatures = (
            signatures.TwilioSignatures(token.get_secret_value()) if token is not None else None
        )
        if self.signatures is None:
            logger.warning(
                "TWILIO_AUTH_TOKEN is not set: Twilio signatures are NOT checked and anyone who "
                "can reach this server can place calls on your OpenAI account. "
                "Development only; BRIDGE_ENV=production refuses to start like this."
            )
        self.numbers = numbers.Numbers(settings)
        check_secret(  # a webhook URL needs BRIDGE_CALL_WEBHOOK_SECRET in production
            settings, (p.call_webhook_url for p in self.numbers.current.profiles.values())
        )
        # The post-call webhook's sender; `bridge serve` sets it when the call log is in use.
        self.webhooks: WebhookSender | None = None
        self.guard = Guard(settings)
        self._exposition = metrics.metrics_endpoint(None)
        self._choose_profile = profile_for
        # The live calls, and BRIDGE_MAX_CALLS: places the webhook reserved count until they end.
        self.live_calls = Admission(settings.max_calls)
        metrics.set_max_calls(settings.max_calls)  # for "near its call limit" alerts
        self.loop_lag = LoopLag(settings.event_loop_lag_limit_ms)
        self.speech: SpeechClient | None = None
        self.tools: ToolRunner | None = None
        # What each call leaves for Twilio's `<Connect action>` request; `bridge serve` shares
        # it through the call log's database, so any worker or replica can answer.
        self.next_steps: NextSteps = MemoryNextSteps()
        self.upstream_health = UpstreamHealth()
        # Where calls whose profile says `record = true` leave their WAV (bridge/recording).
        self.recordings: RecordingStore = store_from_settings(
            settings.recordings_dir, settings.recordings_url
        )

        # Extra readiness checks (e.g. the call log's database): each returns a problem or None.
        self.readiness_checks: list[Callable[[], Awaitable[str | None]]] = [
            self.live_calls.check,
            self.loop_lag.check,
        ]

    @contextlib.asynccontextmanager
    async def lifespan(self, app: Starlette) -> AsyncIterator[None]:
        self.speech = SpeechClient(self.settings)
        self.tools = ToolRunner()
        try:
            with numbers.reload_on_sighup(self.numbers):
                async with asyncio.TaskGroup() as tg:
                    watcher = tg.create_task(self.numbers.watch(), name="numbers-watch")
                    lag = tg.create_task(self.loop_lag.run(), name="loop-lag")
                    recover = tg.create_task(self._recover_recordings(), name="recordings")
                    sender = None
                    if self.webhooks is not None:
                        sender = tg.create_task(self.webhooks.run(), name="webhook-sender")
                    try:
                        yield
                    finally:
                        watcher.cancel()
                        lag.cancel()
                        recover.cancel()
                        if sender is not None:
                            sender.cancel()
        finally:
            await self.speech.aclose()
            await self.tools.aclose()
            await self.recordings.aclose()

    def webhooks_configured(self) -> bool:
        """A post-call webhook URL is set (the environment, or a profile of the numbers file)."""
        if self.settings.call_webhook_url:
            return True
        return any(p.call_webhook_url for p in self.numbers.current.profiles.values())

    async def _recover_recordings(self) -> None:
        """Recordings a crash (or a failed upload) left in the bucket store's spool are
        uploaded: at start, then every few minutes. Never raises."""
        while True:
            try:
                count = await self.recordings.recover()
            except Exception as exc:
                logger.error("could not recover recordings left in the spool: %r", exc)
            else:
                if count:
                    logger.info("uploaded %d recording(s) left in the spool", count)
            await asyncio.sleep(RECOVER_RECORDINGS_EVERY)

    def public_base(self, connection: HTTPConnection) -> str:
        """The base URL Twilio reaches us at (configured, forwarded, or the Host header)."""
        return signatures.public_base(self.settings, connection)

    def profile_for(self, start: twilio.Start) -> Profile:
        """The profile of a starting stream, from parameters the webhook signed.

        Raises ProtocolViolation (the call is refused) if a token is required and not valid,
        or was used by an earlier stream of this process (see `claim_stream` for the others).
        """
        params = start.custom_parameters
        if self.signatures is not None:
            self.signatures.admit_stream(params, start.call_sid, now=time.time())
        if self._choose_profile is not None:
            return self._choose_profile(start)
        directory = self.numbers.current
        named = directory.named(params.get("Profile", ""))
        if named is not None:
            return named
        # No profile named (a stream not set up by our webhook in development), or a reload
        # removed it since the webhook answered: choose by number again, caller rules included.
        routing = directory.route(
            caller=params.get("From", ""),
            called=params.get("To", ""),
            direction=params.get("Direction", "inbound"),
        )
        if not routing.admitted:
            raise ProtocolViolation(routing.reason)
        return routing.profile

    async def claim_stream(self, start: twilio.Start) -> None:
        """After `profile_for`, before any Realtime session: raise ProtocolViolation if another
        worker or replica already opened a stream with this token (the call log's ledger)."""
        if self.signatures is not None:
            await self.signatures.claim_shared(start.custom_parameters, now=time.time())

    async def _twilio_form(self, request: Request) -> ImmutableMultiDict[str, str] | Response:
        """The webhook's fields, or the error response if too large or not signed by Twilio."""
        try:
            form = await form_params(request)
        except FormTooLarge:
            return PlainTextResponse("request body too large", status_code=413)
        if self.signatures is not None:
            url = signatures.request_url(self.settings, request)
            signature = request.headers.get(signatures.SIGNATURE_HEADER, "")
            params = {} if request.method == "GET" else form
            if not self.signatures.webhook_valid(url, params, signature):
                logger.warning(
                    "refused %s %s: %s Twilio signature",
                    request.method,
                    request.url.path,
                    "invalid" if signature else "missing",
                )
                return PlainTextResponse("invalid Twilio signature", status_code=403)
        return form

    async def voice(self, request: Request) -> Response:
        """Twilio's voice webhook: connect the call to our stream with its profile, or refuse."""
        if self.live_calls.draining:
            # A 5xx makes Twilio try the number's fallback URL (another instance) instead.
            return PlainTextResponse("draining: not taking new calls", status_code=503)
        form = await self._twilio_form(request)
        if isinstance(form, Response):
            return form
        call_sid = form.get("CallSid", "")
        caller, called = form.get("From", ""), form.get("To", "")
        direction = form.get("Direction", "inbound") or "inbound"
        routing = self.numbers.current.route(
            caller=caller,
            called=called,
            direction=direction,
            requested=request.query_params.get("profile", ""),
        )
        profile = routing.profile
        refused = {"From": caller, "To": called, "Direction": direction, "Profile": profile.name}
        if not routing.admitted:
            logger.warning(
                "refused call %s from %s to %s: %s",
                call_sid,
                mask_number(caller),
                mask_number(called),
                routing.reason,
            )
            self.recorder.call_status(call_sid, "rejected", refused | {"Reason": routing.reason})
            return Response(refusal_twiml(direction), media_type=TWIML)
        if self.upstream_health.down(time.time()):
            # No assistant could speak on the stream: the caller hears the fallback at once.
            logger.warning(
                "call %s answered with the fallback of profile %s: Realtime is down (%s)",
                call_sid,
                profile.name,
                self.upstream_health.last_problem,
            )
            reason = "fallback: the Realtime service cannot be reached"
            self.recorder.call_status(call_sid, "rejected", refused | {"Reason": reason})
            return Response(profile.fallback.twiml(), media_type=TWIML)
        if not self.live_calls.admit(call_sid):
            # At BRIDGE_MAX_CALLS: the profile's busy answer, never a `<Connect>`.
            logger.warning(
                "refused call %s from %s to %s: busy, %d/%s calls (profile %s)",
                call_sid,
                mask_number(caller),
                mask_number(called),
                self.live_calls.occupied(),
                self.live_calls.max_calls,
                profile.name,
            )
            self.recorder.call_status(call_sid, "rejected", refused | {"Reason": "busy"})
            metrics.call_refused("busy")
            twiml = profile.busy.twiml(outbound=direction.startswith("outbound"))
            return Response(twiml, media_type=TWIML)
        logger.info(
            "incoming call %s from %s to %s: profile %s (%s)",
            call_sid,
            mask_number(caller),
            mask_number(called),
            routing.profile.name,
            routing.reason,
        )
        base = self.public_base(request)
        parameters = {
            "From": caller,
            "To": called,
            "CallSid": call_sid,
            "Direction": direction,
            "Profile": routing.profile.name,
        }
        if self.signatures is not None:
            parameters = self.signatures.sign_stream(parameters, now=time.time())
        twiml = twilio.connect_twiml(
            twilio.stream_url(base),
            parameters,
            status_callback=base + STATUS_PATH,
            action=twilio.action_url(base),
        )
        return Response(twiml, media_type=TWIML)

    async def stream_ended(self, request: Request) -> Response:
        """Twilio's `<Connect action>`: the stream is over; answer what the call does next
        (hang up, or dial the person a transfer chose), as the call saved it."""
        form = await self._twilio_form(request)
        if isinstance(form, Response):
            return form
        call_sid = form.get("CallSid", "")
        step = None
        if call_sid:
            try:
                step = await self.next_steps.load(call_sid)
            except Exception as exc:  # the caller must get an answer; hanging up is safe
                logger.error("could not load the next step of call %s: %r", call_sid, exc)
        step = step or HANGUP
        logger.info(
            "call %s stream ended (%s): %s%s",
            call_sid,
            form.get("CallStatus", ""),
            step.action,
            f" {mask_number(step.number)}" if step.number else "",
        )
        return Response(step.twiml(), media_type=TWIML)

    async def status(self, request: Request) -> Response:
        """Call and stream status callbacks, recorded against the call."""
        form = await self._twilio_form(request)
        if isinstance(form, Response):
            return form
        call_sid = form.get("CallSid", "")
        status = form.get("StreamEvent") or form.get("CallStatus") or ""
        if not call_sid or not status:
            return PlainTextResponse("CallSid and CallStatus or StreamEvent required", 400)
        params = dict(form.items())
        self.recorder.call_status(call_sid, status, params)
        if status == "stream-error":
            logger.warning("call %s stream error: %s", call_sid, form.get("StreamError", ""))
        else:
            duration = form.get("CallDuration")
            logger.info(
                "call %s status %s%s", call_sid, status, f" after {duration}s" if duration else ""
            )
        return Response(status_code=204)

    async def media(self, websocket: WebSocket) -> None:
        """One Media Stream = one call, bridged until either side ends it."""
        if self.live_calls.draining:
            logger.warning("refused media stream: draining")
            await websocket.close(code=1013)  # before accept: the upgrade gets HTTP 403
            return
        if self.signatures is not None:
            url = twilio.stream_url(self.public_base(websocket))
            signature = websocket.headers.get(signatures.SIGNATURE_HEADER, "")
            if not self.signatures.stream_valid(url, signature):
                logger.warning(
                    "refused media stream: %s Twilio signature",
                    "invalid" if signature else "missing",
                )
                await websocket.close(code=1008)  # before accept: the upgrade gets HTTP 403
                return
        await websocket.accept()
        assert self.speech is not None
        services = CallServices(
            self.settings,
            self.profile_for,
            self.recorder,
            self.speech,
            claim_stream=self.claim_stream,
            tools=self.tools,
            next_steps=self.next_steps,
            upstream_health=self.upstream_health,
            recordings=self.recordings,
        )
        call = Call(websocket, services)
        self.live_calls.add(call)
        try:
            await call.run()
        finally:
            self.live_calls.discard(call)

    async def reload_numbers(self, request: Request) -> Response:
        """`bridge numbers reload`: validate the numbers file again and swap it in.

        Needs the admin token; without one configured, only direct loopback requests (nothing
        relayed by a proxy), as for the rest of the admin API.
        """
        refusal = self._admin_refusal(request)
        if refusal is not None:
            return refusal
        try:
            directory = self.numbers.reload("admin API")
        except ConfigError as exc:
            return JSONResponse({"reloaded": False, "problems": exc.problems}, 422)
        return JSONResponse(
            {
                "reloaded": True,
                "source": directory.source,
                "profiles": sorted(directory.profiles),
                "numbers": len(directory.numbers),
            }
        )

    def _admin_refusal(self, request: Request) -> Response | None:
        """The admin token's rule, as for the dashboard: without one, direct loopback only."""
        access = self.guard.check(request)
        if access is Access.LOOPBACK_ONLY:
            return PlainTextResponse("set BRIDGE_ADMIN_TOKEN to use this from elsewhere", 403)
        if access is Access.LOGIN:
            return PlainTextResponse(
                "invalid admin token", 401, headers={"WWW-Authenticate": "Bearer"}
            )
        return None

    async def metrics(self, request: Request) -> Response:
        """Prometheus exposition, guarded like the API (BRIDGE_METRICS_PORT serves it openly)."""
        return self._admin_refusal(request) or await self._exposition(request)

    async def healthz(self, request: Request) -> Response:
        """The process is alive (liveness): nothing else is checked."""
        return PlainTextResponse("ok")

    async def readyz(self, request: Request) -> Response:
        """Accepting new calls (readiness): not draining, and every dependency usable."""
        problems = ["draining"] if self.live_calls.draining else []
        for check in self.readiness_checks:
            problem = await check()
            if problem:
                problems.append(problem)
        if problems:
            return PlainTextResponse("not ready: " + "; ".join(problems), status_code=503)
        return PlainTextResponse(f"ready: {len(self.live_calls)} live call(s)")

    async def drain(self) -> None:
        """SIGTERM: refuse new calls, let live ones finish, then end the rest with a goodbye."""
        await drain(
            self.live_calls,
            self.settings.drain_seconds,
            goodbye_for=lambda call: call.profile.goodbye if call.profile else "",
        )


def create_app(
    settings: Settings,
    *,
    recorder: Recorder | None = None,
    profile_for: Callable[[twilio.Start], Profile] | None = None,
    routes: Sequence[BaseRoute] = (),
) -> Starlette:
    """Build the application; `app.state.bridge` exposes the shared state (tests, CLI).

    `routes` are mounted beside the Twilio routes (the call log's API and dashboard). Raises
    ConfigError for an invalid numbers file, or no auth token in production.
    `profile_for` replaces the numbers file's choice (tests); signatures are still checked.
    """
    bridge = Bridge(settings, recorder=recorder, profile_for=profile_for)
    app = Starlette(
        routes=[
            Route("/twilio/voice", bridge.voice, methods=["POST", "GET"]),
            Route(STATUS_PATH, bridge.status, methods=["POST", "GET"]),
            Route(ACTION_PATH, bridge.stream_ended, methods=["POST", "GET"]),
            WebSocketRoute(twilio.MEDIA_PATH, bridge.media),
            Route(RELOAD_PATH, bridge.reload_numbers, methods=["POST"]),
            Route("/healthz", bridge.healthz, methods=["GET"]),
            Route("/readyz", bridge.readyz, methods=["GET"]),
            Route("/metrics", bridge.metrics, methods=["GET"]),
            *routes,
        ],
        lifespan=bridge.lifespan,
    )
    app.state.bridge = bridge
    return app
