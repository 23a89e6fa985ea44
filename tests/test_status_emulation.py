"""Issue 4: `satupintu status --once --json` against the 50-OPD emulation (jateng-50 on star-50,
scale 1/100) while iperf3 loads a few OPDs: its rates agree with iperf3, idle OPDs read ~0,
and guarantees/ceilings are the policy's times the scale."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import emulation_process
from satupintu.emulation.traffic import FlowResult, Host, IperfServers, collect, start_client
from satupintu.policy.load import load_policy
from satupintu.policy.schedule import resolve_allocations

pytestmark = pytest.mark.emulation

REPO = Path(__file__).resolve().parents[1]
POLICY = REPO / "policies" / "jateng-50.yaml"
TOPOLOGY = REPO / "topologies" / "star-50.yaml"
SWITCH_PREFIX = "q"
OPENFLOW_PORT = 6812
METRICS = "127.0.0.1:9812"
FLOW_SECONDS = 12  # plus iperf3's 2 s omitted ramp-up
STATUS_AFTER_S = 4.0  # flows are at their steady rate by then
STATUS_INTERVAL_S = 4.0
# HTB counts L2 bytes; iperf3 reports TCP goodput: 1448 payload bytes per 1514-byte frame.
L2_PER_GOODPUT = 1514 / 1448


@pytest.fixture(scope="module")
def emulation(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    with emulation_process(tmp_path_factory.mktemp("status-emulation"), "--policy", str(POLICY), "--topology",
                           str(TOPOLOGY), "--switch-prefix", SWITCH_PREFIX, "--openflow-port", str(OPENFLOW_PORT),
                           "--metrics-listen", METRICS) as ready:
        yield ready


def _status(url: str, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "satupintu.cli", "status", "--metrics-url", url, "--once", *extra],
                          capture_output=True, text=True, timeout=60)


def test_status_rates_match_iperf3_and_configured_rates_match_the_policy(emulation: dict) -> None:
    loaded = load_policy(POLICY)
    policy, scale = loaded.policy, emulation["scale"]
    by_code = {opd.code: opd for opd in policy.opds}
    tiers: dict[int, list] = {}
    for opd in policy.opds:
        tiers.setdefault(opd.download.ceiling, []).append(opd)
    largest, middle, smallest = (tiers[ceiling][0] for ceiling in sorted(tiers, reverse=True)[:2] + [min(tiers)])
    uploader = tiers[sorted(tiers, reverse=True)[1]][1]
    flows = [(largest, True), (middle, True), (smallest, True), (uploader, False)]  # sum of ceilings < backbone
    inet = Host.from_ready(emulation, "inet")
    with IperfServers(inet) as servers:
        ports = servers.start(len(flows))
        processes = [start_client(Host.from_ready(emulation, f"opd{opd.id}"), inet, port, FLOW_SECONDS,
                                  download=download) for (opd, download), port in zip(flows, ports, strict=True)]
        time.sleep(STATUS_AFTER_S)
        as_json = _status(emulation["metrics_url"], "--json", "--interval", str(STATUS_INTERVAL_S))
        view = _status(emulation["metrics_url"], "--interval", "1", "--top", "6", "--direction", "download")
        results: list[FlowResult] = [
            collect(process, Host.from_ready(emulation, f"opd{opd.id}"), download, FLOW_SECONDS + 30)
            for process, (opd, download) in zip(processes, flows, strict=True)]
    assert as_json.returncode == 0, as_json.stderr
    document = json.loads(as_json.stdout)
    rows = {(row["code"], row["direction"]): row for row in document["opds"]}

    # Rates of the loaded OPDs: status (L2, over its interval) vs iperf3 (goodput, whole run).
    compared = []
    for (opd, download), result in zip(flows, results, strict=True):
        assert not result.error, (opd.code, result.error)
        row = rows[(opd.code, "download" if download else "upload")]
        expected_l2 = result.goodput_bps * L2_PER_GOODPUT
        compared.append(f"{opd.code} {'down' if download else 'up'}: status {row['rate_bps'] / 1e6:.3f} Mbit/s, "
                        f"iperf3 {result.goodput_bps / 1e6:.3f} Mbit/s goodput ({row['rate_bps'] / expected_l2:.3f})")
        assert row["rate_bps"] == pytest.approx(expected_l2, rel=0.05), compared[-1]
        assert row["ceiling_utilisation"] == pytest.approx(row["rate_bps"] / row["ceiling_bps"])
    print("\n".join(compared))

    # Idle OPDs: no traffic in either direction (the loaded OPDs' ACKs flow the other way).
    busy = {(opd.code, "download" if download else "upload") for opd, download in flows}
    acking = {(code, "upload" if direction == "download" else "download") for code, direction in busy}
    idle = [row for key, row in rows.items() if row["kind"] == "opd" and key not in busy | acking]
    assert len(idle) >= 2 * (len(policy.opds) - len(flows))
    noisy = [(row["code"], row["direction"], row["rate_bps"]) for row in idle if row["rate_bps"] > 1_000]
    assert not noisy, noisy

    # Guarantees and ceilings: the policy's (in the window the daemon reports) times the scale.
    allocations = resolve_allocations(policy, document["policy"]["window"])
    capacity = {"download": round(policy.backbone.download * scale), "upload": round(policy.backbone.upload * scale)}
    for (code, direction), row in rows.items():
        if row["kind"] != "opd":
            continue
        guaranteed, ceiling = allocations[by_code[code].id][direction]
        assert row["guaranteed_bps"] == round(guaranteed * scale), (code, direction)
        assert row["ceiling_bps"] == min(round(ceiling * scale), capacity[direction]), (code, direction)
    assert {(code, direction) for code, direction in rows if code in by_code} == \
        {(opd.code, direction) for opd in policy.opds for direction in ("download", "upload")}

    # Header: both switches connected, the enforced policy, uplinks that add up their owners.
    assert {switch["name"]: switch["connected"] for switch in document["switches"]} == \
        {f"{SWITCH_PREFIX}gw": True, f"{SWITCH_PREFIX}core": True}
    assert document["policy"]["sha256"] == loaded.sha256 and document["policy"]["generation"] >= 1
    assert document["policy"]["scale"] == scale
    for uplink in document["uplinks"]:
        owners_bps = sum(row["rate_bps"] for row in document["opds"] if row["direction"] == uplink["direction"])
        assert uplink["capacity_bps"] == capacity[uplink["direction"]]
        assert uplink["rate_bps"] == pytest.approx(owners_bps, rel=1e-3), uplink  # root = sum of its children

    # The rich view, sorted by rate: the busiest download OPD on the first row.
    assert view.returncode == 0, view.stderr
    print(view.stdout)
    lines = view.stdout.splitlines()
    first_row = lines[next(index for index, line in enumerate(lines) if line.startswith("OPD")) + 2]
    assert first_row.split()[0] == largest.code, view.stdout
    assert f"{SWITCH_PREFIX}gw up" in view.stdout and f"{SWITCH_PREFIX}core up" in view.stdout
