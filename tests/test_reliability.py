"""Issue 6 acceptance: the controller is never the reason an OPD loses internet.

One emulation of jateng-50 on tree-50 (gateway fgw -> fcore -> five distribution switches
fd1..fd5 with ten OPDs each; Wi-Fi on fcore), scale 1/100, switch prefix "f", OpenFlow 6815,
metrics 127.0.0.1:9815. "Full load" is every OPD and the Wi-Fi pool downloading at once
(TCP CUBIC): the backbone's download is the contended bottleneck. (Adding every OPD's upload
as well saturates the one ovs-vswitchd thread of this 2-core machine, so RTTs then measure
OVS, not the controller.) Probes are realtime-class UDP echoes at 50 packets/s.

What the topology allows: tree-50 has no redundant paths, so a distribution switch that
goes down takes its ten OPDs offline until it returns (no failover to test); what must hold
is that the other forty keep their guarantees and the ten recover by themselves. ring-50
does have a second path, but the controller installs shortest paths only and does not
re-route when a ring link fails (the topology file says: edit it and reload), so there is
no failover to test there either. The upstream link is single: while it is down nobody
reaches the internet; the controller, its flows and the HTB trees must survive, traffic
must resume and the metrics show the gap (satupintu_uplink_bytes stands still).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import emulation_process
from satupintu.compile.state import compile_state
from satupintu.drivers.tc import read_stats
from satupintu.emulation.observe import (
    BACKGROUND_LOSS,
    echo_server,
    flow_count,
    lost_near,
    lost_unix,
    probe_result,
    read_status,
    rss_kib,
    start_probe,
    total_loss,
)
from satupintu.emulation.session import enforcement_ready
from satupintu.emulation.traffic import Host, IperfServers, start_client
from satupintu.emulation.variants import broken_variants, edit_opd
from satupintu.policy.load import load_policy, load_policy_text
from satupintu.topology import load_topology

pytestmark = pytest.mark.emulation

REPO = Path(__file__).resolve().parents[1]
POLICY = REPO / "policies" / "jateng-50.yaml"
TOPOLOGY = REPO / "topologies" / "tree-50.yaml"
PREFIX, OPENFLOW_PORT, METRICS = "f", 6815, "127.0.0.1:9815"
BRIDGES = [f"{PREFIX}{name}" for name in ("gw", "core", "d1", "d2", "d3", "d4", "d5")]
GATEWAY_PORTS = (f"{PREFIX}gw-eth1", f"{PREFIX}gw-eth2")  # download shaped on eth1, upload on eth2
PROBED = ("opd5", "opd15", "opd25", "opd35", "opd45")  # one behind each distribution switch
CHANGED = "SETWAN"  # opd2, behind fd1: the OPD the reload storm edits


@pytest.fixture(scope="module")
def emulation(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    workdir = tmp_path_factory.mktemp("reliability")
    policy = workdir / "policy.yaml"
    policy.write_text(POLICY.read_text())
    with emulation_process(workdir, "--policy", str(policy), "--topology", str(TOPOLOGY), "--switch-prefix", PREFIX,
                           "--openflow-port", str(OPENFLOW_PORT), "--metrics-listen", METRICS) as ready:
        ready["policy_copy"] = str(policy)
        ready["restarted"] = []
        try:
            yield ready
        finally:
            for child in ready["restarted"]:  # the controller a test restarted after kill -9
                if child.poll() is None:
                    child.terminate()
                    child.wait(timeout=15)
            for name in (*GATEWAY_PORTS, f"{PREFIX}core-eth13"):  # a failed test may have left a link down
                subprocess.run(["ip", "link", "set", name, "up"], capture_output=True)


# ---------------------------------------------------------------- helpers


def _status(emulation: dict) -> dict:
    return read_status(emulation["controller_status_file"])


def _controller_pid(emulation: dict) -> int:
    return int(Path(emulation["controller_pid_file"]).read_text())


def _host(emulation: dict, name: str) -> Host:
    return Host.from_ready(emulation, name)


def _owners(emulation: dict) -> list[str]:
    return sorted((name for name, host in emulation["hosts"].items() if host["owner_id"] is not None),
                  key=lambda name: emulation["hosts"][name]["owner_id"])


class FullLoad:
    """Every OPD and Wi-Fi pool downloading for `seconds` (bounded iperf3 runs)."""

    def __init__(self, emulation: dict, seconds: int, names: list[str] | None = None) -> None:
        self.inet = _host(emulation, "inet")
        self.clients = [_host(emulation, name) for name in (names or _owners(emulation))]
        self.seconds = seconds
        self.servers = IperfServers(self.inet)

    def __enter__(self) -> FullLoad:
        ports = self.servers.start(len(self.clients))
        self.processes = [start_client(client, self.inet, port, self.seconds, download=True, omit_s=0)
                          for client, port in zip(self.clients, ports, strict=True)]
        return self

    def results(self) -> dict[str, list[float]]:
        """Per client: bits/s of every 1 s interval (empty when the run failed)."""
        out = {}
        for client, process in zip(self.clients, self.processes, strict=True):
            try:
                text, _ = process.communicate(timeout=self.seconds + 40)
                out[client.name] = [item["sum"]["bits_per_second"] for item in json.loads(text)["intervals"]]
            except (subprocess.TimeoutExpired, ValueError, KeyError):
                process.kill()
                out[client.name] = []
        return out

    def __exit__(self, *exc: object) -> None:
        for process in self.processes:
            if process.poll() is None:
                process.kill()
                process.wait()
        self.servers.stop()


def _guarantee_bps(emulation: dict, policy, name: str) -> float:
    owner_id = emulation["hosts"][name]["owner_id"]
    for opd in policy.opds:
        if opd.id == owner_id:
            return opd.download.guaranteed * emulation["scale"]
    pool = next(pool for pool in policy.public_wifi if pool.id == owner_id)
    return pool.floor.download * emulation["scale"]


def _tc_classes(port: str) -> str:
    """`tc class show` (no counters): ids, parents, rates, ceilings, bursts, priorities."""
    return subprocess.run(["tc", "class", "show", "dev", port], capture_output=True, text=True, check=True).stdout


def _flows(bridge: str) -> list[str]:
    """Flows of `bridge` without counters, sorted: equal lists mean nothing was changed."""
    out = subprocess.run(["ovs-ofctl", "-O", "OpenFlow13", "--no-stats", "dump-flows", bridge], capture_output=True,
                         text=True, check=True).stdout
    return sorted(line.strip() for line in out.splitlines() if "cookie=" in line)


def _plan(emulation: dict, policy_text: str):
    loaded = load_policy_text(policy_text, "policy.yaml")
    return compile_state(loaded.policy, load_topology(emulation["topology"]), scale=emulation["scale"])


def _wait_enforced(emulation: dict, timeout_s: float, pid: int) -> dict:
    """The status of controller `pid` once it enforces everything (not a dead one's last words)."""
    topology = load_topology(emulation["topology"])
    deadline = time.monotonic() + timeout_s
    while (status := _status(emulation)).get("pid") != pid or not enforcement_ready(status, topology):
        assert time.monotonic() < deadline, status
        time.sleep(0.1)
    return status


def _restart_controller(emulation: dict) -> subprocess.Popen:
    """`satupintu run` again with the same files as the one the emulation started."""
    workdir = Path(emulation["controller_status_file"]).parent
    process = subprocess.Popen(
        [sys.executable, "-m", "satupintu.cli", "run", "--policy", emulation["policy_copy"],
         "--topology", emulation["topology"], "--scale", str(emulation["scale"]),
         "--openflow-listen", f"127.0.0.1:{OPENFLOW_PORT}", "--metrics-listen", METRICS,
         "--pid-file", emulation["controller_pid_file"], "--status-file", emulation["controller_status_file"],
         "--state-dir", emulation["controller_state_dir"]],
        stdout=open(workdir / "restarted.log", "ab"), stderr=subprocess.STDOUT)  # noqa: SIM115
    emulation["restarted"].append(process)
    return process


def _metric(emulation: dict, name: str, labels: str) -> float:
    text = urllib.request.urlopen(emulation["metrics_url"], timeout=10).read().decode()
    for line in text.splitlines():
        if line.startswith((f"{name}{{", f"{name}_total{{")) and all(part in line for part in labels.split(",")):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name}{{{labels}}} not exported")


# ---------------------------------------------------------------- 1. controller death


def test_kill_9_under_full_load_keeps_traffic_and_the_restart_changes_nothing(emulation: dict) -> None:
    flows_before = {bridge: _flows(bridge) for bridge in BRIDGES}
    classes_before = {port: _tc_classes(port) for port in GATEWAY_PORTS}
    echo = echo_server(emulation, 90)
    try:
        time.sleep(0.3)
        with FullLoad(emulation, 24) as load:
            time.sleep(3)
            probes = [start_probe(emulation, name, 900, 0.02) for name in PROBED]
            time.sleep(2)
            killed_unix = time.time()
            os.kill(_controller_pid(emulation), signal.SIGKILL)
            time.sleep(3)
            dead_flows = {bridge: _flows(bridge) for bridge in BRIDGES}
            dead_classes = {port: _tc_classes(port) for port in GATEWAY_PORTS}
            restarted_at = time.monotonic()
            restarted = _restart_controller(emulation)
            status = _wait_enforced(emulation, 30, restarted.pid)
            enforced_s = time.monotonic() - restarted_at
            results = [probe_result(probe, 60) for probe in probes]
            rates = load.results()
    finally:
        echo.terminate()
        echo.wait(timeout=10)
    assert dead_flows == flows_before, "flows changed while the controller was dead"
    assert dead_classes == classes_before, "HTB trees changed while the controller was dead"
    assert {bridge: _flows(bridge) for bridge in BRIDGES} == flows_before, "the restart changed flows"
    assert {port: _tc_classes(port) for port in GATEWAY_PORTS} == classes_before, "the restart changed tc"
    for name, entry in status["switches"].items():
        assert entry["last_reconcile"]["messages"] == 0, (name, entry["last_reconcile"])
    for port, queue in status["queues"].items():
        assert queue.get("requests") == 0, (port, queue)
    backbone = sum(sum(values[1:]) / max(1, len(values) - 1) for values in rates.values())
    capacity = load_policy(POLICY).policy.backbone.download * emulation["scale"]
    loss = total_loss(results)
    print(f"kill -9 under full load ({backbone / capacity:.3f} of the backbone): restart enforced in "
          f"{enforced_s:.2f} s sending nothing; probe loss {[r['lost'] for r in results]} of "
          f"{[r['sent'] for r in results]} ({100 * loss:.3f}%), near the kill "
          f"{lost_near(results, killed_unix, 0.2, 5.0)}")
    assert all(values for values in rates.values()), [name for name, values in rates.items() if not values]
    assert backbone >= 0.85 * capacity, "the load did not fill the backbone"
    assert loss <= BACKGROUND_LOSS, [(r["sent"], r["lost"]) for r in results]


# ---------------------------------------------------------------- 2. switch restart


def _bridge_config(bridge: str) -> tuple[dict[str, int], str]:
    ports = subprocess.run(["ovs-vsctl", "list-ports", bridge], capture_output=True, text=True,
                           check=True).stdout.split()
    ofports = {port: int(subprocess.run(["ovs-vsctl", "get", "interface", port, "ofport"], capture_output=True,
                                        text=True, check=True).stdout) for port in ports}
    dpid = subprocess.run(["ovs-vsctl", "get", "bridge", bridge, "other_config:datapath-id"], capture_output=True,
                          text=True, check=True).stdout.strip().strip('"')
    return ofports, dpid


def _re_add_bridge(bridge: str, ofports: dict[str, int], dpid: str) -> None:
    """The bridge back as a restarted switch comes back: same ports and dpid, empty tables."""
    argv = ["ovs-vsctl", "--timeout=20", "add-br", bridge, "--", "set", "bridge", bridge, "datapath_type=netdev",
            "fail_mode=secure", "protocols=OpenFlow13", f"other_config:datapath-id={dpid}",
            "other_config:disable-in-band=true"]
    for port, number in sorted(ofports.items()):
        argv += ["--", "add-port", bridge, port, "--", "set", "interface", port, f"ofport_request={number}"]
    argv += ["--", "set-controller", bridge, f"tcp:127.0.0.1:{OPENFLOW_PORT}"]
    subprocess.run(argv, check=True, capture_output=True)


def test_a_restarted_switch_gets_its_full_state_within_two_seconds_and_others_lose_nothing(emulation: dict) -> None:
    bridge = f"{PREFIX}d3"  # OPDs 21-30
    plan = next(item for item in _plan(emulation, Path(emulation["policy_copy"]).read_text()).switches
                if item.name == bridge)
    ofports, dpid = _bridge_config(bridge)
    connects = _status(emulation)["switches"][bridge]["connects"]
    others = [name for name in PROBED if name != "opd25"]
    echo = echo_server(emulation, 60)
    try:
        time.sleep(0.3)
        with FullLoad(emulation, 16):
            time.sleep(2)
            probes = [start_probe(emulation, name, 600, 0.02) for name in [*others, "opd25"]]
            time.sleep(3)
            deleted_unix = time.time()
            subprocess.run(["ovs-vsctl", "--timeout=20", "del-br", bridge], check=True, capture_output=True)
            time.sleep(1)
            _re_add_bridge(bridge, ofports, dpid)
            re_added_unix = time.time()
            deadline = time.monotonic() + 10
            while True:
                entry = _status(emulation)["switches"][bridge]
                record = entry.get("last_reconcile") or {}
                if entry["connects"] > connects and entry["in_sync"] and record.get("at", 0) > re_added_unix:
                    break
                assert time.monotonic() < deadline, entry
                time.sleep(0.05)
            installed = flow_count(bridge)
            results = [probe_result(probe, 60) for probe in probes]
    finally:
        echo.terminate()
        echo.wait(timeout=10)
    reinstalled_s = record["at"] - re_added_unix
    behind = results[-1]
    outage = [round(t - deleted_unix, 2) for t in lost_unix(behind)]
    print(f"switch {bridge} deleted and re-added under load: {record['messages']} messages, reconnect -> fully "
          f"re-installed in {reinstalled_s:.3f} s (reconcile {record['duration_s']:.3f} s); opd25 lost "
          f"{behind['lost']} packets from {outage[:1]} to {outage[-1:]} s after the delete; others lost "
          f"{[r['lost'] for r in results[:-1]]} of {[r['sent'] for r in results[:-1]]}")
    assert installed == len(plan.flows) and record["messages"] == len(plan.flows) + len(plan.meters)
    assert reinstalled_s <= 2.0
    assert lost_near(results[:-1], deleted_unix, 0.2, 4.0) == [], "OPDs behind other switches lost packets"
    assert total_loss(results[:-1]) <= BACKGROUND_LOSS
    assert all(t <= re_added_unix + 2.0 for t in lost_unix(behind)), "opd25 did not recover within 2 s"


# ---------------------------------------------------------------- 3. reload storm


def _write(path: Path, text: str) -> None:
    temporary = path.with_suffix(".tmp")
    temporary.write_text(text)
    os.replace(temporary, path)


def _leak_gauges(pid: int) -> dict[str, int]:
    return {"rss_kib": rss_kib(pid), "fds": len(os.listdir(f"/proc/{pid}/fd")),
            "threads": len(os.listdir(f"/proc/{pid}/task"))}


def test_a_hundred_reloads_in_a_minute_under_load_end_in_the_last_valid_policy(emulation: dict) -> None:
    policy_file = Path(emulation["policy_copy"])
    base = policy_file.read_text()
    valid = [edit_opd(base, CHANGED, "ceiling: 1Gbps", "ceiling: 500Mbps"),
             edit_opd(base, CHANGED, "guaranteed: 200Mbps", "guaranteed: 150Mbps"), base]
    broken = broken_variants(base, CHANGED)
    pid = _controller_pid(emulation)
    before = _leak_gauges(pid)
    counts_before = _status(emulation)
    unaffected = [name for name in PROBED if name != "opd5"] + ["opd6"]
    outcomes: list[tuple[bool, bool]] = []
    last_valid = base
    echo = echo_server(emulation, 120)
    try:
        time.sleep(0.3)
        with FullLoad(emulation, 64):
            time.sleep(2)
            probes = [start_probe(emulation, name, 2900, 0.02) for name in unaffected]
            started = time.monotonic()
            for index in range(100):
                expect_ok = index % 2 == 0
                text = valid[(index // 2) % len(valid)] if expect_ok else broken[(index // 2) % len(broken)][1]
                last_valid = text if expect_ok else last_valid
                at = (_status(emulation).get("last_reload") or {}).get("at", 0)
                _write(policy_file, text)
                if index % 4 == 1:
                    os.kill(pid, signal.SIGHUP)  # `satupintu reload`'s path, beside the file watch
                deadline = time.monotonic() + 5
                while (last := _status(emulation).get("last_reload") or {}).get("at", 0) <= at:
                    assert time.monotonic() < deadline, f"reload {index} had no outcome"
                    time.sleep(0.02)
                outcomes.append((expect_ok, last["ok"]))
            storm_s = time.monotonic() - started
            results = [probe_result(probe, 90) for probe in probes]
        time.sleep(1.5)  # the status file is rewritten every second with the switches' state
        after = _leak_gauges(pid)
        status = _wait_enforced(emulation, 10, pid)
    finally:
        echo.terminate()
        echo.wait(timeout=10)
        _write(policy_file, base)
    final = _plan(emulation, last_valid)
    print(f"100 reloads in {storm_s:.1f} s; controller {before} -> {after}; probe loss of unaffected OPDs "
          f"{[r['lost'] for r in results]} of {[r['sent'] for r in results]}")
    assert storm_s <= 60.0
    assert [ok for _, ok in outcomes] == [expected for expected, _ in outcomes], outcomes
    assert status["reloads_ok"] - counts_before["reloads_ok"] == 50
    assert status["reloads_failed"] - counts_before["reloads_failed"] == 50
    assert status["policy_sha256"] == load_policy_text(last_valid).sha256
    for plan in final.switches:
        assert flow_count(plan.name) == len(plan.flows), plan.name
    for plan in final.queues:
        kernel = read_stats(plan.port)
        assert sorted(kernel) == sorted(klass.minor for klass in plan.classes), plan.port
        for klass in plan.classes:
            assert abs(kernel[klass.minor].ceil_bps - klass.ceil_bps) <= 8, (plan.port, klass)
            assert abs(kernel[klass.minor].rate_bps - klass.rate_bps) <= 8, (plan.port, klass)
    assert after["fds"] == before["fds"] and after["threads"] == before["threads"], (before, after)
    assert after["rss_kib"] - before["rss_kib"] <= 8 * 1024, (before, after)
    assert total_loss(results) <= BACKGROUND_LOSS, [(r["sent"], r["lost"]) for r in results]


# ---------------------------------------------------------------- 6. graceful degradation


def test_a_distribution_switch_cut_off_leaves_the_others_their_guarantees_and_its_opds_recover(
        emulation: dict) -> None:
    policy = load_policy(POLICY).policy
    trunk = f"{PREFIX}core-eth13"  # fcore port 13 -> fd3 (OPDs 21-30)
    cut = {f"opd{number}" for number in range(21, 31)}
    flows_before = _flows(f"{PREFIX}d3")
    echo = echo_server(emulation, 60)
    try:
        time.sleep(0.3)
        probe = start_probe(emulation, "opd25", 1100, 0.02)
        with FullLoad(emulation, 14) as load:
            time.sleep(3)
            subprocess.run(["ip", "link", "set", trunk, "down"], check=True)
            time.sleep(8)
            subprocess.run(["ip", "link", "set", trunk, "up"], check=True)
            up_unix = time.time()
            during = load.results()
        # After the link is back: everybody saturating again, the ten OPDs behind fd3 included.
        with FullLoad(emulation, 8) as load:
            again = load.results()
        behind = probe_result(probe, 60)
    finally:
        echo.terminate()
        echo.wait(timeout=10)
    short, recovered_short, ratios = [], [], []
    for name, values in during.items():
        window = values[5:10]  # seconds 5-10: the trunk was down from ~3 s to ~11 s
        if name in cut:
            continue
        mean = sum(window) / max(1, len(window))
        # The Wi-Fi pool gets exactly its floor under saturation, and TCP goodput is ~95.6% of the
        # L2 rate HTB shapes: 90% of the floor for it; OPDs borrow above their guarantee.
        share = 0.90 if name.startswith("wifi") else 0.95
        ratios.append(mean / _guarantee_bps(emulation, policy, name))
        if mean < share * _guarantee_bps(emulation, policy, name):
            short.append(f"{name}: {mean / 1e6:.2f} Mbit/s")
    for name in sorted(cut):
        values = again[name][2:]
        mean = sum(values) / max(1, len(values))
        if mean < 0.95 * _guarantee_bps(emulation, policy, name):
            recovered_short.append(f"{name}: {mean / 1e6:.2f} Mbit/s")
    received_after = [sequence for sequence in range(behind["sent"])
                      if sequence not in set(behind["lost_sequences"])
                      and behind["started_unix"] + sequence * behind["interval_s"] > up_unix]
    first_after = (behind["started_unix"] + received_after[0] * behind["interval_s"] - up_unix
                   if received_after else float("nan"))
    print(f"fd3 cut off for 8 s under full load: the other 40 OPDs and Wi-Fi got >= {min(ratios):.3f} of their "
          f"guarantee/floor; below 95% (Wi-Fi 90%): {short or 'none'}; "
          f"opd25 probe lost {behind['lost']}, first answer {first_after:.2f} s after the link came back; "
          f"after: fd3's OPDs below 95%: {recovered_short or 'none'}")
    assert all(during[name] for name in during if name not in cut)
    assert not short, short
    assert behind["lost"] >= 300, "the cut did not cut opd25 off: the test proves nothing"
    assert first_after <= 1.0
    assert not recovered_short, recovered_short
    assert _flows(f"{PREFIX}d3") == flows_before


def test_upstream_link_down_and_up_controller_flows_and_queues_survive_and_traffic_resumes(
        emulation: dict) -> None:
    upstream = GATEWAY_PORTS[1]
    flows_before = {bridge: _flows(bridge) for bridge in BRIDGES}
    classes_before = {port: _tc_classes(port) for port in GATEWAY_PORTS}
    pid = _controller_pid(emulation)
    labels = f'direction="download",port="{GATEWAY_PORTS[0]}"'
    echo = echo_server(emulation, 60)
    try:
        time.sleep(0.3)
        probes = [start_probe(emulation, name, 800, 0.02) for name in PROBED[:3]]
        with FullLoad(emulation, 15, [f"opd{number}" for number in range(1, 51, 5)]) as load:
            time.sleep(3)
            subprocess.run(["ip", "link", "set", upstream, "down"], check=True)
            down_unix = time.time()
            time.sleep(1)
            during = [_metric(emulation, "satupintu_uplink_bytes", labels)]
            time.sleep(3)
            during.append(_metric(emulation, "satupintu_uplink_bytes", labels))
            classes_down = {port: _tc_classes(port) for port in GATEWAY_PORTS}
            subprocess.run(["ip", "link", "set", upstream, "up"], check=True)
            up_unix = time.time()
            time.sleep(5)
            resumed = _metric(emulation, "satupintu_uplink_bytes", labels)
            connected = [_metric(emulation, "satupintu_switch_connected", f'switch="{bridge}"') for bridge in BRIDGES]
            load.results()
        results = [probe_result(probe, 60) for probe in probes]
    finally:
        echo.terminate()
        echo.wait(timeout=10)
    lost_after = [t - up_unix for result in results for t in lost_unix(result) if t > up_unix + 1.0]
    print(f"upstream down 4 s: download bytes +{during[1] - during[0]:.0f} while down, +{resumed - during[1]:.0f} "
          f"in the 5 s after; probes lost {[r['lost'] for r in results]} (while down: "
          f"{sum(1 for r in results for t in lost_unix(r) if down_unix <= t <= up_unix)})")
    os.kill(pid, 0)  # the controller is still the same process
    assert classes_down == classes_before, "HTB trees changed while the link was down"
    assert {port: _tc_classes(port) for port in GATEWAY_PORTS} == classes_before
    assert {bridge: _flows(bridge) for bridge in BRIDGES} == flows_before
    assert connected == [1.0] * len(BRIDGES)
    assert during[1] - during[0] < 100_000, "traffic went on while the upstream link was down"
    assert resumed - during[1] > 1_000_000, "download traffic did not resume"
    assert lost_after == [], "probes still lost more than 1 s after the link came back"
