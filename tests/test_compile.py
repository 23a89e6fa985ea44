"""Compile output: structure, stable identifiers, determinism (pure, microseconds)."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import yaml

from satupintu.compile.flows import ETH_ARP, ETH_IP, TABLE_ADMIT, TABLE_FORWARD, TABLE_MARK, port_masks
from satupintu.compile.plan import (
    COOKIE_TAG,
    COOKIE_TAG_MASK,
    ROOT_MINOR,
    UNCLASSIFIED_MINOR,
    WIFI_PRIORITY,
    Direction,
    RuleKind,
    cookie_owner,
    flow_cookie,
    leaf_minor,
    meter_id,
    owner_minor,
)
from satupintu.compile.state import compile_state
from satupintu.policy.load import load_policy_text
from satupintu.topology import star_topology

REPO = Path(__file__).resolve().parents[1]
MINIMAL = (REPO / "policies" / "minimal.yaml").read_text()


def _compile(text: str = MINIMAL, scale: float = 1.0, window: str = "base"):
    policy = load_policy_text(text, "p.yaml").policy
    owners = [owner.id for owner in (*policy.opds, *policy.public_wifi)]
    return policy, compile_state(policy, star_topology(owners), scale=scale, window=window)


def test_htb_tree_has_root_unclassified_opd_classes_leaves_and_wifi() -> None:
    _, state = _compile()
    upload = next(plan for plan in state.queues if plan.direction is Direction.UPLOAD)
    download = next(plan for plan in state.queues if plan.direction is Direction.DOWNLOAD)
    assert upload.port == "gw-eth2" and download.port == "gw-eth1"
    classes = {klass.minor: klass for klass in download.classes}
    root = classes[ROOT_MINOR]
    assert root.parent_minor is None and root.rate_bps == root.ceil_bps == 100_000_000
    assert classes[UNCLASSIFIED_MINOR].prio == WIFI_PRIORITY and download.default_minor == UNCLASSIFIED_MINOR
    dinkes = classes[owner_minor(1)]
    assert (dinkes.rate_bps, dinkes.ceil_bps, dinkes.is_leaf) == (30_000_000, 80_000_000, False)
    leaves = [klass for klass in download.classes if klass.parent_minor == owner_minor(1)]
    assert sorted(leaf.class_id for leaf in leaves) == [1, 2, 3, 4]
    assert sum(leaf.rate_bps for leaf in leaves) <= dinkes.rate_bps
    assert all(leaf.ceil_bps == dinkes.ceil_bps and leaf.is_leaf for leaf in leaves)
    realtime = classes[leaf_minor(1, 1)]
    bulk = classes[leaf_minor(1, 4)]
    assert realtime.prio < bulk.prio
    wifi = classes[owner_minor(900)]
    assert wifi.is_leaf and wifi.prio == WIFI_PRIORITY and wifi.rate_bps == 2_000_000
    assert wifi.ceil_bps == 100_000_000  # soaks up everything left
    # Guarantees fit the root.
    top = [klass for klass in download.classes if klass.parent_minor == ROOT_MINOR]
    assert sum(klass.rate_bps for klass in top) <= root.rate_bps


def test_quantum_proportional_to_guarantee_so_excess_is_shared_by_guarantee() -> None:
    _, state = _compile()
    classes = {klass.minor: klass for klass in state.queues[1].classes}
    ratio = classes[owner_minor(1)].quantum_bytes / classes[owner_minor(3)].quantum_bytes
    assert ratio == pytest.approx(30 / 20, rel=0.01)
    assert all(klass.burst_bytes >= 3028 and klass.cburst_bytes >= klass.burst_bytes
               for klass in state.queues[1].classes)


def test_u32_rules_classify_every_prefix_by_dscp_with_catch_all_last() -> None:
    _, state = _compile()
    rules = [rule for rule in state.queues[0].rules if rule.owner_id == 1]
    assert {rule.prefix for rule in rules} == {"10.1.1.0/24"}
    assert all(rule.bucket == 1 for rule in rules)  # third octet of 10.1.1.0
    by_dscp = {rule.dscp: rule.flow_minor for rule in rules if not rule.tcp_ack_only}
    assert by_dscp == {46: leaf_minor(1, 1), 26: leaf_minor(1, 2), 8: leaf_minor(1, 4), None: leaf_minor(1, 3)}
    catch_all = next(rule for rule in rules if rule.dscp is None and not rule.tcp_ack_only)
    assert catch_all.node == max(rule.node for rule in rules)
    # pure ACKs first, into the most urgent class (realtime, priority 0): not behind the OPD's own data
    (ack,) = [rule for rule in rules if rule.tcp_ack_only]
    assert ack.node == min(rule.node for rule in rules) and ack.flow_minor == leaf_minor(1, 1) and ack.dscp is None
    wifi = [rule for rule in state.queues[0].rules if rule.owner_id == 900]
    assert len(wifi) == 1 and wifi[0].bucket is None and wifi[0].flow_minor == owner_minor(900)
    keys = [(rule.bucket, rule.node) for rule in state.queues[0].rules]
    assert len(keys) == len(set(keys))


def test_scale_multiplies_every_rate() -> None:
    _, full = _compile()
    _, small = _compile(scale=0.01)
    full_classes = {k.minor: k for k in full.queues[1].classes}
    for klass in small.queues[1].classes:
        assert klass.ceil_bps == pytest.approx(full_classes[klass.minor].ceil_bps * 0.01, rel=0.01, abs=8_000)
    meters = [m for plan in small.switches for m in plan.meters]
    assert meters == [type(meters[0])(meter_id(3, Direction.DOWNLOAD), 700, 140, 3, Direction.DOWNLOAD)]


def test_schedule_window_changes_only_the_overridden_opd() -> None:
    _, base = _compile(window="base")
    _, office = _compile(window="office-hours")
    before = {k.minor: k for k in base.queues[1].classes}
    after = {k.minor: k for k in office.queues[1].classes}
    changed = {minor for minor in before if before[minor] != after[minor]}
    assert changed and all(before[minor].owner_id == 1 for minor in changed)
    assert after[owner_minor(1)].rate_bps == 40_000_000
    assert base.switches == office.switches  # allocations live in tc only


def test_openflow_pipeline_antispoofing_marking_forwarding() -> None:
    _, state = _compile()
    core = next(plan for plan in state.switches if plan.name == "core")
    flows = list(core.flows)
    port = 1001  # OPD 1 attaches on port 1000 + id
    admit = [f for f in flows if f.table == TABLE_ADMIT and dict(f.match).get("in_port") == port]
    accepted = [f for f in admit if ("goto", TABLE_MARK) in f.actions]
    assert [dict(f.match)["ipv4_src"] for f in accepted] == [("10.1.1.0", "255.255.255.0")]
    drop = [f for f in admit if f.actions == (("drop",),)]
    assert len(drop) == 1 and drop[0].match == (("in_port", port),) and drop[0].priority < accepted[0].priority
    marks = [f for f in flows if f.table == TABLE_MARK]
    ef = [f for f in marks if ("set_dscp", 46) in f.actions]
    assert any(dict(f.match).get("udp_dst") == 8801 for f in ef)  # upload: far-side destination port
    assert any(dict(f.match).get("udp_src") == 8801 for f in ef)  # download: far-side source port
    default_marks = [f for f in marks if f.priority == 1]
    assert default_marks and all(("set_dscp", 0) in f.actions for f in default_marks)  # trust boundary
    forward = [f for f in flows if f.table == TABLE_FORWARD and ("output", port) in f.actions]
    assert {dict(f.match)["eth_type"] for f in forward} == {ETH_IP, ETH_ARP}
    assert all(f.cookie & COOKIE_TAG_MASK == COOKIE_TAG for f in flows)
    assert {cookie_owner(f.cookie) for f in admit} == {1}
    assert any(f.table == t and f.priority == 0 and f.match == () for t in (0, 1, 2) for f in flows)
    keys = [f.key for f in flows]
    assert len(keys) == len(set(keys)), "two flows share table+priority+match"


def test_hard_cap_meters_on_the_attachment_switch_only() -> None:
    _, state = _compile()
    core = next(plan for plan in state.switches if plan.name == "core")
    gw = next(plan for plan in state.switches if plan.name == "gw")
    assert [m.meter_id for m in core.meters] == [meter_id(3, Direction.DOWNLOAD)] and gw.meters == ()
    metered = [f for f in core.flows if ("meter", meter_id(3, Direction.DOWNLOAD)) in f.actions]
    assert metered and all(("output", 1003) in f.actions for f in metered)


def test_inter_opd_deny_and_allow() -> None:
    _, denied = _compile()
    allowed_text = MINIMAL.replace("timezone: Asia/Jakarta", "timezone: Asia/Jakarta\ninter_opd: allow")
    _, allowed = _compile(allowed_text)
    def drops(state):
        core = next(plan for plan in state.switches if plan.name == "core")
        return [f for f in core.flows if f.table == TABLE_FORWARD and f.actions == (("drop",),) and f.priority > 2]
    assert len(drops(denied)) == 4 and drops(allowed) == []


def test_identifiers_are_stable_across_reorderings_of_the_file() -> None:
    document = yaml.safe_load(MINIMAL)
    _, reference = _compile()
    rng = random.Random(7)
    for _ in range(5):
        shuffled = dict(document)
        for key in ("opds", "classes", "public_wifi"):
            items = list(shuffled[key])
            rng.shuffle(items)
            shuffled[key] = items
        keys = list(shuffled)
        rng.shuffle(keys)
        text = yaml.safe_dump({key: shuffled[key] for key in keys}, sort_keys=False)
        _, state = _compile(text)
        assert state.switches == reference.switches
        assert state.queues == reference.queues


def test_adding_an_opd_leaves_every_other_identifier_untouched() -> None:
    document = yaml.safe_load(MINIMAL)
    _, before = _compile()
    extra = dict(document["opds"][0], id=4, code="SATPOLPP", name="Satpol PP", prefixes=["10.1.4.0/24"],
                 download={"guaranteed": "5Mbps", "ceiling": "20Mbps"},
                 upload={"guaranteed": "2Mbps", "ceiling": "10Mbps"})
    document["opds"].append(extra)
    _, after = _compile(yaml.safe_dump(document, sort_keys=False))
    old = set(before.queues[1].classes)
    new = set(after.queues[1].classes)
    assert old <= new and {k.owner_id for k in new - old} == {4}
    old_rules, new_rules = set(before.queues[1].rules), set(after.queues[1].rules)
    assert old_rules <= new_rules and {r.owner_id for r in new_rules - old_rules} == {4}
    old_flows = {f for plan in before.switches for f in plan.flows}
    new_flows = {f for plan in after.switches for f in plan.flows}
    assert old_flows <= new_flows
    assert {cookie_owner(f.cookie) for f in new_flows - old_flows} == {4}


@pytest.mark.parametrize(("low", "high"), [(1, 1), (3478, 3481), (8801, 8810), (1, 65535), (1000, 2000), (6881, 6889)])
def test_port_masks_cover_exactly_the_range(low: int, high: int) -> None:
    covered = set()
    for value, mask in port_masks(low, high):
        block = {port for port in range(value, value + ((~mask) & 0xFFFF) + 1)}
        assert not covered & block
        assert all(port & mask == value for port in block)
        covered |= block
    assert covered == set(range(low, high + 1))


def test_cookie_layout() -> None:
    cookie = flow_cookie(RuleKind.FORWARD, 42)
    assert cookie & COOKIE_TAG_MASK == COOKIE_TAG and cookie_owner(cookie) == 42
    assert flow_cookie(RuleKind.ADMIT, 42) != cookie
