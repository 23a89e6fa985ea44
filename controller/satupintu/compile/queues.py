"""Policy -> HTB tree + u32 classifier for the two bottleneck ports of the gateway.

Borrowing only works among classes of one qdisc, so every direction has exactly one
tree: upload on the gateway's upstream port, download on its backbone trunk.
"""

from __future__ import annotations

import math
from collections.abc import Callable

from satupintu.compile.plan import (
    DEFAULT_IPV6_HASH_BYTE,
    ROOT_MINOR,
    UNCLASSIFIED_MINOR,
    WIFI_PRIORITY,
    Direction,
    HtbClass,
    QueuePlan,
    U32Rule,
    leaf_minor,
    owner_minor,
)
from satupintu.compile.prefixes import Network, network
from satupintu.policy.checks import unclassified_rate
from satupintu.policy.model import Policy
from satupintu.policy.schedule import Allocations
from satupintu.topology import Topology

MTU_FRAME_BYTES = 1514
BURST_SECONDS = 0.005  # 5 ms of the rate: enough for a timer tick and a batch from OVS
QUANTUM_SCALE_BYTES = 400_000  # quantum = guarantee/capacity * this: excess shared by guarantee
MIN_QUANTUM_BYTES = 1000
MAX_NODES_PER_LIST = 510  # u32 node ids are 12 bits; 8 per prefix
LEAF_QUEUE_SECONDS = 0.1
MIN_LEAF_LIMIT_BYTES = 10 * MTU_FRAME_BYTES


class CompileError(ValueError):
    """The policy is valid but cannot be expressed on this data plane."""


def scaled(rate_bps: int, scale: float) -> int:
    return max(8_000, round(rate_bps * scale))


def _burst(rate_bps: int) -> int:
    return max(2 * MTU_FRAME_BYTES, math.ceil(rate_bps / 8 * BURST_SECONDS))


def _quantum(guaranteed_bps: int, capacity_bps: int) -> int:
    return max(MIN_QUANTUM_BYTES, round(guaranteed_bps / capacity_bps * QUANTUM_SCALE_BYTES))


def _leaf_limits(classes: list[HtbClass]) -> dict[int, int]:
    """Queues of 100 ms at the owner's guarantee: deep enough for TCP, short enough that RTT
    does not balloon while the OPD is held to its guarantee."""
    owner_rate = {c.minor: c.rate_bps for c in classes if not c.is_leaf and c.minor != ROOT_MINOR}
    return {c.minor: max(MIN_LEAF_LIMIT_BYTES, round(owner_rate.get(c.parent_minor, c.rate_bps) / 8
                                                     * LEAF_QUEUE_SECONDS))
            for c in classes if c.is_leaf}


def _htb(minor: int, parent: int | None, rate: int, ceil: int, quantum: int, prio: int, owner: int,
         class_id: int, leaf: bool, label: str) -> HtbClass:
    return HtbClass(minor, parent, rate, ceil, _burst(rate), _burst(ceil), quantum, prio, owner, class_id, leaf, label)


def build_queue_plans(policy: Policy, allocations: Allocations, topology: Topology, scale: float) -> list[QueuePlan]:
    plans = []
    rules, hash_byte = _rules(policy)
    for direction, port in ((Direction.UPLOAD, topology.upstream_port), (Direction.DOWNLOAD, topology.backbone_port)):
        classes = _classes(policy, allocations, direction, scale)
        plans.append(QueuePlan(
            switch=topology.gateway,
            port=topology.interface(topology.gateway, port),
            direction=direction,
            capacity_bps=scaled(getattr(policy.backbone, direction.value), scale),
            default_minor=UNCLASSIFIED_MINOR,
            classes=tuple(classes),
            rules=tuple(rules),
            leaf_limit_bytes=_leaf_limits(classes),
            ipv6_hash_byte=hash_byte,
        ))
    return plans


def _classes(policy: Policy, allocations: Allocations, direction: Direction, scale: float) -> list[HtbClass]:
    key = direction.value
    capacity = scaled(getattr(policy.backbone, key), scale)
    unclassified = scaled(unclassified_rate(policy, key), scale)
    classes = [
        _htb(ROOT_MINOR, None, capacity, capacity, _quantum(capacity, capacity), 0, 0, 0, False, "root"),
        _htb(UNCLASSIFIED_MINOR, ROOT_MINOR, unclassified, capacity, _quantum(unclassified, capacity),
             WIFI_PRIORITY, 0, 0, True, "unclassified"),
    ]
    traffic_classes = sorted(policy.classes, key=lambda klass: klass.id)
    for opd in sorted(policy.opds, key=lambda item: item.id):
        guaranteed, ceiling = (scaled(value, scale) for value in allocations[opd.id][key])
        ceiling = min(ceiling, capacity)
        quantum = _quantum(guaranteed, capacity)
        minor = owner_minor(opd.id)
        classes.append(_htb(minor, ROOT_MINOR, guaranteed, ceiling, quantum, 0, opd.id, 0, False, opd.code))
        for klass in traffic_classes:
            leaf_rate = max(8_000, guaranteed * klass.share_percent // 100)
            classes.append(_htb(leaf_minor(opd.id, klass.id), minor, leaf_rate, ceiling, quantum, klass.priority,
                                opd.id, klass.id, True, f"{opd.code}/{klass.name}"))
    for pool in sorted(policy.public_wifi, key=lambda item: item.id):
        floor = scaled(getattr(pool.floor, key), scale)
        ceiling = scaled(getattr(pool.ceiling, key), scale) if pool.ceiling else capacity
        classes.append(_htb(owner_minor(pool.id), ROOT_MINOR, floor, min(ceiling, capacity),
                            _quantum(floor, capacity), WIFI_PRIORITY, pool.id, 0, True, pool.code))
    return classes


def _rules(policy: Policy) -> tuple[list[U32Rule], int]:
    """u32 rules and the IPv6 hash byte: per OPD prefix first pure TCP ACKs to its most urgent
    class, then one rule per DSCP class, then a catch-all to the default leaf (8 nodes per prefix:
    ACK, 6 classes, default); one rule per Wi-Fi pool prefix. IPv4 and IPv6 prefixes get the same
    rules in two classifiers: IPv4 hashed on the third octet, IPv6 on `ipv6_hash_byte(...)`.

    Node numbers come from the sorted prefix order inside each list, never from file order.
    """
    entries: list[tuple[Network, int, bool]] = []
    for opd in policy.opds:
        entries.extend((network(p), opd.id, False) for p in opd.prefixes)
    for pool in policy.public_wifi:
        entries.extend((network(p), pool.id, True) for p in pool.prefixes)
    ipv4 = [entry for entry in entries if entry[0].version == 4]
    ipv6 = [entry for entry in entries if entry[0].version == 6]
    hash_byte = ipv6_hash_byte([net for net, _owner, _pool in ipv6])
    rules = _family_rules(policy, ipv4, _ipv4_bucket)
    rules += _family_rules(policy, ipv6, lambda net: _ipv6_bucket(net, hash_byte))
    rules.sort(key=lambda rule: (rule.ipv6, rule.bucket is not None, rule.bucket or 0, rule.node))
    return rules, hash_byte


def _ipv4_bucket(net: Network) -> int | None:
    return int(net.network_address) >> 8 & 0xFF if net.prefixlen >= 24 else None


def _ipv6_bucket(net: Network, byte: int) -> int | None:
    return net.network_address.packed[byte] if net.prefixlen >= 8 * (byte + 1) else None


def ipv6_hash_byte(prefixes: list[Network]) -> int:
    """The byte of the IPv6 address that keys the IPv6 hash table, chosen from the policy's
    prefixes alone (never their order): prefixes that do not cover the byte (shorter than
    8 * (byte + 1) bits) sit in the root list every packet walks, the others in the bucket of
    their value of that byte. Picks the byte that minimises the worst walk (root list + largest
    bucket), then spreads best (fewest prefixes sharing a bucket), then the lowest byte; with no
    IPv6 prefixes, DEFAULT_IPV6_HASH_BYTE."""
    if not prefixes:
        return DEFAULT_IPV6_HASH_BYTE
    best: tuple[int, int, int] | None = None
    for byte in range(16):
        buckets: dict[int | None, int] = {}
        for net in prefixes:
            bucket = _ipv6_bucket(net, byte)
            buckets[bucket] = buckets.get(bucket, 0) + 1
        root = buckets.pop(None, 0)
        worst = root + max(buckets.values(), default=0)
        spread = sum(count * count for count in buckets.values())
        score = (worst, spread, byte)
        if best is None or score < best:
            best = score
    assert best is not None
    return best[2]


def _family_rules(policy: Policy, entries: list[tuple[Network, int, bool]],
                  bucket_of: Callable[[Network], int | None]) -> list[U32Rule]:
    classes = sorted(policy.classes, key=lambda klass: klass.id)
    default = next(klass for klass in classes if klass.name == policy.default_class)
    marked = [klass for klass in classes if klass is not default]
    urgent = min(classes, key=lambda klass: (klass.priority, klass.id))
    lists: dict[int | None, list[tuple[Network, int, bool]]] = {}
    for net, owner, is_pool in entries:
        lists.setdefault(bucket_of(net), []).append((net, owner, is_pool))
    rules: list[U32Rule] = []
    for bucket, members in lists.items():
        if len(members) > MAX_NODES_PER_LIST:
            family = "IPv6" if members[0][0].version == 6 else "IPv4"
            raise CompileError(f"{len(members)} {family} prefixes share u32 list {bucket}; "
                               f"at most {MAX_NODES_PER_LIST}")
        members.sort(key=lambda item: (-item[0].prefixlen, int(item[0].network_address)))
        for rank, (net, owner, is_pool) in enumerate(members):
            base = rank * 8 + 1
            prefix = str(net)
            v6 = net.version == 6
            if is_pool:
                rules.append(U32Rule(prefix, None, owner_minor(owner), bucket, base + 7, owner, ipv6=v6))
                continue
            if urgent is not default:
                rules.append(U32Rule(prefix, None, leaf_minor(owner, urgent.id), bucket, base, owner,
                                     tcp_ack_only=True, ipv6=v6))
            for slot, klass in enumerate(marked, start=1):
                rules.append(U32Rule(prefix, klass.dscp, leaf_minor(owner, klass.id), bucket, base + slot, owner,
                                     ipv6=v6))
            rules.append(U32Rule(prefix, None, leaf_minor(owner, default.id), bucket, base + 7, owner, ipv6=v6))
    return rules
