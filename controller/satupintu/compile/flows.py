"""Policy + topology -> OpenFlow 1.3 plan per switch.

Pipeline: table 0 admits (anti-spoofing: an OPD port accepts only its own prefixes),
table 1 marks DSCP from the class rules (trust boundary: whatever the OPD wrote is
overwritten), table 2 forwards by destination prefix (no flooding; ARP is forwarded
by target address like IP).
"""

from __future__ import annotations

from collections.abc import Iterable

from satupintu.compile.plan import (
    Direction,
    FlowSpec,
    MeterSpec,
    RuleKind,
    SwitchPlan,
    flow_cookie,
    meter_id,
)
from satupintu.compile.prefixes import match_value, network
from satupintu.policy.model import MatchRule, Opd, Policy, TrafficClass, WifiPool
from satupintu.topology import Topology

TABLE_ADMIT, TABLE_MARK, TABLE_FORWARD = 0, 1, 2
ETH_IP, ETH_ARP, ETH_IPV6 = 0x0800, 0x0806, 0x86DD
META_UPLOAD, META_DOWNLOAD, META_MASK = 1, 2, 3
PROTOCOLS = {"tcp": 6, "udp": 17, "icmp": 1}

Match = tuple[tuple[str, object], ...]


def _match(**fields: object) -> Match:
    return tuple(sorted((key, value) for key, value in fields.items() if value is not None))


_addr = match_value


def port_masks(low: int, high: int) -> list[tuple[int, int]]:
    """Cover [low, high] with (value, mask) pairs, as routers do for ACL port ranges."""
    pieces = []
    while low <= high:
        size = low & -low if low else 1 << 16
        while size > high - low + 1:
            size >>= 1
        pieces.append((low, 0xFFFF ^ (size - 1)))
        low += size
    return pieces


def _port_value(value: int, mask: int) -> object:
    return value if mask == 0xFFFF else (value, mask)


def build_switch_plans(policy: Policy, topology: Topology, scale: float) -> list[SwitchPlan]:
    owners: list[Opd | WifiPool] = sorted([*policy.opds, *policy.public_wifi], key=lambda owner: owner.id)
    missing = [owner.code for owner in owners if owner.id not in topology.attachments]
    if missing:
        raise ValueError(f"topology '{topology.name}' does not attach: {', '.join(missing)}")
    marking = _marking_flows(policy)
    plans = []
    for switch in sorted(topology.dpids):
        flows: list[FlowSpec] = []
        meters: list[MeterSpec] = []
        for owner in owners:
            if topology.attachments[owner.id] == switch:
                cap = owner.hard_cap if isinstance(owner, Opd) else None
                owner_meters = _meters(owner.id, cap, scale)
                meters.extend(owner_meters.values())
                flows.extend(_admit_owner(owner, topology.attach_port(owner.id), owner_meters.get(Direction.UPLOAD)))
            flows.extend(_forward_owner(owner, topology, switch, policy.inter_opd == "deny", scale))
        flows.extend(_infrastructure(topology, switch))
        flows.extend(marking)
        plans.append(SwitchPlan(switch, topology.dpids[switch], tuple(sorted(flows, key=_order)),
                                tuple(sorted(meters, key=lambda meter: meter.meter_id))))
    return plans


def _order(flow: FlowSpec) -> tuple:
    return (flow.table, -flow.priority, repr(flow.match))


def _meters(owner_id: int, cap, scale: float) -> dict[Direction, MeterSpec]:
    meters: dict[Direction, MeterSpec] = {}
    if cap is None:
        return meters
    for direction in Direction:
        rate = getattr(cap, direction.value)
        if rate is None:
            continue
        rate_kbps = max(8, round(rate * scale / 1000))
        burst_kbits = max(16, rate_kbps * cap.burst_ms // 1000)
        meters[direction] = MeterSpec(meter_id(owner_id, direction), rate_kbps, burst_kbits, owner_id, direction)
    return meters


def _admit_owner(owner: Opd | WifiPool, port: int, upload_meter: MeterSpec | None) -> Iterable[FlowSpec]:
    cookie = flow_cookie(RuleKind.ADMIT, owner.id)
    metered: tuple[tuple, ...] = (("meter", upload_meter.meter_id),) if upload_meter else ()
    for prefix in owner.prefixes:
        if ":" in prefix:
            match = _match(in_port=port, eth_type=ETH_IPV6, ipv6_src=_addr(prefix))
        else:
            match = _match(in_port=port, eth_type=ETH_IP, ipv4_src=_addr(prefix))
            yield FlowSpec(TABLE_ADMIT, 200, _match(in_port=port, eth_type=ETH_ARP, arp_spa=_addr(prefix)),
                           (("goto", TABLE_FORWARD),), cookie)
        yield FlowSpec(TABLE_ADMIT, 200, match,
                       (*metered, ("write_metadata", META_UPLOAD, META_MASK), ("goto", TABLE_MARK)), cookie)
    # Anything else from this port is spoofed (or not IP): drop, counted per owner.
    yield FlowSpec(TABLE_ADMIT, 100, _match(in_port=port), (("drop",),), cookie)


def _forward_owner(owner: Opd | WifiPool, topology: Topology, switch: str, deny_inter_opd: bool,
                   scale: float) -> Iterable[FlowSpec]:
    cookie = flow_cookie(RuleKind.FORWARD, owner.id)
    port = topology.port_to_owner(switch, owner.id)
    local = topology.attachments[owner.id] == switch
    cap = owner.hard_cap if isinstance(owner, Opd) and local else None
    meter = _meters(owner.id, cap, scale).get(Direction.DOWNLOAD)
    output: tuple[tuple, ...] = ((("meter", meter.meter_id),) if meter else ()) + (("output", port),)
    for prefix in owner.prefixes:
        length = network(prefix).prefixlen
        v6 = ":" in prefix
        destination = {"eth_type": ETH_IPV6, "ipv6_dst": _addr(prefix)} if v6 else \
            {"eth_type": ETH_IP, "ipv4_dst": _addr(prefix)}
        yield FlowSpec(TABLE_FORWARD, 100 + length, _match(**destination), output, cookie)
        if not v6:
            yield FlowSpec(TABLE_FORWARD, 100 + length, _match(eth_type=ETH_ARP, arp_tpa=_addr(prefix)),
                           (("output", port),), cookie)
        if deny_inter_opd:  # uploads (from an OPD or Wi-Fi port) to another owner, over IPv4 and IPv6 alike
            yield FlowSpec(TABLE_FORWARD, 300 + length, _match(metadata=(META_UPLOAD, META_MASK), **destination),
                           (("drop",),), cookie)


def _infrastructure(topology: Topology, switch: str) -> Iterable[FlowSpec]:
    cookie = flow_cookie(RuleKind.INFRA, 0)
    for port in topology.trunk_ports(switch):
        yield FlowSpec(TABLE_ADMIT, 150, _match(in_port=port), (("goto", TABLE_FORWARD),), cookie)
    upstream_port = topology.port_to_upstream(switch)
    if switch == topology.gateway:
        port = topology.upstream_port
        for eth_type in (ETH_IP, ETH_IPV6):
            yield FlowSpec(TABLE_ADMIT, 150, _match(in_port=port, eth_type=eth_type),
                           (("write_metadata", META_DOWNLOAD, META_MASK), ("goto", TABLE_MARK)), cookie)
        yield FlowSpec(TABLE_ADMIT, 150, _match(in_port=port, eth_type=ETH_ARP), (("goto", TABLE_FORWARD),), cookie)
        # Downloads to addresses no OPD owns must not bounce back out of the upstream port.
        yield FlowSpec(TABLE_FORWARD, 2, _match(metadata=(META_DOWNLOAD, META_MASK)), (("drop",),), cookie)
    for eth_type in (ETH_IP, ETH_ARP, ETH_IPV6):
        yield FlowSpec(TABLE_FORWARD, 1, _match(eth_type=eth_type), (("output", upstream_port),), cookie)
    for table in (TABLE_ADMIT, TABLE_MARK, TABLE_FORWARD):
        yield FlowSpec(table, 0, (), (("drop",),), cookie)


def _marking_flows(policy: Policy) -> list[FlowSpec]:
    """Table 1: class rules per direction; unmatched traffic gets the default class DSCP."""
    flows: dict[tuple, FlowSpec] = {}
    default = next(klass for klass in policy.classes if klass.name == policy.default_class)
    cookie = flow_cookie(RuleKind.MARK, 0)
    for klass in sorted(policy.classes, key=lambda item: (item.priority, item.id)):
        if klass is default:
            continue
        for rule in klass.match:
            for direction in Direction:
                for match in _rule_matches(rule, direction):
                    flow = FlowSpec(TABLE_MARK, _mark_priority(klass), match,
                                    (("set_dscp", klass.dscp), ("goto", TABLE_FORWARD)), cookie)
                    flows.setdefault(flow.key, flow)  # first (highest-priority class) wins
    for meta in (META_UPLOAD, META_DOWNLOAD):
        for eth_type in (ETH_IP, ETH_IPV6):
            flow = FlowSpec(TABLE_MARK, 1, _match(eth_type=eth_type, metadata=(meta, META_MASK)),
                            (("set_dscp", default.dscp), ("goto", TABLE_FORWARD)), cookie)
            flows[flow.key] = flow
    return list(flows.values())


def _mark_priority(klass: TrafficClass) -> int:
    return 1000 - 10 * klass.priority


def _rule_matches(rule: MatchRule, direction: Direction) -> Iterable[Match]:
    upload = direction is Direction.UPLOAD
    meta = (META_UPLOAD if upload else META_DOWNLOAD, META_MASK)
    protocols = ["tcp", "udp"] if rule.protocol == "any" and rule.ports else [rule.protocol]
    prefixes: list[str | None] = list(rule.prefixes) or [None]
    for protocol in protocols:
        proto_number = PROTOCOLS.get(protocol)
        pieces: list[tuple[int, int] | None] = (
            [piece for low, high in rule.ports for piece in port_masks(low, high)]
            if rule.ports and protocol in ("tcp", "udp") else [None])
        for prefix in prefixes:
            v6 = prefix is not None and ":" in prefix
            fields: dict[str, object] = {"eth_type": ETH_IPV6 if v6 else ETH_IP, "metadata": meta}
            if prefix is not None:
                fields[("ipv6_" if v6 else "ipv4_") + ("dst" if upload else "src")] = _addr(prefix)
            if proto_number is not None:
                fields["ip_proto"] = proto_number
            for piece in pieces:
                port_fields = dict(fields)
                if piece is not None:
                    port_fields[f"{protocol}_{'dst' if upload else 'src'}"] = _port_value(*piece)
                yield _match(**port_fields)
