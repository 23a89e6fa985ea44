"""Security rules of the compiled OpenFlow pipeline (pure): packets walked through the plan's
tables the way an OpenFlow 1.3 switch does (highest priority match per table, goto, metadata,
set_dscp), for every source an OPD port might forge. The emulation test
(tests/test_security_emulation.py) sends the same kinds of packets through Open vSwitch."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest

from satupintu.compile.flows import ETH_ARP, ETH_IP, ETH_IPV6
from satupintu.compile.plan import FlowSpec, SwitchPlan
from satupintu.compile.state import compile_state
from satupintu.policy.load import load_policy_text
from satupintu.topology import load_topology

DATA = Path(__file__).resolve().parent / "data" / "security"
POLICY_TEXT = (DATA / "policy.yaml").read_text()
TOPOLOGY = load_topology(DATA / "topology.yaml")
EF, CS1, BE = 46, 8, 0
ADDRESS_FIELDS = {"ipv4_src", "ipv4_dst", "ipv6_src", "ipv6_dst", "arp_spa", "arp_tpa"}

Packet = dict[str, object]


def _plans(inter_opd: str = "deny") -> dict[str, SwitchPlan]:
    text = POLICY_TEXT.replace("inter_opd: deny", f"inter_opd: {inter_opd}")
    policy = load_policy_text(text, "security.yaml").policy
    return {plan.name: plan for plan in compile_state(policy, TOPOLOGY, scale=1.0).switches}


def _field_matches(field: str, wanted: object, value: object) -> bool:
    if value is None:
        return False
    if field in ADDRESS_FIELDS:
        address = ipaddress.ip_address(str(value))
        if isinstance(wanted, tuple):
            base, mask = (int(ipaddress.ip_address(part)) for part in wanted)
            return int(address) & mask == base
        return address == ipaddress.ip_address(str(wanted))
    if isinstance(wanted, tuple):  # (value, mask): metadata, masked ports
        base, mask = wanted
        return int(value) & mask == base  # type: ignore[call-overload]
    return value == wanted


def _matches(flow: FlowSpec, packet: Packet) -> bool:
    return all(_field_matches(field, wanted, packet.get(field)) for field, wanted in flow.match)


def walk(plan: SwitchPlan, packet: Packet) -> tuple[str, Packet]:
    """("output:<port>" or "drop", the packet as it leaves) after tables 0, 1, 2."""
    packet = {**packet, "metadata": 0}
    table = 0
    while True:
        candidates = [flow for flow in plan.flows if flow.table == table and _matches(flow, packet)]
        if not candidates:
            return "drop", packet  # table miss (the plan has a priority-0 drop anyway)
        best = max(candidates, key=lambda flow: flow.priority)
        assert sum(1 for flow in candidates if flow.priority == best.priority) == 1, "ambiguous match"
        next_table = None
        for action in best.actions:
            if action[0] == "write_metadata":
                value, mask = action[1], action[2]
                packet["metadata"] = (int(packet["metadata"]) & ~mask) | (value & mask)  # type: ignore[call-overload]
            elif action[0] == "set_dscp":
                packet["dscp"] = action[1]
            elif action[0] == "goto":
                next_table = action[1]
            elif action[0] == "output":
                return f"output:{action[1]}", packet
        if next_table is None:
            return "drop", packet
        table = next_table


def ipv4(in_port: int, src: str, dst: str, proto: int = 17, dport: int = 9000, dscp: int = 0) -> Packet:
    layer4 = {6: "tcp_dst", 17: "udp_dst"}[proto]
    return {"in_port": in_port, "eth_type": ETH_IP, "ipv4_src": src, "ipv4_dst": dst, "ip_proto": proto,
            layer4: dport, "dscp": dscp}


def ipv6(in_port: int, src: str, dst: str, dport: int = 9000, dscp: int = 0) -> Packet:
    return {"in_port": in_port, "eth_type": ETH_IPV6, "ipv6_src": src, "ipv6_dst": dst, "ip_proto": 17,
            "udp_dst": dport, "dscp": dscp}


def arp(in_port: int, spa: str, tpa: str) -> Packet:
    return {"in_port": in_port, "eth_type": ETH_ARP, "arp_spa": spa, "arp_tpa": tpa}


OPD1_PORT, OPD3_PORT, TRUNK, UPSTREAM, EDGE_TRUNK = 1001, 1003, 1, 2, 3  # TRUNK: toward the gateway
INET = "100.64.0.1"

FORGED_FROM_OPD1 = {
    "another OPD": "10.1.2.10",
    "an OPD on another switch": "10.1.3.10",
    "the Wi-Fi pool": "10.200.0.10",
    "the upstream": "100.64.0.2",
    "a foreign prefix": "198.18.0.1",
    "the unspecified address": "0.0.0.0",
}


@pytest.mark.parametrize("who", sorted(FORGED_FROM_OPD1))
def test_forged_ipv4_and_arp_sources_from_an_opd_port_are_dropped(who: str) -> None:
    core = _plans()["core"]
    forged = FORGED_FROM_OPD1[who]
    assert walk(core, ipv4(OPD1_PORT, forged, INET))[0] == "drop"
    assert walk(core, arp(OPD1_PORT, forged, "100.64.0.77"))[0] == "drop"
    assert walk(core, ipv4(OPD1_PORT, "10.1.1.10", INET))[0] == f"output:{TRUNK}"  # the genuine source passes
    assert walk(core, arp(OPD1_PORT, "10.1.1.10", "100.64.0.77"))[0] == f"output:{TRUNK}"


def test_forged_sources_are_dropped_on_every_access_switch() -> None:
    edge = _plans()["edge"]
    assert walk(edge, ipv4(OPD3_PORT, "10.1.1.10", INET))[0] == "drop"
    assert walk(edge, ipv4(OPD3_PORT, "10.1.3.10", INET))[0] == f"output:{TRUNK}"


@pytest.mark.parametrize("forged", ["2001:db8:2::a", "2001:db8:ffff::1", "fe80::1", "::"])
def test_forged_ipv6_sources_are_dropped(forged: str) -> None:
    core = _plans()["core"]
    assert walk(core, ipv6(OPD1_PORT, forged, "2001:db8:ffff::1"))[0] == "drop"
    assert walk(core, ipv6(OPD1_PORT, "2001:db8:1::a", "2001:db8:ffff::1"))[0] == f"output:{TRUNK}"


def test_an_opd_without_ipv6_prefixes_sends_no_ipv6() -> None:
    edge = _plans()["edge"]
    assert walk(edge, ipv6(OPD3_PORT, "2001:db8:3::a", "2001:db8:ffff::1"))[0] == "drop"


@pytest.mark.parametrize(("packet", "dscp"), [
    (ipv4(OPD1_PORT, "10.1.1.10", INET, proto=6, dport=6881, dscp=EF), CS1),  # bulk marked realtime
    (ipv4(OPD1_PORT, "10.1.1.10", INET, proto=17, dport=9000, dscp=EF), BE),  # default marked realtime
    (ipv4(OPD1_PORT, "10.1.1.10", INET, proto=6, dport=443, dscp=26), BE),  # AF31 outside its prefixes
    (ipv4(OPD1_PORT, "10.1.1.10", INET, proto=17, dport=3478, dscp=0), EF),  # realtime, unmarked
    (ipv4(OPD1_PORT, "10.1.1.10", "203.0.113.5", proto=6, dport=443, dscp=0), 26),  # public service
    (ipv6(OPD1_PORT, "2001:db8:1::a", "2001:db8:ffff::1", dport=9000, dscp=EF), BE),
])
def test_the_opd_cannot_choose_its_own_class(packet: Packet, dscp: int) -> None:
    verdict, sent = walk(_plans()["core"], packet)
    assert verdict == f"output:{TRUNK}" and sent["dscp"] == dscp


@pytest.mark.parametrize(("switch", "packet", "where"), [
    ("core", ipv4(OPD1_PORT, "10.1.1.10", "10.1.2.10"), "output:1002"),
    ("core", ipv6(OPD1_PORT, "2001:db8:1::a", "2001:db8:2::a"), "output:1002"),
    ("core", ipv4(OPD1_PORT, "10.1.1.10", "10.200.0.10"), "output:1900"),
    ("core", ipv4(OPD1_PORT, "10.1.1.10", "10.1.3.10"), f"output:{EDGE_TRUNK}"),
    ("edge", ipv4(OPD3_PORT, "10.1.3.10", "10.1.1.10"), f"output:{TRUNK}"),
])
def test_inter_opd_traffic_follows_the_policy(switch: str, packet: Packet, where: str) -> None:
    assert walk(_plans("deny")[switch], packet)[0] == "drop"
    assert walk(_plans("allow")[switch], packet)[0] == where


def test_downloads_still_reach_every_opd_when_inter_opd_is_denied() -> None:
    plans = _plans("deny")
    from_inet = {"in_port": UPSTREAM, "eth_type": ETH_IP, "ipv4_src": INET, "ipv4_dst": "10.1.1.10",
                 "ip_proto": 17, "udp_dst": 9000, "dscp": 0}
    assert walk(plans["gw"], from_inet)[0] == f"output:{TRUNK}"
    assert walk(plans["core"], {**from_inet, "in_port": TRUNK})[0] == f"output:{OPD1_PORT}"
    from_inet_v6 = {"in_port": UPSTREAM, "eth_type": ETH_IPV6, "ipv6_src": "2001:db8:ffff::1",
                    "ipv6_dst": "2001:db8:1::a", "ip_proto": 17, "udp_dst": 9000, "dscp": 0}
    assert walk(plans["gw"], from_inet_v6)[0] == f"output:{TRUNK}"
