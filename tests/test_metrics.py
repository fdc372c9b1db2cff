"""Metric definitions, the sampled per-frame observer, and `/metrics` auth over a real socket."""

from __future__ import annotations

import asyncio
import timeit

import httpx
import pytest
from prometheus_client import CollectorRegistry, Histogram
from pydantic import SecretStr
from starlette.applications import Starlette
from starlette.routing import Route

from bridge import metrics
from bridge.call.speech_guarantee import Recovery
from bridge.record import EndReason
from bridge.server import serving
from bridge.sim.realtime_server import RealtimeSimulator
from tests.conftest import running_bridge

# The names dashboards, alerts and deploy/k8s/hpa.yaml use: renaming one breaks them.
EXPECTED_NAMES = (
    "bridge_live_calls",
    "bridge_max_calls",
    "bridge_calls_ended_total",
    "bridge_call_duration_seconds",
    "bridge_added_latency_seconds",
    "bridge_barge_ins_total",
    "bridge_clear_latency_seconds",
    "bridge_text_only_recoveries_total",
    "bridge_realtime_connect_seconds",
    "bridge_realtime_errors_total",
    "bridge_transcode_seconds",
    "bridge_queue_depth",
    "bridge_call_log_write_failures_total",
    "bridge_protocol_errors_total",
    "bridge_draining",
    "bridge_tool_calls_total",
    "bridge_tool_seconds",
    "bridge_holding_phrases_total",
    "bridge_transfers_total",
    "process_resident_memory_bytes",
    "process_cpu_seconds_total",
)
TOKEN = "s3cret-admin-token"


def sample(name: str, **labels: str) -> float:
    value = metrics.REGISTRY.get_sample_value(name, labels)
    assert value is not None, f"no sample {name}{labels}"
    return value


def exposition() -> str:
    body, content_type = metrics.render()
    assert content_type.startswith("text/plain")
    return body.decode()


def test_exposition_names_every_metric() -> None:
    text = exposition()
    declared = {f"# TYPE {name} " for name in EXPECTED_NAMES}
    missing = [line for line in declared if line not in text]
    assert not missing
    for metric in metrics.METRICS:
        (family,) = metric.describe()
        assert f"# HELP {family.name}" in text  # counters add `_total` after it


def test_known_label_values_exist_from_the_start() -> None:
    text = exposition()
    for reason in EndReason:
        assert f'bridge_calls_ended_total{{reason="{reason.value}"}}' in text
    for recovery in Recovery:
        assert f'bridge_text_only_recoveries_total{{recovery="{recovery.value}"}}' in text
    for side in metrics.SIDES:
        assert f'bridge_protocol_errors_total{{side="{side}"}}' in text
    for kind in metrics.REALTIME_ERROR_KINDS:
        assert f'bridge_realtime_errors_total{{kind="{kind}"}}' in text


def test_call_helpers_update_their_series() -> None:
    ended = sample("bridge_calls_ended_total", reason="no_audio")
    durations = sample("bridge_call_duration_seconds_count")
    live = sample("bridge_live_calls")
    inside: list[float] = []

    def failing_call() -> None:
        with metrics.live_call():
            inside.append(sample("bridge_live_calls"))
            raise RuntimeError("the call failed")

    with pytest.raises(RuntimeError):
        failing_call()
    assert inside == [live + 1]
    assert sample("bridge_live_calls") == live
    metrics.call_ended(EndReason.NO_AUDIO, 42.0)
    assert sample("bridge_calls_ended_total", reason="no_audio") == ended + 1
    assert sample("bridge_call_duration_seconds_count") == durations + 1

    barge_ins = sample("bridge_barge_ins_total")
    metrics.barge_in(0.004)
    assert sample("bridge_barge_ins_total") == barge_ins + 1
    assert sample("bridge_clear_latency_seconds_bucket", le="0.005") >= 1

    recoveries = sample("bridge_text_only_recoveries_total", recovery="tts")
    metrics.text_only_recovery(Recovery.TTS)
    assert sample("bridge_text_only_recoveries_total", recovery="tts") == recoveries + 1
    errors = sample("bridge_realtime_errors_total", kind="server_error")
    metrics.realtime_error("server_error")
    assert sample("bridge_realtime_errors_total", kind="server_error") == errors + 1
    violations = sample("bridge_protocol_errors_total", side="twilio")
    metrics.protocol_error("twilio")
    assert sample("bridge_protocol_errors_total", side="twilio") == violations + 1

    metrics.set_draining(True)
    assert sample("bridge_draining") == 1
    metrics.set_draining(False)
    assert sample("bridge_draining") == 0

    metrics.watch_queue("test_queue", lambda: 7)
    assert sample("bridge_queue_depth", queue="test_queue") == 7


def count(histogram: Histogram) -> float:
    (family,) = histogram.collect()
    value: float = {s.name: s.value for s in family.samples}["t_seconds_count"]
    return value


def test_sampled_observes_one_event_in_every() -> None:
    histogram = Histogram("t_seconds", "test", buckets=(1.0,), registry=CollectorRegistry())
    sampled = metrics.Sampled(histogram, every=3)
    for _ in range(7):
        sampled.observe(0.5)
    assert count(histogram) == 2  # events 3 and 6
    assert [sampled.call(lambda x: x * 2, n) for n in range(5)] == [0, 2, 4, 6, 8]
    assert count(histogram) == 4  # events 9 and 12
    with pytest.raises(ValueError, match="every"):
        metrics.Sampled(histogram, every=0)


def test_sampled_call_records_even_when_the_function_raises() -> None:
    histogram = Histogram("t_seconds", "test", registry=CollectorRegistry())

    def fail(_: int) -> int:
        raise ValueError("transcoder broke")

    with pytest.raises(ValueError, match="transcoder broke"):
        metrics.Sampled(histogram, every=1).call(fail, 0)
    assert count(histogram) == 1


def test_module_samplers_record_into_their_direction() -> None:
    before = sample("bridge_transcode_seconds_count", direction="model_to_caller")
    for _ in range(metrics.SAMPLE_EVERY):
        assert metrics.TRANSCODE_MODEL_TO_CALLER.call(bytes, 4) == b"\0\0\0\0"
    assert sample("bridge_transcode_seconds_count", direction="model_to_caller") == before + 1
    before = sample("bridge_added_latency_seconds_count", direction="caller_to_model")
    for _ in range(metrics.SAMPLE_EVERY):
        metrics.ADDED_LATENCY_CALLER_TO_MODEL.observe(0.001)
    assert sample("bridge_added_latency_seconds_count", direction="caller_to_model") == before + 1


def test_sampled_costs_well_under_a_microsecond_per_frame() -> None:
    sampled = metrics.Sampled(
        Histogram("t_seconds", "test", registry=CollectorRegistry()), every=metrics.SAMPLE_EVERY
    )
    frame = b"\xff" * 160
    number = 20_000
    best = min(timeit.repeat(lambda: sampled.call(len, frame), number=number, repeat=5))
    assert best / number < 1e-6, f"{best / number * 1e6:.2f} µs per frame"


async def test_token_protects_metrics_over_a_real_socket() -> None:
    app = Starlette(
        routes=[Route("/metrics", metrics.metrics_endpoint(SecretStr(TOKEN)), methods=["GET"])]
    )
    async with (
        asyncio.timeout(20),
        serving(app) as base,
        httpx.AsyncClient(base_url=base, timeout=5) as client,
    ):
        refused = await client.get("/metrics")
        assert refused.status_code == 401
        assert refused.headers["www-authenticate"] == "Bearer"
        assert "bridge_" not in refused.text
        wrong = (f"Bearer {TOKEN}x", f"Basic {TOKEN}", TOKEN, "Bearer", "Bearer é")
        for header in wrong:
            response = await client.get("/metrics", headers={b"Authorization": header.encode()})
            assert response.status_code == 401, header

        accepted = await client.get("/metrics", headers={"Authorization": f"bearer {TOKEN}"})
        assert accepted.status_code == 200
        assert accepted.headers["content-type"].startswith("text/plain")
        assert "# TYPE bridge_live_calls gauge" in accepted.text

        openmetrics = await client.get(
            "/metrics",
            headers={
                "Authorization": f"Bearer {TOKEN}",
                "Accept": "application/openmetrics-text; version=1.0.0",
            },
        )
        assert openmetrics.headers["content-type"].startswith("application/openmetrics-text")
        assert openmetrics.text.endswith("# EOF\n")


async def test_metrics_app_serves_without_a_token() -> None:
    async with (
        asyncio.timeout(20),
        serving(metrics.metrics_app()) as base,
        httpx.AsyncClient(base_url=base, timeout=5) as client,
    ):
        response = await client.get("/metrics")
        assert response.status_code == 200
        assert "# TYPE bridge_draining gauge" in response.text
        assert (await client.get("/")).status_code == 404


async def test_app_metrics_follow_the_admin_rule(simulator: RealtimeSimulator) -> None:
    """Without a token: direct loopback only; with one: the bearer token is required."""
    async with running_bridge(simulator) as open_bridge, httpx.AsyncClient() as client:
        local = await client.get(f"{open_bridge.base}/metrics")
        assert local.status_code == 200
        assert "bridge_live_calls" in local.text
        relayed = await client.get(
            f"{open_bridge.base}/metrics", headers={"X-Forwarded-For": "203.0.113.9"}
        )
        assert relayed.status_code == 403
    token = "s3cret-admin"
    async with running_bridge(simulator, admin_token=token) as closed_bridge:
        async with httpx.AsyncClient() as client:
            refused = await client.get(f"{closed_bridge.base}/metrics")
            wrong = await client.get(
                f"{closed_bridge.base}/metrics", headers={"Authorization": "Bearer nope"}
            )
            allowed = await client.get(
                f"{closed_bridge.base}/metrics", headers={"Authorization": f"Bearer {token}"}
            )
        assert (refused.status_code, wrong.status_code, allowed.status_code) == (401, 401, 200)
        assert "bridge_calls_ended_total" in allowed.text


async def test_metrics_show_the_call_limit(simulator: RealtimeSimulator) -> None:
    """`bridge_max_calls` is what alerts divide live calls by; 0 means unlimited."""
    for max_calls, shown in ((7, "bridge_max_calls 7.0"), (None, "bridge_max_calls 0.0")):
        async with running_bridge(simulator, max_calls=max_calls) as running:
            async with httpx.AsyncClient() as client:
                response = await client.get(f"{running.base}/metrics")
            assert response.status_code == 200
            assert "# TYPE bridge_max_calls gauge" in response.text
            assert shown in response.text.splitlines()
