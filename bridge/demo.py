"""`bridge demo`: one complete phone call, offline, on embedded defaults.

The real server runs on a loopback port with the Realtime simulator as its upstream; a simulated
Twilio caller dials in, speaks, hears the reply, talks over it once, listens, and hangs up.
"""

from __future__ import annotations

import asyncio
import logging
import os
from pathlib import Path

from bridge import logs
from bridge.app import create_app
from bridge.record import CallRecord, EndReason, FanOutRecorder, MemoryRecorder
from bridge.server import serving
from bridge.settings import Settings
from bridge.sim.analysis import active_segments
from bridge.sim.realtime_server import RealtimeSimulator, SimConfig
from bridge.sim.signals import has_espeak, speech
from bridge.sim.twilio_caller import TwilioCaller, fetch_twiml, loopback_url, parse_stream
from bridge.store import CallLog

CALLER_LINES = ("Hi Tyler, how's it going?", "Sorry, one more thing. What time do you open?")
ASSISTANT_LINES = (
    "Hi! I'm doing great, thanks for asking. I'm the assistant for this line, and I can help "
    "you with opening hours, bookings, and directions. What can I do for you today?",
    "We open at nine in the morning, every day except Sunday.",
)


async def run_demo(wav_path: str, *, verbose: bool = False) -> int:
    """Place the call, print its timeline, write what the caller heard; 0 when all went right."""
    logs.configure("INFO" if verbose else "WARNING")
    config = SimConfig(replies=ASSISTANT_LINES, caller_transcripts=CALLER_LINES)
    async with RealtimeSimulator(config) as simulator:
        settings = Settings(
            openai_api_key="sim-key",
            realtime_url=simulator.url,
            tts_url=f"{simulator.http_base}/v1/audio/speech",
        )
        memory = MemoryRecorder()
        # The embedded call log (SQLite under ./data), exactly as `bridge serve` keeps it.
        async with CallLog.from_settings(settings) as call_log:
            recorder = FanOutRecorder(memory, call_log.recorder)
            async with serving(create_app(settings, recorder=recorder)) as base:
                record, caller = await _place_call(base, memory)
    Path(wav_path).parent.mkdir(parents=True, exist_ok=True)
    caller.write_heard_wav(wav_path)
    return _report(record, caller, wav_path, settings.database_url)


async def _place_call(base: str, recorder: MemoryRecorder) -> tuple[CallRecord, TwilioCaller]:
    call_sid = "CA" + os.urandom(16).hex()
    status, twiml = await fetch_twiml(
        base, from_="+15550100001", to="+15550100000", call_sid=call_sid
    )
    if status != 200:
        raise RuntimeError(f"voice webhook answered HTTP {status}")
    stream, parameters = parse_stream(twiml)
    async with TwilioCaller(
        loopback_url(stream, base), custom_parameters=parameters, call_sid=call_sid
    ) as caller:
        await asyncio.sleep(0.4)
        await caller.say_and_wait(speech(CALLER_LINES[0], 8000))
        await caller.wait_for_playback(2.0, timeout=20)  # hear the start of the reply...
        await caller.say_and_wait(speech(CALLER_LINES[1], 8000))  # ...and talk over it
        await caller.wait_for_playback(1.0, timeout=20)
        await caller.wait_until_quiet(1.0, timeout=30)
        await caller.hangup()
    # The bridge finalises the record right after the socket closes.
    for _ in range(250):
        record = recorder.find(call_sid)
        if record is not None and record.end_reason is not None:
            return record, caller
        await asyncio.sleep(0.02)
    raise RuntimeError("the bridge never finalised the call record")


def _report(record: CallRecord, caller: TwilioCaller, wav_path: str, database: str) -> int:
    speech_kind = "espeak-ng speech" if has_espeak() else "synthetic speech (espeak-ng not found)"
    print(f"bridge demo: one simulated call over real sockets ({speech_kind})\n")
    print("timeline (seconds since the call started)")
    rows: list[tuple[float, str]] = []
    for turn in record.turns:
        end = f"{turn.ended_at:6.2f}" if turn.ended_at is not None else "   ..."
        if turn.role == "caller":
            rows.append((turn.started_at, f"{turn.started_at:6.2f}-{end}  caller     {turn.text}"))
            continue
        text = turn.text
        if turn.interrupted and turn.heard_ms is not None and turn.audio_ms > 0:
            # Where the cut falls in the words is estimated by the share of audio heard.
            cut = round(len(text) * min(1.0, turn.heard_ms / turn.audio_ms))
            cut = max(0, text.rfind(" ", 0, cut + 1))  # at a word boundary
            text = (
                f"{text[:cut]} / [not heard:] {text[cut:].lstrip()}  "
                f"[interrupted: heard {turn.heard_ms} of {turn.audio_ms:.0f} ms]"
            )
        rows.append((turn.started_at, f"{turn.started_at:6.2f}-{end}  assistant  {text}"))
    for event in record.events:
        if event.kind == "barge_in":
            cuts = ", ".join(
                f"truncate {cut['item_id']} at {cut['audio_end_ms']} ms"
                for cut in event.detail["truncations"]
            )
            actions = ["clear" if event.detail["cleared"] else ""]
            actions += [cuts, "response.cancel" if event.detail["cancelled"] else ""]
            text = "; ".join(a for a in actions if a)
            rows.append((event.at, f"{event.at:6.2f}         barge-in   {text}"))
        else:
            rows.append((event.at, f"{event.at:6.2f}         {event.kind}  {event.detail}"))
    for _, line in sorted(rows, key=lambda row: row[0]):
        print("  " + line)
    heard = caller.heard()
    spoken = active_segments(heard, 8000)
    heard_seconds = sum(end - start for start, end in spoken)
    print(
        f"\ncall {record.call_sid}: {record.duration:.1f} s, ended by {record.end_reason}; "
        f"frames in {record.frames_in}, out {record.frames_out}; barge-ins {record.barge_ins}"
    )
    print(f"the caller heard {heard_seconds:.1f} s of assistant audio -> {wav_path}")
    print(f"call log: {database} (see it with `./dev bridge calls show {record.call_sid}`)")
    problems = []
    if record.end_reason is not EndReason.CALLER_HANGUP:
        problems.append(f"call ended by {record.end_reason}, not by the caller")
    if record.barge_ins < 1:
        problems.append("no barge-in happened")
    if heard_seconds < 1.0:
        problems.append("the caller heard (almost) nothing")
    if caller.protocol_errors:
        problems.append(f"Twilio-side protocol errors: {caller.protocol_errors[:3]}")
    for problem in problems:
        print(f"FAILED: {problem}")
    if not problems:
        print("OK")
    return 1 if problems else 0


if __name__ == "__main__":  # pragma: no cover
    logging.basicConfig()
    raise SystemExit(asyncio.run(run_demo("artifacts/demo-caller-heard.wav")))
