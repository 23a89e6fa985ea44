"""Pure diff of one switch's OpenFlow state: the flow-mods and meter-mods that turn
`actual` (read back from the switch) into `desired` (compiled from policy).

No os-ken here: the driver converts messages to and from plan objects
(`satupintu.drivers.ofmsgs`) and `policy diff` uses this module on two compiled plans,
so what the diff prints is what a reload sends.

Both sides are compared in a canonical form (`canonical_flow`), because a switch
hands back what it stored, not what it was sent: an all-ones mask comes back as an
exact match, an all-zeros mask as no field, host bits under a mask are cleared, IPv6
addresses are re-spelt, and instructions come back in execution order. Without that
every reconcile would re-send flows that are already right.

Ownership: a flow is ours when its cookie carries `COOKIE_TAG` under `COOKIE_TAG_MASK`.
Foreign flows are never touched, except (a) one whose key (table, priority, match)
a desired flow needs, which is taken over, and (b) a table-miss flow (priority 0, empty
match) in a table our plan programs: the table-miss decides what happens to everything
we do not match, so it is ours to set. Meters carry no cookie: every meter is ours,
except that one still used by a foreign flow we leave alone is never deleted (deleting
a meter deletes the flows that use it).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import lru_cache

from satupintu.compile.plan import COOKIE_TAG, COOKIE_TAG_MASK, FlowSpec, MeterSpec, SwitchPlan

Match = tuple[tuple[str, object], ...]
FlowKey = tuple[int, int, Match]

# Bit widths of integer match fields, to recognise an all-ones mask (= exact match).
FIELD_BITS: dict[str, int] = {
    "in_port": 32, "in_phy_port": 32, "metadata": 64, "eth_type": 16, "vlan_vid": 13, "vlan_pcp": 3,
    "ip_dscp": 6, "ip_ecn": 2, "ip_proto": 8, "tcp_src": 16, "tcp_dst": 16, "udp_src": 16, "udp_dst": 16,
    "sctp_src": 16, "sctp_dst": 16, "icmpv4_type": 8, "icmpv4_code": 8, "icmpv6_type": 8, "icmpv6_code": 8,
    "arp_op": 16, "ipv6_flabel": 20, "mpls_label": 20, "mpls_tc": 3, "mpls_bos": 1, "pbb_isid": 24,
    "tunnel_id": 64, "ipv6_exthdr": 9,
}
IP_FIELDS = frozenset({"ipv4_src", "ipv4_dst", "arp_spa", "arp_tpa", "ipv6_src", "ipv6_dst", "ipv6_nd_target"})
MAC_FIELDS = frozenset({"eth_src", "eth_dst", "arp_sha", "arp_tha", "ipv6_nd_sll", "ipv6_nd_tll"})

# OpenFlow 1.3 executes instructions in this order whatever order they were sent in,
# and switches report them in it: meter, apply-actions, write-metadata, goto-table.
_INSTRUCTION_ORDER = {"meter": 0, "write_metadata": 3, "goto": 4}
_APPLY_ORDER = 1
DROP = ("drop",)


def is_ours(cookie: int) -> bool:
    return cookie & COOKIE_TAG_MASK == COOKIE_TAG


def is_table_miss(flow: FlowSpec) -> bool:
    return flow.priority == 0 and not flow.match


def _canonical_ip(value: object) -> object | None:
    """'10.1.7.5'/'255.255.255.0' -> ('10.1.7.0', '255.255.255.0'); /32 -> plain; /0 -> None."""
    if isinstance(value, tuple | list):
        address, mask = (ipaddress.ip_address(str(part)) for part in value)
        bits = int(mask)
        if bits == 0:
            return None
        if bits == (1 << address.max_prefixlen) - 1:
            return str(address)
        return (str(type(address)(int(address) & bits)), str(mask))
    return str(ipaddress.ip_address(str(value)))


def _canonical_mac(value: object) -> object | None:
    if isinstance(value, tuple | list):
        address, mask = (int(str(part).replace(":", ""), 16) for part in value)
        if mask == 0:
            return None
        if mask == (1 << 48) - 1:
            return _mac(address)
        return (_mac(address & mask), _mac(mask))
    return str(value).lower()


def _mac(number: int) -> str:
    raw = f"{number:012x}"
    return ":".join(raw[i:i + 2] for i in range(0, 12, 2))


def _canonical_int(name: str, value: object) -> object | None:
    if isinstance(value, tuple | list):
        number, mask = int(value[0]), int(value[1])
        if mask == 0:
            return None
        bits = FIELD_BITS.get(name)
        if bits is not None and mask == (1 << bits) - 1:
            return number
        return (number & mask, mask)
    return int(value) if isinstance(value, int) else value


@lru_cache(maxsize=1 << 16)
def canonical_value(name: str, value: object) -> object | None:
    """The form a switch reports a match field in; None when the field matches anything."""
    if name in IP_FIELDS:
        return _canonical_ip(value)
    if name in MAC_FIELDS:
        return _canonical_mac(value)
    return _canonical_int(name, value)


# Cached: a reconcile canonicalises every flow of the plan and of the switch (30,000
# each at 5,000 OPDs), and both sides repeat the same matches and action lists.
@lru_cache(maxsize=1 << 18)
def _canonical_match(match: Match) -> Match:
    pairs = []
    for name, value in match:
        canonical = canonical_value(name, value)
        if canonical is not None:
            pairs.append((name, canonical))
    pairs.sort(key=lambda pair: pair[0])
    result = tuple(pairs)
    return match if result == match else result


def canonical_match(match: Iterable[tuple[str, object]]) -> Match:
    return _canonical_match(tuple((name, _hashable(value)) for name, value in match))


def _hashable(value: object) -> object:
    return tuple(value) if isinstance(value, list) else value


@lru_cache(maxsize=1 << 14)
def _canonical_actions(actions: tuple[tuple, ...]) -> tuple[tuple, ...]:
    items = [action for action in actions if action != DROP]
    items.sort(key=lambda action: _INSTRUCTION_ORDER.get(action[0], _APPLY_ORDER))  # stable
    result = tuple(items) or (DROP,)
    return actions if result == actions else result


def canonical_actions(actions: Iterable[tuple]) -> tuple[tuple, ...]:
    """Instructions in execution order (apply-actions keep their own order); no
    instruction at all is spelt ("drop",)."""
    return _canonical_actions(tuple(tuple(action) for action in actions))


def canonical_flow(flow: FlowSpec) -> FlowSpec:
    try:
        match, actions = _canonical_match(flow.match), _canonical_actions(flow.actions)
    except TypeError:  # lists somewhere inside (hand-built or decoded JSON): not cacheable
        match, actions = canonical_match(flow.match), canonical_actions(flow.actions)
    if match == flow.match and actions == flow.actions:
        return flow
    return FlowSpec(flow.table, flow.priority, match, actions, flow.cookie)


def flow_meters(flow: FlowSpec) -> set[int]:
    return {int(action[1]) for action in flow.actions if action and action[0] == "meter"}


@dataclass(slots=True)
class SwitchDiff:
    """What to send, in lists already in a safe order. Apply as: meters_add,
    meters_modify, flows_add, flows_modify, flows_delete, meters_delete (new meters exist
    before flows use them; replacements are in before what they replace is removed;
    meters go only after the flows that used them)."""

    dpid: int
    meters_add: list[MeterSpec] = field(default_factory=list)
    meters_modify: list[tuple[MeterSpec, MeterSpec]] = field(default_factory=list)  # (actual, desired)
    meters_delete: list[MeterSpec] = field(default_factory=list)
    flows_add: list[FlowSpec] = field(default_factory=list)
    flows_modify: list[tuple[FlowSpec, FlowSpec]] = field(default_factory=list)  # (actual, desired)
    flows_delete: list[FlowSpec] = field(default_factory=list)  # as read from the switch

    @property
    def empty(self) -> bool:
        return not self.size

    @property
    def size(self) -> int:
        """Number of flow-mods plus meter-mods needed (barriers not counted)."""
        return (len(self.meters_add) + len(self.meters_modify) + len(self.meters_delete)
                + len(self.flows_add) + len(self.flows_modify) + len(self.flows_delete))


def _meter_params(meter: MeterSpec) -> tuple[int, int]:
    return (meter.rate_kbps, meter.burst_kbits)


def diff_switch(desired: SwitchPlan, actual_flows: list[FlowSpec], actual_meters: list[MeterSpec]) -> SwitchDiff:
    diff = SwitchDiff(desired.dpid)
    want: dict[FlowKey, tuple[FlowSpec, FlowSpec]] = {}  # canonical key -> (as compiled, canonical)
    for flow in desired.flows:
        canonical = canonical_flow(flow)
        want.setdefault(canonical.key, (flow, canonical))
    tables = {flow.table for flow in desired.flows}
    have: dict[FlowKey, tuple[FlowSpec, FlowSpec]] = {}
    for flow in actual_flows:
        canonical = canonical_flow(flow)
        have[canonical.key] = (flow, canonical)

    for key, (flow, canonical) in want.items():
        old = have.get(key)
        if old is None:
            diff.flows_add.append(flow)
        elif old[1].actions != canonical.actions or old[1].cookie != canonical.cookie:
            diff.flows_modify.append((old[0], flow))
    kept_foreign_meters: set[int] = set()
    for key, (flow, canonical) in have.items():
        if key in want:
            continue
        if is_ours(flow.cookie) or (is_table_miss(canonical) and flow.table in tables):
            diff.flows_delete.append(flow)
        else:
            kept_foreign_meters |= flow_meters(canonical)

    want_meters = {meter.meter_id: meter for meter in desired.meters}
    have_meters = {meter.meter_id: meter for meter in actual_meters}
    for meter_id, meter in want_meters.items():
        old_meter = have_meters.get(meter_id)
        if old_meter is None:
            diff.meters_add.append(meter)
        elif _meter_params(old_meter) != _meter_params(meter):
            diff.meters_modify.append((old_meter, meter))
    diff.meters_delete = [meter for meter_id, meter in have_meters.items()
                          if meter_id not in want_meters and meter_id not in kept_foreign_meters]
    return diff
