"""Issue 5 item 4 in the emulation: anti-spoofing, the DSCP trust boundary and inter-OPD policy,
with packets crafted by scapy inside the OPD hosts and captured by scapy at the receiving host.

Every packet carries a tag ("SPSEC:<case>:<n>") so the capture counts exactly what each case
sent, whatever else the hosts' kernels say meanwhile. This file is also the agent that runs in
the hosts' network namespaces: `python tests/test_security_emulation.py sniff|send ...`.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import emulation_process

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / "tests" / "data" / "security"
SWITCH_PREFIX, OPENFLOW_PORT, METRICS = "s", 6814, "127.0.0.1:9814"
COUNT = 40  # packets per case
TAG = b"SPSEC:"
EF, AF31, CS1, BE = 46, 26, 8, 0
ARP_TARGET = "100.64.0.77"  # on the upstream's subnet, owned by no one: forwarded toward the upstream
FAR_V6 = "2001:db8:ffff::1"  # an internet address: forwarded to the upstream port
AGENT_MAX_S = 120  # an agent stops by itself after this long


# ---------------------------------------------------------------- agent (runs inside a host)


def _summary(packet, own_mac: str) -> dict | None:
    """What a test needs of one captured frame; None for our own frames and untagged traffic."""
    from scapy.all import ARP, IP, TCP, UDP, Ether, IPv6

    if Ether not in packet or packet[Ether].src == own_mac:
        return None
    if ARP in packet:
        return {"kind": "arp", "psrc": packet[ARP].psrc, "pdst": packet[ARP].pdst, "op": int(packet[ARP].op)}
    if IP in packet:
        layer3 = packet[IP]
    elif IPv6 in packet:
        layer3 = packet[IPv6]
    else:
        return None
    if not isinstance(layer3.payload, UDP | TCP):  # e.g. an ICMP error quoting a tagged packet
        return None
    payload = bytes(layer3.payload.payload)
    if not payload.startswith(TAG):
        return None
    dscp = (layer3.tos if IP in packet else layer3.tc) >> 2
    return {"kind": "ip", "case": payload.split(b":")[1].decode(), "src": layer3.src, "dst": layer3.dst,
            "dscp": dscp}


def agent_sniff(interface: str) -> None:
    """Print {"mac": ...} once capturing, then (on SIGTERM) the captured summaries as JSON."""
    from scapy.all import AsyncSniffer, get_if_hwaddr

    own_mac = get_if_hwaddr(interface)
    started, stop = threading.Event(), threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    sniffer = AsyncSniffer(iface=interface, store=True, started_callback=started.set)
    sniffer.start()
    if not started.wait(20):
        raise SystemExit("sniffer did not start")
    print(json.dumps({"mac": own_mac}), flush=True)
    stop.wait(AGENT_MAX_S)
    time.sleep(0.3)  # frames still in flight
    packets = sniffer.stop() or []
    print(json.dumps([item for item in (_summary(packet, own_mac) for packet in packets) if item]), flush=True)


def agent_send(interface: str, spec: str) -> None:
    """Send the cases of `spec` (JSON: dst_mac, cases[{case, l3, src, dst, proto, dport, sport, dscp}])."""
    from scapy.all import ARP, IP, TCP, UDP, Ether, IPv6, Raw, get_if_hwaddr, sendp

    plan = json.loads(spec)
    own_mac = get_if_hwaddr(interface)
    frames = []
    for case in plan["cases"]:
        for number in range(COUNT):
            if case["l3"] == "arp":
                frames.append(Ether(src=own_mac, dst="ff:ff:ff:ff:ff:ff")
                              / ARP(op=1, hwsrc=own_mac, psrc=case["src"], pdst=case["dst"]))
                continue
            tos = case.get("dscp", 0) << 2
            layer3 = (IP(src=case["src"], dst=case["dst"], tos=tos) if case["l3"] == "ip"
                      else IPv6(src=case["src"], dst=case["dst"], tc=tos))
            ports = {"sport": case.get("sport", 40000 + number), "dport": case.get("dport", 9000)}
            layer4 = TCP(flags="PA", **ports) if case.get("proto") == "tcp" else UDP(**ports)
            frames.append(Ether(src=own_mac, dst=plan["dst_mac"]) / layer3 / layer4
                          / Raw(TAG + f"{case['case']}:{number}:".encode() + b"x" * 64))
    sendp(frames, iface=interface, inter=0.002, verbose=False)


# ---------------------------------------------------------------- test side


def _env() -> dict[str, str]:
    return dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO / "controller"),
                                                                    os.environ.get("PYTHONPATH")])))


def _in_host(ready: dict, host: str, *argv: str) -> list[str]:
    from satupintu.emulation.traffic import in_host

    return in_host(int(ready["hosts"][host]["pid"]), [sys.executable, __file__, *argv])


class Capture:
    """A scapy sniffer on `host`'s interface until stop(); `mac` is that interface's address."""

    def __init__(self, ready: dict, host: str) -> None:
        self.host = host
        self.process = subprocess.Popen(_in_host(ready, host, "sniff", f"{host}-eth0"), stdout=subprocess.PIPE,
                                        stderr=subprocess.PIPE, text=True, env=_env())

    def wait_ready(self) -> str:
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        assert line, f"sniffer in {self.host} failed: {self.process.stderr.read() if self.process.stderr else ''}"
        self.mac = json.loads(line)["mac"]
        return self.mac

    def stop(self) -> list[dict]:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        out, err = self.process.communicate(timeout=60)
        lines = out.strip().splitlines()
        assert self.process.returncode == 0 and len(lines) == 1, f"sniffer in {self.host}: {err[-2000:]}"
        return json.loads(lines[0])


def capturing(ready: dict, hosts: list[str]) -> dict[str, Capture]:
    captures = {host: Capture(ready, host) for host in hosts}  # start together: scapy takes ~1 s to import
    for capture in captures.values():
        capture.wait_ready()
    return captures


def send(ready: dict, host: str, dst_mac: str, cases: list[dict]) -> None:
    spec = json.dumps({"dst_mac": dst_mac, "cases": cases})
    result = subprocess.run(_in_host(ready, host, "send", f"{host}-eth0", spec), capture_output=True, text=True,
                            timeout=60, env=_env())
    assert result.returncode == 0, result.stderr[-2000:]


def stop_all(captures: dict[str, Capture]) -> dict[str, list[dict]]:
    return {host: capture.stop() for host, capture in captures.items()}


def received(captured: list[dict]) -> Counter[str]:
    return Counter(item["case"] for item in captured if item["kind"] == "ip")


def dscp_seen(captured: list[dict], case: str) -> set[int]:
    return {item["dscp"] for item in captured if item["kind"] == "ip" and item["case"] == case}


def arp_received(captured: list[dict], psrc: str) -> int:
    return sum(1 for item in captured if item["kind"] == "arp" and item["psrc"] == psrc and item["pdst"] == ARP_TARGET)


def htb_packets(interface: str) -> dict[int, int]:
    """Packets sent per HTB class (minor, as a number) of `interface`, read with the tc CLI."""
    out = subprocess.run(["tc", "-s", "class", "show", "dev", interface], capture_output=True, text=True,
                         timeout=15, check=True).stdout
    return {int(minor, 16): int(packets)
            for minor, packets in re.findall(r"class htb 1:([0-9a-f]+) .*?\n Sent \d+ bytes (\d+) pkt", out)}


def admit_drops(bridge: str, port: int) -> int:
    """Packets the anti-spoofing drop flow of `port` has counted (table 0, priority 100)."""
    out = subprocess.run(["ovs-ofctl", "-O", "OpenFlow13", "dump-flows", bridge, f"table=0,in_port={port}"],
                         capture_output=True, text=True, timeout=15, check=True).stdout
    line = next(line for line in out.splitlines() if "priority=100," in line and "actions=drop" in line)
    return int(re.search(r"n_packets=(\d+)", line).group(1))  # type: ignore[union-attr]


@pytest.fixture(scope="module")
def emulation(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    workdir = tmp_path_factory.mktemp("security")
    policy = workdir / "policy.yaml"
    policy.write_text((DATA / "policy.yaml").read_text())
    with emulation_process(workdir, "--policy", str(policy), "--topology", str(DATA / "topology.yaml"),
                           "--scale", "0.1", "--switch-prefix", SWITCH_PREFIX, "--openflow-port", str(OPENFLOW_PORT),
                           "--metrics-listen", METRICS, timeout_s=120, env=_env()) as ready:
        ready["policy_copy"] = str(policy)
        yield ready


def _opd1_genuine() -> dict:
    return {"case": "genuine", "l3": "ip", "src": "10.1.1.10", "dst": "100.64.0.1"}


pytestmark = pytest.mark.emulation


def test_forged_sources_never_leave_the_opd_port(emulation: dict) -> None:
    forged_v4 = {"other-opd": "10.1.2.10", "opd-on-edge": "10.1.3.10", "wifi": "10.200.0.10",
                 "upstream": "100.64.0.2", "foreign": "198.18.0.1"}
    forged_v6 = {"v6-other-opd": "2001:db8:2::a", "v6-foreign": "2001:db8:ffff::99", "v6-link-local": "fe80::99"}
    cases = [_opd1_genuine(), {"case": "v6-genuine", "l3": "ipv6", "src": "2001:db8:1::a", "dst": FAR_V6}]
    cases += [{"case": name, "l3": "ip", "src": src, "dst": "100.64.0.1"} for name, src in forged_v4.items()]
    cases += [{"case": name, "l3": "ipv6", "src": src, "dst": FAR_V6} for name, src in forged_v6.items()]
    cases += [{"case": "arp-genuine", "l3": "arp", "src": "10.1.1.10", "dst": ARP_TARGET},
              {"case": "arp-other-opd", "l3": "arp", "src": "10.1.2.10", "dst": ARP_TARGET}]
    # From OPD 3, on the second access switch `edge`: OPD 1's source.
    edge_cases = [{"case": "edge-genuine", "l3": "ip", "src": "10.1.3.10", "dst": "100.64.0.1"},
                     {"case": "edge-forged-opd1", "l3": "ip", "src": "10.1.1.10", "dst": "100.64.0.1"}]
    drops_before = admit_drops(f"{SWITCH_PREFIX}core", 1001), admit_drops(f"{SWITCH_PREFIX}edge", 1003)
    captures = capturing(emulation, ["inet"])
    send(emulation, "opd1", captures["inet"].mac, cases)
    send(emulation, "opd3", captures["inet"].mac, edge_cases)
    captured = stop_all(captures)["inet"]
    counts = received(captured)
    forged_total = (len(forged_v4) + len(forged_v6) + 1) * COUNT
    print(f"\nanti-spoofing: sent {forged_total} forged from opd1 and {COUNT} from opd3, received "
          f"{sum(counts[name] for name in (*forged_v4, *forged_v6, 'edge-forged-opd1'))} "
          f"(+{arp_received(captured, '10.1.2.10')} forged ARP); genuine {dict(counts)}")
    assert counts["genuine"] == counts["v6-genuine"] == counts["edge-genuine"] == COUNT, counts
    assert arp_received(captured, "10.1.1.10") == COUNT
    assert {name: counts[name] for name in (*forged_v4, *forged_v6, "edge-forged-opd1")} == \
        dict.fromkeys((*forged_v4, *forged_v6, "edge-forged-opd1"), 0)
    assert arp_received(captured, "10.1.2.10") == 0
    # Dropped by the anti-spoofing flow of the port (not lost somewhere): its counter moved by at
    # least what was forged (the host's own IPv6 link-local chatter lands there too).
    drops_after = admit_drops(f"{SWITCH_PREFIX}core", 1001), admit_drops(f"{SWITCH_PREFIX}edge", 1003)
    assert drops_after[0] - drops_before[0] >= forged_total, (drops_before, drops_after)
    assert drops_after[1] - drops_before[1] >= COUNT


def test_an_opd_cannot_choose_its_own_class(emulation: dict) -> None:
    from satupintu.compile.plan import leaf_minor

    source = {"l3": "ip", "src": "10.1.1.10", "dst": "100.64.0.1"}
    upload = [
        {**source, "case": "bulk-as-ef", "proto": "tcp", "dport": 6881, "dscp": EF},
        {**source, "case": "default-as-ef", "proto": "udp", "dport": 9000, "dscp": EF},
        {**source, "case": "default-as-af31", "proto": "tcp", "dport": 443, "dscp": AF31},
        {**source, "case": "realtime-unmarked", "proto": "udp", "dport": 3478, "dscp": BE},
        {**source, "case": "realtime-ef", "proto": "udp", "dport": 3479, "dscp": EF},
        {"case": "v6-default-as-ef", "l3": "ipv6", "src": "2001:db8:1::a", "dst": FAR_V6, "dscp": EF},
    ]
    download = [  # from the internet: the far side's source port decides
        {"case": "down-bulk-as-ef", "l3": "ip", "src": "100.64.0.1", "dst": "10.1.1.10", "proto": "tcp",
         "sport": 6881, "dport": 50000, "dscp": EF},
        {"case": "down-realtime-unmarked", "l3": "ip", "src": "100.64.0.1", "dst": "10.1.1.10", "proto": "udp",
         "sport": 3478, "dport": 50000, "dscp": BE},
    ]
    upload_port, download_port = f"{SWITCH_PREFIX}gw-eth2", f"{SWITCH_PREFIX}gw-eth1"
    captures = capturing(emulation, ["inet", "opd1"])
    # One direction at a time: the receiver's replies (TCP resets, ICMP errors) cross the other tree.
    up_before = htb_packets(upload_port)
    send(emulation, "opd1", captures["inet"].mac, upload)
    time.sleep(0.5)
    up_after, down_before = htb_packets(upload_port), htb_packets(download_port)
    send(emulation, "inet", captures["opd1"].mac, download)
    time.sleep(0.5)
    down_after = htb_packets(download_port)
    captured = stop_all(captures)
    at_inet, at_opd1 = captured["inet"], captured["opd1"]
    expected = {"bulk-as-ef": CS1, "default-as-ef": BE, "default-as-af31": BE, "realtime-unmarked": EF,
                "realtime-ef": EF, "v6-default-as-ef": BE}
    seen = {case: dscp_seen(at_inet, case) for case in expected}
    print(f"\ntrust boundary: DSCP at the upstream {seen}, received {dict(received(at_inet))}")
    assert received(at_inet) == Counter(dict.fromkeys(expected, COUNT))
    assert seen == {case: {dscp} for case, dscp in expected.items()}
    assert received(at_opd1) == Counter({"down-bulk-as-ef": COUNT, "down-realtime-unmarked": COUNT})
    assert dscp_seen(at_opd1, "down-bulk-as-ef") == {CS1} and dscp_seen(at_opd1, "down-realtime-unmarked") == {EF}

    # HTB classified by the re-marked DSCP: OPD 1's bulk leaf got the bulk packets marked EF,
    # its realtime leaf only the genuine realtime ones; the IPv6 packet re-marked BE is in its
    # default leaf (the IPv6 classifier), not in the unclassified class.
    def delta(before: dict[int, int], after: dict[int, int], class_id: int) -> int:
        minor = leaf_minor(1, class_id)
        return after[minor] - before[minor]

    realtime, default, bulk = 1, 3, 4
    up = {name: delta(up_before, up_after, klass) for name, klass in
          (("realtime", realtime), ("default", default), ("bulk", bulk))}
    down = {name: delta(down_before, down_after, klass) for name, klass in
            (("realtime", realtime), ("bulk", bulk))}
    print(f"HTB packets of OPD 1's leaves: upload {up}, download {down}")
    assert up == {"realtime": 2 * COUNT, "default": 3 * COUNT, "bulk": COUNT}
    assert down == {"realtime": COUNT, "bulk": COUNT}


def _inter_opd_cases() -> list[tuple[str, str, list[dict]]]:
    """(sender, receiver, cases) between owners: same switch, across the trunk, IPv6, Wi-Fi."""
    return [
        ("opd1", "opd2", [{"case": "opd1-opd2", "l3": "ip", "src": "10.1.1.10", "dst": "10.1.2.10"},
                          {"case": "opd1-opd2-v6", "l3": "ipv6", "src": "2001:db8:1::a", "dst": "2001:db8:2::a"}]),
        ("opd3", "opd1", [{"case": "opd3-opd1", "l3": "ip", "src": "10.1.3.10", "dst": "10.1.1.10"}]),
        ("wifi900", "opd2", [{"case": "wifi-opd2", "l3": "ip", "src": "10.200.0.10", "dst": "10.1.2.10"}]),
    ]


def _exchange(ready: dict) -> Counter[str]:
    receivers = sorted({receiver for _, receiver, _ in _inter_opd_cases()} | {"inet"})
    captures = capturing(ready, receivers)
    for sender, receiver, cases in _inter_opd_cases():
        send(ready, sender, captures[receiver].mac, cases)
    send(ready, "opd1", captures["inet"].mac, [_opd1_genuine()])  # the control: opd1 does send
    counts: Counter[str] = Counter()
    for captured in stop_all(captures).values():
        counts.update(received(captured))
    return counts


def _deny_flows(bridge: str) -> int:
    out = subprocess.run(["ovs-ofctl", "-O", "OpenFlow13", "--no-stats", "dump-flows", bridge, "table=2"],
                         capture_output=True, text=True, timeout=15, check=True).stdout
    return sum(1 for line in out.splitlines() if "metadata=0x1/0x3" in line and "actions=drop" in line)


def test_inter_opd_traffic_is_denied_then_allowed_after_a_reload(emulation: dict) -> None:
    names = [case["case"] for _, _, cases in _inter_opd_cases() for case in cases]
    denied = _exchange(emulation)
    print(f"\ninter_opd deny: {dict(denied)}")
    assert denied["genuine"] == COUNT
    assert {name: denied[name] for name in names} == dict.fromkeys(names, 0)

    policy = Path(emulation["policy_copy"])
    policy.write_text(policy.read_text().replace("inter_opd: deny", "inter_opd: allow"))
    result = subprocess.run([sys.executable, "-m", "satupintu.cli", "reload", "--pid-file",
                             emulation["controller_pid_file"], "--status-file", emulation["controller_status_file"]],
                            capture_output=True, text=True, timeout=60, env=_env())
    assert result.returncode == 0, result.stderr
    deadline = time.monotonic() + 30
    bridges = (f"{SWITCH_PREFIX}core", f"{SWITCH_PREFIX}gw", f"{SWITCH_PREFIX}edge")
    while any(_deny_flows(bridge) for bridge in bridges):
        assert time.monotonic() < deadline, "deny flows still installed 30 s after the reload"
        time.sleep(0.2)

    allowed = _exchange(emulation)
    print(f"inter_opd allow: {dict(allowed)}")
    assert {name: allowed[name] for name in [*names, "genuine"]} == dict.fromkeys([*names, "genuine"], COUNT)


if __name__ == "__main__":
    if sys.argv[1:2] == ["sniff"]:
        agent_sniff(sys.argv[2])
    elif sys.argv[1:2] == ["send"]:
        agent_send(sys.argv[2], sys.argv[3])
    else:
        raise SystemExit(f"usage: {sys.argv[0]} sniff IFACE | send IFACE SPEC_JSON")
