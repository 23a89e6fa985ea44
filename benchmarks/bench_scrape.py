"""Exporter scrape benchmark: GET /metrics of the real daemon enforcing 500 OPDs (target <= 50 ms).

Run (as root, Open vSwitch running; holds no lock itself, so take the shared one):
    flock /tmp/satupintu-measure.lock .venv/bin/python benchmarks/bench_scrape.py [--repeat 50] [--opds 500] [--json]

Test bed, built per run and removed afterwards (names of their own, free ports picked at run time):
  * OVS bridges `qsgw`, `qscore` (star_topology renamed with prefix "qs": netdev, fail_mode=secure,
    OpenFlow13) pointed at the daemon, so the switch series are real too;
  * veth pairs qsgw-eth1/qscore-eth1 (download HTB tree) and qsgw-eth2/qsup-eth0 (upload tree);
  * `satupintu run` (the daemon, as in production) with benchmarks/synthetic.py's policy at
    scale 1.0: 2 x (500 OPD classes + 2,000 leaves + Wi-Fi + unclassified) HTB classes.
Measured once the daemon reports both switches in sync and both trees applied: `--repeat`
HTTP GETs of /metrics (connect + collect + transfer), after one warm-up GET, plain (as
`satupintu status` and curl ask) and with `Accept-Encoding: gzip` (as Prometheus asks); and
the time `satupintu status` needs to parse one body. `--wait-idle` first waits (as
bench_enforce.py does) until no emulation test runs: other engineers' tests share the 2 cores.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from synthetic import synthetic_policy_text

from satupintu.emulation.network import renamed
from satupintu.emulation.processes import stop_process
from satupintu.emulation.session import enforcement_ready
from satupintu.policy.load import load_policy_text
from satupintu.status.exposition import parse_snapshot
from satupintu.topology import Topology, star_topology, topology_yaml

REPO = Path(__file__).resolve().parents[1]
PYTHON = REPO / ".venv" / "bin" / "python"
PREFIX = "qs"
DPID_OFFSET = 0x5100
UPSTREAM_PEER = f"{PREFIX}up-eth0"
TARGET_MS = 50.0
READY_TIMEOUT_S = 120.0


def sh(*argv: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(argv, check=check, capture_output=True, text=True, timeout=60)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def veth_pairs(topology: Topology) -> list[tuple[str, str]]:
    gateway, core = topology.gateway, next(name for name in topology.dpids if name != topology.gateway)
    return [(topology.interface(gateway, topology.backbone_port), topology.interface(core, 1)),
            (topology.interface(gateway, topology.upstream_port), UPSTREAM_PEER)]


def teardown(topology: Topology) -> None:
    for bridge in topology.dpids:
        sh("ovs-vsctl", "--if-exists", "del-br", bridge, check=False)
    for name, _peer in veth_pairs(topology):
        sh("ip", "link", "del", name, check=False)


def setup(topology: Topology, openflow_port: int) -> None:
    teardown(topology)
    for bridge, dpid in topology.dpids.items():
        sh("ovs-vsctl", "add-br", bridge, "--", "set", "bridge", bridge, "datapath_type=netdev",
           "fail_mode=secure", "protocols=OpenFlow13", f"other-config:datapath-id={dpid:016x}")
    for name, peer in veth_pairs(topology):
        sh("ip", "link", "add", name, "type", "veth", "peer", "name", peer)
        sh("ip", "link", "set", name, "up")
        sh("ip", "link", "set", peer, "up")
    for bridge in topology.dpids:
        sh("ovs-vsctl", "set-controller", bridge, f"tcp:127.0.0.1:{openflow_port}")


def start_daemon(workdir: Path, opd_count: int, topology: Topology, openflow_port: int,
                 metrics_port: int) -> subprocess.Popen:
    policy, topology_file = workdir / "policy.yaml", workdir / "topology.yaml"
    policy.write_text(synthetic_policy_text(opd_count))
    topology_file.write_text(topology_yaml(topology))
    return subprocess.Popen(
        [str(PYTHON), "-m", "satupintu.cli", "run", "--policy", str(policy), "--topology", str(topology_file),
         "--openflow-listen", f"127.0.0.1:{openflow_port}", "--metrics-listen", f"127.0.0.1:{metrics_port}",
         "--pid-file", str(workdir / "daemon.pid"), "--status-file", str(workdir / "status.json"),
         "--state-dir", str(workdir / "state"), "--no-watch", "--log-level", "WARNING"],
        stdout=subprocess.DEVNULL, stderr=open(workdir / "daemon.log", "w"))


def wait_enforced(daemon: subprocess.Popen, workdir: Path, topology: Topology) -> float:
    started = time.monotonic()
    while True:
        try:
            status = json.loads((workdir / "status.json").read_text())
        except (OSError, ValueError):
            status = {}
        if enforcement_ready(status, topology):
            return time.monotonic() - started
        if daemon.poll() is not None or time.monotonic() - started > READY_TIMEOUT_S:
            raise RuntimeError(f"daemon not enforcing; log:\n{(workdir / 'daemon.log').read_text()[-3000:]}")
        time.sleep(0.1)


def get(url: str, gzip: bool = False) -> tuple[float, bytes]:
    request = urllib.request.Request(url, headers={"Accept-Encoding": "gzip"} if gzip else {})
    started = time.perf_counter()
    with urllib.request.urlopen(request, timeout=30) as response:
        body = response.read()
    return (time.perf_counter() - started) * 1000, body


def summary(values: list[float]) -> dict[str, float]:
    return {"min": round(min(values), 3), "median": round(statistics.median(values), 3),
            "max": round(max(values), 3)}


def run(opd_count: int, repeat: int) -> dict:
    policy = load_policy_text(synthetic_policy_text(opd_count), "bench.yaml").policy
    owners = [owner.id for owner in (*policy.opds, *policy.public_wifi)]
    topology = renamed(star_topology(owners), PREFIX, DPID_OFFSET)
    openflow_port, metrics_port = free_port(), free_port()
    url = f"http://127.0.0.1:{metrics_port}/metrics"
    with tempfile.TemporaryDirectory(prefix="bench-scrape-") as tmp:
        workdir = Path(tmp)
        daemon = None
        try:
            setup(topology, openflow_port)
            daemon = start_daemon(workdir, opd_count, topology, openflow_port, metrics_port)
            ready_s = wait_enforced(daemon, workdir, topology)
            _, body = get(url)  # warm-up
            scrape_ms, gzip_ms, sizes, gzip_sizes = [], [], [], []
            for _ in range(repeat):
                elapsed_ms, body = get(url)
                scrape_ms.append(elapsed_ms)
                sizes.append(len(body))
                elapsed_ms, compressed = get(url, gzip=True)
                gzip_ms.append(elapsed_ms)
                gzip_sizes.append(len(compressed))
            text = body.decode()
            parse_ms = []
            for _ in range(max(3, repeat // 5)):
                started = time.perf_counter()
                snapshot = parse_snapshot(text, 0.0)
                parse_ms.append((time.perf_counter() - started) * 1000)
        finally:
            stop_process(daemon, timeout_s=30)
            teardown(topology)
    samples = sum(1 for line in text.splitlines() if line and not line.startswith("#"))
    return {
        "benchmark": "scrape", "opds": opd_count, "repeat": repeat, "target_ms": TARGET_MS,
        "scrape_ms": summary(scrape_ms), "met": statistics.median(scrape_ms) <= TARGET_MS,
        "scrape_gzip_ms": summary(gzip_ms), "body_bytes": max(sizes), "gzip_body_bytes": max(gzip_sizes),
        "samples": samples, "load_average_1m": round(os.getloadavg()[0], 2), "owners_in_status": len(snapshot.owners),
        "status_parse_ms": summary(parse_ms), "daemon_ready_s": round(ready_s, 3),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeat", type=int, default=50, help="scrapes measured (default 50)")
    parser.add_argument("--opds", type=int, default=500, help="OPDs in the synthetic policy (default 500)")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    parser.add_argument("--wait-idle", action="store_true", help="first wait until no emulation test runs")
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        print("bench_scrape: needs root (OVS bridges, veths, tc)", file=sys.stderr)
        return 2
    if args.wait_idle:
        from bench_enforce import wait_idle

        waited = wait_idle()
        if waited > 1:
            print(f"(waited {waited:.0f} s for running tests)", file=sys.stderr)
    result = run(args.opds, args.repeat)
    if args.json:
        print(json.dumps(result, indent=1))
        return 0
    scrape_ms, gzip_ms, parse_ms = result["scrape_ms"], result["scrape_gzip_ms"], result["status_parse_ms"]
    print(f"{result['opds']} OPDs, {result['repeat']} scrapes of {result['body_bytes']:,} bytes "
          f"({result['samples']:,} samples):")
    print(f"    GET /metrics      min {scrape_ms['min']:8.2f}  median {scrape_ms['median']:8.2f}  "
          f"max {scrape_ms['max']:8.2f} ms   target <= {TARGET_MS:.0f} ms: {'met' if result['met'] else 'MISSED'}")
    print(f"    GET, gzip         min {gzip_ms['min']:8.2f}  median {gzip_ms['median']:8.2f}  "
          f"max {gzip_ms['max']:8.2f} ms   ({result['gzip_body_bytes']:,} bytes, as Prometheus scrapes)")
    print(f"    status parse      min {parse_ms['min']:8.2f}  median {parse_ms['median']:8.2f}  "
          f"max {parse_ms['max']:8.2f} ms")
    print(f"    load average (1 min) at the end: {result['load_average_1m']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
