"""Command line: `bridge serve`, `bridge demo`, `bridge bench audio`."""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence

from bridge.errors import ConfigError


def _serve(args: argparse.Namespace) -> int:
    from bridge import logs
    from bridge.app import create_app
    from bridge.server import uvicorn_config
    from bridge.settings import Settings

    try:
        settings = Settings.from_environ()
    except ConfigError as exc:
        print("bridge: configuration error:", file=sys.stderr)
        for problem in exc.problems:
            print(f"  {problem}", file=sys.stderr)
        return 2
    logs.configure(settings.log_level, settings.log_format)
    import uvicorn

    config = uvicorn_config(create_app(settings), args.host, args.port, log_level="info")
    uvicorn.Server(config).run()
    return 0


def _demo(args: argparse.Namespace) -> int:
    from bridge.demo import run_demo

    return asyncio.run(run_demo(args.wav, verbose=args.verbose))


def _bench(args: argparse.Namespace) -> int:
    from bridge import bench_audio

    if args.what == "audio":
        return bench_audio.main()
    print(f"bridge bench: unknown benchmark {args.what!r}", file=sys.stderr)
    return 2


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="bridge", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="run the bridge server")
    serve.add_argument("--host", default="0.0.0.0")
    serve.add_argument("--port", type=int, default=8080)
    serve.set_defaults(handler=_serve)

    demo = commands.add_parser("demo", help="one complete simulated call, offline")
    demo.add_argument(
        "--wav", default="artifacts/demo-caller-heard.wav", help="what the caller heard"
    )
    demo.add_argument("--verbose", action="store_true", help="show the bridge's log lines")
    demo.set_defaults(handler=_demo)

    bench = commands.add_parser("bench", help="benchmarks")
    bench.add_argument("what", choices=["audio"], help="audio: transcoder microbenchmark")
    bench.set_defaults(handler=_bench)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    code: int = args.handler(args)
    return code


if __name__ == "__main__":
    sys.exit(main())
