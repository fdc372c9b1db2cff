"""The capacity benchmark's own logic on synthetic timelines: latency pairing, playback and
underruns, the knee, the call-id preamble, WebSocket framing, profile and report rendering."""

from __future__ import annotations

import argparse
import base64
import copy
import json
import os
import signal
import subprocess
import sys
import time
from typing import Any

import pytest

from bridge.audio import FRAME_BYTES, CallerToModel, ulaw_to_pcm16
from bridge.bench import proc, wire
from bridge.bench.cli import _levels
from bridge.bench.inbound import PreambleVad, caller_side_bytes
from bridge.bench.measure import (
    InputPairing,
    OutputPairing,
    Samples,
    cpu_per_call_minute,
    find_knee,
    quantiles,
    summary,
)
from bridge.bench.model import ModelServer
from bridge.bench.probe import CallProbe, Metrics
from bridge.bench.profile import top_entries
from bridge.bench.report import table
from bridge.bench.signature import (
    PREAMBLE_AT,
    PREAMBLE_FRAMES,
    PreambleDecoder,
    preamble_bits,
    preamble_frames,
    utterance_frames,
    window_rms,
)
from bridge.fastws.frames import OP_BINARY, OP_PING, OP_TEXT, ZERO_KEY, apply_mask
from bridge.fastws.frames import frame as encode_frame
from bridge.sim.playback import MarkEcho, PlaybackBuffer
from bridge.sim.vad import VadTransition

pytestmark = pytest.mark.timeout(30)

FRAME_S = 0.02


# ---- caller -> model pairing ------------------------------------------------------------------


def test_input_pairing_one_sample_per_frame_forwarded_one_to_one() -> None:
    pairing, out = InputPairing(), Samples()
    for k in range(50):
        pairing.sent(k * FRAME_S)
        pairing.received(FRAME_BYTES, k * FRAME_S + 0.0015, out)
    assert len(out) == 50
    assert list(out.values) == pytest.approx([1.5] * 50)


def test_input_pairing_by_position_when_the_bridge_merges_frames() -> None:
    pairing, out = InputPairing(), Samples()
    for k in range(10):
        pairing.sent(k * FRAME_S)
    # Two frames per append, each append 1 ms after its second frame was sent.
    for k in range(1, 10, 2):
        pairing.received(2 * FRAME_BYTES, k * FRAME_S + 0.001, out)
    assert list(out.values) == pytest.approx([21.0, 1.0] * 5)


def test_input_pairing_partial_chunks_complete_frames_once() -> None:
    pairing, out = InputPairing(), Samples()
    pairing.sent(0.0)
    pairing.sent(FRAME_S)
    pairing.received(100, 0.010, out)  # no frame complete yet
    assert len(out) == 0
    pairing.received(100, 0.021, out)  # completes frame 0
    pairing.received(120, 0.041, out)  # completes frame 1
    assert list(out.values) == pytest.approx([21.0, 21.0])
    assert pairing.frames_received == 2


def test_input_pairing_offset_skips_frames_the_bridge_dropped() -> None:
    pairing, out = InputPairing(), Samples()
    for k in range(6):
        pairing.sent(k * FRAME_S)
    pairing.offset = -2  # the model side's first frame is the caller's frame 2
    for k in range(2, 6):
        pairing.received(FRAME_BYTES, k * FRAME_S + 0.002, out)
    assert list(out.values) == pytest.approx([2.0] * 4)


def test_input_pairing_catches_up_without_samples() -> None:
    pairing, out = InputPairing(), Samples()
    for k in range(4):
        pairing.sent(k * FRAME_S)
    pairing.received(3 * FRAME_BYTES, 1.0, None)  # before the call was identified
    pairing.received(FRAME_BYTES, 3 * FRAME_S + 0.003, out)
    assert list(out.values) == pytest.approx([3.0])


# ---- model -> caller pairing ------------------------------------------------------------------


def test_output_pairing_each_delta_with_the_media_that_completes_it() -> None:
    pairing, out = OutputPairing(), Samples()
    pairing.new_reply()
    for j in range(5):
        pairing.delta_sent(800, j * 0.02)
        pairing.media_received(800, j * 0.02 + 0.0007, out)
    assert list(out.values) == pytest.approx([0.7] * 5)


def test_output_pairing_waits_for_whole_frames() -> None:
    pairing, out = OutputPairing(), Samples()
    pairing.delta_sent(100, 0.000)  # completes no frame: never paired
    pairing.delta_sent(100, 0.010)  # 200 bytes: frame 1 complete
    pairing.media_received(160, 0.012, out)
    pairing.delta_sent(150, 0.020)  # 350 bytes: frame 2 complete
    pairing.media_received(100, 0.021, out)  # 260: not yet
    pairing.media_received(60, 0.023, out)
    assert list(out.values) == pytest.approx([2.0, 3.0])
    assert pairing.unpaired == 0


def test_output_pairing_clear_and_new_reply_drop_discarded_deltas() -> None:
    pairing, out = OutputPairing(), Samples()
    pairing.delta_sent(800, 0.0)
    pairing.delta_sent(800, 0.02)
    pairing.media_received(800, 0.001, out)
    pairing.clear()  # the second delta was dropped by the bridge
    assert pairing.unpaired == 0
    pairing.new_reply()
    pairing.delta_sent(800, 1.0)
    pairing.media_received(800, 1.002, out)
    assert list(out.values) == pytest.approx([1.0, 2.0])


# ---- playback, marks, underruns ---------------------------------------------------------------


def play(playback: PlaybackBuffer, ticks: int, start: float = 0.0) -> list[str]:
    echoes: list[str] = []
    for i in range(ticks):
        echoes += [echo.name for echo in playback.tick(start + i * FRAME_S)[1]]
    return echoes


def names(echoes: list[MarkEcho]) -> list[str]:
    return [echo.name for echo in echoes]


def test_playback_end_of_a_reply_is_not_an_underrun() -> None:
    playback = PlaybackBuffer()
    playback.feed_size(3 * FRAME_BYTES, reply=1)
    play(playback, 10)
    playback.feed_size(2 * FRAME_BYTES, reply=2)  # the next reply, after silence
    play(playback, 5)
    assert playback.underruns == 0
    assert playback.played == {1: 480, 2: 320}


def test_playback_gap_inside_a_reply_is_an_underrun_of_its_length() -> None:
    playback = PlaybackBuffer()
    playback.feed_size(2 * FRAME_BYTES, reply=1)
    play(playback, 2)  # plays both frames
    play(playback, 3)  # three empty ticks: the caller hears 60 ms of nothing
    playback.feed_size(FRAME_BYTES, reply=1)  # ...then the reply goes on
    assert playback.underruns == 1
    assert playback.gaps_ms == pytest.approx([60.0])


def test_playback_short_frame_then_resume_counts_the_partial_gap() -> None:
    playback = PlaybackBuffer()
    playback.feed_size(FRAME_BYTES + 80, reply=1)
    play(playback, 2)  # the second tick plays 80 bytes: 10 ms of silence in it
    playback.feed_size(FRAME_BYTES, reply=1)
    assert playback.underruns == 1
    assert playback.gaps_ms == pytest.approx([10.0])


def test_playback_audio_arriving_in_time_has_no_underrun() -> None:
    playback = PlaybackBuffer()
    for i in range(20):
        playback.feed_size(FRAME_BYTES, reply=1)
        playback.tick(i * FRAME_S)
    assert playback.underruns == 0


def test_playback_clear_ends_the_reply_without_an_underrun() -> None:
    playback = PlaybackBuffer()
    playback.feed_size(FRAME_BYTES, reply=1)
    play(playback, 3)
    playback.clear()
    playback.feed_size(FRAME_BYTES, reply=1)  # late audio of the same reply after a clear
    assert playback.underruns == 0


def test_playback_marks_echo_as_played_and_all_at_once_on_clear() -> None:
    playback = PlaybackBuffer()
    assert names(playback.mark("idle")) == ["idle"]  # nothing buffered: echoed at once
    playback.feed_size(2 * FRAME_BYTES, reply=1)
    assert names(playback.mark("a")) == []
    playback.feed_size(2 * FRAME_BYTES, reply=1)
    assert names(playback.mark("b")) == []
    assert play(playback, 2) == []  # frame 2 is still playing during the second tick
    assert play(playback, 1) == ["a"]
    assert names(playback.clear()) == ["b"]
    assert playback.buffered == 0


def test_playback_heard_interpolates_inside_the_playing_frame() -> None:
    playback = PlaybackBuffer()
    playback.feed_size(4 * FRAME_BYTES, reply=3)
    playback.tick(1.00)
    playback.tick(1.02)
    assert playback.played[3] == 320
    assert playback.heard(3, 1.02) == pytest.approx(160.0)
    assert playback.heard(3, 1.03) == pytest.approx(240.0)  # 10 ms into the second frame
    assert playback.heard(3, 1.05) == pytest.approx(320.0)
    assert playback.heard(9, 1.03) == 0.0


# ---- barge-in: clear latency and truncation error ------------------------------------------


def test_probe_pairs_clear_with_speech_started_and_scores_truncation() -> None:
    metrics = Metrics(recording=True)
    probe = CallProbe(7, metrics, lead_ms=4.0)
    reply = probe.reply_started()
    probe.speech_started(10.000)
    probe.cleared(10.003, heard_bytes=8 * 1004)  # heard 1004 ms of audio = 1000 ms of item
    probe.truncated(reply, 998)
    assert list(metrics.clear.values) == pytest.approx([3.0])
    assert list(metrics.truncation_error.values) == pytest.approx([-2.0])
    assert (metrics.clears, metrics.truncations, metrics.replies) == (1, 1, 1)


def test_probe_ignores_a_clear_long_after_speech_started_and_outside_recording() -> None:
    metrics = Metrics(recording=False)
    probe = CallProbe(1, metrics, lead_ms=0.0)
    reply = probe.reply_started()  # started before the steady phase: not scored
    metrics.recording = True
    probe.speech_started(1.0)
    probe.cleared(3.0, heard_bytes=800)
    probe.truncated(reply, 100)
    assert len(metrics.clear) == 0
    assert len(metrics.truncation_error) == 0


# ---- statistics and the knee ------------------------------------------------------------------


def level(calls: int, c2m: float, m2c: float, *, failed: int = 0, underruns: int = 0) -> Any:
    return {
        "level": calls,
        "calls": {"target": calls, "held": calls - failed, "failed": failed, "failures": {}},
        "latency_ms": {
            "caller_to_model": summary([c2m / 2, c2m]),
            "model_to_caller": summary([m2c / 2, m2c]),
            "clear": summary([1.0]),
        },
        "underruns": {"count": underruns, "gap_ms": summary([])},
    }


def test_summary_and_quantiles() -> None:
    stats = summary([float(v) for v in range(1, 101)])
    assert stats["count"] == 100
    assert stats["p50"] == pytest.approx(50.5)
    assert stats["p99"] == pytest.approx(99.01)
    assert stats["max"] == 100.0
    assert summary([]) == {"count": 0, "p50": None, "p99": None, "max": None, "mean": None}
    cdf = quantiles([1.0, 2.0, 3.0], points=3)
    assert cdf == [1.0, 2.0, 3.0]
    assert quantiles([]) == []


def test_knee_is_the_most_calls_within_the_limits() -> None:
    levels = [
        level(50, 2.0, 3.0),
        level(100, 6.0, 8.0),
        level(200, 19.0, 18.0),
        level(400, 250.0, 90.0),
    ]
    knee = find_knee(levels, 20.0)
    assert knee is not None
    assert knee["level"] == 200


def test_knee_excludes_levels_with_failures_or_underruns() -> None:
    levels = [
        level(50, 2.0, 3.0),
        level(100, 3.0, 3.0, underruns=1),
        level(200, 5.0, 5.0, failed=3),
    ]
    knee = find_knee(levels, 20.0)
    assert knee is not None
    assert knee["level"] == 50
    assert find_knee([level(10, 30.0, 1.0)], 20.0) is None
    assert find_knee([], 20.0) is None


def test_cpu_per_call_minute() -> None:
    assert cpu_per_call_minute(30.0, 100 * 60.0) == pytest.approx(0.3)
    assert cpu_per_call_minute(1.0, 0.0) is None


# ---- the call-id preamble -------------------------------------------------------------------


def windows_transcoded(frames: list[bytes]) -> list[float]:
    """RMS per 20 ms window of what the model side receives through the bridge's transcoder."""
    up = CallerToModel()
    return [window_rms(up.convert(frame)) for frame in frames]


def stream(call_id: int, lead: int = PREAMBLE_AT) -> list[bytes]:
    silent = b"\xff" * FRAME_BYTES
    return [silent] * lead + preamble_frames(call_id) + [silent] * 5


@pytest.mark.parametrize("call_id", [0, 1, 7, 0x555, 0xAAA, 4095])
def test_preamble_decodes_through_the_transcoder(call_id: int) -> None:
    decoder = PreambleDecoder()
    found = [decoder.feed(rms) for rms in windows_transcoded(stream(call_id))]
    assert decoder.result == call_id
    assert decoder.sync == PREAMBLE_AT
    assert found.count(call_id) >= 1


def test_preamble_decodes_passed_through_and_after_dropped_frames() -> None:
    decoder = PreambleDecoder()
    for frame in stream(1234, lead=3):  # the bridge dropped 22 frames before forwarding
        decoder.feed(window_rms(ulaw_to_pcm16(frame)))
    assert (decoder.result, decoder.sync) == (1234, 3)


def test_preamble_with_a_flipped_bit_fails_its_check() -> None:
    frames = stream(1234)
    index = PREAMBLE_AT + 5
    frames[index] = preamble_frames(4095)[2] if frames[index] == b"\xff" * 160 else b"\xff" * 160
    decoder = PreambleDecoder()
    for rms in windows_transcoded(frames):
        decoder.feed(rms)
    assert decoder.result is None
    assert decoder.failed


def test_preamble_bits_shape() -> None:
    bits = preamble_bits(5)
    assert len(bits) == PREAMBLE_FRAMES
    assert bits[:2] == [True, False]
    with pytest.raises(ValueError, match="outside"):
        preamble_bits(4096)


def test_generator_audio_material() -> None:
    frames = utterance_frames(1.0)
    assert len(frames) == 50
    assert all(len(base64.b64decode(f)) == FRAME_BYTES for f in frames)
    # The burst never falls below the model side's VAD threshold (-40 dBFS).
    pcm = [ulaw_to_pcm16(base64.b64decode(f)) for f in frames[1:-1]]
    assert min(window_rms(p) for p in pcm) > 328
    model = ModelServer(chunk_ms=100)
    pcmu = model.reply({"type": "audio/pcmu"}, 0)
    pcm24 = model.reply({"type": "audio/pcm", "rate": 24000}, 3)  # replies are cycled
    assert list(pcmu.sizes) == [800] * 20  # the first reply lasts 2 s
    assert list(pcm24.sizes) == [4800] * 20
    assert model.reply({"type": "audio/pcmu"}, 3) is pcmu  # encoded once, shared by every call


# ---- WebSocket framing ----------------------------------------------------------------------


@pytest.mark.parametrize("size", [0, 10, 125, 126, 300, 65535, 70000])
def test_frames_round_trip_masked_and_unmasked(size: int) -> None:
    payload = os.urandom(size)
    unmasked = encode_frame(OP_TEXT, payload)
    assert wire.FrameReader().feed(unmasked) == [(OP_TEXT, payload)]
    zero_masked = encode_frame(OP_BINARY, payload, ZERO_KEY)
    assert wire.FrameReader().feed(zero_masked) == [(OP_BINARY, payload)]
    # A real client's random key (as the bridge's websockets client sends).
    key = os.urandom(4)
    head = zero_masked[: len(zero_masked) - size - 4]
    masked = head + key + apply_mask(payload, key)
    assert wire.FrameReader().feed(masked) == [(OP_BINARY, payload)]


def test_frame_reader_byte_by_byte_fragments_and_control_frames() -> None:
    first = bytes((0x01, 3)) + b"abc"  # text, not final
    ping = encode_frame(OP_PING, b"hi")  # control frame in between
    last = bytes((0x80, 3)) + b"def"  # final continuation
    data = first + ping + last + encode_frame(OP_TEXT, b"{}")
    reader = wire.FrameReader()
    messages = []
    for i in range(len(data)):
        messages += reader.feed(data[i : i + 1])
    assert messages == [(OP_PING, b"hi"), (OP_TEXT, b"abcdef"), (OP_TEXT, b"{}")]


def test_handshake_accept_key_and_server_response() -> None:
    # RFC 6455 section 1.3's example.
    assert wire.accept_key("dGhlIHNhbXBsZSBub25jZQ==") == "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
    request, accept = wire.client_request("127.0.0.1:80", "/v1/realtime?model=m", {"X-A": "1"})
    response, target = wire.server_response(request.split(b"\r\n\r\n")[0])
    assert target == "/v1/realtime?model=m"
    start, headers = wire.parse_head(response.split(b"\r\n\r\n")[0])
    assert start.startswith("HTTP/1.1 101")
    assert headers["sec-websocket-accept"] == accept
    with pytest.raises(wire.HandshakeError):
        wire.server_response(b"GET / HTTP/1.1\r\nHost: x")


# ---- profile, report, command line ----------------------------------------------------------


def test_top_entries_self_and_inclusive_shares() -> None:
    collapsed = "\n".join(
        [
            "main (bridge/x.py:1);pump (/w/bridge/call.py:10);send (asyncio/x.py:3) 6",
            "main (bridge/x.py:1);pump (/w/bridge/call.py:11) 2",
            "main (bridge/x.py:1);convert (/w/bridge/audio.py:5) 2",
            "garbage line",
        ]
    )
    top = top_entries(collapsed)
    assert top["samples"] == 10
    assert top["self"][0] == ["send (asyncio/x.py)", 60.0]
    inclusive = dict((name, share) for name, share in top["inclusive"])
    assert inclusive["main (bridge/x.py)"] == 100.0
    assert inclusive["pump (call.py)"] == 80.0  # counted once per stack, lines merged
    assert top_entries("") == {"samples": 0, "self": [], "inclusive": []}


def test_top_entries_sum_workers_without_their_process_frames() -> None:
    collapsed = "\n".join(
        [
            'process 11:"python -m bridge.cli serve";main (bridge/x.py:1);send (asyncio/x.py:3) 3',
            'process 12:"python -m bridge.cli serve";main (bridge/x.py:1);send (asyncio/x.py:3) 1',
        ]
    )
    top = top_entries(collapsed)
    assert top["self"] == [["send (asyncio/x.py)", 100.0]]
    main, send = ["main (bridge/x.py)", 100.0], ["send (asyncio/x.py)", 100.0]
    assert sorted(top["inclusive"]) == [main, send]


def report_for(levels: list[Any]) -> dict[str, Any]:
    full = []
    for lv in levels:
        lv = copy.deepcopy(lv)
        lv.update(
            truncation_error_ms={**summary([-1.0, 2.0]), "abs_p99": 2.0},
            turns={"replies": 10, "barge_ins": 3, "missed_replies": 0},
            bridge={
                "pid": 42,
                "cpu_cores": 0.5,
                "cpu_s_per_call_minute": 0.25,
                "rss_peak_mb": 70.0,
                "rss_per_call_mb": 0.1,
            },
            generator={
                "cpu_cores": 0.2,
                "cpu_percent_of_core_per_call": 0.2,
                "tick_lag_ms": summary([1.0]),
                "bottleneck": lv["level"] > 100,
                "why": ["generator used 0.9 of a core"],
            },
            machine={"other_load_cores": 0.1},
            profile=None,
        )
        full.append(lv)
    knee = find_knee(full, 20.0)
    return {
        "config": {"audio_mode": "transcode"},
        "machine": {"cores": 2, "loadavg_at_end": [0.1, 0.1, 0.1]},
        "levels": full,
        "knee": {"limit_ms": 20.0, "calls": knee["calls"]["held"] if knee else None, "rule": "r"},
    }


def test_table_shows_each_level_the_knee_and_a_generator_bottleneck() -> None:
    text = table(report_for([level(50, 2.0, 3.0), level(200, 40.0, 9.0)]))
    assert "knee: 50 calls" in text
    assert "0.250" in text  # CPU-s per call-minute
    assert "level 200: the GENERATOR, not the bridge, is the bottleneck" in text
    header = next(line for line in text.splitlines() if line.startswith("level (calls)"))
    assert header.split()[-2:] == ["50", "200"]
    json.dumps(report_for([level(50, 2.0, 3.0)]))  # the report is plain JSON


def test_saturation_is_judged_per_event_loop() -> None:
    """One loop at 0.9 of a core is saturated; two workers at 0.9 cores in all are not."""
    report = report_for([level(100, 2.0, 3.0)])
    report["levels"][0]["bridge"]["cpu_cores"] = 0.9
    assert "the bridge is SATURATED (0.90 of the one core its event loop can use)" in table(report)
    report["config"]["workers"] = 2
    text = table(report)
    assert "2 workers" in text
    assert "SATURATED" not in text
    report["levels"][0]["bridge"]["cpu_cores"] = 1.8
    assert "SATURATED (1.80 of the 2 cores its loops can use)" in table(report)


def test_sweep_levels_argument() -> None:
    assert _levels("50,100, 200") == (50, 100, 200)
    for bad in ("", "a,b", "0,10"):
        with pytest.raises(argparse.ArgumentTypeError):
            _levels(bad)


# ---- the model side's ear ---------------------------------------------------------------------


def test_preamble_vad_names_the_call_then_hears_speech_start_and_stop() -> None:
    vad = PreambleVad()
    up = CallerToModel()
    silent = b"\xff" * FRAME_BYTES
    speech = [base64.b64decode(f) for f in utterance_frames(1.0)]  # 50 frames
    frames = stream(321) + [silent] * 4 + speech + [silent] * 30
    heard: list[tuple[bool, int]] = []
    sizes = 0.0
    for frame in frames:
        pcm = up.convert(frame)
        sizes += caller_side_bytes(len(pcm), pcmu=False)
        heard += [(t.started, t.ms) for t in vad.feed(pcm, 24000, 500)]
        if vad.call_id is not None and not heard:
            heard.append((False, -vad.call_id))  # the call is named before any speech
    assert sizes == len(frames) * FRAME_BYTES
    onset_ms = (PREAMBLE_AT + PREAMBLE_FRAMES + 5 + 4) * 20
    end_ms = onset_ms + 50 * 20
    assert heard[0] == (False, -321)
    assert heard[1][0] is True
    assert abs(heard[1][1] - onset_ms) <= 20
    assert heard[2][0] is False
    assert abs(heard[2][1] - end_ms) <= 40  # the fade-out and the filter's tail
    assert len(heard) == 3


def test_preamble_vad_mu_law_in_any_chunking_and_deaf_when_ignored() -> None:
    vad = PreambleVad()
    data = b"".join(stream(99))
    heard: list[VadTransition] = []
    for i in range(0, len(data), 70):  # appends that do not follow frame boundaries
        heard += vad.feed(ulaw_to_pcm16(data[i : i + 70]), 8000, 500)
    assert (vad.call_id, heard) == (99, [])
    assert caller_side_bytes(len(data), pcmu=True) == len(data)
    vad.ignore()  # an unknown call: no conversation
    loud = preamble_frames(1)[0] * 50
    assert vad.feed(ulaw_to_pcm16(loud), 8000, 500) == []
    assert vad.call_id is None


def test_process_tree_sums_a_supervisor_and_its_workers() -> None:
    """A parent with two busy children: the tree's CPU and memory are more than the parent's,
    and the listener found for a shared port is the parent (the workers' supervisor)."""
    script = (
        "import socket, subprocess, sys, time\n"
        "sock = socket.create_server(('127.0.0.1', 0)); sock.set_inheritable(True)\n"
        "busy = 'import time\\nend = time.process_time() + 0.6\\n"
        "while time.process_time() < end: pass\\ntime.sleep(60)'\n"
        "children = [subprocess.Popen([sys.executable, '-c', busy], pass_fds=[sock.fileno()])"
        " for _ in range(2)]\n"
        "print(sock.getsockname()[1], flush=True)\n"
        "time.sleep(60)\n"
    )
    parent = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    with parent:
        try:
            assert parent.stdout is not None
            port = int(parent.stdout.readline())
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline:
                tree = proc.sample_tree(parent.pid)
                own = proc.sample_process(parent.pid)
                children = proc.descendants(parent.pid)
                # The children are done burning once the tree has 1.2 s more than the parent.
                if tree and own and len(children) == 2 and tree.cpu_s >= own.cpu_s + 1.2:
                    break
                time.sleep(0.1)
            assert own is not None
            assert tree is not None
            assert len(children) == 2
            assert tree.cpu_s >= own.cpu_s + 1.2  # both children's 0.6 s
            assert tree.rss > own.rss
            assert proc.find_listener(port) == parent.pid
        finally:
            for pid in proc.descendants(parent.pid):
                os.kill(pid, signal.SIGKILL)
            parent.kill()
