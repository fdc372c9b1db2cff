"""`bridge demo`: one complete phone call, offline, on embedded defaults.

The real server runs on a loopback port with the Realtime simulator as its upstream and a small
HTTP service as the assistant's tool; a simulated Twilio caller dials in, speaks, hears the
reply, talks over it once, asks something the assistant looks up with its tool, leaves a phone
number (redacted in the call log), says goodbye, and hears the assistant's goodbye before the
assistant hangs up (`end_call`). The call is recorded: a two-channel WAV under ./data/recordings.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import tempfile
import wave
from pathlib import Path

from bridge import logs
from bridge.app import create_app
from bridge.record import CallRecord, EndReason, FanOutRecorder, MemoryRecorder
from bridge.redact import redact
from bridge.server import serving
from bridge.settings import Settings
from bridge.sim.analysis import active_segments
from bridge.sim.realtime_config import SimToolCall
from bridge.sim.realtime_server import RealtimeSimulator, SimConfig
from bridge.sim.signals import has_espeak, speech
from bridge.sim.tool_server import ToolService
from bridge.sim.twilio_caller import (
    TwilioCaller,
    fetch_action,
    fetch_twiml,
    loopback_url,
    parse_connect_action,
    parse_next_step,
    parse_stream,
)
from bridge.store import CallLog

CALLER_LINES = (
    "Hi Tyler, how's it going?",
    "Sorry, one more thing. What time do you open on Saturday?",
    "Great, thank you. Call me back on 555 010 0199 if anything changes. Bye!",
)
ASSISTANT_LINES = (
    "Hi! I'm doing great, thanks for asking. I'm the assistant for this line, and I can help "
    "you with opening hours, bookings, and directions. What can I do for you today?",
    "Let me check the opening hours.",
    "You're welcome. Have a lovely day, goodbye!",
)
# The model's tool calls, by the caller turn they answer: look up the hours, then hang up.
TOOL_CALLS = {
    1: [SimToolCall("opening_hours", {"day": "Saturday"})],
    2: [SimToolCall("end_call", {"reason": "the caller said goodbye"})],
}
NUMBERS = """
[profiles.default]
instructions = "You are the front desk of Example Co. Answer briefly."
greeting = ""
end_call = true
record = true
redact = ["phone", "card", "email"]

[[profiles.default.tools]]
name = "opening_hours"
description = "Today's opening hours"
url = "{url}"
method = "GET"
parameters = {{ type = "object", properties = {{ day = {{ type = "string" }} }} }}
timeout_seconds = 5
"""


def _hours_reply(name: str, output: str) -> str:
    """What the simulated model says with the tool's answer."""
    hours = json.loads(output)
    return (
        f"On Saturday we open at {hours['open']} and close at {hours['close']}. "
        f"We are closed on {hours['closed_on']}."
    )


async def run_demo(wav_path: str, *, verbose: bool = False) -> int:
    """Place the call, print its timeline, write what the caller heard; 0 when all went right."""
    logs.configure("INFO" if verbose else "WARNING")
    config = SimConfig(
        replies=ASSISTANT_LINES,
        caller_transcripts=CALLER_LINES,
        tool_calls=TOOL_CALLS,
        tool_reply=_hours_reply,
    )
    async with (
        RealtimeSimulator(config) as simulator,
        ToolService() as tools,
    ):
        with tempfile.TemporaryDirectory() as folder:
            numbers = Path(folder) / "numbers.toml"
            numbers.write_text(NUMBERS.format(url=tools.url("/hours")), encoding="utf-8")
            settings = Settings(
                openai_api_key="sim-key",
                realtime_url=simulator.url,
                tts_url=f"{simulator.http_base}/v1/audio/speech",
                numbers_file=str(numbers),
            )
            memory = MemoryRecorder()
            # The embedded call log (SQLite under ./data), exactly as `bridge serve` keeps it.
            async with CallLog.from_settings(settings) as call_log:
                recorder = FanOutRecorder(memory, call_log.recorder)
                app = create_app(settings, recorder=recorder)
                app.state.bridge.next_steps = call_log.next_steps
                async with serving(app) as base:
                    record, caller, next_step = await _place_call(base, memory)
    Path(wav_path).parent.mkdir(parents=True, exist_ok=True)
    caller.write_heard_wav(wav_path)
    recordings = Path(settings.recordings_dir)
    return _report(record, caller, next_step, wav_path, settings.database_url, recordings)


async def _place_call(
    base: str, recorder: MemoryRecorder
) -> tuple[CallRecord, TwilioCaller, list[dict[str, str]]]:
    call_sid = "CA" + os.urandom(16).hex()
    caller_number, called = "+15550100001", "+15550100000"
    status, twiml = await fetch_twiml(base, from_=caller_number, to=called, call_sid=call_sid)
    if status != 200:
        raise RuntimeError(f"voice webhook answered HTTP {status}")
    stream, parameters = parse_stream(twiml)
    action = parse_connect_action(twiml)
    async with TwilioCaller(
        loopback_url(stream, base), custom_parameters=parameters, call_sid=call_sid
    ) as caller:
        await asyncio.sleep(0.4)
        await caller.say_and_wait(speech(CALLER_LINES[0], 8000))
        await caller.wait_for_playback(2.0, timeout=20)  # hear the start of the reply...
        await caller.say_and_wait(speech(CALLER_LINES[1], 8000))  # ...and talk over it
        await caller.wait_for_playback(1.0, timeout=20)  # "let me check", then the hours
        await caller.wait_until_quiet(1.0, timeout=30)
        await caller.say_and_wait(speech(CALLER_LINES[2], 8000))
        await caller.wait_closed(timeout=30)  # the assistant says goodbye and hangs up
    next_step: list[dict[str, str]] = []
    if action is not None:  # what Twilio would do next: ask the <Connect action> URL
        status, after = await fetch_action(
            action, base, call_sid=call_sid, from_=caller_number, to=called
        )
        next_step = parse_next_step(after) if status == 200 else [{"verb": f"HTTP {status}"}]
    # The bridge finalises the record (and saves the recording) right after the socket closes.
    for _ in range(500):
        for record in recorder.finished:
            if record.call_sid == call_sid:
                return record, caller, next_step
        await asyncio.sleep(0.02)
    raise RuntimeError("the bridge never finalised the call record")


def _report(
    record: CallRecord,
    caller: TwilioCaller,
    next_step: list[dict[str, str]],
    wav_path: str,
    database: str,
    recordings: Path,
) -> int:
    speech_kind = "espeak-ng speech" if has_espeak() else "synthetic speech (espeak-ng not found)"
    print(f"bridge demo: one simulated call over real sockets ({speech_kind})\n")
    print("timeline (seconds since the call started)")
    rows: list[tuple[float, str]] = []
    for turn in record.turns:
        end = f"{turn.ended_at:6.2f}" if turn.ended_at is not None else "   ..."
        if turn.role == "caller":
            text = redact(turn.text, record.redact)  # as the call log shows it
            rows.append((turn.started_at, f"{turn.started_at:6.2f}-{end}  caller     {text}"))
            continue
        text = redact(turn.text, record.redact)
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
        elif event.kind != "dtmf":
            rows.append((event.at, f"{event.at:6.2f}         {event.kind}  {event.detail}"))
    for tool in record.tool_calls:
        took = f", {tool.duration_ms:.0f} ms" if tool.duration_ms is not None else ""
        text = f"{tool.name}({tool.arguments}) -> {tool.outcome}{took}"
        if tool.result:
            text += f": {tool.result[:80]}"
        rows.append((tool.started_at, f"{tool.started_at:6.2f}         tool       {text}"))
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
    print("then Twilio was told: " + " ".join(step["verb"] for step in next_step))
    print(f"call log: {database} (see it with `./dev bridge calls show {record.call_sid}`)")
    recording = recordings / record.recording if record.recording else None
    if recording is not None:
        print(f"recording: {recording} (left: the caller, right: the assistant as heard)")
    problems = []
    if record.end_reason is not EndReason.ASSISTANT_HANGUP:
        problems.append(f"call ended by {record.end_reason}, not by the assistant's end_call")
    if [tool.outcome for tool in record.tool_calls if tool.name == "opening_hours"] != ["ok"]:
        problems.append("the opening_hours tool did not run")
    goodbye = [turn for turn in record.turns if turn.role == "assistant"][-1:]
    if not goodbye or goodbye[0].interrupted or goodbye[0].audio_ms <= 0:
        problems.append("the caller did not hear the whole goodbye")
    if next_step != [{"verb": "Hangup"}]:
        problems.append(f"Twilio was not told to hang up: {next_step}")
    if record.barge_ins < 1:
        problems.append("no barge-in happened")
    if heard_seconds < 1.0:
        problems.append("the caller heard (almost) nothing")
    if caller.protocol_errors:
        problems.append(f"Twilio-side protocol errors: {caller.protocol_errors[:3]}")
    problems += _recording_problems(recording, record.duration)
    for problem in problems:
        print(f"FAILED: {problem}")
    if not problems:
        print("OK")
    return 1 if problems else 0


def _recording_problems(path: Path | None, call_seconds: float) -> list[str]:
    """The recording holds the whole call, on two channels."""
    if path is None or not path.is_file():
        return ["the call was not recorded"]
    with wave.open(str(path)) as wav:
        seconds = wav.getnframes() / wav.getframerate()
        channels = wav.getnchannels()
    if channels != 2 or abs(seconds - call_seconds) > 1.0:
        return [f"the recording has {channels} channels and {seconds:.1f} s of {call_seconds:.1f}"]
    return []


if __name__ == "__main__":  # pragma: no cover
    logging.basicConfig()
    raise SystemExit(asyncio.run(run_demo("artifacts/demo-caller-heard.wav")))
