"""Command line: `bridge serve | demo | bench | calls | db | numbers | twilio | webhooks`.

Each command group lives beside the code it drives; this module only dispatches, importing a
group's module when it runs, so `bridge serve` never loads the benchmark or the dashboard.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import socket
import sys
from collections.abc import Callable, Sequence

from bridge.errors import ConfigError
from bridge.settings import Settings

# command -> (module with `main(argv: list[str]) -> int`, help)
DELEGATED: dict[str, tuple[str, str]] = {
    "bench": ("bridge.bench.cli", "capacity/latency benchmark; `bench audio`: transcoder"),
    "calls": ("bridge.store.cli", "call log: list, show, tail, export, recording, prune"),
    "db": ("bridge.store.dbcli", "database: upgrade (apply migrations)"),
    "numbers": ("bridge.numbers_cli", "per-number profiles: list, check, reload"),
    "twilio": ("bridge.twilio_cli", "Twilio REST: attach a number, place an outbound call"),
    "webhooks": ("bridge.webhooks.cli", "post-call webhooks: list, redeliver"),
}


def _serve(args: argparse.Namespace) -> int:
    from bridge import logs

    try:
        settings = Settings.from_environ()
        if args.numbers:
            settings = settings.model_copy(update={"numbers_file": args.numbers})
    except ConfigError as exc:
        return config_error(exc)
    logs.configure(settings.log_level, settings.log_format)
    workers = args.workers if args.workers is not None else settings.workers
    try:
        if workers > 1:
            from bridge.workers import require_shared_call_log, serve_workers

            require_shared_call_log(settings, workers)
            return serve_workers(settings, args.host, args.port, workers)
        with asyncio.Runner(loop_factory=event_loop_factory()) as runner:
            return runner.run(serve(settings, args.host, args.port))
    except ConfigError as exc:
        return config_error(exc)


async def serve(
    settings: Settings,
    host: str,
    port: int,
    *,
    sockets: list[socket.socket] | None = None,
    metrics_sockets: list[socket.socket] | None = None,
    on_started: Callable[[], None] | None = None,
) -> int:
    """Run the bridge until SIGTERM/SIGINT has drained it (or a second signal stops it).

    The call log encloses the server so records of calls that end during the drain are written.
    A worker of `bridge serve --workers N` passes the sockets its supervisor bound.
    """
    from bridge import heap, metrics
    from bridge.app import create_app
    from bridge.recording.store import store_from_settings
    from bridge.server import BridgeServer, EmbeddedServer, uvicorn_config
    from bridge.store import CallLog
    from bridge.web import admin_routes
    from bridge.webhooks.sender import WebhookSender

    call_log = CallLog.from_settings(settings)
    async with call_log:  # SQLite: migrated; PostgreSQL: the schema must be current
        recordings = store_from_settings(settings.recordings_dir, settings.recordings_url)
        app = create_app(
            settings,
            recorder=call_log.recorder,
            routes=admin_routes(settings, call_log, recordings=recordings),
        )
        bridge = app.state.bridge
        bridge.recordings = recordings  # one store (one S3 client) for calls and the API
        bridge.readiness_checks.append(call_log.readiness)
        if bridge.signatures is not None:  # stream tokens: single use across every replica
            bridge.signatures.ledger = call_log.stream_tokens
        bridge.next_steps = call_log.next_steps  # steps after the stream, seen by every worker
        bridge.webhooks = WebhookSender.for_call_log(call_log, settings)  # post-call webhooks
        bridge.webhooks.wanted = bridge.webhooks_configured

        async def drain() -> None:
            await bridge.drain()
            call_log.feed.close()  # end dashboard streams: uvicorn waits for open responses

        def started() -> None:
            heap.freeze_startup()  # the app is up: what exists now lives as long as the process
            if on_started is not None:
                on_started()

        server = BridgeServer(
            uvicorn_config(app, host, port, log_level="info"), on_drain=drain, on_started=started
        )
        async with asyncio.TaskGroup() as tg:
            trimming = tg.create_task(heap.trim_every(), name="heap-trim")
            metrics_server = None
            if settings.metrics_port:
                metrics_server = EmbeddedServer(
                    uvicorn_config(
                        metrics.metrics_app(), settings.metrics_host, settings.metrics_port
                    )
                )
                metrics_server.config.lifespan = "off"
                tg.create_task(metrics_server.serve(metrics_sockets), name="metrics-server")
            await server.serve(sockets)
            trimming.cancel()
            if metrics_server is not None:
                metrics_server.should_exit = True
    return 0


def event_loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop where it is installed (measured: 8-16% less CPU per call), else asyncio's loop."""
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


def config_error(exc: ConfigError) -> int:
    print("bridge: configuration error:", file=sys.stderr)
    for problem in exc.problems:
        print(f"  {problem}", file=sys.stderr)
    return 2


def _demo(args: argparse.Namespace) -> int:
    from bridge.demo import run_demo

    return asyncio.run(run_demo(args.wav, verbose=args.verbose))


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="bridge", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="run the bridge server")
    serve.add_argument("--host", default="0.0.0.0")
    serve.add_argument("--port", type=int, default=8080)
    serve.add_argument("--numbers", help="per-number profiles file (default: $BRIDGE_NUMBERS)")
    serve.add_argument(
        "--workers",
        type=_positive,
        help="processes sharing the port, one core each (default: $BRIDGE_WORKERS or 1; "
        "more than 1 needs a PostgreSQL call log)",
    )
    serve.set_defaults(handler=_serve)

    demo = commands.add_parser("demo", help="one complete simulated call, offline")
    demo.add_argument(
        "--wav", default="artifacts/demo-caller-heard.wav", help="what the caller heard"
    )
    demo.add_argument("--verbose", action="store_true", help="show the bridge's log lines")
    demo.set_defaults(handler=_demo)

    for name, (_, summary) in DELEGATED.items():
        commands.add_parser(name, help=summary, add_help=False)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    arguments = list(sys.argv[1:] if argv is None else argv)
    if arguments and arguments[0] in DELEGATED:
        module = importlib.import_module(DELEGATED[arguments[0]][0])
        code: int = module.main(arguments[1:])
        return code
    args = build_parser().parse_args(arguments)
    code = args.handler(args)
    return code


if __name__ == "__main__":
    sys.exit(main())
