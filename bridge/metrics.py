"""Prometheus metrics: every series the bridge exports, on its own registry, and `/metrics`.

The registry is not prometheus-client's global one, so tests can build any number of apps. Names
follow Prometheus conventions (base units, `_total` on counters); dashboards and the optional
autoscaling metric in `deploy/k8s/hpa.yaml` rely on them, so renaming one is a breaking change.
"""

from __future__ import annotations

import contextlib
import hmac
import os
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Literal, TypeVar

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    GCCollector,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    multiprocess,
)
from prometheus_client.exposition import choose_encoder
from pydantic import SecretStr
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp

from bridge.call.speech_guarantee import Recovery
from bridge.record import EndReason

__all__ = [
    "ADDED_LATENCY",
    "ADDED_LATENCY_CALLER_TO_MODEL",
    "ADDED_LATENCY_MODEL_TO_CALLER",
    "BARGE_INS",
    "CALLS_ENDED",
    "CALLS_REFUSED",
    "CALL_DURATION",
    "CALL_LOG_WRITE_FAILURES",
    "CLEAR_LATENCY",
    "DRAINING",
    "EVENT_LOOP_LAG",
    "HOLDING_PHRASES",
    "LIVE_CALLS",
    "MAX_CALLS",
    "METRICS",
    "PROTOCOL_ERRORS",
    "QUEUE_DEPTH",
    "REALTIME_CONNECT",
    "REALTIME_ERRORS",
    "RECONNECTS",
    "RECONNECT_GAP",
    "RECORDINGS",
    "REGISTRY",
    "SAMPLE_EVERY",
    "TEXT_ONLY_RECOVERIES",
    "TOOL_CALLS",
    "TOOL_SECONDS",
    "TRANSCODE_CALLER_TO_MODEL",
    "TRANSCODE_MODEL_TO_CALLER",
    "TRANSCODE_SECONDS",
    "TRANSFERS",
    "WEBHOOK_BACKLOG",
    "WEBHOOK_DELIVERIES",
    "WEBHOOK_SECONDS",
    "Sampled",
    "barge_in",
    "call_ended",
    "call_refused",
    "live_call",
    "metrics_app",
    "metrics_endpoint",
    "protocol_error",
    "realtime_error",
    "render",
    "set_draining",
    "set_max_calls",
    "text_only_recovery",
    "tool_call",
    "watch_queue",
]

Direction = Literal["caller_to_model", "model_to_caller"]
Side = Literal["twilio", "realtime"]
# rejected / unavailable: opening the session failed (UpstreamRejected / UpstreamUnavailable);
# server_error: an `error` event the call did not shrug off; closed: the socket closed with an
# error code mid-call; timeout: Realtime stopped reading what we sent.
RealtimeErrorKind = Literal["rejected", "unavailable", "server_error", "closed", "timeout"]

# busy: the process was at BRIDGE_MAX_CALLS (bridge.admission).
RefusalReason = Literal["busy"]
REFUSAL_REASONS: tuple[RefusalReason, ...] = ("busy",)

DIRECTIONS: tuple[Direction, ...] = ("caller_to_model", "model_to_caller")
SIDES: tuple[Side, ...] = ("twilio", "realtime")
REALTIME_ERROR_KINDS: tuple[RealtimeErrorKind, ...] = (
    "rejected",
    "unavailable",
    "server_error",
    "closed",
    "timeout",
)

# 1 frame in SAMPLE_EVERY is timed: 20 ms frames make that one observation per second per
# direction per call. Histogram counts of sampled series are frames / SAMPLE_EVERY.
SAMPLE_EVERY = 50
MULTIPROCESS_DIR = "PROMETHEUS_MULTIPROC_DIR"  # set by `bridge serve --workers N` (bridge.workers)

REGISTRY = CollectorRegistry(auto_describe=True)
# The process_* (CPU, RSS, fds), python_info and python_gc_* series the global registry has too.
ProcessCollector(registry=REGISTRY)
PlatformCollector(registry=REGISTRY)
GCCollector(registry=REGISTRY)

# multiprocess_mode says how `bridge serve --workers N` sums a gauge over live workers.
LIVE_CALLS = Gauge(
    "bridge_live_calls",
    "Calls in progress (summed over worker processes).",
    multiprocess_mode="livesum",
    registry=REGISTRY,
)
MAX_CALLS = Gauge(
    "bridge_max_calls",
    "The process's BRIDGE_MAX_CALLS; 0 when unlimited (summed over worker processes, like "
    "bridge_live_calls, so their ratio is how full the server is).",
    multiprocess_mode="livesum",
    registry=REGISTRY,
)
CALLS_ENDED = Counter(
    "bridge_calls_ended", "Calls ended, by end reason.", ["reason"], registry=REGISTRY
)
CALL_DURATION = Histogram(
    "bridge_call_duration_seconds",
    "Call duration from the Media Stream start to the end of the call.",
    buckets=(5, 15, 30, 60, 120, 180, 300, 600, 900, 1200, 1800, 2700, 3600),
    registry=REGISTRY,
)
ADDED_LATENCY = Histogram(
    "bridge_added_latency_seconds",
    f"Time a frame spends inside the bridge, per direction (1 frame in {SAMPLE_EVERY}).",
    ["direction"],
    buckets=(0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5),
    registry=REGISTRY,
)
BARGE_INS = Counter(
    "bridge_barge_ins", "Caller interruptions of assistant audio.", registry=REGISTRY
)
CLEAR_LATENCY = Histogram(
    "bridge_clear_latency_seconds",
    "From Realtime's speech_started to Twilio `clear` sent.",
    buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0),
    registry=REGISTRY,
)
TEXT_ONLY_RECOVERIES = Counter(
    "bridge_text_only_recoveries",
    "Replies that came back as text only, by recovery step.",
    ["recovery"],
    registry=REGISTRY,
)
REALTIME_CONNECT = Histogram(
    "bridge_realtime_connect_seconds",
    "Time to open the Realtime WebSocket (successful opens).",
    buckets=(0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0, 20.0),
    registry=REGISTRY,
)
REALTIME_ERRORS = Counter(
    "bridge_realtime_errors", "Realtime failures, by kind.", ["kind"], registry=REGISTRY
)
TRANSCODE_SECONDS = Histogram(
    "bridge_transcode_seconds",
    f"Transcoder time per 20 ms frame, per direction (1 frame in {SAMPLE_EVERY}).",
    ["direction"],
    buckets=(1e-6, 2e-6, 5e-6, 1e-5, 2e-5, 5e-5, 1e-4, 2e-4, 5e-4, 1e-3),
    registry=REGISTRY,
)
QUEUE_DEPTH = Gauge(
    "bridge_queue_depth",
    "Items waiting in a queue, summed over calls.",
    ["queue"],
    multiprocess_mode="livesum",
    registry=REGISTRY,
)
CALL_LOG_WRITE_FAILURES = Counter(
    "bridge_call_log_write_failures", "Call-log writes that failed.", registry=REGISTRY
)
PROTOCOL_ERRORS = Counter(
    "bridge_protocol_errors",
    "Messages a peer sent that broke its protocol, by side.",
    ["side"],
    registry=REGISTRY,
)
TOOL_CALLS = Counter(
    "bridge_tool_calls",
    "Tool calls and keypad actions, by tool name, kind (end_call, transfer_call, http, mcp, "
    "keypad) and outcome (ok, error, cancelled).",
    ["name", "kind", "outcome"],
    registry=REGISTRY,
)
TOOL_SECONDS = Histogram(
    "bridge_tool_seconds",
    "How long a tool call took, by kind (HTTP tools: the request; MCP: as the service ran it).",
    ["kind"],
    buckets=(0.05, 0.1, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0, 30.0, 60.0),
    registry=REGISTRY,
)
HOLDING_PHRASES = Counter(
    "bridge_holding_phrases",
    "Holding phrases asked for because a tool was still running.",
    registry=REGISTRY,
)
RECONNECTS = Counter(
    "bridge_reconnects",
    "Realtime sessions lost mid-call, by outcome (reconnected, failed).",
    ["outcome"],
    registry=REGISTRY,
)
RECONNECT_GAP = Histogram(
    "bridge_reconnect_gap_seconds",
    "From losing the Realtime session to the new one taking the call.",
    buckets=(0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0),
    registry=REGISTRY,
)
TRANSFERS = Counter(
    "bridge_transfers",
    "Calls handed to a person, by how (tool or keypad).",
    ["via"],
    registry=REGISTRY,
)
DRAINING = Gauge(
    "bridge_draining",
    "1 while draining for shutdown, else 0.",
    multiprocess_mode="livemax",
    registry=REGISTRY,
)
CALLS_REFUSED = Counter(
    "bridge_calls_refused",
    "Calls the voice webhook turned away, by reason (busy: at BRIDGE_MAX_CALLS).",
    ["reason"],
    registry=REGISTRY,
)
EVENT_LOOP_LAG = Histogram(
    "bridge_event_loop_lag_seconds",
    "How late the event loop woke a 0.25 s timer (measured 4 times a second).",
    buckets=(0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0),
    registry=REGISTRY,
)
WEBHOOK_DELIVERIES = Counter(
    "bridge_webhook_deliveries",
    "Post-call webhook attempts, by outcome (delivered; retried: failed, will be tried again; "
    "failed: given up after 24 h).",
    ["outcome"],
    registry=REGISTRY,
)
WEBHOOK_BACKLOG = Gauge(
    "bridge_webhook_backlog",
    "Post-call webhook deliveries waiting to be made (the outbox, shared by all replicas).",
    multiprocess_mode="livemax",
    registry=REGISTRY,
)
WEBHOOK_SECONDS = Histogram(
    "bridge_webhook_delivery_seconds",
    "How long one post-call webhook attempt took (the receiver's answer, or the 10 s timeout).",
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
    registry=REGISTRY,
)
RECORDINGS = Counter(
    "bridge_recordings",
    "Call recordings, by outcome (saved; failed: storage refused it, see the log).",
    ["outcome"],
    registry=REGISTRY,
)

METRICS: tuple[Counter | Gauge | Histogram, ...] = (
    LIVE_CALLS,
    MAX_CALLS,
    CALLS_ENDED,
    CALL_DURATION,
    ADDED_LATENCY,
    BARGE_INS,
    CLEAR_LATENCY,
    TEXT_ONLY_RECOVERIES,
    REALTIME_CONNECT,
    REALTIME_ERRORS,
    TRANSCODE_SECONDS,
    QUEUE_DEPTH,
    CALL_LOG_WRITE_FAILURES,
    PROTOCOL_ERRORS,
    TOOL_CALLS,
    TOOL_SECONDS,
    HOLDING_PHRASES,
    TRANSFERS,
    RECONNECTS,
    RECONNECT_GAP,
    DRAINING,
    CALLS_REFUSED,
    EVENT_LOOP_LAG,
    WEBHOOK_DELIVERIES,
    WEBHOOK_BACKLOG,
    WEBHOOK_SECONDS,
    RECORDINGS,
)

# Every known label value exists from the start at 0, so rate() and alerts see the first event.
for _reason in EndReason:
    CALLS_ENDED.labels(reason=_reason.value)
for _recovery in Recovery:
    TEXT_ONLY_RECOVERIES.labels(recovery=_recovery.value)
for _kind in REALTIME_ERROR_KINDS:
    REALTIME_ERRORS.labels(kind=_kind)
for _side in SIDES:
    PROTOCOL_ERRORS.labels(side=_side)
for _via in ("tool", "keypad"):
    TRANSFERS.labels(via=_via)
for _refusal in REFUSAL_REASONS:
    CALLS_REFUSED.labels(reason=_refusal)
for _outcome in ("reconnected", "failed"):
    RECONNECTS.labels(outcome=_outcome)
for _outcome in ("delivered", "retried", "failed"):
    WEBHOOK_DELIVERIES.labels(outcome=_outcome)
for _outcome in ("saved", "failed"):
    RECORDINGS.labels(outcome=_outcome)


T = TypeVar("T")
R = TypeVar("R")


class Sampled:
    """Records 1 event in `every` into a histogram; the others cost a decrement and a compare.

    Per-frame use (~0.1 µs when not sampling): `pcm = TRANSCODE_CALLER_TO_MODEL.call(up.convert,
    ulaw)` times the conversion; `ADDED_LATENCY_CALLER_TO_MODEL.observe(now - received)` records
    a measured value. Not thread-safe, by design: a lost decrement only shifts the sample.
    """

    __slots__ = ("_countdown", "_histogram", "every")

    def __init__(self, histogram: Histogram, every: int = SAMPLE_EVERY) -> None:
        if every < 1:
            raise ValueError(f"every must be >= 1, got {every}")
        self._histogram = histogram
        self.every = every
        self._countdown = every

    def due(self) -> bool:
        """True once in `every` calls: the caller measures and `record`s this one."""
        self._countdown -= 1
        if self._countdown > 0:
            return False
        self._countdown = self.every
        return True

    def record(self, seconds: float) -> None:
        """Observe unconditionally (after `due()` said so)."""
        self._histogram.observe(seconds)

    def observe(self, seconds: float) -> None:
        """Observe `seconds` if this event is the sampled one."""
        if self.due():
            self._histogram.observe(seconds)

    def call(self, fn: Callable[[T], R], arg: T, /) -> R:
        """`fn(arg)`, timed if this event is the sampled one."""
        if not self.due():
            return fn(arg)
        start = time.perf_counter()
        try:
            return fn(arg)
        finally:
            self._histogram.observe(time.perf_counter() - start)


ADDED_LATENCY_CALLER_TO_MODEL = Sampled(ADDED_LATENCY.labels(direction="caller_to_model"))
ADDED_LATENCY_MODEL_TO_CALLER = Sampled(ADDED_LATENCY.labels(direction="model_to_caller"))
TRANSCODE_CALLER_TO_MODEL = Sampled(TRANSCODE_SECONDS.labels(direction="caller_to_model"))
TRANSCODE_MODEL_TO_CALLER = Sampled(TRANSCODE_SECONDS.labels(direction="model_to_caller"))


@contextlib.contextmanager
def live_call() -> Iterator[None]:
    """Counts a call as live for the duration of the block (`with live_call(): await ...`)."""
    LIVE_CALLS.inc()
    try:
        yield
    finally:
        LIVE_CALLS.dec()


def call_ended(reason: EndReason, duration_seconds: float) -> None:
    """One per call, where the end reason is final."""
    CALLS_ENDED.labels(reason=reason.value).inc()
    CALL_DURATION.observe(duration_seconds)


def call_refused(reason: RefusalReason) -> None:
    """One per voice webhook answered with a refusal instead of a stream."""
    CALLS_REFUSED.labels(reason=reason).inc()


def barge_in(clear_latency_seconds: float) -> None:
    """One per barge-in, once `clear` has been sent to Twilio."""
    BARGE_INS.inc()
    CLEAR_LATENCY.observe(clear_latency_seconds)


def text_only_recovery(recovery: Recovery) -> None:
    TEXT_ONLY_RECOVERIES.labels(recovery=recovery.value).inc()


def realtime_error(kind: RealtimeErrorKind) -> None:
    REALTIME_ERRORS.labels(kind=kind).inc()


def protocol_error(side: Side) -> None:
    PROTOCOL_ERRORS.labels(side=side).inc()


def tool_call(name: str, kind: str, outcome: str, seconds: float | None) -> None:
    """One per finished tool call (or keypad action)."""
    TOOL_CALLS.labels(name=name, kind=kind, outcome=outcome).inc()
    if seconds is not None:
        TOOL_SECONDS.labels(kind=kind).observe(seconds)


def set_draining(draining: bool) -> None:
    DRAINING.set(1 if draining else 0)


def set_max_calls(max_calls: int | None) -> None:
    """The call limit the app enforces (None: unlimited, exported as 0)."""
    MAX_CALLS.set(max_calls or 0)


def watch_queue(queue: str, depth: Callable[[], int]) -> None:
    """Report a process-wide queue's depth at scrape time (`watch_queue("call_log", q.qsize)`).

    Per-call queues instead `QUEUE_DEPTH.labels(queue=...).inc()` on put and `.dec()` on get,
    so the series is the sum over live calls.
    """
    QUEUE_DEPTH.labels(queue=queue).set_function(depth)


def render(accept: str = "") -> tuple[bytes, str]:
    """The exposition and its content type, negotiated from an Accept header.

    Under `bridge serve --workers N` every worker writes its series to files in
    $PROMETHEUS_MULTIPROC_DIR, and any worker's scrape sums them over all workers (live ones
    for gauges); the per-process series (process_*, python_gc_*) are left out there, as
    prometheus-client's multiprocess mode does: one process's CPU is not the server's.
    """
    encoder, content_type = choose_encoder(accept)
    directory = os.environ.get(MULTIPROCESS_DIR)
    if not directory:
        return encoder(REGISTRY), content_type
    registry = CollectorRegistry()  # per scrape, as the library asks: the files change
    multiprocess.MultiProcessCollector(registry, path=directory)  # type: ignore[no-untyped-call]
    PlatformCollector(registry=registry)
    return encoder(registry), content_type


async def _exposition(request: Request) -> Response:
    # Collecting takes well under a millisecond for this registry: fine on the event loop.
    body, content_type = render(request.headers.get("accept", ""))
    return Response(body, headers={"Content-Type": content_type})


def metrics_endpoint(admin_token: SecretStr | None) -> Callable[[Request], Awaitable[Response]]:
    """A Starlette endpoint serving `REGISTRY`; with a token, only to `Authorization: Bearer`."""
    if admin_token is None:
        return _exposition
    expected = admin_token.get_secret_value().encode("utf-8")

    async def protected(request: Request) -> Response:
        scheme, _, credentials = request.headers.get("authorization", "").partition(" ")
        # Starlette decodes headers as latin-1; encoding back gives the bytes that were sent.
        given = credentials.strip().encode("latin-1")
        if scheme.lower() != "bearer" or not hmac.compare_digest(given, expected):
            return PlainTextResponse(
                "unauthorized", status_code=401, headers={"WWW-Authenticate": "Bearer"}
            )
        return await _exposition(request)

    return protected


def metrics_app() -> ASGIApp:
    """`GET /metrics` alone, unauthenticated: for BRIDGE_METRICS_PORT, never a public port."""
    return Starlette(routes=[Route("/metrics", metrics_endpoint(None), methods=["GET"])])
