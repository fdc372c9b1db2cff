"""`bridge bench` end to end, tiny: a bridge process, three calls, a few seconds. Keeps the command
working; asserts what was measured, never how fast."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
import sqlalchemy as sa

from bridge.bench import callgrind, cli
from bridge.store.database import create_engine
from tests.test_store_support import database

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


@pytest.mark.skipif(
    not callgrind.available(), reason="valgrind not installed (apt-get install valgrind)"
)
@pytest.mark.timeout(300)
def test_bench_counts_the_bridges_instructions(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    report_path = tmp_path / "bench.json"
    argv = ["--calls", "1", "--seconds", "3", "--ramp", "1", "--bare", "--instructions"]
    code = cli.main([*argv, "--json", str(report_path), "--chart", str(tmp_path / "b.png")])
    assert code == 0
    out = capsys.readouterr().out
    assert "ran under callgrind" in out
    (level,) = json.loads(report_path.read_text())["levels"]
    assert level["calls"]["held"] == 1
    bridge = level["bridge"]
    # Counted over the steady phase only: millions per call-second, not the start-up's billions.
    assert bridge["instructions"] > 0
    assert 1e6 < bridge["instructions_per_call_second"] < 1e9


def test_instructions_need_a_bridge_the_bench_starts(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["--instructions", "--url", "http://127.0.0.1:9"])
    assert exit_info.value.code == 2
    assert "not --url" in capsys.readouterr().err


def test_callgrind_dump_totals_are_read(tmp_path: Path) -> None:
    (tmp_path / "callgrind.41").write_text("events: Ir\ntotals: 5\n")  # the exit dump: ignored
    (tmp_path / "callgrind.41.1").write_text("version: 1\nevents: Ir\nsummary: 123456789\n")
    assert callgrind.read_total(tmp_path, 41) == 123456789
    assert callgrind.read_total(tmp_path, 42) is None
    command = callgrind.wrap_command(["python", "-m", "x"], tmp_path)
    assert command[-3:] == ["python", "-m", "x"]
    assert "--instr-atstart=no" in command


async def test_bench_runs_workers_on_postgres_and_counts_every_process(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`--workers 2`: the report's CPU and memory are the supervisor's and both workers'."""
    async with database("postgresql", tmp_path) as url:
        report_path = tmp_path / "bench.json"
        argv = ["--calls", "4", "--seconds", "3", "--ramp", "1", "--workers", "2", "--quiet"]
        argv += ["--database-url", url, "--json", str(report_path), "--chart", str(tmp_path / "c")]
        code = await asyncio.to_thread(cli.main, argv)
        assert code == 0
        assert "2 workers" in capsys.readouterr().out
        report = json.loads(report_path.read_text())
        assert report["config"]["workers"] == 2
        assert report["config"]["call_log"] == "postgresql+asyncpg"
        (level,) = report["levels"]
        assert level["calls"]["held"] == 4
        assert level["turns"]["replies"] > 0
        bridge = level["bridge"]
        assert bridge["cpu_s"] > 0
        # Three Python processes, each well over 20 MB resident: more than one process counted.
        assert bridge["rss_baseline_mb"] > 60
        engine = create_engine(url)
        try:
            async with engine.connect() as connection:
                stored = await connection.scalar(sa.text("SELECT count(*) FROM calls"))
        finally:
            await engine.dispose()
        assert stored == 4  # every call of the run reached the shared call log


def test_workers_need_a_shared_call_log_or_bare(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["--workers", "2"])
    assert exit_info.value.code == 2
    assert "--database-url" in capsys.readouterr().err


def test_bench_tools_measures_each_figure(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "tools.json"
    assert cli.main(["tools", "--calls", "1", "--json", str(path)]) == 0
    out = capsys.readouterr().out
    assert "holding phrase heard" in out
    figures = json.loads(path.read_text())
    (dispatch,) = figures["dispatch"]
    (returned,) = figures["return"]
    assert 0 < dispatch < 1000
    assert 0 < returned < 1000
    (holding,) = figures["holding"]
    assert 1.4 < holding < 2.0  # the holding phrase starts within 2 s of the tool
    (goodbye,) = figures["goodbye"]
    assert goodbye == pytest.approx(1.5, abs=0.05)  # heard whole before the hang-up


def test_bench_survive_measures_reconnect_and_rollover_gaps(tmp_path: Path) -> None:
    path = tmp_path / "survive.json"
    arguments = ["survive", "--calls", "2", "--seconds", "8", "--drop-every", "3"]
    arguments += ["--rollover-calls", "1", "--rollover-seconds", "12", "--json", str(path)]
    assert cli.main(arguments) == 0
    figures = json.loads(path.read_text())
    assert len(figures["reconnect_ms"]) >= 2  # each call lost its session at least once
    assert all(0 <= gap < 1000 for gap in figures["reconnect_ms"])  # back within 1 s
    assert len(figures["rollover_ms"]) >= 1
    assert all(0 <= gap < 500 for gap in figures["rollover_ms"])
