"""Microbenchmark and quality report for the transcoder (`bridge bench audio`).

Speed per 20 ms frame each way, plus measured delay, aliasing, SNR and passband flatness.
"""

from __future__ import annotations

import gc
import time
from collections.abc import Callable
from typing import Any

import numpy as np
from numpy.typing import NDArray

from bridge.audio import (
    FILTER_TAPS,
    FRAME_BYTES,
    CallerToModel,
    Downsampler,
    ModelToCaller,
    Upsampler,
)
from bridge.sim import analysis, signals

__all__ = ["main", "median_us", "run"]

_RATE_IN = 8000
_RATE_OUT = 24000
_FRAMES = 5000
_WARMUP = 500
_PCM_FRAME_BYTES = FRAME_BYTES * 3 * 2  # 20 ms of 24 kHz PCM16


def median_us(step: Callable[[int], object], frames: int, warmup: int) -> float:
    """Median microseconds of `step(i)` over `frames` calls, after `warmup`, GC paused."""
    for i in range(warmup):
        step(i)
    times = np.empty(frames, dtype=np.int64)
    gc_was_enabled = gc.isenabled()
    gc.disable()  # a collection inside one sample is noise, not transcoder cost
    try:
        for i in range(frames):
            t0 = time.perf_counter_ns()
            step(i)
            times[i] = time.perf_counter_ns() - t0
    finally:
        if gc_was_enabled:
            gc.enable()
    return float(np.median(times)) / 1000.0


def _speed(frames: int, warmup: int) -> tuple[float, float]:
    speech8 = signals.to_ulaw(signals.speech("Thanks for calling, how can I help?", _RATE_IN))
    speech24 = signals.to_pcm16(signals.speech("Sure, one moment please.", _RATE_OUT))
    ulaw = [speech8[i : i + FRAME_BYTES] for i in range(0, len(speech8), FRAME_BYTES)]
    ulaw = [f for f in ulaw if len(f) == FRAME_BYTES]
    pcm = [speech24[i : i + _PCM_FRAME_BYTES] for i in range(0, len(speech24), _PCM_FRAME_BYTES)]
    pcm = [f for f in pcm if len(f) == _PCM_FRAME_BYTES]
    up, down = CallerToModel(), ModelToCaller()
    c2m = median_us(lambda i: up.convert(ulaw[i % len(ulaw)]), frames, warmup)
    m2c = median_us(lambda i: down.convert(pcm[i % len(pcm)]), frames, warmup)
    return c2m, m2c


def _peak_position(y: NDArray[np.float32]) -> float:
    k = int(np.argmax(np.abs(y)))
    if 0 < k < len(y) - 1:
        a, b, c = np.abs(y[k - 1 : k + 2]).astype(np.float64)
        denom = a - 2.0 * b + c
        if denom != 0.0:
            return float(k + 0.5 * (a - c) / denom)
    return float(k)


def _delays_ms() -> tuple[float, float]:
    # An impulse at a known position; where its response peaks is the delay.
    start = 30  # 8 kHz samples
    impulse8 = np.zeros(400, dtype=np.float32)
    impulse8[start] = 0.9
    y24 = signals.from_pcm16(CallerToModel().convert(signals.to_ulaw(impulse8)))
    up_ms = (_peak_position(y24) - 3 * start) * 1000.0 / _RATE_OUT
    impulse24 = np.zeros(1200, dtype=np.float32)
    impulse24[3 * start] = 0.9
    m2c = ModelToCaller()
    y8 = signals.from_ulaw(m2c.convert(signals.to_pcm16(impulse24)) + m2c.flush())
    down_ms = (_peak_position(y8) - start) * 1000.0 / _RATE_IN
    return up_ms, down_ms


def _alias_rejection_db(freq_hz: float) -> float:
    # Measured on the decimator's float output, before mu-law: mu-law rounds the residue to
    # exact zeros, which would hide the filter's real figure.
    x = signals.tone(freq_hz, 1.0, _RATE_OUT, amplitude=0.5)
    y = Downsampler().process(x * np.float32(32768.0)) / np.float32(32768.0)
    return analysis.rms_db(x) - analysis.rms_db(y[100:-100])


def _snr_440_db() -> float:
    x = signals.tone(440.0, 1.0, _RATE_IN)
    y = signals.from_pcm16(CallerToModel().convert(signals.to_ulaw(x)))
    return analysis.snr_db(y, signals.tone(440.0, 1.0, _RATE_OUT))


def _gain_db(y: NDArray[np.floating[Any]], freq_hz: float, rate: int) -> float:
    n = np.arange(len(y)) / rate
    basis = np.stack([np.sin(2 * np.pi * freq_hz * n), np.cos(2 * np.pi * freq_hz * n)], axis=1)
    coef, *_ = np.linalg.lstsq(basis, y.astype(np.float64), rcond=None)
    return 20.0 * float(np.log10(np.hypot(coef[0], coef[1])))


def _flatness_db() -> tuple[float, float]:
    """Peak-to-peak gain (dB) over 300-3400 Hz for each direction's filter (float path)."""
    up_gains, down_gains = [], []
    for f in np.arange(300.0, 3401.0, 100.0):
        x8 = signals.tone(float(f), 0.2, _RATE_IN, amplitude=1.0)
        y24 = Upsampler().process(x8)[600:]
        up_gains.append(_gain_db(y24, float(f), _RATE_OUT))
        x24 = signals.tone(float(f), 0.2, _RATE_OUT, amplitude=1.0)
        y8 = Downsampler().process(x24)[200:]
        down_gains.append(_gain_db(y8, float(f), _RATE_IN))
    return float(np.ptp(up_gains)), float(np.ptp(down_gains))


def _stopband_db() -> float:
    """Smallest attenuation (dB) of the prototype filter from 4 kHz to 12 kHz."""
    spectrum = np.abs(np.fft.rfft(FILTER_TAPS, 1 << 16))
    freqs = np.fft.rfftfreq(1 << 16, 1.0 / _RATE_OUT)
    return -20.0 * float(np.log10(spectrum[freqs >= 4000.0].max()))


def run(frames: int = _FRAMES, warmup: int = _WARMUP) -> dict[str, float]:
    """Measure speed and quality of the transcoder; keys are self-describing with units."""
    c2m_us, m2c_us = _speed(frames, warmup)
    up_ms, down_ms = _delays_ms()
    up_flat, down_flat = _flatness_db()
    return {
        "caller_to_model_us_per_frame": c2m_us,
        "model_to_caller_us_per_frame": m2c_us,
        "caller_to_model_delay_ms": up_ms,
        "model_to_caller_delay_ms": down_ms,
        "alias_rejection_5k_db": _alias_rejection_db(5000.0),
        "alias_rejection_10k_db": _alias_rejection_db(10000.0),
        "snr_440hz_caller_to_model_db": _snr_440_db(),
        "passband_flatness_caller_to_model_db": up_flat,
        "passband_flatness_model_to_caller_db": down_flat,
        "filter_stopband_db": _stopband_db(),
    }


_LABELS = {
    "caller_to_model_us_per_frame": ("caller->model speed (median, 20 ms frame)", "µs", 20.0),
    "model_to_caller_us_per_frame": ("model->caller speed (median, 20 ms frame)", "µs", 20.0),
    "caller_to_model_delay_ms": ("caller->model delay (impulse)", "ms", 5.0),
    "model_to_caller_delay_ms": ("model->caller delay (impulse)", "ms", 5.0),
    "alias_rejection_5k_db": ("alias rejection, 5 kHz tone (model->caller)", "dB", -80.0),
    "alias_rejection_10k_db": ("alias rejection, 10 kHz tone (model->caller)", "dB", -80.0),
    "snr_440hz_caller_to_model_db": ("SNR 440 Hz caller->model (mu-law bound)", "dB", -30.0),
    "passband_flatness_caller_to_model_db": ("flatness 300-3400 Hz caller->model", "dB", 0.1),
    "passband_flatness_model_to_caller_db": ("flatness 300-3400 Hz model->caller", "dB", 0.1),
    "filter_stopband_db": ("filter stopband from 4 kHz", "dB", -80.0),
}


def _target(limit: float) -> str:
    # Negative limits are "at least |limit|", positive ones "at most limit".
    return f">= {-limit:g}" if limit < 0 else f"<= {limit:g}"


def _passes(value: float, limit: float) -> bool:
    return value >= -limit if limit < 0 else value <= limit


def main() -> int:
    """Run the benchmark and print a table; returns 0 when every target is met, else 1."""
    results = run()
    width = max(len(label) for label, _, _ in _LABELS.values())
    print(f"{'measure':<{width}}  {'value':>9}  unit  target    ok")
    ok = True
    for key, value in results.items():
        label, unit, limit = _LABELS[key]
        passed = _passes(value, limit)
        ok = ok and passed
        mark = "yes" if passed else "NO"
        print(f"{label:<{width}}  {value:>9.3f}  {unit:<4}  {_target(limit):<8}  {mark}")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
