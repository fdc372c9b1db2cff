"""Numeric audio checks for tests, demo and benchmark: frequency, level, alignment, SNR, activity.

Levels are in dBFS with a full-scale value of 1.0 (a full-scale sine is -3 dBFS); silence is
floored at -200 dB rather than -inf.
"""

from __future__ import annotations

import math

import numpy as np
from numpy.typing import NDArray

__all__ = [
    "DB_FLOOR",
    "active_segments",
    "band_energy_db",
    "best_lag",
    "dominant_frequency",
    "rms_db",
    "snr_db",
]

DB_FLOOR = -200.0
_POWER_FLOOR = 10.0 ** (DB_FLOOR / 10.0)


def _f64(x: NDArray[np.generic]) -> NDArray[np.float64]:
    return np.asarray(x, dtype=np.float64).reshape(-1)


def _power_db(power: float) -> float:
    return 10.0 * math.log10(max(power, _POWER_FLOOR))


def rms_db(x: NDArray[np.generic]) -> float:
    """RMS level in dBFS (floored at DB_FLOOR for silence or empty input)."""
    v = _f64(x)
    return _power_db(float(np.mean(v * v))) if len(v) else DB_FLOOR


def dominant_frequency(x: NDArray[np.generic], rate: int) -> float:
    """Frequency (Hz) of the strongest spectral peak: Hann window, 4× zero padding, and
    parabolic interpolation of the log magnitude. Returns 0.0 for silence."""
    v = _f64(x)
    if len(v) < 4:
        return 0.0
    v = v - v.mean()
    nfft = 1 << math.ceil(math.log2(4 * len(v)))
    mag = np.abs(np.fft.rfft(v * np.hanning(len(v)), nfft))
    k = int(np.argmax(mag[1:-1])) + 1
    if mag[k] <= 0.0:
        return 0.0
    a, b, c = np.log(np.maximum(mag[k - 1 : k + 2], 1e-300))
    denom = a - 2.0 * b + c
    delta = 0.5 * (a - c) / denom if denom != 0.0 else 0.0
    return float((k + delta) * rate / nfft)


def _blackman_harris(n: int) -> NDArray[np.float64]:
    # 4-term, -92 dB sidelobes: strong tones do not leak into a distant measurement band.
    k = 2.0 * np.pi * np.arange(n) / max(n - 1, 1)
    return 0.35875 - 0.48829 * np.cos(k) + 0.14128 * np.cos(2 * k) - 0.01168 * np.cos(3 * k)


def band_energy_db(x: NDArray[np.generic], rate: int, lo_hz: float, hi_hz: float) -> float:
    """Mean power (dBFS) of the part of `x` between `lo_hz` and `hi_hz` inclusive.

    Blackman-Harris windowed periodogram normalised so that the sum over all bands equals
    the signal's mean square (a full-scale sine in band reads -3 dB).
    """
    v = _f64(x)
    n = len(v)
    if n == 0:
        return DB_FLOOR
    win = _blackman_harris(n)
    spec = np.abs(np.fft.rfft(v * win)) ** 2
    spec[1:] *= 2.0  # one-sided: count the negative frequencies too...
    if n % 2 == 0:
        spec[-1] /= 2.0  # ...except for the Nyquist bin, which has no mirror
    freqs = np.fft.rfftfreq(n, 1.0 / rate)
    band = (freqs >= lo_hz) & (freqs <= hi_hz)
    return _power_db(float(spec[band].sum()) / (n * float(np.sum(win * win))))


def best_lag(x: NDArray[np.generic], reference: NDArray[np.generic], max_lag: int) -> int:
    """Lag L in [-max_lag, max_lag] maximising sum x[n + L] * reference[n].

    Positive L means `x` is delayed relative to `reference`.
    """
    a, r = _f64(x), _f64(reference)
    if len(a) == 0 or len(r) == 0:
        return 0
    n = 1 << math.ceil(math.log2(len(a) + len(r)))
    corr = np.fft.irfft(np.fft.rfft(a, n) * np.conj(np.fft.rfft(r, n)), n)
    hi = min(max_lag, len(a) - 1)
    lo = min(max_lag, len(r) - 1)
    lags = np.concatenate([np.arange(0, hi + 1), np.arange(-lo, 0)])
    values = np.concatenate([corr[: hi + 1], corr[n - lo :] if lo else corr[:0]])
    return int(lags[int(np.argmax(values))])


def snr_db(
    x: NDArray[np.generic], reference: NDArray[np.generic], max_lag: int = 2000, edge: int = 240
) -> float:
    """SNR (dB) of `x` against `reference` after alignment and a least-squares gain.

    The reference is shifted by `best_lag`, scaled by the least-squares gain g, and
    SNR = power(g * ref) / power(x - g * ref) over the overlap minus `edge` samples at each
    end (240 = 10 ms at 24 kHz). Capped at 200 dB for identical signals.
    """
    a, r = _f64(x), _f64(reference)
    lag = best_lag(a, r, max_lag)
    if lag >= 0:
        a = a[lag:]
    else:
        r = r[-lag:]
    n = min(len(a), len(r))
    a, r = a[edge : n - edge], r[edge : n - edge]
    ref_power = float(np.dot(r, r))
    if len(a) == 0 or ref_power == 0.0:
        return DB_FLOOR
    g = float(np.dot(a, r)) / ref_power
    signal = g * r
    noise = a - signal
    noise_power = float(np.dot(noise, noise))
    if noise_power == 0.0:
        return -DB_FLOOR
    return min(
        -DB_FLOOR, 10.0 * math.log10(max(float(np.dot(signal, signal)), _POWER_FLOOR) / noise_power)
    )


def active_segments(
    x: NDArray[np.generic], rate: int, threshold_db: float = -40.0, min_gap_s: float = 0.15
) -> list[tuple[float, float]]:
    """(start_s, end_s) spans where the 20 ms RMS exceeds `threshold_db` dBFS.

    Spans separated by less than `min_gap_s` are merged into one.
    """
    v = _f64(x)
    hop = max(1, round(0.020 * rate))
    frames = len(v) // hop
    if frames == 0:
        return []
    power = np.mean(v[: frames * hop].reshape(frames, hop) ** 2, axis=1)
    active = power > 10.0 ** (threshold_db / 10.0)
    spans: list[tuple[float, float]] = []
    padded = np.concatenate([[False], active, [False]]).astype(np.int8)
    starts = np.nonzero(np.diff(padded) == 1)[0]
    ends = np.nonzero(np.diff(padded) == -1)[0]
    for s, e in zip(starts, ends, strict=True):
        start, end = int(s) * hop / rate, int(e) * hop / rate
        if spans and start - spans[-1][1] < min_gap_s:
            spans[-1] = (spans[-1][0], end)
        else:
            spans.append((start, end))
    return spans
