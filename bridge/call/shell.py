"""One live call's I/O: the Twilio Media Stream and its Realtime session, piped both ways.

The shell owns the sockets and the tasks and decides nothing: every message goes into the
call's `CallSession` (session.py) with the time, and the effects that come back are carried
out in order. One TaskGroup per call holds the two pumps (`caller_to_model`,
`model_to_caller`), one writer task per socket (writers.py), the timers and any speech
synthesis. A task ends the call by raising `CallEnded(reason)`; the group cancels the rest, and
`run()` closes both sockets and finalises the record in `finally`.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable

from starlette.websockets import WebSocket
from websockets.asyncio.client import ClientConnection

from bridge import metrics, realtime, twilio
from bridge.after_stream import MemoryNextSteps, NextStep, NextSteps
from bridge.call.effects import (
    CallEnded,
    Effect,
    EndCall,
    Noted,
    Reconnect,
    Rollover,
    RunTool,
    Synthesize,
    ToCaller,
    ToModel,
    ToolCallChanged,
    TurnChanged,
    Wake,
)
from bridge.call.session import CallSession
from bridge.call.sockets import BadMessage, CallerSocket, ModelSocket
from bridge.call.taskgroup import TaskGroup
from bridge.call.timers import Timers
from bridge.call.writers import BACKLOG_LIMIT
from bridge.errors import ProtocolViolation, UpstreamRejected, UpstreamUnavailable
from bridge.logs import call_sid_var, mask_number
from bridge.profiles import Profile
from bridge.record import CallRecord, EndReason, Recorder
from bridge.recording.call import CallRecording
from bridge.recording.store import RecordingStore
from bridge.settings import Settings
from bridge.tools.http import ToolResult, ToolRunner
from bridge.tts import SpeechClient
from bridge.upstream import UpstreamHealth, open_session

logger = logging.getLogger(__name__)

FINALISE_TIMEOUT = 2.0
BACKPRESSURE_WAIT = 1.0  # a slow model holds the caller's frames back at most this long per look
GAP_FRAMES = 50 * 10  # caller audio kept while no model session is open: the last 10 s
TOOLS_IN_FLIGHT = 4  # HTTP tools one call runs at once; more wait their turn


@dataclasses.dataclass(frozen=True, slots=True)
class CallServices:
    """What the application lends each call."""

    settings: Settings
    profile_for: Callable[[twilio.Start], Profile]
    recorder: Recorder
    speech: SpeechClient
    # Refuses (ProtocolViolation) a stream token another worker or replica already used.
    claim_stream: Callable[[twilio.Start], Awaitable[None]] | None = None
    tools: ToolRunner | None = None  # runs HTTP tools (None: a tool call gets an error output)
    # Where the call leaves what Twilio does after the stream (`<Connect action>`).
    next_steps: NextSteps = dataclasses.field(default_factory=MemoryNextSteps)
    # Shared by the process's calls: the voice webhook answers the fallback while it is down.
    upstream_health: UpstreamHealth = dataclasses.field(default_factory=UpstreamHealth)
    # Where a call whose profile records leaves its WAV (None: no call is recorded).
    recordings: RecordingStore | None = None


# How a model session ends when the call does not: the bridge opens the next one.
UPSTREAM_LOSSES = frozenset({EndReason.UPSTREAM_CLOSED, EndReason.UPSTREAM_ERROR})


class SessionRenewal(Exception):
    """The call session asked for a new model session (its own expired, or a rollover)."""


@contextlib.asynccontextmanager
async def _entered(
    opening: contextlib.AbstractAsyncContextManager[ClientConnection], connection: ClientConnection
) -> AsyncIterator[ClientConnection]:
    """A session `_prepare_next` opened already, closed like any other when done."""
    try:
        yield connection
    finally:
        await opening.__aexit__(None, None, None)


class Call:
    """Bridges one Media Stream socket (already accepted) to its Realtime sessions."""

    def __init__(self, websocket: WebSocket, services: CallServices) -> None:
        self._services = services
        self._loop = asyncio.get_running_loop()
        self.record = CallRecord(call_sid="", stream_sid="")
        self._session: CallSession | None = None
        self._caller = CallerSocket(websocket)
        self._model: ModelSocket | None = None
        self._tg: asyncio.TaskGroup | None = None
        self._ended: CallEnded | None = None  # the session's decision, once made
        self._ending = asyncio.Event()
        self._timers = Timers(self._loop)
        self._goodbye: str | None = None  # a shutdown asked for before the session existed
        # While no model session is open (connecting, reconnecting): what it will get first.
        self._gap_audio: collections.deque[str] = collections.deque(maxlen=GAP_FRAMES)
        self._gap_control: list[str] = []
        self._reconnect = asyncio.Event()
        self._reconnect_delay = 0.0
        # A next model session opened beside the current one (rollover), waiting to take over.
        self._prepared: (
            tuple[contextlib.AbstractAsyncContextManager[ClientConnection], ClientConnection] | None
        ) = None
        self._tools_in_flight = asyncio.Semaphore(TOOLS_IN_FLIGHT)
        self._recording: CallRecording | None = None

    # ---- lifecycle -----------------------------------------------------------------------------

    async def run(self) -> CallRecord:
        """Serve the call to its end; never raises except CancelledError."""
        with metrics.live_call():
            return await self._run()

    async def _run(self) -> CallRecord:
        reason, detail = EndReason.INTERNAL_ERROR, ""
        next_step: NextStep | None = None
        try:
            start = await self._caller.wait_for_start(self.record)
            session = await self._begin(start)
            async with TaskGroup() as tg:
                self._tg = tg
                tg.create_task(self._caller.writer.run(), name="to_caller")
                tg.create_task(self._watch_end(), name="end")
                timer = session.timer
                tg.create_task(self._timers.run(lambda now: self._apply(timer(now))), name="timers")
                tg.create_task(self._upstream(session), name="upstream")
                if self._recording is not None:
                    tg.create_task(self._recording.run(), name="recording")
                if self._goodbye is not None:
                    self._apply(session.shutdown(self._goodbye, self._loop.time()))
                tg.create_task(self._caller_to_model(), name="caller_to_model")
        except* CallEnded as group:
            # The session's own end comes first: a pump may see its effect (a closed socket).
            ended = self._ended or group.exceptions[0]
            assert isinstance(ended, CallEnded)
            reason, detail, next_step = ended.reason, ended.detail, ended.next_step
        except* UpstreamRejected as group:
            metrics.realtime_error("rejected")
            reason, detail = EndReason.UPSTREAM_REJECTED, str(group.exceptions[0])
        except* UpstreamUnavailable as group:
            metrics.realtime_error("unavailable")
            reason, detail = EndReason.UPSTREAM_UNAVAILABLE, str(group.exceptions[0])
        except* Exception as group:
            # The one log-and-contain boundary of a call: a bug here must not take others down.
            logger.error("call failed", exc_info=group.exceptions[0])
            reason, detail = EndReason.INTERNAL_ERROR, repr(group.exceptions[0])
        finally:
            await self._finish(reason, detail, next_step)
        return self.record

    async def _begin(self, start: twilio.Start) -> CallSession:
        claim = self._services.claim_stream
        try:
            profile = self._services.profile_for(start)
            if claim is not None:
                await claim(start)
        except ProtocolViolation as exc:
            # An unsigned or forged stream: refuse before any Realtime session is opened.
            raise CallEnded(EndReason.PROTOCOL_ERROR, exc.detail) from None
        store = self._services.recordings
        if profile.record and store is not None:
            self.record.call_sid = start.call_sid
            self._recording = CallRecording.start(store, self.record)
        session = CallSession(
            start,
            profile,
            self.record,
            now=self._loop.time(),
            caller_timeout=self._services.settings.caller_timeout_seconds,
            tape=self._recording.tape if self._recording is not None else None,
        )
        self._session = session
        call_sid_var.set(start.call_sid)
        self._services.recorder.call_started(self.record)
        logger.info(
            "call started from %s to %s profile=%s audio=%s",
            mask_number(self.record.from_number),
            mask_number(self.record.to_number),
            profile.name,
            profile.audio_mode,
        )
        return session

    async def _finish(self, reason: EndReason, detail: str, next_step: NextStep | None) -> None:
        self._tg = None  # closed: a late shutdown() has nothing left to start
        record = self.record
        record.ended_at = time.time()
        record.end_reason = reason
        record.end_detail = detail
        session = self._session
        if session is not None:
            for effect in session.finish(self._loop.time()):
                if isinstance(effect, ToolCallChanged):
                    self._services.recorder.tool_call_updated(record, effect.tool_call)
        if reason is EndReason.SERVER_SHUTDOWN or reason is EndReason.MAX_DURATION:
            with contextlib.suppress(TimeoutError):  # the goodbye's last words, if still queued
                async with asyncio.timeout(FINALISE_TIMEOUT):
                    await self._caller.writer.flush()
        if next_step is not None:
            await self._save_next_step(next_step)
        try:
            async with asyncio.timeout(FINALISE_TIMEOUT):
                await self._caller.close(reason)
        except TimeoutError:
            logger.warning("closing the Twilio socket timed out")
        metrics.call_ended(reason, record.duration)
        if self._recording is not None:
            await self._recording.finish(record)
        if session is not None:
            self._services.recorder.call_ended(record)
        logger.info("call ended %s", record.summary())

    async def _save_next_step(self, step: NextStep) -> None:
        """Before the stream closes: Twilio asks for the next step right after, maybe of
        another worker. If it cannot be saved, the caller is hung up on (logged)."""
        try:
            async with asyncio.timeout(FINALISE_TIMEOUT):
                await self._services.next_steps.save(self.record.call_sid, step)
        except Exception as exc:  # storage trouble must not keep the call from closing
            logger.error("could not save the call's next step (%s): %r", step.action, exc)

    @property
    def profile(self) -> Profile | None:
        """The profile the call started with (None until Twilio's `start` arrived)."""
        return self._session.profile if self._session is not None else None

    def shutdown(self, goodbye: str = "") -> None:
        """End the call for a server shutdown, after saying `goodbye` if there is one."""
        session = self._session
        if session is None or self._tg is None:
            self._goodbye = goodbye  # carried out as soon as the call is bridged
            return
        self._apply(session.shutdown(goodbye, self._loop.time()))

    # ---- effects -------------------------------------------------------------------------------

    def _apply(self, effects: list[Effect]) -> None:
        """Carry out the session's effects, in order. Never raises: an end is handed to the
        call's `end` task, so this is safe from any task (and from the drain)."""
        for effect in effects:
            if isinstance(effect, ToCaller):
                self._caller.writer.write(effect.texts, effect.kind)
            elif isinstance(effect, ToModel):
                event = effect.event
                text = event if isinstance(event, str) else json.dumps(event)
                if self._model is None:
                    self._gap_control.append(text)  # sent once a session is open
                else:
                    self._model.writer.write((text,))
            elif isinstance(effect, TurnChanged):
                self._services.recorder.turn_updated(self.record, effect.turn)
            elif isinstance(effect, Noted):
                self._services.recorder.call_event(self.record, effect.event)
            elif isinstance(effect, Wake):
                self._timers.wake_at(effect.at)
            elif isinstance(effect, ToolCallChanged):
                self._services.recorder.tool_call_updated(self.record, effect.tool_call)
            elif isinstance(effect, RunTool):
                assert self._tg is not None
                self._tg.create_task(self._run_tool(effect), name=f"tool_{effect.tool.name}")
            elif isinstance(effect, Synthesize):
                assert self._tg is not None
                self._tg.create_task(self._synthesize(effect), name="tts_fallback")
            elif isinstance(effect, Reconnect):
                self._reconnect_delay = effect.delay
                self._reconnect.set()
            elif isinstance(effect, Rollover):
                assert self._tg is not None
                self._tg.create_task(self._prepare_next(), name="next_session")
            elif isinstance(effect, EndCall):
                self._end(CallEnded(effect.reason, effect.detail, effect.next_step))

    def _end(self, ended: CallEnded) -> None:
        if self._ended is None:
            self._ended = ended
            self._ending.set()

    async def _watch_end(self) -> None:
        await self._ending.wait()
        ended = self._ended
        assert ended is not None
        # Raise a copy: the exception kept in self._ended must never carry a traceback whose
        # frames hold self (a cycle that keeps every ended call until a full collection).
        raise CallEnded(ended.reason, ended.detail, ended.next_step)

    async def _synthesize(self, request: Synthesize) -> None:
        session = self._session
        assert session is not None
        try:
            pcm = await self._services.speech.synthesize(request.text, request.voice)
        except UpstreamUnavailable as exc:
            self._apply(session.speech_failed(request.request, str(exc), self._loop.time()))
            return
        self._apply(session.speech_ready(request.request, pcm, request.text, self._loop.time()))

    # ---- the model's session ---------------------------------------------------------------------

    async def _upstream(self, session: CallSession) -> None:
        """Keep a model session open for the call: open one, and whenever it is lost (or the
        session asks for a new one), open the next as the session decides (`Reconnect`), until
        the call ends. The caller's stream stays open throughout."""
        settings = self._services.settings
        while True:
            prepared, self._prepared = self._prepared, None
            opening = (
                _entered(*prepared)
                if prepared is not None
                else open_session(settings, session.profile.model)
            )
            try:
                async with opening as connection:
                    model = ModelSocket(connection)
                    self._services.upstream_health.opened()
                    self._reconnect.clear()
                    self._model = model
                    self._apply(session.connected(self._loop.time()))
                    self._send_gap(model)
                    async with TaskGroup() as tg:
                        tg.create_task(model.writer.run(), name="to_model")
                        tg.create_task(self._model_to_caller(model), name="model_to_caller")
                        tg.create_task(self._renewal_asked(), name="renewal")
            except* SessionRenewal:
                pass  # the session asked for a new one; it has said how soon
            except* CallEnded as group:
                lost = group.exceptions[0]
                assert isinstance(lost, CallEnded)
                if self._ended is not None or lost.reason not in UPSTREAM_LOSSES:
                    raise
                self._model = None
                self._apply(session.upstream_lost(lost.detail, self._loop.time()))
            except* UpstreamRejected as group:
                metrics.realtime_error("rejected")
                self._model = None
                detail = str(group.exceptions[0])
                self._services.upstream_health.failed(detail, time.time())
                self._apply(session.reconnect_failed(detail, self._loop.time(), refused=True))
            except* UpstreamUnavailable as group:
                metrics.realtime_error("unavailable")
                self._model = None
                detail = str(group.exceptions[0])
                self._services.upstream_health.failed(detail, time.time())
                self._apply(session.reconnect_failed(detail, self._loop.time()))
            self._model = None
            await self._reconnect.wait()  # or the call ends, and this task is cancelled
            self._reconnect.clear()
            if self._reconnect_delay > 0:
                await asyncio.sleep(self._reconnect_delay)

    async def _prepare_next(self) -> None:
        """Open the next model session while the current one still serves the call; once open,
        the call moves to it (the current one closes, the next takes over at once)."""
        session = self._session
        assert session is not None
        opening = open_session(self._services.settings, session.profile.model)
        try:
            connection = await opening.__aenter__()
        except (UpstreamRejected, UpstreamUnavailable) as exc:
            self._apply(session.rollover_failed(str(exc), self._loop.time()))
            return
        if self._ended is not None:
            await opening.__aexit__(None, None, None)
            return
        self._prepared = (opening, connection)
        self._reconnect_delay = 0.0
        self._reconnect.set()  # the current session's `_renewal_asked` closes it

    async def _renewal_asked(self) -> None:
        """While a session is open, a `Reconnect` from the session closes it."""
        await self._reconnect.wait()
        self._model = None  # from now on caller audio waits for the next session, not lost
        raise SessionRenewal

    def _send_gap(self, model: ModelSocket) -> None:
        """What the caller said while no session was open, then what the session decided."""
        if self._gap_audio:
            model.writer.write(tuple(self._gap_audio))
            self._gap_audio.clear()
        for text in self._gap_control:
            model.writer.write((text,))
        self._gap_control.clear()

    async def _run_tool(self, request: RunTool) -> None:
        """One HTTP tool, beside the audio: a slow endpoint never stalls the pumps."""
        session = self._session
        assert session is not None
        runner = self._services.tools
        if runner is None:
            result = ToolResult(False, '{"error": "tools are not available"}', "no tool runner")
        else:
            async with self._tools_in_flight:
                try:
                    result = await runner.run(request.tool, request.arguments)
                except Exception as exc:  # a bug in a tool run must not end the call
                    logger.error("tool %s failed", request.tool.name, exc_info=exc)
                    error = f"the tool failed ({type(exc).__name__})"
                    result = ToolResult(False, json.dumps({"error": error}), error)
        self._apply(session.tool_done(request.call_id, result, self._loop.time()))

    # ---- caller -> model -----------------------------------------------------------------------

    async def _caller_to_model(self) -> None:
        """Caller frames the protocol did not hand to `_media_now`, in order, and everything else
        the caller sends. Without a model session, frames wait in the gap buffer."""
        session = self._session
        assert session is not None
        backlog = self._caller.shortcuts.backlog
        set_handler = self._caller.shortcuts.set_text_handler
        if set_handler is not None:
            set_handler(self._media_now)
        try:
            while True:
                message = await self._caller.receive()
                if not isinstance(message, twilio.Media):
                    self._from_caller(message)
                    continue
                payload, frames, following = message.payload, 1, None
                if backlog is not None and backlog():
                    # Behind: frames have piled up. Send them in one append, not one each.
                    payload, frames, following = await self._caller.gather_backlog(payload)
                model = self._model
                if model is None:
                    self._gap_audio.append(session.caller_audio(payload, frames))
                    if following is not None:
                        self._from_caller(following)
                    continue
                timed = metrics.ADDED_LATENCY_CALLER_TO_MODEL.due()
                started = time.perf_counter() if timed else 0.0
                model.writer.write((session.caller_audio(payload, frames),))
                if timed:  # frame parsed -> appended upstream (1 frame in SAMPLE_EVERY)
                    metrics.ADDED_LATENCY_CALLER_TO_MODEL.record(time.perf_counter() - started)
                if following is not None:
                    self._from_caller(following)
                if model.writer.backlog > BACKLOG_LIMIT:
                    # The model reads slowly: stop reading Twilio (not past losing the session).
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(BACKPRESSURE_WAIT):
                            await model.writer.drained()
        finally:
            if set_handler is not None:
                set_handler(None)

    def _from_caller(self, message: twilio.TwilioMessage | BadMessage) -> None:
        session = self._session
        assert session is not None
        now = self._loop.time()
        if isinstance(message, BadMessage):
            self._apply(session.protocol_error(message.detail, now))
        else:
            self._apply(session.caller_message(message, now))

    def _media_now(self, text: str) -> bool:
        """The protocol's read callback offers each caller message that would be next in line:
        a media frame is converted and appended upstream here, without waking the task. Anything
        else, or a moment when the model's socket cannot take a frame at once, is left to the
        task."""
        session, model = self._session, self._model
        if session is None or model is None or not model.can_write_now():
            return False
        try:
            message = twilio.parse_message(text)
            if not isinstance(message, twilio.Media):
                return False
            # Sampled as in the task: frame parsed -> appended upstream. A declined message
            # must not use up the sample the task will then take.
            timed = metrics.ADDED_LATENCY_CALLER_TO_MODEL.due()
            started = time.perf_counter() if timed else 0.0
            event = session.caller_audio(message.payload, 1)
        except Exception:  # a bad frame (or a bug): the task meets it again and deals with it
            return False
        assert model.direct is not None
        model.direct.write(event)
        if timed:
            metrics.ADDED_LATENCY_CALLER_TO_MODEL.record(time.perf_counter() - started)
        return True

    # ---- model -> caller -----------------------------------------------------------------------

    async def _model_to_caller(self, model: ModelSocket) -> None:
        session = self._session
        assert session is not None
        latency = metrics.ADDED_LATENCY_MODEL_TO_CALLER
        async with contextlib.aclosing(model.events()) as events:
            async for event in events:
                if isinstance(event, BadMessage):
                    self._apply(session.model_protocol_error(event.detail, self._loop.time()))
                    continue
                delta = isinstance(event, realtime.AudioDelta)
                timed = latency.due() if delta else isinstance(event, realtime.SpeechStarted)
                if not timed:
                    self._apply(session.model_event(event, self._loop.time()))
                    continue
                started, barge_ins = time.perf_counter(), self.record.barge_ins
                self._apply(session.model_event(event, self._loop.time()))
                if delta:  # delta parsed -> its frames handed to Twilio (1 delta in SAMPLE_EVERY)
                    latency.record(time.perf_counter() - started)
                elif self.record.barge_ins != barge_ins:  # speech_started -> `clear` handed over
                    metrics.barge_in(time.perf_counter() - started)
