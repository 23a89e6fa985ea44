"""A full HTB leaf must never refuse a packet to the sender.

Open vSwitch's userspace datapath sends through AF_PACKET with sendmmsg. When the egress
qdisc refuses a packet (a full bfifo answers NET_XMIT_DROP), the send fails with ENOBUFS
and OVS drops the rest of its batch: packets of other OPDs and of the realtime class,
lost with no counter anywhere (measured in the 50-OPD emulation under full load: 2-4% of
realtime probe packets). Reproduced here without OVS: the gateway's real download tree
(jateng-50 on star-50, scale 1/100) on a veth in a private namespace, and a raw AF_PACKET
socket that floods one OPD far beyond its ceiling.
"""

from __future__ import annotations

import json
import socket
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from satupintu.compile.state import compile_state
from satupintu.drivers.tc import TcShaper, probe_leaf_qdisc
from satupintu.policy.load import load_policy
from satupintu.topology import load_topology

REPO = Path(__file__).resolve().parents[1]
SETWAN_HOST = "10.33.10.10"  # inside SETWAN's 10.33.10.0/24 (jateng-50)
FRAMES = 2000
FRAME_BYTES = 1400


def _ip(ns: str, *argv: str) -> None:
    subprocess.run(["ip", "-n", ns, *argv], check=True, capture_output=True, timeout=15)


def _frame(destination: str) -> bytes:
    """Ethernet + IPv4 + UDP to `destination`, DSCP 0 (the OPD's default class)."""
    payload = b"\x00" * (FRAME_BYTES - 14 - 20 - 8)
    udp = struct.pack("!HHHH", 40000, 9, 8 + len(payload), 0)
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp) + len(payload), 0, 0, 64, socket.IPPROTO_UDP, 0,
                     socket.inet_aton("100.64.0.1"), socket.inet_aton(destination))
    return b"\x02\x53\x50\x00\x00\x02" + b"\x02\x53\x50\x00\x00\x01" + b"\x08\x00" + ip + udp + payload


def _flood(ns: str, port: str) -> dict[str, int]:
    """Send FRAMES frames out of `port` as fast as the socket takes them; count refusals."""
    script = f"""
import errno, json, socket, sys
frame = bytes.fromhex(sys.argv[1])
sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 16 << 20)
sock.bind(({port!r}, 0))
counts = {{"sent": 0, "enobufs": 0, "eagain": 0}}
for _ in range({FRAMES}):
    try:
        sock.send(frame, socket.MSG_DONTWAIT)
        counts["sent"] += 1
    except OSError as error:
        counts["enobufs" if error.errno == errno.ENOBUFS else "eagain"] += 1
print(json.dumps(counts))
"""
    out = subprocess.run(["ip", "netns", "exec", ns, sys.executable, "-c", script, _frame(SETWAN_HOST).hex()],
                         check=True, capture_output=True, text=True, timeout=60).stdout
    return json.loads(out)


def _queue_drops(ns: str, port: str) -> int:
    """Drops counted by the root HTB qdisc (its leaves' drops included)."""
    out = subprocess.run(["tc", "-n", ns, "-s", "qdisc", "show", "dev", port, "root"], check=True,
                         capture_output=True, text=True).stdout
    return int(out.split("(dropped ")[1].split(",")[0])


@pytest.mark.netns
def test_a_full_leaf_drops_inside_the_queue_and_never_fails_the_sender(netns_factory) -> None:
    ns = netns_factory("leaf")
    _ip(ns, "link", "add", "gw-eth1", "type", "veth", "peer", "name", "peer-eth1")
    _ip(ns, "link", "set", "gw-eth1", "up")
    _ip(ns, "link", "set", "peer-eth1", "up")
    policy = load_policy(REPO / "policies" / "jateng-50.yaml").policy
    state = compile_state(policy, load_topology(REPO / "topologies" / "star-50.yaml"), scale=0.01)
    download = next(plan for plan in state.queues if plan.port == "gw-eth1")

    report = TcShaper().apply(download, netns=ns)
    counts = _flood(ns, "gw-eth1")
    drops = _queue_drops(ns, "gw-eth1")
    print(f"leaf {report.leaf_qdisc}: {counts}, {drops} dropped in the queues")
    assert report.leaf_qdisc == probe_leaf_qdisc() != "bfifo"
    assert drops >= FRAMES // 2, "the burst did not overflow the OPD's leaf: the test proves nothing"
    assert counts["enobufs"] == 0 and counts["eagain"] == 0, counts
    assert counts["sent"] == FRAMES

    # Why: the same burst into bfifo leaves gets refusals, which OVS turns into silent loss of other packets.
    TcShaper(leaf_qdisc="bfifo").apply(download, netns=ns)
    refused = _flood(ns, "gw-eth1")
    assert refused["enobufs"] > 0, refused
