"""Linux tc driver: make one egress port's HTB tree and u32 classifier match a QueuePlan.

Reconcile, never flush: the installed tree is read back, diffed against the plan with
`satupintu.reconcile.queues.diff_queue_plans` (the same diff `policy diff` prints) and
only the difference is sent. A class change is an in-place `tc class change`, so leaf
queues, their packets and counters survive a reload; only a missing or foreign root
qdisc (or a different HTB default class, which the kernel cannot change) rebuilds.

The tc wire format (HTB parameters, u32 selectors, fifo limits) is packed and parsed
here, not by pyroute2's tc plugins: pyroute2 0.9 decodes u32 keys at the wrong offset,
recomputes HTB rate tables we do not need, and its generic message parser costs ~5x
our own on a 25,000-class dump. pyroute2 provides the netlink socket (inside a network
namespace when asked, with extended acks) and interface lookup; requests go out in
batches on that socket and every ack is checked.

u32 layout on the root HTB qdisc: two classifiers (filter prios), one per address family,
each with the same shape and the same rules per prefix (pure TCP ACKs, one rule per DSCP,
catch-all; one rule per Wi-Fi pool prefix):

  prio 1, protocol ip (U32_PRIO):
    root ht (800:): rules whose bucket is None, in node order, then a link at node 0xfff
    ht 100: (256 buckets, keyed on the third octet of the OPD address, mask 0000ff00 at
            12 (source, upload) or 16 (destination, download)): rules of /24 or longer prefixes
  prio 2, protocol ipv6 (U32_PRIO_V6):
    root ht (the kernel numbers it, e.g. 801:): IPv6 rules whose bucket is None, then a link at 0xfff
    ht 600: (256 buckets, keyed on byte QueuePlan.ipv6_hash_byte of the address, which the
            compiler picks from the policy's IPv6 prefixes: the word of the source (offset 8,
            upload) or destination (offset 24, download) address holding that byte, masked to
            it): rules of prefixes that cover that byte; shorter ones sit in the root list
A packet walks its family's root list (prefixes shorter than the hashed byte: few), then one
bucket, so a lookup does not grow with the number of OPDs. IPv6 rules match the prefix with
up to 4 32-bit keys at 8/24 (+4, +8, +12), the DSCP in the traffic class (first word, mask
0fc00000), and pure TCP ACKs as next header 6 at offset 6 with payload length < 128 (offset 4)
and TCP flags == ACK (byte 53, key at 52): the offsets are fixed because a next header of 6
means the TCP header follows the 40-byte IPv6 header directly (extension headers do not match,
so no u32 `nexthdr` offset is needed). Each classifier is read back, diffed and changed on its
own, and neither is foreign to the other. Packets matching nothing fall through to the HTB
default class.

The IPv6 classifier is created with the first IPv6 rule and then kept (empty: a root list and
a link to an empty table) when the plan drops every IPv6 prefix. u32 hash tables live in one
table space per qdisc, shared by all u32 prios (hence ht 600:, not 100:), and a deleted prio's
tables outlive it while another u32 prio exists; a table cannot be deleted right after its
link either (the kernel drops the link's reference after an RCU grace period: EBUSY). Deleting
the IPv6 prio would leave an orphaned 600: that refuses the next "add hash table" (EEXIST).
A prio of ours that is not what we made (other tables) is still deleted whole; if that
orphans a table, that apply fails, the kernel keeps the new prio (it holds the orphan), and
the next apply reads the orphan back and reconciles it.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import ipaddress
import itertools
import os
import socket
import struct
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field, replace
from typing import Any

from pyroute2 import IPRoute
from pyroute2.netlink import NLM_F_ACK, NLM_F_CREATE, NLM_F_DUMP, NLM_F_EXCL, NLM_F_REPLACE, NLM_F_REQUEST
from pyroute2.netlink.exceptions import NetlinkError
from pyroute2.netlink.rtnl import (
    RTM_DELQDISC,
    RTM_DELTCLASS,
    RTM_DELTFILTER,
    RTM_GETQDISC,
    RTM_GETTCLASS,
    RTM_GETTFILTER,
    RTM_NEWQDISC,
    RTM_NEWTCLASS,
    RTM_NEWTFILTER,
)

from satupintu.compile.plan import HTB_MAJOR, Direction, HtbClass, QueuePlan, U32Rule
from satupintu.reconcile.queues import diff_queue_plans

TC_H_ROOT = 0xFFFFFFFF
ETH_P_IP = 0x0800
ETH_P_IPV6 = 0x86DD
ROOT_HANDLE = HTB_MAJOR << 16

U32_PRIO = 1  # filter priority of the IPv4 classifier
U32_PRIO_V6 = 2  # filter priority of the IPv6 classifier
HASH_HTID = 0x100  # our IPv4 hash table "100:"
HASH_HTID_V6 = 0x600  # our IPv6 hash table "600:" (table ids are shared by all u32 prios of the qdisc)
HASH_DIVISOR = 256
HASH_MASK = 0x0000FF00  # third octet of the address
LINK_NODE = 0xFFF  # last node of ht 800: rules before it win
TC_U32_ROOT = 0xFFF << 20  # "the root hash table of this tp", whatever its id
TC_U32_TERMINAL = 1
DSCP_MASK = 0x00FC0000  # tos byte (offset 1) & 0xfc, as a u32 key at offset 0
IPV6_DSCP_MASK = 0x0FC00000  # upper 6 bits of the traffic class (bits 4-11 of the first word)

MIN_LEAF_LIMIT_BYTES = 30_000
# The fallback leaf when the kernel lacks fq_codel is pfifo_head_drop, never bfifo: a full
# bfifo refuses the arriving packet (NET_XMIT_DROP), an AF_PACKET sender then gets ENOBUFS, and
# Open vSwitch's userspace datapath drops the REST of its send batch on that error: packets of
# other OPDs and classes, realtime included (measured: 2-4% loss of realtime probes under full
# load, 12,700 packets lost in OVS vs 2,650 HTB drops). A full head-drop fifo drops its oldest
# packet and answers NET_XMIT_CN, which the sender sees as success (and TCP sees the drop sooner).
FALLBACK_LEAF_QDISC = "pfifo_head_drop"
FIFO_LEAF_KINDS = ("bfifo", "pfifo_head_drop")  # options: struct tc_fifo_qopt (bytes resp. packets)
LEAF_PACKET_BYTES = 1514  # converts a leaf's byte limit into packets for pfifo_head_drop
LEAF_QUEUE_SECONDS = 0.1
FQ_CODEL_MEMORY_FACTOR = 4  # memory_limit counts skb truesize; CoDel, not the limit, bounds delay
FQ_CODEL_MIN_MEMORY = 1 << 20

# rtnetlink attribute numbers (linux/rtnetlink.h, pkt_sched.h, pkt_cls.h, gen_stats.h)
TCA_KIND, TCA_OPTIONS, TCA_STATS2 = 1, 2, 7
TCA_HTB_PARMS, TCA_HTB_INIT, TCA_HTB_RATE64, TCA_HTB_CEIL64 = 1, 2, 6, 7
TCA_U32_CLASSID, TCA_U32_HASH, TCA_U32_LINK, TCA_U32_DIVISOR, TCA_U32_SEL = 1, 2, 3, 4, 5
U32_FOREIGN_ATTRS = (6, 7, 8, 10)  # police, actions, indev, mark: not ours
TCA_FQ_CODEL_MEMORY_LIMIT = 9
TCA_STATS_BASIC, TCA_STATS_QUEUE, TCA_STATS_APP, TCA_STATS_PKT64 = 1, 3, 4, 8

_RATESPEC = struct.Struct("=BBHhHI")  # cell_log, linklayer, overhead, cell_align, mpu, rate
_HTB_TAIL = struct.Struct("=IIIII")  # buffer, cbuffer, quantum, level, prio
_TCMSG = struct.Struct("=BxxxiIII")  # family, ifindex, handle, parent, info
_NLMSGHDR = struct.Struct("=IHHII")  # length, type, flags, seq, port id
NLMSG_ERROR, NLMSG_DONE = 2, 3
NLM_F_DUMP_INTR = 0x10
NLM_F_CAPPED, NLM_F_ACK_TLVS = 0x100, 0x200
NLMSGERR_ATTR_MSG = 1
BATCH_REQUESTS = 256  # requests per sendmsg; acks for them fit the socket buffer easily
RECV_BYTES = 1 << 18
SOCKET_TIMEOUT_SECONDS = 60.0  # a kernel that never answers is a bug: fail instead of hanging a reload
LINKLAYER_ETHERNET = 1
HTB_MAX_PRIO = 7


class TcError(RuntimeError):
    """The kernel refused a tc request; carries what we were doing."""


class PlanError(ValueError):
    """The plan cannot be expressed as an HTB tree + u32 classifier."""


@dataclass(slots=True)
class ApplyReport:
    """What one `TcShaper.apply` changed. `requests` counts netlink change requests
    sent (0 when the port already matched); `dumps` counts read requests."""

    port: str
    netns: str | None = None
    leaf_qdisc: str = ""
    rebuilt: bool = False
    classes_added: int = 0
    classes_changed: int = 0
    classes_removed: int = 0
    filters_added: int = 0
    filters_changed: int = 0
    filters_removed: int = 0
    qdiscs_added: int = 0
    qdiscs_changed: int = 0
    requests: int = 0
    dumps: int = 0
    read_back: bool = True  # False: sent as the difference from the plan last verified on the port
    fallback: str = ""  # why an unverified change was refused and the port read back instead

    @property
    def changes(self) -> int:
        return (self.classes_added + self.classes_changed + self.classes_removed + self.filters_added
                + self.filters_changed + self.filters_removed + self.qdiscs_added + self.qdiscs_changed)


@dataclass(frozen=True, slots=True)
class ClassStats:
    """Counters of one HTB class (bytes are L2 bytes as HTB sees them, no FCS/preamble)."""

    minor: int
    parent_minor: int | None
    leaf: bool
    rate_bps: int
    ceil_bps: int
    bytes: int
    packets: int
    drops: int
    overlimits: int
    requeues: int
    backlog_bytes: int
    qlen: int
    lends: int
    borrows: int
    giants: int
    tokens: int
    ctokens: int


# ---------------------------------------------------------------- wire format


def _nla(kind: int, payload: bytes) -> bytes:
    length = 4 + len(payload)
    return struct.pack("=HH", length, kind) + payload + b"\0" * (-length % 4)


def _parse_attrs(data: bytes) -> dict[int, bytes]:
    attrs: dict[int, bytes] = {}
    pos = 0
    while pos + 4 <= len(data):
        length, kind = struct.unpack_from("=HH", data, pos)
        if length < 4:
            break
        attrs[kind & 0x3FFF] = data[pos + 4:pos + length]
        pos += (length + 3) & ~3
    return attrs


@dataclass(slots=True)
class _TcEntry:
    """One qdisc, class or filter as dumped by the kernel, attributes left raw."""

    handle: int
    parent: int
    info: int
    kind: str
    options: bytes
    attrs: dict[int, bytes]

    @property
    def nested(self) -> dict[int, bytes]:
        return _parse_attrs(self.options)


def _entry(payload: bytes) -> tuple[int, _TcEntry]:
    """(ifindex, entry) from the payload of an RTM_NEWQDISC/TCLASS/TFILTER message."""
    _family, ifindex, handle, parent, info = _TCMSG.unpack_from(payload)
    attrs = _parse_attrs(payload[_TCMSG.size:])
    kind = attrs.get(TCA_KIND, b"").rstrip(b"\0").decode()
    return ifindex, _TcEntry(handle, parent, info, kind, attrs.get(TCA_OPTIONS, b""), attrs)


@functools.cache
def _tick_in_usec() -> float:
    """Kernel psched ticks per microsecond, computed exactly as iproute2 does."""
    try:
        with open("/proc/net/psched") as handle:
            t2us, us2t, clock_res = (int(word, 16) for word in handle.read().split()[:3])
    except (OSError, ValueError):
        return 15.625
    if clock_res == 1_000_000_000:
        t2us = us2t
    return t2us / us2t * (clock_res / 1_000_000)


def _xmittime(rate_bytes: int, size: int) -> int:
    """Burst bytes -> psched ticks, truncating like iproute2 so `tc` shows what we set."""
    return min(0xFFFFFFFF, int(int(1_000_000 * size / rate_bytes) * _tick_in_usec()))


def _burst_bytes(rate_bytes: int, ticks: int) -> int:
    return round(ticks / _tick_in_usec() * rate_bytes / 1_000_000)


def _info(prio: int, protocol: int) -> int:
    return (prio << 16) | socket.htons(protocol)


# ---------------------------------------------------------------- HTB encoding

# parent minor, rate B/s, ceil B/s, buffer ticks, cbuffer ticks, quantum, prio: exactly what the kernel echoes
HtbParams = tuple[int | None, int, int, int, int, int, int]


def _htb_params(klass: HtbClass) -> HtbParams:
    rate, ceil = klass.rate_bps // 8, klass.ceil_bps // 8
    return (klass.parent_minor, rate, ceil, _xmittime(rate, klass.burst_bytes), _xmittime(ceil, klass.cburst_bytes),
            klass.quantum_bytes, min(klass.prio, HTB_MAX_PRIO))


def _htb_class_options(params: HtbParams) -> bytes:
    _parent, rate, ceil, buffer, cbuffer, quantum, prio = params
    opt = (_RATESPEC.pack(0, LINKLAYER_ETHERNET, 0, 0, 0, min(rate, 0xFFFFFFFF))
           + _RATESPEC.pack(0, LINKLAYER_ETHERNET, 0, 0, 0, min(ceil, 0xFFFFFFFF))
           + _HTB_TAIL.pack(buffer, cbuffer, quantum, 0, prio))
    out = _nla(TCA_HTB_PARMS, opt)
    if rate > 0xFFFFFFFF:
        out += _nla(TCA_HTB_RATE64, struct.pack("=Q", rate))
    if ceil > 0xFFFFFFFF:
        out += _nla(TCA_HTB_CEIL64, struct.pack("=Q", ceil))
    return out


def _installed_htb_params(entry: _TcEntry) -> tuple[HtbParams, int] | None:
    """(params, level) of a dumped HTB class, or None when it carries no parameters."""
    nested = entry.nested
    parms = nested.get(TCA_HTB_PARMS)
    if parms is None or len(parms) < 2 * _RATESPEC.size + _HTB_TAIL.size:
        return None
    rate = _RATESPEC.unpack_from(parms, 0)[5]
    ceil = _RATESPEC.unpack_from(parms, _RATESPEC.size)[5]
    buffer, cbuffer, quantum, level, prio = _HTB_TAIL.unpack_from(parms, 2 * _RATESPEC.size)
    if TCA_HTB_RATE64 in nested:
        rate = struct.unpack("=Q", nested[TCA_HTB_RATE64][:8])[0]
    if TCA_HTB_CEIL64 in nested:
        ceil = struct.unpack("=Q", nested[TCA_HTB_CEIL64][:8])[0]
    parent = None if entry.parent == TC_H_ROOT or entry.parent >> 16 != HTB_MAJOR else entry.parent & 0xFFFF
    return (parent, rate, ceil, buffer, cbuffer, quantum, prio), level


def _htb_root_options(default_minor: int) -> bytes:
    # version 3, r2q 10 (unused: every class has an explicit quantum), defcls, debug, direct_pkts
    return _nla(TCA_HTB_INIT, struct.pack("=IIIII", 3, 10, default_minor, 0, 0))


# ---------------------------------------------------------------- u32 encoding


def _address_offset(direction: Direction) -> int:
    """Offset of the OPD's address in the IPv4 header: source on upload, destination on download."""
    return 12 if direction is Direction.UPLOAD else 16


def _address_offset6(direction: Direction) -> int:
    """Offset of the OPD's address in the IPv6 header: source on upload, destination on download."""
    return 8 if direction is Direction.UPLOAD else 24


@dataclass(frozen=True, slots=True)
class _Family:
    """One of the two u32 classifiers on the root qdisc."""

    ipv6: bool
    prio: int
    protocol: int
    htid: int  # our hash table

    @property
    def info(self) -> int:
        return _info(self.prio, self.protocol)


IPV4 = _Family(False, U32_PRIO, ETH_P_IP, HASH_HTID)
IPV6 = _Family(True, U32_PRIO_V6, ETH_P_IPV6, HASH_HTID_V6)
FAMILIES = (IPV4, IPV6)


def _family(ipv6: bool) -> _Family:
    return IPV6 if ipv6 else IPV4


def _u32_sel(keys: Iterable[tuple[int, int, int]], flags: int, hoff: int = 0, hmask: int = 0) -> bytes:
    """struct tc_u32_sel + keys; keys are (mask, value, offset) with host-order mask/value."""
    keys = list(keys)
    head = (struct.pack("=BBBx", flags, 0, len(keys)) + struct.pack(">H", 0)
            + struct.pack("=Hhh", 0, 0, hoff) + struct.pack(">I", hmask))
    body = b"".join(struct.pack(">II", mask, value & mask) + struct.pack("=ii", offset, 0)
                    for mask, value, offset in keys)
    return head + body


@functools.lru_cache(maxsize=1 << 16)
def _canonical_prefix(prefix: str) -> str:
    """"10.1.0.1/16" -> "10.1.0.0/16", "FD00:1::5/64" -> "fd00:1::/64"; cached: every apply
    canonicalises every rule (2,000 at 500 OPDs)."""
    return str(ipaddress.ip_network(prefix, strict=False))


@functools.lru_cache(maxsize=1 << 16)
def _ipv4_network(prefix: str) -> tuple[int, int]:
    """(network address as int, prefix length); cached like _canonical_prefix."""
    network = ipaddress.IPv4Network(prefix, strict=False)
    return int(network.network_address), network.prefixlen


@functools.lru_cache(maxsize=1 << 16)
def _ipv6_network(prefix: str) -> tuple[bytes, int]:
    """(network address as 16 bytes, prefix length); cached like _canonical_prefix."""
    network = ipaddress.IPv6Network(prefix, strict=False)
    return network.network_address.packed, network.prefixlen


# Pure TCP ACK: IHL 5 and total length < 128 (offset 0; room for timestamps and 4 SACK blocks),
# protocol 6 (offset 8), flags == ACK (offset 32).
TCP_ACK_KEYS = ((0x0F00FF80, 0x05000000, 0), (0x00FF0000, 0x00060000, 8), (0x00FF0000, 0x00100000, 32))


# IPv6 pure TCP ACK: payload length < 128 and next header 6 (offset 4: no extension headers,
# so the TCP header is at 40), flags == ACK (byte 53: TCP offset 13).
TCP_ACK_KEYS_V6 = ((0xFF80FF00, 0x00000600, 4), (0x00FF0000, 0x00100000, 52))


@functools.lru_cache(maxsize=1 << 16)
def _rule_sel(prefix: str, dscp: int | None, direction: Direction, tcp_ack_only: bool = False) -> bytes:
    """The selector of a rule: IPv4 or IPv6 by the prefix."""
    if ":" in prefix:
        return _rule_sel6(prefix, dscp, direction, tcp_ack_only)
    net = ipaddress.IPv4Network(prefix, strict=False)
    keys = [(int(net.netmask), int(net.network_address), _address_offset(direction))]
    if dscp is not None:
        keys.append((DSCP_MASK, (dscp << 2) << 16, 0))
    if tcp_ack_only:
        keys.extend(TCP_ACK_KEYS)
    return _u32_sel(keys, TC_U32_TERMINAL)


def _ipv6_address_keys(prefix: str, offset: int) -> list[tuple[int, int, int]]:
    """The prefix as 32-bit keys from `offset`: one per word it covers (at least one, so ::/0
    is a mask-0 key like 0.0.0.0/0)."""
    packed, prefixlen = _ipv6_network(prefix)
    mask = (((1 << prefixlen) - 1) << (128 - prefixlen)).to_bytes(16, "big")
    return [(int.from_bytes(mask[word:word + 4], "big"), int.from_bytes(packed[word:word + 4], "big"), offset + word)
            for word in range(0, max(4, -(-prefixlen // 32) * 4), 4)]


def _rule_sel6(prefix: str, dscp: int | None, direction: Direction, tcp_ack_only: bool = False) -> bytes:
    keys = _ipv6_address_keys(prefix, _address_offset6(direction))
    if dscp is not None:
        keys.append((IPV6_DSCP_MASK, dscp << 22, 0))
    if tcp_ack_only:
        keys.extend(TCP_ACK_KEYS_V6)
    return _u32_sel(keys, TC_U32_TERMINAL)


def _ipv6_hash_key(direction: Direction, byte: int) -> tuple[int, int]:
    """(hoff, hmask) of the link that hashes IPv6 packets on byte `byte` of the OPD address."""
    return _address_offset6(direction) + byte // 4 * 4, 0xFF << (8 * (3 - byte % 4))


def _link_sel(direction: Direction, ipv6: bool = False, hash_byte: int = 0) -> bytes:
    if ipv6:
        hoff, hmask = _ipv6_hash_key(direction, hash_byte)
        return _u32_sel([(0, 0, 0)], 0, hoff=hoff, hmask=hmask)
    return _u32_sel([(0, 0, 0)], 0, hoff=_address_offset(direction), hmask=HASH_MASK)


def _decode_rule_sel6(sel: bytes, direction: Direction) -> tuple[str, int | None, bool] | None:
    """_decode_rule_sel for the IPv6 classifier."""
    if len(sel) < 16:
        return None
    flags, _offshift, nkeys = struct.unpack_from("=BBB", sel, 0)
    if flags != TC_U32_TERMINAL or not 1 <= nkeys <= 4 + len(TCP_ACK_KEYS_V6) or len(sel) != 16 + 16 * nkeys:
        return None
    keys = [(*struct.unpack_from(">II", sel, 16 + 16 * index), struct.unpack_from("=i", sel, 24 + 16 * index)[0])
            for index in range(nkeys)]
    base = _address_offset6(direction)
    words = 0
    while words < min(4, nkeys) and keys[words][2] == base + 4 * words:
        words += 1
    if not words:
        return None
    mask = b"".join(key[0].to_bytes(4, "big") for key in keys[:words]).ljust(16, b"\0")
    value = b"".join(key[1].to_bytes(4, "big") for key in keys[:words]).ljust(16, b"\0")
    prefixlen = bin(int.from_bytes(mask, "big")).count("1")
    try:
        prefix = str(ipaddress.IPv6Network((value, prefixlen), strict=False))
    except ValueError:
        return None
    rest = keys[words:]
    dscp = (rest[0][1] >> 22) & 0x3F if len(rest) == 1 else None
    tcp_ack_only = len(rest) == len(TCP_ACK_KEYS_V6)
    return (prefix, dscp, tcp_ack_only) if _rule_sel6(prefix, dscp, direction, tcp_ack_only) == sel else None


def _decode_rule_sel(sel: bytes, direction: Direction, ipv6: bool = False) -> tuple[str, int | None, bool] | None:
    """(prefix, dscp, tcp_ack_only) of a selector we would have written, else None (foreign: replace it)."""
    if ipv6:
        return _decode_rule_sel6(sel, direction)
    if len(sel) < 16:
        return None
    flags, _offshift, nkeys = struct.unpack_from("=BBB", sel, 0)
    if flags != TC_U32_TERMINAL or nkeys not in (1, 2, 1 + len(TCP_ACK_KEYS)) or len(sel) != 16 + 16 * nkeys:
        return None
    mask, value = struct.unpack_from(">II", sel, 16)
    prefixlen = bin(mask).count("1")
    if mask != (0xFFFFFFFF << (32 - prefixlen)) & 0xFFFFFFFF:
        return None
    prefix = str(ipaddress.IPv4Network((value, prefixlen), strict=False))
    dscp = None
    if nkeys == 2:
        dscp = (struct.unpack_from(">I", sel, 36)[0] >> 18) & 0x3F  # second key: mask at 32, value at 36
    tcp_ack_only = nkeys == 1 + len(TCP_ACK_KEYS)
    return (prefix, dscp, tcp_ack_only) if _rule_sel(prefix, dscp, direction, tcp_ack_only) == sel else None


def _rule_match(rule: U32Rule) -> str:
    return "tcp-ack" if rule.tcp_ack_only else f"dscp={rule.dscp}"


def _rule_handle(rule: U32Rule, root_htid: int) -> int:
    if rule.bucket is None:
        return root_htid << 20 | rule.node
    return _family(rule.ipv6).htid << 20 | rule.bucket << 12 | rule.node


# ---------------------------------------------------------------- leaf qdiscs


@functools.cache
def probe_leaf_qdisc() -> str:
    """"fq_codel" if this kernel can create it, else FALLBACK_LEAF_QDISC (cached for the process).

    Tried on a throwaway veth pair (this kernel has no dummy driver): the attempt also
    triggers module autoloading, which checking /proc/modules would miss.
    """
    base = f"sptq{os.getpid() % 100_000}"
    with IPRoute() as ipr:
        try:
            ipr.link("add", ifname=f"{base}a", kind="veth", peer=f"{base}b")
        except NetlinkError:
            return FALLBACK_LEAF_QDISC
        try:
            index = ipr.link_lookup(ifname=f"{base}a")[0]
            ipr.tc("add", "fq_codel", index, 0x10000)
            return "fq_codel"
        except (NetlinkError, IndexError):
            return FALLBACK_LEAF_QDISC
        finally:
            with contextlib.suppress(NetlinkError, IndexError):
                ipr.link("del", index=ipr.link_lookup(ifname=f"{base}a")[0])


def leaf_limit_bytes(plan: QueuePlan, klass: HtbClass) -> int:
    """The plan's byte limit for a leaf, else 100 ms of its ceiling (at least 30 kB)."""
    limit = plan.leaf_limit_bytes.get(klass.minor)
    if limit is None:
        limit = max(MIN_LEAF_LIMIT_BYTES, round(klass.ceil_bps / 8 * LEAF_QUEUE_SECONDS))
    return min(limit, 0xFFFFFFFF)  # the kernel field is u32 (100 ms of 375 Gbit/s is not)


def _leaf_options(kind: str, limit: int) -> bytes:
    if kind == "bfifo":
        return struct.pack("=I", limit)  # struct tc_fifo_qopt, not nested
    if kind == "pfifo_head_drop":
        return struct.pack("=I", max(2, -(-limit // LEAF_PACKET_BYTES)))  # the same, in packets
    memory = min(0xFFFFFFFF, max(FQ_CODEL_MIN_MEMORY, FQ_CODEL_MEMORY_FACTOR * limit))
    return _nla(TCA_FQ_CODEL_MEMORY_LIMIT, struct.pack("=I", memory))


def _leaf_matches(entry: _TcEntry, kind: str, handle: int, options: bytes) -> bool:
    if entry.kind != kind or entry.handle != handle:
        return False
    if kind in FIFO_LEAF_KINDS:
        return entry.options[:4] == options
    want = _parse_attrs(options)
    have = entry.nested
    return all(have.get(key) == value for key, value in want.items())


# ---------------------------------------------------------------- netlink plumbing


@contextlib.contextmanager
def _rtnl(netns: str | None) -> Iterator[IPRoute]:
    """A route socket in `netns` (never creating the namespace), closed afterwards."""
    ipr = IPRoute(netns=netns, flags=0, ext_ack=True, groups=0) if netns else IPRoute(ext_ack=True, groups=0)
    try:
        yield ipr
    finally:
        ipr.close()


class _Port:
    """One interface behind one netlink socket: batched requests with checked acks, raw dumps.

    Uses a duplicate of pyroute2's socket descriptor (same namespace, same ext-ack
    option, no multicast groups), so pyroute2 never sees these replies.
    """

    def __init__(self, ipr: IPRoute, name: str, netns: str | None, report: ApplyReport | None = None) -> None:
        self.name = name
        self.report = report
        found = ipr.link_lookup(ifname=name)
        if not found:
            where = f" in netns {netns}" if netns else ""
            raise TcError(f"interface {name} not found{where}")
        self.index: int = found[0]
        self.sock = socket.socket(fileno=os.dup(ipr.fileno()))
        self.sock.settimeout(SOCKET_TIMEOUT_SECONDS)  # keeps the shared descriptor non-blocking for pyroute2
        self.seq = itertools.count(0x53500001)
        self.pending: list[tuple[int, bytes, str]] = []

    def close(self) -> None:
        self.sock.close()

    def _message(self, msg_type: int, flags: int, seq: int, handle: int, parent: int, info: int,
                 kind: str | None, options: bytes | None) -> bytes:
        body = _TCMSG.pack(socket.AF_UNSPEC, self.index, handle, parent, info)
        if kind is not None:
            body += _nla(TCA_KIND, kind.encode() + b"\0")
        if options is not None:
            body += _nla(TCA_OPTIONS, options)
        return _NLMSGHDR.pack(_NLMSGHDR.size + len(body), msg_type, flags, seq, 0) + body

    def send(self, msg_type: int, flags: int, what: str, *, handle: int, parent: int, info: int = 0,
             kind: str | None = None, options: bytes | None = None) -> None:
        """Queue one change; it reaches the kernel, in order, at the next flush or dump."""
        seq = next(self.seq)
        message = self._message(msg_type, NLM_F_REQUEST | NLM_F_ACK | flags, seq, handle, parent, info, kind,
                                options)
        self.pending.append((seq, message, what))
        if self.report is not None:
            self.report.requests += 1
        if len(self.pending) >= BATCH_REQUESTS:
            self.flush()

    def flush(self) -> None:
        """Send queued changes in one write; raise on the first refused one (later ones are
        still answered by the kernel, and the next apply reconciles whatever is left)."""
        if not self.pending:
            return
        batch, self.pending = self.pending, []
        self.sock.sendto(b"".join(message for _seq, message, _what in batch), (0, 0))
        waiting = {seq: what for seq, _message, what in batch}
        failures: list[str] = []
        while waiting:
            for msg_type, flags, seq, payload in self._receive():
                if msg_type != NLMSG_ERROR or seq not in waiting:
                    continue
                what = waiting.pop(seq)
                code = -struct.unpack_from("=i", payload)[0]
                if code:
                    failures.append(f"{what}: {_ack_text(code, flags, payload)}")
        if failures:
            more = f" (and {len(failures) - 1} more)" if len(failures) > 1 else ""
            raise TcError(f"{self.name}: {failures[0]}{more}")

    def _receive(self) -> Iterator[tuple[int, int, int, bytes]]:
        data = self.sock.recv(RECV_BYTES)
        pos = 0
        while pos + _NLMSGHDR.size <= len(data):
            length, msg_type, flags, seq, _port = _NLMSGHDR.unpack_from(data, pos)
            if length < _NLMSGHDR.size:
                break
            yield msg_type, flags, seq, data[pos + _NLMSGHDR.size:pos + length]
            pos += (length + 3) & ~3

    def dump(self, msg_type: int, parent: int = 0,
             decode: Callable[[bytes], tuple[int, Any]] | None = None) -> list[Any]:
        """All qdiscs / classes / filters (under `parent`) of this interface, as `_TcEntry`s
        or as whatever `decode(payload) -> (ifindex, item)` makes of them (None: skipped)."""
        decode = decode or _entry
        self.flush()
        for _attempt in range(5):
            if self.report is not None:
                self.report.dumps += 1
            seq = next(self.seq)
            self.sock.sendto(self._message(msg_type, NLM_F_REQUEST | NLM_F_DUMP, seq, 0, parent, 0, None, None),
                             (0, 0))
            entries: list[Any] = []
            interrupted = False
            done = False
            while not done:
                for reply_type, flags, reply_seq, payload in self._receive():
                    if reply_seq != seq:
                        continue
                    interrupted |= bool(flags & NLM_F_DUMP_INTR)
                    if reply_type == NLMSG_DONE:
                        done = True
                    elif reply_type == NLMSG_ERROR:
                        code = -struct.unpack_from("=i", payload)[0]
                        raise TcError(f"{self.name}: dump: {_ack_text(code, flags, payload)}")
                    elif reply_type == msg_type - 2:  # RTM_GETx is answered with RTM_NEWx
                        ifindex, entry = decode(payload)
                        if ifindex == self.index and entry is not None:
                            entries.append(entry)
            if not interrupted:
                return entries
        raise TcError(f"{self.name}: dump kept being interrupted by concurrent changes")


def _ack_text(code: int, flags: int, payload: bytes) -> str:
    """errno text plus the kernel's extended-ack message when it sent one."""
    text = f"[Errno {code}] {os.strerror(code) if code in errno.errorcode else 'error'}"
    if flags & NLM_F_ACK_TLVS and len(payload) >= 4 + _NLMSGHDR.size:
        inner_length = _NLMSGHDR.unpack_from(payload, 4)[0]
        start = 4 + (_NLMSGHDR.size if flags & NLM_F_CAPPED else (inner_length + 3) & ~3)
        message = _parse_attrs(payload[start:]).get(NLMSGERR_ATTR_MSG)
        if message:
            text += f": {message.rstrip(bytes(1)).decode(errors='replace')}"
    return text


@contextlib.contextmanager
def _open_port(netns: str | None, name: str, report: ApplyReport | None = None) -> Iterator[_Port]:
    with _rtnl(netns) as ipr:
        port = _Port(ipr, name, netns, report)
        try:
            yield port
        finally:
            port.close()


# ---------------------------------------------------------------- stats


def read_stats(port: str, netns: str | None = None) -> dict[int, ClassStats]:
    """Counters of every HTB class of `port` by minor: the source of per-OPD metrics."""
    with _open_port(netns, port) as opened:
        return _read_stats(opened)


@dataclass(frozen=True, slots=True)
class ClassCounters:
    """The counters of one HTB class, without its parameters: what a metrics scrape needs."""

    minor: int
    bytes: int
    packets: int
    drops: int
    overlimits: int
    backlog_bytes: int
    qlen: int
    lends: int
    borrows: int


_NLA = struct.Struct("=HH")
_BASIC = struct.Struct("=QI")
_QUEUE = struct.Struct("=IIIII")
_APP = struct.Struct("=II")
_PKT64 = struct.Struct("=Q")
_HTB_KIND = b"htb\0"


def read_counters(port: str, netns: str | None = None) -> dict[int, ClassCounters]:
    """Counters of every HTB class of `port` by minor, decoded straight from the dump (about
    twice as fast as read_stats at 5,000 classes: the exporter reads both ports per scrape)."""
    with _open_port(netns, port) as opened:
        return {counters.minor: counters for counters in opened.dump(RTM_GETTCLASS, decode=_class_counters)}


def _class_counters(payload: bytes) -> tuple[int, ClassCounters | None]:
    _family, ifindex, handle, _parent, _info = _TCMSG.unpack_from(payload)
    if handle >> 16 != HTB_MAJOR:
        return ifindex, None
    kind = b""
    stats_start = stats_end = 0
    pos, end = _TCMSG.size, len(payload)
    while pos + 4 <= end:
        length, attr = _NLA.unpack_from(payload, pos)
        if length < 4:
            break
        attr &= 0x3FFF
        if attr == TCA_KIND:
            kind = payload[pos + 4:pos + length]
        elif attr == TCA_STATS2:
            stats_start, stats_end = pos + 4, pos + length
        pos += (length + 3) & ~3
    if not kind.startswith(_HTB_KIND):
        return ifindex, None
    nbytes = packets = drops = overlimits = backlog = qlen = lends = borrows = 0
    pos = stats_start
    while pos + 4 <= stats_end:
        length, attr = _NLA.unpack_from(payload, pos)
        if length < 4:
            break
        attr &= 0x3FFF
        size = length - 4
        if attr == TCA_STATS_BASIC and size >= _BASIC.size:
            nbytes, packets = _BASIC.unpack_from(payload, pos + 4)
        elif attr == TCA_STATS_PKT64 and size >= _PKT64.size:
            packets = _PKT64.unpack_from(payload, pos + 4)[0]
        elif attr == TCA_STATS_QUEUE and size >= _QUEUE.size:
            qlen, backlog, drops, _requeues, overlimits = _QUEUE.unpack_from(payload, pos + 4)
        elif attr == TCA_STATS_APP and size >= _APP.size:
            lends, borrows = _APP.unpack_from(payload, pos + 4)
        pos += (length + 3) & ~3
    return ifindex, ClassCounters(handle & 0xFFFF, nbytes, packets, drops, overlimits, backlog, qlen, lends, borrows)


def _read_stats(port: _Port) -> dict[int, ClassStats]:
    out: dict[int, ClassStats] = {}
    for entry in port.dump(RTM_GETTCLASS):
        if entry.kind != "htb" or entry.handle >> 16 != HTB_MAJOR:
            continue
        installed = _installed_htb_params(entry)
        parent, rate, ceil, level = (None, 0, 0, 0) if installed is None else (*installed[0][:3], installed[1])
        stats = _parse_attrs(entry.attrs.get(TCA_STATS2, b""))
        nbytes = packets = qlen = backlog = drops = requeues = overlimits = 0
        lends = borrows = giants = tokens = ctokens = 0
        basic = stats.get(TCA_STATS_BASIC, b"")
        if len(basic) >= 12:
            nbytes, packets = struct.unpack_from("=QI", basic)
        if len(stats.get(TCA_STATS_PKT64, b"")) >= 8:
            packets = struct.unpack_from("=Q", stats[TCA_STATS_PKT64])[0]
        queue = stats.get(TCA_STATS_QUEUE, b"")
        if len(queue) >= 20:
            qlen, backlog, drops, requeues, overlimits = struct.unpack_from("=IIIII", queue)
        app = stats.get(TCA_STATS_APP, b"")
        if len(app) >= 20:
            lends, borrows, giants, tokens, ctokens = struct.unpack_from("=IIIii", app)
        minor = entry.handle & 0xFFFF
        out[minor] = ClassStats(minor, parent, level == 0, rate * 8, ceil * 8, nbytes, packets, drops, overlimits,
                                requeues, backlog, qlen, lends, borrows, giants, tokens, ctokens)
    return out


# ---------------------------------------------------------------- plan checks


def _children(classes: Iterable[HtbClass]) -> dict[int, list[int]]:
    children: dict[int, list[int]] = {}
    for klass in classes:
        if klass.parent_minor is not None:
            children.setdefault(klass.parent_minor, []).append(klass.minor)
    return children


def _check_plan(plan: QueuePlan) -> None:
    """Refuse plans the kernel would half-apply: better before the first request than after."""
    by_minor: dict[int, HtbClass] = {}
    for klass in plan.classes:
        if not 0 < klass.minor < 0xFFFF:
            raise PlanError(f"class minor {klass.minor} out of range")
        if klass.minor in by_minor:
            raise PlanError(f"duplicate class minor {klass.minor}")
        if klass.rate_bps < 8 or klass.ceil_bps < 8 or klass.quantum_bytes <= 0:
            raise PlanError(f"class {klass.minor} ({klass.label}) needs positive rate, ceil and quantum")
        by_minor[klass.minor] = klass
    for klass in plan.classes:
        seen = {klass.minor}
        parent = klass.parent_minor
        while parent is not None:
            if parent not in by_minor:
                raise PlanError(f"class {klass.minor} ({klass.label}) has unknown parent {parent}")
            if parent in seen:
                raise PlanError(f"class {klass.minor} ({klass.label}) is in a parent cycle")
            seen.add(parent)
            parent = by_minor[parent].parent_minor
    children = _children(plan.classes)
    for klass in plan.classes:
        if klass.is_leaf and klass.minor in children:
            raise PlanError(f"class {klass.minor} ({klass.label}) is marked leaf but has children")
        if klass.minor not in children and klass.minor == HTB_MAJOR:
            raise PlanError(f"leaf minor {klass.minor} would clash with the HTB qdisc handle {HTB_MAJOR}:")
    if plan.default_minor not in by_minor or plan.default_minor in children:
        raise PlanError(f"default class {plan.default_minor} must be a leaf of the plan")
    if not 0 <= plan.ipv6_hash_byte < 16:
        raise PlanError(f"IPv6 hash byte {plan.ipv6_hash_byte} is not a byte of an IPv6 address (0-15)")
    keys: set[tuple[bool, int | None, int]] = set()
    for rule in plan.rules:
        family = "IPv6 " if rule.ipv6 else ""
        where = f"{family}rule {rule.prefix} {_rule_match(rule)} (bucket {rule.bucket}, node {rule.node})"
        if (":" in rule.prefix) != rule.ipv6:
            raise PlanError(f"{where}: prefix is not {'an IPv6' if rule.ipv6 else 'an IPv4'} prefix")
        if rule.key in keys:
            raise PlanError(f"{where}: duplicate (bucket, node)")
        keys.add(rule.key)
        last = LINK_NODE - 1 if rule.bucket is None else LINK_NODE
        if not 0 < rule.node <= last:
            raise PlanError(f"{where}: node must be in 1..{last}")
        if rule.flow_minor not in by_minor:
            raise PlanError(f"{where}: unknown class {rule.flow_minor}")
        if rule.dscp is not None and not 0 <= rule.dscp < 64:
            raise PlanError(f"{where}: dscp out of range")
        if rule.dscp is not None and rule.tcp_ack_only:
            raise PlanError(f"{where}: a rule matches a DSCP or pure TCP ACKs, not both")
        if rule.ipv6:
            packed, prefixlen = _ipv6_network(rule.prefix)
            byte = plan.ipv6_hash_byte
            if rule.bucket is not None and (prefixlen < 8 * (byte + 1) or packed[byte] != rule.bucket):
                raise PlanError(f"{where}: bucket must be byte {byte} of a prefix of at least {8 * (byte + 1)} bits")
            continue
        network, prefixlen = _ipv4_network(rule.prefix)
        if rule.bucket is not None and (prefixlen < 24 or network >> 8 & 0xFF != rule.bucket):
            raise PlanError(f"{where}: bucket must be the third octet of a /24 or longer prefix")


def _depth(minor: int, parent_of: dict[int, int | None]) -> int:
    depth = 0
    parent = parent_of.get(minor)
    while parent is not None and parent in parent_of and depth < 64:
        depth += 1
        parent = parent_of.get(parent)
    return depth


# ---------------------------------------------------------------- the shaper


@dataclass(slots=True)
class _Classifier:
    """One installed u32 classifier (filter prio): its root table, our hash table, the link."""

    root_htid: int = 0x800
    have_table: bool = False
    link: _TcEntry | None = None
    exists: bool = False


@dataclass(slots=True)
class _Installed:
    """What the kernel has on the port, in plan terms plus what is needed to address it."""

    classes: dict[int, HtbClass] = field(default_factory=dict)
    params: dict[int, HtbParams] = field(default_factory=dict)
    leaf_qdiscs: dict[int, _TcEntry] = field(default_factory=dict)  # by class minor
    rules: dict[tuple[bool, int | None, int], U32Rule] = field(default_factory=dict)  # by U32Rule.key
    rule_handles: dict[tuple[bool, int | None, int], int] = field(default_factory=dict)
    classifiers: dict[bool, _Classifier] = field(default_factory=lambda: {False: _Classifier(), True: _Classifier()})
    foreign_tps: list[_TcEntry] = field(default_factory=list)

    def forget(self, family: _Family) -> None:
        """The family's classifier is gone (deleted): nothing of it is installed."""
        for key in [key for key in self.rules if key[0] is family.ipv6]:
            del self.rules[key]
            self.rule_handles.pop(key, None)
        self.classifiers[family.ipv6] = _Classifier()


class TcShaper:
    """Reconciles ports to queue plans; the kernel is the truth.

    The one memory kept is, per port, the plan the kernel was last made to match after reading
    it back: `apply(plan, verify=False)` may then send a rate-only change as the difference from
    that plan (no dump of the port's thousands of classes), and reads the port back anyway when
    the change is structural or the kernel refuses it. Drift in between is repaired by the next
    verified apply (the enforcer verifies every port every few seconds).
    """

    def __init__(self, leaf_qdisc: str | None = None) -> None:
        self._leaf_override = leaf_qdisc
        self._matched: dict[tuple[str | None, str], tuple[QueuePlan, str]] = {}  # (netns, port) -> (plan, leaf)

    def read_stats(self, port: str, netns: str | None = None) -> dict[int, ClassStats]:
        return read_stats(port, netns)

    def read_counters(self, port: str, netns: str | None = None) -> dict[int, ClassCounters]:
        return read_counters(port, netns)

    def leaf_kind(self, plan: QueuePlan) -> str:
        """The leaf qdisc to use: the plan's choice when the kernel has it, else the probe's."""
        wanted = self._leaf_override or plan.leaf_qdisc
        available = probe_leaf_qdisc()
        if wanted in ("auto", "fq_codel"):
            return available
        if wanted in FIFO_LEAF_KINDS:
            return wanted
        raise PlanError(f"unsupported leaf qdisc {wanted!r}")

    def apply(self, plan: QueuePlan, netns: str | None = None, *, verify: bool = True) -> ApplyReport:
        """Make `plan.port` match `plan`, sending only the difference (see module docstring).

        verify=False: when only rates, bursts, quanta, priorities or leaf limits changed since the
        plan this port was last verified against, send just those changes without reading the
        port back (a ceiling change at 500 OPDs: 5 requests instead of a 9,000-entry dump).
        """
        _check_plan(plan)
        key = (netns, plan.port)
        # Forgotten first: a failure below leaves the port unknown, so the next apply reads it back.
        known = self._matched.pop(key, None)
        report = ApplyReport(plan.port, netns)
        # Canonical prefixes, so a plan written "10.1.0.1/16" does not differ from the kernel forever.
        rules = tuple(rule if (canonical := _canonical_prefix(rule.prefix)) == rule.prefix
                      else replace(rule, prefix=canonical) for rule in plan.rules)
        plan = replace(plan, rules=rules)
        report.leaf_qdisc = kind = self.leaf_kind(plan)
        if not verify:
            fallback = self._apply_in_place(known, plan, kind, report, netns)
            if not fallback:
                self._matched[key] = (plan, kind)
                return report
            report = ApplyReport(plan.port, netns, leaf_qdisc=kind, requests=report.requests, fallback=fallback)
        with _open_port(netns, plan.port, report) as port:
            installed = self._ensure_root(port, plan, report)
            if not report.rebuilt:
                self._read_installed(port, plan, installed)
            _Reconcile(port, plan, installed, kind, report).run()
            port.flush()
        self._matched[key] = (plan, kind)
        return report

    def _apply_in_place(self, known: tuple[QueuePlan, str] | None, plan: QueuePlan, kind: str,
                        report: ApplyReport, netns: str | None) -> str:
        """Send `plan` as in-place changes from the last verified plan; '' when done, else why not."""
        if known is None:
            return "port not verified yet"
        old, old_kind = known
        if old_kind != kind:
            return f"leaf qdisc {old_kind} -> {kind}"
        changes = _in_place_changes(old, plan)
        if isinstance(changes, str):
            return changes
        classes, leaves = changes
        report.read_back = False
        try:
            with _open_port(netns, plan.port, report) as port:
                for klass in classes:
                    _send_class(port, klass, create=False)
                    report.classes_changed += 1
                for klass in leaves:
                    _send_leaf_change(port, plan, klass, kind)
                    report.qdiscs_changed += 1
                port.flush()
        except TcError as error:  # the kernel no longer had what we remembered: read it back
            return f"refused: {error}"
        return ""

    # -- root qdisc

    def _ensure_root(self, port: _Port, plan: QueuePlan, report: ApplyReport) -> _Installed:
        installed = _Installed()
        qdiscs = port.dump(RTM_GETQDISC)
        root = next((entry for entry in qdiscs if entry.parent == TC_H_ROOT), None)
        if root is not None and root.kind == "htb" and root.handle == ROOT_HANDLE:
            init = root.nested.get(TCA_HTB_INIT, b"")
            if len(init) >= 12 and struct.unpack_from("=III", init)[2] == plan.default_minor:
                for entry in qdiscs:
                    if entry.parent >> 16 == HTB_MAJOR and entry.parent != TC_H_ROOT:
                        installed.leaf_qdiscs[entry.parent & 0xFFFF] = entry
                return installed
        # Missing, foreign, or HTB with another default class (HTB has no qdisc change op).
        report.rebuilt = True
        if root is not None and root.handle == ROOT_HANDLE:
            port.send(RTM_DELQDISC, 0, "delete root qdisc", handle=ROOT_HANDLE, parent=TC_H_ROOT)
        port.send(RTM_NEWQDISC, NLM_F_CREATE | NLM_F_REPLACE, "create root htb", handle=ROOT_HANDLE,
                  parent=TC_H_ROOT, kind="htb", options=_htb_root_options(plan.default_minor))
        report.qdiscs_added += 1
        return installed

    # -- reading the installed tree

    def _read_installed(self, port: _Port, plan: QueuePlan, installed: _Installed) -> None:
        want = {klass.minor: klass for klass in plan.classes}
        inner = _children(plan.classes).keys()
        for entry in port.dump(RTM_GETTCLASS):
            if entry.kind != "htb" or entry.handle >> 16 != HTB_MAJOR:
                continue
            found = _installed_htb_params(entry)
            if found is None:
                continue
            params, level = found
            minor = entry.handle & 0xFFFF
            desired = want.get(minor)
            if level > 0 and desired is not None and minor in inner:
                # HTB applies quantum and prio to leaves only and keeps an inner class's
                # creation-time values, which it never uses: they cannot differ usefully.
                want_params = _htb_params(desired)
                params = (*params[:5], *want_params[5:])
            installed.params[minor] = params
            if desired is not None and _htb_params(desired) == params:
                installed.classes[minor] = desired  # exactly what we would send
                continue
            parent, rate, ceil, buffer, cbuffer, quantum, prio = params
            approx = HtbClass(minor, parent, rate * 8, ceil * 8, _burst_bytes(rate, buffer),
                              _burst_bytes(ceil, cbuffer), quantum, prio, 0, 0, level == 0, "installed")
            if desired is not None and _same_class_params(approx, desired):
                approx = replace(approx, burst_bytes=-1)  # differs on the wire only: still send it
            installed.classes[minor] = approx
        self._read_filters(port, plan, installed)

    def _read_filters(self, port: _Port, plan: QueuePlan, installed: _Installed) -> None:
        ours = {family.info: family for family in FAMILIES}
        tables: dict[bool, dict[int, int]] = {False: {}, True: {}}
        nodes: dict[bool, list[_TcEntry]] = {False: [], True: []}
        for entry in port.dump(RTM_GETTFILTER, parent=ROOT_HANDLE):
            family = ours.get(entry.info) if entry.kind == "u32" else None
            if family is None:
                if not entry.options:  # one "tp" line per foreign prio/protocol: delete that tp
                    installed.foreign_tps.append(entry)
                continue
            installed.classifiers[family.ipv6].exists = True
            nested = entry.nested
            if TCA_U32_DIVISOR in nested:
                tables[family.ipv6][entry.handle >> 20] = struct.unpack("=I", nested[TCA_U32_DIVISOR][:4])[0]
            elif TCA_U32_SEL in nested:
                nodes[family.ipv6].append(entry)
        for family in FAMILIES:
            if installed.classifiers[family.ipv6].exists:
                self._read_classifier(plan, installed, family, tables[family.ipv6], nodes[family.ipv6])

    @staticmethod
    def _read_classifier(plan: QueuePlan, installed: _Installed, family: _Family, tables: dict[int, int],
                         nodes: list[_TcEntry]) -> None:
        roots = [htid for htid, divisor in tables.items() if htid & 0x800 and divisor == 1]
        foreign = len(roots) != 1 or any(htid not in (*roots, family.htid) for htid in tables)
        if tables.get(family.htid, HASH_DIVISOR) != HASH_DIVISOR:
            foreign = True
        if foreign:  # not what we would have made: delete the whole tp and start again
            installed.foreign_tps.append(_TcEntry(0, ROOT_HANDLE, family.info, "u32", b"", {}))
            installed.classifiers[family.ipv6] = _Classifier()
            return
        classifier = installed.classifiers[family.ipv6]
        classifier.root_htid = roots[0]
        classifier.have_table = family.htid in tables
        for entry in nodes:
            htid, bucket, node = entry.handle >> 20, entry.handle >> 12 & 0xFF, entry.handle & 0xFFF
            nested = entry.nested
            if htid == classifier.root_htid and node == LINK_NODE:
                classifier.link = entry
                continue
            key = (family.ipv6, None if htid == classifier.root_htid else bucket, node)
            decoded = _decode_rule_sel(nested[TCA_U32_SEL], plan.direction, family.ipv6)
            if decoded is None or any(attr in nested for attr in U32_FOREIGN_ATTRS):
                decoded = (f"raw:{entry.handle:08x}", None, False)  # never equal to a plan prefix: replaced
            classid = struct.unpack("=I", nested[TCA_U32_CLASSID][:4])[0] if TCA_U32_CLASSID in nested else 0
            flow_minor = classid & 0xFFFF if classid >> 16 == HTB_MAJOR else -1
            installed.rules[key] = U32Rule(decoded[0], decoded[1], flow_minor, key[1], node, 0,
                                           tcp_ack_only=decoded[2], ipv6=family.ipv6)
            installed.rule_handles[key] = entry.handle


def _send_class(port: _Port, klass: HtbClass, create: bool) -> None:
    parent = ROOT_HANDLE if klass.parent_minor is None else ROOT_HANDLE | klass.parent_minor
    flags = NLM_F_CREATE | NLM_F_EXCL if create else 0
    verb = "add" if create else "change"
    port.send(RTM_NEWTCLASS, flags, f"{verb} class 1:{klass.minor:x} ({klass.label})",
              handle=ROOT_HANDLE | klass.minor, parent=parent, kind="htb",
              options=_htb_class_options(_htb_params(klass)))


def _send_leaf_change(port: _Port, plan: QueuePlan, klass: HtbClass, kind: str) -> None:
    port.send(RTM_NEWQDISC, 0, f"change {kind} {klass.minor:x}: under 1:{klass.minor:x} ({klass.label})",
              handle=klass.minor << 16, parent=ROOT_HANDLE | klass.minor, kind=kind,
              options=_leaf_options(kind, leaf_limit_bytes(plan, klass)))


def _in_place_changes(old: QueuePlan, new: QueuePlan) -> tuple[list[HtbClass], list[HtbClass]] | str:
    """(classes to change, leaves whose qdisc limit changes) when `new` differs from `old` only
    in values HTB and the leaf qdiscs can change in place; otherwise why not."""
    if (old.direction, old.default_minor) != (new.direction, new.default_minor):
        return "direction or default class changed"
    before = {klass.minor: klass for klass in old.classes}
    if len(before) != len(new.classes):
        return "classes added or removed"
    inner = _children(new.classes).keys()
    classes: list[HtbClass] = []
    leaves: list[HtbClass] = []
    for klass in new.classes:
        previous = before.get(klass.minor)
        if previous is None or previous.parent_minor != klass.parent_minor or previous.is_leaf != klass.is_leaf:
            return "classes added, removed or moved"
        if _htb_params(previous) != _htb_params(klass):
            classes.append(klass)
        if klass.minor not in inner and leaf_limit_bytes(old, previous) != leaf_limit_bytes(new, klass):
            leaves.append(klass)
    if old.rules != new.rules or old.ipv6_hash_byte != new.ipv6_hash_byte:
        return "classifier rules changed"
    return classes, leaves


def _same_class_params(a: HtbClass, b: HtbClass) -> bool:
    return (a.parent_minor, a.rate_bps, a.ceil_bps, a.burst_bytes, a.cburst_bytes, a.quantum_bytes, a.prio) == (
        b.parent_minor, b.rate_bps, b.ceil_bps, b.burst_bytes, b.cburst_bytes, b.quantum_bytes, b.prio)


class _Reconcile:
    """One apply: the ordered steps that turn `installed` into `plan` without gaps.

    Order: drop filters that must go, drop reparented classes, add classes (parents
    first), change classes in place, give new leaves their qdisc, install filters, drop
    unwanted filters, then remove unwanted classes (children first) once no filter
    points at them.
    """

    def __init__(self, port: _Port, plan: QueuePlan, installed: _Installed, leaf_kind: str,
                 report: ApplyReport) -> None:
        self.port = port
        self.plan = plan
        self.installed = installed
        self.leaf_kind = leaf_kind
        self.report = report

    def run(self) -> None:
        plan, installed, report = self.plan, self.installed, self.report
        for tp in installed.foreign_tps:
            self.port.send(RTM_DELTFILTER, 0, f"delete filter prio {tp.info >> 16}", handle=0, parent=ROOT_HANDLE,
                           info=tp.info, kind=tp.kind or None)
            report.filters_removed += 1
        for family in FAMILIES:
            if any(tp.info == family.info for tp in installed.foreign_tps):
                installed.forget(family)
        diff = diff_queue_plans(plan, list(installed.classes.values()), list(installed.rules.values()))
        want = {klass.minor: klass for klass in plan.classes}
        have_parent = {minor: klass.parent_minor for minor, klass in installed.classes.items()}
        want_parent = {minor: klass.parent_minor for minor, klass in want.items()}

        # Classes whose parent changes cannot be changed in place: remove (with their
        # installed descendants) and add again.
        reparented = {new.minor for old, new in diff.change_classes if old.parent_minor != new.parent_minor}
        early_remove = set(reparented)
        grew = True
        while grew:
            grew = False
            for minor, parent in have_parent.items():
                if parent in early_remove and minor not in early_remove:
                    early_remove.add(minor)
                    grew = True
        late_remove = {klass.minor for klass in diff.remove_classes} - early_remove
        add = {klass.minor for klass in diff.add_classes} | (early_remove & want.keys())
        change = [new for old, new in diff.change_classes if new.minor not in early_remove]

        # 1. filters that must go first: a new selector needs a new node (u32 keeps a
        #    node's selector on change), and filters pin the classes removed in step 2.
        #    Other unwanted filters stay until the new ones are in (step 6b): no gap.
        removed_keys = {rule.key for rule in diff.remove_rules}
        remove_late = [rule for rule in diff.remove_rules if rule.flow_minor not in early_remove]
        readd: list[U32Rule] = []
        in_place: list[U32Rule] = []
        for rule in diff.remove_rules:
            if rule.flow_minor in early_remove:
                self._delete_rule(rule)
                report.filters_removed += 1
        for old, new in diff.change_rules:
            same_selector = (old.prefix, old.dscp, old.tcp_ack_only) == (new.prefix, new.dscp, new.tcp_ack_only)
            if not same_selector or old.flow_minor in early_remove:
                self._delete_rule(old)
                readd.append(new)
            else:
                in_place.append(new)
            report.filters_changed += 1
        changed_keys = {rule.key for rule in (*readd, *in_place)}
        wanted_rules = {rule.key: rule for rule in plan.rules}
        for key, rule in installed.rules.items():
            if key in removed_keys or key in changed_keys or rule.flow_minor not in early_remove:
                continue
            self._delete_rule(rule)
            readd.append(wanted_rules[key])
            report.filters_changed += 1

        # 2. reparented classes (and their installed subtrees), deepest first
        for minor in sorted(early_remove, key=lambda m: (-_depth(m, have_parent), m)):
            self._delete_class(minor)
            report.classes_removed += minor not in want
            report.classes_changed += minor in want

        # 3. new classes, parents first; 4. in-place changes (hitless: no qdisc touched)
        for minor in sorted(add, key=lambda m: (_depth(m, want_parent), m)):
            self._send_class(want[minor], create=True)
            report.classes_added += minor not in early_remove
        for klass in change:
            self._send_class(klass, create=False)
            report.classes_changed += 1

        # 5. leaf qdiscs where the class is (or is about to stay) a leaf
        children_now = _children(installed.classes[m] for m in installed.classes if m not in early_remove)
        children_wanted = _children(plan.classes)
        deferred = []
        for klass in plan.classes:
            if klass.minor in children_wanted:
                continue
            if any(child in late_remove for child in children_now.get(klass.minor, ())):
                deferred.append(klass)  # still has children until step 7
                continue
            self._ensure_leaf(klass, fresh=klass.minor in add)

        # 6. filters: hash tables and links, then rules (targets exist now). The IPv6
        #    classifier is made for the first IPv6 rule and then kept, empty and untouched
        #    while the plan has none: see the module docstring for why it is never deleted.
        self._ensure_hash_infrastructure(IPV4)
        if any(rule.ipv6 for rule in plan.rules):
            self._ensure_hash_infrastructure(IPV6)
        for rule in diff.add_rules:
            self._add_rule(rule)
            report.filters_added += 1
        for rule in readd:
            self._add_rule(rule)
        for rule in in_place:
            handle = installed.rule_handles[rule.key]
            self._send_rule(rule, handle, create=False)
        for rule in remove_late:  # 6b
            self._delete_rule(rule)
            report.filters_removed += 1

        # 7. unwanted classes, children first: nothing points at them any more
        for minor in sorted(late_remove, key=lambda m: (-_depth(m, have_parent), m)):
            self._delete_class(minor)
            report.classes_removed += 1
        for klass in deferred:
            # Now a leaf again: HTB starts honouring its quantum and prio, which it froze
            # when the class became inner, so send them.
            if self.installed.params.get(klass.minor) != _htb_params(klass):
                self._send_class(klass, create=False)
                report.classes_changed += klass not in change
            self._ensure_leaf(klass, fresh=True)

    # -- classes

    def _send_class(self, klass: HtbClass, create: bool) -> None:
        _send_class(self.port, klass, create)

    def _delete_class(self, minor: int) -> None:
        self.port.send(RTM_DELTCLASS, 0, f"delete class 1:{minor:x}", handle=ROOT_HANDLE | minor, parent=0)

    def _ensure_leaf(self, klass: HtbClass, fresh: bool) -> None:
        handle = klass.minor << 16
        options = _leaf_options(self.leaf_kind, leaf_limit_bytes(self.plan, klass))
        current = None if fresh else self.installed.leaf_qdiscs.get(klass.minor)
        parent = ROOT_HANDLE | klass.minor
        what = f"{self.leaf_kind} {klass.minor:x}: under 1:{klass.minor:x} ({klass.label})"
        if current is not None and _leaf_matches(current, self.leaf_kind, handle, options):
            return
        if current is not None and current.handle == handle and current.kind == self.leaf_kind:
            _send_leaf_change(self.port, self.plan, klass, self.leaf_kind)
            self.report.qdiscs_changed += 1
            return
        if current is not None and current.handle == handle:  # same handle, other kind: cannot graft over it
            self.port.send(RTM_DELQDISC, 0, f"delete old leaf of 1:{klass.minor:x}", handle=handle, parent=parent)
        self.port.send(RTM_NEWQDISC, NLM_F_CREATE | NLM_F_REPLACE, f"add {what}", handle=handle, parent=parent,
                       kind=self.leaf_kind, options=options)
        self.report.qdiscs_added += 1

    # -- filters

    def _ensure_hash_infrastructure(self, family: _Family) -> None:
        classifier, report = self.installed.classifiers[family.ipv6], self.report
        name = "IPv6 " if family.ipv6 else ""
        if not classifier.have_table:
            self.port.send(RTM_NEWTFILTER, NLM_F_CREATE | NLM_F_EXCL, f"add {name}u32 hash table",
                           handle=family.htid << 20, parent=ROOT_HANDLE, info=family.info, kind="u32",
                           options=_nla(TCA_U32_DIVISOR, struct.pack("=I", HASH_DIVISOR)))
            classifier.have_table = True
            report.filters_added += 1
        link_sel = _link_sel(self.plan.direction, family.ipv6, self.plan.ipv6_hash_byte)
        options = (_nla(TCA_U32_HASH, struct.pack("=I", TC_U32_ROOT))
                   + _nla(TCA_U32_LINK, struct.pack("=I", family.htid << 20)) + _nla(TCA_U32_SEL, link_sel))
        link = classifier.link
        if link is not None:
            nested = link.nested
            if (nested.get(TCA_U32_SEL) == link_sel and nested.get(TCA_U32_LINK, b"")[:4] == struct.pack(
                    "=I", family.htid << 20) and TCA_U32_CLASSID not in nested
                    and not any(attr in nested for attr in U32_FOREIGN_ATTRS)):
                return
            # u32 keeps a node's selector on change: a different hash key needs a new node
            self.port.send(RTM_DELTFILTER, 0, f"delete {name}u32 link", handle=link.handle, parent=ROOT_HANDLE,
                           info=family.info, kind="u32")
            report.filters_changed += 1
        else:
            report.filters_added += 1
        self.port.send(RTM_NEWTFILTER, NLM_F_CREATE | NLM_F_EXCL, f"add {name}u32 link to hash table",
                       handle=LINK_NODE, parent=ROOT_HANDLE, info=family.info, kind="u32", options=options)
        classifier.link = _TcEntry(classifier.root_htid << 20 | LINK_NODE, ROOT_HANDLE, family.info, "u32", options,
                                   {})

    def _rule_options(self, rule: U32Rule, with_hash: bool) -> bytes:
        options = b""
        if with_hash:
            table = TC_U32_ROOT if rule.bucket is None else _family(rule.ipv6).htid << 20 | rule.bucket << 12
            options += _nla(TCA_U32_HASH, struct.pack("=I", table))
        options += _nla(TCA_U32_CLASSID, struct.pack("=I", ROOT_HANDLE | rule.flow_minor))
        return options + _nla(TCA_U32_SEL, _rule_sel(rule.prefix, rule.dscp, self.plan.direction, rule.tcp_ack_only))

    def _add_rule(self, rule: U32Rule) -> None:
        # Root-list nodes are addressed by node only: the root table's id is the kernel's choice.
        handle = rule.node if rule.bucket is None else _family(rule.ipv6).htid << 20 | rule.bucket << 12 | rule.node
        self._send_rule(rule, handle, create=True)

    def _send_rule(self, rule: U32Rule, handle: int, create: bool) -> None:
        flags = NLM_F_CREATE | NLM_F_EXCL if create else 0
        verb = "add" if create else "change"
        self.port.send(RTM_NEWTFILTER, flags,
                       f"{verb} u32 {rule.prefix} {_rule_match(rule)} -> 1:{rule.flow_minor:x} "
                       f"(bucket {rule.bucket}, node {rule.node})",
                       handle=handle, parent=ROOT_HANDLE, info=_family(rule.ipv6).info, kind="u32",
                       options=self._rule_options(rule, with_hash=create))

    def _delete_rule(self, rule: U32Rule) -> None:
        root_htid = self.installed.classifiers[rule.ipv6].root_htid
        handle = self.installed.rule_handles.get(rule.key, _rule_handle(rule, root_htid))
        self.port.send(RTM_DELTFILTER, 0, f"delete u32 {rule.prefix} (bucket {rule.bucket}, node {rule.node})",
                       handle=handle, parent=ROOT_HANDLE, info=_family(rule.ipv6).info, kind="u32")
