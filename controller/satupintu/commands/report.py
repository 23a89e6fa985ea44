"""`satupintu report`: per-OPD usage, right-sizing and cost shares from Prometheus history."""

from __future__ import annotations

import argparse
import re
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

DEFAULT_STEP_S = 300.0
_RELATIVE = re.compile(r"^now(?:-(\d+(?:\.\d+)?)([smhd]))?$")
_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_time(text: str) -> float:
    """Unix seconds, ISO 8601 (2026-11-01T00:00:00+07:00; no zone = UTC), `now` or `now-30d`."""
    value = text.strip()
    match = _RELATIVE.match(value)
    if match:
        amount, unit = match.groups()
        return time.time() - (float(amount) * _SECONDS[unit] if amount else 0.0)
    try:
        return float(value)
    except ValueError:
        pass
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a time: use unix seconds, ISO 8601 (2026-11-01T00:00:00+07:00) or now-30d") from None
    return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).timestamp()


def _positive(kind: type, minimum: float):
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"{text!r} must be at least {minimum:g}")
        return value
    return parse


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    from satupintu.report.render import method_text

    report = subparsers.add_parser(
        "report", help="usage per OPD (average, p95, peak), recommended guarantee/ceiling and cost shares",
        description="Reads a period of Satu Pintu metrics from Prometheus (/api/v1/query_range) and writes "
                    "report.md, usage.csv, costs.csv and usage-<direction>.png.\n\nMethod:\n\n" + method_text(),
        formatter_class=argparse.RawDescriptionHelpFormatter)
    report.add_argument("--prometheus", required=True, metavar="URL", help="Prometheus server, e.g. http://127.0.0.1:9090")
    report.add_argument("--from", dest="start", required=True, type=parse_time, metavar="TIME",
                        help="start: unix seconds, ISO 8601 or now-30d")
    report.add_argument("--to", dest="end", default="now", type=parse_time, metavar="TIME", help="end (default now)")
    report.add_argument("--step", type=_positive(float, 1.0), default=DEFAULT_STEP_S, metavar="SECONDS",
                        help=f"rate step: p95 is over rates averaged over this (default {DEFAULT_STEP_S:g}; "
                             "at least the scrape interval)")
    report.add_argument("--headroom", type=_positive(float, 1.0), default=1.2,
                        help="recommendation = p95 (guarantee) or peak (ceiling) times this (default 1.2)")
    report.add_argument("--monthly-cost-idr", type=_positive(int, 0), default=0, metavar="RUPIAH",
                        help="monthly uplink cost to split among OPDs (default 0)")
    report.add_argument("--match", default="", metavar="LABELS",
                        help="extra label matchers for every query, e.g. 'job=\"satupintu\"'")
    report.add_argument("--out", default="satupintu-report", metavar="DIR", help="output directory")
    report.add_argument("--no-charts", action="store_true", help="skip the PNG charts")
    report.set_defaults(handler=cmd_report)


def cmd_report(args: argparse.Namespace) -> int:
    from satupintu.report.build import build_report
    from satupintu.report.prometheus import PrometheusClient, PrometheusError
    from satupintu.report.render import write_report

    if args.end <= args.start:
        print(f"satupintu report: --to ({args.end:.0f}) must be after --from ({args.start:.0f})", file=sys.stderr)
        return 2
    try:
        report = build_report(PrometheusClient(args.prometheus), args.start, args.end, args.step,
                              monthly_cost_idr=args.monthly_cost_idr, headroom=args.headroom, match=args.match)
    except PrometheusError as error:
        print(f"satupintu report: {error}", file=sys.stderr)
        return 1
    written = write_report(report, Path(args.out), charts=not args.no_charts)
    for path in written.values():
        print(path)
    return 0
