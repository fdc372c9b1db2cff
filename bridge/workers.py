"""`bridge serve --workers N`: N worker processes on one listening socket, and their supervisor.

One process runs one event loop, and one event loop uses one core. To hold more calls on a box
with more cores, the parent binds the port (and the metrics port), then starts N workers, each
a complete `bridge serve` on sockets it inherits. On Linux every worker slot has a listening
socket of its own on the port (SO_REUSEPORT), and the kernel spreads new connections evenly
over them by address hash; a shared socket went to whichever worker woke first (measured: 86
of 100 calls on one worker). The parent keeps the slots' sockets, so connections that arrive
while a worker is being replaced wait for the replacement. Elsewhere the workers share one
socket. The parent serves nothing itself. It:

- forwards SIGTERM and SIGINT to every worker: the first drains, a second stops at once. Workers
  run in their own process group, so a terminal's Ctrl-C reaches them once, through the parent;
- forwards SIGHUP, so every worker reloads the numbers file;
- replaces a worker that dies, and gives up when workers keep dying (or one fails to start);
- exits when every worker has, with status 0 only if every worker exited cleanly.

A worker whose parent dies drains and exits: it watches a pipe that only the parent holds open.
Metrics are summed over the workers with prometheus-client's multiprocess mode (see
`bridge.metrics`). Workers need a call log they can share: PostgreSQL, which also carries the
live view of calls between them (`bridge.store.relay`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import multiprocessing
import os
import shutil
import signal
import socket
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from multiprocessing.connection import Connection, wait
from multiprocessing.process import BaseProcess
from types import FrameType
from typing import Any

from bridge.errors import ConfigError
from bridge.metrics import MULTIPROCESS_DIR
from bridge.settings import Settings

__all__ = [
    "Supervisor",
    "WorkerTarget",
    "bind",
    "metrics_directory",
    "serve_workers",
]

logger = logging.getLogger(__name__)

BACKLOG = 2048  # as uvicorn: bursts of new calls wait in the kernel, not refused
RESTART_LIMIT = 5  # replacements within RESTART_WINDOW before the supervisor gives up
RESTART_WINDOW = 60.0
FORWARDED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)

# A worker: `target(sockets, ready, index, *args) -> exit status`, a module-level function (the
# `spawn` start method pickles it by name). `sockets` are its slot's: the main port's first, then
# the metrics port's if any. It calls `ready()` once it is serving; `index` is its slot,
# 0..N-1, which a replacement inherits along with the sockets.
WorkerTarget = Callable[..., int]


def bind(host: str, port: int, *, reuse_port: bool = False) -> socket.socket:
    """A listening TCP socket (SO_REUSEADDR, as uvicorn's own; SO_REUSEPORT if asked)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.create_server((host, port), family=family, backlog=BACKLOG, reuse_port=reuse_port)
    sock.set_inheritable(True)
    return sock


def slot_sockets(host: str, port: int, count: int) -> list[socket.socket]:
    """One listening socket per worker slot on `port` (SO_REUSEPORT), or one shared socket
    where the platform has no SO_REUSEPORT; port 0 picks one port for all of them."""
    if not hasattr(socket, "SO_REUSEPORT"):
        return [bind(host, port)] * count
    first = bind(host, port, reuse_port=True)
    port = first.getsockname()[1]
    return [first] + [bind(host, port, reuse_port=True) for _ in range(count - 1)]


@dataclasses.dataclass(slots=True)
class _Worker:
    index: int
    process: BaseProcess
    ready_pipe: Connection  # the worker sends one message here once it serves
    lifeline: Connection  # held open by the parent alone; the worker sees EOF if we die
    ready: bool = False


class Supervisor:
    """Runs one `target` per slot of `sockets` and looks after them until all have exited."""

    def __init__(
        self,
        target: WorkerTarget,
        args: Sequence[Any],
        sockets: Sequence[Sequence[socket.socket]],
        *,
        on_exit: Callable[[int], None] | None = None,
        restart_limit: int = RESTART_LIMIT,
        restart_window: float = RESTART_WINDOW,
    ) -> None:
        if not sockets:
            raise ValueError("no worker slots: give each worker its sockets")
        self.target = target
        self.args = tuple(args)
        self.sockets = [list(slot) for slot in sockets]  # a worker's slot is its index here
        self.count = len(self.sockets)
        self.on_exit = on_exit  # gets the pid of every worker that has exited
        self.restart_limit = restart_limit
        self.restart_window = restart_window
        self._context = multiprocessing.get_context("spawn")
        self._workers: list[_Worker] = []
        self._signals: list[int] = []
        self._stop_signals = 0
        self._restarts: list[float] = []
        self._status = 0

    def run(self) -> int:
        """Start the workers, supervise them, return the exit status once all have exited."""
        wake_reader, wake_writer = socket.socketpair()
        wake_writer.setblocking(False)
        previous_wakeup = signal.set_wakeup_fd(wake_writer.fileno())
        previous = {sig: signal.signal(sig, self._note_signal) for sig in FORWARDED}
        try:
            for index in range(self.count):
                self._start(index)
            while self._workers:
                pending = [w.ready_pipe for w in self._workers if not w.ready]
                sentinels = [w.process.sentinel for w in self._workers]
                woke = wait([wake_reader, *pending, *sentinels], timeout=5.0)
                if wake_reader in woke:
                    with contextlib.suppress(BlockingIOError):
                        wake_reader.recv(4096)
                self._handle_signals()
                for worker in list(self._workers):
                    if worker.ready_pipe in woke and not worker.ready:
                        self._check_ready(worker)
                    if worker.process.sentinel in woke:
                        self._exited(worker)
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            signal.set_wakeup_fd(previous_wakeup)
            wake_reader.close()
            wake_writer.close()
            for worker in self._workers:  # only after an exception: stop what is left
                worker.process.kill()
                worker.process.join()
        return self._status

    def _note_signal(self, sig: int, frame: FrameType | None) -> None:
        self._signals.append(sig)  # handled by the loop in run(), woken through the wakeup fd

    def _handle_signals(self) -> None:
        while self._signals:
            sig = self._signals.pop(0)
            if sig == signal.SIGHUP:
                # Only to workers that serve: one still starting reads the file anyway, and
                # SIGHUP's default action (before its handler is installed) would end it.
                logger.info("SIGHUP: workers reload the numbers file")
                self._send(signal.SIGHUP, ready_only=True)
                continue
            self._stop_signals += 1
            if self._stop_signals == 1:
                logger.warning("%s: draining %d worker(s)", signal.Signals(sig).name, self.count)
            else:
                logger.warning("%s again: workers stop now", signal.Signals(sig).name)
            self._send(signal.SIGTERM)

    def _send(self, sig: int, *, ready_only: bool = False) -> None:
        for worker in self._workers:
            if ready_only and not worker.ready:
                continue
            if worker.process.pid is not None and worker.process.exitcode is None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(worker.process.pid, sig)

    def _start(self, index: int) -> None:
        ready_reader, ready_writer = self._context.Pipe(duplex=False)
        lifeline_reader, lifeline_writer = self._context.Pipe(duplex=False)
        process = self._context.Process(
            target=_worker_main,
            args=(
                self.target,
                index,
                self.args,
                self.sockets[index],
                ready_writer,
                lifeline_reader,
            ),
            name=f"bridge-worker-{index}",
        )
        process.start()
        ready_writer.close()  # the worker holds the ends it needs; ours would hide its exit
        lifeline_reader.close()
        self._workers.append(_Worker(index, process, ready_reader, lifeline_writer))
        logger.info("worker %d: started (pid %s)", index, process.pid)

    def _check_ready(self, worker: _Worker) -> None:
        try:
            worker.ready_pipe.recv()
        except (EOFError, OSError):
            return  # it exited before it was ready: its sentinel says so
        worker.ready = True
        logger.info("worker %d: serving (pid %s)", worker.index, worker.process.pid)

    def _exited(self, worker: _Worker) -> None:
        worker.process.join()
        self._workers.remove(worker)
        worker.ready_pipe.close()
        worker.lifeline.close()
        pid, code = worker.process.pid, worker.process.exitcode
        if pid is not None and self.on_exit is not None:
            self.on_exit(pid)
        status = _describe(code)
        if self._stop_signals:
            self._release(worker.index)
            # A worker stopped before it served ends on the default SIGTERM action: no calls lost.
            if code != 0 and not (code == -signal.SIGTERM and not worker.ready):
                logger.error("worker %d (pid %s): %s while stopping", worker.index, pid, status)
                self._status = self._status or 1
            else:
                logger.info("worker %d (pid %s): stopped", worker.index, pid)
            return
        if not worker.ready:
            logger.error(
                "worker %d (pid %s): %s before it was serving; stopping", worker.index, pid, status
            )
            self._give_up(code if code and code > 0 else 1)
            return
        now = time.monotonic()
        self._restarts = [t for t in self._restarts if now - t < self.restart_window]
        if len(self._restarts) >= self.restart_limit:
            logger.error(
                "worker %d (pid %s): %s; %d replacements in %.0fs already, stopping",
                worker.index,
                pid,
                status,
                len(self._restarts),
                self.restart_window,
            )
            self._give_up(1)
            return
        self._restarts.append(now)
        logger.error("worker %d (pid %s): %s; starting a replacement", worker.index, pid, status)
        self._start(worker.index)

    def _release(self, index: int) -> None:
        """Close a stopped slot's own sockets: the kernel then gives its share of new
        connections to the workers still draining (a 503 at once), not to a queue no one
        reads until the supervisor exits."""
        in_use = {sock for w in self._workers for sock in self.sockets[w.index]}
        for sock in set(self.sockets[index]) - in_use:
            sock.close()

    def _give_up(self, status: int) -> None:
        """Drain the other workers and exit, for whoever runs us to start the box afresh."""
        self._status = status
        self._stop_signals = 1
        self._send(signal.SIGTERM)


def _describe(code: int | None) -> str:
    if code is not None and code < 0:
        with contextlib.suppress(ValueError):
            return f"killed by {signal.Signals(-code).name}"
    return f"exited with status {code}"


def _worker_main(
    target: WorkerTarget,
    index: int,
    args: tuple[Any, ...],
    sockets: list[socket.socket],
    ready_pipe: Connection,
    lifeline: Connection,
) -> None:
    """The first thing a worker runs (in a fresh interpreter: the `spawn` start method)."""
    os.setpgrp()  # out of the terminal's process group: Ctrl-C comes once, from the parent
    threading.Thread(target=_watch_parent, args=(lifeline,), daemon=True).start()

    def ready() -> None:
        with contextlib.suppress(OSError):
            ready_pipe.send(True)
            ready_pipe.close()

    sys.exit(target(sockets, ready, index, *args))


def _watch_parent(lifeline: Connection) -> None:
    """Drain and exit when the parent is gone (its end of the pipe closes with it)."""
    with contextlib.suppress(EOFError, OSError):
        lifeline.recv()
    os.kill(os.getpid(), signal.SIGTERM)


@contextlib.contextmanager
def metrics_directory() -> Iterator[str]:
    """The directory of prometheus-client's multiprocess files, set in the environment the
    workers inherit: $PROMETHEUS_MULTIPROC_DIR if the operator chose one (emptied first, as the
    library asks), else a temporary one removed afterwards."""
    chosen = os.environ.get(MULTIPROCESS_DIR)
    if chosen:
        os.makedirs(chosen, exist_ok=True)
        for name in os.listdir(chosen):
            if name.endswith(".db"):
                os.unlink(os.path.join(chosen, name))
        yield chosen
        return
    path = tempfile.mkdtemp(prefix="bridge-metrics-")
    os.environ[MULTIPROCESS_DIR] = path
    try:
        yield path
    finally:
        os.environ.pop(MULTIPROCESS_DIR, None)
        shutil.rmtree(path, ignore_errors=True)


def require_shared_call_log(settings: Settings, count: int) -> None:
    """ConfigError unless the call log is one that workers can share (PostgreSQL)."""
    if settings.database_url.startswith("sqlite"):
        raise ConfigError(
            [
                f"--workers {count}: the call log is SQLite, one process's database. Set "
                "BRIDGE_DATABASE_URL to PostgreSQL (postgresql+asyncpg://...), which the workers "
                "share for records and the live view, or run one worker per container."
            ]
        )


def serve_workers(
    settings: Settings,
    host: str,
    port: int,
    count: int,
    *,
    target: WorkerTarget | None = None,
    args: Sequence[Any] = (),
) -> int:
    """The supervisor's side of `bridge serve --workers N`: bind, start, look after, return
    the exit status. Each worker runs `target(sockets, ready, index, settings, host, port,
    *args)`, by default `serve_worker` (the bench passes its own)."""
    from prometheus_client import multiprocess

    main = slot_sockets(host, port, count)
    metrics_port, metrics_host = settings.metrics_port, settings.metrics_host
    metrics = [bind(metrics_host, metrics_port)] if metrics_port else []
    sockets = [[sock, *metrics] for sock in main]  # scrapes are rare: one shared socket
    with metrics_directory() as directory:
        logger.info(
            "serving on %s:%d with %d workers (metrics summed in %s)", host, port, count, directory
        )
        supervisor = Supervisor(
            serve_worker if target is None else target,
            (settings, host, port, *args),
            sockets,
            on_exit=lambda pid: multiprocess.mark_process_dead(pid, directory),  # type: ignore[no-untyped-call]
        )
        try:
            return supervisor.run()
        finally:
            for sock in {*main, *metrics}:
                sock.close()


def serve_worker(
    sockets: list[socket.socket],
    ready: Callable[[], None],
    index: int,
    settings: Settings,
    host: str,
    port: int,
) -> int:
    """One worker of `serve_workers`: `bridge serve` on the parent's sockets."""
    import asyncio

    from bridge import cli, logs

    logs.configure(settings.log_level, settings.log_format, worker=index)
    metrics_sockets = sockets[1:]
    try:
        with asyncio.Runner(loop_factory=cli.event_loop_factory()) as runner:
            return runner.run(
                cli.serve(
                    settings,
                    host,
                    port,
                    sockets=sockets[:1],
                    metrics_sockets=metrics_sockets,
                    on_started=ready,
                )
            )
    except ConfigError as exc:
        return cli.config_error(exc)
