"""Streaming transcoder: numeric quality, streaming invariance, state handling, framing."""

from __future__ import annotations

import time

import numpy as np
import pytest
from numpy.typing import NDArray

from bridge import audio
from bridge.audio import (
    FILTER_TAPS,
    FRAME_BYTES,
    CallerToModel,
    Downsampler,
    Framer,
    ModelToCaller,
    Upsampler,
    pcm16_to_ulaw,
    ulaw_to_pcm16,
)
from bridge.bench import audio as bench_audio
from bridge.sim.analysis import band_energy_db, dominant_frequency, rms_db, snr_db
from bridge.sim.signals import fade, from_pcm16, from_ulaw, to_pcm16, to_ulaw, tone

pytestmark = pytest.mark.timeout(30)

RATE_IN = 8000
RATE_OUT = 24000
DELAY_8K = 33  # filter delay in 8 kHz samples (99 at 24 kHz)


def caller_to_model(ulaw: bytes, chunk: int = FRAME_BYTES) -> NDArray[np.float32]:
    conv = CallerToModel()
    return from_pcm16(
        b"".join(conv.convert(ulaw[i : i + chunk]) for i in range(0, len(ulaw), chunk))
    )


def model_to_caller(pcm: bytes, chunk: int = 960) -> NDArray[np.float32]:
    conv = ModelToCaller()
    out = b"".join(conv.convert(pcm[i : i + chunk]) for i in range(0, len(pcm), chunk))
    return from_ulaw(out + conv.flush())


def random_chunks(data: bytes, rng: np.random.Generator, max_size: int) -> list[bytes]:
    chunks, i = [], 0
    while i < len(data):
        size = int(rng.integers(0, max_size + 1))  # 0 and odd sizes included
        chunks.append(data[i : i + size])
        i += size
    return chunks


def response_db(taps: NDArray[np.float64]) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    spectrum = np.abs(np.fft.rfft(taps, 1 << 16))
    freqs = np.fft.rfftfreq(1 << 16, 1.0 / RATE_OUT).astype(np.float64)
    return freqs, 20.0 * np.log10(np.maximum(spectrum, 1e-15))


# --- filter design ---------------------------------------------------------------------------


def test_prototype_stopband_passband_and_delay() -> None:
    freqs, db = response_db(FILTER_TAPS)
    assert np.max(db[freqs >= 4000.0]) <= -80.0
    passband = db[freqs <= 3400.0]
    assert np.max(passband) - np.min(passband) <= 0.1
    assert abs(np.max(passband)) <= 0.05
    assert np.allclose(FILTER_TAPS, FILTER_TAPS[::-1])  # linear phase
    assert CallerToModel.delay_ms < 5.0
    assert ModelToCaller.delay_ms < 5.0


def test_interpolator_polyphase_responses_match_prototype() -> None:
    # Each phase of the upsampler is a sub-filter; together they must rebuild the prototype,
    # or images would leak. Check via an impulse: the output is 3 * h.
    impulse = np.zeros(100, dtype=np.float32)
    impulse[10] = 1.0
    y = Upsampler().process(impulse)
    rebuilt = y[30 : 30 + len(FILTER_TAPS)] / 3.0
    assert np.max(np.abs(rebuilt - FILTER_TAPS)) < 1e-6


def quantized(taps: NDArray[np.float64]) -> NDArray[np.float64]:
    return np.round(taps * 2.0**23) / 2.0**23


@pytest.mark.parametrize("n", [1, 15, 16, 17, 160, 333, 2400])
def test_block_filters_equal_plain_convolution_exactly(n: int) -> None:
    # The block matrices must be the filter, no more and no less: compare against numpy's
    # own convolution with the same (quantized) taps. Sums are exact, so equality is exact.
    rng = np.random.default_rng(n)
    x = rng.integers(-32768, 32768, n).astype(np.float64)
    stuffed = np.zeros(3 * n)
    stuffed[::3] = x
    expected_up = np.convolve(stuffed, quantized(3 * FILTER_TAPS))[: 3 * n]
    assert np.array_equal(Upsampler().process(x), expected_up)
    x24 = np.concatenate([x, rng.integers(-32768, 32768, 2 * n).astype(np.float64)])
    expected_down = np.convolve(x24, quantized(FILTER_TAPS))[: len(x24)][::3]
    assert np.array_equal(Downsampler().process(x24), expected_down)


def test_measured_delay_both_ways() -> None:
    impulse = np.zeros(400, dtype=np.float32)
    impulse[30] = 0.9
    up = caller_to_model(to_ulaw(impulse))
    assert int(np.argmax(up)) - 90 == audio.DELAY_SAMPLES_24K
    assert (int(np.argmax(up)) - 90) / RATE_OUT * 1000 == pytest.approx(CallerToModel.delay_ms)
    impulse24 = np.zeros(1200, dtype=np.float32)
    impulse24[90] = 0.9
    down = model_to_caller(to_pcm16(impulse24))
    assert int(np.argmax(down)) - 30 == DELAY_8K
    assert pytest.approx(ModelToCaller.delay_ms) == DELAY_8K / RATE_IN * 1000


# --- caller -> model -------------------------------------------------------------------------


def test_caller_to_model_440hz_duration_frequency_snr() -> None:
    x = tone(440.0, 1.0, RATE_IN, 0.5)
    y = caller_to_model(to_ulaw(x))
    assert len(y) == 3 * len(x)
    assert dominant_frequency(y, RATE_OUT) == pytest.approx(440.0, abs=0.5)
    snr = snr_db(y, tone(440.0, 1.0, RATE_OUT, 0.5), max_lag=200)
    assert snr >= 30.0
    assert rms_db(y) == pytest.approx(rms_db(x), abs=0.1)


@pytest.mark.parametrize("size", [0, 1, 2, 7, 159, 160, 161, 1000])
def test_caller_to_model_any_length_gives_three_times_the_samples(size: int) -> None:
    conv = CallerToModel()
    assert len(conv.convert((bytes(range(256)) * 4)[:size])) == 6 * size


def test_caller_to_model_images_suppressed() -> None:
    # A 3 kHz tone zero-stuffed would image at 5 kHz and 11 kHz; the interpolator must kill them.
    x = tone(3000.0, 1.0, RATE_IN, 0.5)
    y = Upsampler().process(x * np.float32(32768.0)) / np.float32(32768.0)
    signal = band_energy_db(y, RATE_OUT, 2900, 3100)
    images = band_energy_db(y[300:], RATE_OUT, 4000, 12000)
    assert signal - images >= 80.0
    # End to end the mu-law noise floor dominates, but still nothing above 4 kHz.
    z = caller_to_model(to_ulaw(x))
    assert band_energy_db(z, RATE_OUT, 2900, 3100) - band_energy_db(z, RATE_OUT, 4000, 12000) >= 60


def test_caller_to_model_saturates_instead_of_wrapping() -> None:
    # Full-scale square wave: the filter's overshoot exceeds int16 and must clip, not wrap.
    square = np.tile(np.array([0x80, 0x80, 0x00, 0x00], dtype=np.uint8), 200).tobytes()
    pcm = np.frombuffer(ulaw_to_pcm16(square), dtype="<i2")
    exact = Upsampler().process(pcm)
    assert np.max(exact) > 32767.0  # the case is real
    out = np.frombuffer(CallerToModel().convert(square), dtype="<i2")
    expected = np.clip(np.rint(exact), -32768, 32767).astype(np.int16)
    assert np.array_equal(out, expected)


# --- model -> caller -------------------------------------------------------------------------


def test_model_to_caller_1khz_duration_frequency_snr() -> None:
    x = tone(1000.0, 1.0, RATE_OUT, 0.5)
    conv = ModelToCaller()
    body = b"".join(
        conv.convert(c) for c in (to_pcm16(x)[i : i + 960] for i in range(0, 48000, 960))
    )
    assert len(body) == len(x) // 3
    tail = conv.flush()
    assert len(tail) == DELAY_8K
    y = from_ulaw(body + tail)
    assert dominant_frequency(y, RATE_IN) == pytest.approx(1000.0, abs=0.5)
    assert snr_db(y, tone(1000.0, 1.0, RATE_IN, 0.5), max_lag=100, edge=80) >= 30.0


@pytest.mark.parametrize(("freq", "folded"), [(5000.0, 3000.0), (10000.0, 2000.0)])
def test_model_to_caller_rejects_aliases(freq: float, folded: float) -> None:
    # Faded in and out: a hard-gated tone really has energy in band (see `fade`).
    x = fade(tone(freq, 1.0, RATE_OUT, 0.5), RATE_OUT, 0.01)
    y = model_to_caller(to_pcm16(x))
    assert rms_db(x) - rms_db(y) >= 60.0
    assert band_energy_db(y, RATE_IN, folded - 100, folded + 100) <= rms_db(x) - 60.0
    # The filter itself, before mu-law rounds the residue away:
    z = Downsampler().process(x * np.float32(32768.0)) / np.float32(32768.0)
    assert rms_db(x) - rms_db(z[100:-100]) >= 80.0


def test_model_to_caller_passband_flat() -> None:
    gains = []
    for f in (300.0, 1000.0, 2000.0, 3000.0, 3400.0):
        x = tone(f, 0.2, RATE_OUT, 1.0)
        y = Downsampler().process(x)[200:]
        gains.append(rms_db(y) - rms_db(x[600:]))
    assert max(gains) - min(gains) <= 0.1


def test_model_to_caller_odd_bytes_and_remainders() -> None:
    conv = ModelToCaller()
    assert conv.convert(b"\x00") == b""  # half a sample is carried
    assert conv.convert(b"\x00") == b"\xff"  # one sample completes output 0
    assert conv.convert(b"\x00\x00" * 2) == b""  # samples 1-2 belong to output 0's period
    assert len(conv.convert(b"\x00\x00" * 4)) == 2  # samples 3-6: outputs 1 and 2
    assert len(conv.flush()) == DELAY_8K


# --- streaming invariance --------------------------------------------------------------------


def test_model_to_caller_chunking_is_bit_identical() -> None:
    rng = np.random.default_rng(7)
    noise = np.clip(rng.standard_normal(3 * RATE_OUT) * 0.2, -1, 1).astype(np.float32)
    pcm = to_pcm16(noise + tone(700.0, 3.0, RATE_OUT, 0.3))
    one_shot = ModelToCaller()
    expected = one_shot.convert(pcm) + one_shot.flush()
    streamed = ModelToCaller()
    chunks = random_chunks(pcm, rng, 3001)
    assert any(len(c) % 2 for c in chunks)
    got = b"".join(streamed.convert(c) for c in chunks) + streamed.flush()
    assert got == expected


def test_caller_to_model_chunking_is_bit_identical() -> None:
    rng = np.random.default_rng(11)
    ulaw = rng.integers(0, 256, 2 * RATE_IN, dtype=np.uint8).tobytes()
    expected = CallerToModel().convert(ulaw)
    streamed = CallerToModel()
    got = b"".join(streamed.convert(c) for c in random_chunks(ulaw, rng, 700))
    assert got == expected


def test_large_single_chunk_grows_buffers() -> None:
    x = to_pcm16(tone(440.0, 10.0, RATE_OUT, 0.5))
    big = ModelToCaller().convert(x)
    small = model_to_caller(x)
    assert from_ulaw(big).tolist() == small[: len(big)].tolist()
    up = CallerToModel().convert(to_ulaw(tone(440.0, 10.0, RATE_IN, 0.5)))
    assert len(up) == 2 * 3 * 10 * RATE_IN


def test_no_clicks_at_frame_boundaries() -> None:
    x8 = tone(1000.0, 0.5, RATE_IN, 0.5)
    streamed = caller_to_model(to_ulaw(x8), chunk=37)
    one_shot = caller_to_model(to_ulaw(x8), chunk=len(x8))
    body = slice(300, -300)
    assert np.max(np.abs(np.diff(streamed[body]))) == np.max(np.abs(np.diff(one_shot[body])))
    # The largest step of an ideal 1 kHz sine at 24 kHz, plus mu-law noise headroom:
    assert np.max(np.abs(np.diff(streamed[body]))) <= 2 * np.pi * 1000 / RATE_OUT * 0.5 * 1.1
    x24 = tone(1000.0, 0.5, RATE_OUT, 0.5)
    down = model_to_caller(to_pcm16(x24), chunk=333)
    assert np.max(np.abs(np.diff(down[50:-50]))) <= 2 * np.pi * 1000 / RATE_IN * 0.5 * 1.1


# --- state -----------------------------------------------------------------------------------


def test_flush_returns_the_tail_then_resets() -> None:
    x = to_pcm16(tone(500.0, 0.1, RATE_OUT, 0.5))
    conv = ModelToCaller()
    body = conv.convert(x)
    tail = conv.flush()
    assert len(body) == 800
    assert len(tail) == DELAY_8K
    assert rms_db(from_ulaw(tail)) > -20.0  # the last 4 ms of the tone live in the tail
    assert conv.flush() == b""  # nothing new since the flush
    assert conv.convert(x) == body  # flush left a fresh converter behind


def test_reset_forgets_state() -> None:
    loud = to_pcm16(tone(800.0, 0.1, RATE_OUT, 0.9))
    quiet = bytes(960 + 1)  # silence, with an odd byte
    conv = ModelToCaller()
    conv.convert(loud + b"\x01")  # leaves filter history, a remainder and an odd byte
    conv.reset()
    assert conv.convert(quiet) == ModelToCaller().convert(quiet) == b"\xff" * 160
    assert conv.flush() == b"\xff" * DELAY_8K
    up = CallerToModel()
    up.convert(to_ulaw(tone(800.0, 0.1, RATE_IN, 0.9)))
    up.reset()
    assert up.convert(b"\xff" * 160) == bytes(960)


# --- framing and same-rate codecs ------------------------------------------------------------


def test_framer_cuts_full_frames_and_pads_the_rest() -> None:
    framer = Framer()
    assert framer.push(b"\x01" * 100) == []
    assert framer.pending == 100
    frames = framer.push(b"\x02" * 300)
    assert [len(f) for f in frames] == [160, 160]
    assert frames[0] == b"\x01" * 100 + b"\x02" * 60
    assert framer.pending == 80
    last = framer.flush()
    assert last == b"\x02" * 80 + b"\xff" * 80
    assert framer.pending == 0
    assert framer.flush() == b""
    framer.push(b"\x03" * 10)
    framer.reset()
    assert framer.pending == 0
    assert framer.flush() == b""


def test_framer_rejects_bad_size() -> None:
    with pytest.raises(ValueError, match="positive"):
        Framer(0)


def test_same_rate_codecs_round_trip() -> None:
    x = tone(600.0, 0.1, RATE_IN, 0.5)
    ulaw = pcm16_to_ulaw(to_pcm16(x))
    assert len(ulaw) == len(x)
    back = from_pcm16(ulaw_to_pcm16(ulaw))
    assert snr_db(back, x, max_lag=0, edge=0) >= 30.0
    with pytest.raises(ValueError, match="even"):
        pcm16_to_ulaw(b"\x00")


# --- speed and benchmark ---------------------------------------------------------------------


def test_speed_is_vectorised() -> None:
    # Loose bound (target is 20 µs): catches per-sample Python, not scheduler noise.
    up, down = CallerToModel(), ModelToCaller()
    ulaw, pcm = b"\x10" * FRAME_BYTES, bytes(960)
    times = []
    for _ in range(300):
        t0 = time.perf_counter_ns()
        up.convert(ulaw)
        down.convert(pcm)
        times.append(time.perf_counter_ns() - t0)
    assert float(np.median(times)) / 1000.0 < 200.0


def test_bench_run_reports_targets_met() -> None:
    results = bench_audio.run(frames=200, warmup=20)
    assert results["caller_to_model_delay_ms"] == pytest.approx(4.125, abs=0.01)
    assert results["model_to_caller_delay_ms"] == pytest.approx(4.125, abs=0.01)
    assert results["alias_rejection_5k_db"] >= 80.0
    assert results["alias_rejection_10k_db"] >= 80.0
    assert results["snr_440hz_caller_to_model_db"] >= 30.0
    assert results["passband_flatness_caller_to_model_db"] <= 0.1
    assert results["passband_flatness_model_to_caller_db"] <= 0.1
    assert results["filter_stopband_db"] >= 80.0
    assert results["caller_to_model_us_per_frame"] > 0.0
