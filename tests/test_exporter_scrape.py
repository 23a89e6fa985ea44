"""The exporter, scraped over HTTP from the real daemon (`satupintu run`) shaping two veths of
its own: frames sent into the HTB trees show up exactly in the counters, counters only grow,
label sets are exactly the plan's, and the guarantee/ceiling gauges are the compiled plan's and
the policy's times the scale. Also: the fast /metrics text equals prometheus_client's rendering
of the same collector, and tc read_counters agrees with read_stats. (~10 s, root.)"""

from __future__ import annotations

import errno
import json
import signal
import socket
import struct
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from conftest import NetnsFactory, require_netns
from satupintu.compile.plan import ROOT_MINOR, SwitchPlan
from satupintu.compile.state import compile_state
from satupintu.drivers.tc import TcShaper, read_counters, read_stats
from satupintu.emulation.network import renamed
from satupintu.enforcer import Enforcer
from satupintu.metrics.exporter import Metrics
from satupintu.policy.load import load_policy
from satupintu.policy.schedule import resolve_allocations
from satupintu.topology import star_topology, topology_yaml

pytestmark = pytest.mark.netns

REPO = Path(__file__).resolve().parents[1]
POLICY = REPO / "policies" / "minimal.yaml"
PREFIX = "qt"
SCALE = 0.5  # not 1: a gauge that forgot the scale shows
UPSTREAM_IP = "100.64.0.1"
FRAME_BYTES = 600

Series = dict[tuple[str, frozenset], float]


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _ip(*argv: str) -> None:
    subprocess.run(["ip", *argv], check=True, capture_output=True, timeout=15)


@pytest.fixture(scope="module")
def testbed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    require_netns()
    workdir = tmp_path_factory.mktemp("exporter")
    loaded = load_policy(POLICY)
    owners = [owner.id for owner in (*loaded.policy.opds, *loaded.policy.public_wifi)]
    topology = renamed(star_topology(owners), PREFIX, dpid_offset=0x5400)
    ports = {"download": topology.interface(topology.gateway, topology.backbone_port),
             "upload": topology.interface(topology.gateway, topology.upstream_port)}
    namespaces = NetnsFactory()
    daemon = None
    try:
        peers = namespaces("exporter")
        for index, port in enumerate(ports.values()):
            subprocess.run(["ip", "link", "del", port], capture_output=True, timeout=15)  # a leftover of ours
            _ip("link", "add", port, "type", "veth", "peer", "name", f"{PREFIX}peer{index}", "netns", peers)
            Path(f"/proc/sys/net/ipv6/conf/{port}/disable_ipv6").write_text("1")  # no ND/MLD noise
            _ip("link", "set", port, "up")
            _ip("-n", peers, "link", "set", f"{PREFIX}peer{index}", "up")
        policy_file, topology_file = workdir / "policy.yaml", workdir / "topology.yaml"
        policy_file.write_text(POLICY.read_text())
        topology_file.write_text(topology_yaml(topology))
        metrics_port = _free_port()
        daemon = subprocess.Popen(
            [sys.executable, "-m", "satupintu.cli", "run", "--policy", str(policy_file), "--topology",
             str(topology_file), "--scale", str(SCALE), "--openflow-listen", f"127.0.0.1:{_free_port()}",
             "--metrics-listen", f"127.0.0.1:{metrics_port}", "--pid-file", str(workdir / "pid"),
             "--status-file", str(workdir / "status.json"), "--state-dir", str(workdir / "state"), "--no-watch"],
            stdout=subprocess.DEVNULL, stderr=open(workdir / "daemon.log", "w"))  # noqa: SIM115
        deadline = time.monotonic() + 60
        while not _shaped(workdir / "status.json", ports.values()):
            if daemon.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"daemon did not shape {list(ports.values())}:\n{(workdir / 'daemon.log').read_text()}")
            time.sleep(0.1)
        yield {"url": f"http://127.0.0.1:{metrics_port}/metrics", "loaded": loaded, "topology": topology,
               "ports": ports, "policy_file": policy_file}
    finally:
        if daemon is not None and daemon.poll() is None:
            daemon.send_signal(signal.SIGTERM)
            daemon.wait(timeout=30)
        for port in ports.values():
            subprocess.run(["ip", "link", "del", port], capture_output=True, timeout=15)
        namespaces.cleanup()


def _shaped(status_file: Path, ports) -> bool:
    try:
        queues = json.loads(status_file.read_text()).get("queues", {})
    except (OSError, ValueError):
        return False
    return all(port in queues and "error" not in queues[port] for port in ports)


def scrape(url: str) -> Series:
    with urllib.request.urlopen(url, timeout=10) as response:
        text = response.read().decode()
    return {(sample.name, frozenset(sample.labels.items())): sample.value
            for family in text_string_to_metric_families(text) for sample in family.samples}


def value(series: Series, name: str, **labels: str) -> float:
    return series[(name, frozenset(labels.items()))]


def _checksum(header: bytes) -> int:
    total = sum(struct.unpack(f"!{len(header) // 2}H", header))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def frame(src: str, dst: str, dscp: int, size: int = FRAME_BYTES) -> bytes:
    """An Ethernet/IPv4/UDP frame of exactly `size` bytes (what HTB counts: no FCS)."""
    ip_length = size - 14
    header = struct.pack("!BBHHHBBH4s4s", 0x45, dscp << 2, ip_length, 1, 0, 64, socket.IPPROTO_UDP, 0,
                         socket.inet_aton(src), socket.inet_aton(dst))
    header = header[:10] + struct.pack("!H", _checksum(header)) + header[12:]
    udp = struct.pack("!HHHH", 40000, 5001, ip_length - 20, 0)
    return b"\x02\x00\x00\x00\x00\x02" + b"\x02\x00\x00\x00\x00\x01" + b"\x08\x00" + header + udp + bytes(
        ip_length - 28)


def send(interface: str, data: bytes, count: int, gap_s: float = 0.0) -> int:
    """Sends `count` frames out of `interface` through its qdisc, `gap_s` apart; returns how many
    were tried (a refused frame, ENOBUFS from a full bfifo leaf, is a drop the class counted)."""
    with socket.socket(socket.AF_PACKET, socket.SOCK_RAW) as raw:
        raw.bind((interface, 0))
        for _ in range(count):
            try:
                raw.send(data)
            except OSError as error:
                if error.errno != errno.ENOBUFS:
                    raise
            if gap_s:
                time.sleep(gap_s)
    return count


def drained(url: str, code: str, direction: str) -> Series:
    deadline = time.monotonic() + 10
    while True:
        series = scrape(url)
        if value(series, "satupintu_opd_backlog_bytes", opd=code, kind="opd", direction=direction) == 0:
            return series
        assert time.monotonic() < deadline, "the queue did not drain"
        time.sleep(0.05)


def _host(opd) -> str:
    return str(next(iter(opd.prefixes)).split("/")[0].rsplit(".", 1)[0] + ".9")


@pytest.mark.parametrize("direction", ["download", "upload"])
def test_frames_sent_are_counted_exactly_on_their_opd_and_class(testbed: dict, direction: str) -> None:
    policy = testbed["loaded"].policy
    opd = policy.opds[0]
    realtime = next(klass for klass in policy.classes if klass.name == "realtime")
    src, dst = (UPSTREAM_IP, _host(opd)) if direction == "download" else (_host(opd), UPSTREAM_IP)
    url, count = testbed["url"], 100
    before = drained(url, opd.code, direction)
    # Paced (~5 Mbit/s, under every guarantee here): a burst would overflow the leaf's short queue.
    send(testbed["ports"][direction], frame(src, dst, realtime.dscp), count, gap_s=0.001)
    after = drained(url, opd.code, direction)

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    owner = {"opd": opd.code, "kind": "opd", "direction": direction}
    assert delta("satupintu_opd_packets_total", **owner) == count
    assert delta("satupintu_opd_bytes_total", **owner) == count * FRAME_BYTES
    assert delta("satupintu_opd_drops_total", **owner) == 0
    assert delta("satupintu_class_bytes_total", **owner, **{"class": "realtime"}) == count * FRAME_BYTES
    assert delta("satupintu_class_bytes_total", **owner, **{"class": "default"}) == 0
    for other in (*policy.opds[1:], *policy.public_wifi):
        kind = "opd" if other in policy.opds else "wifi"
        assert delta("satupintu_opd_bytes_total", opd=other.code, kind=kind, direction=direction) == 0, other.code
    uplink = {"direction": direction, "port": testbed["ports"][direction]}
    assert delta("satupintu_uplink_bytes_total", **uplink) == count * FRAME_BYTES


def test_drops_of_a_flood_add_up_and_every_frame_is_sent_or_dropped(testbed: dict) -> None:
    opd = testbed["loaded"].policy.opds[-1]
    url, direction = testbed["url"], "download"
    before = drained(url, opd.code, direction)
    tried = send(testbed["ports"][direction], frame(UPSTREAM_IP, _host(opd), 0, 1400), 5000)  # ~7 MB at once
    after = drained(url, opd.code, direction)
    owner = {"opd": opd.code, "kind": "opd", "direction": direction}
    packets = value(after, "satupintu_opd_packets_total", **owner) - value(before, "satupintu_opd_packets_total",
                                                                            **owner)
    drops = value(after, "satupintu_opd_drops_total", **owner) - value(before, "satupintu_opd_drops_total", **owner)
    class_drops = sum(value(after, name, **labels) - before[(name, frozenset(labels.items()))]
                      for (name, frozen), _ in after.items() if name == "satupintu_class_drops_total"
                      for labels in [dict(frozen)] if labels["opd"] == opd.code and labels["direction"] == direction)
    print(f"flood of {tried}: {packets:.0f} sent, {drops:.0f} dropped")
    assert drops > 0, "the flood did not overflow the leaf: the test proves nothing"
    assert packets + drops == tried
    assert class_drops == drops


def test_counters_only_grow_and_label_sets_are_the_plans(testbed: dict) -> None:
    first = scrape(testbed["url"])
    send(testbed["ports"]["download"], frame(UPSTREAM_IP, "198.51.100.7", 0), 50, gap_s=0.001)  # unclassified
    second = scrape(testbed["url"])
    counters = [key for key in first if key[0].startswith("satupintu_") and key[0].endswith("_total")]
    assert counters and all(second[key] >= first[key] for key in counters)
    assert value(second, "satupintu_opd_packets_total", opd="unclassified", kind="unclassified",
                 direction="download") - value(first, "satupintu_opd_packets_total", opd="unclassified",
                                               kind="unclassified", direction="download") == 50

    policy = testbed["loaded"].policy
    owners = {(opd.code, "opd") for opd in policy.opds} | {(pool.code, "wifi") for pool in policy.public_wifi} | \
        {("unclassified", "unclassified")}
    directions = ("download", "upload")
    expected_owner = {(code, kind, direction) for code, kind in owners for direction in directions}
    expected_class = {(opd.code, "opd", direction, klass.name) for opd in policy.opds for direction in directions
                      for klass in policy.classes}
    for series in (first, second):
        names = {name for name, _ in series}
        for name in names:
            label_sets = [dict(labels) for sample, labels in series if sample == name]
            if name.startswith("satupintu_opd_"):
                assert {(x["opd"], x["kind"], x["direction"]) for x in label_sets} == expected_owner, name
                assert len(label_sets) == len(expected_owner), name
            elif name.startswith("satupintu_class_"):
                assert {(x["opd"], x["kind"], x["direction"], x["class"]) for x in label_sets} == expected_class
                assert len(label_sets) == len(expected_class), name
            elif name.startswith("satupintu_uplink_"):
                assert {(x["direction"], x["port"]) for x in label_sets} == \
                    {(direction, port) for direction, port in testbed["ports"].items()}, name
    assert set(first) == set(second), "a scrape added or lost series"


def test_guarantee_and_ceiling_gauges_are_the_compiled_plan_and_the_policy_times_scale(testbed: dict) -> None:
    series = scrape(testbed["url"])
    loaded, topology = testbed["loaded"], testbed["topology"]
    policy = loaded.policy
    window = next(dict(labels)["window"] for name, labels in series if name == "satupintu_policy_info")
    assert value(series, "satupintu_scale") == SCALE
    state = compile_state(policy, topology, window=window, scale=SCALE, policy_hash=loaded.sha256)
    codes = {owner.id: owner.code for owner in (*policy.opds, *policy.public_wifi)}
    kinds = {opd.id: "opd" for opd in policy.opds} | {pool.id: "wifi" for pool in policy.public_wifi}
    checked = 0
    for plan in state.queues:
        direction = plan.direction.value
        assert value(series, "satupintu_uplink_capacity_bps", direction=direction, port=plan.port) == \
            plan.capacity_bps == round(getattr(policy.backbone, direction) * SCALE)
        for klass in plan.classes:
            if klass.class_id or klass.minor == ROOT_MINOR or klass.owner_id == 0:
                continue
            labels = {"opd": codes[klass.owner_id], "kind": kinds[klass.owner_id], "direction": direction}
            assert value(series, "satupintu_opd_guaranteed_bps", **labels) == klass.rate_bps, labels
            assert value(series, "satupintu_opd_ceiling_bps", **labels) == klass.ceil_bps, labels
            checked += 1
    assert checked == 2 * len(codes)
    allocations = resolve_allocations(policy, window)
    for opd in policy.opds:
        for direction in ("download", "upload"):
            guaranteed, ceiling = allocations[opd.id][direction]
            labels = {"opd": opd.code, "kind": "opd", "direction": direction}
            assert value(series, "satupintu_opd_guaranteed_bps", **labels) == round(guaranteed * SCALE)
            assert value(series, "satupintu_opd_ceiling_bps", **labels) == round(ceiling * SCALE)


class _NoSwitches:
    """The flow side of an Enforcer with no switch attached (the exporter then reports none)."""

    def __init__(self) -> None:
        self.plans: dict[int, SwitchPlan] = {}

    def set_desired(self, plans: dict[int, SwitchPlan]) -> None:
        self.plans = plans


def test_fast_text_equals_prometheus_client_rendering_of_the_same_collector(testbed: dict) -> None:
    """Metrics.exposition() writes the text itself (speed); it must say exactly what the
    registry would. Same trees as the daemon's (applying the same plan changes nothing)."""
    shaper = TcShaper()
    enforcer = Enforcer(testbed["policy_file"], testbed["topology"], _NoSwitches(), shaper, scale=SCALE)
    assert enforcer.reload("test")
    assert all(entry.get("classes_added", 0) == 0 for entry in enforcer.status.queues_applied.values())
    metrics = Metrics()
    metrics.attach(enforcer, None, shaper, testbed["topology"])

    def samples(text: str) -> tuple[dict, set]:
        families = list(text_string_to_metric_families(text))
        values = {(s.name, frozenset(s.labels.items())): s.value for f in families for s in f.samples
                  if s.name.startswith("satupintu_") and s.name != "satupintu_collect_duration_seconds"}
        return values, {(f.name, f.type, f.documentation) for f in families}

    fast = samples(metrics.exposition().decode())
    reference = samples(generate_latest(metrics.registry).decode())
    assert len(fast[0]) > 100
    assert fast == reference


def test_read_counters_agrees_with_read_stats(testbed: dict) -> None:
    port = testbed["ports"]["download"]
    full, fast = read_stats(port), read_counters(port)
    assert set(full) == set(fast) and len(fast) > 10
    fields = ("bytes", "packets", "drops", "overlimits", "backlog_bytes", "qlen", "lends", "borrows")
    assert any(full[minor].bytes for minor in full), "no traffic yet: the comparison proves little"
    for minor, stats in full.items():
        assert tuple(getattr(stats, name) for name in fields) == tuple(getattr(fast[minor], name) for name in fields)


def test_status_reads_the_daemon_without_privileges(testbed: dict) -> None:
    """`satupintu status` needs only HTTP: it runs with every capability dropped (no CAP_NET_ADMIN
    to read tc itself) against the root daemon. (Not as `nobody`: a CI clone may sit under /root.)"""
    result = subprocess.run(
        ["setpriv", "--bounding-set=-all", "--inh-caps=-all", "--no-new-privs", sys.executable, "-m",
         "satupintu.cli", "status", "--once", "--json", "--interval", "0.3", "--metrics-url", testbed["url"]],
        capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    document = json.loads(result.stdout)
    policy = testbed["loaded"].policy
    assert {row["code"] for row in document["opds"] if row["kind"] == "opd"} == {opd.code for opd in policy.opds}
    assert document["policy"]["sha256"] == testbed["loaded"].sha256 and document["policy"]["scale"] == SCALE
    assert {row["port"] for row in document["uplinks"]} == set(testbed["ports"].values())
