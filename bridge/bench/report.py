"""Showing a capacity or soak report: a text table, the JSON file, and a PNG chart."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bridge.bench.soak import SATURATED_CORES, saturated

__all__ = ["chart", "soak_chart", "soak_table", "table", "write_json"]

Level = dict[str, Any]


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def _num(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _lat(key: str) -> Callable[[Level], str]:
    def cell(level: Level) -> str:
        s = level["latency_ms"][key]
        return f"{_ms(s['p50'])} / {_ms(s['p99'])} / {_ms(s['max'])}"

    return cell


def _reference(level: Level) -> str:
    ref = level["machine"].get("reference_us")
    return "-" if not ref else f"{ref[0]:.1f} / {ref[1]:.1f}"


ROWS: list[tuple[str, Callable[[Level], str]]] = [
    ("calls held / failed", lambda v: f"{v['calls']['held']} / {v['calls']['failed']}"),
    ("caller->model ms p50/p99/max", _lat("caller_to_model")),
    ("model->caller ms p50/p99/max", _lat("model_to_caller")),
    (
        "clear ms p50/p99 (n)",
        lambda v: (
            f"{_ms(v['latency_ms']['clear']['p50'])} / "
            f"{_ms(v['latency_ms']['clear']['p99'])} ({v['latency_ms']['clear']['count']})"
        ),
    ),
    (
        "truncation - heard ms p50/|p99|",
        lambda v: (
            f"{_ms(v['truncation_error_ms']['p50'])} / "
            f"{_ms(v['truncation_error_ms']['abs_p99'])} ({v['truncation_error_ms']['count']})"
        ),
    ),
    (
        "underruns (longest gap ms)",
        lambda v: f"{v['underruns']['count']} ({_ms(v['underruns']['gap_ms']['max'])})",
    ),
    (
        "replies / barge-ins / missed",
        lambda v: (
            f"{v['turns']['replies']} / {v['turns']['barge_ins']} / {v['turns']['missed_replies']}"
        ),
    ),
    (
        "bridge CPU cores (kernel share)",
        lambda v: f"{_num(v['bridge']['cpu_cores'])} ({_num(v['bridge'].get('cpu_system_share'))})",
    ),
    ("bridge CPU-s per call-minute", lambda v: _num(v["bridge"]["cpu_s_per_call_minute"], 3)),
    ("bridge RSS peak MB", lambda v: _num(v["bridge"]["rss_peak_mb"], 1)),
    ("bridge RSS per live call MB", lambda v: _num(v["bridge"]["rss_per_call_mb"], 3)),
    (
        "generator CPU cores (% core/call)",
        lambda v: (
            f"{_num(v['generator']['cpu_cores'])} "
            f"({_num(v['generator']['cpu_percent_of_core_per_call'], 3)})"
        ),
    ),
    ("generator tick lag p99 ms", lambda v: _ms(v["generator"]["tick_lag_ms"]["p99"])),
    ("other load on the machine (cores)", lambda v: _num(v["machine"]["other_load_cores"])),
    ("machine reference µs before/after", _reference),
    (
        "bridge instructions per call-second",
        lambda v: _num(v["bridge"].get("instructions_per_call_second"), 0),
    ),
]


def table(report: dict[str, Any]) -> str:
    levels: list[Level] = report["levels"]
    header = ["level (calls)", *(str(v["level"]) for v in levels)]
    rows = [header] + [[label, *(cell(v) for v in levels)] for label, cell in ROWS]
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = []
    for n, row in enumerate(rows):
        lines.append(
            "  ".join(
                cell.ljust(widths[i]) if i == 0 else cell.rjust(widths[i])
                for i, cell in enumerate(row)
            )
        )
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    config = report["config"]
    lines.insert(
        0,
        f"bridge capacity, audio mode {config['audio_mode']}, "
        + (f"{config['workers']} workers, " if config.get("workers", 1) > 1 else "")
        + ("every call recorded, " if config.get("record") else "")
        + f"{report['machine']['cores']} cores, load average at end "
        f"{report['machine']['loadavg_at_end']}",
    )
    lines.append("")
    if config.get("instructions"):
        lines.append(
            "the bridge ran under callgrind: its instructions are the measure; latency, CPU "
            "and saturation figures of this run describe valgrind, not the bridge"
        )
    knee = report["knee"]
    if len(levels) > 1 or knee["calls"] is not None:
        lines.append(
            f"knee: {knee['calls'] if knee['calls'] is not None else 'none'} calls "
            f"({knee['rule']}, limit {knee['limit_ms']:g} ms)"
        )
    loops = config.get("workers", 1)
    for level in levels:
        if level["calls"]["failures"]:
            reasons = ", ".join(f"{k}: {n}" for k, n in level["calls"]["failures"].items())
            lines.append(f"level {level['level']}: failed calls: {reasons}")
        cores = level["bridge"]["cpu_cores"]
        if saturated(cores, loops):
            can_use = f"the {loops} cores its loops" if loops > 1 else "the one core its event loop"
            lines.append(
                f"level {level['level']}: the bridge is SATURATED ({cores:.2f} of {can_use} "
                "can use): latency is queueing, CPU per call-minute is understated"
            )
        if level["generator"]["bottleneck"]:
            lines.append(
                f"level {level['level']}: the GENERATOR, not the bridge, is the bottleneck "
                f"({'; '.join(level['generator']['why'])}): latencies are overstated"
            )
        top = level.get("profile")
        if top and top["self"]:
            lines.append(f"level {level['level']}: bridge profile, {top['samples']} busy samples")
            lines.append("  self %   function")
            lines += [f"  {share:6.1f}   {name}" for name, share in top["self"]]
            lines.append("  incl %   function")
            lines += [f"  {share:6.1f}   {name}" for name, share in top["inclusive"]]
        if level["bridge"]["pid"] is None:
            lines.append(f"level {level['level']}: bridge pid unknown (use --pid): no CPU/memory")
    return "\n".join(lines)


def write_json(report: dict[str, Any], path: str | Path) -> None:
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(json.dumps(report, indent=2) + "\n")


def chart(report: dict[str, Any], path: str | Path) -> bool:
    """Latency percentiles and CPU per call against concurrency, and latency CDFs; False when
    matplotlib (the `bench` extra) is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    levels: list[Level] = report["levels"]
    calls = [v["level"] for v in levels]
    fig, (lat, cpu, cdf) = plt.subplots(1, 3, figsize=(16, 5))
    styles = {
        "caller_to_model": ("caller->model", "tab:blue"),
        "model_to_caller": ("model->caller", "tab:orange"),
        "clear": ("clear", "tab:green"),
    }
    for key, (label, color) in styles.items():
        for stat, line in (("p50", ":"), ("p99", "-")):
            values = [v["latency_ms"][key][stat] for v in levels]
            xs = [c for c, y in zip(calls, values, strict=True) if y is not None]
            ys = [y for y in values if y is not None]
            if ys:
                lat.plot(xs, ys, line, marker="o", color=color, label=f"{label} {stat}")
    lat.axhline(20.0, color="grey", linewidth=0.8)
    lat.axhline(5.0, color="grey", linewidth=0.8, linestyle="--")
    lat.set(xlabel="concurrent calls", ylabel="bridge-added latency (ms)", title="latency")
    lat.set_yscale("log")
    lat.legend(fontsize=7)
    per_min = [v["bridge"]["cpu_s_per_call_minute"] for v in levels]
    points = [(c, y) for c, y in zip(calls, per_min, strict=True) if y is not None]
    if points:
        cpu.plot(*zip(*points, strict=True), marker="o", label="bridge CPU-s per call-minute")
    gen = [v["generator"]["cpu_percent_of_core_per_call"] for v in levels]
    points = [(c, y / 100.0 * 60.0) for c, y in zip(calls, gen, strict=True) if y is not None]
    if points:
        cpu.plot(
            *zip(*points, strict=True),
            marker="s",
            linestyle="--",
            label="generator CPU-s per call-minute",
        )
    cpu.axhline(0.3, color="grey", linewidth=0.8)
    cpu.set(xlabel="concurrent calls", ylabel="CPU-s per call-minute", title="CPU per call")
    cpu.set_ylim(bottom=0)
    cpu.legend(fontsize=7)
    for level in levels:
        for key, (label, _) in list(styles.items())[:2]:
            q = level["cdf_ms"][key]
            if q:
                share = [i / (len(q) - 1) for i in range(len(q))]
                cdf.plot(q, share, label=f"{level['level']} calls {label}")
    cdf.set(xlabel="bridge-added latency (ms)", ylabel="share of samples", title="latency CDF")
    cdf.set_xscale("log")
    cdf.legend(fontsize=7)
    mode = report["config"]["audio_mode"]
    fig.suptitle(f"bridge capacity ({mode}, {report['machine']['cores']} cores)")
    fig.tight_layout()
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(target, dpi=100)
    plt.close(fig)
    return True


# ---- the soak (`bridge bench --soak`) ------------------------------------------------------------


def _pair(values: dict[str, float | None]) -> str:
    return f"{_ms(values['p50'])} / {_ms(values['p99'])}"


def _count(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}"


def _verdict_lines(judged: dict[str, Any]) -> list[str]:
    if not judged["enough"]:
        return ["verdict: too short to judge (minutes 2..N must span at least a minute)"]
    first, last = judged["window_minutes"]
    parts = []
    if first > 2:
        parts.append(
            f"minutes 1..{first - 1} are the warm-up (until every place's first call had "
            "ended), shown above and not judged"
        )
    rss = judged["rss"]
    if rss is not None:
        late = rss.get("second_half_mb_per_call_hour")
        parts.append(
            f"RSS {rss['mb_per_call_hour']:+.3f} MB per call-hour "
            f"(± {rss['stderr_mb_per_call_hour']:.3f}, {rss['mb_per_hour']:+.1f} MB/h at "
            f"{rss['mean_live']:g} calls; flat below {rss['limit_mb_per_call_hour']:g}): "
            + ("flat" if rss["flat"] else "GROWING")
            + ("" if late is None else f"; over the second half {late:+.3f}")
        )
    for name in ("fds", "tasks"):
        part = judged[name]
        if part is not None:
            parts.append(
                f"{name} {part['rise']:+.1f} over the window (flat within {part['tolerance']:g}): "
                + ("flat" if part["flat"] else "GROWING")
            )
    for way, label in (("caller_to_model", "p99 in"), ("model_to_caller", "p99 out")):
        part = judged["latency"][way]
        if part is not None:
            parts.append(
                f"{label} {part['first_p99']:.1f} -> {part['last_p99']:.1f} ms "
                f"(flat up to {part['limit']:.1f}): " + ("flat" if part["flat"] else "GROWING")
            )
    overall = {True: "FLAT", False: "NOT FLAT", None: "nothing measured"}[judged["flat"]]
    return [f"verdict over minutes {first}..{last}: {overall}"] + [f"  {p}" for p in parts]


def soak_table(report: dict[str, Any]) -> str:
    """Per minute: RSS, fds, tasks, live calls, CPU, calls replaced, added latency each way;
    then the calls, the conversation and the verdict."""
    config, machine = report["config"], report["machine"]
    drops = f"every {config['drop_every_s']:g}s" if config["drop_every_s"] else "none"
    tools = f"every {config['tool_every']}th answer" if config["tool_every"] else "none"
    low, high = config["call_seconds"]
    lines = [
        f"bridge soak: {config['calls']} calls for {config['minutes']:g} min, each call "
        f"{low:g}-{high:g} s then replaced; tool calls {tools}; model drops {drops}; "
        f"audio {config['audio_mode']}",
        f"{machine['cores']} cores, load average {machine['loadavg_at_start']} at start, "
        f"{machine['loadavg_at_end']} at end",
        "",
    ]
    header = ["minute", "RSS MB", "fds", "tasks", "live", "CPU cores", "replaced"]
    header += ["in ms p50 / p99", "out ms p50 / p99"]
    rows = [header]
    for row in report["minutes"]:
        rows.append(
            [
                str(row["minute"]),
                _num(row["rss_mb"], 1),
                _count(row["fds"]),
                _count(row["tasks"]),
                _count(row["live"]),
                _num(row["cpu_cores"]),
                str(row["calls_ended"]),
                _pair(row["caller_to_model_ms"]),
                _pair(row["model_to_caller_ms"]),
            ]
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    for n, row in enumerate(rows):
        lines.append("  ".join(cell.rjust(widths[i]) for i, cell in enumerate(row)))
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    calls, turns, model = report["calls"], report["turns"], report["model"]
    ends = ", ".join(f"{why}: {n}" for why, n in sorted(calls["ends"].items()))
    lines += [
        "",
        f"calls: {calls['placed']} placed, {calls['replaced']} ended and replaced during the "
        f"soak; how they ended: {ends or '-'}",
        f"model side: {model['sessions']} sessions, {model['drops']} dropped on purpose; "
        f"{turns['replies']} replies, {turns['barge_ins']} barge-ins, "
        f"{turns['tool_requests']} tool requests, {turns['missed_replies']} missed replies, "
        f"{turns['underruns']} underruns",
    ]
    if calls["not_placed"]:
        failed = ", ".join(f"{k}: {n}" for k, n in calls["not_placed"].items())
        lines.append(f"calls not placed: {failed}")
    if any(row["tasks"] is None for row in report["minutes"]):
        lines.append("tasks: not reported (a bridge at --url does not write its task count)")
    lines += _verdict_lines(report["verdict"])
    saturated = report.get("saturated_minutes") or []
    if saturated:
        loops = report["config"].get("workers") or 1
        busy = "its event loop" if loops == 1 else f"its {loops} event loops"
        lines.append(
            f"SATURATED in {len(saturated)} of {len(report['minutes'])} minutes "
            f"({_minute_runs(saturated)}): the bridge used {SATURATED_CORES:g} of a core or more "
            f"per loop, so {busy} was busy nearly all the time and audio queued behind it. The "
            "latency and memory above are this machine's limit for this mix, not the bridge "
            "with headroom: fewer --calls (or --workers) measure that."
        )
    return "\n".join(lines)


def _minute_runs(minutes: list[int]) -> str:
    """[1, 2, 3, 5, 7, 8] -> "1..3, 5, 7..8"."""
    runs: list[list[int]] = []
    for minute in minutes:
        if runs and minute == runs[-1][1] + 1:
            runs[-1][1] = minute
        else:
            runs.append([minute, minute])
    return ", ".join(str(a) if a == b else f"{a}..{b}" for a, b in runs)


def soak_chart(report: dict[str, Any], path: str | Path) -> bool:
    """RSS (with the verdict's fit), fds and tasks, latency per minute, live calls and CPU,
    against soak time; False when matplotlib (the `bench` extra) is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    samples = report["samples"]
    minutes = report["minutes"]
    t = [s["t"] / 60.0 for s in samples]
    fig, ((rss, counts), (lat, load)) = plt.subplots(2, 2, figsize=(14, 9), sharex=True)
    rss.plot(t, [s["rss"] / 1024 / 1024 for s in samples], marker=".", label="bridge RSS")
    judged = report["verdict"]
    if judged["rss"] is not None:
        first, last = judged["window_minutes"]
        window = [s for s in samples if (first - 1) * 60 < s["t"] <= last * 60]
        xs = [s["t"] for s in window]
        ys = [s["rss"] for s in window]
        if len(xs) >= 2:
            # The verdict's line, recomputed here from its own slope through the window's mean.
            slope = judged["rss"]["mb_per_hour"] / 3600.0
            mean_t, mean_mb = sum(xs) / len(xs), sum(ys) / len(ys) / 1024 / 1024
            rss.plot(
                [xs[0] / 60.0, xs[-1] / 60.0],
                [mean_mb + slope * (xs[0] - mean_t), mean_mb + slope * (xs[-1] - mean_t)],
                linestyle="--",
                color="tab:red",
                label=f"fit: {judged['rss']['mb_per_call_hour']:+.3f} MB per call-hour",
            )
    rss.set(xlabel="minutes", ylabel="MB", title="bridge RSS")
    rss.legend(fontsize=8)
    counts.plot(t, [s["fds"] for s in samples], marker=".", label="open fds")
    if any(s["tasks"] is not None for s in samples):
        counts.plot(t, [s["tasks"] for s in samples], marker=".", label="asyncio tasks")
    counts.plot(t, [s["live"] for s in samples], linestyle=":", label="live calls")
    counts.set(xlabel="minutes", ylabel="count", title="file descriptors and tasks")
    counts.set_ylim(bottom=0)
    counts.legend(fontsize=8)
    m = [row["minute"] - 0.5 for row in minutes]  # a minute's figures at its middle
    for key, label, color in (
        ("caller_to_model_ms", "caller->model", "tab:blue"),
        ("model_to_caller_ms", "model->caller", "tab:orange"),
    ):
        for stat, style in (("p50", ":"), ("p99", "-")):
            points = [(x, row[key][stat]) for x, row in zip(m, minutes, strict=True)]
            points = [(x, y) for x, y in points if y is not None]
            if points:
                lat.plot(
                    *zip(*points, strict=True),
                    style,
                    marker="o",
                    color=color,
                    label=f"{label} {stat}",
                )
    lat.set(xlabel="minutes", ylabel="bridge-added latency (ms)", title="latency per minute")
    lat.set_ylim(bottom=0)
    lat.legend(fontsize=8)
    cores = [(x, row["cpu_cores"]) for x, row in zip(m, minutes, strict=True)]
    cores = [(x, y) for x, y in cores if y is not None]
    if cores:
        load.plot(*zip(*cores, strict=True), marker="o", label="bridge CPU (cores)")
    load.set(xlabel="minutes", ylabel="cores", title="bridge CPU per minute")
    load.set_ylim(bottom=0)
    load.legend(fontsize=8)
    config = report["config"]
    fig.suptitle(
        f"bridge soak: {config['calls']} calls, {config['minutes']:g} min "
        f"({config['audio_mode']}, {report['machine']['cores']} cores)"
    )
    fig.tight_layout()
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(target, dpi=100)
    plt.close(fig)
    return True
