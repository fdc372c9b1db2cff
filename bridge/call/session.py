"""One call's decisions, Sans-I/O: what happened goes in with the time, what to do comes out.

`CallSession` has no sockets, tasks or clocks. Its shell (`bridge.call.shell`) feeds it caller
messages, model events, timers, a shutdown request and synthesised speech, each with the loop
time, and carries out the effects it returns (`bridge.call.effects`) in order. It owns:

- barge-in: `_barge_in` executes the plan `Playback.interrupt` (bargein.py) makes from what the
  caller has actually heard: clear, truncate each unheard item, cancel, drop late deltas;
- the response queue and conflict requeue (responses.py);
- the spoken-reply guarantee: re-ask, then speak the text ourselves (speech_guarantee.py);
- the goodbye on shutdown, turns, counters and the call's end.
"""

from __future__ import annotations

import collections
import dataclasses
import enum
import itertools
import json
import logging
import random
from typing import Any

from bridge import audio, metrics, realtime, twilio
from bridge.after_stream import NextStep
from bridge.call.actions import (
    HOLD_AFTER,
    HOLD_GAP,
    RECHECK,
    SHUTDOWN,
    Exit,
    Refuse,
    Run,
    ToolCalls,
    error_output,
    holding_instructions,
)
from bridge.call.bargein import Playback
from bridge.call.context import continue_instructions, resumed_instructions
from bridge.call.effects import (
    Effect,
    EndCall,
    Kind,
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
from bridge.call.recent import RecentKeys
from bridge.call.responses import ANSWER_TIMEOUT, Responses
from bridge.call.speech_guarantee import Recovery, SpeechGuarantee
from bridge.profiles import Profile
from bridge.record import KEEP_TURNS, CallEvent, CallRecord, EndReason, ToolCall, Turn
from bridge.recording.tape import Tape
from bridge.settings import AudioMode
from bridge.tools.config import KeyAction
from bridge.tools.http import ToolResult

logger = logging.getLogger(__name__)

MAX_PROTOCOL_ERRORS = 200  # past this many bad frames the peer is not Twilio: hang up
LOGGED_PROTOCOL_ERRORS = 5  # the first few are logged and kept; the rest only counted
TTS_CHUNK_BYTES = audio.FRAME_BYTES * 50  # fallback speech goes out a second at a time, each marked
GOODBYE_TIMEOUT = 15.0  # a goodbye is short; never hold the line (or the drain) longer
MARK_MARGIN = 1.0  # a played-out goodbye whose last mark never comes back ends this much later
CALLER_TIMEOUT = 5.0  # default: a Media Stream silent this long is dead (BRIDGE_CALLER_TIMEOUT_...)
BACKOFF_FIRST = 0.1  # reconnect attempts: at once, then 0.1 s, 0.2 s, ... (with jitter)
BACKOFF_MAX = 1.0
ROLLOVER_LEAD = 120.0  # a session this close to its maximum age moves at the first quiet moment
ROLLOVER_MARGIN = 10.0  # ...and this close, at once, quiet or not
ROLLOVER_RETRY = 5.0  # a next session that could not be opened is tried again this much later
KEEP_CUT_ITEMS = 16  # a late delta comes within moments of its cut, never 16 cuts later
MAX_LOSSES = 4  # sessions lost within LOSS_WINDOW: past this, reconnecting is given up
LOSS_WINDOW = 60.0
RECENT_LOSS = 10.0  # a loss this soon after another reconnects after a backoff, not at once
DIGIT_GAP = 2.0  # a run of keypad digits ends with `#` or this long without another key
KEYS = frozenset("0123456789*#")


class Closing(enum.Enum):
    """Where the end of a call stands (a shutdown, `end_call`, a transfer): not asked, saying
    goodbye, letting the goodbye play out."""

    NO = "no"
    GOODBYE = "goodbye"
    PLAYING_OUT = "playing_out"


class CallSession:
    """Every decision of one call, from `start` to its end. Not thread-safe; no I/O."""

    def __init__(
        self,
        start: twilio.Start,
        profile: Profile,
        record: CallRecord,
        *,
        now: float,
        caller_timeout: float = CALLER_TIMEOUT,
        tape: Tape | None = None,
    ) -> None:
        self.profile = profile
        self.record = record
        self.tape = tape  # the call as the caller heard it, when it is recorded
        self._t0 = now
        self._passthrough = profile.audio_mode is AudioMode.PCMU
        self._stream = twilio.StreamWriter(start.stream_sid)
        self._to_model = audio.CallerToModel()
        self._to_caller = audio.ModelToCaller()
        self._framer = audio.Framer()
        self._playback = Playback(lead_ms=0.0 if self._passthrough else self._to_caller.delay_ms)
        self._model_bytes_per_ms = 8 if self._passthrough else 48
        self._responses = Responses()
        self._current_item: str | None = None
        self._audio_seen: set[str] = set()  # responses whose audio deltas reached us
        # Items a barge-in cut, the most recent few: their late deltas are dropped.
        self._dropped_items = RecentKeys(KEEP_CUT_ITEMS)
        self._guarantee = SpeechGuarantee()
        self._speaking: set[int] = set()  # speech requests not yet answered
        self._turns: dict[str, Turn] = {}
        self._caller_stopped_at: float | None = None  # for the next reply's latency
        self._digits = ""  # keypad digits of the run in progress
        self._digits_until = 0.0
        self._deadline = now + profile.max_call_seconds
        self._closing = Closing.NO
        self._exit = SHUTDOWN  # how a closing call ends
        self._exits: dict[str, Exit] = {}  # response id -> the end its tool call asked for
        self._tools = ToolCalls(profile.tools, record)
        self._mcp_started: dict[str, float] = {}  # MCP call item -> when the service began it
        self._caller_speaking = False
        self._goodbye_until = 0.0
        self._played_out_at = 0.0
        self._ended = False
        self._event_ids = itertools.count(1)
        self._speech_ids = itertools.count(1)
        # A silent Media Stream: frames counted at each check, the last time they moved.
        self._caller_timeout = caller_timeout
        self._caller_seen_at = now
        self._caller_check_at = 0.0
        self._frames_seen = 0
        # The model's session: lost since when and why, the budget to get a new one.
        self._opened = False
        self._down_since: float | None = None
        self._down_reason = ""
        self._reconnect_until = 0.0
        self._attempts = 0
        self._cut_off = ""  # the reply a lost session was saying, finished by the next one
        self._orphans: set[str] = set()  # tool calls of a lost session, still running
        self._losses: collections.deque[float] = collections.deque()  # when sessions were lost
        self._session_since = now  # when the current model session opened
        self._rolling = False  # a next session is being opened beside the current one
        _fill_record(record, start, profile)

    # ---- inputs --------------------------------------------------------------------------------

    def connected(self, now: float) -> list[Effect]:
        """A model session is open: the first (`open`), or one taking over the call."""
        out = self.open(now) if not self._opened else self._resume(now)
        self._session_since = now
        self._rolling = False
        out.append(Wake(now + self._rollover_from()))
        return out

    def rollover_failed(self, detail: str, now: float) -> list[Effect]:
        """The next session could not be opened: the current one carries on; try again."""
        if self._ended:
            return []
        self._rolling = False
        logger.warning("opening the next Realtime session failed: %s", detail)
        out: list[Effect] = [Wake(now + ROLLOVER_RETRY)]
        self._note(out, now, "rollover_failed", detail=detail[:300])
        return out

    def open(self, now: float) -> list[Effect]:
        """The model's socket is open: configure the session, greet, arm the call's deadline."""
        self._opened = True
        out: list[Effect] = [ToModel(realtime.session_update(self.profile)), Wake(self._deadline)]
        self._check_caller(out, now)
        if self._down_since is not None:  # the first session took retries to open
            self._note_reconnected(out, now)
        if self.profile.greeting:
            self._request_response(out, now, self.profile.greeting)
        return out

    def caller_audio(self, payload: bytes, frames: int) -> str:
        """Hot path: `frames` caller frames of mu-law -> the `input_audio_buffer.append` text.

        Counted only once converted, so a frame that fails here and is retried counts once.
        """
        if self.tape is not None:
            self.tape.caller(payload)
        if self._passthrough:
            event = realtime.input_audio_append(payload)
        else:
            pcm = metrics.TRANSCODE_CALLER_TO_MODEL.call(self._to_model.convert, payload)
            event = realtime.input_audio_append(pcm)
        self.record.frames_in += frames
        return event

    def caller_message(self, message: twilio.TwilioMessage, now: float) -> list[Effect]:
        """Anything but media from Twilio: mark echoes, DTMF, the stream's stop."""
        if self._ended:
            return []
        self._caller_seen_at = now
        out: list[Effect] = []
        if isinstance(message, twilio.Mark):
            item_id = self._playback.echoed(message.name, now)
            turn = self._turns.get(item_id) if item_id is not None else None
            if turn is not None and not turn.interrupted:
                turn.ended_at = self._at(now)  # played up to here
                out.append(TurnChanged(turn))
            if self._closing is Closing.PLAYING_OUT and not self._playback.playing:
                self._end_as_closing(out)  # the goodbye's last mark: the caller heard it all
        elif isinstance(message, twilio.Stop):
            self._end(out, EndReason.CALLER_HANGUP)
        elif isinstance(message, twilio.Dtmf):
            self._on_key(out, message.digit, now)
        elif isinstance(message, twilio.Start):
            self.protocol_error("second start on one stream", now, out)
        return out

    def protocol_error(
        self, detail: str, now: float, out: list[Effect] | None = None
    ) -> list[Effect]:
        """A Twilio message we could not use: counted, the first few kept; too many end the call."""
        out = [] if out is None else out
        if self._ended:
            return out
        if count_protocol_error(self.record, detail):
            self._note(out, now, "protocol_error", detail=detail)
        if self.record.protocol_errors > MAX_PROTOCOL_ERRORS:
            self._end(out, EndReason.PROTOCOL_ERROR, f"{MAX_PROTOCOL_ERRORS}+ bad messages")
        return out

    def model_protocol_error(self, detail: str, now: float) -> list[Effect]:
        """A model event we could not parse: kept, and the call carries on."""
        metrics.protocol_error("realtime")
        logger.warning("bad Realtime event: %s", detail)
        out: list[Effect] = []
        self._note(out, now, "upstream_protocol_error", detail=detail)
        return out

    def model_event(self, event: realtime.ServerEvent, now: float) -> list[Effect]:
        if self._ended:
            return []
        out: list[Effect] = []
        if isinstance(event, realtime.AudioDelta):
            self._on_audio(out, event, now)
        elif isinstance(event, realtime.TranscriptDelta):
            turn = self._turns.get(event.item_id)
            if turn is not None and event.item_id not in self._dropped_items:
                turn.text += event.delta
                out.append(TurnChanged(turn))
        elif isinstance(event, realtime.SpeechStarted):
            if self._closing is Closing.NO:  # a goodbye is not interrupted
                self._barge_in(out, now, by_caller=True)
            self._caller_speaking = True
            self._caller_stopped_at = None
            self._add_turn(out, Turn("caller", event.item_id, self._at(now)))
        elif isinstance(event, realtime.SpeechStopped):
            self._caller_speaking = False
            self._caller_stopped_at = now
            turn = self._turns.get(event.item_id)
            if turn is not None:
                turn.ended_at = self._at(now)
                out.append(TurnChanged(turn))
        elif isinstance(event, realtime.InputTranscript):
            turn = self._turns.get(event.item_id)
            if turn is not None:
                turn.text = event.transcript
                out.append(TurnChanged(turn))
        elif isinstance(event, realtime.ResponseCreated):
            ours = self._responses.created(event.response_id, event.request)
            if not ours and self._closing is not Closing.NO:
                # The caller spoke during the goodbye and server VAD started a reply: not now.
                self._responses.drop_running()
                out.append(ToModel(realtime.response_cancel(event_id=self._next_id())))
        elif isinstance(event, realtime.ResponseDone):
            self._on_response_done(out, event, now)
        elif isinstance(event, realtime.FunctionCall):
            self._on_function_call(out, event, now)
        elif isinstance(event, realtime.McpCallStarted):
            self._mcp_started[event.item_id] = now
        elif isinstance(event, realtime.McpCallDone):
            self._on_mcp_call(out, event, now)
        elif isinstance(event, realtime.McpToolsListed):
            self._on_mcp_tools(out, event, now)
        elif isinstance(event, realtime.ServerError):
            self._on_error(out, event, now)
        self._maybe_goodbye_heard(out, now)
        return out

    def timer(self, now: float) -> list[Effect]:
        """A `Wake` came due: the call's deadline, the goodbye's, or the goodbye played out."""
        if self._ended:
            return []
        out: list[Effect] = []
        if not self._check_caller(out, now):
            self._end(
                out,
                EndReason.CALLER_TIMEOUT,
                f"no message from Twilio for {self._caller_timeout:g}s",
            )
        elif self._down_since is not None and now >= self._reconnect_until:
            self._give_up(out, now, self._down_reason)
        elif self._rollover_due(out, now):
            self._rolling = True
            age = now - self._session_since
            self._note(out, now, "session_rollover", age_s=round(age, 1))
            out.append(Rollover())
        elif now >= self._deadline:
            self._end(
                out, EndReason.MAX_DURATION, f"call exceeded {self.profile.max_call_seconds:.0f}s"
            )
        elif self._closing is Closing.PLAYING_OUT and now >= self._played_out_at:
            self._end_as_closing(out)
        elif self._closing is not Closing.NO and now >= self._goodbye_until:
            logger.warning("goodbye did not finish in %.0fs", GOODBYE_TIMEOUT)
            self._end_as_closing(out)
        else:
            if self._digits and now >= self._digits_until:
                self._send_digits(out, now)
            expired, following = self._responses.expire(now)
            for event_id in expired:
                logger.warning("response.create %s went unanswered; sending what waits", event_id)
                self._note(out, now, "response_request_unanswered", event_id=event_id)
            self._send_create(out, now, following)
            self._check_hold(out, now)
            self._maybe_goodbye_heard(out, now)
        return out

    def shutdown(self, goodbye: str, now: float) -> list[Effect]:
        """End the call for a server shutdown, after saying `goodbye` if there is one.

        Whatever plays is stopped (not counted as a barge-in); the goodbye is asked for behind a
        running response, and the call ends once it has been heard, or at `GOODBYE_TIMEOUT`.
        """
        out: list[Effect] = []
        if self._ended or self._closing is not Closing.NO:
            return out
        if not goodbye:
            self._end(out, EndReason.SERVER_SHUTDOWN, "the server is shutting down")
            return out
        self._closing = Closing.GOODBYE
        self._exit = SHUTDOWN
        self._goodbye_until = now + GOODBYE_TIMEOUT
        out.append(Wake(self._goodbye_until))
        self._barge_in(out, now, by_caller=False)
        self._request_response(out, now, goodbye)
        return out

    def upstream_lost(self, detail: str, now: float) -> list[Effect]:
        """The model's session closed or failed (not by us): get a new one within the
        profile's `reconnect_seconds`, keeping the caller on the line. A goodbye already
        with Twilio plays out; a goodbye not yet said is given up."""
        out: list[Effect] = []
        if self._ended or self._down_since is not None:
            return out
        if self._closing is Closing.PLAYING_OUT:
            return out  # the timer (or the last mark) ends the call
        if self._closing is Closing.GOODBYE:
            self._end_as_closing(out)
            return out
        losses = self._losses
        while losses and losses[0] <= now - LOSS_WINDOW:
            losses.popleft()
        losses.append(now)
        self._note(out, now, "upstream_lost", detail=detail[:300])
        if len(losses) > MAX_LOSSES:
            self._give_up(out, now, f"{len(losses)} sessions lost within {LOSS_WINDOW:g}s")
            return out
        logger.warning("Realtime session lost (%s); reconnecting", detail)
        self._down_since = now
        self._down_reason = detail
        self._attempts = 0
        self._reconnect_until = now + self.profile.reconnect_seconds
        self._cut_off = self._speaking_text() if self._responses.active else ""
        self._forget_model(out, now)
        out.append(Wake(self._reconnect_until))
        # A session that keeps dropping is not hammered: a loss soon after another waits.
        recent = sum(1 for at in losses if at > now - RECENT_LOSS)
        delay = 0.0 if recent == 1 else BACKOFF_FIRST * 2 ** (recent - 2)
        out.append(Reconnect(min(BACKOFF_MAX, delay)))
        return out

    def reconnect_failed(self, detail: str, now: float, *, refused: bool = False) -> list[Effect]:
        """A new session could not be opened: try again (backing off, with jitter) while the
        budget lasts; a refusal (the key, the quota) or an empty budget ends the call with the
        profile's fallback."""
        out: list[Effect] = []
        if self._ended:
            return out
        if self._down_since is None:  # the first session of the call
            self._down_since, self._down_reason = now, detail
            self._reconnect_until = now + self.profile.reconnect_seconds
            out.append(Wake(self._reconnect_until))
        self._attempts += 1
        self._down_reason = detail
        delay = min(BACKOFF_MAX, BACKOFF_FIRST * 2 ** (self._attempts - 1))
        delay *= random.uniform(0.5, 1.0)  # jitter: calls that lost one service spread out
        if refused:
            self._give_up(out, now, detail, EndReason.UPSTREAM_REJECTED)
        elif now >= self._reconnect_until:
            self._give_up(out, now, detail)
        else:  # the budget's timer gives up if this attempt is not back in time
            out.append(Reconnect(min(delay, self._reconnect_until - now)))
        return out

    def tool_done(self, call_id: str, result: ToolResult, now: float) -> list[Effect]:
        """An HTTP tool answered (or failed): its output goes to the model, and once no tool
        runs any more, a spoken reply is asked for."""
        running = self._tools.running.get(call_id)
        if self._ended or running is None:
            return []
        error = "" if result.ok else result.error
        call = self._tools.finish(
            running.call, self._at(now), ok=result.ok, result=result.output, error=error
        )
        out: list[Effect] = [ToolCallChanged(call)]
        if call_id in self._orphans:  # asked of a session since lost: the new one is told
            self._orphans.discard(call_id)
            text = f"(The {call.name} lookup you started before the interruption returned: "
            output = realtime.system_text(text + result.output + ")", event_id=self._next_id())
        else:
            output = realtime.function_call_output(call_id, result.output, event_id=self._next_id())
        out.append(ToModel(output))
        if not self._tools.running and self._closing is Closing.NO:
            self._request_response(out, now)
        return out

    def speech_ready(self, request: int, pcm: bytes, text: str, now: float) -> list[Effect]:
        """Fallback speech came back (24 kHz PCM16): play it as if it were an assistant item."""
        if self._ended:
            return []
        self._speaking.discard(request)
        self._guarantee.tts_played()
        out: list[Effect] = []
        item_id = f"tts_{request}"
        model_ms = len(pcm) / 48
        turn = Turn("assistant", item_id, self._at(now), text=text, source="tts")
        turn.audio_ms = model_ms
        self._add_turn(out, turn)
        converter, framer = audio.ModelToCaller(), audio.Framer()
        frames = framer.push(converter.convert(pcm) + converter.flush())
        last = framer.flush()
        if last:
            frames.append(last)
        data = b"".join(frames)
        self._playback.received(item_id, model_ms)
        for offset in range(0, len(data), TTS_CHUNK_BYTES):
            self._play(out, item_id, data[offset : offset + TTS_CHUNK_BYTES], now)
        self._maybe_goodbye_heard(out, now)
        return out

    def speech_failed(self, request: int, detail: str, now: float) -> list[Effect]:
        if self._ended:
            return []
        self._speaking.discard(request)
        self._guarantee.tts_failed()
        logger.error("speech fallback failed: %s", detail)
        out: list[Effect] = []
        self._note(out, now, "tts_failed", detail=detail)
        self._maybe_goodbye_heard(out, now)
        return out

    def finish(self, now: float) -> list[Effect]:
        """The call is over: close the turns still open; tools still running are cancelled."""
        self._ended = True
        for turn in self._turns.values():
            if turn.ended_at is None:
                turn.ended_at = self._at(now)
        return [ToolCallChanged(call) for call in self._tools.cancel_running(self._at(now))]

    # ---- model -> caller -----------------------------------------------------------------------

    def _on_audio(self, out: list[Effect], delta: realtime.AudioDelta, now: float) -> None:
        if delta.item_id in self._dropped_items or delta.response_id in self._responses.dropped:
            return  # late audio of an interrupted reply: the caller must never hear it
        if delta.item_id != self._current_item:
            self._end_item(out, now)
            self._current_item = delta.item_id
            if delta.item_id not in self._turns:
                turn = Turn("assistant", delta.item_id, self._at(now))
                turn.source = "reask" if self._guarantee.awaiting_reask else "model"
                self._add_turn(out, turn)
        if delta.response_id:
            self._audio_seen.add(delta.response_id)
        model_ms = len(delta.audio) / self._model_bytes_per_ms
        self._playback.received(delta.item_id, model_ms)
        self._turns[delta.item_id].audio_ms += model_ms
        if self._passthrough:
            ulaw = delta.audio
        else:
            ulaw = metrics.TRANSCODE_MODEL_TO_CALLER.call(self._to_caller.convert, delta.audio)
        frames = self._framer.push(ulaw)
        if frames:
            self._play(out, delta.item_id, b"".join(frames), now)

    def _play(self, out: list[Effect], item_id: str, ulaw: bytes, now: float) -> None:
        """Whole 20 ms frames, then one mark that tells us when Twilio has played them."""
        if self._caller_stopped_at is not None:
            # First audio of the reply: Twilio's buffer is idle, so it plays as it arrives.
            turn = self._turns.get(item_id)
            if turn is not None and turn.latency_ms is None:
                turn.latency_ms = round((now - self._caller_stopped_at) * 1000, 1)
            self._caller_stopped_at = None
        mark = self._playback.sent(item_id, len(ulaw), now)
        self.record.frames_out += len(ulaw) // audio.FRAME_BYTES
        if self.tape is not None:
            self.tape.assistant(ulaw)
        out.append(ToCaller((self._stream.media(ulaw), self._stream.mark(mark))))

    def _end_item(self, out: list[Effect], now: float) -> None:
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
            self._play(out, item, b"".join(frames), now)

    # ---- barge-in ------------------------------------------------------------------------------

    def _barge_in(self, out: list[Effect], now: float, *, by_caller: bool) -> None:
        """Stop the assistant where the caller stopped hearing it: `clear` first (every
        millisecond before it is heard), then truncate each unheard item at what was heard,
        cancel a running response, and drop its late deltas. `by_caller=False` silences the
        assistant for a goodbye (not counted as a barge-in)."""
        plan = self._playback.interrupt(
            now, response_active=self._responses.active, current_item=self._current_item
        )
        if plan.clear:
            out.append(ToCaller((self._stream.clear(),), Kind.CLEAR))
            if self.tape is not None:
                self.tape.clear()
        self._to_caller.reset()
        self._framer.reset()
        self._current_item = None
        for cut in plan.truncations:
            self._dropped_items.add(cut.item_id)
            turn = self._turns.get(cut.item_id)
            if turn is not None:
                turn.interrupted = True
                turn.heard_ms = cut.audio_end_ms
                turn.ended_at = self._at(now)
                out.append(TurnChanged(turn))
            if cut.item_id.startswith("tts_"):
                continue  # our own fallback speech: the model has no audio item to cut
            truncate = realtime.item_truncate(
                cut.item_id, cut.audio_end_ms, event_id=self._next_id()
            )
            out.append(ToModel(truncate))
        cancelled = plan.cancel and self._responses.drop_running()
        if cancelled:
            out.append(ToModel(realtime.response_cancel(event_id=self._next_id())))
        if by_caller and (plan.clear or plan.cancel):
            self.record.barge_ins += 1
            self._note(
                out,
                now,
                "barge_in",
                cleared=plan.clear,
                cancelled=plan.cancel,
                truncations=[dataclasses.asdict(cut) for cut in plan.truncations],
            )

    # ---- responses and the spoken-reply guarantee ----------------------------------------------

    def _request_response(
        self,
        out: list[Effect],
        now: float,
        say: str | None = None,
        *,
        instructions: str | None = None,
        tools: bool = True,
    ) -> None:
        """`response.create` (saying `say` exactly, if given), queued behind a running one."""
        if say:
            instructions = realtime.say_exactly(self.profile.instructions, say)
        create = realtime.response_create(instructions, event_id=self._next_id(), tools=tools)
        self._send_create(out, now, self._responses.request(create, now))

    def _send_create(self, out: list[Effect], now: float, create: dict[str, Any] | None) -> None:
        """Send a `response.create` the queue released, and check back if it goes unanswered."""
        if create is not None:
            out.append(ToModel(create))
            out.append(Wake(now + ANSWER_TIMEOUT))

    def _on_response_done(self, out: list[Effect], done: realtime.ResponseDone, now: float) -> None:
        for call in done.function_calls:  # seen already in output_item.done, unless skipped
            self._on_function_call(out, call, now)
        dropped = done.response_id in self._responses.dropped
        following = self._responses.done(done.response_id, now)
        if not dropped:
            self._end_item(out, now)
        self.record.add_usage(done.usage)
        audio_seen = done.response_id in self._audio_seen
        self._audio_seen.discard(done.response_id)
        if done.status == "failed":
            self._note(
                out, now, "response_failed", response_id=done.response_id, reason=done.reason
            )
        action = self._guarantee.response_done(done, audio_seen=audio_seen)
        if action is not None:
            self._recover(out, now, action.recovery, action.text, action.delete_items)
        self._send_create(out, now, following)
        exit_ = self._exits.pop(done.response_id, None)
        if exit_ is not None:
            self._close_for(out, now, exit_, interrupted=dropped or done.status == "cancelled")

    def _recover(
        self,
        out: list[Effect],
        now: float,
        recovery: Recovery,
        text: str,
        delete_items: tuple[str, ...],
    ) -> None:
        """A reply came back without audio; make sure the caller hears it anyway."""
        self.record.text_only_recoveries += 1
        metrics.text_only_recovery(recovery)
        logger.warning("reply came back without audio; recovering by %s", recovery)
        self._note(out, now, "text_only_recovery", recovery=str(recovery), text=text[:200])
        if recovery is Recovery.GIVE_UP:
            self._end(out, EndReason.NO_AUDIO, "replies keep arriving without audio")
        elif recovery is Recovery.REASK:
            for item_id in delete_items:
                out.append(ToModel(realtime.item_delete(item_id, event_id=self._next_id())))
            self._guarantee.reask_sent()
            self._request_response(out, now, text)
        else:
            request = next(self._speech_ids)
            self._speaking.add(request)
            out.append(Synthesize(request, text, self.profile.voice))

    def _on_error(self, out: list[Effect], error: realtime.ServerError, now: float) -> None:
        if error.code == "response_cancel_not_active":
            logger.debug("cancel raced the end of the response")  # harmless
            return
        conflict = error.code == "conversation_already_has_active_response"
        if self._responses.is_ours(error.event_id):
            following = self._responses.refused(error.event_id, now, conflict=conflict)
            self._send_create(out, now, following)
            if conflict:
                return  # sent again after the running response
        metrics.realtime_error("server_error")
        logger.warning("Realtime error %s: %s", error.code, error.message)
        self._note(out, now, "upstream_error", code=error.code, message=error.message[:300])
        if error.renewable:  # the session reached its maximum duration: a new one goes on
            out.extend(self.upstream_lost(f"{error.code}: {error.message}", now))
        elif error.fatal:  # the key, the quota: no session will do; the fallback takes over
            detail = f"{error.code}: {error.message}"
            self._end(out, EndReason.UPSTREAM_ERROR, detail, self.profile.fallback.next_step())

    # ---- tools and actions ----------------------------------------------------------------------

    def _on_function_call(self, out: list[Effect], fc: realtime.FunctionCall, now: float) -> None:
        """The model called a function: hang up or transfer once its reply is heard, run an
        HTTP tool, or refuse with an error output (the model then tells the caller)."""
        kind = self._tools.kind_of(fc.name)
        call = self._tools.begin(fc.call_id, fc.name, kind, fc.arguments, self._at(now))
        if call is None:
            return  # seen in output_item.done, and again in response.done: runs once
        out.append(ToolCallChanged(call))
        if self._closing is not Closing.NO:
            self._tool_refused(out, now, call, "the call is ending", reply=False)
            return
        decision = self._tools.decide(call, fc.arguments)
        if isinstance(decision, Refuse):
            self._tool_refused(out, now, call, decision.message)
        elif isinstance(decision, Run):
            self._tools.started(call, now)
            out.append(RunTool(fc.call_id, decision.tool, decision.arguments))
            out.append(Wake(now + HOLD_AFTER))
        else:
            self._exits[fc.response_id] = decision.exit

    def _tool_refused(
        self, out: list[Effect], now: float, call: ToolCall, message: str, *, reply: bool = True
    ) -> None:
        """An error output for the model, and a reply asked for, so the caller hears about it
        (once no other tool is still running: their outputs bring the reply)."""
        self._tools.finish(call, self._at(now), ok=False, error=message)
        out.append(ToolCallChanged(call))
        output = realtime.function_call_output(
            call.call_id, error_output(message), event_id=self._next_id()
        )
        out.append(ToModel(output))
        if reply and not self._tools.running:
            self._request_response(out, now)

    def _close_for(self, out: list[Effect], now: float, exit_: Exit, *, interrupted: bool) -> None:
        """The reply that called end_call or transfer_call is complete: let its last words
        play out, then end. If the caller talked over it, the call goes on instead."""
        call = exit_.call
        assert call is not None
        if interrupted or self._closing is not Closing.NO:
            why = "the caller interrupted; the call goes on"
            if self._closing is not Closing.NO:
                why = "the call is already ending"
            self._tools.finish(call, self._at(now), ok=False, error=why)
            out.append(ToolCallChanged(call))
            output = realtime.function_call_output(
                call.call_id, error_output(why), event_id=self._next_id()
            )
            out.append(ToModel(output))
            return
        result = {"ok": True} | ({"destination": exit_.destination} if exit_.destination else {})
        self._tools.finish(call, self._at(now), ok=True, result=json.dumps(result))
        out.append(ToolCallChanged(call))
        # The output keeps the conversation whole; no reply is asked for: the call is ending.
        output = realtime.function_call_output(
            call.call_id, json.dumps(result), event_id=self._next_id()
        )
        out.append(ToModel(output))
        self._closing = Closing.GOODBYE
        self._set_exit(exit_)
        self._goodbye_until = now + GOODBYE_TIMEOUT
        out.append(Wake(self._goodbye_until))
        self._maybe_goodbye_heard(out, now)

    def _key_action(self, out: list[Effect], key: str, action: KeyAction, now: float) -> None:
        """A keypad key bound to an action acts at once: whatever plays stops, the call ends."""
        exit_ = self._tools.key_exit(key, action, self._at(now))
        assert exit_.call is not None
        out.append(ToolCallChanged(exit_.call))
        self._barge_in(out, now, by_caller=False)
        self._set_exit(exit_)
        self._end_as_closing(out)

    def _set_exit(self, exit_: Exit) -> None:
        self._exit = exit_
        self._tools.exiting(exit_)

    def _check_hold(self, out: list[Effect], now: float) -> None:
        """A tool still running after HOLD_AFTER: ask for a short holding phrase, so the caller
        is never left in silence. Not while the caller talks or hears something already: then
        look again later (once the audio they hear has played out, HOLD_GAP after it)."""
        if self._closing is not Closing.NO or not self._tools.holding_due(now):
            return
        if self._caller_speaking or not self._responses.idle:
            self._tools.postpone_hold(now + RECHECK)
            out.append(Wake(now + RECHECK))
            return
        remaining = self._playback.remaining_seconds(now)
        if remaining > 0:
            until = now + remaining + HOLD_GAP
            self._tools.postpone_hold(until)
            out.append(Wake(until))
            return
        calls = self._tools.holding()
        metrics.HOLDING_PHRASES.inc()
        self._note(out, now, "holding_phrase", tools=[call.name for call in calls])
        out.extend(ToolCallChanged(call) for call in calls)
        self._request_response(
            out, now, instructions=holding_instructions(self.profile.instructions), tools=False
        )

    def _on_mcp_call(self, out: list[Effect], done: realtime.McpCallDone, now: float) -> None:
        """The Realtime service ran an MCP tool inside a response: recorded like ours."""
        started = self._mcp_started.pop(done.item_id, now)
        call = self._tools.begin(done.item_id, done.name, "mcp", done.arguments, self._at(started))
        if call is None:
            return
        self._tools.finish(
            call, self._at(now), ok=not done.error, result=done.output, error=done.error
        )
        out.append(ToolCallChanged(call))

    def _on_mcp_tools(self, out: list[Effect], listed: realtime.McpToolsListed, now: float) -> None:
        if listed.failed:
            logger.warning("an MCP server's tools could not be listed (item %s)", listed.item_id)
            self._note(out, now, "mcp_list_tools_failed", item_id=listed.item_id)
        else:
            self._note(
                out,
                now,
                "mcp_tools_listed",
                server_label=listed.server_label,
                tools=list(listed.tools),
            )

    # ---- keypad --------------------------------------------------------------------------------

    def _on_key(self, out: list[Effect], key: str, now: float) -> None:
        """A run of digits (ended by `#` or `DIGIT_GAP` without a key) reaches the model as one
        user message, then a response is asked for: "enter your number, then pound" works."""
        if key not in KEYS:
            self.protocol_error(f"dtmf digit {key!r:.10}", now, out)
            return
        self._note(out, now, "dtmf", digit=key)
        if self._closing is not Closing.NO:
            return  # saying goodbye: nothing more is asked of the model
        action = self.profile.tools.keypad.get(key)
        if action is not None:
            self._digits = ""  # a key that acts ends any run of digits unsent
            self._key_action(out, key, action, now)
            return
        if key == "#":
            self._send_digits(out, now)
            return
        self._digits += key
        self._digits_until = now + DIGIT_GAP
        out.append(Wake(self._digits_until))

    def _send_digits(self, out: list[Effect], now: float) -> None:
        digits, self._digits = self._digits, ""
        if digits:
            text = f"(The caller pressed these keys on the phone keypad: {digits})"
            out.append(ToModel(realtime.user_text(text, event_id=self._next_id())))
            self._request_response(out, now)

    # ---- goodbye -------------------------------------------------------------------------------

    def _maybe_goodbye_heard(self, out: list[Effect], now: float) -> None:
        """Once the goodbye (and any recovery of it) has been sent, let Twilio play it out."""
        if self._closing is not Closing.GOODBYE or self._ended:
            return
        if not self._responses.idle or self._speaking or self._guarantee.awaiting_reask:
            return
        self._closing = Closing.PLAYING_OUT
        if not self._playback.playing:
            self._end_as_closing(out)  # nothing left to hear
            return
        # Ends when the last mark comes back; this is the bound if it never does.
        self._played_out_at = now + self._playback.remaining_seconds(now) + MARK_MARGIN
        out.append(Wake(self._played_out_at))

    # ---- the model's session: lost, resumed, given up; a silent caller ------------------------

    def _resume(self, now: float) -> list[Effect]:
        """A new session takes the call over: it learns the conversation so far from its
        instructions (never as assistant text items) and finishes a reply the loss cut off."""
        out: list[Effect] = []
        base = self.profile.instructions
        instructions = resumed_instructions(base, self.record.turns)
        out.append(ToModel(realtime.session_update(self.profile, instructions)))
        if self._down_since is not None:
            self._note_reconnected(out, now)
        cut_off, self._cut_off = self._cut_off, ""
        if cut_off and self._closing is Closing.NO:
            self._request_response(
                out, now, instructions=continue_instructions(instructions, cut_off)
            )
        return out

    def _rollover_from(self) -> float:
        """Session age from which to look for a quiet moment to move to the next session."""
        cap = self.profile.session_max_seconds
        return max(0.0, cap - min(ROLLOVER_LEAD, cap * 0.2))

    def _rollover_due(self, out: list[Effect], now: float) -> bool:
        """The current session nears its maximum age: move at a quiet moment (no reply
        running or playing, the caller silent, no tool running), at the latest
        ROLLOVER_MARGIN before the cap. Not while closing or reconnecting."""
        if self._rolling or self._down_since is not None or self._closing is not Closing.NO:
            return False
        age = now - self._session_since
        if age < self._rollover_from():
            return False
        cap = self.profile.session_max_seconds
        quiet = (
            self._responses.idle
            and not self._caller_speaking
            and not self._tools.running
            and not self._speaking
            and self._playback.remaining_seconds(now) <= 0
        )
        # Past the margin, quiet or not; a reply still being generated is let finish first
        # (what Twilio already has plays on), unless the cap itself has come.
        late = age >= cap - min(ROLLOVER_MARGIN, cap * 0.05) and self._responses.idle
        if quiet or late or age >= cap:
            return True
        out.append(Wake(now + RECHECK))
        return False

    def _note_reconnected(self, out: list[Effect], now: float) -> None:
        assert self._down_since is not None
        waited = now - self._down_since
        metrics.RECONNECTS.labels(outcome="reconnected").inc()
        metrics.RECONNECT_GAP.observe(waited)
        logger.info("Realtime session back after %.0f ms", waited * 1000)
        self._note(
            out,
            now,
            "reconnected",
            reason=self._down_reason[:300],
            waited_ms=round(waited * 1000),
            attempts=self._attempts + 1,
        )
        self._down_since = None

    def _give_up(
        self,
        out: list[Effect],
        now: float,
        detail: str,
        reason: EndReason = EndReason.UPSTREAM_FAILED,
    ) -> None:
        """No model session: end the stream, and Twilio plays the profile's fallback."""
        metrics.RECONNECTS.labels(outcome="failed").inc()
        budget = self.profile.reconnect_seconds
        if reason is EndReason.UPSTREAM_FAILED and self._down_since is not None:
            detail = f"no Realtime session within {budget:g}s: {detail}"
        self._end(out, reason, detail, self.profile.fallback.next_step())

    def _forget_model(self, out: list[Effect], now: float) -> None:
        """The lost session's state means nothing to the next one. What Twilio already has
        plays on; the converted tail of the last reply goes out too."""
        self._end_item(out, now)
        self._responses = Responses()
        self._guarantee = SpeechGuarantee()
        self._audio_seen.clear()
        self._exits.clear()
        self._mcp_started.clear()
        self._caller_speaking = False
        self._orphans.update(self._tools.running)

    def _speaking_text(self) -> str:
        """What the assistant has said of the reply in progress (its transcript so far)."""
        for turn in reversed(self.record.turns):
            if turn.role == "assistant":
                return turn.text.strip()
        return ""

    def _check_caller(self, out: list[Effect], now: float) -> bool:
        """Whether Twilio is still sending (media every 20 ms); checked on the timer, from the
        frame count, so the hot path reads no clock."""
        frames = self.record.frames_in
        if frames != self._frames_seen:
            self._frames_seen = frames
            self._caller_seen_at = now
        if now - self._caller_seen_at >= self._caller_timeout:
            return False
        if now >= self._caller_check_at:
            self._caller_check_at = self._caller_seen_at + self._caller_timeout
            out.append(Wake(self._caller_check_at))
        return True

    # ---- bookkeeping ---------------------------------------------------------------------------

    def _end(
        self,
        out: list[Effect],
        reason: EndReason,
        detail: str = "",
        next_step: NextStep | None = None,
    ) -> None:
        if not self._ended:
            self._ended = True
            out.append(EndCall(reason, detail, next_step))

    def _end_as_closing(self, out: list[Effect]) -> None:
        exit_ = self._exit
        self._end(out, exit_.reason, exit_.detail, exit_.next_step)

    def _add_turn(self, out: list[Effect], turn: Turn) -> None:
        self._turns[turn.item_id] = turn
        if len(self._turns) > KEEP_TURNS:  # as the record: older turns are with the recorder
            del self._turns[next(iter(self._turns))]
        self.record.turns.append(turn)
        out.append(TurnChanged(turn))

    def _note(self, out: list[Effect], now: float, kind: str, **detail: Any) -> None:
        event = CallEvent(at=self._at(now), kind=kind, detail=detail)
        self.record.events.append(event)
        out.append(Noted(event))

    def _next_id(self) -> str:
        return f"bridge_{next(self._event_ids)}"

    def _at(self, now: float) -> float:
        """Seconds since the call started."""
        return round(now - self._t0, 3)


def count_protocol_error(record: CallRecord, detail: str) -> bool:
    """Count a Twilio message we could not use; True for the first few, which are logged and
    worth keeping on the call (before `start` there is no session, only the record)."""
    record.protocol_errors += 1
    metrics.protocol_error("twilio")
    if record.protocol_errors > LOGGED_PROTOCOL_ERRORS:
        return False
    logger.warning("bad Twilio message: %s", detail)
    return True


def _fill_record(record: CallRecord, start: twilio.Start, profile: Profile) -> None:
    params = start.custom_parameters
    record.call_sid = start.call_sid
    record.stream_sid = start.stream_sid
    record.from_number = params.get("From", "")
    record.to_number = params.get("To", "")
    record.profile, record.model, record.voice = profile.name, profile.model, profile.voice
    record.direction = params.get("Direction", "inbound") or "inbound"
    record.keep_transcripts = profile.keep_transcripts
    record.redact = profile.redact
    record.webhook_url = profile.call_webhook_url
