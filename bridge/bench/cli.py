"""`bridge bench ...`: the capacity/latency benchmark, `bridge bench --soak MINUTES` (does the
bridge stay flat over time?), `bridge bench audio` (transcoder) or `bridge bench tools` (what the
bridge adds around the assistant's tools)."""

from __future__ import annotations

import argparse
import asyncio
import importlib
import os
import sys
from collections.abc import Callable, Coroutine, Sequence
from typing import Any

__all__ = ["build_parser", "main"]

DEFAULT_JSON = "artifacts/bench-capacity.json"
DEFAULT_CHART = "artifacts/bench-capacity.png"
SOAK_JSON = "artifacts/bench-soak.json"
SOAK_CHART = "artifacts/bench-soak.png"
DEFAULT_CALLS = 100
SOAK_CALLS = 200


def _levels(text: str) -> tuple[int, ...]:
    try:
        levels = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected calls like 50,100,200, got {text!r}") from None
    if not levels or any(n <= 0 for n in levels):
        raise argparse.ArgumentTypeError("levels must be positive call counts")
    return levels


def _seconds_range(text: str) -> tuple[float, float]:
    try:
        low, high = (float(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected MIN,MAX seconds, got {text!r}") from None
    if not 0 < low <= high:
        raise argparse.ArgumentTypeError("seconds must be positive, MIN <= MAX")
    return low, high


def _positive(text: str) -> float:
    value = float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError("a positive number")
    return value


def _share(text: str) -> float:
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError("a share between 0 and 1")
    return value


def _generator_loop() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop for the generator when it is installed (it makes the generator cheaper; the
    bridge's own loop is chosen by uvicorn, or --loop); else asyncio's default."""
    try:
        uvloop = importlib.import_module("uvloop")  # optional, so not imported statically
    except ImportError:
        return None
    factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
    return factory


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bridge bench",
        description="How many calls does one box hold, and what does the bridge add to the "
        "conversation's latency? Runs simulated calls against a bridge it starts itself (with the "
        "benchmark's Realtime model side as upstream) or one at --url. "
        "`bridge bench audio` runs the transcoder microbenchmark instead.",
    )
    parser.add_argument(
        "--calls",
        type=int,
        help=f"concurrent calls (default {DEFAULT_CALLS}; with --soak {SOAK_CALLS})",
    )
    parser.add_argument("--seconds", type=float, default=30.0, help="steady phase (default 30)")
    parser.add_argument("--ramp", type=float, help="ramp-up seconds (default: calls/40, 2..10)")
    parser.add_argument("--sweep", type=_levels, help="levels instead of --calls: 50,100,200,400")
    parser.add_argument("--url", help="a running bridge (http://host:port) instead of starting one")
    parser.add_argument("--pid", type=int, help="the --url bridge's pid (default: found by port)")
    parser.add_argument(
        "--audio-mode", choices=["transcode", "pcmu"], default="transcode", help="bridge audio mode"
    )
    parser.add_argument(
        "--barge-in", type=_share, default=0.3, help="share of replies talked over (default 0.3)"
    )
    parser.add_argument(
        "--json", help=f"report file (default {DEFAULT_JSON}; with --soak {SOAK_JSON})"
    )
    parser.add_argument(
        "--chart", help=f"PNG chart (default {DEFAULT_CHART}; with --soak {SOAK_CHART})"
    )
    soak = parser.add_argument_group(
        "soak", "hold --calls calls for MINUTES, each replaced when it ends; sample the bridge"
    )
    soak.add_argument(
        "--soak",
        type=_positive,
        metavar="MINUTES",
        help="run the soak instead of the capacity levels: RSS, open fds, asyncio tasks and "
        "latency per minute, and whether they stay flat",
    )
    soak.add_argument(
        "--call-seconds",
        type=_seconds_range,
        default=(120.0, 240.0),
        metavar="MIN,MAX",
        help="soak: each call lasts this long, drawn uniformly, then a new one replaces it "
        "(default 120,240)",
    )
    soak.add_argument(
        "--sample-seconds",
        type=_positive,
        default=10.0,
        help="soak: how often the bridge is sampled (default 10)",
    )
    soak.add_argument(
        "--drop-every",
        type=_positive,
        metavar="SECONDS",
        help="soak: the model side aborts each connection after about this long (0.5 to 1.5 "
        "times), as a lost upstream would",
    )
    soak.add_argument(
        "--tool-every",
        type=int,
        default=4,
        metavar="N",
        help="soak: every Nth answer also calls an HTTP tool, served by the benchmark "
        "(default 4; 0: none)",
    )
    parser.add_argument("--sim-host", default="127.0.0.1", help="model side's address (for --url)")
    parser.add_argument("--sim-port", type=int, default=0, help="model side's port (for --url)")
    parser.add_argument(
        "--bare",
        action="store_true",
        help="started bridge: create_app with the in-memory recorder instead of `bridge serve`",
    )
    parser.add_argument("--loop", help="started bridge: event loop (asyncio, uvloop)")
    parser.add_argument("--http", help="started bridge: uvicorn http (h11, httptools)")
    parser.add_argument("--ws", help="started bridge: uvicorn ws (websockets-sansio, websockets)")
    parser.add_argument(
        "--profile",
        metavar="FILE",
        help="sample the bridge with py-spy over the steady phase; collapsed stacks to FILE "
        "(-LEVEL added per sweep level); top entries printed",
    )
    parser.add_argument(
        "--preload",
        metavar="FILE",
        action="append",
        default=[],
        help="started bridge: run this Python file first (a candidate hot-path patch)",
    )
    parser.add_argument(
        "--instructions",
        action="store_true",
        help="started bridge: run it under valgrind's callgrind and count its instructions over "
        "the steady phase (repeatable where CPU seconds are not; use 1-2 calls: it runs slowly)",
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=1,
        help="started bridge: worker processes, as `bridge serve --workers N` (default 1); "
        "more than 1 needs --database-url unless --bare",
    )
    parser.add_argument(
        "--database-url",
        help="started bridge: call log (default: a throw-away SQLite file); PostgreSQL "
        "(postgresql+asyncpg://...) is migrated first and its records are kept",
    )
    parser.add_argument(
        "--record",
        action="store_true",
        help="started bridge: record every call (two-channel WAVs in its temporary directory)",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    arguments = list(sys.argv[1:] if argv is None else argv)
    if arguments[:1] == ["audio"]:
        from bridge.bench import audio

        return audio.main()
    if arguments[:1] == ["survive"]:
        from bridge.bench import survive

        return survive.main(arguments[1:])
    if arguments[:1] == ["tools"]:
        from bridge.bench import tools

        return tools.main(arguments[1:])
    parser = build_parser()
    args = parser.parse_args(arguments)
    from bridge.bench import callgrind, capacity, report

    if args.instructions and args.url:
        parser.error("--instructions needs a bridge the benchmark starts itself (not --url)")
    if args.workers < 1:
        parser.error("--workers must be >= 1")
    if args.workers > 1 and (args.url or args.instructions):
        parser.error("--workers is for a bridge the benchmark starts, without --instructions")
    if args.workers > 1 and not (args.bare or args.database_url):
        parser.error("--workers > 1 shares a PostgreSQL call log: give --database-url (or --bare)")
    if args.instructions and not callgrind.available():
        parser.error("--instructions needs valgrind (Debian: apt-get install valgrind)")
    if args.soak is not None and (args.sweep or args.instructions or args.profile):
        parser.error("--soak runs on its own: not with --sweep, --instructions or --profile")
    if args.tool_every < 0:
        parser.error("--tool-every must be >= 0")
    calls = args.calls or (SOAK_CALLS if args.soak is not None else DEFAULT_CALLS)

    options = capacity.Options(
        levels=args.sweep or (calls,),
        seconds=args.seconds,
        ramp=args.ramp,
        url=args.url,
        pid=args.pid,
        audio_mode=args.audio_mode,
        barge_in=args.barge_in,
        sim_host=args.sim_host,
        sim_port=args.sim_port,
        loop=args.loop,
        http=args.http,
        ws=args.ws,
        quiet=args.quiet,
        profile=args.profile,
        preload=tuple(os.path.abspath(path) for path in args.preload),
        bare=args.bare,
        instructions=args.instructions,
        workers=args.workers,
        database_url=args.database_url,
        record=args.record,
    )
    if args.soak is not None:
        from bridge.bench import churn

        soak = churn.SoakOptions(
            minutes=args.soak,
            calls=calls,
            call_seconds=args.call_seconds,
            sample_seconds=args.sample_seconds,
            drop_every=args.drop_every,
            tool_every=args.tool_every,
        )
        return _run_and_report(
            churn.run(options, soak),
            report.soak_table,
            report.soak_chart,
            args.json or SOAK_JSON,
            args.chart or SOAK_CHART,
        )
    return _run_and_report(
        capacity.run(options),
        report.table,
        report.chart,
        args.json or DEFAULT_JSON,
        args.chart or DEFAULT_CHART,
    )


def _run_and_report(
    run: Coroutine[Any, Any, dict[str, Any]],
    table: Callable[[dict[str, Any]], str],
    chart: Callable[[dict[str, Any], str], bool],
    json_path: str,
    chart_path: str,
) -> int:
    """Run a benchmark on the generator's loop, then print its table and write its files."""
    from bridge.bench import capacity, report

    try:
        with asyncio.Runner(loop_factory=_generator_loop()) as runner:
            result = runner.run(run)
    except capacity.BenchError as exc:
        print(f"bridge bench: {exc}", file=sys.stderr)
        return 1
    except ValueError as exc:
        print(f"bridge bench: {exc}", file=sys.stderr)
        return 2
    print(table(result))
    report.write_json(result, json_path)
    print(f"\nreport: {json_path}")
    if chart(result, chart_path):
        print(f"chart: {chart_path}")
    else:
        print("chart: skipped (matplotlib missing: install the `bench` extra)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
