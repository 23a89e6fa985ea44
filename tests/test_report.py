"""The report's arithmetic (satupintu.report.stats) and the command's errors, without Prometheus.
The report from a real emulation run is checked in tests/test_observability.py."""

from __future__ import annotations

import argparse
import socket
from datetime import UTC, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from satupintu.cli import main
from satupintu.commands.report import parse_time
from satupintu.report.stats import percentile, recommend, round_up, split_cost, step_rates, summarize


def test_step_rates_are_counter_differences_per_step_in_bits() -> None:
    samples = [(0.0, 0.0), (10.0, 1250.0), (20.0, 3750.0)]
    assert step_rates(samples, 10.0) == [(10.0, 1000.0), (20.0, 2000.0)]


def test_a_counter_reset_counts_from_zero_and_a_gap_is_skipped() -> None:
    samples = [(0.0, 5000.0), (10.0, 6250.0), (20.0, 125.0), (40.0, 1375.0), (50.0, 2625.0)]
    assert step_rates(samples, 10.0) == [(10.0, 1000.0), (20.0, 100.0), (50.0, 1000.0)]


def test_percentile_is_nearest_rank() -> None:
    values = list(range(1, 101))
    assert percentile(values, 0.95) == 95
    assert percentile(values, 1.0) == 100
    assert percentile([7.0], 0.95) == 7.0
    assert percentile([], 0.95) == 0.0


def test_summary_counts_hours_above_the_guarantee_in_force_at_each_step() -> None:
    rates = [(float(t), rate) for t, rate in zip(range(300, 3601, 300), [10e6] * 6 + [30e6] * 6, strict=True)]
    guarantee = {t: 20e6 if t <= 1800 else 40e6 for t, _ in rates}  # a schedule window doubles it
    stats = summarize(rates, 300.0, guarantee)
    assert stats.hours_above_guarantee == 0.0
    stats = summarize(rates, 300.0, 20e6)
    assert stats.hours_above_guarantee == pytest.approx(0.5)
    assert stats.average_bps == pytest.approx(20e6)
    assert stats.peak_bps == 30e6 and stats.p95_bps == 30e6
    assert stats.bytes == pytest.approx(20e6 * 3600 / 8)
    assert stats.steps == 12


def test_an_opd_that_buys_20_but_needs_10_is_told_so() -> None:
    rates = [(float(t), 8e6 + (t % 7) * 0.25e6) for t in range(300, 30 * 86400, 300)]  # 8-9.5 Mbit/s
    stats = summarize(rates, 300.0, 20e6)
    advice = recommend(stats, capacity_bps=1e9)
    assert stats.hours_above_guarantee == 0
    assert advice.guaranteed_bps == 12_000_000  # p95 9.5 Mbit/s x 1.2 = 11.4, rounded up
    assert advice.ceiling_bps == 12_000_000


def test_recommendations_round_up_and_stay_within_the_uplink() -> None:
    stats = summarize([(1.0, 900e6), (2.0, 990e6)], 1.0, 100e6)
    advice = recommend(stats, capacity_bps=1e9, headroom=1.2)
    assert advice == recommend(stats, 1e9)
    assert advice.guaranteed_bps == 1_000_000_000 and advice.ceiling_bps == 1_000_000_000
    idle = recommend(summarize([], 300.0, 10e6), capacity_bps=1e9)
    assert idle.guaranteed_bps == 1_000_000 and idle.ceiling_bps == 1_000_000
    assert round_up(1_000_001, 1_000_000) == 2_000_000 and round_up(3e6, 1_000_000) == 3_000_000


def test_cost_split_is_proportional_and_adds_up_to_the_rupiah() -> None:
    shares = split_cost(100, {"A": 1.0, "B": 1.0, "C": 1.0})
    assert sum(shares.values()) == 100 and sorted(shares.values()) == [33, 33, 34]
    assert split_cost(150_000_000, {"SETDA": 3.0, "DINKES": 1.0, "IDLE": 0.0}) == {
        "SETDA": 112_500_000, "DINKES": 37_500_000, "IDLE": 0}
    assert split_cost(1000, {"A": 0.0}) == {"A": 0}


@given(st.integers(min_value=0, max_value=10**12),
       st.dictionaries(st.text(min_size=1, max_size=5), st.floats(min_value=0, max_value=1e15), min_size=1))
def test_cost_split_always_adds_up(total: int, weights: dict[str, float]) -> None:
    shares = split_cost(total, weights)
    assert set(shares) == set(weights)
    assert all(share >= 0 for share in shares.values())
    if sum(weights.values()) > 0:
        assert sum(shares.values()) == total


def test_times_parse_as_unix_iso_and_relative() -> None:
    assert parse_time("1700000000") == 1_700_000_000
    assert parse_time("2026-11-01T00:00:00+07:00") == datetime(2026, 10, 31, 17, tzinfo=UTC).timestamp()
    assert parse_time("2026-11-01T00:00:00") == datetime(2026, 11, 1, tzinfo=UTC).timestamp()
    assert abs(parse_time("now-1d") - (datetime.now(UTC).timestamp() - 86400)) < 5
    with pytest.raises(argparse.ArgumentTypeError, match="not a time"):
        parse_time("last tuesday")


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_an_unreachable_prometheus_is_a_one_line_error(capsys: pytest.CaptureFixture[str], tmp_path) -> None:
    url = f"http://127.0.0.1:{_closed_port()}"
    assert main(["report", "--prometheus", url, "--from", "now-1h", "--out", str(tmp_path)]) == 1
    error = capsys.readouterr().err
    assert error.startswith(f"satupintu report: cannot query Prometheus at {url}") and "Traceback" not in error
    assert not any(tmp_path.iterdir())


def test_bad_arguments_are_refused_before_any_query(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["report", "--prometheus", "http://127.0.0.1:1", "--from", "yesterday"])
    assert exit_info.value.code == 2 and "'yesterday' is not a time" in capsys.readouterr().err
    assert main(["report", "--prometheus", "http://127.0.0.1:1", "--from", "now", "--to", "now-1h"]) == 2
    assert "must be after --from" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["report", "--prometheus", "http://127.0.0.1:1", "--from", "now-1h", "--step", "0"])
    assert "'0' must be at least 1" in capsys.readouterr().err
