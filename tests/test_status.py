"""`satupintu status` without a daemon: exposition parsing, rates, sorting, the JSON document,
the rich view and the error for an unreachable endpoint (milliseconds, no privileges)."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from rich.console import Console

from satupintu.status.document import report_json
from satupintu.status.exposition import ExpositionError, parse_snapshot
from satupintu.status.fetch import ScrapeError, scrape
from satupintu.status.rates import compute_report, counter_increase, sort_owners
from satupintu.status.view import format_bps, render, usage_bar


def exposition(owners: dict[tuple[str, str, str], tuple[float, float, float, float]], uplink_bytes: float,
               generation: int = 3, connected: int = 1) -> str:
    """Exporter-shaped text: owners map (code, kind, direction) -> (bytes, drops, guaranteed, ceiling)."""
    lines = ["# HELP satupintu_opd_bytes_total Bytes.", "# TYPE satupintu_opd_bytes_total counter"]
    for (code, kind, direction), (nbytes, _, _, _) in owners.items():
        lines.append(f'satupintu_opd_bytes_total{{opd="{code}",kind="{kind}",direction="{direction}"}} {nbytes}')
    lines += ["# HELP satupintu_opd_drops_total Drops.", "# TYPE satupintu_opd_drops_total counter"]
    for (code, kind, direction), (_, drops, _, _) in owners.items():
        lines.append(f'satupintu_opd_drops_total{{opd="{code}",kind="{kind}",direction="{direction}"}} {drops}')
    for metric, index in (("satupintu_opd_guaranteed_bps", 2), ("satupintu_opd_ceiling_bps", 3)):
        lines += [f"# HELP {metric} Rate.", f"# TYPE {metric} gauge"]
        for (code, kind, direction), values in owners.items():
            lines.append(f'{metric}{{opd="{code}",kind="{kind}",direction="{direction}"}} {values[index]}')
    lines += [
        "# HELP satupintu_uplink_bytes_total Bytes.", "# TYPE satupintu_uplink_bytes_total counter",
        f'satupintu_uplink_bytes_total{{direction="download",port="gw-eth1"}} {uplink_bytes}',
        "# HELP satupintu_uplink_capacity_bps Capacity.", "# TYPE satupintu_uplink_capacity_bps gauge",
        'satupintu_uplink_capacity_bps{direction="download",port="gw-eth1"} 1e+06',
        "# HELP satupintu_switch_connected Up.", "# TYPE satupintu_switch_connected gauge",
        f'satupintu_switch_connected{{switch="gw"}} {connected}',
        "# HELP satupintu_switch_flows Flows.", "# TYPE satupintu_switch_flows gauge",
        'satupintu_switch_flows{switch="gw"} 42.0',
        "# HELP satupintu_policy_generation Generation.", "# TYPE satupintu_policy_generation gauge",
        f"satupintu_policy_generation {generation}",
        "# HELP satupintu_policy_info Policy.", "# TYPE satupintu_policy_info gauge",
        'satupintu_policy_info{sha256="abcdef0123456789",file="/etc/p.yaml",window="office-hours"} 1.0',
        "# HELP satupintu_policy_reloads_total Reloads.", "# TYPE satupintu_policy_reloads_total counter",
        'satupintu_policy_reloads_total{result="ok"} 3.0', 'satupintu_policy_reloads_total{result="failed"} 1.0',
        "# HELP satupintu_scale Scale.", "# TYPE satupintu_scale gauge", "satupintu_scale 0.01",
    ]
    return "\n".join(lines) + "\n"


BEFORE = {("DINKES", "opd", "download"): (1_000_000, 5, 300_000, 800_000),
          ("DINKES", "opd", "upload"): (0, 0, 150_000, 400_000),
          ("WIFI", "wifi", "download"): (10_000, 0, 20_000, 1_000_000)}
AFTER = {("DINKES", "opd", "download"): (1_000_000 + 250_000, 9, 300_000, 800_000),  # 1 Mbit over 2 s
         ("DINKES", "opd", "upload"): (0, 0, 150_000, 400_000),
         ("WIFI", "wifi", "download"): (10_000 + 25_000, 0, 20_000, 1_000_000),  # 100 kbit/s
         ("BAPPEDA", "opd", "download"): (777, 0, 200_000, 600_000)}  # new: no rate yet


def report():
    return compute_report(parse_snapshot(exposition(BEFORE, 5_000), 10.0),
                          parse_snapshot(exposition(AFTER, 5_000 + 300_000, generation=4), 12.0))


def test_snapshot_keeps_the_series_the_view_needs() -> None:
    snapshot = parse_snapshot(exposition(BEFORE, 5_000), 1.0)
    dinkes = snapshot.owners[("DINKES", "opd", "download")]
    assert (dinkes.bytes, dinkes.drops, dinkes.guaranteed_bps, dinkes.ceiling_bps) == (1e6, 5, 3e5, 8e5)
    assert snapshot.policy.generation == 3 and snapshot.policy.window == "office-hours"
    assert snapshot.policy.sha256 == "abcdef0123456789" and snapshot.policy.scale == 0.01
    assert (snapshot.policy.reloads_ok, snapshot.policy.reloads_failed) == (3, 1)
    assert snapshot.switches["gw"].connected and snapshot.switches["gw"].flows == 42
    assert snapshot.uplinks[("download", "gw-eth1")].capacity_bps == 1e6


def test_rates_utilisation_and_drops_come_from_the_counter_increase() -> None:
    rows = {(row.code, row.direction): row for row in report().owners}
    dinkes = rows[("DINKES", "download")]
    assert dinkes.rate_bps == pytest.approx(1e6)
    assert dinkes.guarantee_utilisation == pytest.approx(1e6 / 3e5)
    assert dinkes.ceiling_utilisation == pytest.approx(1e6 / 8e5)
    assert (dinkes.drops, dinkes.drops_total) == (4, 9)
    assert rows[("DINKES", "upload")].rate_bps == 0
    assert rows[("WIFI", "download")].rate_bps == pytest.approx(1e5)
    new = rows[("BAPPEDA", "download")]
    assert new.rate_bps is None and new.drops is None and new.ceiling_utilisation is None
    uplink = report().uplinks[0]
    assert uplink.rate_bps == pytest.approx(1.2e6) and uplink.utilisation == pytest.approx(1.2)


def test_a_counter_that_went_down_was_reset() -> None:
    assert counter_increase(1000, 200) == 200
    assert counter_increase(200, 1000) == 800
    assert counter_increase(None, 5) is None


@pytest.mark.parametrize(("key", "expected"), [
    ("rate", ["DINKES/download", "WIFI/download", "DINKES/upload", "BAPPEDA/download"]),
    ("util", ["DINKES/download", "WIFI/download", "DINKES/upload", "BAPPEDA/download"]),
    ("name", ["BAPPEDA/download", "DINKES/download", "DINKES/upload", "WIFI/download"]),
    ("drops", ["DINKES/download", "DINKES/upload", "WIFI/download", "BAPPEDA/download"]),
])
def test_sort_orders(key: str, expected: list[str]) -> None:
    assert [f"{row.code}/{row.direction}" for row in sort_owners(report().owners, key)] == expected


def test_sort_by_utilisation_is_not_sort_by_rate() -> None:
    owners = {("BIG", "opd", "download"): (0, 0, 1e6, 1e7), ("SMALL", "opd", "download"): (0, 0, 1e5, 2e5)}
    later = {("BIG", "opd", "download"): (500_000, 0, 1e6, 1e7), ("SMALL", "opd", "download"): (50_000, 0, 1e5, 2e5)}
    rows = compute_report(parse_snapshot(exposition(owners, 0), 0.0), parse_snapshot(exposition(later, 0), 1.0))
    assert [row.code for row in sort_owners(rows.owners, "rate")] == ["BIG", "SMALL"]
    assert [row.code for row in sort_owners(rows.owners, "util")] == ["SMALL", "BIG"]  # 2.0 of ceiling vs 0.4


def test_unknown_sort_key_is_refused() -> None:
    with pytest.raises(ValueError, match="choose one of rate, util, name, drops"):
        sort_owners([], "size")


def test_json_document_has_stable_keys_and_is_serialisable() -> None:
    document = json.loads(json.dumps(report_json(report(), "http://x/metrics", "name")))
    assert list(document) == ["version", "metrics_url", "interval_s", "sort", "policy", "switches", "uplinks", "opds"]
    assert document["interval_s"] == 2.0 and document["policy"]["generation"] == 4
    assert set(document["opds"][0]) == {"code", "kind", "direction", "rate_bps", "guaranteed_bps", "ceiling_bps",
                                        "guarantee_utilisation", "ceiling_utilisation", "drops", "drops_total"}
    assert [row["code"] for row in document["opds"]] == ["BAPPEDA", "DINKES", "DINKES", "WIFI"]
    assert document["switches"] == [{"name": "gw", "connected": True, "flows": 42, "meters": 0,
                                     "openflow_errors": 0}]


def test_garbage_is_an_exposition_error() -> None:
    with pytest.raises(ExpositionError):
        parse_snapshot('satupintu_opd_bytes_total{opd="A" 1\n', 0.0)


def test_view_shows_every_row_header_and_a_down_switch() -> None:
    later = compute_report(parse_snapshot(exposition(BEFORE, 0), 0.0),
                           parse_snapshot(exposition(AFTER, 0, connected=0), 2.0))
    console = Console(width=160, record=True, color_system=None)
    console.print(render(later, "http://x/metrics", "rate", ("download", "upload")))
    text = console.export_text()
    for expected in ("DINKES", "WIFI (wifi)", "BAPPEDA", " 1M ", " 800k ", "125%", "DOWN",
                     "generation 3", "office-hours", "sorted by rate"):
        assert expected in text, expected
    console = Console(width=160, record=True, color_system=None)
    console.print(render(later, "http://x/metrics", "rate", ("upload",), limit=1))
    assert "WIFI" not in console.export_text()


def test_usage_bar_marks_the_guarantee_and_fills_to_the_rate() -> None:
    bar = usage_bar(400_000, 200_000, 800_000, width=8)
    assert bar.plain == "██|█····"
    assert usage_bar(None, 1, 2).plain == "-"
    assert format_bps(12_345_678) == "12.3 Mbit/s" and format_bps(999) == "999 bit/s" and format_bps(None) == "-"
    assert format_bps(12_345_678, compact=True) == "12.3M" and format_bps(780_000, compact=True) == "780k"


class _Handler(BaseHTTPRequestHandler):
    body = b""

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.end_headers()
        self.wfile.write(self.body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def plain_http_server() -> Iterator[tuple[str, type[_Handler]]]:
    handler = type("Handler", (_Handler,), {})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/metrics", handler
    finally:
        server.shutdown()
        server.server_close()


def test_an_endpoint_that_is_not_the_exporter_is_named(plain_http_server) -> None:
    url, handler = plain_http_server
    handler.body = b"# TYPE node_load1 gauge\nnode_load1 0.5\n"
    with pytest.raises(ScrapeError, match="no satupintu_"):
        scrape(url)
    handler.body = exposition(BEFORE, 0).encode()
    assert scrape(url).policy.generation == 3


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_unreachable_endpoint_is_a_clear_error_without_traceback() -> None:
    url = f"http://127.0.0.1:{_free_port()}/metrics"
    result = subprocess.run([sys.executable, "-m", "satupintu.cli", "status", "--once", "--json", "--interval",
                             "0.1", "--metrics-url", url], capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr.startswith(f"satupintu status: cannot reach {url}: ") and "Traceback" not in result.stderr


def test_once_json_against_a_live_endpoint(plain_http_server) -> None:
    url, handler = plain_http_server
    handler.body = exposition(BEFORE, 0).encode()
    result = subprocess.run([sys.executable, "-m", "satupintu.cli", "status", "--once", "--json", "--interval",
                             "0.2", "--metrics-url", url, "--direction", "upload"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    document = json.loads(result.stdout)
    assert [row["direction"] for row in document["opds"]] == ["upload"]
    assert document["opds"][0]["rate_bps"] == 0  # counters did not move
    assert 0.2 <= document["interval_s"] < 5
