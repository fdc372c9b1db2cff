"""Call recordings: the tape's timeline (table tests, no sockets), the WAV written as it grows, and
recorded calls over real sockets: the two channels compared numerically with what the caller
simulator sent and heard (a full reply, a barge-in, nothing after the clear), a process killed
mid-call leaving a playable file, and the bucket path against a real S3-compatible server."""

from __future__ import annotations

import asyncio
import os
import signal
import wave
from pathlib import Path

import numpy as np
import pytest

from bridge import metrics
from bridge.record import EndReason
from bridge.recording.store import BucketStore, DirectoryStore, recording_key
from bridge.recording.tape import Tape
from bridge.recording.wavfile import WavFile
from bridge.sim.analysis import active_segments, dominant_frequency
from bridge.sim.realtime_server import RealtimeSimulator
from bridge.sim.signals import from_ulaw, silence, to_ulaw, tone
from tests.conftest import running_bridge
from tests.s3 import S3Server
from tests.s3 import s3 as s3  # the fixture
from tests.test_store_support import until
from tests.test_workers import pg as pg  # a fixture
from tests.test_workers import workers

RATE = 8000
RATE_MODEL = 24000
FRAME = 160  # samples in a 20 ms frame


def read_wav(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """The two channels of a recording, as floats in [-1, 1]."""
    with wave.open(str(path), "rb") as wav:
        assert (wav.getnchannels(), wav.getsampwidth(), wav.getframerate()) == (2, 2, RATE)
        data = np.frombuffer(wav.readframes(wav.getnframes()), dtype="<i2")
    stereo = data.reshape(-1, 2).astype(np.float32) / 32768.0
    return stereo[:, 0], stereo[:, 1]


def best_lag(signal_: np.ndarray, reference: np.ndarray, max_lag: int) -> int:
    """The shift (samples) that best lines `signal_` up with `reference`: signal_[n + lag] ~
    reference[n]."""
    size = len(signal_) + len(reference)
    spectrum = np.fft.rfft(signal_, size) * np.conj(np.fft.rfft(reference, size))
    correlation = np.fft.irfft(spectrum, size)
    lags = np.concatenate([np.arange(0, max_lag + 1), np.arange(-max_lag, 0)])
    values = np.concatenate([correlation[: max_lag + 1], correlation[-max_lag:]])
    return int(lags[int(np.argmax(values))])


def ulaw_tone(freq: float, seconds: float, level: float = 0.5) -> bytes:
    return to_ulaw(tone(freq, seconds, RATE, level))


# ---- the tape, without sockets -----------------------------------------------------------------


def test_caller_channel_is_what_arrived_and_the_assistant_plays_when_it_arrives() -> None:
    tape = Tape()
    caller = ulaw_tone(300, 0.2)
    reply = ulaw_tone(1000, 0.1)
    tape.caller(caller[: 5 * FRAME])  # 100 ms of caller audio, then the reply arrives
    tape.assistant(reply)
    tape.caller(caller[5 * FRAME :])
    pcm = np.frombuffer(tape.take(), dtype="<i2").reshape(-1, 2)
    assert len(pcm) == 10 * FRAME
    assert np.array_equal(pcm[:, 0], (from_ulaw(caller) * 32768).round().astype(np.int16))
    right = pcm[:, 1].astype(np.float32) / 32768
    assert np.all(right[: 5 * FRAME] == 0)  # nobody spoke before it arrived
    assert dominant_frequency(right[5 * FRAME :], RATE) == pytest.approx(1000, abs=5)


def test_audio_sent_while_audio_plays_queues_behind_it() -> None:
    tape = Tape()
    tape.caller(b"\xff" * FRAME)
    tape.assistant(ulaw_tone(500, 0.1))  # plays 20..120 ms
    tape.assistant(ulaw_tone(900, 0.1))  # queued: 120..220 ms
    tape.caller(b"\xff" * 15 * FRAME)  # to 320 ms
    right = np.frombuffer(tape.take(), dtype="<i2").reshape(-1, 2)[:, 1] / 32768
    segments = active_segments(right, RATE, threshold_db=-30)
    assert len(segments) == 1
    start, end = segments[0]
    assert start == pytest.approx(0.02, abs=0.002)
    assert end == pytest.approx(0.22, abs=0.002)
    assert dominant_frequency(right[960:1760], RATE) == pytest.approx(900, abs=10)


def test_a_clear_drops_what_was_not_played_yet() -> None:
    tape = Tape()
    tape.caller(b"\xff" * FRAME)
    tape.assistant(ulaw_tone(1000, 1.0))  # 1 s queued from 20 ms
    tape.caller(b"\xff" * 10 * FRAME)  # 220 ms: 200 ms of it heard
    first = tape.take()  # written out mid-reply
    tape.caller(b"\xff" * 5 * FRAME)  # 320 ms
    tape.clear()
    assert tape.cleared_ms == pytest.approx(700, abs=1)
    tape.caller(b"\xff" * 40 * FRAME)
    second = tape.take(final=True)
    right = np.frombuffer(first + second, dtype="<i2").reshape(-1, 2)[:, 1] / 32768
    ((start, end),) = active_segments(right, RATE, threshold_db=-30)
    assert start == pytest.approx(0.02, abs=0.002)
    assert end == pytest.approx(0.32, abs=0.002)
    assert len(right) == 56 * FRAME


def test_a_final_take_leaves_out_audio_the_call_ended_before_playing() -> None:
    tape = Tape()
    tape.caller(b"\xff" * FRAME)
    tape.assistant(ulaw_tone(1000, 1.0))
    tape.caller(b"\xff" * 4 * FRAME)
    pcm = tape.take(final=True)
    assert len(pcm) == 5 * FRAME * 4
    assert tape.take() == b""


def test_the_wav_on_disk_is_complete_after_every_write(tmp_path: Path) -> None:
    path = tmp_path / "2026/12/06/CA1.wav"
    file = WavFile(path)
    with wave.open(str(path)) as empty:
        assert empty.getnframes() == 0
    block = np.arange(-800, 800, dtype="<i2").repeat(2).tobytes()  # 1600 stereo frames
    for written in range(1, 4):
        file.write(block)
        # Read while the writer still holds it open, as after a crash at this moment.
        with wave.open(str(path)) as partial:
            assert partial.getnframes() == 1600 * written
    assert file.close() == 44 + 3 * len(block)


# ---- recorded calls over real sockets ----------------------------------------------------------


async def test_a_recorded_call_holds_both_sides_as_the_caller_lived_it(
    simulator: RealtimeSimulator, tmp_path: Path
) -> None:
    simulator.config.reply_audio = lambda turn: tone(
        1000 if turn == 0 else 700, 3.0 if turn == 0 else 1.0, RATE_MODEL, 0.4
    )
    saved = metrics.RECORDINGS.labels(outcome="saved")._value.get()
    root = tmp_path / "recordings"
    async with (
        running_bridge(simulator, record=True, recordings_dir=str(root)) as bridge,
        bridge.call() as caller,
    ):
        session = await simulator.wait_for_session()
        await caller.say_and_wait(np.concatenate([tone(300, 0.6, RATE, 0.4), silence(0.8, RATE)]))
        await caller.wait_for_playback(1.0, timeout=10)
        caller.say(np.concatenate([tone(450, 0.5, RATE, 0.4), silence(0.8, RATE)]))  # barge in
        await session.wait_for_received("conversation.item.truncate", timeout=5)
        await caller.wait_for_playback(0.9, timeout=10)  # the second reply
        await caller.wait_until_quiet(0.5, timeout=10)
        await caller.hangup()
    record = await bridge.finished(caller.call_sid)
    assert record.barge_ins == 1
    assert record.recording == recording_key(record.call_sid, record.started_at)
    path = root / record.recording
    assert record.recording_bytes == path.stat().st_size
    assert metrics.RECORDINGS.labels(outcome="saved")._value.get() == saved + 1

    left, right = read_wav(path)
    sent, heard = caller.sent_audio(), caller.heard()
    # The whole call is there: every frame the caller sent.
    assert len(left) / RATE == pytest.approx(len(sent) / RATE, abs=0.1)
    # Channel 1 is the caller, sample for sample, on the caller's timeline.
    lag = best_lag(left, sent, max_lag=RATE // 5)
    assert abs(lag) <= RATE * 0.020, f"caller channel off by {lag / 8:.1f} ms"
    # Channel 2 is what the caller heard, where they heard it (within 20 ms).
    lag_heard = best_lag(right, heard, max_lag=RATE // 5)
    assert abs(lag_heard) <= RATE * 0.020, f"assistant channel off by {lag_heard / 8:.1f} ms"
    recorded = active_segments(right, RATE, threshold_db=-30)
    lived = active_segments(heard, RATE, threshold_db=-30)
    assert len(recorded) == len(lived) == 2, (recorded, lived)
    for (start, end), (heard_start, heard_end) in zip(recorded, lived, strict=True):
        assert start == pytest.approx(heard_start, abs=0.020)
        assert end == pytest.approx(heard_end, abs=0.020)
    # The first reply stops where the clear cut it: nothing of its unheard 1.8 s is on the tape.
    (first_start, first_end), (second_start, _) = recorded
    assert first_end - first_start < 2.0
    assert np.max(np.abs(right[int((first_end + 0.02) * RATE) : int(second_start * RATE)])) < 0.01
    part = right[int(first_start * RATE) : int(first_end * RATE)]
    assert dominant_frequency(part, RATE) == pytest.approx(1000, abs=5)


async def test_a_call_without_record_leaves_no_file(
    simulator: RealtimeSimulator, tmp_path: Path
) -> None:
    root = tmp_path / "recordings"
    async with running_bridge(simulator, recordings_dir=str(root)) as bridge:
        async with bridge.call() as caller:
            await caller.say_and_wait(tone(300, 0.4, RATE, 0.4))
            await caller.hangup()
        record = await bridge.finished(caller.call_sid)
    assert record.recording == ""
    assert not root.exists()


async def test_a_recording_that_cannot_be_written_never_touches_the_call(
    simulator: RealtimeSimulator, tmp_path: Path
) -> None:
    blocked = tmp_path / "not-a-directory"
    blocked.write_text("a file where the recordings directory should be")
    failed = metrics.RECORDINGS.labels(outcome="failed")._value.get()
    simulator.config.reply_audio = lambda turn: tone(1000, 1.5, RATE_MODEL, 0.4)
    async with running_bridge(simulator, record=True, recordings_dir=str(blocked)) as bridge:
        async with bridge.call() as caller:
            await caller.say_and_wait(
                np.concatenate([tone(300, 0.6, RATE, 0.4), silence(0.8, RATE)])
            )
            await caller.wait_for_playback(0.4, timeout=10)
            await caller.hangup()
        record = await bridge.finished(caller.call_sid)
    assert record.end_reason is EndReason.CALLER_HANGUP
    assert record.recording == ""
    assert metrics.RECORDINGS.labels(outcome="failed")._value.get() == failed + 1


async def test_a_process_killed_mid_call_leaves_a_playable_recording(
    simulator: RealtimeSimulator, pg: str, tmp_path: Path
) -> None:
    root = tmp_path / "recordings"
    simulator.config.reply_audio = lambda turn: tone(1000, 2.0, RATE_MODEL, 0.4)
    async with workers(
        simulator,
        pg,
        tmp_path,
        BRIDGE_RECORD="true",
        BRIDGE_RECORDINGS_DIR=str(root),
    ) as server:
        from bridge.sim.twilio_caller import TwilioCaller, fetch_twiml, loopback_url, parse_stream

        status, twiml = await fetch_twiml(
            server.base, from_="+15550100001", to="+15550100000", call_sid="CA" + "5" * 32
        )
        assert status == 200
        url, parameters = parse_stream(twiml)
        async with TwilioCaller(
            loopback_url(url, server.base), custom_parameters=parameters, call_sid="CA" + "5" * 32
        ) as caller:
            await caller.say_and_wait(
                np.concatenate([tone(300, 0.6, RATE, 0.4), silence(0.8, RATE)])
            )
            await caller.wait_for_playback(0.5, timeout=10)
            await asyncio.sleep(2.0)
            lived = len(caller.sent_audio()) / RATE
            for pid in server.serving().values():
                os.kill(pid, signal.SIGKILL)  # no goodbye, no finally: a crash
            os.killpg(server.process.pid, signal.SIGKILL)
    (path,) = root.glob("*/*/*/*.wav")
    left, right = read_wav(path)
    seconds = len(left) / RATE
    assert lived - 1.5 <= seconds <= lived + 0.1, (seconds, lived)
    assert active_segments(right, RATE, threshold_db=-30)  # the reply heard before the crash


async def test_the_bucket_store_uploads_a_recorded_call_and_recovers_a_crash(
    simulator: RealtimeSimulator, tmp_path: Path, s3: S3Server
) -> None:
    bucket = s3
    simulator.config.reply_audio = lambda turn: tone(1000, 1.5, RATE_MODEL, 0.4)
    spool = tmp_path / "recordings"
    async with running_bridge(
        simulator, record=True, recordings_dir=str(spool), recordings_url=bucket.url
    ) as bridge:
        async with bridge.call() as caller:
            await caller.say_and_wait(
                np.concatenate([tone(300, 0.6, RATE, 0.4), silence(0.8, RATE)])
            )
            await caller.wait_for_playback(0.4, timeout=10)
            await caller.wait_until_quiet(0.3, timeout=10)
            await caller.hangup()
        record = await bridge.finished(caller.call_sid)
        # Finished: the upload comes after the end is decided, before the record is handed on.
        await until(lambda: record in bridge.recorder.finished, timeout=10, interval=0.02)
        store = bridge.state.recordings
        assert isinstance(store, BucketStore)
        assert store.local_path(record.recording) is None  # uploaded, spool emptied
        size = await store.size(record.recording)
        assert size == record.recording_bytes
        data = b"".join([chunk async for chunk in store.read(record.recording, 0, size)])
    copy = tmp_path / "copy.wav"
    copy.write_bytes(data)
    left, right = read_wav(copy)
    ((start, end),) = active_segments(right, RATE, threshold_db=-30)
    reply = right[int(start * RATE) : int(end * RATE)]
    assert dominant_frequency(reply, RATE) == pytest.approx(1000, abs=5)
    assert len(left) / RATE == pytest.approx(len(caller.sent_audio()) / RATE, abs=0.1)

    # A file a crash left in the spool is uploaded when the next process starts.
    key = recording_key("CA" + "6" * 32, 1_765_000_000)
    leftover = BucketStore(bucket.url, spool / ".spool")
    file = WavFile(leftover.spool(key))
    file.write(np.zeros(1600, dtype="<i2").tobytes())
    file.close()  # what a crash leaves after a write is the same complete file
    os.utime(leftover.spool(key), (1_765_000_000, 1_765_000_000))  # written long ago
    try:
        assert await leftover.recover() == 1
        assert leftover.local_path(key) is None
        assert await leftover.size(key) == 44 + 3200
    finally:
        await leftover.aclose()


def test_recording_keys_stay_inside_the_store(tmp_path: Path) -> None:
    from bridge.recording.store import RecordingMissing

    store = DirectoryStore(tmp_path)
    assert recording_key("CA" + "1" * 32, 1_765_000_000).startswith("2025/12/06/CA")
    for bad in ("../../etc/passwd", "2025/12/06/../../x.wav", "/abs/path.wav"):
        with pytest.raises(RecordingMissing):
            store.spool(bad)
