"""Signal helpers (bridge.sim.signals) and the numeric checks on them (bridge.sim.analysis)."""

from __future__ import annotations

import pathlib
import subprocess
from typing import Any

import numpy as np
import pytest

from bridge.sim import signals
from bridge.sim.analysis import (
    DB_FLOOR,
    active_segments,
    band_energy_db,
    best_lag,
    dominant_frequency,
    rms_db,
    snr_db,
)
from bridge.sim.signals import (
    fade,
    from_pcm16,
    from_ulaw,
    read_wav,
    resample,
    silence,
    speech,
    to_pcm16,
    to_ulaw,
    tone,
    write_wav,
)

pytestmark = pytest.mark.timeout(60)

SENTENCE = "Hello, thanks for calling."


@pytest.fixture(autouse=True)
def _fresh_speech_cache() -> None:
    signals._speech_cached.cache_clear()


# --- generators and codecs -------------------------------------------------------------------


def test_tone_and_silence() -> None:
    x = tone(1000.0, 0.5, 8000, amplitude=0.25)
    assert x.dtype == np.float32
    assert len(x) == 4000
    assert float(np.max(np.abs(x))) == pytest.approx(0.25, abs=1e-6)
    assert rms_db(x) == pytest.approx(20 * np.log10(0.25 / np.sqrt(2)), abs=0.01)
    s = silence(0.25, 24000)
    assert len(s) == 6000
    assert not np.any(s)


def test_fade_ramps_ends_only() -> None:
    x = fade(np.ones(1000, dtype=np.float32), 8000, 0.01)
    assert x[0] < 0.01
    assert x[-1] < 0.01
    assert np.all(x[80:-80] == 1.0)
    assert np.all(np.diff(x[:80]) > 0)


def test_pcm16_round_trip_and_saturation() -> None:
    x = np.array([0.0, 0.5, -0.5, 1.5, -1.5, 1.0 / 32768], dtype=np.float32)
    data = to_pcm16(x)
    assert len(data) == 2 * len(x)
    assert np.frombuffer(data, dtype="<i2").tolist() == [0, 16384, -16384, 32767, -32768, 1]
    back = from_pcm16(data)
    assert back.dtype == np.float32
    assert np.allclose(back[:3], x[:3])


def test_ulaw_round_trip_snr() -> None:
    x = tone(440.0, 0.5, 8000, 0.5)
    data = to_ulaw(x)
    assert len(data) == len(x)
    assert snr_db(from_ulaw(data), x, max_lag=0, edge=0) == pytest.approx(38.0, abs=3.0)


def test_wav_round_trip(tmp_path: pathlib.Path) -> None:
    x = tone(300.0, 0.2, 16000, 0.5)
    path = tmp_path / "t.wav"
    write_wav(path, x, 16000)
    y, rate = read_wav(path)
    assert rate == 16000
    assert np.max(np.abs(y - x)) <= 1.0 / 32768


# --- resampling ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("src", "dst"), [(22050, 8000), (22050, 24000), (8000, 24000), (24000, 8000)]
)
def test_resample_keeps_tone_and_length(src: int, dst: int) -> None:
    x = tone(1000.0, 1.0, src, 0.5)
    y = resample(x, src, dst)
    assert len(y) == dst
    assert dominant_frequency(y, dst) == pytest.approx(1000.0, abs=0.1)
    assert snr_db(y, tone(1000.0, 1.0, dst, 0.5), max_lag=10, edge=dst // 50) >= 60.0


def test_resample_removes_content_above_new_nyquist() -> None:
    x = fade(tone(5000.0, 1.0, 22050, 0.5), 22050)
    y = resample(x, 22050, 8000)
    assert rms_db(x) - rms_db(y) >= 80.0  # would fold to 3 kHz without the band limit


def test_resample_identity_and_empty() -> None:
    x = tone(100.0, 0.01, 8000)
    assert np.array_equal(resample(x, 8000, 8000), x)
    assert len(resample(np.zeros(0, dtype=np.float32), 8000, 24000)) == 0
    with pytest.raises(ValueError, match="positive"):
        resample(x, 0, 8000)


# --- speech ----------------------------------------------------------------------------------


def assert_speech_like(x: np.ndarray[Any, Any], rate: int) -> None:
    assert x.dtype == np.float32
    assert float(np.max(np.abs(x))) == pytest.approx(0.5, abs=1e-3)
    assert len(x) / rate >= 0.5
    assert rms_db(x) > -40.0
    low = band_energy_db(x, rate, 0.0, 4000.0)
    high = band_energy_db(x, rate, 4000.0, rate / 2)
    assert low - high >= 10.0  # energy mostly in the telephone band
    assert 70.0 <= dominant_frequency(x, rate) <= 1500.0
    assert active_segments(x, rate, threshold_db=-45.0)


@pytest.mark.skipif(not signals.has_espeak(), reason="espeak-ng not installed")
def test_speech_with_espeak() -> None:
    x = speech(SENTENCE, 24000)
    assert_speech_like(x, 24000)
    assert len(speech(SENTENCE, 8000)) == pytest.approx(len(x) / 3, abs=1)


def test_speech_without_espeak_on_path(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", "")
    assert not signals.has_espeak()
    x = speech(SENTENCE, 24000)
    assert_speech_like(x, 24000)
    assert len(x) / 24000 == pytest.approx(0.07 * len(SENTENCE), abs=0.01)
    # Syllables: the envelope dips between them about four times a second.
    hop = 480
    env = np.sqrt(np.mean(x[: len(x) // hop * hop].reshape(-1, hop) ** 2, axis=1))
    dips = np.sum((env[1:-1] < env[:-2]) & (env[1:-1] <= env[2:]) & (env[1:-1] < 0.3 * env.max()))
    assert 2 <= dips <= 3 * len(x) / 24000 * 4


def test_speech_falls_back_when_espeak_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*args: object, **kwargs: object) -> subprocess.CompletedProcess[bytes]:
        raise subprocess.TimeoutExpired(cmd="espeak-ng", timeout=30.0)

    monkeypatch.setattr(signals, "has_espeak", lambda: True)
    monkeypatch.setattr(subprocess, "run", broken)
    assert_speech_like(speech(SENTENCE, 8000), 8000)


def test_speech_is_cached_and_returns_copies(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(signals, "has_espeak", lambda: False)
    a = speech("cached", 8000)
    a[:] = 0.0
    b = speech("cached", 8000)
    assert np.any(b)
    assert signals._speech_cached.cache_info().hits == 1


# --- analysis --------------------------------------------------------------------------------


@pytest.mark.parametrize("freq", [123.4, 440.0, 1000.0, 3210.9])
def test_dominant_frequency_accuracy(freq: float) -> None:
    assert dominant_frequency(tone(freq, 0.5, 8000), 8000) == pytest.approx(freq, abs=0.2)
    assert dominant_frequency(silence(0.1, 8000), 8000) == 0.0


def test_levels() -> None:
    assert rms_db(tone(1000.0, 1.0, 8000, 1.0)) == pytest.approx(-3.01, abs=0.01)
    assert rms_db(silence(0.1, 8000)) == DB_FLOOR
    assert rms_db(np.zeros(0, dtype=np.float32)) == DB_FLOOR
    x = tone(1000.0, 1.0, 8000, 0.5) + tone(3000.0, 1.0, 8000, 0.05)
    assert band_energy_db(x, 8000, 900, 1100) == pytest.approx(-9.03, abs=0.05)
    assert band_energy_db(x, 8000, 2900, 3100) == pytest.approx(-29.03, abs=0.05)
    assert band_energy_db(x, 8000, 1500, 2500) < -100.0  # window leakage stays far down


@pytest.mark.parametrize("shift", [0, 37, -12])
def test_best_lag_finds_shift(shift: int) -> None:
    rng = np.random.default_rng(3)
    ref = rng.standard_normal(4000).astype(np.float32)
    x = np.roll(ref, shift)
    assert best_lag(x, ref, max_lag=100) == shift


@pytest.mark.parametrize("level_db", [20.0, 30.0, 40.0])
def test_snr_with_known_noise(level_db: float) -> None:
    rng = np.random.default_rng(5)
    ref = tone(440.0, 1.0, 24000, 0.5)
    noise_rms = 0.5 / np.sqrt(2) * 10 ** (-level_db / 20)
    noisy = 0.7 * ref + 0.7 * noise_rms * rng.standard_normal(len(ref))
    delayed = np.concatenate([np.zeros(99), noisy]).astype(np.float32)
    assert snr_db(delayed, ref, max_lag=200) == pytest.approx(level_db, abs=0.3)
    assert snr_db(ref, ref) == -DB_FLOOR


def test_active_segments_merges_short_gaps() -> None:
    rate = 8000
    x = np.concatenate(
        [
            silence(0.2, rate),
            tone(500.0, 0.4, rate),
            silence(0.1, rate),  # shorter than min_gap_s: merged
            tone(500.0, 0.3, rate),
            silence(0.5, rate),
            tone(500.0, 0.2, rate),
            silence(0.2, rate),
        ]
    )
    spans = active_segments(x, rate)
    assert len(spans) == 2
    assert spans[0] == pytest.approx((0.2, 1.0), abs=0.021)
    assert spans[1] == pytest.approx((1.5, 1.7), abs=0.021)
    assert active_segments(silence(1.0, rate), rate) == []
    assert len(active_segments(x, rate, min_gap_s=0.05)) == 3
