"""The terminal view (rich): header with switches, policy and uplinks; one row per OPD and direction."""

from __future__ import annotations

from rich import box
from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from satupintu.status.rates import OwnerRow, StatusReport, sort_owners

BAR_WIDTH = 24
MIN_BAR_WIDTH = 8
TABLE_WITHOUT_BAR = 66  # columns the table needs besides the bar
NEAR_CEILING = 0.95
ARROWS = {"download": "↓", "upload": "↑"}


def format_bps(bps: float | None, compact: bool = False) -> str:
    """Rates to three significant digits: '12.3 Mbit/s', or '12.3M' in table cells; '-' when unknown."""
    if bps is None:
        return "-"
    for prefix, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if bps >= scale:
            return f"{bps / scale:.3g}{prefix}" if compact else f"{bps / scale:.3g} {prefix}bit/s"
    return f"{bps:.0f}" if compact else f"{bps:.0f} bit/s"


def _percent(fraction: float | None) -> str:
    return "-" if fraction is None else f"{100 * fraction:.0f}%"


def usage_bar(rate_bps: float | None, guaranteed_bps: float | None, ceiling_bps: float | None,
              width: int = BAR_WIDTH) -> Text:
    """Rate as a bar scaled to the ceiling; '|' marks the guarantee. Green within the
    guarantee, yellow while borrowing above it, red near the ceiling."""
    if rate_bps is None or not ceiling_bps:
        return Text("-")
    fraction = min(1.0, rate_bps / ceiling_bps)
    filled = round(fraction * width)
    mark = None if not guaranteed_bps else min(width - 1, round(guaranteed_bps / ceiling_bps * width))
    if fraction >= NEAR_CEILING:
        style = "red"
    elif guaranteed_bps and rate_bps > guaranteed_bps:
        style = "yellow"
    else:
        style = "green"
    bar = Text()
    for index in range(width):
        char = "|" if index == mark else ("█" if index < filled else "·")
        bar.append(char, style=style if index < filled else "dim")
    return bar


def _header(report: StatusReport, metrics_url: str, sort: str, bar_width: int) -> Table:
    latest = report.latest
    policy = latest.policy
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold")
    grid.add_column()
    switches = Text()
    for name, switch in sorted(latest.switches.items()):
        switches.append(f"{name} ", style="bold")
        switches.append("up" if switch.connected else "DOWN", style="green" if switch.connected else "bold red")
        switches.append(f" ({switch.flows} flows)  ")
    grid.add_row("switches", switches if latest.switches else Text("none reported", style="yellow"))
    generation = "-" if policy.generation is None else str(policy.generation)
    grid.add_row("policy", f"generation {generation}, sha256 {policy.sha256[:12] or '-'}, window "
                           f"{policy.window or '-'}, scale {policy.scale if policy.scale is not None else '-'}"
                           + (f", {policy.reloads_failed} failed reloads" if policy.reloads_failed else ""))
    for row in report.uplinks:
        line = usage_bar(row.rate_bps, None, row.capacity_bps, bar_width)
        line.append(f"  {format_bps(row.rate_bps)} of {format_bps(row.capacity_bps)} "
                    f"({_percent(row.utilisation)}) on {row.port}, {row.drops or 0:.0f} drops")
        grid.add_row(f"uplink {ARROWS.get(row.direction, row.direction)}", line)
    grid.add_row("source", f"{metrics_url}, rates in bit/s over {report.interval_s:.1f} s, sorted by {sort}")
    return grid


def owners_table(rows: list[OwnerRow], bar_width: int = BAR_WIDTH) -> Table:
    table = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False, padding=(0, 1))
    table.add_column("OPD", no_wrap=True, max_width=16)
    table.add_column("dir", no_wrap=True)
    for title in ("rate", "guar", "ceil"):
        table.add_column(title, justify="right", no_wrap=True)
    table.add_column("use (| guar)", no_wrap=True)
    table.add_column("%guar", justify="right", no_wrap=True)
    table.add_column("%ceil", justify="right", no_wrap=True)
    table.add_column("drops", justify="right", no_wrap=True)
    for row in rows:
        code = row.code if row.kind == "opd" else f"{row.code} ({row.kind})"
        drops = "-" if row.drops is None else f"{row.drops:.0f}"
        table.add_row(code, ARROWS.get(row.direction, row.direction), format_bps(row.rate_bps, True),
                      format_bps(row.guaranteed_bps, True), format_bps(row.ceiling_bps, True),
                      usage_bar(row.rate_bps, row.guaranteed_bps, row.ceiling_bps, bar_width),
                      _percent(row.guarantee_utilisation), _percent(row.ceiling_utilisation),
                      Text(drops, style="red" if row.drops else ""))
    return table


def render(report: StatusReport, metrics_url: str, sort: str, directions: tuple[str, ...],
           limit: int | None = None, keys_hint: bool = False, width: int = 132) -> RenderableType:
    """The whole view; the bars shrink to fit `width` columns (an 80-column terminal too)."""
    rows = [row for row in sort_owners(report.owners, sort) if row.direction in directions]
    shown = rows if limit is None else rows[:limit]
    bar_width = max(MIN_BAR_WIDTH, min(BAR_WIDTH, width - TABLE_WITHOUT_BAR))
    parts: list[RenderableType] = [_header(report, metrics_url, sort, bar_width), owners_table(shown, bar_width)]
    if len(shown) < len(rows):
        parts.append(Text(f"... {len(rows) - len(shown)} more rows (--top, or a taller terminal)", style="dim"))
    if keys_hint:
        parts.append(Text("sort: [r]ate [u]tilisation [n]ame [d]rops   [q]uit", style="dim"))
    return Group(*parts)
