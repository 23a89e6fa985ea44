"""tc driver against a real kernel: two namespaces joined by a veth, shaped on the sender's egress.

Rates are checked with iperf3 (bounded runs, namespace addresses only). HTB counts L2
bytes, iperf3 reports TCP goodput: goodput is scaled by frame/payload before comparing.
Everything created here is named after this process and removed in teardown.
Kernel tests carry the `netns` marker: tests/conftest.py skips them locally (fails them
under CI=true) when root or `ip netns` is missing.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import replace

import pytest

from satupintu.compile.plan import Direction, HtbClass, QueuePlan, U32Rule
from satupintu.drivers.tc import (
    PlanError,
    TcError,
    TcShaper,
    _decode_rule_sel,
    _in_place_changes,
    _rule_sel,
    _xmittime,
    probe_leaf_qdisc,
    read_stats,
)

PID = os.getpid()
NS_A, NS_B = f"sptc-{PID}-a", f"sptc-{PID}-b"
IF_A, IF_B = f"sptc{PID}a", f"sptc{PID}b"  # at most 15 characters
NET_ADDR_A, NET_ADDR_B = "10.70.0.1", "10.70.0.2"
SRC_A, SRC_B = "10.71.0.10", "10.72.5.10"  # inside OPD A's /16 (root list) and OPD B's /24 (bucket 5)

M = 1_000_000
CAPACITY = 20 * M
L2_PER_GOODPUT = 1514 / 1448  # Ethernet frame / TCP payload with timestamps at MTU 1500
EF_TOS = 46 << 2

# HTB minors: 1 root, 2 unclassified, 8 = OPD A (9 realtime, 10 default), 16 = OPD B (17, 18)
A, A_RT, A_DEF, B, B_RT, B_DEF = 8, 9, 10, 16, 17, 18


def _burst(rate_bps: int) -> int:
    return max(2 * 1514, rate_bps // 8 // 200)  # 5 ms of the rate, as the compiler does


def _htb(minor: int, parent: int | None, rate: int, ceil: int, prio: int, guarantee: int, label: str,
         leaf: bool = True) -> HtbClass:
    quantum = max(1000, round(guarantee / CAPACITY * 400_000))
    return HtbClass(minor, parent, rate, ceil, _burst(rate), _burst(ceil), quantum, prio, 0, 0, leaf, label)


def _plan(port: str = IF_A, direction: Direction = Direction.UPLOAD, b_ceil: int = CAPACITY,
          with_b: bool = True, with_ack: bool = False) -> QueuePlan:
    classes = [
        _htb(1, None, CAPACITY, CAPACITY, 0, CAPACITY, "root", leaf=False),
        _htb(2, 1, 8_000, CAPACITY, 7, 8_000, "unclassified"),
        _htb(A, 1, 15 * M, CAPACITY, 0, 15 * M, "A", leaf=False),
        _htb(A_RT, A, 3 * M, CAPACITY, 0, 15 * M, "A/realtime"),
        _htb(A_DEF, A, 12 * M, CAPACITY, 2, 15 * M, "A/default"),
    ]
    rules = [
        U32Rule("10.71.0.0/16", 46, A_RT, None, 1, 1),
        U32Rule("10.71.0.0/16", None, A_DEF, None, 8, 1),
    ]
    if with_ack:
        rules.append(U32Rule("10.71.0.0/16", None, A_RT, None, 2, 1, tcp_ack_only=True))
    if with_b:
        classes += [
            _htb(B, 1, 5 * M, b_ceil, 0, 5 * M, "B", leaf=False),
            _htb(B_RT, B, 1 * M, CAPACITY, 0, 5 * M, "B/realtime"),
            _htb(B_DEF, B, 4 * M, CAPACITY, 2, 5 * M, "B/default"),
        ]
        rules += [
            U32Rule("10.72.5.0/24", 46, B_RT, 5, 1, 2),
            U32Rule("10.72.5.0/24", None, B_DEF, 5, 8, 2),
        ]
    return QueuePlan("gw", port, direction, CAPACITY, 2, tuple(classes), tuple(rules))


def _run(*args: str, ns: str | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
    cmd = (["ip", "netns", "exec", ns] if ns else []) + list(args)
    return subprocess.run(cmd, check=check, capture_output=True, text=True, timeout=30)


@contextlib.contextmanager
def veth_pair(namespaces: tuple[str, str], interfaces: tuple[str, str], addresses: tuple[str, str],
              sources: list[str], routes: list[str]) -> Iterator[None]:
    """Sender namespace (OPD `sources` as host-route secondaries) -- veth -- receiver namespace
    (`routes` to the OPD prefixes via the veth); `addresses` with their prefix length, IPv4 or
    IPv6 (DAD off). Also used by tests/test_tc_ipv6.py."""
    ipv6 = ":" in addresses[0]
    family, nodad, host = (["-6"], ["nodad"], 128) if ipv6 else ([], [], 32)
    created: list[str] = []
    try:
        for ns in namespaces:
            _run("ip", "netns", "add", ns)
            created.append(ns)
        _run("ip", "link", "add", interfaces[0], "netns", namespaces[0], "type", "veth", "peer", "name",
             interfaces[1], "netns", namespaces[1])
        for ns, ifname, address in zip(namespaces, interfaces, addresses, strict=True):
            _run("ip", *family, "addr", "add", address, "dev", ifname, *nodad, ns=ns)
            _run("ip", "link", "set", ifname, "up", ns=ns)
            _run("ip", "link", "set", "lo", "up", ns=ns)
            if shutil.which("ethtool"):  # HTB must see MTU-sized packets, not 64 kB GSO blobs
                _run("ethtool", "-K", ifname, "tx", "off", "rx", "off", "tso", "off", "gso", "off", "gro", "off",
                     ns=ns, check=False)
        for source in sources:
            _run("ip", *family, "addr", "add", f"{source}/{host}", "dev", interfaces[0], *nodad, ns=namespaces[0])
        for prefix in routes:
            _run("ip", *family, "route", "add", prefix, "dev", interfaces[1], ns=namespaces[1])
        yield
    finally:
        failed = [f"{ns}: {result.stderr.strip()}" for ns in created
                  if (result := _run("ip", "netns", "del", ns, check=False)).returncode != 0]
        if failed:
            raise RuntimeError("could not delete test namespaces: " + "; ".join(failed))


@pytest.fixture(scope="module")
def veth() -> Iterator[None]:
    """Sender NS_A (OPD source addresses as secondaries) -- veth -- receiver NS_B."""
    with veth_pair((NS_A, NS_B), (IF_A, IF_B), (f"{NET_ADDR_A}/24", f"{NET_ADDR_B}/24"), [SRC_A, SRC_B],
                   ["10.71.0.0/16", "10.72.5.0/24"]):
        yield


def _iperf(flows: list[tuple[str, int | None]], seconds: int, reverse: bool = False, *,
           namespaces: tuple[str, str] = (NS_A, NS_B), server: str = NET_ADDR_B,
           l2_per_goodput: float = L2_PER_GOODPUT) -> list[float]:
    """Concurrent TCP flows (source address, tos) from the sender namespace to `server` in the
    receiver's; L2-equivalent bit/s each (goodput * l2_per_goodput). IPv6 when `server` is."""
    if shutil.which("iperf3") is None:
        if os.environ.get("CI", "").strip().lower() in {"true", "1", "yes"}:
            pytest.fail("CI=true, so not skipping: iperf3 not on PATH (run `sudo make setup`)", pytrace=False)
        pytest.skip("needs iperf3 (run `sudo make setup`)")
    sender, receiver = namespaces
    listen = f"[{server}]" if ":" in server else server
    ports = [5201 + index for index in range(len(flows))]
    servers: list[subprocess.Popen[bytes]] = [
        subprocess.Popen(["ip", "netns", "exec", receiver, "iperf3", "-s", "-1", "-B", server, "-p", str(port)],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for port in ports]
    clients: list[subprocess.Popen[str]] = []
    try:
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            listening = _run("ss", "-Hltn", ns=receiver).stdout
            if all(f"{listen}:{port}" in listening for port in ports):
                break
            time.sleep(0.05)
        for (source, tos), port in zip(flows, ports, strict=True):
            cmd = ["ip", "netns", "exec", sender, "iperf3", "-c", server, "-p", str(port), "-B", source,
                   "-t", str(seconds), "-O", "1", "-J"]
            if tos is not None:
                cmd += ["-S", str(tos)]
            if reverse:
                cmd.append("-R")
            clients.append(subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
        rates = []
        for client in clients:
            out, err = client.communicate(timeout=seconds + 15)
            assert client.returncode == 0, err or out
            goodput = json.loads(out)["end"]["sum_received"]["bits_per_second"]
            rates.append(goodput * l2_per_goodput)
        return rates
    finally:
        processes: list[subprocess.Popen[str] | subprocess.Popen[bytes]] = [*clients, *servers]
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait()


def _qdiscs() -> dict[str, tuple[str, int]]:
    """handle -> (kind, bytes sent) from `tc -s qdisc show`, to prove qdiscs were not recreated."""
    out = _run("tc", "-s", "qdisc", "show", "dev", IF_A, ns=NS_A).stdout
    found = {}
    for match in re.finditer(r"qdisc (\S+) (\S+) .*?\n\s*Sent (\d+) bytes", out):
        found[match.group(2)] = (match.group(1), int(match.group(3)))
    return found


@pytest.mark.netns
def test_probe_leaf_qdisc_matches_what_tc_can_create(veth: None) -> None:
    kind = probe_leaf_qdisc()
    assert kind == probe_leaf_qdisc() and kind in ("fq_codel", "pfifo_head_drop")
    can = _run("tc", "qdisc", "add", "dev", "lo", "root", "fq_codel", ns=NS_A, check=False).returncode == 0
    _run("tc", "qdisc", "del", "dev", "lo", "root", ns=NS_A, check=False)
    assert kind == ("fq_codel" if can else "pfifo_head_drop")


@pytest.mark.netns
def test_fresh_port_gets_full_tree_and_reapply_sends_nothing(veth: None) -> None:
    _run("tc", "qdisc", "replace", "dev", IF_A, "root", "tbf", "rate", "1mbit", "burst", "10k", "latency", "50ms",
         ns=NS_A)  # a foreign root: must be replaced, not tuned
    shaper = TcShaper()
    first = shaper.apply(_plan(), netns=NS_A)
    assert first.rebuilt and first.classes_added == 8 and first.qdiscs_added == 1 + 5
    assert first.filters_added == 4 + 2  # four rules, the hash table and the link to it (no IPv6 rules: no prio 2)
    assert "protocol ipv6" not in _run("tc", "filter", "show", "dev", IF_A, ns=NS_A).stdout
    classes = _run("tc", "class", "show", "dev", IF_A, ns=NS_A).stdout
    assert sorted(int(minor, 16) for minor in re.findall(r"class htb 1:([0-9a-f]+)", classes)) == [
        1, 2, A, A_RT, A_DEF, B, B_RT, B_DEF]
    filters = _run("tc", "filter", "show", "dev", IF_A, ns=NS_A).stdout
    assert "fh 100: ht divisor 256" in filters and "link 100:" in filters and "hash mask 0000ff00 at 12" in filters
    assert re.search(r"fh 100:5:1 .*flowid 1:11", filters)  # B realtime (minor 17 = 0x11) in bucket 5
    assert re.search(r"fh 800::1 .*flowid 1:9\b.*\n\s+match 0a470000/ffff0000 at 12\s+match 00b80000/00fc0000 at 0",
                     filters)
    again = shaper.apply(_plan(), netns=NS_A)
    assert again.changes == 0 and again.requests == 0 and not again.rebuilt


@pytest.mark.netns
def test_single_class_reaches_ceiling_and_stats_count_it(veth: None) -> None:
    TcShaper().apply(_plan(), netns=NS_A)
    before = read_stats(IF_A, netns=NS_A)
    [rate] = _iperf([(SRC_A, None)], seconds=4)
    after = read_stats(IF_A, netns=NS_A)
    print(f"\nA alone: {rate / M:.2f} Mbit/s L2 (ceil {CAPACITY / M:.0f})")
    assert 0.95 * CAPACITY <= rate <= 1.05 * CAPACITY
    carried = after[A_DEF].bytes - before[A_DEF].bytes
    assert carried > 0.9 * CAPACITY / 8 * 4  # at least the measured seconds, at nearly full rate
    assert after[A_DEF].packets > before[A_DEF].packets and after[A].bytes - before[A].bytes >= carried
    assert after[B_DEF].bytes - before[B_DEF].bytes < 10_000  # nothing leaked into OPD B
    assert after[A_DEF].borrows > before[A_DEF].borrows  # above its 12 Mbit/s rate: borrowed from A/root


@pytest.mark.netns
def test_two_saturating_classes_split_by_guarantee(veth: None) -> None:
    TcShaper().apply(_plan(), netns=NS_A)
    rate_a, rate_b = _iperf([(SRC_A, None), (SRC_B, None)], seconds=4)
    print(f"\nA {rate_a / M:.2f} Mbit/s (guarantee 15), B {rate_b / M:.2f} Mbit/s (guarantee 5), L2")
    assert rate_a >= 0.95 * 15 * M and rate_b >= 0.95 * 5 * M
    assert rate_a + rate_b <= 1.05 * CAPACITY


@pytest.mark.netns
def test_ceil_change_is_one_hitless_class_change(veth: None) -> None:
    shaper = TcShaper()
    shaper.apply(_plan(), netns=NS_A)
    _iperf([(SRC_B, None)], seconds=1)  # give the leaf queues some counters to lose
    qdiscs_before = _qdiscs()
    stats_before = read_stats(IF_A, netns=NS_A)
    report = shaper.apply(_plan(b_ceil=10 * M), netns=NS_A)
    assert (report.classes_changed, report.requests, report.changes) == (1, 1, 1)
    qdiscs_after = _qdiscs()
    assert qdiscs_after.keys() == qdiscs_before.keys()
    for handle, (kind, sent) in qdiscs_before.items():
        assert qdiscs_after[handle][0] == kind and qdiscs_after[handle][1] >= sent  # same qdisc, counters kept
    stats_after = read_stats(IF_A, netns=NS_A)
    assert stats_after[B].ceil_bps == 10 * M and stats_after[B_DEF].bytes >= stats_before[B_DEF].bytes
    [rate] = _iperf([(SRC_B, None)], seconds=3)
    print(f"\nB alone after ceil change: {rate / M:.2f} Mbit/s L2 (ceil 10)")
    assert 0.95 * 10 * M <= rate <= 1.05 * 10 * M
    assert shaper.apply(_plan(b_ceil=10 * M), netns=NS_A).requests == 0


@pytest.mark.netns
def test_dscp_steers_to_realtime_leaves(veth: None) -> None:
    TcShaper().apply(_plan(), netns=NS_A)
    before = read_stats(IF_A, netns=NS_A)
    _iperf([(SRC_A, EF_TOS), (SRC_B, EF_TOS)], seconds=2)
    after = read_stats(IF_A, netns=NS_A)
    grew = {minor: after[minor].bytes - before[minor].bytes for minor in (A_RT, A_DEF, B_RT, B_DEF, 2)}
    print(f"\nbytes per leaf with tos 0xb8: {grew}")
    assert grew[A_RT] > 1_000_000 and grew[B_RT] > 500_000
    # only iperf3's untagged control connection may use the default leaves
    assert grew[A_DEF] < grew[A_RT] / 50 and grew[B_DEF] < grew[B_RT] / 50
    assert grew[2] < 10_000


@pytest.mark.netns
def test_pure_tcp_acks_go_to_the_urgent_leaf_and_data_does_not(veth: None) -> None:
    TcShaper().apply(_plan(with_ack=True), netns=NS_A)
    assert TcShaper().apply(_plan(with_ack=True), netns=NS_A).requests == 0  # read back equal, ACK key included
    before = read_stats(IF_A, netns=NS_A)
    _iperf([(SRC_A, None)], seconds=2, reverse=True)  # NS_B sends data; NS_A's ACKs leave through IF_A
    acks = read_stats(IF_A, netns=NS_A)
    _iperf([(SRC_A, None)], seconds=2)  # NS_A sends data: full-size segments stay in the default leaf
    data = read_stats(IF_A, netns=NS_A)
    ack_packets = {minor: acks[minor].packets - before[minor].packets for minor in (A_RT, A_DEF)}
    data_bytes = {minor: data[minor].bytes - acks[minor].bytes for minor in (A_RT, A_DEF)}
    print(f"\nACK packets per leaf: {ack_packets}; data bytes per leaf: {data_bytes}")
    assert ack_packets[A_RT] > 1000 and ack_packets[A_DEF] < ack_packets[A_RT] / 20
    assert data_bytes[A_DEF] > 1_000_000 and data_bytes[A_RT] < data_bytes[A_DEF] / 50


@pytest.mark.netns
def test_remove_readd_and_retarget_send_only_the_difference(veth: None) -> None:
    shaper = TcShaper()
    shaper.apply(_plan(), netns=NS_A)
    removed = shaper.apply(_plan(with_b=False), netns=NS_A)
    assert (removed.classes_removed, removed.filters_removed, removed.changes, removed.requests) == (3, 2, 5, 5)
    classes = _run("tc", "class", "show", "dev", IF_A, ns=NS_A).stdout
    assert "1:10 " not in classes and "1:11 " not in classes and "1:12 " not in classes
    readded = shaper.apply(_plan(), netns=NS_A)
    assert (readded.classes_added, readded.qdiscs_added, readded.filters_added) == (3, 2, 2)
    assert readded.changes == readded.requests == 7
    plan = _plan()
    retargeted = replace(plan, rules=tuple(
        replace(rule, flow_minor=A_RT) if (rule.bucket, rule.node) == (None, 8) else rule for rule in plan.rules))
    report = shaper.apply(retargeted, netns=NS_A)
    assert (report.filters_changed, report.requests) == (1, 1)  # classid changed in place, no delete/add
    assert re.search(r"fh 800::8 .*flowid 1:9\b", _run("tc", "filter", "show", "dev", IF_A, ns=NS_A).stdout)
    assert shaper.apply(plan, netns=NS_A).requests == 1


@pytest.mark.netns
def test_download_plan_matches_destination_address(veth: None) -> None:
    report = TcShaper().apply(_plan(port=IF_B, direction=Direction.DOWNLOAD), netns=NS_B)
    assert report.rebuilt and report.classes_added == 8
    filters = _run("tc", "filter", "show", "dev", IF_B, ns=NS_B).stdout
    assert "match 0a470000/ffff0000 at 16" in filters and "hash mask 0000ff00 at 16" in filters
    _run("tc", "qdisc", "del", "dev", IF_B, "root", ns=NS_B)


@pytest.mark.netns
def test_missing_interface_is_a_clear_error(veth: None) -> None:
    with pytest.raises(TcError, match="not found in netns"):
        read_stats("sptc-nonexistent", netns=NS_A)


@pytest.mark.netns
def test_reparenting_moves_subtree_and_its_filters(veth: None) -> None:
    shaper = TcShaper()
    shaper.apply(_plan(), netns=NS_A)
    plan = _plan()
    moved = replace(plan, classes=tuple(replace(k, parent_minor=A) if k.minor == B else k for k in plan.classes))
    report = shaper.apply(moved, netns=NS_A)
    # HTB cannot change a parent in place: B and its leaves go and come back, their two filters with them
    assert (report.classes_changed, report.filters_changed, report.qdiscs_added) == (3, 2, 2)
    assert "class htb 1:10 parent 1:8 " in _run("tc", "class", "show", "dev", IF_A, ns=NS_A).stdout
    assert "flowid 1:11" in _run("tc", "filter", "show", "dev", IF_A, ns=NS_A).stdout
    assert shaper.apply(moved, netns=NS_A).requests == 0
    assert shaper.apply(plan, netns=NS_A).classes_changed == 3


@pytest.mark.netns
def test_new_default_class_rebuilds_because_htb_cannot_change_it(veth: None) -> None:
    shaper = TcShaper()
    shaper.apply(_plan(), netns=NS_A)
    report = shaper.apply(replace(_plan(), default_minor=A_DEF), netns=NS_A)
    assert report.rebuilt and report.classes_added == 8
    assert "default 0xa" in _run("tc", "qdisc", "show", "dev", IF_A, ns=NS_A).stdout
    assert shaper.apply(replace(_plan(), default_minor=A_DEF), netns=NS_A).requests == 0
    assert shaper.apply(_plan(), netns=NS_A).rebuilt


def _with_leaf_ceil(plan: QueuePlan, minor: int, ceil: int) -> QueuePlan:
    return replace(plan, classes=tuple(replace(k, ceil_bps=ceil, cburst_bytes=_burst(ceil)) if k.minor == minor
                                       else k for k in plan.classes))


@pytest.mark.netns
def test_unverified_rate_change_is_sent_without_reading_the_port_back(veth: None) -> None:
    shaper = TcShaper()
    shaper.apply(_plan(), netns=NS_A)
    inner = shaper.apply(_plan(b_ceil=10 * M), netns=NS_A, verify=False)
    assert (inner.read_back, inner.dumps, inner.requests, inner.classes_changed, inner.fallback) == (
        False, 0, 1, 1, "")
    assert read_stats(IF_A, netns=NS_A)[B].ceil_bps == 10 * M
    # A leaf's ceiling also sizes its queue: the class and its leaf qdisc change, nothing else.
    leaf = shaper.apply(_with_leaf_ceil(_plan(b_ceil=10 * M), B_DEF, 8 * M), netns=NS_A, verify=False)
    assert (leaf.read_back, leaf.dumps, leaf.classes_changed, leaf.qdiscs_changed, leaf.requests) == (
        False, 0, 1, 1, 2)
    # The kernel now holds exactly that plan: reading it back finds nothing to send.
    check = TcShaper().apply(_with_leaf_ceil(_plan(b_ceil=10 * M), B_DEF, 8 * M), netns=NS_A)
    assert (check.read_back, check.requests, check.rebuilt) == (True, 0, False)


@pytest.mark.netns
def test_unverified_structural_change_or_unknown_port_is_read_back(veth: None) -> None:
    shaper = TcShaper()
    first = shaper.apply(_plan(), netns=NS_A, verify=False)  # never verified by this shaper
    assert first.read_back and first.fallback == "port not verified yet"
    removed = shaper.apply(_plan(with_b=False), netns=NS_A, verify=False)
    assert removed.read_back and removed.fallback == "classes added or removed"
    assert (removed.classes_removed, removed.filters_removed) == (3, 2)
    assert TcShaper().apply(_plan(with_b=False), netns=NS_A).requests == 0


@pytest.mark.netns
def test_unverified_change_after_drift_falls_back_to_a_full_repair(veth: None) -> None:
    shaper = TcShaper()
    shaper.apply(_plan(), netns=NS_A)
    _run("tc", "qdisc", "del", "dev", IF_A, "root", ns=NS_A)  # behind the shaper's back
    report = shaper.apply(_plan(b_ceil=10 * M), netns=NS_A, verify=False)
    assert report.read_back and report.rebuilt and report.fallback.startswith("refused: ")
    assert read_stats(IF_A, netns=NS_A)[B].ceil_bps == 10 * M
    assert TcShaper().apply(_plan(b_ceil=10 * M), netns=NS_A).requests == 0


# ---------------------------------------------------------------- pure (no kernel)


def test_selector_round_trips_and_foreign_selectors_are_not_decoded() -> None:
    for prefix, dscp, direction in (("10.71.0.0/16", 46, Direction.UPLOAD), ("10.72.5.0/24", None,
                                    Direction.DOWNLOAD), ("0.0.0.0/0", 0, Direction.UPLOAD)):
        assert _decode_rule_sel(_rule_sel(prefix, dscp, direction), direction) == (prefix, dscp, False)
    ack = _rule_sel("10.71.0.0/16", None, Direction.DOWNLOAD, tcp_ack_only=True)
    assert _decode_rule_sel(ack, Direction.DOWNLOAD) == ("10.71.0.0/16", None, True)
    upload = _rule_sel("10.71.0.0/16", None, Direction.UPLOAD)
    assert _decode_rule_sel(upload, Direction.DOWNLOAD) is None  # src key read as a dst rule: replace it
    assert _decode_rule_sel(upload[:-4], Direction.UPLOAD) is None


def test_burst_ticks_match_iproute2() -> None:
    assert _xmittime(20 * M // 8, 12_500) == 78_125  # tc: "rate 20Mbit burst 12500b" -> buffer 78125


def test_invalid_plans_are_refused_before_touching_the_kernel() -> None:
    plan = _plan(port="sptc-never-exists")
    bad_bucket = replace(plan, rules=(*plan.rules, U32Rule("10.72.6.0/24", None, B_DEF, 5, 20, 2)))
    bad_parent = replace(plan, classes=(*plan.classes, _htb(40, 39, M, M, 0, M, "orphan")))
    inner_default = replace(plan, default_minor=A)
    link_node = replace(plan, rules=(*plan.rules, U32Rule("10.73.0.0/16", None, B_DEF, None, 0xFFF, 3)))
    for bad in (bad_bucket, bad_parent, inner_default, link_node):
        with pytest.raises(PlanError):
            TcShaper().apply(bad)


def test_in_place_changes_only_for_values_htb_changes_in_place() -> None:
    plan = _plan()
    assert _in_place_changes(plan, plan) == ([], [])
    classes, leaves = _in_place_changes(plan, _with_leaf_ceil(plan, B_DEF, 8 * M))
    assert [k.minor for k in classes] == [B_DEF] and [k.minor for k in leaves] == [B_DEF]
    classes, leaves = _in_place_changes(plan, _plan(b_ceil=10 * M))
    assert [k.minor for k in classes] == [B] and leaves == []  # an inner class has no leaf queue
    moved = replace(plan, classes=tuple(replace(k, parent_minor=A) if k.minor == B else k for k in plan.classes))
    retargeted = replace(plan, rules=tuple(replace(r, flow_minor=A_RT) if r.node == 8 else r for r in plan.rules))
    assert _in_place_changes(plan, moved) == "classes added, removed or moved"
    assert _in_place_changes(plan, _plan(with_b=False)) == "classes added or removed"
    assert _in_place_changes(plan, retargeted) == "classifier rules changed"
    assert _in_place_changes(plan, replace(plan, default_minor=A_DEF)) == "direction or default class changed"
