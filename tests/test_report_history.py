"""`satupintu report` over two days of history with known answers: the history is written as
OpenMetrics, turned into TSDB blocks by `promtool tsdb create-blocks-from openmetrics` and served
by a real Prometheus. Two days at a 15 s step is 11,520 points per series: more than one range
query may return, so the chunked queries are exercised too. (~5 s)"""

from __future__ import annotations

import csv
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import enforce_requirements
from satupintu.emulation.prometheus import PrometheusServer, missing_tools
from satupintu.report.prometheus import MAX_POINTS

PROMETHEUS_PORT = 9190
STEP_S = 15
DAYS = 2
MBIT = 1_000_000
OFFICE_HOURS = range(1, 9)  # hours of each day BUSY is busy (UTC, any 8 hours will do)
COST_IDR = 90_000_000
# owner -> (kind, guaranteed, ceiling, rate in bit/s at hour h)
OWNERS = {
    "STEADY": ("opd", 20 * MBIT, 50 * MBIT, lambda hour: 10 * MBIT),  # buys 20, needs 10
    "BUSY": ("opd", 20 * MBIT, 50 * MBIT, lambda hour: 30 * MBIT if hour in OFFICE_HOURS else 0),
    "WIFI-ALUN": ("wifi", 1 * MBIT, 100 * MBIT, lambda hour: 5 * MBIT),
}


def _openmetrics(start: int, steps: int) -> str:
    """The exporter's metrics for the owners above, one sample every STEP_S from `start`."""
    labels = {code: f'opd="{code}",kind="{kind}",direction="download"' for code, (kind, *_) in OWNERS.items()}
    lines = ["# TYPE satupintu_opd_bytes counter"]
    for code, (_, _, _, rate) in OWNERS.items():
        total = 0.0
        for index in range(steps + 1):
            moment = start + index * STEP_S
            if index:
                total += rate(((moment - STEP_S) % 86400) // 3600) * STEP_S / 8
            lines.append(f"satupintu_opd_bytes_total{{{labels[code]}}} {total:.0f} {moment}")
    for name, column in (("satupintu_opd_guaranteed_bps", 1), ("satupintu_opd_ceiling_bps", 2)):
        lines.append(f"# TYPE {name} gauge")
        for code, owner in OWNERS.items():
            lines += [f"{name}{{{labels[code]}}} {owner[column]} {start + i * STEP_S}" for i in range(steps + 1)]
    lines.append("# TYPE satupintu_uplink_capacity_bps gauge")
    lines += [f'satupintu_uplink_capacity_bps{{direction="download",port="gw-eth2"}} {100 * MBIT} '
              f"{start + i * STEP_S}" for i in range(steps + 1)]
    lines.append("# TYPE satupintu_scale gauge")
    lines += [f"satupintu_scale 1 {start + i * STEP_S}" for i in range(steps + 1)]
    return "\n".join(lines + ["# EOF"]) + "\n"


@pytest.fixture(scope="module")
def history(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    enforce_requirements("report history", missing_tools())
    workdir = tmp_path_factory.mktemp("history")
    steps = DAYS * 86400 // STEP_S
    start = (int(time.time()) // 86400 - DAYS - 1) * 86400  # midnight UTC, three days ago
    source = workdir / "history.om"
    source.write_text(_openmetrics(start, steps))
    server = PrometheusServer([], PROMETHEUS_PORT, workdir=workdir / "prom")
    server.data_dir.mkdir(parents=True)
    made = subprocess.run(["promtool", "tsdb", "create-blocks-from", "openmetrics", "-q", str(source),
                           str(server.data_dir)], capture_output=True, text=True, timeout=300)
    assert made.returncode == 0, made.stderr
    with server:
        yield {"url": server.url, "start": start, "end": start + steps * STEP_S, "steps": steps}


def _report(history: dict, out: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "satupintu.cli", "report", "--prometheus", history["url"], "--from",
         str(history["start"]), "--to", str(history["end"]), "--step", str(STEP_S), "--monthly-cost-idr",
         str(COST_IDR), "--out", str(out), *extra], capture_output=True, text=True, timeout=300)


def test_two_days_of_history_give_the_known_figures(history: dict, tmp_path: Path) -> None:
    assert history["steps"] > MAX_POINTS  # more than one range query per series
    result = _report(history, tmp_path, "--no-charts")
    assert result.returncode == 0, result.stderr
    rows = {row["opd"]: row for row in csv.DictReader((tmp_path / "usage.csv").open())}
    assert set(rows) == set(OWNERS)
    steady, busy = rows["STEADY"], rows["BUSY"]
    assert float(steady["average_bps"]) == pytest.approx(10 * MBIT, rel=1e-6)
    assert float(steady["p95_bps"]) == float(steady["peak_bps"]) == pytest.approx(10 * MBIT, rel=1e-6)
    assert float(steady["hours_above_guarantee"]) == 0
    # "An OPD buys 20 Mbit/s but needs 10": p95 10 x 1.2 headroom -> 12 Mbit/s.
    assert int(steady["recommended_guaranteed_bps"]) == int(steady["recommended_ceiling_bps"]) == 12 * MBIT
    assert float(busy["average_bps"]) == pytest.approx(10 * MBIT, rel=1e-6)  # 30 Mbit/s a third of the time
    assert float(busy["p95_bps"]) == float(busy["peak_bps"]) == pytest.approx(30 * MBIT, rel=1e-6)
    assert float(busy["hours_above_guarantee"]) == pytest.approx(DAYS * len(OFFICE_HOURS), abs=STEP_S / 3600)
    assert int(busy["recommended_guaranteed_bps"]) == int(busy["recommended_ceiling_bps"]) == 36 * MBIT
    costs = {row["opd"]: row for row in csv.DictReader((tmp_path / "costs.csv").open())}
    # Bytes 10 : 10 : 5 -> 36 : 36 : 18 million; guarantees 20 : 20 : 1.
    assert {code: int(row["cost_by_usage_idr"]) for code, row in costs.items()} == {
        "STEADY": 36_000_000, "BUSY": 36_000_000, "WIFI-ALUN": 18_000_000}
    by_guarantee = {code: int(row["cost_by_guarantee_idr"]) for code, row in costs.items()}
    assert sum(by_guarantee.values()) == COST_IDR
    assert by_guarantee["STEADY"] == by_guarantee["BUSY"] == pytest.approx(COST_IDR * 20 / 41, abs=1)


def test_a_coarser_step_smooths_the_peak_but_not_the_average(history: dict, tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "satupintu.cli", "report", "--prometheus", history["url"], "--from",
         str(history["start"]), "--to", str(history["end"]), "--step", "86400", "--out", str(tmp_path),
         "--no-charts"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    busy = next(row for row in csv.DictReader((tmp_path / "usage.csv").open()) if row["opd"] == "BUSY")
    assert float(busy["peak_bps"]) == pytest.approx(10 * MBIT, rel=1e-6)  # one-day averages
    assert float(busy["average_bps"]) == pytest.approx(10 * MBIT, rel=1e-6)


def test_a_period_without_data_is_a_clear_error(history: dict, tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "satupintu.cli", "report", "--prometheus", history["url"], "--from",
         str(history["start"] - 10 * 86400), "--to", str(history["start"] - 9 * 86400), "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert "has no satupintu_opd_bytes_total" in result.stderr and "Traceback" not in result.stderr
