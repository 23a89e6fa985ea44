"""The report as files: Markdown for people, CSV for spreadsheets, PNG charts (matplotlib, Agg)."""

from __future__ import annotations

import csv
from datetime import UTC, datetime
from pathlib import Path

from satupintu.policy.units import format_rate
from satupintu.report.build import CostRow, OwnerRow, Report
from satupintu.report.stats import __doc__ as METHOD

USAGE_COLUMNS = ("opd", "kind", "direction", "guaranteed_bps", "ceiling_bps", "average_bps", "p95_bps", "peak_bps",
                 "hours_above_guarantee", "recommended_guaranteed_bps", "recommended_ceiling_bps", "bytes")
COST_COLUMNS = ("opd", "kind", "bytes", "usage_share", "cost_by_usage_idr", "cost_by_guarantee_idr")


def method_text() -> str:
    """The method section of satupintu.report.stats' docstring (shared with `report --help`)."""
    return (METHOD or "").split("Method (also shown by `satupintu report --help`):")[-1].strip()


def _when(unix: float) -> str:
    return datetime.fromtimestamp(unix, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _rate(bps: float) -> str:
    return format_rate(bps) if bps >= 1 else "0"


def _idr(amount: int) -> str:
    return "Rp " + f"{amount:,}".replace(",", ".")


def usage_rows(rows: list[OwnerRow]) -> list[dict[str, object]]:
    return [{"opd": row.code, "kind": row.kind, "direction": row.direction,
             "guaranteed_bps": round(row.guaranteed_bps), "ceiling_bps": round(row.ceiling_bps),
             "average_bps": round(row.stats.average_bps), "p95_bps": round(row.stats.p95_bps),
             "peak_bps": round(row.stats.peak_bps), "hours_above_guarantee": round(row.stats.hours_above_guarantee, 4),
             "recommended_guaranteed_bps": row.recommendation.guaranteed_bps,
             "recommended_ceiling_bps": row.recommendation.ceiling_bps, "bytes": round(row.stats.bytes)}
            for row in rows]


def cost_rows(costs: list[CostRow]) -> list[dict[str, object]]:
    return [{"opd": row.code, "kind": row.kind, "bytes": round(row.bytes), "usage_share": round(row.usage_share, 6),
             "cost_by_usage_idr": row.cost_by_usage_idr, "cost_by_guarantee_idr": row.cost_by_guarantee_idr}
            for row in costs]


def write_csv(path: Path, columns: tuple[str, ...], rows: list[dict[str, object]]) -> None:
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)


def markdown(report: Report, charts: list[Path]) -> str:
    lines = [
        "# Satu Pintu usage report", "",
        f"Period {_when(report.start)} to {_when(report.end)}, step {report.step_s:g} s, "
        f"source {report.prometheus}.",
    ]
    if report.scale != 1:
        lines.append(f"Measured at rate scale {report.scale:g} (emulation): rates are shown divided by it, in "
                     "policy units.")
    lines += ["", "Rates are L2 rates through each OPD's HTB class. Recommended guarantee = p95 x "
              f"{report.headroom:g}, recommended ceiling = peak x {report.headroom:g} (see Method)."]
    for direction in sorted({row.direction for row in report.rows}):
        capacity = report.capacity_bps.get(direction, 0.0)
        lines += ["", f"## {direction.capitalize()} (uplink {_rate(capacity)})", "",
                  "| OPD | guarantee | ceiling | average | p95 | peak | hours above guarantee "
                  "| recommended guarantee | recommended ceiling |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for row in report.rows:
            if row.direction != direction:
                continue
            name = row.code if row.kind == "opd" else f"{row.code} ({row.kind})"
            lines.append(f"| {name} | {_rate(row.guaranteed_bps)} | {_rate(row.ceiling_bps)} "
                         f"| {_rate(row.stats.average_bps)} | {_rate(row.stats.p95_bps)} "
                         f"| {_rate(row.stats.peak_bps)} | {row.stats.hours_above_guarantee:.2f} "
                         f"| {_rate(row.recommendation.guaranteed_bps)} | {_rate(row.recommendation.ceiling_bps)} |")
    lines += ["", f"## Cost shares of {_idr(report.monthly_cost_idr)} per month", "",
              "| OPD | data carried | share | cost by usage | cost by guarantee |", "|---|---:|---:|---:|---:|"]
    for cost in report.costs:
        lines.append(f"| {cost.code} | {cost.bytes / 1e6:,.1f} MB | {cost.usage_share:.2%} "
                     f"| {_idr(cost.cost_by_usage_idr)} | {_idr(cost.cost_by_guarantee_idr)} |")
    if charts:
        lines += ["", "## Charts", ""] + [f"![{chart.stem}]({chart.name})" for chart in charts]
    lines += ["", "## Method", "", method_text()]
    return "\n".join(lines) + "\n"


def chart(report: Report, direction: str, path: Path) -> Path:
    """Horizontal bars per owner: average and p95 use, peak as a dot, guarantee and ceiling as ticks."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot

    rows = [row for row in report.rows if row.direction == direction and row.kind != "unclassified"]
    rows.sort(key=lambda row: row.guaranteed_bps)
    positions = list(range(len(rows)))
    megabits = 1e6
    figure, axes = pyplot.subplots(figsize=(10, max(3.0, 0.28 * len(rows) + 1.5)))
    axes.barh(positions, [row.stats.p95_bps / megabits for row in rows], color="#9ecae1", label="p95")
    axes.barh(positions, [row.stats.average_bps / megabits for row in rows], height=0.45, color="#3182bd",
              label="average")
    axes.scatter([row.stats.peak_bps / megabits for row in rows], positions, color="black", s=10, label="peak",
                 zorder=3)
    axes.scatter([row.guaranteed_bps / megabits for row in rows], positions, marker="|", color="#31a354", s=160,
                 label="guarantee", zorder=4)
    axes.scatter([row.ceiling_bps / megabits for row in rows], positions, marker="|", color="#de2d26", s=160,
                 label="ceiling", zorder=4)
    axes.set_yticks(positions, [row.code for row in rows], fontsize=7)
    axes.set_xlabel("Mbit/s" + (f" (policy units; measured at scale {report.scale:g})" if report.scale != 1 else ""))
    axes.set_title(f"{direction.capitalize()}: use vs allocation, {_when(report.start)} to {_when(report.end)}",
                   fontsize=10)
    axes.legend(loc="lower right", fontsize=8)
    axes.grid(axis="x", alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    pyplot.close(figure)
    return path


def write_report(report: Report, out_dir: Path, charts: bool = True) -> dict[str, Path]:
    """Write report.md, usage.csv, costs.csv and usage-<direction>.png into `out_dir`."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written = {"usage_csv": out_dir / "usage.csv", "costs_csv": out_dir / "costs.csv"}
    write_csv(written["usage_csv"], USAGE_COLUMNS, usage_rows(report.rows))
    write_csv(written["costs_csv"], COST_COLUMNS, cost_rows(report.costs))
    pngs = []
    if charts:
        for direction in sorted({row.direction for row in report.rows}):
            pngs.append(chart(report, direction, out_dir / f"usage-{direction}.png"))
            written[f"chart_{direction}"] = pngs[-1]
    written["markdown"] = out_dir / "report.md"
    written["markdown"].write_text(markdown(report, pngs))
    return written
