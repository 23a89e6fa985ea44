"""IPv6 classification on the HTB tree: compiled plans applied to a real kernel.

Two namespaces joined by a veth with ULA addresses (fd00::/8, DAD off with `nodad`), HTB on
the sender's egress, as in tests/test_tc_driver.py: OPD sources are /128 secondaries of the
sender inside the OPD's IPv6 prefix. Rates are checked with bounded iperf3 -6 runs and
compared as L2 bytes (HTB counts 1514-byte frames carrying 1428 bytes of TCP payload:
1500 - 40 IPv6 - 20 TCP - 12 timestamps). Plans come from the compiler, so the rules are the
ones a policy produces. Everything created here is named after this process and removed in
teardown. Kernel tests carry the `netns` marker.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from dataclasses import replace

import pytest
import yaml

from satupintu.compile.plan import DEFAULT_IPV6_HASH_BYTE, Direction, QueuePlan, U32Rule, leaf_minor, owner_minor
from satupintu.compile.prefixes import network
from satupintu.compile.queues import CompileError, ipv6_hash_byte
from satupintu.compile.state import compile_state
from satupintu.drivers.tc import (
    PlanError,
    TcShaper,
    _decode_rule_sel,
    _in_place_changes,
    _ipv6_hash_key,
    _link_sel,
    _rule_sel,
    read_stats,
)
from satupintu.policy.load import load_policy_text
from satupintu.reconcile.state import state_diff_lines
from satupintu.topology import star_topology
from test_tc_driver import _iperf as _iperf_flows
from test_tc_driver import _run, veth_pair

PID = os.getpid()
NS_A, NS_B = f"sp6-{PID}-a", f"sp6-{PID}-b"
IF_A, IF_B = f"sp6{PID}a", f"sp6{PID}b"  # at most 15 characters
NET_A, NET_B = "fd00:70::1", "fd00:70::2"
SRC_A, SRC_B, SRC_C = "fd00:71::10", "fd00:72:5::10", "fd00:73::10"
PREFIX_A, PREFIX_B, PREFIX_C, PREFIX_WIFI = "fd00:71::/48", "fd00:72:5::/64", "fd00:73::/48", "fd01::/24"

M = 1_000_000
CAPACITY = 20 * M
L2_PER_GOODPUT = 1514 / 1428  # Ethernet frame / IPv6 TCP payload with timestamps at MTU 1500
EF_TOS = 46 << 2

# HTB minors (compiled): OPD A = 8 (9 realtime, 10 default), B = 16 (17, 18), C = 24 (25, 26)
A, A_RT, A_DEF = owner_minor(1), leaf_minor(1, 1), leaf_minor(1, 2)
B, B_RT, B_DEF = owner_minor(2), leaf_minor(2, 1), leaf_minor(2, 2)
C, C_RT, C_DEF = owner_minor(3), leaf_minor(3, 1), leaf_minor(3, 2)
UNCLASSIFIED = 2
A_GUARANTEE, B_GUARANTEE, B_CEILING = 12 * M, 6 * M, 10 * M


def _document(with_c: bool = True, a_ipv4: str = "10.71.0.0/16", ipv6: bool = True) -> dict:
    def opd(ident: int, code: str, prefixes: list[str], guaranteed: str, ceiling: str) -> dict:
        rates = {"guaranteed": guaranteed, "ceiling": ceiling}
        return {"id": ident, "code": code, "name": f"OPD {code}", "prefixes": prefixes,
                "download": rates, "upload": rates}

    v6 = (lambda prefix: [prefix]) if ipv6 else (lambda prefix: [])
    opds = [opd(1, "OPDA", [a_ipv4, *v6(PREFIX_A)], "12Mbps", "20Mbps"),
            opd(2, "OPDB", ["10.72.5.0/24", *v6(PREFIX_B)], "6Mbps", "10Mbps")]
    if with_c:
        opds.append(opd(3, "OPDC", [PREFIX_C] if ipv6 else ["10.73.0.0/16"], "1Mbps", "5Mbps"))
    return {
        "version": 1, "name": "IPv6 tc test", "backbone": {"download": "20Mbps", "upload": "20Mbps"},
        "classes": [{"id": 1, "name": "realtime", "dscp": "EF", "priority": 0, "share_percent": 20},
                    {"id": 2, "name": "default", "dscp": "BE", "priority": 2, "share_percent": 80}],
        "opds": opds,
        "public_wifi": [{"id": 900, "code": "WIFI", "name": "Wi-Fi", "prefixes": ["10.200.0.0/16", *v6(PREFIX_WIFI)],
                         "floor": {"download": "500kbps", "upload": "500kbps"}}],
    }


def _compile(document: dict):
    policy = load_policy_text(yaml.safe_dump(document, sort_keys=False), "p.yaml").policy
    owners = [owner.id for owner in (*policy.opds, *policy.public_wifi)]
    return compile_state(policy, star_topology(owners))


def _plan(port: str = IF_A, direction: Direction = Direction.UPLOAD, **changes) -> QueuePlan:
    state = _compile(_document(**changes))
    return replace(next(plan for plan in state.queues if plan.direction is direction), port=port)


@pytest.fixture(scope="module")
def veth() -> Iterator[None]:
    """Sender NS_A (OPD IPv6 sources as /128 secondaries) -- veth -- receiver NS_B."""
    with veth_pair((NS_A, NS_B), (IF_A, IF_B), (f"{NET_A}/64", f"{NET_B}/64"), [SRC_A, SRC_B, SRC_C],
                   [PREFIX_A, PREFIX_B, PREFIX_C]):
        yield


def _iperf(flows: list[tuple[str, int | None]], seconds: int, reverse: bool = False) -> list[float]:
    """Concurrent IPv6 TCP flows (source address, traffic class) from NS_A to NS_B; L2 bit/s each."""
    return _iperf_flows(flows, seconds, reverse, namespaces=(NS_A, NS_B), server=NET_B,
                        l2_per_goodput=L2_PER_GOODPUT)


def _filters(protocol: str) -> str:
    return _run("tc", "filter", "show", "dev", IF_A, "protocol", protocol, ns=NS_A).stdout


def _handles(protocol: str) -> list[str]:
    return re.findall(r"fh (\S+)", _filters(protocol))


def _grew(before: dict, after: dict, minors: tuple[int, ...], field: str = "bytes") -> dict[int, int]:
    return {minor: getattr(after[minor], field) - getattr(before[minor], field) for minor in minors}


# ---------------------------------------------------------------- kernel: rates and classification


@pytest.mark.netns
def test_ipv6_flow_is_held_to_its_opd_ceiling_and_counted_in_its_class(veth: None) -> None:
    TcShaper().apply(_plan(), netns=NS_A)
    before = read_stats(IF_A, netns=NS_A)
    [rate] = _iperf([(SRC_B, None)], seconds=4)
    after = read_stats(IF_A, netns=NS_A)
    grew = _grew(before, after, (B, B_DEF, B_RT, A, UNCLASSIFIED))
    print(f"\nOPD B over IPv6 alone: {rate / M:.2f} Mbit/s L2 (ceiling {B_CEILING / M:.0f}); bytes per class {grew}")
    assert 0.95 * B_CEILING <= rate <= 1.05 * B_CEILING
    assert grew[B_DEF] > 0.9 * B_CEILING / 8 * 4 and grew[B] >= grew[B_DEF]
    assert grew[UNCLASSIFIED] < 10_000 and grew[A] < 10_000  # not unclassified, not another OPD


@pytest.mark.netns
def test_two_ipv6_opds_under_contention_get_their_guarantees(veth: None) -> None:
    TcShaper().apply(_plan(), netns=NS_A)
    rate_a, rate_b = _iperf([(SRC_A, None), (SRC_B, None)], seconds=4)
    print(f"\nIPv6: A {rate_a / M:.2f} Mbit/s (guarantee {A_GUARANTEE / M:.0f}), "
          f"B {rate_b / M:.2f} Mbit/s (guarantee {B_GUARANTEE / M:.0f}), L2")
    assert rate_a >= 0.95 * A_GUARANTEE and rate_b >= 0.95 * B_GUARANTEE
    assert rate_a + rate_b <= 1.05 * CAPACITY


@pytest.mark.netns
def test_ipv6_dscp_ef_lands_in_the_realtime_leaf(veth: None) -> None:
    TcShaper().apply(_plan(), netns=NS_A)
    before = read_stats(IF_A, netns=NS_A)
    _iperf([(SRC_A, EF_TOS), (SRC_B, EF_TOS)], seconds=2)
    after = read_stats(IF_A, netns=NS_A)
    grew = _grew(before, after, (A_RT, A_DEF, B_RT, B_DEF, UNCLASSIFIED))
    print(f"\nIPv6 bytes per leaf with traffic class 0xb8: {grew}")
    assert grew[A_RT] > 1_000_000 and grew[B_RT] > 500_000
    # only iperf3's unmarked control connection may use the default leaves
    assert grew[A_DEF] < grew[A_RT] / 50 and grew[B_DEF] < grew[B_RT] / 50
    assert grew[UNCLASSIFIED] < 10_000


@pytest.mark.netns
def test_pure_ipv6_tcp_acks_go_to_the_urgent_leaf_and_data_does_not(veth: None) -> None:
    TcShaper().apply(_plan(), netns=NS_A)
    before = read_stats(IF_A, netns=NS_A)
    _iperf([(SRC_A, None)], seconds=2, reverse=True)  # NS_B sends data; NS_A's ACKs leave through IF_A
    acks = read_stats(IF_A, netns=NS_A)
    _iperf([(SRC_A, None)], seconds=2)  # NS_A sends data: full-size segments stay in the default leaf
    data = read_stats(IF_A, netns=NS_A)
    ack_packets = _grew(before, acks, (A_RT, A_DEF, UNCLASSIFIED), "packets")
    data_bytes = _grew(acks, data, (A_RT, A_DEF))
    print(f"\nIPv6 ACK packets per leaf: {ack_packets}; data bytes per leaf: {data_bytes}")
    assert ack_packets[A_RT] > 1000 and ack_packets[A_DEF] < ack_packets[A_RT] / 20
    assert ack_packets[UNCLASSIFIED] < ack_packets[A_RT] / 20
    assert data_bytes[A_DEF] > 1_000_000 and data_bytes[A_RT] < data_bytes[A_DEF] / 50


# ---------------------------------------------------------------- kernel: reconcile


@pytest.mark.netns
def test_both_classifiers_reconcile_independently(veth: None) -> None:
    _run("tc", "qdisc", "replace", "dev", IF_A, "root", "tbf", "rate", "1mbit", "burst", "10k", "latency", "50ms",
         ns=NS_A)  # start from a foreign root
    shaper = TcShaper()
    plan = _plan()
    ipv6_rules = [rule for rule in plan.rules if rule.ipv6]
    assert plan.ipv6_hash_byte == 3 and len(ipv6_rules) == 1 + 3 * 3  # Wi-Fi: 1; A, B, C: ACK, EF, default
    first = shaper.apply(plan, netns=NS_A)
    assert first.rebuilt and first.filters_added == len(plan.rules) + 2 + 2  # + a table and a link per family
    again = shaper.apply(plan, netns=NS_A)
    assert (again.changes, again.requests) == (0, 0)  # neither classifier is foreign to the other
    assert TcShaper().apply(plan, netns=NS_A).requests == 0  # read back by a fresh shaper too
    v6 = _filters("ipv6")
    assert "pref 2 u32" in v6 and "fh 600: ht divisor 256" in v6 and "link 600:" in v6
    assert "hash mask 000000ff at 8" in v6  # byte 3 of the source address
    ef_a = re.search(r"fh 600:71:2 .*flowid 1:9\b.*\n((?:\s+match .*\n)+)", v6)
    assert ef_a is not None, v6
    assert ef_a.group(1).split() == ["match", "fd000071/ffffffff", "at", "8", "match", "00000000/ffff0000", "at", "12",
                                     "match", "0b800000/0fc00000", "at", "0"]
    assert re.search(r"fh 600:71:1 .*flowid 1:9\b.*\n\s+match fd000071/ffffffff at 8\n\s+match 00000000/ffff0000"
                     r" at 12\n\s+match 00000600/ff80ff00 at 4\n\s+match 00100000/00ff0000 at 52", v6), v6
    assert re.search(r"fh 80\d::8 .*flowid 1:1c20\b.*\n\s+match fd010000/ffffff00 at 8", v6), v6  # Wi-Fi, root list
    v4_before, v6_before = _handles("ip"), _handles("ipv6")
    assert len(v4_before) == len(set(v4_before)) > 0

    # Removing an IPv6-only OPD removes its classes and exactly its IPv6 filters.
    removed = shaper.apply(_plan(with_c=False), netns=NS_A)
    assert (removed.classes_removed, removed.filters_removed, removed.filters_added, removed.filters_changed) == (
        3, 3, 0, 0)
    assert removed.requests == removed.changes == 6
    assert _handles("ip") == v4_before
    assert _handles("ipv6") == [handle for handle in v6_before if not handle.startswith("600:73:")]
    assert shaper.apply(_plan(with_c=False), netns=NS_A).requests == 0

    # An IPv4-only change leaves the IPv6 classifier untouched.
    v6_text = _filters("ipv6")
    narrowed = shaper.apply(_plan(with_c=False, a_ipv4="10.71.0.0/17"), netns=NS_A)
    assert (narrowed.filters_changed, narrowed.filters_added, narrowed.filters_removed) == (3, 0, 0)
    assert narrowed.requests == 6  # a new selector is a new node: delete and add A's three IPv4 rules
    assert _filters("ipv6") == v6_text
    assert "0a470000/ffff8000 at 12" in _filters("ip")

    # Dropping every IPv6 prefix deletes the IPv6 rules; the (now empty) table and link stay, since
    # a deleted prio's hash table would outlive it and refuse the next "add". IPv4 stays as it is.
    v4_text = _filters("ip")
    dropped = shaper.apply(_plan(with_c=False, a_ipv4="10.71.0.0/17", ipv6=False), netns=NS_A)
    assert (dropped.filters_removed, dropped.classes_changed, dropped.requests) == (7, 0, 7), dropped
    assert _filters("ip") == v4_text
    assert _handles("ipv6") == [handle for handle in _handles("ipv6") if not re.match(r"600:[0-9a-f]+:", handle)]
    assert "link 600:" in _filters("ipv6")
    assert shaper.apply(_plan(with_c=False, a_ipv4="10.71.0.0/17", ipv6=False), netns=NS_A).requests == 0
    assert TcShaper().apply(_plan(with_c=False, a_ipv4="10.71.0.0/17", ipv6=False), netns=NS_A).requests == 0
    back = shaper.apply(plan, netns=NS_A)
    assert (back.classes_added, back.filters_added) == (3, len(ipv6_rules))  # C comes back, all IPv6 rules too
    assert TcShaper().apply(plan, netns=NS_A).requests == 0


@pytest.mark.netns
def test_a_new_ipv6_hash_byte_moves_rules_and_the_link(veth: None) -> None:
    shaper = TcShaper()
    plan = _plan()
    shaper.apply(plan, netns=NS_A)
    document = _document()
    # /56s of one /48: byte 6 spreads them
    for opd, prefix in zip(document["opds"], ("fd00:70:1:100::/56", "fd00:70:1:200::/56", "fd00:70:1:300::/56"),
                           strict=True):
        opd["prefixes"] = [p for p in opd["prefixes"] if ":" not in p] + [prefix]
    moved = replace(next(p for p in _compile(document).queues if p.direction is Direction.UPLOAD), port=IF_A)
    assert moved.ipv6_hash_byte == 6
    report = shaper.apply(moved, netns=NS_A)
    assert report.requests > 0 and "hash mask 0000ff00 at 12" in _filters("ipv6")
    assert TcShaper().apply(moved, netns=NS_A).requests == 0
    assert shaper.apply(plan, netns=NS_A).requests > 0 and TcShaper().apply(plan, netns=NS_A).requests == 0


@pytest.mark.netns
def test_download_ipv6_rules_match_the_destination(veth: None) -> None:
    plan = _plan(port=IF_B, direction=Direction.DOWNLOAD)
    shaper = TcShaper()
    assert shaper.apply(plan, netns=NS_B).rebuilt
    assert shaper.apply(plan, netns=NS_B).requests == 0
    filters = _run("tc", "filter", "show", "dev", IF_B, "protocol", "ipv6", ns=NS_B).stdout
    assert "hash mask 000000ff at 24" in filters and "match fd000071/ffffffff at 24" in filters
    _run("tc", "qdisc", "del", "dev", IF_B, "root", ns=NS_B)


@pytest.mark.netns
def test_unverified_ipv6_rule_change_is_structural(veth: None) -> None:
    shaper = TcShaper()
    shaper.apply(_plan(), netns=NS_A)
    report = shaper.apply(_plan(with_c=False), netns=NS_A, verify=False)
    assert report.read_back and report.fallback == "classes added or removed"
    document = _document(with_c=False)
    document["opds"][1]["prefixes"] = ["10.72.5.0/24", "fd00:72:6::/64"]
    retargeted = replace(next(p for p in _compile(document).queues if p.direction is Direction.UPLOAD), port=IF_A)
    report = shaper.apply(retargeted, netns=NS_A, verify=False)
    assert report.read_back and report.fallback == "classifier rules changed" and report.filters_changed == 3


# ---------------------------------------------------------------- pure: compiler and selectors


def test_hash_byte_is_the_covered_byte_that_spreads_the_prefixes_best() -> None:
    def nets(prefixes: list[str]):
        return [network(prefix) for prefix in prefixes]

    per_48 = [f"2001:db8:{index:x}::/48" for index in range(1, 501)]
    assert ipv6_hash_byte(nets(per_48)) == 5  # byte 4 holds only 0x00/0x01
    per_56 = [f"2001:db8:7:{index:x}00::/56" for index in range(256)]
    assert ipv6_hash_byte(nets(per_56)) == 6
    per_64 = [f"2001:db8:7:{index:x}::/64" for index in range(1, 300)]
    assert ipv6_hash_byte(nets(per_64)) == 7
    # A short prefix goes to the root list; it does not drag the byte down to one it covers.
    assert ipv6_hash_byte(nets([*per_48, "2001:db9::/32"])) == 5
    assert ipv6_hash_byte([]) == DEFAULT_IPV6_HASH_BYTE
    assert ipv6_hash_byte(list(reversed(nets(per_48)))) == 5


def _big_document(count: int, reverse: bool = False) -> dict:
    opds = [{"id": index, "code": f"OPD{index}", "name": f"OPD {index}",
             "prefixes": [f"10.{index // 256}.{index % 256}.0/24", f"2001:db8:{index:x}::/48"],
             "download": {"guaranteed": "1Mbps", "ceiling": "10Mbps"},
             "upload": {"guaranteed": "1Mbps", "ceiling": "10Mbps"}} for index in range(1, count + 1)]
    document = _document(with_c=False)
    document.update(backbone={"download": "10Gbps", "upload": "10Gbps"}, opds=opds[::-1] if reverse else opds)
    return document


def test_ipv6_rules_mirror_ipv4_with_stable_nodes_and_bounded_lists() -> None:
    state = _compile(_big_document(500))
    shuffled = _compile(_big_document(500, reverse=True))
    assert state.queues == shuffled.queues  # file order changes nothing, hash byte included
    plan = state.queues[0]
    assert plan.ipv6_hash_byte == 5
    ipv4 = [rule for rule in plan.rules if not rule.ipv6]
    ipv6 = [rule for rule in plan.rules if rule.ipv6]
    assert len(ipv6) == len(ipv4)  # the same rule set per prefix: ACK, EF, catch-all; the Wi-Fi pool: one
    assert {(r.owner_id, r.dscp, r.tcp_ack_only, r.flow_minor) for r in ipv6} == {
        (r.owner_id, r.dscp, r.tcp_ack_only, r.flow_minor) for r in ipv4}
    lists: dict[int | None, set[str]] = {}
    for rule in ipv6:
        lists.setdefault(rule.bucket, set()).add(rule.prefix)
    assert lists.pop(None) == {PREFIX_WIFI}  # only the /24 walks the root list
    assert max(len(prefixes) for prefixes in lists.values()) <= 2  # 500 OPDs: at most 2 prefixes per bucket
    opd_7 = sorted((rule.bucket, rule.node, rule.tcp_ack_only, rule.dscp) for rule in ipv6 if rule.owner_id == 7)
    assert opd_7 == [(7, 1, True, None), (7, 2, False, 46), (7, 8, False, None)]  # 2001:db8:7::/48: byte 5 = 7
    keys = [rule.key for rule in plan.rules]
    assert len(keys) == len(set(keys))


def test_ipv4_rules_do_not_change_when_ipv6_prefixes_are_added() -> None:
    with_v6 = _compile(_document()).queues[0]
    without = _compile(_document(ipv6=False)).queues[0]
    assert [r for r in with_v6.rules if not r.ipv6 and r.owner_id in (1, 2)] == [
        r for r in without.rules if r.owner_id in (1, 2)]


def test_too_many_ipv6_prefixes_in_one_list_is_a_compile_error(monkeypatch: pytest.MonkeyPatch) -> None:
    # 510 prefixes per list cannot be reached with real prefixes while any byte spreads them:
    # lower the limit to 1 so the two /24 Wi-Fi prefixes (root list) exceed it, IPv4 lists not.
    monkeypatch.setattr("satupintu.compile.queues.MAX_NODES_PER_LIST", 1)
    document = _document()
    document["public_wifi"][0]["prefixes"] = [PREFIX_WIFI, "fd02::/24"]
    with pytest.raises(CompileError, match="2 IPv6 prefixes share u32 list None"):
        _compile(document)


def test_policy_diff_shows_ipv6_rule_changes() -> None:
    lines = state_diff_lines(_compile(_document()), _compile(_document(with_c=False)))
    assert "gw-eth2 (upload): IPv6 u32 rules +0 ~0 -3" in lines
    assert not any(line.startswith("gw-eth2 (upload): u32 rules") for line in lines)
    lines = state_diff_lines(_compile(_document()), _compile(_document(a_ipv4="10.71.0.0/17")))
    assert "gw-eth2 (upload): u32 rules +0 ~3 -0" in lines and not any("IPv6" in line for line in lines)


def test_ipv6_selectors_round_trip() -> None:
    for prefix, dscp, ack, direction in (("fd00:71::/48", 46, False, Direction.UPLOAD),
                                         ("fd00:72:5::/64", None, True, Direction.DOWNLOAD),
                                         ("::/0", None, False, Direction.UPLOAD),
                                         ("2001:db8::1/128", 10, False, Direction.DOWNLOAD),
                                         ("fd01::/24", None, False, Direction.UPLOAD)):
        sel = _rule_sel(prefix, dscp, direction, ack)
        assert _decode_rule_sel(sel, direction, ipv6=True) == (prefix, dscp, ack)
        assert _decode_rule_sel(sel, direction) is None  # never read as an IPv4 rule
        other = Direction.DOWNLOAD if direction is Direction.UPLOAD else Direction.UPLOAD
        assert _decode_rule_sel(sel, other, ipv6=True) is None  # a source key read as a destination rule
    assert _decode_rule_sel(_rule_sel("10.71.0.0/16", None, Direction.UPLOAD), Direction.UPLOAD, ipv6=True) is None
    assert _ipv6_hash_key(Direction.UPLOAD, 3) == (8, 0x000000FF)
    assert _ipv6_hash_key(Direction.UPLOAD, 5) == (12, 0x00FF0000)
    assert _ipv6_hash_key(Direction.DOWNLOAD, 15) == (36, 0x000000FF)
    assert _link_sel(Direction.UPLOAD, True, 5) != _link_sel(Direction.UPLOAD)


def test_in_place_path_treats_ipv6_rule_or_hash_byte_changes_as_structural() -> None:
    plan = _plan()
    assert _in_place_changes(plan, plan) == ([], [])
    retargeted = replace(plan, rules=tuple(replace(r, flow_minor=A_RT) if r.ipv6 and r.flow_minor == A_DEF else r
                                           for r in plan.rules))
    assert _in_place_changes(plan, retargeted) == "classifier rules changed"
    assert _in_place_changes(plan, replace(plan, ipv6_hash_byte=4)) == "classifier rules changed"


def test_invalid_ipv6_rules_are_refused_before_touching_the_kernel() -> None:
    plan = _plan(port="sp6-never-exists")
    rule = next(r for r in plan.rules if r.ipv6 and r.bucket is not None)
    wrong_bucket = replace(plan, rules=(*plan.rules, replace(rule, bucket=rule.bucket + 1, node=100)))
    not_flagged = replace(plan, rules=(*plan.rules, replace(rule, ipv6=False, node=100)))
    ipv4_flagged = replace(plan, rules=(*plan.rules, U32Rule("10.80.0.0/16", None, A_DEF, None, 100, 1, ipv6=True)))
    too_short = replace(plan, rules=(*plan.rules, replace(rule, prefix="fd00::/16", node=100)))
    bad_byte = replace(plan, ipv6_hash_byte=16)
    duplicate = replace(plan, rules=(*plan.rules, replace(rule, dscp=10)))
    for bad in (wrong_bucket, not_flagged, ipv4_flagged, too_short, bad_byte, duplicate):
        with pytest.raises(PlanError):
            TcShaper().apply(bad)
    # the same (bucket, node) in the other family is not a duplicate (A's IPv4 catch-all, the IPv6 Wi-Fi rule)
    assert {(r.bucket, r.node) for r in plan.rules if r.ipv6} & {(r.bucket, r.node) for r in plan.rules if not r.ipv6}
