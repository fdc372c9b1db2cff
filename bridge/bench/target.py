"""`python -m bridge.bench.target`: the bridge under test, in a process of its own.

By default it runs what `bridge serve` runs (`bridge.cli.serve`: the app with its call log in a
throw-away SQLite file, the drain on SIGTERM, INFO logging), with the Realtime URL pointing at the
benchmark's model side, so /proc/<pid> shows the bridge's own CPU and memory. `--bare` serves
`create_app(settings)` with the in-memory recorder instead, to measure the media path alone.
`--loop`, `--http` and `--ws` override the event loop and uvicorn's choices, and `--preload FILE`
runs a Python file first (a candidate hot-path change, applied as a patch), to measure
alternatives. `--workers N` runs N worker processes under `bridge serve --workers`'s supervisor
(each applies the same choices); with the call log that needs `--database-url` (PostgreSQL),
which it migrates first. `--numbers FILE` serves those profiles (the soak's tools), and
`--stats-dir DIR` has each serving process write its asyncio task count to `DIR/tasks-<pid>`
every second (read by the soak, since /proc cannot see tasks). Prints the base URL on stdout
before serving.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import os
import runpy
import socket
import sys
import tempfile
from collections.abc import Callable, Coroutine, Sequence
from pathlib import Path
from typing import Any

import uvicorn

from bridge import logs, server
from bridge.cli import event_loop_factory
from bridge.settings import AudioMode, Settings

__all__ = ["main"]

DRAIN_SECONDS = 5.0  # the benchmark hangs up every call before it stops the bridge
STATS_EVERY = 1.0  # seconds between task counts written to --stats-dir


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bridge.bench.target", description=__doc__)
    parser.add_argument("--realtime-url", required=True)
    parser.add_argument("--audio-mode", choices=[m.value for m in AudioMode], default="transcode")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING"])
    parser.add_argument("--bare", action="store_true", help="create_app + in-memory recorder")
    parser.add_argument(
        "--loop", default=None, help="event loop: asyncio, uvloop (default: as `bridge serve`)"
    )
    parser.add_argument("--http", default=None, help="uvicorn http: h11, httptools")
    parser.add_argument("--ws", default=None, help="uvicorn ws: websockets-sansio, wsproto")
    parser.add_argument(
        "--preload", action="append", default=[], help="Python file to run before serving"
    )
    parser.add_argument("--workers", type=int, default=1, help="worker processes (default 1)")
    parser.add_argument(
        "--database-url", help="call log (default: a throw-away SQLite file); migrated first"
    )
    parser.add_argument("--numbers", help="per-number profiles (TOML), as BRIDGE_NUMBERS")
    parser.add_argument("--stats-dir", help="write the asyncio task count here every second")
    parser.add_argument(
        "--record", action="store_true", help="record every call (a WAV each, in the temp dir)"
    )
    return parser


def _override_uvicorn(overrides: dict[str, str]) -> None:
    """Make `bridge.server.uvicorn_config` (which `bridge serve` uses) apply `overrides`."""
    original = server.uvicorn_config

    def uvicorn_config(*args: Any, **kwargs: Any) -> uvicorn.Config:
        config = original(*args, **kwargs)
        for name, value in overrides.items():
            setattr(config, name, value)
        return config

    server.uvicorn_config = uvicorn_config


def _loop_factory(name: str | None) -> Callable[[], asyncio.AbstractEventLoop] | None:
    if name is None:
        return event_loop_factory()  # what `bridge serve` runs on
    if name == "asyncio":
        return None
    module = importlib.import_module(name)  # uvloop (optional, so not imported statically)
    factory: Callable[[], asyncio.AbstractEventLoop] = module.new_event_loop
    return factory


def _free_port(host: str) -> int:
    # `bridge serve` binds its own socket (as production does: create_server sets TCP_NODELAY),
    # so pick a port first; on loopback nothing else takes it in between.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        port: int = probe.getsockname()[1]
        return port


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    http_base = "http" + args.realtime_url.removeprefix("ws").split("/v1/", 1)[0]
    port = args.port or _free_port(args.host)
    with tempfile.TemporaryDirectory(prefix="bridge-bench-target-") as data:
        settings = Settings(
            openai_api_key="bench-key",
            realtime_url=args.realtime_url,
            tts_url=f"{http_base}/v1/audio/speech",
            audio_mode=AudioMode(args.audio_mode),
            log_level=args.log_level,
            database_url=args.database_url or f"sqlite+aiosqlite:///{data}/calls.db",
            drain_seconds=DRAIN_SECONDS,
            numbers_file=args.numbers,
            record=args.record,
            recordings_dir=f"{data}/recordings",
        )
        logs.configure(settings.log_level, settings.log_format)
        if args.database_url and not args.bare:
            from bridge.store.database import upgrade_url

            asyncio.run(upgrade_url(args.database_url))
        if args.workers > 1:
            from bridge import workers

            if not args.bare:
                workers.require_shared_call_log(settings, args.workers)
            print(f"http://{args.host}:{port}", flush=True)
            return workers.serve_workers(
                settings, args.host, port, args.workers, target=_worker, args=(vars(args),)
            )
        print(f"http://{args.host}:{port}", flush=True)
        return _serve(settings, args.host, port, vars(args))


def _serve(
    settings: Settings,
    host: str,
    port: int,
    options: dict[str, Any],
    *,
    sockets: list[socket.socket] | None = None,
    ready: Callable[[], None] | None = None,
) -> int:
    """Serve as the options say, in this process (the only one, or one worker)."""
    for path in options["preload"]:
        runpy.run_path(path, run_name="__bench_preload__")
    _override_uvicorn({name: options[name] for name in ("http", "ws") if options[name]})
    stats_dir = options.get("stats_dir")
    with asyncio.Runner(loop_factory=_loop_factory(options["loop"])) as runner:
        if options["bare"]:
            main: Coroutine[Any, Any, Any] = _serve_bare(settings, host, port, sockets, ready)
        else:
            from bridge.cli import serve

            main = serve(settings, host, port, sockets=sockets, on_started=ready)
        runner.run(_counting_tasks(main, Path(stats_dir)) if stats_dir else main)
    return 0


async def _counting_tasks(main: Coroutine[Any, Any, Any], directory: Path) -> None:
    """Run `main`, writing `len(asyncio.all_tasks())` to `directory/tasks-<pid>` every second
    from a loop callback (not a task, so it does not count itself)."""
    loop = asyncio.get_running_loop()
    path = directory / f"tasks-{os.getpid()}"
    scratch = path.with_suffix(".tmp")

    def write() -> None:
        try:
            scratch.write_text(str(len(asyncio.all_tasks(loop))))
            os.replace(scratch, path)
        except OSError:
            pass  # the soak's directory went away: it has finished
        handles[0] = loop.call_later(STATS_EVERY, write)

    handles = [loop.call_soon(write)]
    try:
        await main
    finally:
        handles[0].cancel()


def _worker(
    sockets: list[socket.socket],
    ready: Callable[[], None],
    index: int,
    settings: Settings,
    host: str,
    port: int,
    options: dict[str, Any],
) -> int:
    """One worker of `--workers N` (a `bridge.workers.WorkerTarget`)."""
    logs.configure(settings.log_level, settings.log_format, worker=index)
    return _serve(settings, host, port, options, sockets=sockets, ready=ready)


async def _serve_bare(
    settings: Settings,
    host: str,
    port: int,
    sockets: list[socket.socket] | None,
    ready: Callable[[], None] | None,
) -> None:
    from bridge.app import create_app

    async def drain() -> None:  # the in-memory recorder has nothing to flush
        await app.state.bridge.drain()

    app = create_app(settings)
    config = server.uvicorn_config(app, host, port, log_level="info")
    await server.BridgeServer(config, on_drain=drain, on_started=ready).serve(sockets)


if __name__ == "__main__":
    sys.exit(main())
