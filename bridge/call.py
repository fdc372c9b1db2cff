"""One live call: the Twilio Media Stream and its Realtime session, piped both ways.

Structured concurrency: one TaskGroup per call holds the two pumps (`caller_to_model`,
`model_to_caller`), a deadline, and any text-to-speech fallback. A pump ends the call by raising
`CallEnded(reason)`; the group cancels the rest, and `run()` closes both sockets and finalises the
record in `finally`. Barge-in is a message (clear, truncate, cancel), not a cancellation.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import itertools
import json
import logging
import time
from collections.abc import Callable
from typing import Any

from starlette.websockets import WebSocket, WebSocketDisconnect, WebSocketState
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed

from bridge import audio, metrics, realtime, twilio
from bridge.bargein import Playback
from bridge.errors import ProtocolViolation, UpstreamRejected, UpstreamUnavailable
from bridge.fastws.server import (
    BACKLOG_EXTENSION,
    HANDLER_EXTENSION,
    SEND_EXTENSION,
    TextHandler,
)
from bridge.fastws.upstream import UpstreamWriter
from bridge.logs import call_sid_var, mask_number
from bridge.profiles import Profile
from bridge.record import CallEvent, CallRecord, EndReason, Recorder, Turn
from bridge.settings import AudioMode, Settings
from bridge.speech_guarantee import Recovery, SpeechGuarantee
from bridge.tts import SpeechClient
from bridge.upstream import open_session

logger = logging.getLogger(__name__)

START_TIMEOUT = 10.0  # Twilio sends `start` right after connecting
SEND_TIMEOUT = 5.0  # a peer that cannot take a frame for this long is gone
FINALISE_TIMEOUT = 2.0
MAX_FRAMES_PER_APPEND = 10  # when behind, up to 200 ms of caller audio in one append
MAX_PROTOCOL_ERRORS = 200  # past this many bad frames the peer is not Twilio: hang up
TTS_CHUNK_BYTES = audio.FRAME_BYTES * 50  # one second of fallback speech per media message
GOODBYE_TIMEOUT = 15.0  # a shutdown goodbye is short; never hold the drain longer than this

# Twilio closes the call's <Connect> when we close the socket; the code tells our logs why.
CLOSE_CODES = {
    EndReason.CALLER_HANGUP: 1000,
    EndReason.MAX_DURATION: 1000,
    EndReason.SERVER_SHUTDOWN: 1001,
    EndReason.PROTOCOL_ERROR: 1008,
}


class CallEnded(Exception):
    """Raised inside the call's task group to end the call for `reason`."""

    def __init__(self, reason: EndReason, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else str(reason))
        self.reason = reason
        self.detail = detail


@dataclasses.dataclass(frozen=True, slots=True)
class CallServices:
    """What the application lends each call."""

    settings: Settings
    profile_for: Callable[[twilio.Start], Profile]
    recorder: Recorder
    speech: SpeechClient


class Call:
    """Bridges one Media Stream socket (already accepted) to one Realtime session."""

    def __init__(self, websocket: WebSocket, services: CallServices) -> None:
        self._ws = websocket
        self._services = services
        extensions = websocket.scope.get("extensions") or {}
        # Served by `MediaStreamProtocol`: write frames straight to the socket when possible.
        self._send_now: Callable[..., bool] | None = extensions.get(SEND_EXTENSION)
        self._backlog: Callable[[], int] | None = extensions.get(BACKLOG_EXTENSION)
        self._set_text_handler: Callable[[TextHandler | None], None] | None = extensions.get(
            HANDLER_EXTENSION
        )
        self._loop = asyncio.get_running_loop()
        self._t0 = self._loop.time()
        self.record = CallRecord(call_sid="", stream_sid="")
        self._upstream: ClientConnection | None = None
        self._to_upstream: UpstreamWriter | None = None
        self._writer: twilio.StreamWriter | None = None
        self._profile: Profile | None = None
        self._tg: asyncio.TaskGroup | None = None
        # audio state
        self._to_model = audio.CallerToModel()
        self._to_caller = audio.ModelToCaller()
        self._framer = audio.Framer()
        self._playback = Playback(lead_ms=self._to_caller.delay_ms)
        self._passthrough = False
        # response state
        self._response_active = False
        self._response_id: str | None = None
        self._current_item: str | None = None
        self._audio_seen: set[str] = set()
        self._dropped_items: set[str] = set()
        self._dropped_responses: set[str] = set()
        self._queued_creates: list[dict[str, Any]] = []
        self._recent_creates: dict[str, dict[str, Any]] = {}
        self._guarantee = SpeechGuarantee()
        self._turns: dict[str, Turn] = {}
        self._caller_stopped_at: float | None = None  # for the response latency of the next reply
        self._response_finished = asyncio.Event()
        self._shutdown = asyncio.Event()
        self._goodbye = ""
        self._event_ids = itertools.count(1)
        self._tts_ids = itertools.count(1)

    # ---- lifecycle -----------------------------------------------------------------------------

    async def run(self) -> CallRecord:
        """Serve the call to its end; never raises except CancelledError."""
        with metrics.live_call():
            return await self._run()

    async def _run(self) -> CallRecord:
        reason, detail = EndReason.INTERNAL_ERROR, ""
        started = False
        try:
            start = await self._await_start()
            self._begin(start)
            started = True
            profile = self._profile
            assert profile is not None
            async with open_session(self._services.settings, profile.model) as upstream:
                self._upstream = upstream
                self._to_upstream = UpstreamWriter(upstream)
                await self._send_model(realtime.session_update(profile))
                if profile.greeting:
                    await self._request_response(
                        realtime.say_exactly(profile.instructions, profile.greeting)
                    )
                async with asyncio.TaskGroup() as tg:
                    self._tg = tg
                    tg.create_task(self._caller_to_model(), name="caller_to_model")
                    tg.create_task(self._model_to_caller(), name="model_to_caller")
                    tg.create_task(self._deadline(profile.max_call_seconds), name="deadline")
                    tg.create_task(self._watch_shutdown(), name="shutdown")
        except* CallEnded as group:
            ended = group.exceptions[0]
            assert isinstance(ended, CallEnded)
            reason, detail = ended.reason, ended.detail
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
            await self._finish(reason, detail, started)
        return self.record

    async def _await_start(self) -> twilio.Start:
        try:
            async with asyncio.timeout(START_TIMEOUT):
                while True:
                    message = await self._receive_message()
                    if message is None or isinstance(message, twilio.Connected):
                        continue
                    if isinstance(message, twilio.Start):
                        return message
                    self._protocol_error(f"{type(message).__name__.lower()} before start")
        except TimeoutError:
            raise CallEnded(EndReason.START_TIMEOUT, "no start message") from None

    def _begin(self, start: twilio.Start) -> None:
        try:
            profile = self._services.profile_for(start)
        except ProtocolViolation as exc:
            # An unsigned or forged stream: refuse before any Realtime session is opened.
            raise CallEnded(EndReason.PROTOCOL_ERROR, exc.detail) from None
        self._profile = profile
        self._passthrough = profile.audio_mode is AudioMode.PCMU
        if self._passthrough:
            self._playback = Playback(lead_ms=0.0)
        self._writer = twilio.StreamWriter(start.stream_sid)
        params = start.custom_parameters
        record = self.record
        record.call_sid = start.call_sid
        record.stream_sid = start.stream_sid
        record.from_number = params.get("From", "")
        record.to_number = params.get("To", "")
        record.profile, record.model, record.voice = profile.name, profile.model, profile.voice
        record.direction = params.get("Direction", "inbound") or "inbound"
        record.keep_transcripts = profile.keep_transcripts
        call_sid_var.set(start.call_sid)
        self._services.recorder.call_started(record)
        logger.info(
            "call started from %s to %s profile=%s audio=%s",
            mask_number(record.from_number),
            mask_number(record.to_number),
            profile.name,
            profile.audio_mode,
        )

    async def _finish(self, reason: EndReason, detail: str, started: bool) -> None:
        record = self.record
        record.ended_at = self._wall_now()
        record.end_reason = reason
        record.end_detail = detail
        for turn in self._turns.values():
            if turn.ended_at is None:
                turn.ended_at = self._now()
        try:
            async with asyncio.timeout(FINALISE_TIMEOUT):
                await self._close_caller(reason, detail)
        except TimeoutError:
            logger.warning("closing the Twilio socket timed out")
        metrics.call_ended(reason, record.duration)
        if started:
            self._services.recorder.call_ended(record)
        logger.info(
            "call ended reason=%s duration=%.1fs frames_in=%d frames_out=%d barge_ins=%d "
            "text_only_recoveries=%d protocol_errors=%d%s",
            reason,
            record.duration,
            record.frames_in,
            record.frames_out,
            record.barge_ins,
            record.text_only_recoveries,
            record.protocol_errors,
            f" detail={detail!r}" if detail else "",
        )

    async def _close_caller(self, reason: EndReason, detail: str) -> None:
        if self._ws.application_state is WebSocketState.DISCONNECTED:
            return
        if self._ws.client_state is WebSocketState.DISCONNECTED:
            return
        code = CLOSE_CODES.get(reason, 1011)
        with contextlib.suppress(Exception):
            await self._ws.close(code=code, reason=f"{reason}"[:120])

    @property
    def profile(self) -> Profile | None:
        """The profile the call started with (None until Twilio's `start` arrived)."""
        return self._profile

    def shutdown(self, goodbye: str = "") -> None:
        """End the call for a server shutdown, after saying `goodbye` if there is one."""
        self._goodbye = goodbye
        self._shutdown.set()

    async def _watch_shutdown(self) -> None:
        await self._shutdown.wait()
        profile = self._profile
        if self._goodbye and profile is not None:
            try:
                async with asyncio.timeout(GOODBYE_TIMEOUT):
                    await self._barge_in(by_caller=False)  # stop what plays; the goodbye is next
                    self._response_finished.clear()
                    await self._request_response(
                        realtime.say_exactly(profile.instructions, self._goodbye)
                    )
                    await self._response_finished.wait()
                    await asyncio.sleep(self._playback.remaining_seconds(self._loop.time()))
            except TimeoutError:
                logger.warning("goodbye did not finish in %.0fs", GOODBYE_TIMEOUT)
        raise CallEnded(EndReason.SERVER_SHUTDOWN, "the server is shutting down")

    async def _deadline(self, seconds: float) -> None:
        await asyncio.sleep(seconds)
        raise CallEnded(EndReason.MAX_DURATION, f"call exceeded {seconds:.0f}s")

    # ---- caller -> model -----------------------------------------------------------------------

    async def _caller_to_model(self) -> None:
        """Caller frames the protocol did not hand to `_media_now`, in order, and everything else
        the caller sends."""
        backlog = self._backlog
        set_handler = self._set_text_handler
        if set_handler is not None:
            set_handler(self._media_now)
        try:
            while True:
                message = await self._receive_message()
                if not isinstance(message, twilio.Media):
                    self._on_caller_message(message)
                    continue
                payload, frames, following = message.payload, 1, None
                if backlog is not None and backlog():
                    # Behind: frames have piled up. Send them in one append, not one each.
                    payload, frames, following = await self._gather_backlog(payload, backlog)
                timed = metrics.ADDED_LATENCY_CALLER_TO_MODEL.due()
                started = time.perf_counter() if timed else 0.0
                await self._send_model(self._append_event(payload, frames))
                if timed:  # frame parsed -> appended upstream (1 frame in SAMPLE_EVERY)
                    metrics.ADDED_LATENCY_CALLER_TO_MODEL.record(time.perf_counter() - started)
                if following is not None:
                    self._on_caller_message(following)
        finally:
            if set_handler is not None:
                set_handler(None)

    def _media_now(self, text: str) -> bool:
        """The protocol's read callback offers each caller message that would be next in line:
        a media frame is converted and appended upstream here, without waking the task. Anything
        else, or a moment when the upstream cannot take a frame at once, is left to the task.
        """
        upstream = self._to_upstream
        if upstream is None or not upstream.writable():
            return False
        try:
            message = twilio.parse_message(text)
            if not isinstance(message, twilio.Media):
                return False
            # Sampled as in the task: frame parsed -> appended upstream. A declined message
            # must not use up the sample the task will then take.
            timed = metrics.ADDED_LATENCY_CALLER_TO_MODEL.due()
            started = time.perf_counter() if timed else 0.0
            event = self._append_event(message.payload, 1)
        except Exception:  # a bad frame (or a bug): the task meets it again and deals with it
            return False
        upstream.write(event)
        if timed:
            metrics.ADDED_LATENCY_CALLER_TO_MODEL.record(time.perf_counter() - started)
        return True

    def _append_event(self, payload: bytes, frames: int) -> str:
        """`input_audio_buffer.append` for `frames` caller frames of mu-law `payload`."""
        self.record.frames_in += frames
        if self._passthrough:
            return realtime.input_audio_append(payload)
        converted = metrics.TRANSCODE_CALLER_TO_MODEL.call(self._to_model.convert, payload)
        return realtime.input_audio_append(converted)

    async def _gather_backlog(
        self, payload: bytes, backlog: Callable[[], int]
    ) -> tuple[bytes, int, twilio.TwilioMessage | None]:
        """Media frames already queued behind `payload`, joined, and how many; then the first
        other message, if that is what ended the run."""
        parts = [payload]
        while backlog() and len(parts) < MAX_FRAMES_PER_APPEND:
            message = await self._receive_message()  # queued: returns without waiting
            if not isinstance(message, twilio.Media):
                return b"".join(parts), len(parts), message
            parts.append(message.payload)
        return b"".join(parts), len(parts), None

    def _on_caller_message(self, message: twilio.TwilioMessage | None) -> None:
        if isinstance(message, twilio.Mark):
            item_id = self._playback.echoed(message.name, self._loop.time())
            turn = self._turns.get(item_id) if item_id is not None else None
            if turn is not None and not turn.interrupted:
                turn.ended_at = self._now()  # played up to here
                self._turn_updated(turn)
        elif isinstance(message, twilio.Stop):
            raise CallEnded(EndReason.CALLER_HANGUP)
        elif isinstance(message, twilio.Dtmf):
            self._event("dtmf", digit=message.digit)
        elif isinstance(message, twilio.Start):
            self._protocol_error("second start on one stream")

    async def _receive_message(self) -> twilio.TwilioMessage | None:
        """Next Twilio message; None for a bad frame (counted, logged); a disconnect ends the call.

        Reads raw ASGI messages: `iter_text()` would swallow the disconnect, and a call whose
        caller hung up would then keep its paid Realtime session open.
        """
        frame = await self._ws.receive()
        if frame["type"] == "websocket.disconnect":
            raise CallEnded(EndReason.CALLER_DISCONNECTED, f"close code {frame.get('code')}")
        text = frame.get("text")
        if text is None:
            self._protocol_error("binary frame")
            return None
        try:
            return twilio.parse_message(text)
        except ProtocolViolation as exc:
            self._protocol_error(exc.detail)
            return None

    def _protocol_error(self, detail: str) -> None:
        self.record.protocol_errors += 1
        metrics.protocol_error("twilio")
        if self.record.protocol_errors <= 5:
            logger.warning("bad Twilio message: %s", detail)
            self._event("protocol_error", detail=detail)
        if self.record.protocol_errors > MAX_PROTOCOL_ERRORS:
            raise CallEnded(EndReason.PROTOCOL_ERROR, f"{MAX_PROTOCOL_ERRORS}+ bad messages")

    # ---- model -> caller -----------------------------------------------------------------------

    async def _model_to_caller(self) -> None:
        upstream = self._upstream
        assert upstream is not None
        try:
            async for frame in upstream:
                try:
                    event = realtime.parse_server_event(frame)
                except ProtocolViolation as exc:
                    metrics.protocol_error("realtime")
                    logger.warning("bad Realtime event: %s", exc.detail)
                    self._event("upstream_protocol_error", detail=exc.detail)
                    continue
                await self._on_model_event(event)
        except ConnectionClosed as exc:
            raise _upstream_ended(exc) from None
        raise CallEnded(EndReason.UPSTREAM_CLOSED, f"code {upstream.close_code}")

    async def _on_model_event(self, event: realtime.ServerEvent) -> None:
        if isinstance(event, realtime.AudioDelta):
            await self._on_audio(event)
        elif isinstance(event, realtime.TranscriptDelta):
            turn = self._turns.get(event.item_id)
            if turn is not None and event.item_id not in self._dropped_items:
                turn.text += event.delta
                self._turn_updated(turn)
        elif isinstance(event, realtime.SpeechStarted):
            await self._barge_in()
            self._caller_stopped_at = None
            self._add_turn(Turn("caller", event.item_id, self._now()))
        elif isinstance(event, realtime.SpeechStopped):
            self._caller_stopped_at = self._loop.time()
            turn = self._turns.get(event.item_id)
            if turn is not None:
                turn.ended_at = self._now()
                self._turn_updated(turn)
        elif isinstance(event, realtime.InputTranscript):
            turn = self._turns.get(event.item_id)
            if turn is not None:
                turn.text = event.transcript
                self._turn_updated(turn)
        elif isinstance(event, realtime.ResponseCreated):
            self._response_active = True
            self._response_id = event.response_id
        elif isinstance(event, realtime.ResponseDone):
            await self._on_response_done(event)
        elif isinstance(event, realtime.ServerError):
            await self._on_error(event)

    async def _on_audio(self, delta: realtime.AudioDelta) -> None:
        if delta.item_id in self._dropped_items or delta.response_id in self._dropped_responses:
            return  # late audio of an interrupted reply: the caller must never hear it
        if delta.item_id != self._current_item:
            await self._end_item()
            self._current_item = delta.item_id
            if delta.item_id not in self._turns:
                turn = Turn("assistant", delta.item_id, self._now())
                turn.source = "reask" if self._guarantee.awaiting_reask else "model"
                self._add_turn(turn)
        if delta.response_id:
            self._audio_seen.add(delta.response_id)
        model_ms = len(delta.audio) / (8 if self._passthrough else 48)
        self._playback.received(delta.item_id, model_ms)
        self._turns[delta.item_id].audio_ms += model_ms
        latency = metrics.ADDED_LATENCY_MODEL_TO_CALLER
        timed = latency.due()
        started = time.perf_counter() if timed else 0.0
        if self._passthrough:
            ulaw = delta.audio
        else:
            ulaw = metrics.TRANSCODE_MODEL_TO_CALLER.call(self._to_caller.convert, delta.audio)
        frames = self._framer.push(ulaw)
        if frames:
            await self._play(delta.item_id, b"".join(frames))
        if timed:  # delta parsed -> its frames handed to Twilio (1 delta in SAMPLE_EVERY)
            latency.record(time.perf_counter() - started)

    async def _play(self, item_id: str, ulaw: bytes) -> None:
        """Send whole 20 ms frames followed by one mark that tells us when they were played."""
        writer = self._writer
        assert writer is not None
        now = self._loop.time()
        if self._caller_stopped_at is not None:
            # First audio of the reply: Twilio's buffer is idle, so it plays as it arrives.
            turn = self._turns.get(item_id)
            if turn is not None and turn.latency_ms is None:
                turn.latency_ms = round((now - self._caller_stopped_at) * 1000, 1)
            self._caller_stopped_at = None
        mark = self._playback.sent(item_id, len(ulaw), now)
        self.record.frames_out += len(ulaw) // audio.FRAME_BYTES
        await self._send_caller(writer.media(ulaw), writer.mark(mark))

    async def _end_item(self) -> None:
        """The current item's audio is complete: push out the filter tail and the last frame."""
        item = self._current_item
        if item is None:
            return
        self._current_item = None
        tail = b"" if self._passthrough else self._to_caller.flush()
        frames = self._framer.push(tail)
        last = self._framer.flush()
        if last:
            frames.append(last)
        if frames:
            await self._play(item, b"".join(frames))

    async def _barge_in(self, *, by_caller: bool = True) -> None:
        """The caller started talking: stop the assistant where the caller stopped hearing it.

        Also used to silence the assistant before a shutdown goodbye (`by_caller=False`: not
        counted as a barge-in).
        """
        started = time.perf_counter()
        now = self._loop.time()
        plan = self._playback.interrupt(
            now, response_active=self._response_active, current_item=self._current_item
        )
        if plan.clear:
            writer = self._writer
            assert writer is not None
            await self._send_caller(writer.clear())  # first: every ms here is heard by the caller
            if by_caller:
                metrics.barge_in(time.perf_counter() - started)
        self._to_caller.reset()
        self._framer.reset()
        self._current_item = None
        for cut in plan.truncations:
            self._dropped_items.add(cut.item_id)
            turn = self._turns.get(cut.item_id)
            if turn is not None:
                turn.interrupted = True
                turn.heard_ms = cut.audio_end_ms
                turn.ended_at = self._now()
                self._turn_updated(turn)
            if cut.item_id.startswith("tts_"):
                continue  # our own fallback speech: the model has no audio item to cut
            await self._send_model(
                realtime.item_truncate(cut.item_id, cut.audio_end_ms, event_id=self._next_id())
            )
        if plan.cancel and self._response_id is not None:
            self._dropped_responses.add(self._response_id)
            await self._send_model(realtime.response_cancel(event_id=self._next_id()))
        if by_caller and (plan.clear or plan.cancel):
            self.record.barge_ins += 1
            self._event(
                "barge_in",
                cleared=plan.clear,
                cancelled=plan.cancel,
                truncations=[dataclasses.asdict(cut) for cut in plan.truncations],
            )

    async def _on_response_done(self, done: realtime.ResponseDone) -> None:
        self._response_finished.set()
        self._response_active = False
        self._response_id = None
        if done.response_id not in self._dropped_responses:
            await self._end_item()
        self.record.add_usage(done.usage)
        audio_seen = done.response_id in self._audio_seen
        self._audio_seen.discard(done.response_id)
        self._dropped_responses.discard(done.response_id)
        if done.status == "failed":
            self._event("response_failed", response_id=done.response_id, reason=done.reason)
        action = self._guarantee.response_done(done, audio_seen=audio_seen)
        if action is not None:
            await self._recover(action.recovery, action.text, action.delete_items)
        if self._queued_creates:
            await self._send_model(self._queued_creates.pop(0))

    async def _recover(self, recovery: Recovery, text: str, delete_items: tuple[str, ...]) -> None:
        """A reply came back without audio; make sure the caller hears it anyway."""
        profile = self._profile
        assert profile is not None
        self.record.text_only_recoveries += 1
        metrics.text_only_recovery(recovery)
        logger.warning("reply came back without audio; recovering by %s", recovery)
        self._event("text_only_recovery", recovery=str(recovery), text=text[:200])
        if recovery is Recovery.GIVE_UP:
            raise CallEnded(EndReason.NO_AUDIO, "replies keep arriving without audio")
        if recovery is Recovery.REASK:
            for item_id in delete_items:
                await self._send_model(realtime.item_delete(item_id, event_id=self._next_id()))
            self._guarantee.reask_sent()
            await self._request_response(realtime.say_exactly(profile.instructions, text))
            return
        tg = self._tg
        assert tg is not None
        tg.create_task(self._speak_fallback(text, profile.voice), name="tts_fallback")

    async def _speak_fallback(self, text: str, voice: str) -> None:
        """Speak `text` through the speech endpoint as if it were an assistant item."""
        try:
            pcm = await self._services.speech.synthesize(text, voice)
        except UpstreamUnavailable as exc:
            self._guarantee.tts_failed()
            logger.error("speech fallback failed: %s", exc)
            self._event("tts_failed", detail=str(exc))
            return
        self._guarantee.tts_played()
        item_id = f"tts_{next(self._tts_ids)}"
        turn = Turn("assistant", item_id, self._now(), text=text, source="tts")
        turn.audio_ms = len(pcm) / 48
        self._add_turn(turn)
        converter, framer = audio.ModelToCaller(), audio.Framer()
        ulaw = converter.convert(pcm) + converter.flush()
        self._playback.received(item_id, len(pcm) / 48)
        frames = framer.push(ulaw)
        last = framer.flush()
        if last:
            frames.append(last)
        data = b"".join(frames)
        for offset in range(0, len(data), TTS_CHUNK_BYTES):
            if turn.interrupted:
                return
            await self._play(item_id, data[offset : offset + TTS_CHUNK_BYTES])

    async def _on_error(self, error: realtime.ServerError) -> None:
        if error.code == "response_cancel_not_active":
            # The response finished while our cancel was in flight: harmless.
            logger.debug("cancel raced the end of the response")
            return
        if error.code == "conversation_already_has_active_response":
            create = self._recent_creates.get(error.event_id or "")
            if create is not None:
                self._queued_creates.append(create)  # send it after the running response
                return
        metrics.realtime_error("server_error")
        logger.warning("Realtime error %s: %s", error.code, error.message)
        self._event("upstream_error", code=error.code, message=error.message[:300])
        if error.fatal:
            raise CallEnded(EndReason.UPSTREAM_ERROR, f"{error.code}: {error.message}")

    async def _request_response(self, instructions: str | None) -> None:
        """`response.create`, queued behind a running response instead of colliding with it."""
        event = realtime.response_create(instructions, event_id=self._next_id())
        self._recent_creates[event["event_id"]] = event
        if len(self._recent_creates) > 16:
            self._recent_creates.pop(next(iter(self._recent_creates)))
        if self._response_active:
            self._queued_creates.append(event)
        else:
            await self._send_model(event)

    # ---- I/O helpers ---------------------------------------------------------------------------

    async def _send_model(self, event: dict[str, Any] | str) -> None:
        upstream, direct = self._upstream, self._to_upstream
        assert upstream is not None
        assert direct is not None
        text = event if isinstance(event, str) else json.dumps(event)
        if direct.try_send(text):  # hot path: written at once, nothing to wait for
            return
        try:
            async with asyncio.timeout(SEND_TIMEOUT):
                await upstream.send(text)
        except ConnectionClosed as exc:
            raise _upstream_ended(exc) from None
        except TimeoutError:
            metrics.realtime_error("timeout")
            raise CallEnded(EndReason.UPSTREAM_ERROR, "Realtime stopped reading") from None

    async def _send_caller(self, *texts: str) -> None:
        if self._send_now is not None and self._send_now(*texts):
            return  # hot path: written at once, in one write
        try:
            async with asyncio.timeout(SEND_TIMEOUT):
                for text in texts:
                    await self._ws.send_text(text)
        except (WebSocketDisconnect, OSError, RuntimeError) as exc:
            raise CallEnded(EndReason.CALLER_DISCONNECTED, f"send failed: {exc!r}") from None
        except TimeoutError:
            raise CallEnded(EndReason.CALLER_DISCONNECTED, "Twilio stopped reading") from None

    def _add_turn(self, turn: Turn) -> None:
        self._turns[turn.item_id] = turn
        self.record.turns.append(turn)
        self._turn_updated(turn)

    def _turn_updated(self, turn: Turn) -> None:
        self._services.recorder.turn_updated(self.record, turn)

    def _event(self, kind: str, **detail: Any) -> None:
        event = CallEvent(at=self._now(), kind=kind, detail=detail)
        self.record.events.append(event)
        if self.record.call_sid:
            self._services.recorder.call_event(self.record, event)

    def _next_id(self) -> str:
        return f"bridge_{next(self._event_ids)}"

    def _now(self) -> float:
        """Seconds since the call started."""
        return round(self._loop.time() - self._t0, 3)

    def _wall_now(self) -> float:
        return self.record.started_at + (self._loop.time() - self._t0)


def _upstream_ended(exc: ConnectionClosed) -> CallEnded:
    """Normal closes and lost connections are UPSTREAM_CLOSED; refusals by code are errors."""
    received = exc.rcvd
    if received is None:
        return CallEnded(EndReason.UPSTREAM_CLOSED, "connection lost without a close frame")
    detail = f"code {received.code} {received.reason}".strip()
    # 1008 policy violation, 1011 server error, 4000-4999 application errors (4000: beta shape).
    if received.code in (1008, 1011) or 4000 <= received.code <= 4999:
        metrics.realtime_error("closed")
        return CallEnded(EndReason.UPSTREAM_ERROR, detail)
    return CallEnded(EndReason.UPSTREAM_CLOSED, detail)
