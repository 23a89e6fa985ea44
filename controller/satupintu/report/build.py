"""Fetch the period's counters and gauges from Prometheus and turn them into report rows
(the arithmetic is in satupintu.report.stats)."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from satupintu.report.prometheus import PrometheusClient, PrometheusError, Series
from satupintu.report.stats import (
    DEFAULT_HEADROOM,
    DEFAULT_ROUND_BPS,
    Recommendation,
    UsageStats,
    recommend,
    split_cost,
    step_rates,
    summarize,
)

OWNER_LABELS = ("opd", "kind", "direction")
BY_OWNER = "sum by (opd, kind, direction)"


@dataclass(frozen=True, slots=True)
class OwnerRow:
    """One OPD (or Wi-Fi pool) in one direction; rates in policy units (divided by the scale)."""

    code: str
    kind: str  # opd | wifi | unclassified
    direction: str
    guaranteed_bps: float
    ceiling_bps: float
    stats: UsageStats
    recommendation: Recommendation


@dataclass(frozen=True, slots=True)
class CostRow:
    code: str
    kind: str
    bytes: float  # both directions, as carried (not scaled)
    usage_share: float
    cost_by_usage_idr: int
    cost_by_guarantee_idr: int


@dataclass(slots=True)
class Report:
    start: float
    end: float
    step_s: float
    scale: float
    headroom: float
    monthly_cost_idr: int
    prometheus: str
    capacity_bps: dict[str, float] = field(default_factory=dict)  # direction -> policy units
    rows: list[OwnerRow] = field(default_factory=list)
    costs: list[CostRow] = field(default_factory=list)


def _key(series: Series) -> tuple[str, str, str]:
    return tuple(series.labels.get(label, "") for label in OWNER_LABELS)  # type: ignore[return-value]


def _most_common(points: list[tuple[float, float]]) -> float:
    return Counter(value for _, value in points).most_common(1)[0][0] if points else 0.0


def _selector(match: str) -> str:
    return "{" + match + "}" if match else ""


def build_report(client: PrometheusClient, start: float, end: float, step_s: float, *,
                 monthly_cost_idr: int = 0, headroom: float = DEFAULT_HEADROOM, match: str = "",
                 round_bps: int = DEFAULT_ROUND_BPS) -> Report:
    """Query [start, end] at `step_s` and compute every row. Raises PrometheusError when the
    server cannot answer or holds no Satu Pintu data for the period."""
    selector = _selector(match)
    counters = client.query_range(f"{BY_OWNER} (satupintu_opd_bytes_total{selector})", start, end, step_s)
    if not counters:
        raise PrometheusError(f"{client.url} has no satupintu_opd_bytes_total{selector} between "
                              f"{start:.0f} and {end:.0f}: wrong server, selector or period?")
    guarantees = {_key(s): s for s in client.query_range(
        f"{BY_OWNER} (satupintu_opd_guaranteed_bps{selector})", start, end, step_s)}
    ceilings = {_key(s): s for s in client.query_range(
        f"{BY_OWNER} (satupintu_opd_ceiling_bps{selector})", start, end, step_s)}
    capacities = client.query_range(f"max by (direction) (satupintu_uplink_capacity_bps{selector})",
                                    start, end, step_s)
    scales = client.query_range(f"max(satupintu_scale{selector})", start, end, step_s)
    scale = scales[0].points[-1][1] if scales and scales[0].points and scales[0].points[-1][1] > 0 else 1.0
    report = Report(start, end, step_s, scale, headroom, monthly_cost_idr, client.url)
    report.capacity_bps = {s.labels.get("direction", ""): max(v for _, v in s.points) / scale
                           for s in capacities if s.points}
    for series in sorted(counters, key=lambda s: (_key(s)[2], _key(s)[1] != "opd", _key(s)[0])):
        code, kind, direction = _key(series)
        rates = [(t, rate / scale) for t, rate in step_rates(series.points, step_s)]
        guarantee = guarantees.get(_key(series))
        guaranteed_at = {t: value / scale for t, value in guarantee.points} if guarantee else 0.0
        stats = summarize(rates, step_s, guaranteed_at)
        stats = UsageStats(stats.average_bps, stats.p95_bps, stats.peak_bps, stats.hours_above_guarantee,
                           stats.bytes * scale, stats.steps)  # bytes as carried, not scaled up
        ceiling = ceilings.get(_key(series))
        report.rows.append(OwnerRow(
            code, kind, direction,
            guaranteed_bps=_most_common(guarantee.points) / scale if guarantee else 0.0,
            ceiling_bps=_most_common(ceiling.points) / scale if ceiling else 0.0,
            stats=stats,
            recommendation=recommend(stats, report.capacity_bps.get(direction, 0.0), headroom, round_bps)))
    report.costs = _costs(report.rows, monthly_cost_idr)
    return report


def _costs(rows: list[OwnerRow], monthly_cost_idr: int) -> list[CostRow]:
    kinds: dict[str, str] = {}
    used: dict[str, float] = {}
    reserved: dict[str, float] = {}
    for row in rows:
        kinds[row.code] = row.kind
        used[row.code] = used.get(row.code, 0.0) + row.stats.bytes
        reserved[row.code] = reserved.get(row.code, 0.0) + (row.guaranteed_bps if row.kind != "unclassified" else 0)
    by_usage = split_cost(monthly_cost_idr, used)
    by_guarantee = split_cost(monthly_cost_idr, reserved)
    total = sum(used.values())
    return sorted((CostRow(code, kinds[code], used[code], used[code] / total if total else 0.0, by_usage[code],
                           by_guarantee[code]) for code in used), key=lambda row: (-row.bytes, row.code))
