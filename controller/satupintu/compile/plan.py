"""Desired enforcement state: plain, hashable data that drivers apply and reconcile diffs.

Nothing here knows about os-ken or pyroute2. Every identifier (HTB minor, meter id,
flow cookie) is derived from ids written in the policy, so a reload is a diff.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum, StrEnum

# HTB minor numbers: 1 = root class, 2 = class for unknown sources,
# id * 8 = class of OPD/Wi-Fi pool `id`, id * 8 + class_id = its traffic-class leaf.
ROOT_MINOR = 1
UNCLASSIFIED_MINOR = 2
MINORS_PER_OWNER = 8
HTB_MAJOR = 1
WIFI_PRIORITY = 7  # HTB prio of Wi-Fi and unknown sources: only leftovers.
DEFAULT_IPV6_HASH_BYTE = 5  # last byte of a /48: the compiler picks the best byte for the policy's prefixes

# Flow cookies: 0x5350 ("SP") in the top 16 bits marks flows this controller owns.
COOKIE_TAG = 0x5350 << 48
COOKIE_TAG_MASK = 0xFFFF << 48


class Direction(StrEnum):
    DOWNLOAD = "download"
    UPLOAD = "upload"


class RuleKind(int, Enum):
    """Second field of a cookie: which stage of the pipeline a flow belongs to."""

    ADMIT = 1
    MARK = 2
    FORWARD = 3
    INFRA = 4


def owner_minor(owner_id: int) -> int:
    return owner_id * MINORS_PER_OWNER


def leaf_minor(owner_id: int, class_id: int) -> int:
    return owner_id * MINORS_PER_OWNER + class_id


def flow_cookie(kind: RuleKind, owner_id: int) -> int:
    """Cookie of a flow: tag | kind << 32 | owner id (0 = infrastructure)."""
    return COOKIE_TAG | (int(kind) << 32) | owner_id


def cookie_owner(cookie: int) -> int:
    return cookie & 0xFFFFFFFF


def meter_id(owner_id: int, direction: Direction) -> int:
    """Meter ids: 2*id for upload, 2*id+1 for download (stable, never reused)."""
    return owner_id * 2 + (1 if direction is Direction.DOWNLOAD else 0)


# ---------------------------------------------------------------- queue plan (tc)


@dataclass(frozen=True, slots=True)
class HtbClass:
    """One HTB class. Rates in bit/s, bursts and quantum in bytes."""

    minor: int
    parent_minor: int | None  # None: child of the qdisc root
    rate_bps: int
    ceil_bps: int
    burst_bytes: int
    cburst_bytes: int
    quantum_bytes: int
    prio: int
    owner_id: int  # 0 for root / unknown sources
    class_id: int  # traffic class id for leaves, 0 for inner classes
    is_leaf: bool
    label: str  # human name, e.g. "DINKES/realtime"


@dataclass(frozen=True, slots=True)
class U32Rule:
    """Classify packets whose address (src on upload, dst on download) is inside
    `prefix` and, if `dscp` is set, whose DSCP equals it, into class `flow_minor`.
    `tcp_ack_only` matches pure TCP ACKs instead (IPv4 without options, shorter than 128
    bytes so SACK blocks fit, flags exactly ACK): an OPD's ACKs must not wait behind its own bulk data.

    `ipv6` rules sit in the IPv6 classifier (the same matches on the IPv6 header: traffic
    class instead of TOS, next header 6 without extension headers, payload shorter than 128
    bytes) and `prefix` is an IPv6 prefix; IPv4 and IPv6 rules are keyed separately.

    `bucket` is the hash bucket for prefixes that cover the hashed byte: the third octet of
    the address for IPv4 prefixes of /24 or longer, byte `QueuePlan.ipv6_hash_byte` of the
    address for IPv6 prefixes of at least 8 * (that byte + 1) bits. None means the rule sits
    in the linear list before the hash jump.
    `node` orders rules inside their list: lower nodes are matched first.
    """

    prefix: str
    dscp: int | None
    flow_minor: int
    bucket: int | None
    node: int
    owner_id: int
    tcp_ack_only: bool = False
    ipv6: bool = False

    @property
    def key(self) -> tuple[bool, int | None, int]:
        """Identity of the rule in its classifier: (ipv6, bucket, node)."""
        return (self.ipv6, self.bucket, self.node)


@dataclass(frozen=True, slots=True)
class QueuePlan:
    """The HTB tree and classifier for one bottleneck egress port."""

    switch: str
    port: str  # interface name on the switch, e.g. "s1-eth2"
    direction: Direction
    capacity_bps: int
    default_minor: int
    classes: tuple[HtbClass, ...]
    rules: tuple[U32Rule, ...]
    leaf_qdisc: str = "auto"  # "auto": fq_codel when the kernel has it, else pfifo_head_drop
    ipv6_hash_byte: int = DEFAULT_IPV6_HASH_BYTE  # byte of the IPv6 address (0-15) that keys the IPv6 hash table
    leaf_limit_bytes: dict[int, int] = field(default_factory=dict, compare=False, hash=False)


# ---------------------------------------------------------------- OpenFlow plan


@dataclass(frozen=True, slots=True)
class FlowSpec:
    """One OpenFlow 1.3 flow. `match` is a sorted tuple of (field, value) where value
    is an int, a string, or a (value, mask) pair, in os-ken OFPMatch field names.
    Actions are a tuple of simple tuples interpreted by the driver:
      ("output", port_no) ("set_dscp", dscp) ("goto", table) ("meter", meter_id)
      ("write_metadata", value, mask) ("drop",)
    Identity of a flow on a switch is (table, priority, match).
    """

    table: int
    priority: int
    match: tuple[tuple[str, object], ...]
    actions: tuple[tuple, ...]
    cookie: int

    @property
    def key(self) -> tuple[int, int, tuple[tuple[str, object], ...]]:
        return (self.table, self.priority, self.match)


@dataclass(frozen=True, slots=True)
class MeterSpec:
    meter_id: int
    rate_kbps: int
    burst_kbits: int
    owner_id: int
    direction: Direction


@dataclass(frozen=True, slots=True)
class SwitchPlan:
    name: str
    dpid: int
    flows: tuple[FlowSpec, ...]
    meters: tuple[MeterSpec, ...]


@dataclass(frozen=True, slots=True)
class DesiredState:
    """Everything the drivers must make true, derived purely from policy + topology."""

    policy_hash: str
    switches: tuple[SwitchPlan, ...]
    queues: tuple[QueuePlan, ...]
    schedule_window: str  # name of the schedule window in force ("base" if none)
