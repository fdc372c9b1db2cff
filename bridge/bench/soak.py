"""The soak's arithmetic, Sans-I/O: samples of the bridge process over time in, per-minute rows
and a verdict out (does memory, do file descriptors, tasks and latency stay flat?).

Minute k holds the samples taken in (60(k-1), 60k] seconds of soak time (the first sample, at 0,
belongs to minute 1). The verdict leaves out the warm-up: minute 1 (start-up, first
allocations), and, when the soak gives it (`warmup_s`), the time until every place's first call
has ended (the longest call). Until then the live calls are younger than a steady population's,
and a call's state grows as it goes until its bounded histories are full; from then on the calls
alive are a steady population (the first calls last what is left of a call met in progress, so
calls start and end at the steady rate throughout). At least 3 minutes are always judged. Over
the judged minutes:

- memory: the slope of a least-squares line through the RSS samples, per live call, in MB per
  call-hour. Flat below `RSS_FLAT_MB_PER_CALL_HOUR` (0.1): a twentieth of the growth this soak
  found (1.8 MB per call-hour), and five times what a 10-minute soak at 200 calls resolves (the
  fit's standard error there is about 0.02 MB per call-hour with RSS wandering by 1 MB);
- file descriptors and tasks: the rise of the fitted line over the window. Flat within 2 (calls
  being replaced at the moment of a sample) plus one per hundred calls replaced in the window,
  so a leak of one per call is caught at once and one per hundred calls in a long soak;
- latency: each way, the last minute's p99 within 1.5 times the first judged minute's, or 5 ms
  above it.

The RSS slope over the second half of the window is given too (not judged): memory that settles
(a plateau reached after a few minutes) shows a slope over the window and none in its second
half; a leak shows both.
"""

from __future__ import annotations

import dataclasses
import math
import random
from collections.abc import Mapping, Sequence
from typing import Any

__all__ = [
    "Fit",
    "MinuteLatency",
    "Sample",
    "first_call_seconds",
    "linear_fit",
    "minute_of",
    "minute_rows",
    "verdict",
]

MINUTE_S = 60.0
MB = 1024 * 1024
MIN_JUDGED_MINUTES = 3
RSS_FLAT_MB_PER_CALL_HOUR = 0.1
COUNT_NOISE = 2.0
COUNT_PER_REPLACED = 0.01
LATENCY_RATIO = 1.5
LATENCY_SLACK_MS = 5.0
SATURATED_CORES = 0.85  # of a core per event loop, and a loop uses one core at most


@dataclasses.dataclass(frozen=True, slots=True)
class Sample:
    """The bridge process at one moment of the soak."""

    t: float  # seconds since the soak began
    rss: int  # bytes, summed over its processes
    fds: int | None  # open file descriptors (None: not readable)
    tasks: int | None  # asyncio tasks (None: not reported)
    live: int  # calls bridged at that moment
    ended: int  # calls ended (and replaced) so far
    cpu_s: float | None = None  # CPU seconds the bridge has used so far


@dataclasses.dataclass(frozen=True, slots=True)
class MinuteLatency:
    """Added latency over one minute, each way: (p50, p99) in ms, None without samples."""

    caller_to_model: tuple[float | None, float | None]
    model_to_caller: tuple[float | None, float | None]


@dataclasses.dataclass(frozen=True, slots=True)
class Fit:
    slope: float  # per second
    intercept: float
    stderr: float  # of the slope


def first_call_seconds(rng: random.Random, shortest: float, longest: float) -> float:
    """How long the first call in each of the soak's places lasts: what is left of a call met
    in progress, for calls whose lengths are uniform over [shortest, longest] (a moment chosen
    at random meets the longer calls more often). Calls then end at the steady rate from the
    start, as in a bridge that has been serving for a while, instead of in one wave when the
    first calls all reach `shortest`. Drawn by rejection: x uniform over [0, longest], kept with
    the chance that a call outlasts x."""
    while True:
        left = rng.uniform(0.0, longest)
        if left <= shortest or rng.random() * (longest - shortest) <= longest - left:
            return left


def minute_of(t: float) -> int:
    """The minute (from 1) a sample taken at `t` seconds belongs to."""
    return max(1, math.ceil(t / MINUTE_S - 1e-9))


def linear_fit(points: Sequence[tuple[float, float]]) -> Fit | None:
    """Least squares through (x, y); None for fewer than three points or a single x."""
    n = len(points)
    if n < 3:
        return None
    mean_x = sum(x for x, _ in points) / n
    mean_y = sum(y for _, y in points) / n
    sxx = sum((x - mean_x) ** 2 for x, _ in points)
    if sxx <= 0:
        return None
    slope = sum((x - mean_x) * (y - mean_y) for x, y in points) / sxx
    intercept = mean_y - slope * mean_x
    residuals = sum((y - intercept - slope * x) ** 2 for x, y in points)
    return Fit(slope, intercept, math.sqrt(residuals / (n - 2) / sxx))


def _mean(values: Sequence[float]) -> float | None:
    return sum(values) / len(values) if values else None


def _round(value: float | None, digits: int) -> float | None:
    return None if value is None else round(value, digits)


def _cores(before: Sample | None, last: Sample | None) -> float | None:
    """CPU cores the bridge used between two samples."""
    if before is None or last is None or last.t <= before.t:
        return None
    if before.cpu_s is None or last.cpu_s is None:
        return None
    return (last.cpu_s - before.cpu_s) / (last.t - before.t)


def minute_rows(
    samples: Sequence[Sample], latency: Mapping[int, MinuteLatency]
) -> list[dict[str, Any]]:
    """One row per minute: means of its samples, the bridge's CPU over it (cores), calls
    ended in it, latency each way."""
    by_minute: dict[int, list[Sample]] = {}
    for sample in samples:
        by_minute.setdefault(minute_of(sample.t), []).append(sample)
    rows = []
    before = samples[0] if samples else None  # the last sample of the minute before
    for minute in sorted(by_minute.keys() | latency.keys()):
        group = by_minute.get(minute, [])
        fds = [s.fds for s in group if s.fds is not None]
        tasks = [s.tasks for s in group if s.tasks is not None]
        rss = _mean([s.rss / MB for s in group])
        last = group[-1] if group else before
        cores = _cores(before, last)
        lat = latency.get(minute, MinuteLatency((None, None), (None, None)))
        rows.append(
            {
                "minute": minute,
                "samples": len(group),
                "rss_mb": _round(rss, 2),
                "fds": _round(_mean(fds), 1),
                "tasks": _round(_mean(tasks), 1),
                "live": _round(_mean([s.live for s in group]), 1),
                "cpu_cores": _round(cores, 3),
                "calls_ended": (last.ended if last else 0) - (before.ended if before else 0),
                "caller_to_model_ms": {
                    "p50": lat.caller_to_model[0],
                    "p99": lat.caller_to_model[1],
                },
                "model_to_caller_ms": {
                    "p50": lat.model_to_caller[0],
                    "p99": lat.model_to_caller[1],
                },
            }
        )
        before = last
    return rows


def saturated(cores: float | None, loops: int = 1) -> bool:
    """Whether a bridge with `loops` event loops that used `cores` of CPU ran them flat out (the
    rule of both the capacity report and the soak)."""
    return cores is not None and cores >= SATURATED_CORES * loops


def saturated_minutes(rows: Sequence[Mapping[str, Any]], loops: int = 1) -> list[int]:
    """The minutes (of `minute_rows`) in which the bridge was `saturated`. Its loop was then busy
    nearly all the time: audio waited behind it, so what the soak saw is the machine's limit for
    this mix (latency as queueing, memory as what the queues held at their longest), not how the
    bridge behaves with headroom."""
    return [row["minute"] for row in rows if saturated(row["cpu_cores"], loops)]


def _count_verdict(window: Sequence[Sample], values: list[float | None]) -> dict[str, Any] | None:
    points = [(s.t, float(v)) for s, v in zip(window, values, strict=True) if v is not None]
    fit = linear_fit(points)
    if fit is None:
        return None
    span = points[-1][0] - points[0][0]
    rise = fit.slope * span
    replaced = window[-1].ended - window[0].ended
    tolerance = COUNT_NOISE + COUNT_PER_REPLACED * replaced
    return {
        "rise": round(rise, 2),
        "per_hour": round(fit.slope * 3600.0, 2),
        "tolerance": round(tolerance, 2),
        "flat": rise <= tolerance,
    }


def _latency_verdict(
    latency: Mapping[int, MinuteLatency], first: int, last: int, way: str
) -> dict[str, Any] | None:
    a = getattr(latency.get(first), way, (None, None))[1]
    b = getattr(latency.get(last), way, (None, None))[1]
    if a is None or b is None:
        return None
    limit = max(a * LATENCY_RATIO, a + LATENCY_SLACK_MS)
    return {"first_p99": a, "last_p99": b, "limit": round(limit, 3), "flat": b <= limit}


def first_judged_minute(warmup_s: float, last_minute: int) -> int:
    """The first minute after the warm-up, leaving at least `MIN_JUDGED_MINUTES`; never 1."""
    after_warmup = minute_of(max(warmup_s, MINUTE_S)) + 1
    return max(2, min(after_warmup, last_minute - MIN_JUDGED_MINUTES + 1))


def verdict(
    samples: Sequence[Sample],
    latency: Mapping[int, MinuteLatency],
    *,
    warmup_s: float = MINUTE_S,
) -> dict[str, Any]:
    """Whether RSS, fds, tasks and latency stay flat after the warm-up (see the module doc).
    `enough` is False when the window is too short to judge (a soak under 3 minutes)."""
    last_minute = minute_of(samples[-1].t) if samples else 0
    start = first_judged_minute(warmup_s, last_minute)
    window = [s for s in samples if minute_of(s.t) >= start]
    judged: dict[str, Any] = {
        "warmup_s": warmup_s,
        "window_minutes": None,
        "enough": False,
        "rss": None,
        "fds": None,
        "tasks": None,
        "latency": {"caller_to_model": None, "model_to_caller": None},
        "flat": None,
    }
    if len(window) < 3 or window[-1].t - window[0].t < MINUTE_S:
        return judged
    first, last = minute_of(window[0].t), minute_of(window[-1].t)
    judged["window_minutes"] = [first, last]
    judged["enough"] = True
    fit = linear_fit([(s.t, float(s.rss)) for s in window])
    middle = (window[0].t + window[-1].t) / 2.0
    late = linear_fit([(s.t, float(s.rss)) for s in window if s.t >= middle])
    live = _mean([s.live for s in window]) or 0.0
    if fit is not None and live > 0:
        per_call_hour = fit.slope * 3600.0 / MB / live
        late_per_call_hour = None if late is None else late.slope * 3600.0 / MB / live
        judged["rss"] = {
            "mb_per_hour": round(fit.slope * 3600.0 / MB, 3),
            "mb_per_call_hour": round(per_call_hour, 4),
            "stderr_mb_per_call_hour": round(fit.stderr * 3600.0 / MB / live, 4),
            "kb_per_call_second": round(fit.slope / 1024.0 / live, 4),
            "second_half_mb_per_call_hour": _round(late_per_call_hour, 4),
            "mean_live": round(live, 1),
            "limit_mb_per_call_hour": RSS_FLAT_MB_PER_CALL_HOUR,
            "flat": per_call_hour <= RSS_FLAT_MB_PER_CALL_HOUR,
        }
    judged["fds"] = _count_verdict(window, [s.fds for s in window])
    judged["tasks"] = _count_verdict(window, [s.tasks for s in window])
    for way in ("caller_to_model", "model_to_caller"):
        judged["latency"][way] = _latency_verdict(latency, first, last, way)
    parts = [judged["rss"], judged["fds"], judged["tasks"], *judged["latency"].values()]
    checked = [part["flat"] for part in parts if part is not None]
    judged["flat"] = all(checked) if checked else None
    return judged
