"""`bridge bench` end to end, tiny: a bridge process, three calls, a few seconds. Keeps the command
working; asserts what was measured, never how fast."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bridge.bench import cli

pytestmark = pytest.mark.timeout(90)


def test_bench_holds_a_few_calls_and_reports(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    report_path, chart_path = tmp_path / "bench.json", tmp_path / "bench.png"
    code = cli.main(
        [
            "--calls",
            "3",
            "--seconds",
            "3",
            "--ramp",
            "1",
            "--json",
            str(report_path),
            "--chart",
            str(chart_path),
            "--quiet",
        ]
    )
    assert code == 0
    out = capsys.readouterr().out
    assert "calls held / failed" in out
    report = json.loads(report_path.read_text())
    (level,) = report["levels"]
    assert level["calls"] == {"target": 3, "held": 3, "failed": 0, "failures": {}}
    latency = level["latency_ms"]
    assert latency["caller_to_model"]["count"] > 0  # every frame of the steady phase is paired
    assert latency["caller_to_model"]["p99"] >= latency["caller_to_model"]["p50"] > 0
    assert level["turns"]["replies"] > 0
    assert latency["model_to_caller"]["count"] > 0
    assert level["turns"]["protocol_errors"] == 0
    assert level["turns"]["rejected_events"] == 0
    bridge = level["bridge"]
    assert bridge["pid"] is not None
    assert bridge["cpu_s"] is not None
    assert bridge["cpu_s"] >= 0
    assert bridge["rss_peak_mb"] > 0
    assert level["generator"]["cpu_cores"] > 0
    before, after = level["machine"]["reference_us"]  # how fast the machine was, both ends
    assert before > 0
    assert after > 0
    assert "machine reference" in out
    assert report["config"]["audio_mode"] == "transcode"
    assert chart_path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bench_audio_still_dispatches(capsys: pytest.CaptureFixture[str]) -> None:
    code = cli.main(["audio"])
    assert code in (0, 1)  # 1 only says a speed target was missed on a busy machine
    assert "caller->model speed" in capsys.readouterr().out
