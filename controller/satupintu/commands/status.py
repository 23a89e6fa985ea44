"""`satupintu status`: per-OPD rates against guarantees and ceilings, from the daemon's /metrics."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import select
import sys
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING

from satupintu.status.document import JSON_DOC, report_json
from satupintu.status.exposition import Snapshot
from satupintu.status.fetch import DEFAULT_METRICS_URL, ScrapeError, scrape
from satupintu.status.rates import DIRECTIONS, SORT_KEYS, StatusReport, compute_report

if TYPE_CHECKING:
    from rich.console import Console, RenderableType

EXIT_OK, EXIT_UNREACHABLE, EXIT_USAGE = 0, 1, 2
SORT_BY_KEY = {"r": "rate", "u": "util", "n": "name", "d": "drops"}
PIPE_WIDTH = 132
HEADER_LINES = 10  # header, table head and hints: what is left of the terminal is for rows


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    status = subparsers.add_parser(
        "status", help="live per-OPD rate, guarantee, ceiling and drops, read from the daemon's /metrics",
        description="Reads the daemon's Prometheus endpoint twice, --interval apart, and shows each OPD's "
                    "rate (L2 bit/s, as HTB counts it) against its guarantee and ceiling. Needs no privileges.",
        epilog=JSON_DOC, formatter_class=argparse.RawDescriptionHelpFormatter)
    status.add_argument("--metrics-url", default=DEFAULT_METRICS_URL, metavar="URL",
                        help=f"the daemon's exporter (default {DEFAULT_METRICS_URL})")
    status.add_argument("--interval", type=float, default=2.0, metavar="SECONDS",
                        help="seconds between the two scrapes a rate is computed from (default 2)")
    status.add_argument("--sort", choices=SORT_KEYS, default="rate",
                        help="row order: rate, util (of ceiling), drops (busiest first) or name (default rate)")
    status.add_argument("--direction", choices=("both", *DIRECTIONS), default="both",
                        help="rows of one direction only (default both)")
    status.add_argument("--top", type=int, default=0, metavar="N",
                        help="show the first N rows (default: all with --once, what fits the terminal live)")
    status.add_argument("--once", action="store_true", help="print one view after one interval and exit")
    status.add_argument("--json", action="store_true",
                        help="print one JSON document (implies --once; keys described below)")
    status.add_argument("--timeout", type=float, default=5.0, metavar="SECONDS",
                        help="HTTP timeout of one scrape (default 5)")
    status.set_defaults(handler=cmd_status)


def _fail(message: str, code: int) -> int:
    print(f"satupintu status: {message}", file=sys.stderr)
    return code


def cmd_status(args: argparse.Namespace) -> int:
    if not args.interval > 0 or not args.timeout > 0:
        return _fail("--interval and --timeout must be greater than 0 seconds", EXIT_USAGE)
    if args.top < 0:
        return _fail("--top must be 0 (all rows) or more", EXIT_USAGE)
    directions = DIRECTIONS if args.direction == "both" else (args.direction,)
    try:
        before = scrape(args.metrics_url, args.timeout)
        if args.once or args.json:
            time.sleep(args.interval)
            report = compute_report(before, scrape(args.metrics_url, args.timeout))
            return _print_once(args, report, directions)
    except ScrapeError as error:
        return _fail(str(error), EXIT_UNREACHABLE)
    return _live(args, before, directions)


def _print_once(args: argparse.Namespace, report: StatusReport, directions: tuple[str, ...]) -> int:
    if args.json:
        document = report_json(report, args.metrics_url, args.sort)
        document["opds"] = [row for row in document["opds"] if row["direction"] in directions]
        if args.top:
            document["opds"] = document["opds"][:args.top]
        print(json.dumps(document, indent=1))
        return EXIT_OK
    from rich.console import Console

    from satupintu.status.view import render

    console = Console() if sys.stdout.isatty() else Console(width=PIPE_WIDTH)  # a pipe gets every column
    console.print(render(report, args.metrics_url, args.sort, directions, args.top or None, width=console.width))
    return EXIT_OK


def _live(args: argparse.Namespace, before: Snapshot, directions: tuple[str, ...]) -> int:
    from rich.console import Console
    from rich.live import Live
    from rich.text import Text

    console = Console()
    sort = args.sort
    with _keys() as read_key, Live(Text(f"first rates in {args.interval:g} s ..."), console=console,
                                     auto_refresh=False, screen=console.is_terminal) as live:
        report: StatusReport | None = None
        while True:
            deadline = time.monotonic() + args.interval
            while (left := deadline - time.monotonic()) > 0:
                key = read_key(left)
                if key == "q":
                    return EXIT_OK
                if key in SORT_BY_KEY and report is not None:
                    sort = SORT_BY_KEY[key]
                    live.update(_view(report, args, sort, directions, console, read_key), refresh=True)
            try:
                after = scrape(args.metrics_url, args.timeout)
            except ScrapeError as error:
                live.update(Text(f"scrape failed, retrying every {args.interval:g} s: {error}", style="bold red"),
                            refresh=True)
                continue
            report = compute_report(before, after)
            before = after
            live.update(_view(report, args, sort, directions, console, read_key), refresh=True)


def _view(report: StatusReport, args: argparse.Namespace, sort: str, directions: tuple[str, ...],
          console: Console, read_key: _KeyReader) -> RenderableType:
    from satupintu.status.view import render

    limit = args.top or max(5, console.height - HEADER_LINES - len(report.uplinks))
    return render(report, args.metrics_url, sort, directions, limit, keys_hint=read_key.interactive,
                  width=console.width)


class _KeyReader:
    """Waits up to a timeout for one key press; without a terminal it only waits."""

    def __init__(self, fd: int | None) -> None:
        self.fd = fd
        self.interactive = fd is not None

    def __call__(self, timeout_s: float) -> str | None:
        if self.fd is None:
            time.sleep(timeout_s)
            return None
        ready, _, _ = select.select([self.fd], [], [], timeout_s)
        return os.read(self.fd, 1).decode(errors="ignore").lower() if ready else None


@contextlib.contextmanager
def _keys() -> Iterator[_KeyReader]:
    if not sys.stdin.isatty():
        yield _KeyReader(None)
        return
    import termios
    import tty

    fd = sys.stdin.fileno()
    saved = termios.tcgetattr(fd)
    try:
        tty.setcbreak(fd)
        yield _KeyReader(fd)
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)
