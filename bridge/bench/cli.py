"""`bridge bench ...`: the capacity/latency benchmark, `bridge bench audio` (transcoder) or
`bridge bench tools` (what the bridge adds around the assistant's tools)."""

from __future__ import annotations

import argparse
import asyncio
import importlib
import os
import sys
from collections.abc import Callable, Sequence

__all__ = ["build_parser", "main"]

DEFAULT_JSON = "artifacts/bench-capacity.json"
DEFAULT_CHART = "artifacts/bench-capacity.png"


def _levels(text: str) -> tuple[int, ...]:
    try:
        levels = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected calls like 50,100,200, got {text!r}") from None
    if not levels or any(n <= 0 for n in levels):
        raise argparse.ArgumentTypeError("levels must be positive call counts")
    return levels


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
    parser.add_argument("--calls", type=int, default=100, help="concurrent calls (default 100)")
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
        "--json", default=DEFAULT_JSON, help=f"report file (default {DEFAULT_JSON})"
    )
    parser.add_argument(
        "--chart", default=DEFAULT_CHART, help=f"PNG chart (default {DEFAULT_CHART})"
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
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    arguments = list(sys.argv[1:] if argv is None else argv)
    if arguments[:1] == ["audio"]:
        from bridge.bench import audio

        return audio.main()
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

    options = capacity.Options(
        levels=args.sweep or (args.calls,),
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
    )
    try:
        with asyncio.Runner(loop_factory=_generator_loop()) as runner:
            result = runner.run(capacity.run(options))
    except capacity.BenchError as exc:
        print(f"bridge bench: {exc}", file=sys.stderr)
        return 1
    except ValueError as exc:
        print(f"bridge bench: {exc}", file=sys.stderr)
        return 2
    print(report.table(result))
    report.write_json(result, args.json)
    print(f"\nreport: {args.json}")
    if report.chart(result, args.chart):
        print(f"chart: {args.chart}")
    else:
        print("chart: skipped (matplotlib missing: install the `bench` extra)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
